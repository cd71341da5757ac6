//! The run: streams applied in chain order, each with one `zfs receive -s -u`; chunks
//! downloaded ahead (at most `parallel`) to spool files, and passed to `zfs receive` only after
//! their size and SHA-256 matched the manifest.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use chrono::Utc;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::watch};
use tokio_util::sync::CancellationToken;
use zib_core::{
    DatasetName, SnapName, manifest::ChunkRecord, pricing::RestoreTier, restore_plan::PlanStep,
};

use super::{
    PathError, PollBackoff, RestoreEngine, RestoreError, RestoreOptions, RestorePhase,
    RestoreProgress, RestoreProgressFile, RestoreRecord, RestoreReport, io_err, plan,
    thaw::{ChunkThaw, ManifestThaw, Rethaw, not_thawed, wait_ready},
};
use crate::{
    failpoint,
    s3::{S3ErrorKind, S3Store},
    zfs::{ReceiveOptions, ReceiveSink, StreamHeader, Zfs, ZfsError},
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

/// Everything a chunk download needs, shareable across concurrent downloads.
#[derive(Clone, Copy)]
pub(super) struct FetchCtx<'a> {
    pub(super) s3: &'a S3Store,
    pub(super) tier: RestoreTier,
    pub(super) days: u32,
    pub(super) poll: PollBackoff,
    pub(super) cancel: &'a CancellationToken,
    pub(super) progress: &'a watch::Sender<RestoreProgress>,
    pub(super) target: &'a DatasetName,
    pub(super) ready_ahead: &'a std::sync::atomic::AtomicU64,
    pub(super) rethaw: &'a Rethaw,
}

/// What a finished download reports back to the receiver.
pub(super) struct Fetched {
    index: usize,
    path: PathBuf,
    thaw: ChunkThaw,
    /// Found archived although neither the manifest nor the record said so.
    archived: bool,
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

    /// Receives stream `i` from its first chunk into the target.
    async fn receive_step(&mut self, i: usize) -> Result<(), RestoreError> {
        let zfs = &self.engine.zfs;
        let target = self.opts.target.clone();
        let step = self.file.rec().plan.steps[i].clone();

        // A receive that completed before a crash left its snapshot behind.
        if step.received_as(snapshot_guid(zfs, &target, &step.to.name).await?.as_deref()) {
            tracing::info!(%target, snapshot = %step.to.name, "stream already received (found its snapshot on the target)");
            return self.step_done(i).await;
        }
        // An interrupted `zfs receive -s` left partial state: a stored stream cannot resume at
        // the token's offset, so abort it and receive the stream again from its first chunk.
        if zfs.dataset_exists(target.as_str()).await? {
            if let Some(token) = zfs.get_property(target.as_str(), "receive_resume_token").await? {
                tracing::warn!(%target, snapshot = %step.to.name, token_len = token.len(), "aborting the interrupted partial receive (zfs receive -A); receiving that stream again from its first chunk");
                zfs.abort_partial_receive(&target).await?;
            }
        } else if !step.is_full() {
            return Err(RestoreError::Progress {
                path: self.file.path.clone(),
                message: format!(
                    "stream #{} is an incremental, but the target {target} is gone; remove this file to start over",
                    step.seq
                ),
            });
        }
        for c in &mut self.file.rec().chunks[i] {
            c.downloaded = false;
            c.received = false;
        }
        self.file.save().await?;

        let receive = ReceiveOptions {
            target: target.clone(),
            mountpoint: self.opts.mountpoint.clone(),
            full: step.is_full(),
        };
        let n_steps = self.file.rec().plan.steps.len();
        self.publish(
            RestorePhase::Receiving,
            Some(format!(
                "receiving stream {}/{n_steps}: {} ({} chunks)",
                i + 1,
                step.to.name,
                step.chunks.len()
            )),
        );
        let mut sink = zfs.receive(&receive)?;
        match self.feed(i, &step, &mut sink).await {
            Ok(()) => {
                sink.finish().await?;
                self.step_done(i).await
            }
            Err(Feed::ReceiveStopped(source)) => {
                // zfs receive stopped reading: its exit status and stderr say why.
                sink.finish().await?;
                let target = Path::new(target.as_str());
                Err(io_err("zfs receive stopped reading its input", target)(source).into())
            }
            Err(Feed::Failed(e)) => {
                // Nothing unverified was written and the stream's last chunk was held back, so
                // this receive cannot commit; it has exited when the error is reported.
                sink.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads step `i`'s chunks (at most `parallel` ahead) and writes each to `sink` once it
    /// is verified, in order. The last chunk is written only after the SHA-256 over the whole
    /// stream matched the manifest: until then the stream lacks its end, so a receive that is
    /// stopped can never have committed a stream the manifest does not describe.
    async fn feed(
        &mut self,
        i: usize,
        step: &PlanStep,
        sink: &mut ReceiveSink,
    ) -> Result<(), Feed> {
        let spool = self.file.spool.clone();
        spool.create().await.map_err(io_err("cannot create spool directory", spool.dir()))?;
        let remaining: Vec<String> = self.file.rec().plan.steps[i..]
            .iter()
            .flat_map(|s| s.chunks.iter().map(|c| c.key.clone()))
            .collect();
        self.rethaw.remaining(remaining).await;
        let ctx = self.ctx();
        let run = i.to_string();
        let was_ready: Vec<bool> = self.file.rec().chunks[i].iter().map(|c| c.ready).collect();
        // Per chunk: the manifest's class, or the object's own as HEAD found it.
        let thaw_needed: Vec<bool> =
            self.file.rec().chunks[i].iter().map(|c| step.needs_thaw() || c.archived).collect();
        self.ready_ahead.store(0, Ordering::Relaxed);
        // Futures collected first (not mapped lazily): keeps the task's future provably Send.
        let futs: Vec<_> = step
            .chunks
            .iter()
            .enumerate()
            .map(|(j, c)| {
                fetch_chunk(
                    ctx,
                    j,
                    c,
                    thaw_needed[j] && !was_ready[j],
                    thaw_needed[j],
                    spool.chunk_path(&run, j as u64),
                )
            })
            .collect();
        let mut fetches = futures::stream::iter(futs).buffered(self.parallel);

        let last = step.chunks.len().checked_sub(1);
        let mut whole = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let next = tokio::select! {
                n = fetches.next() => n,
                () = self.cancel.cancelled() => return Err(RestoreError::Cancelled { target: self.opts.target.to_string() }.into()),
            };
            let Some(fetched) = next else { break };
            let Fetched { index, path, thaw, archived } = fetched?;
            self.polls += thaw.polls;
            self.thaw_sent +=
                u64::from(thaw.requests) + self.rethaw.sent.swap(0, Ordering::Relaxed);
            {
                let c = &mut self.file.rec().chunks[i][index];
                c.archived |= archived;
                if (thaw_needed[index] || archived) && !c.ready {
                    c.ready = true;
                    let _ =
                        self.ready_ahead.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            n.checked_sub(1)
                        });
                }
                c.downloaded = true;
                c.thaw_requests += thaw.requests;
            }
            if index == 0
                && let Err(e) = self.check_stream_header(step, &path).await
            {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            let written = if Some(index) == last {
                // Hash first, write after: the stream's end goes out only if it all matches.
                copy_spool(&path, &mut buf, None, Some(&mut whole)).await?;
                let hashed = std::mem::take(&mut whole);
                if let Err(e) = self.check_stream_hash(step, hashed) {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(e.into());
                }
                copy_spool(&path, &mut buf, Some(sink), None).await
            } else {
                // Verified: now, and only now, its bytes go to zfs receive.
                copy_spool(&path, &mut buf, Some(sink), Some(&mut whole)).await
            };
            let _ = tokio::fs::remove_file(&path).await;
            written?;
            self.file.rec().chunks[i][index].received = true;
            self.file.save().await?;
            self.publish(RestorePhase::Receiving, None);
            failpoint::hit("restore-after-chunk");
        }
        if last.is_none() {
            // A stream of no chunks: nothing to hold back, still nothing unverified.
            self.check_stream_hash(step, whole)?;
        }
        Ok(())
    }

    /// The stream must be the one its manifest describes before any of it reaches `zfs
    /// receive`: its begin record (at the start of its first chunk) names the manifest's
    /// snapshots, is one dataset's stream (not a `zfs send -R`/`-p` package, which carries
    /// properties), and was sent raw when the manifest says `-w`.
    async fn check_stream_header(&self, step: &PlanStep, first: &Path) -> Result<(), Feed> {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::with_capacity(StreamHeader::LEN);
        let f =
            tokio::fs::File::open(first).await.map_err(io_err("cannot open spool file", first))?;
        f.take(StreamHeader::LEN as u64)
            .read_to_end(&mut head)
            .await
            .map_err(io_err("cannot read spool file", first))?;
        let from = step.from.as_ref().map(|f| f.guid.as_str());
        StreamHeader::parse(&head).and_then(|h| h.check(&step.to.guid, from, step.raw)).map_err(
            |detail| {
                tracing::error!(manifest = %step.manifest_key, %detail, "the stream is not the one its manifest describes");
                Feed::Failed(RestoreError::ForeignStream {
                    bucket: self.engine.s3.bucket().into(),
                    key: step.manifest_key.clone(),
                    detail,
                })
            },
        )
    }

    /// Every chunk matched its own SHA-256; a whole-stream mismatch means the manifest
    /// contradicts itself.
    fn check_stream_hash(&self, step: &PlanStep, hashed: Sha256) -> Result<(), RestoreError> {
        let sha = hex::encode(hashed.finalize());
        // An adopted stream has no stream SHA-256: each of its chunks matched its MD5 (another
        // tool's) or its SHA-256 (zib's, for an unfinished upload zib finished) and its size.
        let adopted = step.stream_sha256.is_empty() && step.chunks.iter().any(|c| c.md5.is_some());
        if sha == step.stream_sha256 || adopted {
            return Ok(());
        }
        Err(RestoreError::ChunkCorrupt {
            bucket: self.engine.s3.bucket().into(),
            key: step.manifest_key.clone(),
            detail: format!(
                "the stream's SHA-256 is {sha}, the manifest says {}",
                step.stream_sha256
            ),
        })
    }

    async fn step_done(&mut self, i: usize) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        rec.steps_received = i + 1;
        let thawed = rec.plan.steps[i].needs_thaw();
        for c in &mut rec.chunks[i] {
            c.ready |= thawed;
            c.downloaded = true;
            c.received = true;
        }
        self.file.save().await?;
        tracing::info!(target = %self.opts.target, stream = i + 1, "stream received");
        self.publish(RestorePhase::Receiving, None);
        Ok(())
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
                zfs.load_key(&target, &loc).await?;
                key_loaded = true;
            } else {
                next_steps.push(format!(
                    "{t} is encrypted (raw stream) and its key is not loaded: `zfs load-key -L file:///path/to/keyfile {t}` (or `-L prompt` for a passphrase), then `zfs set keylocation=file:///path/to/keyfile {t}` to keep it"
                ));
            }
        }
        let mut mounted = false;
        if key_loaded && !self.opts.no_mount {
            if self.opts.mountpoint.is_some() {
                zfs.mount(&target).await?;
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

/// Why feeding a stream to `zfs receive` stopped.
enum Feed {
    /// Writing to its stdin failed: the receive's own exit status says why.
    ReceiveStopped(std::io::Error),
    /// Anything else (a chunk that failed verification, a cancel, local I/O): the receive
    /// must be stopped without committing.
    Failed(RestoreError),
}

impl From<RestoreError> for Feed {
    fn from(e: RestoreError) -> Self {
        Self::Failed(e)
    }
}

impl From<PathError> for Feed {
    fn from(e: PathError) -> Self {
        Self::Failed(e.into())
    }
}

/// Reads spool file `path` in `buf`-sized pieces into `hash` and/or `sink`.
async fn copy_spool(
    path: &Path,
    buf: &mut [u8],
    mut sink: Option<&mut ReceiveSink>,
    mut hash: Option<&mut Sha256>,
) -> Result<(), Feed> {
    use tokio::io::AsyncReadExt;
    let mut f =
        tokio::fs::File::open(path).await.map_err(io_err("cannot open spool file", path))?;
    loop {
        let n = f.read(buf).await.map_err(io_err("cannot read spool file", path))?;
        if n == 0 {
            return Ok(());
        }
        if let Some(h) = hash.as_deref_mut() {
            h.update(&buf[..n]);
        }
        if let Some(s) = sink.as_deref_mut() {
            s.stdin().write_all(&buf[..n]).await.map_err(Feed::ReceiveStopped)?;
        }
    }
}

/// The GUID of `target@snap`, None if the dataset or snapshot does not exist.
async fn snapshot_guid(
    zfs: &Zfs,
    target: &DatasetName,
    snap: &SnapName,
) -> Result<Option<String>, ZfsError> {
    match zfs.snapshot_info(target, snap).await {
        Ok(s) => Ok(s.map(|s| s.guid)),
        Err(ZfsError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until chunk `c` is readable (asking for a thaw again if an earlier one expired),
/// downloads it to `path` while hashing, and checks size and SHA-256. The file exists on Ok
/// only; nothing unverified is ever returned.
async fn fetch_chunk(
    ctx: FetchCtx<'_>,
    index: usize,
    c: &ChunkRecord,
    count_ready: bool,
    needs_thaw: bool,
    path: PathBuf,
) -> Result<Fetched, RestoreError> {
    let mut t = ChunkThaw::default();
    let mut counted = !count_ready;
    let mut needs_thaw = needs_thaw;
    let mut found_archived = false;
    loop {
        if needs_thaw {
            wait_ready(ctx, &c.key, &mut t).await?;
            if !counted {
                counted = true;
                ctx.ready_ahead.fetch_add(1, Ordering::Relaxed);
                ctx.progress.send_modify(|p| p.thaw_ready += 1);
            }
        }
        match download(ctx, c, &path).await {
            Ok(()) => return Ok(Fetched { index, path, thaw: t, archived: found_archived }),
            Err(DownloadError::NotThawed) => {
                not_thawed(ctx, &c.key, needs_thaw, &mut t).await?;
                if !needs_thaw {
                    // Archived behind the manifest's back: thawed like the others from now on.
                    found_archived = true;
                    needs_thaw = true;
                    counted = false;
                    ctx.progress.send_modify(|p| p.thaw_needed += 1);
                }
            }
            Err(DownloadError::Other(e)) => return Err(e),
        }
    }
}

enum DownloadError {
    NotThawed,
    Other(RestoreError),
}

impl From<RestoreError> for DownloadError {
    fn from(e: RestoreError) -> Self {
        Self::Other(e)
    }
}

impl From<PathError> for DownloadError {
    fn from(e: PathError) -> Self {
        Self::Other(e.into())
    }
}

/// GET into `path`, hashing; verifies size and SHA-256 against the manifest. Retries a body
/// that breaks off mid-way (the SDK retries only the request itself).
async fn download(ctx: FetchCtx<'_>, c: &ChunkRecord, path: &Path) -> Result<(), DownloadError> {
    let bucket = ctx.s3.bucket();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let body = match ctx.s3.get(&c.key).await {
            Ok(b) => b,
            Err(e) if e.kind() == S3ErrorKind::NotThawed => {
                return Err(DownloadError::NotThawed);
            }
            Err(e) if e.is_not_found() => {
                return Err(RestoreError::ChunkMissing {
                    bucket: bucket.into(),
                    key: c.key.clone(),
                }
                .into());
            }
            Err(e) => return Err(RestoreError::from(e).into()),
        };
        crate::state_store::remove_stale(path)
            .map_err(io_err("cannot remove stale spool file", path))?;
        let mut file = tokio::fs::OpenOptions::from(crate::state_store::new_private_file())
            .open(path)
            .await
            .map_err(io_err("cannot create spool file", path))?;
        let mut hasher = Sha256::new();
        // An adopted chunk (another tool's) is known by its MD5, checked as its SHA-256 would be.
        let mut md5 = c.md5.as_ref().map(|_| <md5::Md5 as md5::Digest>::new());
        let mut size = 0u64;
        let mut reader = body.into_async_read();
        let mut buf = vec![0u8; 256 * 1024];
        let res: Result<(), std::io::Error> = async {
            loop {
                let n = ctx.s3.read_body(&mut reader, &mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                size += n as u64;
                if size > c.size {
                    return Ok(()); // too long: reported below, no need to read further
                }
                hasher.update(&buf[..n]);
                if let Some(m) = md5.as_mut() {
                    md5::Digest::update(m, &buf[..n]);
                }
                file.write_all(&buf[..n]).await.map_err(|e| {
                    std::io::Error::other(format!("writing {}: {e}", path.display()))
                })?;
            }
        }
        .await;
        match res {
            Ok(()) => {}
            Err(e) if attempt < 3 => {
                tracing::warn!(key = %c.key, error = %e, "download broke off; retrying");
                continue;
            }
            Err(e) => {
                return Err(io_err("downloading", Path::new(&c.key))(e).into());
            }
        }
        file.flush().await.map_err(io_err("cannot write spool file", path))?;
        drop(file);
        let sha = hex::encode(hasher.finalize());
        let detail = if size != c.size {
            Some(format!(
                "{}{size} bytes, the manifest says {}",
                if size > c.size { "more than " } else { "" },
                c.size
            ))
        } else if let (Some(want), Some(m)) = (&c.md5, md5) {
            let got = hex::encode(md5::Digest::finalize(m));
            (&got != want).then(|| format!("MD5 {got}, the manifest says {want}"))
        } else if sha != c.sha256 {
            Some(format!("SHA-256 {sha}, the manifest says {}", c.sha256))
        } else {
            None
        };
        if let Some(detail) = detail {
            let _ = tokio::fs::remove_file(path).await;
            tracing::error!(key = %c.key, %detail, "chunk failed verification");
            return Err(RestoreError::ChunkCorrupt {
                bucket: bucket.into(),
                key: c.key.clone(),
                detail,
            }
            .into());
        }
        ctx.progress.send_modify(|p| p.chunks_downloaded += 1);
        return Ok(());
    }
}
