//! Restore jobs in the daemon (`zibctl restore start|status`): one per target dataset, each in
//! its own task, continued after a daemon restart.

use std::{path::PathBuf, sync::Arc};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use zib_core::{
    DatasetName, SnapName,
    pricing::{Pricing, RestoreTier},
};

use crate::sync::locked;

use super::{
    PollBackoff, RestoreEngine, RestoreError, RestoreOptions, RestorePhase, RestoreProgress,
    RestoreProgressFile, RestoreRecord, run,
};

/// Options from a control-socket [`zib_protocol::RestoreStart`] (bucket/prefix overrides are
/// the caller's business: they choose the [`RestoreEngine`]; the control socket lets only root
/// make them, see [`crate::control::authorize`]).
pub fn options_from_request(
    req: &zib_protocol::RestoreStart,
) -> Result<RestoreOptions, RestoreError> {
    let bad = |e: zib_core::names::NameError| RestoreError::DatasetChoice(e.to_string());
    let mut o = RestoreOptions::new(DatasetName::new(&req.to).map_err(bad)?);
    o.dataset = Some(DatasetName::new(&req.dataset).map_err(bad)?);
    o.snapshot = req.snapshot.as_deref().map(SnapName::new).transpose().map_err(bad)?;
    o.tier = req.tier;
    o.days = req.days;
    o.mountpoint = req.mountpoint.clone();
    o.no_mount = req.no_mount;
    o.key_location = req.key_location.clone();
    Ok(o)
}

#[derive(Debug)]
struct JobSlot {
    dataset: String,
    tier: RestoreTier,
    started_at: DateTime<Utc>,
    progress: watch::Receiver<RestoreProgress>,
    cancel: CancellationToken,
    /// None while running; the outcome once the task ended.
    outcome: Arc<std::sync::Mutex<Option<JobOutcome>>>,
}

/// When a job ended, and how: Ok, or (cancelled?, message).
type JobOutcome = (DateTime<Utc>, Result<(), (bool, String)>);

/// The daemon's restore jobs: one per target dataset, whose name is the job id. Each runs
/// [`run`] in its own task with its progress file under `work_dir`, so a daemon restart
/// continues it ([`RestoreJobs::resume_unfinished`]) without asking for any thaw twice.
#[derive(Debug, Clone)]
pub struct RestoreJobs {
    work_dir: PathBuf,
    shutdown: CancellationToken,
    /// Thaw polling of resumed jobs.
    poll: PollBackoff,
    /// Where the jobs' tasks run (the daemon's, so that its shutdown waits for them).
    tracker: TaskTracker,
    /// The price table of resumed jobs (their thaw hours per tier).
    pricing: Pricing,
    jobs: Arc<std::sync::Mutex<std::collections::BTreeMap<String, JobSlot>>>,
}

impl RestoreJobs {
    /// `shutdown` stops every job at its next safe point (their records stay for the restart).
    pub fn new(work_dir: PathBuf, shutdown: CancellationToken) -> Self {
        Self {
            work_dir,
            shutdown,
            poll: PollBackoff::default(),
            tracker: TaskTracker::new(),
            pricing: Pricing::default(),
            jobs: Default::default(),
        }
    }

    /// The price table resumed jobs use (default [`Pricing::default`]).
    pub fn with_pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = pricing;
        self
    }

    /// Runs the jobs' tasks on `tracker` (the daemon's: its shutdown waits for them).
    pub fn with_tracker(mut self, tracker: TaskTracker) -> Self {
        self.tracker = tracker;
        self
    }

    /// How resumed jobs poll thaws (default [`PollBackoff::default`]).
    pub fn with_poll(mut self, poll: PollBackoff) -> Self {
        self.poll = poll;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, JobSlot>> {
        locked(&self.jobs)
    }

    /// Starts (or continues, if its record is unfinished) the restore into `opts.target`.
    /// A restore already running into that target, or an unreadable record, is refused here.
    pub fn start(
        &self,
        engine: RestoreEngine,
        opts: RestoreOptions,
    ) -> Result<String, RestoreError> {
        let id = opts.target.to_string();
        if self.lock().get(&id).is_some_and(|j| locked(&j.outcome).is_none()) {
            return Err(RestoreError::Locked { target: id, path: self.work_dir.clone() });
        }
        let mut file = RestoreProgressFile::open(&self.work_dir, &opts.target)?;
        let (tx, rx) = watch::channel(RestoreProgress::default());
        let cancel = self.shutdown.child_token();
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let slot = JobSlot {
            dataset: opts.dataset.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            tier: opts.tier,
            started_at: Utc::now(),
            progress: rx,
            cancel: cancel.clone(),
            outcome: outcome.clone(),
        };
        self.lock().insert(id.clone(), slot);
        let job_id = id.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            if let Some(rec) = file.record.as_mut().filter(|r| r.cancelled_at.is_some()) {
                // Started again after a cancel: a restart continues it from now on.
                rec.cancelled_at = None;
                if let Err(e) = file.save().await {
                    tracing::warn!(job = %job_id, error = %e, "could not clear the cancel mark of the restore record");
                }
            }
            let r = run(&engine, &opts, &mut file, &tx, &cancel).await;
            if matches!(r, Err(RestoreError::Cancelled { .. }))
                && !shutdown.is_cancelled()
                && let Some(rec) = file.record.as_mut()
            {
                // Cancelled on request, not by a shutdown: a restart must not continue it.
                rec.cancelled_at = Some(Utc::now());
                if let Err(e) = file.save().await {
                    tracing::error!(job = %job_id, error = %e, "could not record the cancel; a restart of zibd would continue this restore");
                }
            }
            let r = match r {
                Ok(rep) => {
                    tracing::info!(target = %rep.target, snapshot = %rep.snapshot, "restore job done; {}", rep.next_steps.join("; "));
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "restore job stopped");
                    Err((matches!(e, RestoreError::Cancelled { .. }), e.to_string()))
                }
            };
            *locked(&outcome) = Some((Utc::now(), r));
        });
        Ok(id)
    }

    /// Continues every unfinished restore recorded in the work dir (call once at daemon
    /// start). `engine_for(bucket, prefix)` builds the S3 side for a record.
    pub async fn resume_unfinished<F, Fut>(
        &self,
        engine_for: F,
    ) -> Vec<Result<String, RestoreError>>
    where
        F: Fn(String, String) -> Fut,
        Fut: std::future::Future<Output = RestoreEngine>,
    {
        let mut out = Vec::new();
        let Ok(mut dir) = tokio::fs::read_dir(&self.work_dir).await else { return out };
        while let Ok(Some(e)) = dir.next_entry().await {
            let n = e.file_name().to_string_lossy().into_owned();
            if !(n.starts_with("restore-") && n.ends_with(".json")) {
                continue;
            }
            let rec: Option<RestoreRecord> =
                std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match rec {
                Some(r) if r.cancelled_at.is_some() && r.finished_at.is_none() => {
                    tracing::info!(target = %r.target, "a cancelled restore job is not continued; `zibctl restore start` continues it");
                }
                Some(r) if r.finished_at.is_none() => {
                    let engine = engine_for(r.bucket.clone(), r.plan.prefix.clone()).await;
                    let opts = RestoreOptions {
                        poll: self.poll,
                        pricing: self.pricing.clone(),
                        ..RestoreOptions::from_record(&r)
                    };
                    out.push(self.start(engine, opts));
                }
                Some(_) => {}
                None => out.push(Err(RestoreError::Progress {
                    path: e.path(),
                    message: "unreadable restore record; not resumed".into(),
                })),
            }
        }
        out
    }

    /// Asks a running job to stop at its next safe point; false if there is no such job.
    pub fn cancel(&self, id: &str) -> bool {
        self.lock().get(id).map(|j| j.cancel.cancel()).is_some()
    }

    /// `zibctl restore cancel`: the reply to a request to cancel job `id`.
    pub fn cancel_request(&self, id: &str) -> zib_protocol::Response {
        use zib_protocol::{ErrorKind, Response};
        let jobs = self.lock();
        let Some(j) = jobs.get(id) else {
            let known: Vec<&str> = jobs.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".into() } else { known.join(", ") };
            return Response::error(
                ErrorKind::NotFound,
                format!("no restore job {id} (jobs: {known})"),
            );
        };
        if let Some((at, outcome)) = locked(&j.outcome).clone() {
            let how = match outcome {
                Ok(()) => "finished",
                Err((true, _)) => "was cancelled",
                Err((false, _)) => "failed",
            };
            return Response::error(
                ErrorKind::Conflict,
                format!("restore job {id} is not running: it {how} at {}", at.to_rfc3339()),
            );
        }
        j.cancel.cancel();
        tracing::info!(job = %id, "restore job cancel requested");
        Response::ok(format!(
            "cancelling restore job {id}: it stops at its next safe point; a restart of zibd does not continue it, `zibctl restore start` into {id} does"
        ))
    }

    /// Jobs still running.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|j| locked(&j.outcome).is_none()).count()
    }

    /// Status of one job or all, in the control protocol's shape.
    pub fn status(&self, id: Option<&str>) -> Vec<zib_protocol::RestoreJobStatus> {
        use zib_protocol::RestoreState as S;
        self.lock()
            .iter()
            .filter(|(k, _)| id.is_none_or(|i| i == k.as_str()))
            .map(|(k, j)| {
                let p = j.progress.borrow().clone();
                let outcome = locked(&j.outcome).clone();
                let (state, finished_at, error) = match outcome {
                    None => (
                        match p.phase {
                            RestorePhase::Planning => S::Planning,
                            RestorePhase::Thawing => S::Thawing,
                            RestorePhase::Receiving | RestorePhase::Finishing => S::Receiving,
                            RestorePhase::Done => S::Done,
                        },
                        None,
                        None,
                    ),
                    Some((at, Ok(()))) => (S::Done, Some(at), None),
                    Some((at, Err((true, m)))) => (S::Cancelled, Some(at), Some(m)),
                    Some((at, Err((false, m)))) => (S::Failed, Some(at), Some(m)),
                };
                zib_protocol::RestoreJobStatus {
                    id: k.clone(),
                    dataset: p.dataset.clone().unwrap_or_else(|| j.dataset.clone()),
                    snapshot: p.snapshot.clone(),
                    to: k.clone(),
                    tier: Some(j.tier),
                    state,
                    started_at: p.started_at.unwrap_or(j.started_at),
                    objects_total: p.thaw_needed,
                    objects_ready: p.thaw_ready,
                    bytes_received: p.bytes_received,
                    bytes_total: (p.bytes_total > 0).then_some(p.bytes_total),
                    thaw_expected_at: p.thaw_expected_at,
                    finished_at,
                    error,
                }
            })
            .collect()
    }
}
