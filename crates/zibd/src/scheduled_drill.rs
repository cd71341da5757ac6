//! Restore drills run by the daemon: `zibctl restore drill` and a dataset's `drill_schedule`.
//! A drill is the only proof that a backup restores, so the daemon offers it on a schedule to
//! datasets whose chunks need no thaw (the config refuses a schedule where they do). Either way
//! it is [`crate::restore::drill`], as `zibd restore drill` runs it, as a task of the daemon
//! holding the dataset's state lock ([`crate::job::JobHandle::lend`]: never beside a backup of
//! the same dataset) and a job slot. The last drill of each dataset is kept in
//! `<state_dir>/drill.json` for `zibctl status`, the metrics and the alerts, so a failed drill
//! still shows after a restart until one that passes replaces it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use zib_core::{
    DatasetName, SnapName,
    drill_summary::{DrillSummary, DrillTrigger},
    pricing::RestoreTier,
};
use zib_protocol::{DrillStatus, ErrorKind, Response};

use crate::{
    daemon::DaemonCore,
    restore::{DrillError, DrillOptions, DrillReport, RestoreOptions, drill, format_drill},
    sync::locked,
};

/// The file of the last drills, under the state directory.
pub const RECORD_FILE: &str = "drill.json";

/// Where a drill's progress record lives while it runs (not `restore/`: a drill cut short by
/// a crash is not a restore job to continue).
pub const WORK_DIR: &str = "drill";

/// How long a scheduled drill waits at most before asking again for a lock a backup holds.
const BUSY_RETRY: Duration = Duration::from_secs(30);

/// Days thawed copies stay readable, for a drill asked for with `yes` (as `zibd restore
/// drill`'s default).
const THAW_DAYS: u32 = 7;

/// The daemon's drills: the last of each dataset (kept), the next scheduled ones, those
/// running now. A clone is a handle on the same (a drill's task records into it).
#[derive(Debug, Clone)]
pub struct Drills {
    path: PathBuf,
    board: Arc<Mutex<Board>>,
    /// Makes two drills started within one second get distinct datasets.
    started: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Board {
    last: BTreeMap<String, DrillSummary>,
    next: BTreeMap<String, DateTime<Utc>>,
    running: BTreeSet<String>,
}

impl Drills {
    /// The drills kept under `state_dir` (none when the file is missing; a damaged one is
    /// reported and treated as none: the next drill writes a good one).
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join(RECORD_FILE);
        let last =
            crate::state_store::load_json(&path, "the last restore drills").unwrap_or_default();
        Self {
            path,
            board: Arc::new(Mutex::new(Board { last, ..Board::default() })),
            started: Arc::new(AtomicU64::new(0)),
        }
    }

    /// For the status reply: every dataset with a kept, scheduled or running drill, or only
    /// `dataset`.
    pub fn status(&self, dataset: Option<&str>) -> Vec<DrillStatus> {
        let b = locked(&self.board);
        let names: BTreeSet<&String> =
            b.last.keys().chain(b.next.keys()).chain(b.running.iter()).collect();
        names
            .into_iter()
            .filter(|n| dataset.is_none_or(|d| d == n.as_str()))
            .map(|n| DrillStatus {
                dataset: n.clone(),
                last: b.last.get(n).cloned(),
                next: b.next.get(n).copied(),
                running: b.running.contains(n),
            })
            .collect()
    }

    /// For the metrics and the alerts: the last drill of each dataset.
    pub fn last(&self) -> Vec<(String, DrillSummary)> {
        locked(&self.board).last.iter().map(|(n, d)| (n.clone(), d.clone())).collect()
    }

    fn set_next(&self, next: BTreeMap<String, DateTime<Utc>>) {
        locked(&self.board).next = next;
    }

    /// Keeps `s` as the last drill of `dataset`, in memory and on disk.
    fn record(&self, dataset: &DatasetName, s: DrillSummary) {
        let mut b = locked(&self.board);
        b.last.insert(dataset.to_string(), s);
        crate::state_store::save_json(&self.path, &b.last, "the last restore drills");
    }

    fn id(&self) -> String {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{n}", Utc::now().format("%Y%m%dT%H%M%S"), std::process::id())
    }
}

/// Marks a dataset's drill as running while alive.
struct Running(Drills, String);

impl Running {
    fn new(drills: &Drills, dataset: &DatasetName) -> Self {
        locked(&drills.board).running.insert(dataset.to_string());
        Running(drills.clone(), dataset.to_string())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        locked(&self.0.board).running.remove(&self.1);
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    pub dataset: String,
    pub snapshot: Option<String>,
    /// Thaw archived chunks (never for a scheduled drill).
    pub yes: bool,
    pub tier: RestoreTier,
    pub trigger: DrillTrigger,
}

/// Runs one drill and keeps its result; the reply is the report of `zibd restore drill`
/// (`result`: passed or failed), the quote when archived chunks need a `yes` (`result`:
/// needs_consent), or the error that kept it from starting (not kept: nothing was drilled).
pub async fn run(core: &DaemonCore, req: &DrillRequest) -> Response {
    let ctx = core.job_context();
    if ctx.shutdown.is_cancelled() {
        return Response::error(ErrorKind::ShuttingDown, "zibd is shutting down");
    }
    let job = match core.job(&req.dataset) {
        Ok(j) => j,
        Err(e) => return *e,
    };
    let cfg = core.config();
    let Some(ds) = cfg.dataset(job.name()) else {
        return Response::error(
            ErrorKind::NotFound,
            format!("{} is not in the config", req.dataset),
        );
    };
    let snapshot = match req.snapshot.as_deref().map(SnapName::new).transpose() {
        Ok(s) => s,
        Err(e) => return Response::error(ErrorKind::InvalidRequest, e.to_string()),
    };
    let name = job.name().clone();
    let lent = match job.lend(format!("a restore drill of {name} is running")).await {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let drills = core.drills().clone();
    let running = Running::new(&drills, &name);
    ctx.changed.notify_one();
    let slot = tokio::select! {
        () = ctx.shutdown.cancelled() => None,
        s = ctx.slots.clone().acquire_owned() => s.ok(),
    };
    let Some(slot) = slot else {
        return Response::error(ErrorKind::ShuttingDown, "zibd is shutting down");
    };

    let prefix = cfg.resolve(ds).prefix;
    let engine = core.restore_engine(None, Some(&prefix)).await;
    let mut restore = RestoreOptions::new(name.clone());
    restore.tier = req.tier;
    restore.days = THAW_DAYS;
    restore.pricing = cfg.pricing.clone();
    let opts = DrillOptions {
        dataset: name.clone(),
        snapshot,
        parent: None,
        id: drills.id(),
        yes: req.yes,
        keep: false,
        work_dir: cfg.daemon.state_dir.join(WORK_DIR),
        restore,
    };
    tracing::info!(dataset = %name, trigger = ?req.trigger, yes = req.yes, "restore drill starting");
    // On the tracker, so a shutdown waits for the drill to stop and destroy its dataset, and
    // recorded there, so a caller that goes away loses nothing.
    let cancel = ctx.shutdown.child_token();
    let (ctx, trigger) = (ctx.clone(), req.trigger);
    let task = ctx.tracker.clone().spawn(async move {
        let r = drill(&engine, &opts, &cancel).await;
        drop((lent, slot));
        let reply = conclude(&ctx, &drills, &name, trigger, r);
        drop(running);
        reply
    });
    task.await.unwrap_or_else(|e| {
        Response::error(ErrorKind::Internal, format!("the drill task failed: {e}"))
    })
}

/// Keeps what a drill came to and says it: the report, the quote, or why it could not run.
fn conclude(
    ctx: &crate::job::JobContext,
    drills: &Drills,
    name: &DatasetName,
    trigger: DrillTrigger,
    r: Result<DrillReport, DrillError>,
) -> Response {
    let at = ctx.clock.now();
    let (summary, reply) = match r {
        Ok(report) => (Some(summary_of(&report, at, trigger)), report_reply(&report)),
        Err(e @ DrillError::NeedsConsent { .. }) => {
            let reply = consent_reply(&e);
            // Asked for by hand, the quote is the answer; on the schedule, a drill that cannot
            // run is a failed one (someone must look).
            let kept = (trigger == DrillTrigger::Schedule)
                .then(|| DrillSummary::not_run(format!("not run: {e}"), at, trigger));
            (kept, reply)
        }
        Err(e) => {
            let message = format!("the restore drill of {name} could not run: {e}");
            tracing::error!(dataset = %name, "{message}");
            let kind = match e {
                DrillError::Restore(crate::restore::RestoreError::NoCatalog { .. }) => {
                    ErrorKind::NotFound
                }
                _ => ErrorKind::Internal,
            };
            (
                Some(DrillSummary::not_run(e.to_string(), at, trigger)),
                Response::error(kind, message),
            )
        }
    };
    if let Some(s) = summary {
        drills.record(name, s);
        // The metrics textfile and the alerts look again.
        ctx.run_ended.send_modify(|n| *n += 1);
    }
    reply
}

fn summary_of(r: &DrillReport, at: DateTime<Utc>, trigger: DrillTrigger) -> DrillSummary {
    DrillSummary {
        at,
        trigger,
        passed: r.passed(),
        snapshot: Some(r.snapshot.to_string()),
        seconds: r.seconds,
        bytes: r.bytes,
        chunks: r.chunks,
        cost: r.cost,
        currency: r.currency.clone(),
        reason: match &r.verdict {
            zib_core::drill::DrillVerdict::Passed => None,
            zib_core::drill::DrillVerdict::Failed { reason } => Some(reason.clone()),
        },
    }
}

fn report_reply(r: &DrillReport) -> Response {
    match serde_json::to_value(r) {
        Ok(json) => Response::Report { text: format_drill(r), json },
        Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
    }
}

/// The quote of a drill that must thaw, as a report whose `result` is `needs_consent`.
fn consent_reply(e: &DrillError) -> Response {
    let DrillError::NeedsConsent { dataset, snapshot, objects, bytes, cost, currency, tier, hours } =
        e
    else {
        return Response::error(ErrorKind::Internal, e.to_string());
    };
    let json = serde_json::json!({
        "result": "needs_consent",
        "dataset": dataset,
        "snapshot": snapshot,
        "thaw_objects": objects,
        "thaw_bytes": bytes,
        "cost": cost,
        "currency": currency,
        "tier": tier,
        "ready_within_hours": hours,
    });
    Response::Report { text: format!("{e}\n"), json }
}

/// The next tick of each dataset's `drill_schedule` after `after`.
fn next_ticks(core: &DaemonCore, after: DateTime<Utc>) -> BTreeMap<String, DateTime<Utc>> {
    let cfg = core.config();
    cfg.datasets
        .iter()
        .filter_map(|ds| {
            let s = ds.drill_schedule.as_ref()?.get_ref();
            Some((ds.name.to_string(), s.next_after(after, cfg.daemon.timezone)?))
        })
        .collect()
}

/// Starts the schedule task on the daemon's tracker ([`crate::job::clock::spawn_looks`], as
/// the scheduled verify); it runs whether or not a dataset has a `drill_schedule` now, since a
/// reload may set one. The drills due run one after the other; ticks that pass meanwhile are
/// skipped. A drill whose dataset is being backed up waits for the backup to end. Before
/// anything, the drills the last zibd left cut short are cleared
/// ([`crate::restore::clear_cut_short`]).
pub fn spawn(core: Arc<DaemonCore>) {
    let ctx = core.job_context().clone();
    // A drill cut short by the last zibd's death left its dataset: destroy it now. A drill
    // asked for meanwhile holds its own target's lock and so is never taken for one.
    let (zfs, dir) = (core.zfs().clone(), core.config().daemon.state_dir.join(WORK_DIR));
    ctx.tracker.spawn(async move { crate::restore::clear_cut_short(&zfs, &dir).await });
    let c = core.clone();
    let next = move |since| {
        let next = next_ticks(&c, since);
        c.drills().set_next(next.clone());
        next.into_iter().collect()
    };
    crate::job::clock::spawn_looks(&ctx, next, move |due| {
        let core = core.clone();
        async move {
            for dataset in due {
                scheduled(&core, dataset).await;
            }
        }
    });
}

/// One scheduled drill (none while the dataset is paused); while the dataset's backup holds its
/// lock, asks again when a run ends.
async fn scheduled(core: &DaemonCore, dataset: String) {
    let req = DrillRequest {
        dataset,
        snapshot: None,
        yes: false,
        tier: RestoreTier::Bulk,
        trigger: DrillTrigger::Schedule,
    };
    // A paused dataset's schedules are skipped, its drill's too.
    if let Response::Status { datasets, .. } = core.status(Some(&req.dataset))
        && datasets.first().is_some_and(|d| d.paused)
    {
        tracing::info!(dataset = %req.dataset, "scheduled restore drill skipped: the dataset is paused");
        return;
    }
    let mut run_ended = core.job_context().run_ended.subscribe();
    loop {
        match run(core, &req).await {
            Response::Error { kind: ErrorKind::Busy, message } => {
                tracing::info!(dataset = %req.dataset, "scheduled restore drill waits: {message}");
                // Asked again when a run ends, or after a while.
                let _ = tokio::time::timeout(BUSY_RETRY, run_ended.changed()).await;
            }
            Response::Error { kind, message } => {
                tracing::warn!(dataset = %req.dataset, %kind, "scheduled restore drill not run: {message}");
                return;
            }
            _ => return,
        }
    }
}
