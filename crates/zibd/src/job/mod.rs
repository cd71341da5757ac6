//! One task per dataset: it owns the dataset's state lock, waits for the next cron tick (via a
//! [`Clock`]), takes commands (trigger, pause, resume, cancel, new settings, retire) and runs
//! at most one backup at a time.
//!
//! Rules:
//! - Never two runs of one dataset at once: a tick that comes while a run is going (or waiting
//!   for a job slot) is skipped and counted in `missed_ticks`; several ticks that passed while
//!   the clock jumped are coalesced into one run and the rest counted as missed.
//! - A paused dataset arms no timer (its ticks are skipped, not counted as missed); pausing
//!   stops a running backup at its next safe point, and resuming continues a backup the pause
//!   interrupted right away.
//! - Runs take a slot of the daemon-wide semaphore (`daemon.max_concurrent_jobs`) first;
//!   while waiting they show as `queued`.
//! - The run itself is a separate task (tracked by the daemon's `TaskTracker`) that borrows
//!   the state lock and gives it back when it ends; its `CancellationToken` is a child of the
//!   daemon's shutdown token, so SIGTERM stops it at the engine's next safe point.
//! - Status is read from [`Shared`] under a std `Mutex` that is never held across an await.
//! - A restore drill of the dataset borrows the state lock from the task ([`JobHandle::lend`]):
//!   refused while a backup runs; while it is out, triggers are refused as busy and a tick
//!   waits for it (the backup starts when the lock comes back).
//! - A tree's member destroyed on the host ("source gone", from the tree's listing or found by
//!   a run that failed) arms no timer and refuses triggers; it is logged once and its status
//!   note says how many chains the bucket keeps of it. Nothing is deleted.

pub mod clock;
mod mailbox;

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
    task::{JoinError, JoinHandle},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use zib_core::{
    Config, DatasetConfig, DatasetName,
    metrics::{AttemptResult, DatasetActivity, DatasetMetrics},
};
use zib_protocol::{
    DatasetStatus, ErrorKind, JobState, LastError, LastSuccess, ProgressUpdate, Response, RunNote,
    RunProgress,
};

use crate::{
    backup::{self, BackupError, BackupOptions, Engine, Outcome, Phase, Progress},
    control::Reply,
    state_store::{LockedState, StateStore},
    sync::locked as lock,
};

pub use clock::{Clock, ManualClock, SystemClock};

/// What all job tasks share with the daemon.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Wall-clock time for schedules.
    pub clock: Arc<dyn Clock>,
    /// Job slots: `daemon.max_concurrent_jobs` permits.
    pub slots: Arc<Semaphore>,
    /// Tracks job tasks and their runs, for a bounded shutdown.
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Poked whenever a job's status changes (keeps systemd's STATUS= current).
    pub changed: Arc<Notify>,
    /// Counts runs that ended, bumped once the outcome is in the status (the metrics textfile
    /// and notifications watch it).
    pub run_ended: Arc<watch::Sender<u64>>,
}

/// The configuration a job runs with. A running backup keeps the settings it started with;
/// new ones (after a reload) apply from the next run.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub cfg: Arc<Config>,
    pub ds: DatasetConfig,
    pub engine: Engine,
    /// The root of the tree whose entry brought this dataset in (None: its own entry).
    pub tree: Option<DatasetName>,
    /// A tree's member that no longer exists on the host: no runs, no failures; its chains
    /// stay in the bucket (see [`Task::enter_source_gone`]).
    pub source_gone: bool,
}

/// Commands to a job task.
#[derive(Debug)]
enum Command {
    Trigger {
        wait: bool,
        full: bool,
        reply: oneshot::Sender<Reply>,
    },
    Pause {
        reply: oneshot::Sender<Response>,
    },
    Resume {
        reply: oneshot::Sender<Response>,
    },
    Cancel {
        reply: oneshot::Sender<Response>,
    },
    Prune {
        dry_run: bool,
        reply: oneshot::Sender<Response>,
    },
    /// Lend the state lock (a restore drill): `why` is what a refused trigger is told.
    Lend {
        why: String,
        reply: oneshot::Sender<Result<Lent, Box<Response>>>,
    },
    /// The lent lock, given back.
    Return(Box<LockedState>),
    Update(Box<JobSettings>),
    Retire,
}

/// A dataset's state lock lent by its task ([`JobHandle::lend`]): no backup of the dataset
/// runs while it is out. Dropping it gives the lock back (or, the task gone, releases it).
#[derive(Debug)]
pub struct Lent {
    locked: Option<LockedState>,
    tx: mailbox::Sender<Command>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(l) = self.locked.take() {
            // A task that has ended drops it with the error: the lock is released.
            let _ = self.tx.send(Command::Return(Box::new(l)));
        }
    }
}

/// What the task's current run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Idle,
    Queued,
    Running,
    Cancelling,
}

/// Status of one dataset, shared between its task and status requests.
#[derive(Debug)]
struct Shared {
    schedule: String,
    paused: bool,
    activity: Activity,
    progress: Option<watch::Receiver<Progress>>,
    incremental: bool,
    /// (when, bytes_done) samples of the current run, one a second, for the rate.
    samples: VecDeque<(Instant, u64)>,
    last_success: Option<LastSuccess>,
    last_error: Option<LastError>,
    /// The last run failed (and none succeeded since).
    failed: bool,
    next_run: Option<DateTime<Utc>>,
    chain_length: u32,
    missed_ticks: u64,
    last_note: Option<RunNote>,
    /// The `stale_after` in force (zib-core's alerts rule), worked out when the schedule or
    /// the settings change rather than at every status request: with 1,000 datasets the cron
    /// arithmetic was most of a status reply's time.
    stale_after_secs: Option<u64>,
    /// For the metrics: the last run's end and result (runs stopped on request not counted),
    /// objects of the last backup committed by this daemon, and counters since the start.
    last_attempt: Option<(DateTime<Utc>, AttemptResult)>,
    last_backup_objects: Option<u64>,
    uploaded_bytes: u64,
    puts: u64,
    failures: u64,
}

/// Rate samples kept: the rate is averaged over the last ~10 seconds.
const RATE_WINDOW: usize = 11;

/// The daemon's handle on one dataset's task.
#[derive(Debug, Clone)]
pub struct JobHandle {
    name: DatasetName,
    tx: mailbox::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
}

fn gone(name: &DatasetName) -> Response {
    Response::error(
        ErrorKind::ShuttingDown,
        format!(
            "the task of {name} has stopped (zibd is shutting down or the dataset was removed)"
        ),
    )
}

impl JobHandle {
    pub fn name(&self) -> &DatasetName {
        &self.name
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Response>) -> Command) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).is_err() {
            return gone(&self.name);
        }
        rx.await.unwrap_or_else(|_| gone(&self.name))
    }

    /// Starts a backup now; with `wait`, the reply streams progress until it ends. `full`
    /// starts a new chain (`zibd backup --full`: an unfinished backup is abandoned).
    pub async fn trigger(&self, wait: bool, full: bool) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Trigger { wait, full, reply: tx }).is_err() {
            return gone(&self.name).into();
        }
        rx.await.unwrap_or_else(|_| gone(&self.name).into())
    }

    pub async fn pause(&self) -> Response {
        self.ask(|reply| Command::Pause { reply }).await
    }

    pub async fn resume(&self) -> Response {
        self.ask(|reply| Command::Resume { reply }).await
    }

    pub async fn cancel(&self) -> Response {
        self.ask(|reply| Command::Cancel { reply }).await
    }

    /// Remote retention now, under the dataset's lock (refused while a backup runs); the
    /// reply is the report of `zibd prune`.
    pub async fn prune(&self, dry_run: bool) -> Response {
        self.ask(|reply| Command::Prune { dry_run, reply }).await
    }

    /// Borrows the dataset's state lock (for a restore drill, `why` saying so to a refused
    /// trigger): no backup of it starts until the [`Lent`] is dropped; a scheduled tick that
    /// comes meanwhile runs then. Refused, with the reply to send, while a backup runs (or
    /// waits for a slot) or the lock is lent already.
    pub async fn lend(&self, why: String) -> Result<Lent, Box<Response>> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Lend { why, reply: tx }).is_err() {
            return Err(Box::new(gone(&self.name)));
        }
        rx.await.unwrap_or_else(|_| Err(Box::new(gone(&self.name))))
    }

    /// New settings from a reloaded config (applies from the next run).
    pub fn update(&self, settings: JobSettings) {
        let _ = self.tx.send(Command::Update(Box::new(settings)));
    }

    /// The dataset left the config: stop scheduling, let a running backup finish, release the
    /// state lock and end the task.
    pub fn retire(&self) {
        let _ = self.tx.send(Command::Retire);
    }

    /// Whether a backup holds a job slot (or is stopping) right now.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.shared).activity, Activity::Running | Activity::Cancelling)
    }

    /// The dataset's status record.
    pub fn status(&self) -> DatasetStatus {
        let s = lock(&self.shared);
        DatasetStatus {
            dataset: self.name.to_string(),
            state: job_state(&s),
            paused: s.paused,
            schedule: Some(s.schedule.clone()),
            progress: run_progress(&s),
            last_success: s.last_success.clone(),
            last_error: s.last_error.clone(),
            next_run: if s.paused { None } else { s.next_run },
            chain_length: s.chain_length,
            missed_ticks: s.missed_ticks,
            last_note: s.last_note.clone(),
            stale_after_secs: s.stale_after_secs,
        }
    }

    /// The dataset's metrics; the counters include what the running backup has PUT so far.
    pub fn metrics(&self) -> DatasetMetrics {
        let s = lock(&self.shared);
        let (run_bytes, run_puts) = match &s.progress {
            Some(p) if s.activity != Activity::Idle => {
                let p = p.borrow();
                (p.bytes_uploaded, p.puts)
            }
            _ => (0, 0),
        };
        let activity = match job_state(&s) {
            JobState::Snapshotting
            | JobState::Uploading
            | JobState::Finishing
            | JobState::Cancelling => DatasetActivity::Running,
            JobState::Queued => DatasetActivity::Queued,
            JobState::Paused => DatasetActivity::Paused,
            JobState::Failed => DatasetActivity::Failed,
            JobState::Scheduled => DatasetActivity::Scheduled,
            _ => DatasetActivity::Idle,
        };
        DatasetMetrics {
            dataset: self.name.to_string(),
            activity,
            last_success_at: s.last_success.as_ref().map(|l| l.at),
            last_attempt: s.last_attempt,
            last_backup_bytes: s.last_success.as_ref().map(|l| l.bytes),
            last_backup_objects: s.last_backup_objects,
            chain_length: s.chain_length,
            uploaded_bytes: s.uploaded_bytes + run_bytes,
            puts: s.puts + run_puts,
            failures: s.failures,
            next_run: if s.paused { None } else { s.next_run },
        }
    }
}

fn job_state(s: &Shared) -> JobState {
    match s.activity {
        Activity::Queued => JobState::Queued,
        Activity::Cancelling => JobState::Cancelling,
        Activity::Running => match s.progress.as_ref().map(|p| p.borrow().phase) {
            Some(Phase::Uploading) => JobState::Uploading,
            Some(Phase::Committing | Phase::Pruning) => JobState::Finishing,
            _ => JobState::Snapshotting,
        },
        Activity::Idle if s.paused => JobState::Paused,
        Activity::Idle if s.failed => JobState::Failed,
        Activity::Idle if s.next_run.is_some() => JobState::Scheduled,
        Activity::Idle => JobState::Idle,
    }
}

/// Counters of the running backup, with the rate over the last samples and the ETA.
fn run_progress(s: &Shared) -> Option<RunProgress> {
    if s.activity == Activity::Idle {
        return None;
    }
    let p = s.progress.as_ref()?.borrow().clone();
    let rate = match (s.samples.front(), s.samples.back()) {
        (Some(&(t0, b0)), Some(&(t1, b1)))
            if t1.duration_since(t0) >= Duration::from_millis(900) =>
        {
            Some(((b1.saturating_sub(b0)) as f64 / t1.duration_since(t0).as_secs_f64()) as u64)
        }
        _ => None,
    };
    let eta = match (rate, p.bytes_estimate) {
        (Some(r), Some(total)) if r > 0 => Some(total.saturating_sub(p.bytes_done).div_ceil(r)),
        _ => None,
    };
    let chunks_total = match (p.bytes_estimate, p.chunk_size) {
        (Some(total), size) if size > 0 => Some(total.div_ceil(size).max(1)),
        _ => None,
    };
    Some(RunProgress {
        snapshot: p.snapshot.unwrap_or_default(),
        incremental: s.incremental,
        started_at: p.started_at,
        bytes_sent: p.bytes_done,
        bytes_total_estimate: p.bytes_estimate,
        chunks_done: p.chunks_done,
        chunks_total_estimate: chunks_total,
        rate_bytes_per_sec: rate,
        eta_secs: eta,
    })
}

fn progress_update(name: &DatasetName, shared: &Mutex<Shared>) -> ProgressUpdate {
    let s = lock(shared);
    let message = (s.activity == Activity::Queued)
        .then(|| "waiting for a job slot (daemon.max_concurrent_jobs)".to_owned());
    ProgressUpdate {
        dataset: name.to_string(),
        state: job_state(&s),
        progress: run_progress(&s),
        message,
    }
}

/// Starts the task of one dataset (on the context's tracker) and returns its handle.
pub fn spawn(ctx: JobContext, settings: JobSettings, locked: LockedState) -> JobHandle {
    let name = settings.ds.name.clone();
    let st = &locked.state;
    let shared = Arc::new(Mutex::new(Shared {
        schedule: settings.ds.schedule.as_str().to_owned(),
        paused: false,
        activity: Activity::Idle,
        progress: None,
        incremental: false,
        samples: VecDeque::new(),
        last_success: st.last.as_ref().map(|c| LastSuccess {
            at: st.stats.last_success_at.unwrap_or(c.committed_at),
            snapshot: Some(name.snapshot(&c.snapshot.name)),
            bytes: c.stream_size,
        }),
        last_error: match (&st.stats.last_error, st.stats.last_error_at) {
            (Some(m), Some(at)) => Some(LastError { at, message: m.clone() }),
            _ => None,
        },
        failed: st.stats.last_error.is_some(),
        next_run: None,
        chain_length: chain_length(&locked),
        missed_ticks: 0,
        last_note: None,
        stale_after_secs: None,
        last_attempt: match (st.stats.last_success_at, st.stats.last_error_at) {
            (Some(ok), Some(err)) if err > ok => Some((err, AttemptResult::Failure)),
            (Some(ok), _) => Some((ok, AttemptResult::Success)),
            (None, Some(err)) => Some((err, AttemptResult::Failure)),
            (None, None) => None,
        },
        last_backup_objects: None,
        uploaded_bytes: 0,
        puts: 0,
        failures: 0,
    }));
    let (tx, rx) = mailbox::mailbox();
    let now = ctx.clock.now();
    let mut task = Task {
        name: name.clone(),
        ctx: ctx.clone(),
        settings,
        shared: shared.clone(),
        self_tx: tx.downgrade(),
        rx,
        locked: Some(locked),
        run: None,
        paused: false,
        retiring: false,
        last_base: now,
        next_fire: None,
        resume_interrupted: false,
        source_gone: false,
        lent: None,
        after_lend: false,
    };
    // Armed before the handle is returned, so a status right after start shows the next run.
    task.reschedule();
    ctx.tracker.spawn(Box::new(task).run());
    JobHandle { name, tx, shared }
}

/// Backups in the current chain (from its full when known, else the newest seq).
fn chain_length(locked: &LockedState) -> u32 {
    let n = locked.state.last.as_ref().map_or(0, |c| c.chain_length().unwrap_or(c.seq));
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What a run hands back: the state lock, its result and its job slot (None if it never got
/// one). The slot goes back only once the task has recorded the run's end, so that no status
/// shows more backups running than `max_concurrent_jobs`.
type RunResult = (LockedState, Result<Outcome, BackupError>, Option<OwnedSemaphorePermit>);

/// Why a run was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Paused,
    Cancelled,
}

struct Run {
    handle: JoinHandle<RunResult>,
    cancel: CancellationToken,
    done: watch::Sender<Option<Response>>,
    stop: Option<Stop>,
    /// The state's recorded error before the run: a cancelled run must not leave one.
    prev_error: (Option<String>, Option<DateTime<Utc>>),
}

struct Task {
    name: DatasetName,
    ctx: JobContext,
    settings: JobSettings,
    shared: Arc<Mutex<Shared>>,
    rx: mailbox::Receiver<Command>,
    /// Its own queue, for a lent lock to come back by (weak: the handles' going still ends
    /// the task).
    self_tx: mailbox::WeakSender<Command>,
    /// The state lock; `None` while a run has it.
    locked: Option<LockedState>,
    run: Option<Run>,
    paused: bool,
    retiring: bool,
    /// The time up to which the schedule's ticks have been dealt with.
    last_base: DateTime<Utc>,
    /// When the timer fires next (the next tick plus jitter).
    next_fire: Option<DateTime<Utc>>,
    /// The run was stopped by a pause: resume continues it at once.
    resume_interrupted: bool,
    /// The dataset is gone from the host (a tree's member): see the module docs.
    source_gone: bool,
    /// The state lock is lent (a restore drill), and why: see [`JobHandle::lend`].
    lent: Option<String>,
    /// A backup is due when the lent lock comes back (a tick came while it was out).
    after_lend: bool,
}

/// The run's end, boxed: the `select!` of the task's loop keeps the output of its largest
/// branch inline, and this one (the state it gives back) was most of an idle task's future.
async fn wait_run(run: &mut Option<Run>) -> Box<Result<RunResult, JoinError>> {
    match run {
        Some(r) => Box::new((&mut r.handle).await),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(sleep: Option<clock::BoxFuture>) {
    match sleep {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

impl Task {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    fn changed(&self) {
        self.ctx.changed.notify_one();
    }

    /// The task's loop. `self` is boxed: an async fn keeps its by-value arguments twice in its
    /// future (as the argument and as the local it is moved into), and 1,000 idle tasks each
    /// carried two copies of this struct in their task cells.
    async fn run(mut self: Box<Self>) {
        if self.settings.source_gone {
            Box::pin(self.enter_source_gone()).await;
        }
        loop {
            let fire = if self.paused || self.retiring { None } else { self.next_fire };
            let sleep = fire.map(|t| self.ctx.clock.sleep_until(t));
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    // Awaited here: commands and ticks that come meanwhile wait for it. Boxed,
                    // as is a run's end below: an idle task's future is only as large as its
                    // biggest inline await, and 1,000 idle datasets each carried a prune's.
                    Some(Command::Prune { dry_run, reply }) => {
                        let r = Box::pin(self.prune(dry_run)).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Update(settings)) => Box::pin(self.update(*settings)).await,
                    Some(cmd) => self.on_command(cmd),
                    None => self.retiring = true,
                },
                res = wait_run(&mut self.run) => Box::pin(self.on_run_done(*res)).await,
                () = sleep_opt(sleep) => self.on_tick(),
            }
            if self.retiring && self.run.is_none() {
                tracing::info!(dataset = %self.name, "dataset removed from the config; its task ends");
                break;
            }
        }
        // Shutdown: the run's token is a child of the shutdown token, so it is stopping at its
        // next safe point already; wait for it so the state is saved before the lock goes.
        if self.run.is_some() {
            let res = wait_run(&mut self.run).await;
            Box::pin(self.on_run_done(*res)).await;
        }
        // Refuse whatever is still queued.
        self.rx.close();
        while let Some(cmd) = self.rx.try_recv() {
            self.refuse(cmd);
        }
    }

    fn refuse(&self, cmd: Command) {
        let r = gone(&self.name);
        match cmd {
            Command::Trigger { reply, .. } => drop(reply.send(r.into())),
            Command::Pause { reply }
            | Command::Resume { reply }
            | Command::Cancel { reply }
            | Command::Prune { reply, .. } => drop(reply.send(r)),
            Command::Lend { reply, .. } => drop(reply.send(Err(Box::new(r)))),
            Command::Update(_) | Command::Retire | Command::Return(_) => {}
        }
    }

    /// Arms the timer for the first tick after `last_base`, plus jitter.
    fn reschedule(&mut self) {
        let ds = &self.settings.ds;
        let tz = self.settings.cfg.daemon.timezone;
        self.next_fire = ds.schedule.next_after(self.last_base, tz).map(|t| {
            let jitter = if ds.jitter_secs > 0 { fastrand::u64(0..=ds.jitter_secs) } else { 0 };
            t + chrono::Duration::seconds(jitter as i64)
        });
        if self.source_gone {
            self.next_fire = None;
        }
        let next = if self.paused || self.retiring { None } else { self.next_fire };
        self.shared().next_run = next;
        self.refresh_stale_after();
        self.changed();
    }

    fn refresh_stale_after(&mut self) {
        let (ds, tz) = (&self.settings.ds, self.settings.cfg.daemon.timezone);
        let secs = zib_core::alerts::stale_after(ds, tz, self.ctx.clock.now()).map(|d| d.as_secs());
        self.shared().stale_after_secs = secs;
    }

    fn on_tick(&mut self) {
        let now = self.ctx.clock.now();
        let tz = self.settings.cfg.daemon.timezone;
        let due =
            self.settings.ds.schedule.ticks_between(self.last_base, now, tz, 10_000).max(1) as u64;
        self.last_base = now;
        if self.run.is_some() {
            self.shared().missed_ticks += due;
            tracing::warn!(dataset = %self.name, missed = due, "scheduled run skipped: the previous run is still going");
        } else {
            if due > 1 {
                self.shared().missed_ticks += due - 1;
                tracing::warn!(dataset = %self.name, missed = due - 1, "several scheduled runs were due at once; running once");
            }
            if self.ctx.shutdown.is_cancelled() {
                // Stopping: start nothing new.
            } else if let Some(why) = &self.lent {
                tracing::info!(dataset = %self.name, "scheduled run waits: {why}");
                self.after_lend = true;
            } else if let Some(why) = self.restore_in_progress() {
                self.shared().missed_ticks += 1;
                tracing::warn!(dataset = %self.name, "scheduled run skipped: {why}");
            } else if let Err(e) = self.start_run(BackupOptions::default()) {
                tracing::error!(dataset = %self.name, error = %e, "scheduled run could not start");
            }
        }
        self.reschedule();
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Trigger { wait, full, reply } => {
                let r = self.trigger(wait, full);
                let _ = reply.send(r);
            }
            Command::Pause { reply } => {
                let _ = reply.send(self.pause());
            }
            Command::Resume { reply } => {
                let _ = reply.send(self.resume());
            }
            Command::Cancel { reply } => {
                let msg = if self.stop_run(Stop::Cancelled) {
                    format!(
                        "cancelling the backup of {}: it stops at its next safe point and resumes from the last stored chunk on its next run",
                        self.name
                    )
                } else {
                    format!("no backup of {} is running", self.name)
                };
                let _ = reply.send(Response::ok(msg));
            }
            Command::Prune { reply, .. } => {
                // Run from the task's loop (it awaits); not reached.
                let _ = reply.send(Response::error(ErrorKind::Internal, "prune not run"));
            }
            Command::Lend { why, reply } => {
                // Unsent (the borrower is gone), the lock comes straight back.
                let _ = reply.send(self.lend(why));
            }
            Command::Return(locked) => self.take_back(*locked),
            Command::Update(_) => {
                // Awaited in the task's loop (it may count chains); not reached.
            }
            Command::Retire => {
                self.retiring = true;
                self.shared().next_run = None;
            }
        }
    }

    /// New settings from the daemon (a reload, or a tree's listing).
    async fn update(&mut self, settings: JobSettings) {
        let gone = settings.source_gone;
        {
            let old = &self.settings;
            let reschedule = old.ds.schedule != settings.ds.schedule
                || old.ds.jitter_secs != settings.ds.jitter_secs
                || old.cfg.daemon.timezone != settings.cfg.daemon.timezone;
            self.shared().schedule = settings.ds.schedule.as_str().to_owned();
            self.settings = settings;
            if reschedule {
                self.last_base = self.ctx.clock.now();
                self.reschedule();
            } else {
                self.refresh_stale_after();
            }
        }
        if gone && !self.source_gone {
            self.enter_source_gone().await;
        } else if !gone && self.source_gone {
            self.source_gone = false;
            tracing::info!(dataset = %self.name, "the dataset exists again; its backups continue (a broken chain starts anew as on_broken_chain says)");
            self.shared().last_note = None;
            self.last_base = self.ctx.clock.now();
            self.reschedule();
        }
    }

    /// The dataset is gone from the host: no timer, no failure; logged once, with the chains
    /// the bucket keeps of it (one listing of its prefix), which the status note shows too.
    async fn enter_source_gone(&mut self) {
        self.source_gone = true;
        self.reschedule();
        let s = &self.settings;
        let prefix = s.cfg.resolve(&s.ds).prefix;
        let chains =
            crate::restore::load_catalog(&s.engine.s3, &prefix, Some(&self.name), None).await;
        let kept = match chains {
            Ok(c) => {
                let n = c
                    .datasets
                    .iter()
                    .find(|c| c.dataset == self.name)
                    .map_or(0, |c| c.chains().0.len());
                format!("{n} chains kept in bucket")
            }
            Err(crate::restore::RestoreError::NoCatalog { .. }) => {
                "0 chains kept in bucket".to_owned()
            }
            Err(e) => format!("its chains stay in the bucket (not counted: {e})"),
        };
        let message = format!("source gone; {kept}");
        tracing::warn!(dataset = %self.name, tree = ?s.tree, "{} no longer exists on this host: no more backups of it; {kept} (nothing is deleted)", self.name);
        let mut sh = self.shared();
        sh.last_note = Some(RunNote { at: Utc::now(), message });
        sh.failed = false;
        drop(sh);
        self.changed();
    }

    fn trigger(&mut self, wait: bool, full: bool) -> Reply {
        if self.ctx.shutdown.is_cancelled() {
            return Response::error(ErrorKind::ShuttingDown, "zibd is shutting down").into();
        }
        if self.paused {
            return Response::error(
                ErrorKind::Conflict,
                format!("{} is paused; `zibctl resume {}` first", self.name, self.name),
            )
            .into();
        }
        if let Some(why) = self.restore_in_progress() {
            return Response::error(ErrorKind::Conflict, why).into();
        }
        if let Some(why) = &self.lent {
            return Response::error(
                ErrorKind::Busy,
                format!("{why}; back {} up when it has ended", self.name),
            )
            .into();
        }
        if self.source_gone {
            return Response::error(
                ErrorKind::Conflict,
                format!(
                    "{} no longer exists on this host (source gone); its chains stay in the bucket",
                    self.name
                ),
            )
            .into();
        }
        if let Some(run) = &self.run {
            if wait && !full && run.stop.is_none() {
                // Follow the run that is going instead of starting a second one (a full backup
                // asked for is not the run that is going: refused as busy below).
                return self.waiter(run.done.subscribe());
            }
            return Response::error(
                ErrorKind::Busy,
                format!(
                    "a backup of {} is already running; see `zibctl status {}`",
                    self.name, self.name
                ),
            )
            .into();
        }
        let kind = if full { "a full backup" } else { "a backup" };
        match self.start_run(BackupOptions { force_full: full }) {
            Ok(done) if wait => self.waiter(done),
            Ok(_) => Response::ok(format!("started {kind} of {}", self.name)).into(),
            Err(e) => Response::error(ErrorKind::Internal, e).into(),
        }
    }

    /// Lends the state lock ([`JobHandle::lend`]).
    fn lend(&mut self, why: String) -> Result<Lent, Box<Response>> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(Box::new(Response::error(
                ErrorKind::ShuttingDown,
                "zibd is shutting down",
            )));
        }
        if self.run.is_some() {
            return Err(Box::new(Response::error(
                ErrorKind::Busy,
                format!(
                    "a backup of {} is running; drill it when that has ended (see `zibctl status {}`)",
                    self.name, self.name
                ),
            )));
        }
        if let Some(other) = &self.lent {
            return Err(Box::new(Response::error(ErrorKind::Busy, other.clone())));
        }
        let Some(locked) = self.locked.take() else {
            return Err(Box::new(Response::error(
                ErrorKind::Internal,
                format!("the state lock of {} is lost (see the log); restart zibd", self.name),
            )));
        };
        let Some(tx) = self.self_tx.upgrade() else {
            self.locked = Some(locked);
            return Err(Box::new(gone(&self.name)));
        };
        self.lent = Some(why);
        Ok(Lent { locked: Some(locked), tx })
    }

    /// The lent lock is back: a backup that came due meanwhile starts now.
    fn take_back(&mut self, locked: LockedState) {
        self.locked = Some(locked);
        self.lent = None;
        if std::mem::take(&mut self.after_lend)
            && !self.paused
            && !self.retiring
            && !self.source_gone
            && !self.ctx.shutdown.is_cancelled()
        {
            if let Some(why) = self.restore_in_progress() {
                tracing::warn!(dataset = %self.name, "scheduled run skipped: {why}");
            } else if let Err(e) = self.start_run(BackupOptions::default()) {
                tracing::error!(dataset = %self.name, error = %e, "scheduled run could not start");
            }
        }
    }

    /// Why no backup may start now: a restore into this dataset is unfinished (its job is
    /// held for the restore's life; the engine checks again before it snapshots).
    fn restore_in_progress(&self) -> Option<String> {
        let work = self.settings.cfg.daemon.state_dir.join("restore");
        crate::restore::unfinished_restore(&work, &self.name).map(|record| {
            BackupError::RestoreInProgress { dataset: self.name.to_string(), record }.to_string()
        })
    }
    /// `zibd prune` with the task's lock: the same code and report. Refused while a backup
    /// runs (or waits for a slot): it prunes after itself when retention is configured.
    async fn prune(&mut self, dry_run: bool) -> Response {
        if self.ctx.shutdown.is_cancelled() {
            return Response::error(ErrorKind::ShuttingDown, "zibd is shutting down");
        }
        if self.run.is_some() {
            return Response::error(
                ErrorKind::Busy,
                format!(
                    "a backup of {} is running; prune when it has finished (see `zibctl status {}`)",
                    self.name, self.name
                ),
            );
        }
        if let Some(why) = &self.lent {
            return Response::error(ErrorKind::Busy, format!("{why}; prune when it has ended"));
        }
        let Some(locked) = self.locked.as_ref() else {
            return Response::error(
                ErrorKind::Internal,
                format!("the state lock of {} is lost (see the log); restart zibd", self.name),
            );
        };
        let opts = crate::lifecycle::PruneOptions { dry_run, allow_early_deletion: false };
        let s = &self.settings;
        tracing::info!(dataset = %self.name, dry_run, "prune requested");
        let r = crate::lifecycle::prune(
            &s.engine.s3,
            &s.cfg,
            &s.ds,
            &locked.state,
            opts,
            Utc::now(), // object ages are against S3's clock, not the schedule's
            &self.ctx.shutdown.child_token(),
        )
        .await;
        match r {
            Ok(r) => match serde_json::to_value(&r) {
                Ok(json) => Response::Report { text: crate::lifecycle::format_prune(&r), json },
                Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
            },
            Err(e) => {
                Response::error(ErrorKind::Internal, format!("prune of {} failed: {e}", self.name))
            }
        }
    }

    fn pause(&mut self) -> Response {
        if self.paused {
            return Response::ok(format!("{} was already paused", self.name));
        }
        self.paused = true;
        {
            let mut s = self.shared();
            s.paused = true;
            s.next_run = None;
        }
        self.changed();
        tracing::info!(dataset = %self.name, "paused");
        if self.stop_run(Stop::Paused) {
            self.resume_interrupted = true;
            Response::ok(format!(
                "paused {}: the running backup stops at its next safe point",
                self.name
            ))
        } else {
            Response::ok(format!("paused {}", self.name))
        }
    }

    fn resume(&mut self) -> Response {
        if !self.paused {
            return Response::ok(format!("{} was not paused", self.name));
        }
        self.paused = false;
        self.shared().paused = false;
        self.last_base = self.ctx.clock.now();
        self.reschedule();
        tracing::info!(dataset = %self.name, "resumed");
        if self.resume_interrupted && self.run.is_none() && self.lent.is_some() {
            self.resume_interrupted = false;
            self.after_lend = true;
        }
        if self.resume_interrupted && self.run.is_none() {
            self.resume_interrupted = false;
            if let Err(e) = self.start_run(BackupOptions::default()) {
                return Response::error(ErrorKind::Internal, e);
            }
            return Response::ok(format!(
                "resumed {}: continuing the backup the pause interrupted",
                self.name
            ));
        }
        Response::ok(format!("resumed {}", self.name))
    }

    /// Asks the running backup to stop at its next safe point. False if none is running.
    fn stop_run(&mut self, why: Stop) -> bool {
        let Some(run) = self.run.as_mut() else { return false };
        if run.stop.is_none() {
            run.stop = Some(why);
        }
        run.cancel.cancel();
        self.shared().activity = Activity::Cancelling;
        self.changed();
        true
    }

    /// Starts a run (it first waits for a job slot). Returns its result channel.
    fn start_run(
        &mut self,
        opts: BackupOptions,
    ) -> Result<watch::Receiver<Option<Response>>, String> {
        let locked = match self.locked.take() {
            Some(l) => l,
            None => {
                return Err(format!(
                    "the state lock of {} is lost (see the log); restart zibd",
                    self.name
                ));
            }
        };
        let (ptx, prx) = watch::channel(Progress::default());
        let cancel = self.ctx.shutdown.child_token();
        let (done, done_rx) = watch::channel(None);
        let st = &locked.state;
        let prev_error = (st.stats.last_error.clone(), st.stats.last_error_at);
        {
            let mut s = self.shared();
            s.activity = Activity::Queued;
            s.progress = Some(prx);
            s.incremental = match &st.pending {
                Some(p) => p.from.is_some(),
                None => st.last.is_some() && !opts.force_full,
            };
            s.samples.clear();
        }
        self.changed();
        tracing::info!(dataset = %self.name, "backup run starting");
        let handle = self.ctx.tracker.spawn(run_backup(
            self.ctx.clone(),
            self.settings.clone(),
            locked,
            self.shared.clone(),
            ptx,
            cancel.clone(),
            opts,
        ));
        self.run = Some(Run { handle, cancel, done, stop: None, prev_error });
        Ok(done_rx)
    }

    async fn on_run_done(&mut self, res: Result<RunResult, JoinError>) {
        let Some(run) = self.run.take() else { return };
        let now = Utc::now();
        let mut slot = None;
        let final_response = match res {
            Ok((mut locked, result, permit)) => {
                slot = permit;
                let response = match result {
                    Ok(Outcome::Skipped(skipped)) => {
                        let message = skipped.to_string();
                        // backup.rs cleared an earlier error from the state file.
                        {
                            let mut s = self.shared();
                            s.last_note = Some(RunNote { at: now, message: message.clone() });
                            s.failed = false;
                            s.last_attempt = Some((now, AttemptResult::Skipped));
                        }
                        Response::Done {
                            ok: true,
                            message: format!("{}: {message}", self.name),
                            snapshot: None,
                            bytes: Some(0),
                        }
                    }
                    Ok(Outcome::Committed(report)) => {
                        let snapshot = self.name.snapshot(&report.snapshot);
                        {
                            let mut s = self.shared();
                            s.last_success = Some(LastSuccess {
                                at: now,
                                snapshot: Some(snapshot.clone()),
                                bytes: report.stream_size,
                            });
                            s.failed = false;
                            s.chain_length = chain_length(&locked);
                            // e.g. a new chain because the base was gone; else none.
                            s.last_note = report
                                .note
                                .as_ref()
                                .map(|m| RunNote { at: now, message: m.clone() });
                            s.last_attempt = Some((now, AttemptResult::Success));
                            // The chunks and the manifest.
                            s.last_backup_objects =
                                Some(report.chunks_uploaded + report.chunks_reused + 1);
                        }
                        let message = format!(
                            "backed up {snapshot} ({} backup #{}): {} bytes, {} chunks uploaded, {} already stored",
                            if report.full { "full" } else { "incremental" },
                            report.seq,
                            report.stream_size,
                            report.chunks_uploaded,
                            report.chunks_reused
                        );
                        tracing::info!(dataset = %self.name, "{message}");
                        Response::Done {
                            ok: true,
                            message,
                            snapshot: Some(snapshot),
                            bytes: Some(report.stream_size),
                        }
                    }
                    Err(BackupError::Cancelled { .. }) => {
                        // A stop on request is not a failure: put back what the state said.
                        let (msg, at) = run.prev_error.clone();
                        locked.state.stats.last_error = msg;
                        locked.state.stats.last_error_at = at;
                        if let Err(e) = locked.save_async().await {
                            tracing::warn!(dataset = %self.name, error = %e, "could not save the state after a cancelled run");
                        }
                        let why = match run.stop {
                            Some(Stop::Paused) => "paused",
                            Some(Stop::Cancelled) => "cancelled",
                            None => "zibd is shutting down",
                        };
                        tracing::info!(dataset = %self.name, reason = why, "backup stopped at a safe point");
                        Response::Done {
                            ok: false,
                            message: format!(
                                "backup of {} stopped ({why}); it resumes from the last stored chunk on its next run",
                                self.name
                            ),
                            snapshot: None,
                            bytes: None,
                        }
                    }
                    Err(e) if self.settings.tree.is_some() && self.is_gone().await => {
                        // A tree's member destroyed since the last listing: not a failure.
                        let (msg, at) = run.prev_error.clone();
                        locked.state.stats.last_error = msg;
                        locked.state.stats.last_error_at = at;
                        if let Err(e) = locked.save_async().await {
                            tracing::warn!(dataset = %self.name, error = %e, "could not save the state after finding the dataset gone");
                        }
                        self.locked = Some(locked);
                        if !self.source_gone {
                            // Else the tree's listing said so first (and it is logged).
                            self.enter_source_gone().await;
                        }
                        return self.run_finished(
                            run,
                            Response::Done {
                                ok: false,
                                message: format!(
                                    "{} no longer exists on this host ({e})",
                                    self.name
                                ),
                                snapshot: None,
                                bytes: None,
                            },
                        );
                    }
                    Err(e) => {
                        let message = e.to_string();
                        tracing::error!(dataset = %self.name, error = %message, "backup failed");
                        let mut s = self.shared();
                        s.last_error = Some(LastError { at: now, message: message.clone() });
                        s.failed = true;
                        s.last_attempt = Some((now, AttemptResult::Failure));
                        s.failures += 1;
                        Response::Done {
                            ok: false,
                            message: format!("backup of {} failed: {message}", self.name),
                            snapshot: None,
                            bytes: None,
                        }
                    }
                };
                self.locked = Some(locked);
                response
            }
            Err(join) => {
                // The run panicked and took the lock with it: take it again.
                let message = format!("the backup task panicked: {join}");
                tracing::error!(dataset = %self.name, error = %message, "backup failed");
                let store = StateStore::new(&self.settings.cfg.daemon.state_dir);
                match store.lock(&self.name) {
                    Ok(l) => self.locked = Some(l),
                    Err(e) => {
                        tracing::error!(dataset = %self.name, error = %e, "could not take the state lock again")
                    }
                }
                let mut s = self.shared();
                s.last_error = Some(LastError { at: now, message: message.clone() });
                s.failed = true;
                s.last_attempt = Some((now, AttemptResult::Failure));
                s.failures += 1;
                Response::Done { ok: false, message, snapshot: None, bytes: None }
            }
        };
        self.run_finished(run, final_response);
        drop(slot);
    }

    /// Whether zfs says the dataset does not exist (an error of zfs's own: it may).
    async fn is_gone(&self) -> bool {
        matches!(self.settings.engine.zfs.dataset_exists(self.name.as_str()).await, Ok(false))
    }

    /// The end of a run: counters, idle, its result to the waiters, and a run the pause
    /// interrupted continued if resumed meanwhile.
    fn run_finished(&mut self, run: Run, final_response: Response) {
        {
            let mut s = self.shared();
            if let Some(p) = s.progress.take() {
                let p = p.borrow();
                s.uploaded_bytes += p.bytes_uploaded;
                s.puts += p.puts;
            }
            s.activity = Activity::Idle;
            s.samples.clear();
        }
        let _ = run.done.send(Some(final_response));
        self.changed();
        self.ctx.run_ended.send_modify(|n| *n += 1);
        let stopping = self.retiring || self.ctx.shutdown.is_cancelled();
        if run.stop == Some(Stop::Paused) && !self.paused && self.resume_interrupted && !stopping {
            // Resumed while the run was still stopping: continue it now.
            self.resume_interrupted = false;
            if let Err(e) = self.start_run(BackupOptions::default()) {
                tracing::error!(dataset = %self.name, error = %e, "could not continue the interrupted backup");
            }
        }
    }

    /// A streamed reply following a run until its end.
    fn waiter(&self, done: watch::Receiver<Option<Response>>) -> Reply {
        let (tx, rx) = mpsc::channel(16);
        let name = self.name.clone();
        let shared = self.shared.clone();
        self.ctx.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last: Option<ProgressUpdate> = None;
            let end = final_of(done);
            tokio::pin!(end);
            loop {
                tokio::select! {
                    r = &mut end => {
                        let _ = tx.send(r).await;
                        return;
                    }
                    _ = tick.tick() => {
                        let u = progress_update(&name, &shared);
                        if last.as_ref() != Some(&u) {
                            if tx.send(Response::Progress(u.clone())).await.is_err() {
                                return; // the client went away; the run goes on
                            }
                            last = Some(u);
                        }
                    }
                }
            }
        });
        Reply::Stream(rx)
    }
}

async fn final_of(mut done: watch::Receiver<Option<Response>>) -> Response {
    match done.wait_for(Option::is_some).await {
        Ok(v) => v.clone().expect("waited for Some"),
        Err(_) => Response::Done {
            ok: false,
            message: "the run ended without a result; see zibctl status".into(),
            snapshot: None,
            bytes: None,
        },
    }
}

/// One run: wait for a job slot, then the backup, sampling progress for the rate.
async fn run_backup(
    ctx: JobContext,
    settings: JobSettings,
    mut locked: LockedState,
    shared: Arc<Mutex<Shared>>,
    progress: watch::Sender<Progress>,
    cancel: CancellationToken,
    opts: BackupOptions,
) -> RunResult {
    let permit: Option<OwnedSemaphorePermit> = tokio::select! {
        p = ctx.slots.clone().acquire_owned() => p.ok(),
        () = cancel.cancelled() => None,
    };
    let Some(permit) = permit else {
        let dataset = settings.ds.name.to_string();
        return (locked, Err(BackupError::Cancelled { dataset }), None);
    };
    {
        let mut s = lock(&shared);
        if s.activity == Activity::Queued {
            s.activity = Activity::Running;
        }
    }
    ctx.changed.notify_one();
    let rx = progress.subscribe();
    let result = {
        let run = backup::run(
            &settings.engine,
            &settings.cfg,
            &settings.ds,
            &mut locked,
            opts,
            &progress,
            &cancel,
        );
        tokio::select! {
            r = run => r,
            never = sample(rx, &shared) => match never {},
        }
    };
    if matches!(result, Ok(Outcome::Committed(_))) && settings.ds.retention_policy().is_configured()
    {
        apply_retention(&settings, &locked, &progress, &cancel).await;
    }
    (locked, result, Some(permit))
}

/// Remote retention after a successful backup: never early deletion; a failure is logged and
/// the backup still counts (the next run's prune continues).
async fn apply_retention(
    settings: &JobSettings,
    locked: &LockedState,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) {
    progress.send_modify(|p| p.phase = Phase::Pruning);
    let ds = &settings.ds;
    let opts = crate::lifecycle::PruneOptions::default();
    let now = chrono::Utc::now(); // object ages are against S3's clock, not the schedule's
    match crate::lifecycle::prune(
        &settings.engine.s3,
        &settings.cfg,
        ds,
        &locked.state,
        opts,
        now,
        cancel,
    )
    .await
    {
        Ok(r) => tracing::info!(
            dataset = %ds.name, deleted = r.deleted, bytes = r.plan.bytes,
            held_chains = r.plan.chains.iter().filter(|c| matches!(c.fate, zib_core::lifecycle::retention::ChainFate::Held { .. })).count(),
            "remote retention applied"
        ),
        Err(e) => {
            tracing::warn!(dataset = %ds.name, error = %e, "remote retention failed; it is tried again after the next backup")
        }
    }
}

/// Records (time, bytes) once a second for the rate shown in status.
async fn sample(rx: watch::Receiver<Progress>, shared: &Mutex<Shared>) -> Infallible {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let bytes = rx.borrow().bytes_done;
        let mut s = lock(shared);
        // Bytes can go back (a new attempt): start the window again.
        if s.samples.back().is_some_and(|&(_, b)| b > bytes) {
            s.samples.clear();
        }
        s.samples.push_back((Instant::now(), bytes));
        while s.samples.len() > RATE_WINDOW {
            s.samples.pop_front();
        }
    }
}
#[cfg(test)]
mod footprint {
    /// The size of what `f` returns, without calling it.
    fn returned_size<A, R, F: FnOnce(A) -> R>(_: &F) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every configured dataset has a task, idle most of its life: its future is in memory
    /// once per dataset. It was 4.6 KB (two copies of the task's struct, and the state a run
    /// gives back, inline); now the struct is boxed once and everything a run needs is boxed
    /// when it happens.
    #[test]
    fn an_idle_task_s_future_is_small() {
        let size = returned_size(&super::Task::run);
        assert!(size <= 512, "a task's future is {size} bytes");
    }
}
