//! The run: resume the recorded restore or plan afresh (once the target is known not to
//! exist; one that does and holds the snapshot of this very restore, finished, is reported
//! done), ask for the thaws, receive the streams in chain order (`receive`), and finish: the
//! key loaded and the dataset mounted when asked for, else the report says how.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zib_core::restore_plan::RestorePlan;

use super::{
    RestoreEngine, RestoreError, RestoreOptions, RestorePhase, RestoreProgress,
    RestoreProgressFile, RestoreRecord, RestoreReport,
    fetch::FetchCtx,
    plan,
    thaw::{ManifestThaw, Rethaw},
};

/// Runs (or resumes) the restore described by `opts` into `opts.target`. The progress file must
/// be the one opened for `opts.target`. On error the record stays, and a new call continues.
pub async fn run(
    engine: &RestoreEngine,
    opts: &RestoreOptions,
    file: &mut RestoreProgressFile,
    progress: &watch::Sender<RestoreProgress>,
    cancel: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    if !(1..=365).contains(&opts.days) {
        return Err(RestoreError::DatasetChoice(format!(
            "--days must be between 1 and 365, got {}",
            opts.days
        )));
    }
    let parallel = opts.parallel.clamp(1, 16);
    progress.send_modify(|p| {
        *p = RestoreProgress {
            target: opts.target.to_string(),
            tier: opts.tier,
            started_at: Some(Utc::now()),
            ..Default::default()
        };
    });

    // Resume an unfinished record, or plan afresh.
    let resumed = match &file.record {
        Some(r) if r.finished_at.is_none() => {
            let name_differs = opts.snapshot.as_ref().is_some_and(|s| s != &r.plan.snapshot.name);
            let ds_differs = opts.dataset.as_ref().is_some_and(|d| d != &r.plan.dataset);
            if name_differs || ds_differs || r.bucket != engine.s3.bucket() {
                return Err(RestoreError::Progress {
                    path: file.path.clone(),
                    message: format!(
                        "an unfinished restore of {}@{} from s3://{} into {} is recorded here; run it with the same dataset/snapshot/bucket to continue, or remove this file (and `zfs destroy -r {}` if it exists) to start another",
                        r.plan.dataset, r.plan.snapshot.name, r.bucket, r.target, r.target
                    ),
                });
            }
            tracing::info!(target = %opts.target, streams_done = r.steps_received, "resuming the recorded restore");
            true
        }
        _ => {
            let thaw = ManifestThaw {
                tier: opts.tier,
                days: opts.days,
                poll: opts.poll,
                cancel,
                target: &opts.target,
            };
            let plan =
                plan(engine, opts.dataset.as_ref(), opts.snapshot.as_ref(), Some(thaw)).await?;
            if engine.zfs.dataset_exists(opts.target.as_str()).await? {
                // The same restore, finished (a run killed after it recorded the end, or the
                // command run again): done already, when the target holds that snapshot.
                if let Some(report) =
                    already_done(engine, opts, file.record.as_ref(), &plan).await?
                {
                    return Ok(report);
                }
                return Err(RestoreError::TargetExists { target: opts.target.to_string() });
            }
            let ready_within = zib_core::pricing::Pricing::default().tier_prices(opts.tier).2;
            let days = plan.thaw_days(opts.days, ready_within);
            if days > opts.days {
                tracing::info!(
                    days,
                    asked = opts.days,
                    download_hours = plan.expected_download_hours(),
                    "thawed copies are kept longer than asked, so that none expires before its download"
                );
            }
            let mut rec = RestoreRecord::new(engine.s3.bucket(), opts, plan);
            rec.days = days;
            file.record = Some(rec);
            file.save().await?;
            false
        }
    };
    let ready_ahead = AtomicU64::new(0);
    let rethaw = Rethaw::default();
    let mut run = Run {
        engine,
        opts,
        file,
        progress,
        cancel,
        parallel,
        thaw_sent: 0,
        polls: 0,
        ready_ahead: &ready_ahead,
        rethaw: &rethaw,
    };
    run.publish(RestorePhase::Planning, None);
    run.file.spool.clean().await;

    run.request_thaws().await?;
    let steps = run.file.rec().plan.steps.len();
    for i in run.file.rec().steps_received..steps {
        if let Err(e) = run.receive_step(i).await {
            // Downloads in flight were dropped with the stream; remove what they spooled.
            run.file.spool.clean().await;
            return Err(e);
        }
    }
    run.finish(resumed).await
}

/// The report of a restore the record says finished, when it is this one (bucket, dataset,
/// snapshot and target) and the target holds the snapshot by GUID; nothing is done again.
async fn already_done(
    engine: &RestoreEngine,
    opts: &RestoreOptions,
    record: Option<&RestoreRecord>,
    plan: &RestorePlan,
) -> Result<Option<RestoreReport>, RestoreError> {
    let Some(r) = record.filter(|r| r.finished_at.is_some()) else { return Ok(None) };
    let same = r.bucket == engine.s3.bucket()
        && r.target == opts.target
        && r.plan.dataset == plan.dataset
        && r.plan.snapshot == plan.snapshot;
    if !same {
        return Ok(None);
    }
    let zfs = &engine.zfs;
    let here = zfs.snapshot_info(&opts.target, &plan.snapshot.name).await?;
    if here.map(|s| s.guid).as_ref() != Some(&plan.snapshot.guid) {
        return Ok(None);
    }
    let t = opts.target.as_str();
    let encrypted = zfs.get_property(t, "encryption").await?.is_some_and(|e| e != "off");
    let key_loaded =
        !encrypted || zfs.get_property(t, "keystatus").await?.as_deref() == Some("available");
    let mounted = zfs.get_property(t, "mounted").await?.as_deref() == Some("yes");
    let at = r.finished_at.expect("finished").to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tracing::info!(target = %opts.target, finished_at = %at, "this restore finished before; nothing to do");
    Ok(Some(RestoreReport {
        dataset: plan.dataset.clone(),
        snapshot: plan.snapshot.name.clone(),
        target: opts.target.clone(),
        streams: plan.steps.len(),
        chunks: plan.total_objects(),
        bytes: plan.total_bytes(),
        thaw_requests_sent: 0,
        polls: 0,
        resumed: true,
        encrypted,
        key_loaded,
        mounted,
        next_steps: vec![format!(
            "this restore finished at {at} (the target holds {}@{} by GUID): nothing was done again",
            t, plan.snapshot.name
        )],
    }))
}

pub(super) struct Run<'a> {
    pub(super) engine: &'a RestoreEngine,
    pub(super) opts: &'a RestoreOptions,
    pub(super) file: &'a mut RestoreProgressFile,
    pub(super) progress: &'a watch::Sender<RestoreProgress>,
    pub(super) cancel: &'a CancellationToken,
    pub(super) parallel: usize,
    pub(super) thaw_sent: u64,
    pub(super) polls: u64,
    /// Chunks of the current stream seen thawed by a download but not yet recorded as ready.
    pub(super) ready_ahead: &'a AtomicU64,
    pub(super) rethaw: &'a Rethaw,
}

impl<'a> Run<'a> {
    pub(super) fn publish(&self, phase: RestorePhase, message: Option<String>) {
        let rec = self.file.record.as_ref().expect("record");
        let first_request = rec.chunks.iter().flatten().filter_map(|c| c.thaw_requested_at).min();
        let thaw_expected_at =
            rec.plan.thaw_expected_at(first_request, self.opts.pricing.thaw_hours(rec.tier));
        let current = rec.chunks.get(rec.steps_received).into_iter().flatten();
        let received_bytes =
            rec.plan.bytes_received(rec.steps_received, current.map(|c| c.received));
        let thaw_needed = rec.thaw_needed();
        let polls = self.polls;
        let ready_ahead = self.ready_ahead.load(Ordering::Relaxed);
        self.progress.send_modify(|p| {
            p.phase = phase;
            p.dataset = Some(rec.plan.dataset.to_string());
            p.snapshot = Some(rec.plan.snapshot.name.to_string());
            p.steps_total = rec.plan.steps.len();
            p.steps_received = rec.steps_received;
            p.chunks_total = rec.plan.total_objects();
            p.thaw_needed = thaw_needed;
            p.thaw_requested = rec.count(|c| c.thaw_requested_at.is_some());
            p.thaw_ready = rec.count(|c| c.ready) + ready_ahead;
            p.chunks_downloaded = rec.count(|c| c.downloaded);
            p.chunks_received = rec.count(|c| c.received);
            p.bytes_total = rec.plan.total_bytes();
            p.bytes_received = received_bytes;
            p.thaw_expected_at = thaw_expected_at;
            p.polls = p.polls.max(polls);
            if message.is_some() {
                p.message = message;
            }
        });
    }

    pub(super) fn check_cancel(&self) -> Result<(), RestoreError> {
        if self.cancel.is_cancelled() {
            Err(RestoreError::Cancelled { target: self.opts.target.to_string() })
        } else {
            Ok(())
        }
    }

    pub(super) fn ctx(&self) -> FetchCtx<'a> {
        let rec = self.file.record.as_ref().expect("record");
        let (engine, opts): (&'a RestoreEngine, &'a RestoreOptions) = (self.engine, self.opts);
        FetchCtx {
            s3: &engine.s3,
            tier: rec.tier,
            days: rec.days,
            poll: opts.poll,
            cancel: self.cancel,
            progress: self.progress,
            target: &opts.target,
            ready_ahead: self.ready_ahead,
            rethaw: self.rethaw,
        }
    }

    async fn finish(&mut self, resumed: bool) -> Result<RestoreReport, RestoreError> {
        self.publish(RestorePhase::Finishing, None);
        let zfs = &self.engine.zfs;
        let target = self.opts.target.clone();
        let t = target.as_str();
        let encrypted = zfs.get_property(t, "encryption").await?.is_some_and(|e| e != "off");
        let mut key_loaded = !encrypted;
        let mut next_steps = Vec::new();
        if encrypted {
            let keystatus = zfs.get_property(t, "keystatus").await?;
            if keystatus.as_deref() == Some("available") {
                key_loaded = true;
            } else if let Some(loc) = &self.opts.key_location {
                let loc = if loc.contains("://") || loc == "prompt" {
                    loc.clone()
                } else {
                    format!("file://{loc}")
                };
                if let Err(e) = zfs.load_key(&target, &loc).await {
                    // A run killed while its `zfs load-key` ran leaves that command running,
                    // and it may load the key after the check above: then the key is loaded
                    // and this one failed for that alone (found by the guest crash rounds).
                    if zfs.get_property(t, "keystatus").await?.as_deref() != Some("available") {
                        return Err(e.into());
                    }
                }
                key_loaded = true;
            } else {
                next_steps.push(format!(
                    "{t} is encrypted (raw stream) and its key is not loaded: `zfs load-key -L file:///path/to/keyfile {t}` (or `-L prompt` for a passphrase), then `zfs set keylocation=file:///path/to/keyfile {t}` to keep it"
                ));
            }
        }
        let mut mounted = false;
        // A volume mounts nowhere: its device appears once its key is loaded.
        let volume = zfs.get_property(t, "type").await?.as_deref() == Some("volume");
        if volume {
            let when = if key_loaded { "" } else { " once its key is loaded" };
            next_steps.push(format!("{t} is a volume: its device is /dev/zvol/{t}{when}"));
        } else if key_loaded && !self.opts.no_mount {
            if self.opts.mountpoint.is_some() {
                // A run killed after the mount and resumed finds it mounted.
                if zfs.get_property(t, "mounted").await?.as_deref() != Some("yes") {
                    zfs.mount(&target).await?;
                }
                mounted = true;
            } else {
                next_steps.push(format!("not mounted: it was received with canmount=noauto, so nothing in the stream mounts it; give it a mountpoint, which mounts it: `zfs set canmount=on {t} && zfs set mountpoint=/path {t}`"));
            }
        } else if key_loaded {
            next_steps.push(format!("not mounted (--no-mount): `zfs mount {t}`"));
        } else {
            next_steps.push(format!(
                "after loading the key: `zfs mount {t}` (without --mountpoint it has none of its own and canmount=noauto: `zfs set canmount=on {t} && zfs set mountpoint=/path {t}` mounts it)"
            ));
        }
        let rec = self.file.rec();
        rec.finished_at = Some(Utc::now());
        let report = RestoreReport {
            dataset: rec.plan.dataset.clone(),
            snapshot: rec.plan.snapshot.name.clone(),
            target,
            streams: rec.plan.steps.len(),
            chunks: rec.plan.total_objects(),
            bytes: rec.plan.total_bytes(),
            thaw_requests_sent: self.thaw_sent,
            polls: self.polls,
            resumed,
            encrypted,
            key_loaded,
            mounted,
            next_steps,
        };
        self.file.save().await?;
        self.publish(RestorePhase::Done, Some("restore complete".into()));
        Ok(report)
    }
}
