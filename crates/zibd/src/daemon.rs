//! The long-running daemon: `zibd` / `zibd run`.
//!
//! Start order (each step only after the one before succeeded):
//! 1. load and validate the config (an invalid one exits 78, EX_CONFIG);
//! 2. take the per-dataset state locks (a second zibd on the same state fails here, before it
//!    could touch the control socket of the first);
//! 3. create the state and spool directories;
//! 4. bind the control socket (a stale socket file is replaced only now that we hold the
//!    locks, and never one that still answers);
//! 5. start one task per dataset ([`crate::job`]), then serve the socket; a recursive entry
//!    stands for its tree's datasets, listed before step 2 ([`crate::tree`]) and again at each
//!    tick of its schedule and at reload (a child created later gets its task then; one
//!    destroyed keeps its task, idle, and its chains);
//! 6. check that the socket answers a request, then READY=1.
//!
//! Shutdown (SIGTERM/SIGINT): STOPPING=1, stop accepting requests, cancel every job
//! cooperatively (the engine stops at its next safe point and saves its state), wait for them
//! at most `daemon.shutdown_timeout_secs`, exit 0. SIGHUP and the `reload` request re-read the
//! config: datasets are added and removed without disturbing running jobs; an invalid file is
//! rejected with a logged error and the running config stays.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use zib_core::{
    Config, DatasetConfig, DatasetName,
    config::ConfigError,
    tree::{Expansion, Listings},
    verify_summary::{VerifySummary, VerifyTrigger},
};
use zib_protocol::{Client, DaemonInfo, ErrorKind, JobState, PROTOCOL_VERSION, Request, Response};

use crate::{
    backup::Engine,
    control::{self, ControlConfig, ControlError, ControlSocket, Handler, Peer, Reply},
    job::{self, Clock, JobContext, JobHandle, JobSettings, SystemClock},
    outside::Outside,
    restore::{self, RestoreEngine, RestoreJobs},
    state_store::{StateStore, StateStoreError},
    status_reply::StatusReplyCache,
    sync::locked,
    systemd::{Notifier, StatusSummary, status_line},
};

/// How a daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// Wall-clock time for schedules ([`SystemClock`] in production).
    pub clock: Arc<dyn Clock>,
    /// sd_notify target ([`Notifier::from_env`] in production).
    pub notifier: Notifier,
    /// The zfs binary and S3 credentials of every engine ([`Outside::from_env`] in production).
    pub outside: Outside,
}

impl DaemonOptions {
    /// The production setup: system clock, systemd notifications if `NOTIFY_SOCKET` is set.
    pub fn new(config_path: impl Into<PathBuf>) -> Self {
        Self {
            config_path: config_path.into(),
            clock: Arc::new(SystemClock),
            notifier: Notifier::from_env(),
            outside: Outside::from_env(),
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error("cannot create {what} {}: {source}", path.display())]
    Dir { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the control socket {} does not answer: {detail}", path.display())]
    SelfCheck { path: PathBuf, detail: String },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::ListenError),
}

impl StartError {
    /// 78 (EX_CONFIG) for an invalid config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => crate::process::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("zibd is shutting down")]
    ShuttingDown,
    #[error("{0}; keeping the running configuration")]
    Config(#[source] ConfigError),
    #[error(
        "cannot add dataset {0} yet: its task from before an earlier reload is still finishing a backup; reload again when it is done (keeping the running configuration)"
    )]
    StillFinishing(DatasetName),
    #[error("cannot add dataset {name}: {source}; keeping the running configuration")]
    Lock {
        name: DatasetName,
        #[source]
        source: StateStoreError,
    },
}

impl ReloadError {
    /// The kind of the `error` reply to a `reload` request.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReloadError::ShuttingDown => ErrorKind::ShuttingDown,
            ReloadError::StillFinishing(_) => ErrorKind::Busy,
            ReloadError::Config(_) | ReloadError::Lock { .. } => ErrorKind::Conflict,
        }
    }
}

/// The daemon's shared core: the jobs, the config in force, and the request handler.
#[derive(Debug)]
pub struct DaemonCore {
    config_path: PathBuf,
    started_at: DateTime<Utc>,
    /// The config in force, its trees expanded: one entry per concrete dataset.
    config: Mutex<Arc<Config>>,
    /// The same as the file has it (recursive entries not expanded).
    declared: Mutex<Arc<Config>>,
    /// The last listing of each tree.
    listings: Mutex<Listings>,
    /// Stops the tree tickers of the config in force (a reload starts new ones).
    tickers: Mutex<CancellationToken>,
    /// Where the tree tickers send a root to list again.
    refresh_tx: mpsc::UnboundedSender<DatasetName>,
    engine: Mutex<Engine>,
    outside: Outside,
    jobs: Mutex<BTreeMap<DatasetName, JobHandle>>,
    ctx: JobContext,
    /// Permits the slot semaphore is meant to have (`max_concurrent_jobs`).
    slots_max: Mutex<usize>,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Restore jobs (`restore_start` / `restore_status`), records under `<state_dir>/restore`.
    restores: RestoreJobs,
    /// The last whole-prefix verification (kept in `<state_dir>/verify.json`), and the next
    /// scheduled one.
    last_verify: Mutex<Option<VerifySummary>>,
    next_verify: Mutex<Option<DateTime<Utc>>>,
    /// Restore drills: the last of each dataset (kept in `<state_dir>/drill.json`), the next
    /// scheduled ones, those running.
    drills: crate::scheduled_drill::Drills,
    /// The all-datasets status reply, shared by requests that come together.
    status_reply: StatusReplyCache,
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    core: Arc<DaemonCore>,
    notifier: Notifier,
    server: JoinHandle<()>,
    socket_path: PathBuf,
    /// Where the metrics endpoint listens (`daemon.metrics_listen`, its port resolved).
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Daemon {
    /// Starts the daemon (see the module docs for the order) and returns once READY=1 is sent.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon, StartError> {
        let declared = Arc::new(Config::load(&opts.config_path)?);
        let store = StateStore::new(&declared.daemon.state_dir);
        let view =
            crate::tree::expand(&declared, &opts.outside.zfs, &store, &Listings::new(), [], None)
                .await;
        let cfg = Arc::new(view.expansion.config(&declared));
        let d = &cfg.daemon;

        let mut locks = Vec::with_capacity(cfg.datasets.len());
        for ds in &cfg.datasets {
            locks.push(store.lock(&ds.name)?);
        }
        std::fs::create_dir_all(&d.state_dir).map_err(|source| StartError::Dir {
            what: "state directory",
            path: d.state_dir.clone(),
            source,
        })?;
        crate::state_store::private_dir(&d.spool_dir).map_err(|source| StartError::Dir {
            what: "spool directory",
            path: d.spool_dir.clone(),
            source,
        })?;

        let socket = ControlSocket::bind(&ControlConfig {
            // We hold the state locks: no other zibd runs with this config.
            replace_stale: true,
            ..ControlConfig::new(&d.socket, d.socket_group.clone())
        })?;
        let metrics_listener = match d.metrics_listen {
            Some(addr) => Some(crate::metrics::http::bind(addr).await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let engine = Engine::from_config(&cfg, &opts.outside).await;
        engine.s3.set_listing_groups(zib_core::tree::listing_groups(&cfg, &view.expansion));
        let ctx = JobContext {
            clock: opts.clock.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(d.max_concurrent_jobs)),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            changed: Arc::new(Notify::new()),
            run_ended: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let mut jobs = BTreeMap::new();
        for (ds, lock) in cfg.datasets.iter().zip(locks) {
            let settings = job_settings(&cfg, &view.expansion, ds, &engine);
            jobs.insert(ds.name.clone(), job::spawn(ctx.clone(), settings, lock));
        }
        let (refresh_tx, mut refresh_rx) = mpsc::unbounded_channel();
        let core = Arc::new(DaemonCore {
            config_path: opts.config_path.clone(),
            started_at: Utc::now(),
            slots_max: Mutex::new(d.max_concurrent_jobs),
            config: Mutex::new(cfg.clone()),
            declared: Mutex::new(declared.clone()),
            listings: Mutex::new(view.listings),
            tickers: Mutex::new(CancellationToken::new()),
            refresh_tx,
            engine: Mutex::new(engine),
            outside: opts.outside.clone(),
            jobs: Mutex::new(jobs),
            ctx: ctx.clone(),
            reload_lock: tokio::sync::Mutex::new(()),
            restores: RestoreJobs::new(d.state_dir.join("restore"), ctx.shutdown.clone())
                .with_tracker(ctx.tracker.clone())
                .with_pricing(cfg.pricing.clone()),
            last_verify: Mutex::new(crate::scheduled_verify::load(&d.state_dir)),
            next_verify: Mutex::new(None),
            drills: crate::scheduled_drill::Drills::load(&d.state_dir),
            status_reply: StatusReplyCache::default(),
        });
        let socket_path = socket.path().to_owned();
        let server = tokio::spawn(control::serve(
            socket,
            core.clone(),
            ctx.shutdown.clone().cancelled_owned(),
        ));
        let daemon = Daemon { core, notifier: opts.notifier, server, socket_path, metrics_addr };

        if let Err(detail) = self_check(&daemon.socket_path).await {
            let path = daemon.socket_path.clone();
            daemon.stop().await;
            return Err(StartError::SelfCheck { path, detail });
        }
        tracing::info!(
            config = %opts.config_path.display(),
            socket = %daemon.socket_path.display(),
            datasets = cfg.datasets.len(),
            "zibd {} ready",
            env!("CARGO_PKG_VERSION")
        );
        daemon.core.resume_restores().await;
        {
            let (core, stop) = (daemon.core.clone(), daemon.core.ctx.shutdown.clone());
            daemon.core.ctx.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        root = refresh_rx.recv() => match root {
                            Some(root) => core.refresh_tree(&root).await,
                            None => return,
                        },
                    }
                }
            });
            daemon.core.start_tickers(&declared);
        }
        {
            let (dir, stop) = (d.state_dir.clone(), daemon.core.ctx.shutdown.clone());
            daemon
                .core
                .ctx
                .tracker
                .spawn(async move { crate::request_ledger::keep(&dir, stop).await });
        }
        daemon.spawn_metrics(metrics_listener);
        // Always watching: a reload may set daemon.notify_command.
        crate::alerts::spawn(daemon.core.clone());
        crate::scheduled_verify::spawn(daemon.core.clone());
        crate::scheduled_drill::spawn(daemon.core.clone());
        daemon.notifier.ready(&daemon.core.status_line());
        daemon.spawn_notifier_tasks();
        Ok(daemon)
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The metrics endpoint and the textfile writer, when configured.
    fn spawn_metrics(&self, listener: Option<tokio::net::TcpListener>) {
        let core = self.core.clone();
        let render: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(move || zib_core::metrics::render(&core.metrics()));
        let ctx = &self.core.ctx;
        if let Some(l) = listener {
            crate::metrics::http::serve(l, render.clone(), &ctx.tracker, ctx.shutdown.clone());
        }
        if let Some(path) = self.core.config().daemon.metrics_textfile.clone() {
            crate::metrics::textfile::spawn_writer(
                path,
                render,
                ctx.run_ended.subscribe(),
                &ctx.tracker,
                ctx.shutdown.clone(),
            );
        }
    }

    /// The request handler (what the control socket calls).
    pub fn core(&self) -> Arc<DaemonCore> {
        self.core.clone()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Re-reads the config (as SIGHUP).
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let r = self.core.reload().await;
        self.core.status_reply.invalidate();
        r
    }

    /// Keeps STATUS= current and pings the watchdog (only with a service manager).
    fn spawn_notifier_tasks(&self) {
        if !self.notifier.is_enabled() {
            return;
        }
        let (core, n, stop) = (self.core.clone(), self.notifier, self.core.ctx.shutdown.clone());
        self.core.ctx.tracker.spawn(async move {
            let mut last = String::new();
            loop {
                let line = core.status_line();
                if line != last {
                    n.status(&line);
                    last = line;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = core.ctx.changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        });
        if let Some(every) = self.notifier.watchdog_interval() {
            let (n, stop) = (self.notifier, self.core.ctx.shutdown.clone());
            tracing::info!(interval_ms = every.as_millis() as u64, "systemd watchdog enabled");
            self.core.ctx.tracker.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => n.watchdog(),
                    }
                }
            });
        }
    }

    /// Shuts down: STOPPING=1, stop serving, cancel the jobs and wait for them to reach a safe
    /// point, at most `daemon.shutdown_timeout_secs`. Returns true if all stopped in time.
    pub async fn stop(self) -> bool {
        let timeout = Duration::from_secs(self.core.config().daemon.shutdown_timeout_secs);
        let running = self.core.jobs().iter().filter(|j| j.is_running()).count();
        tracing::info!(
            running,
            timeout_secs = timeout.as_secs(),
            "shutting down: stopping jobs at their next safe point"
        );
        self.notifier
            .stopping(&format!("stopping: {running} running jobs finishing their current chunk"));
        let ctx = &self.core.ctx;
        ctx.shutdown.cancel();
        ctx.tracker.close();
        // Every task the daemon started is on the tracker: dataset tasks and their runs,
        // restore jobs (which stop on the same token; their records stay for the restart),
        // progress waiters and the notifiers.
        let in_time = tokio::time::timeout(timeout, ctx.tracker.wait()).await.is_ok();
        if in_time {
            tracing::info!("all jobs stopped");
        } else {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "jobs still running at the shutdown deadline; abandoning them (their state is saved after every stored chunk)"
            );
        }
        let state_dir = self.core.config().daemon.state_dir.clone();
        if let Err(e) = crate::request_ledger::record_async(&state_dir, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "cannot add the last requests made to the request ledger");
        }
        // The server stops accepting at once and gives open connections a short grace.
        let _ = tokio::time::timeout(Duration::from_secs(6), self.server).await;
        in_time
    }
}

/// The settings of the task of `ds`, a dataset of the concrete config `cfg`.
fn job_settings(
    cfg: &Arc<Config>,
    x: &Expansion,
    ds: &DatasetConfig,
    engine: &Engine,
) -> JobSettings {
    JobSettings {
        cfg: cfg.clone(),
        ds: ds.clone(),
        engine: engine.clone(),
        tree: x.tree_of.get(&ds.name).cloned(),
        source_gone: x.gone.contains(&ds.name),
    }
}

/// Connects to our own socket and asks for the version: READY=1 only once this works.
async fn self_check(path: &Path) -> Result<(), String> {
    let attempt = async {
        let mut client = Client::connect(path).await.map_err(|e| e.to_string())?;
        match client.call(&Request::Version).await.map_err(|e| e.to_string())? {
            Response::Version { .. } => Ok(()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no reply within 10 s".into()))
}

impl DaemonCore {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        locked(&self.config).clone()
    }

    fn jobs(&self) -> Vec<JobHandle> {
        locked(&self.jobs).values().cloned().collect()
    }

    /// The job of dataset `name`, or the `not_found` reply naming the configured ones.
    pub(crate) fn job(&self, name: &str) -> Result<JobHandle, Box<Response>> {
        let jobs = locked(&self.jobs);
        jobs.iter().find(|(n, _)| n.as_str() == name).map(|(_, j)| j.clone()).ok_or_else(|| {
            let known: Vec<&str> = jobs.keys().map(DatasetName::as_str).collect();
            let known = if known.is_empty() { "none".into() } else { known.join(", ") };
            Box::new(Response::error(
                ErrorKind::NotFound,
                format!("dataset {name} is not in the config (configured: {known})"),
            ))
        })
    }

    /// The jobs a request names: one, or all when `None`.
    fn targets(&self, name: Option<&str>) -> Result<Vec<JobHandle>, Box<Response>> {
        match name {
            Some(n) => self.job(n).map(|j| vec![j]),
            None => Ok(self.jobs()),
        }
    }

    /// A status reply: all datasets or one.
    pub fn status(&self, dataset: Option<&str>) -> Response {
        let jobs = match self.targets(dataset) {
            Ok(j) => j,
            Err(e) => return *e,
        };
        let cfg = self.config();
        let datasets: Vec<_> = jobs.iter().map(JobHandle::status).collect();
        let is_running = |js: &[JobHandle]| js.iter().filter(|j| j.is_running()).count();
        let running = match dataset {
            None => is_running(&jobs),
            Some(_) => is_running(&self.jobs()),
        };
        Response::Status {
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol_version: PROTOCOL_VERSION,
                started_at: self.started_at,
                uptime_secs: (Utc::now() - self.started_at).num_seconds().max(0) as u64,
                jobs_running: running as u32,
                jobs_max: Some(cfg.daemon.max_concurrent_jobs as u32),
                restores_running: self.restores.running() as u32,
                last_verify: locked(&self.last_verify).clone().map(Box::new),
                next_verify: *locked(&self.next_verify),
                drills: self.drills.status(dataset),
            },
            datasets,
        }
    }

    /// What the daemon's tasks share (clock, tracker, shutdown token, run counter).
    pub fn job_context(&self) -> &JobContext {
        &self.ctx
    }

    /// The `zfs` every engine runs.
    pub fn zfs(&self) -> &crate::zfs::Zfs {
        &self.outside.zfs
    }

    /// What the metrics show now.
    pub fn metrics(&self) -> zib_core::metrics::MetricsSnapshot {
        let all = self.jobs();
        zib_core::metrics::MetricsSnapshot {
            now: self.ctx.clock.now(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            started_at: self.started_at,
            jobs_running: all.iter().filter(|j| j.is_running()).count() as u32,
            jobs_max: self.config().daemon.max_concurrent_jobs as u32,
            datasets: all.iter().map(JobHandle::metrics).collect(),
            restores: self
                .restores
                .status(None)
                .iter()
                .map(crate::metrics::restore_metrics)
                .collect(),
            verify: locked(&self.last_verify).clone(),
            drills: self.drills.last(),
        }
    }

    /// The systemd STATUS= line.
    pub fn status_line(&self) -> String {
        let mut s = StatusSummary::default();
        for st in self.jobs().iter().map(JobHandle::status) {
            match st.state {
                JobState::Snapshotting
                | JobState::Uploading
                | JobState::Finishing
                | JobState::Cancelling => s.running += 1,
                JobState::Queued => s.queued += 1,
                JobState::Paused => s.paused += 1,
                JobState::Failed => s.failed += 1,
                _ => s.idle += 1,
            }
            if let Some(t) = st.next_run
                && s.next.as_ref().is_none_or(|(_, n)| t < *n)
            {
                s.next = Some((st.dataset.clone(), t));
            }
        }
        status_line(&s, self.ctx.clock.now())
    }

    /// Re-reads the config file and applies it; on any problem the running config stays and
    /// the error says why.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one = self.reload_lock.lock().await;
        if self.ctx.shutdown.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        let path = &self.config_path;
        let mut new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running configuration");
                return Err(ReloadError::Config(e));
            }
        };
        let old = self.config();
        // These are bound at start; a change needs a restart.
        let mut notes = Vec::new();
        let d = &mut new.daemon;
        if d.socket != old.daemon.socket || d.socket_group != old.daemon.socket_group {
            notes.push("daemon.socket/socket_group changes take effect after a restart");
            d.socket = old.daemon.socket.clone();
            d.socket_group = old.daemon.socket_group.clone();
        }
        if d.state_dir != old.daemon.state_dir || d.spool_dir != old.daemon.spool_dir {
            notes.push("daemon.state_dir/spool_dir changes take effect after a restart");
            d.state_dir = old.daemon.state_dir.clone();
            d.spool_dir = old.daemon.spool_dir.clone();
        }
        let declared = Arc::new(new);
        let previous = locked(&self.listings).clone();
        let known: Vec<DatasetName> = locked(&self.jobs).keys().cloned().collect();
        let store = StateStore::new(&declared.daemon.state_dir);
        let view =
            crate::tree::expand(&declared, &self.outside.zfs, &store, &previous, known, None).await;
        let new = Arc::new(view.expansion.config(&declared));
        let target_changed = new.target != old.target;
        let engine = if target_changed {
            Engine::from_config(&new, &self.outside).await
        } else {
            locked(&self.engine).clone()
        };
        let (added, removed) = self.apply(new.clone(), &view.expansion, &engine)?;
        if target_changed {
            *locked(&self.engine) = engine;
        }
        self.resize_slots(new.daemon.max_concurrent_jobs);
        *locked(&self.declared) = declared.clone();
        *locked(&self.listings) = view.listings;
        self.start_tickers(&declared);
        let added: Vec<&DatasetName> = added.iter().collect();
        let removed: Vec<&DatasetName> = removed.iter().collect();
        self.ctx.changed.notify_one();
        let list = |v: &[&DatasetName]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        let mut msg = format!(
            "reloaded {}: {} datasets; added {}; removed {}",
            path.display(),
            new.datasets.len(),
            list(&added),
            list(&removed)
        );
        if !removed.is_empty() {
            msg.push_str(" (a running backup of a removed dataset finishes first)");
        }
        for n in notes.iter().copied().chain(view.notes.iter().map(String::as_str)) {
            msg.push_str("; ");
            msg.push_str(n);
        }
        tracing::info!("{msg}");
        Ok(msg)
    }

    /// Puts the concrete config `new` in force: takes the new datasets' locks first (any
    /// failure changes nothing), then retires the tasks of datasets it no longer has, updates
    /// the others and starts the new ones. Returns the names added and removed.
    fn apply(
        &self,
        new: Arc<Config>,
        x: &Expansion,
        engine: &Engine,
    ) -> Result<(Vec<DatasetName>, Vec<DatasetName>), ReloadError> {
        engine.s3.set_listing_groups(zib_core::tree::listing_groups(&new, x));
        let old_names: BTreeSet<DatasetName> = locked(&self.jobs).keys().cloned().collect();
        let new_names: BTreeSet<DatasetName> =
            new.datasets.iter().map(|d| d.name.clone()).collect();
        let added: Vec<DatasetName> = new_names.difference(&old_names).cloned().collect();
        let removed: Vec<DatasetName> = old_names.difference(&new_names).cloned().collect();

        // Take the new datasets' locks before changing anything.
        let store = StateStore::new(&new.daemon.state_dir);
        let mut locks = BTreeMap::new();
        for name in &added {
            match store.lock(name) {
                Ok(l) => {
                    locks.insert(name.clone(), l);
                }
                Err(StateStoreError::Locked { pid, .. })
                    if pid.trim() == std::process::id().to_string() =>
                {
                    let e = ReloadError::StillFinishing(name.clone());
                    tracing::error!("reload refused: {e}");
                    return Err(e);
                }
                Err(source) => {
                    let e = ReloadError::Lock { name: name.clone(), source };
                    tracing::error!("reload refused: {e}");
                    return Err(e);
                }
            }
        }
        *locked(&self.config) = new.clone();
        {
            let mut jobs = locked(&self.jobs);
            for name in &removed {
                if let Some(j) = jobs.remove(name) {
                    j.retire();
                }
            }
            for ds in &new.datasets {
                let settings = job_settings(&new, x, ds, engine);
                match jobs.get(&ds.name) {
                    Some(j) => j.update(settings),
                    None => {
                        let lock = locks.remove(&ds.name).expect("locked above");
                        jobs.insert(ds.name.clone(), job::spawn(self.ctx.clone(), settings, lock));
                    }
                }
            }
        }
        self.ctx.changed.notify_one();
        Ok((added, removed))
    }

    /// One tick of a tree's schedule: lists that tree again and applies what changed; a child
    /// created since gets its task and its first backup now (this tick is its scheduled run).
    pub async fn refresh_tree(&self, root: &DatasetName) {
        let _one = self.reload_lock.lock().await;
        if self.ctx.shutdown.is_cancelled() {
            return;
        }
        let declared = locked(&self.declared).clone();
        let previous = locked(&self.listings).clone();
        let known: Vec<DatasetName> = locked(&self.jobs).keys().cloned().collect();
        let store = StateStore::new(&declared.daemon.state_dir);
        let view =
            crate::tree::expand(&declared, &self.outside.zfs, &store, &previous, known, Some(root))
                .await;
        let new = Arc::new(view.expansion.config(&declared));
        let engine = locked(&self.engine).clone();
        match self.apply(new, &view.expansion, &engine) {
            Ok((added, removed)) => {
                *locked(&self.listings) = view.listings;
                if !added.is_empty() || !removed.is_empty() {
                    tracing::info!(tree = %root, added = ?added, removed = ?removed, "tree listed again");
                }
                for name in &added {
                    let job = locked(&self.jobs).get(name).cloned();
                    if let Some(j) = job
                        && !view.expansion.gone.contains(name)
                    {
                        let _ = j.trigger(false, false).await;
                    }
                }
            }
            Err(e) => tracing::error!(tree = %root, "the tree's new listing is not applied: {e}"),
        }
    }

    /// Starts the tickers of `declared`'s trees, stopping those of the config before.
    fn start_tickers(&self, declared: &Config) {
        let stop = CancellationToken::new();
        let old = std::mem::replace(&mut *locked(&self.tickers), stop.clone());
        old.cancel();
        crate::tree::spawn_tickers(declared, &self.ctx, &self.refresh_tx, &stop);
    }

    /// The restore drills (`zibctl restore drill`, `drill_schedule`).
    pub fn drills(&self) -> &crate::scheduled_drill::Drills {
        &self.drills
    }

    /// The S3 side of a restore from `bucket` under `prefix` (the configured ones by default).
    pub(crate) async fn restore_engine(
        &self,
        bucket: Option<&str>,
        prefix: Option<&str>,
    ) -> RestoreEngine {
        let cfg = self.config();
        let t = &cfg.target;
        let configured = locked(&self.engine).s3.clone();
        let s3 = match bucket.filter(|b| *b != t.bucket.0) {
            None => configured,
            Some(b) => configured.with_bucket(b),
        };
        RestoreEngine {
            zfs: self.outside.zfs.clone(),
            s3,
            prefix: prefix.unwrap_or(&t.prefix).to_owned(),
        }
    }

    async fn restore_start(&self, req: &zib_protocol::RestoreStart) -> Response {
        if self.ctx.shutdown.is_cancelled() {
            return Response::error(ErrorKind::ShuttingDown, "zibd is shutting down");
        }
        let opts = match restore::options_from_request(req) {
            Ok(o) => restore::RestoreOptions { pricing: self.config().pricing.clone(), ..o },
            Err(e) => return Response::error(ErrorKind::InvalidRequest, e.to_string()),
        };
        // Into a dataset this daemon backs up (the natural disaster-recovery step): its backup
        // job is held while the restore is unfinished (see job's restore_in_progress), and a
        // backup running right now would snapshot what the restore is receiving into.
        let backed_up = locked(&self.jobs).get(&opts.target).cloned();
        if let Some(j) = &backed_up
            && j.is_running()
        {
            return Response::error(
                ErrorKind::Busy,
                format!(
                    "a backup of {} is running; restore into it when that has ended (`zibctl cancel {}` stops it)",
                    opts.target, opts.target
                ),
            );
        }
        let engine = self.restore_engine(req.bucket.as_deref(), req.prefix.as_deref()).await;
        match self.restores.start(engine, opts) {
            Ok(id) => {
                if backed_up.is_some() {
                    tracing::warn!(%id, "{id} is backed up by this daemon: its backups wait until this restore has finished");
                }
                tracing::info!(%id, dataset = %req.dataset, "restore job started");
                Response::RestoreStarted { id }
            }
            Err(e) => Response::error(ErrorKind::Conflict, e.to_string()),
        }
    }

    /// Continues the restores a previous zibd left unfinished.
    async fn resume_restores(&self) {
        let resumed = self
            .restores
            .resume_unfinished(|bucket, prefix| async move {
                self.restore_engine(Some(&bucket), Some(&prefix)).await
            })
            .await;
        for r in resumed {
            match r {
                Ok(id) => tracing::info!(%id, "continuing an unfinished restore job"),
                Err(e) => {
                    tracing::error!(error = %e, "an unfinished restore job could not be continued")
                }
            }
        }
    }

    fn resize_slots(&self, want: usize) {
        let mut have = locked(&self.slots_max);
        if want > *have {
            self.ctx.slots.add_permits(want - *have);
        } else if want < *have {
            // Only free permits can be taken back; running jobs keep theirs until they end.
            let gone = self.ctx.slots.forget_permits(*have - want);
            if gone < *have - want {
                tracing::warn!(
                    want,
                    "fewer concurrent jobs takes full effect when running jobs end"
                );
            }
            // Count what was actually removed so that a later increase adds the right amount.
            *have -= gone;
            return;
        }
        *have = want;
    }

    /// `zibd cost` of one configured dataset (its prefix, its objects only) or of everything
    /// under the configured prefix.
    /// The prefix and dataset a report on `dataset` (or on every backup under the configured
    /// prefix) reads.
    fn report_scope(
        &self,
        dataset: Option<&str>,
    ) -> Result<(String, Option<DatasetName>), Box<Response>> {
        let cfg = self.config();
        match dataset {
            Some(n) => {
                let job = self.job(n)?;
                let Some(ds) = cfg.dataset(job.name()) else {
                    return Err(Box::new(Response::error(
                        ErrorKind::NotFound,
                        format!("{n} is not in the config"),
                    )));
                };
                Ok((cfg.resolve(ds).prefix, Some(job.name().clone())))
            }
            None => Ok((cfg.target.prefix.clone(), None)),
        }
    }

    async fn cost(&self, dataset: Option<&str>) -> Response {
        let (prefix, name) = match self.report_scope(dataset) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        let cfg = self.config();
        let s3 = locked(&self.engine).s3.clone();
        let now = chrono::Utc::now();
        let days = crate::cost::RESTORE_QUOTE_DAYS;
        let r = match crate::cost::cost_report(&s3, &prefix, name.as_ref(), &cfg.pricing, now, days)
            .await
        {
            Ok(r) => {
                // The report's own listing and reads are in the ledger it shows.
                let ledger = crate::request_ledger::record_async(&cfg.daemon.state_dir, now).await;
                Ok(r.with_requests(ledger.map_err(|e| e.to_string()), &cfg.pricing))
            }
            Err(e) => Err(e),
        };
        report_reply(r, crate::cost::format_cost)
    }

    async fn verify(&self, dataset: Option<&str>, deep: bool) -> Response {
        let r = match dataset {
            None => self.verify_prefix(VerifyTrigger::Request, deep).await,
            Some(_) => {
                let (prefix, name) = match self.report_scope(dataset) {
                    Ok(s) => s,
                    Err(r) => return *r,
                };
                self.run_verify(&prefix, name.as_ref(), deep).await
            }
        };
        report_reply(r, crate::verify::format_verify)
    }

    /// Verifies the whole prefix (scheduled, or `zibctl verify` without a dataset) and keeps
    /// the result for status and the metrics.
    pub async fn verify_prefix(
        &self,
        trigger: VerifyTrigger,
        deep: bool,
    ) -> Result<crate::verify::VerifyOutcome, crate::restore::RestoreError> {
        let prefix = self.config().target.prefix.clone();
        let r = self.run_verify(&prefix, None, deep).await;
        let at = self.ctx.clock.now();
        let summary = match &r {
            Ok(o) => VerifySummary::of_report(&o.report, at, trigger, deep),
            Err(e) => VerifySummary::failed(e.to_string(), at, trigger, deep),
        };
        crate::scheduled_verify::save(&self.config().daemon.state_dir, &summary);
        *locked(&self.last_verify) = Some(summary);
        // The metrics textfile and the alerts look again.
        self.ctx.run_ended.send_modify(|n| *n += 1);
        r
    }

    async fn run_verify(
        &self,
        prefix: &str,
        name: Option<&DatasetName>,
        deep: bool,
    ) -> Result<crate::verify::VerifyOutcome, crate::restore::RestoreError> {
        let cfg = self.config();
        let s3 = locked(&self.engine).s3.clone();
        // Through the daemon a deep check never thaws: that is billed, and asked for by hand.
        let deep = deep.then_some(crate::verify::DeepOptions { allow_thaw: None, thaw_days: 1 });
        let r = crate::verify::verify(&s3, prefix, name, &cfg.pricing, deep).await;
        match &r {
            Ok(o) if o.report.clean => tracing::info!(prefix = %prefix, "verify: clean"),
            Ok(o) => tracing::warn!(
                prefix = %prefix,
                problems = o.report.problems.len(),
                "verify found problems"
            ),
            Err(e) => tracing::warn!(prefix = %prefix, error = %e, "verify did not finish"),
        }
        r
    }

    /// The next scheduled verification, for status.
    pub fn set_next_verify(&self, at: Option<DateTime<Utc>>) {
        *locked(&self.next_verify) = at;
    }

    /// Prunes one dataset or each in turn; several reports are joined (text) and listed (JSON).
    async fn prune(&self, dataset: Option<&str>, dry_run: bool) -> Response {
        let jobs = match self.targets(dataset) {
            Ok(j) => j,
            Err(e) => return *e,
        };
        let mut texts = String::new();
        let mut reports = Vec::new();
        for j in &jobs {
            match j.prune(dry_run).await {
                Response::Report { text, json } => {
                    texts.push_str(&text);
                    reports.push(json);
                }
                other if dataset.is_some() => return other,
                Response::Error { kind, message } => {
                    return Response::error(
                        kind,
                        format!("{message} (after {} datasets)", reports.len()),
                    );
                }
                other => return other,
            }
        }
        match (dataset, reports.len()) {
            (Some(_), 1) => Response::Report { text: texts, json: reports.remove(0) },
            _ => Response::Report { text: texts, json: serde_json::Value::Array(reports) },
        }
    }

    async fn for_each(
        &self,
        dataset: Option<&str>,
        verb: &str,
        f: impl AsyncFn(&JobHandle) -> Response,
    ) -> Response {
        let jobs = match self.targets(dataset) {
            Ok(j) => j,
            Err(e) => return *e,
        };
        if dataset.is_some() {
            return f(&jobs[0]).await;
        }
        let mut errors = Vec::new();
        for j in &jobs {
            if let Response::Error { message, .. } = f(j).await {
                errors.push(message);
            }
        }
        if errors.is_empty() {
            Response::ok(format!("{verb} {} datasets", jobs.len()))
        } else {
            Response::error(ErrorKind::Internal, errors.join("; "))
        }
    }
}

impl Handler for DaemonCore {
    async fn handle(&self, request: Request, peer: Peer) -> Reply {
        let mutating = request.is_mutating();
        if mutating {
            tracing::info!(%peer, request = request.type_name(), "control request");
        }
        if let Request::Status { dataset: None } = request {
            let epoch = *self.ctx.run_ended.borrow();
            let body = self
                .status_reply
                .get_or_build(epoch, || zib_protocol::encode_response(&self.status(None)))
                .await;
            return Reply::Frame(body);
        }
        let reply = self.carry_out(request).await;
        if mutating {
            // After it took effect: the asker's next status shows it.
            self.status_reply.invalidate();
        }
        reply
    }
}

impl DaemonCore {
    async fn carry_out(&self, request: Request) -> Reply {
        match request {
            Request::Status { dataset } => self.status(dataset.as_deref()).into(),
            Request::Version => Response::Version {
                daemon_version: env!("CARGO_PKG_VERSION").into(),
                protocol_version: PROTOCOL_VERSION,
            }
            .into(),
            Request::Trigger { dataset, wait, full } => match self.job(&dataset) {
                Ok(j) => j.trigger(wait, full).await,
                Err(e) => (*e).into(),
            },
            Request::Pause { dataset } => {
                self.for_each(dataset.as_deref(), "paused", async |j| j.pause().await).await.into()
            }
            Request::Resume { dataset } => self
                .for_each(dataset.as_deref(), "resumed", async |j| j.resume().await)
                .await
                .into(),
            Request::Cancel { dataset } => match self.job(&dataset) {
                Ok(j) => j.cancel().await.into(),
                Err(e) => (*e).into(),
            },
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(m).into(),
                Err(e) => Response::error(e.kind(), e.to_string()).into(),
            },
            Request::Cost { dataset } => self.cost(dataset.as_deref()).await.into(),
            Request::Verify { dataset, deep } => self.verify(dataset.as_deref(), deep).await.into(),
            Request::PruneNow { dataset, dry_run } => {
                self.prune(dataset.as_deref(), dry_run).await.into()
            }
            Request::RestoreStart(req) => self.restore_start(&req).await.into(),
            Request::RestoreDrill { dataset, snapshot, yes, tier } => {
                let req = crate::scheduled_drill::DrillRequest {
                    dataset,
                    snapshot,
                    yes,
                    tier,
                    trigger: zib_core::drill_summary::DrillTrigger::Request,
                };
                crate::scheduled_drill::run(self, &req).await.into()
            }
            Request::RestoreCancel { id } => self.restores.cancel_request(&id).into(),
            Request::RestoreStatus { id } => {
                let jobs = self.restores.status(id.as_deref());
                match id {
                    Some(id) if jobs.is_empty() => {
                        Response::error(ErrorKind::NotFound, format!("no restore job {id}")).into()
                    }
                    _ => Response::RestoreStatus { jobs }.into(),
                }
            }
        }
    }
}

/// `zibd run`: the daemon until SIGTERM/SIGINT. Exit 0 after a clean (or deadline) shutdown,
/// 78 for an invalid config, 1 when it cannot start.
pub fn main(config_path: PathBuf) -> ExitCode {
    let rt = crate::process::runtime();
    let code = rt.block_on(run(config_path));
    // Anything still running past the shutdown deadline is dropped here (zfs children are
    // killed on drop).
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run(config_path: PathBuf) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Install the handlers before anything else so an early SIGTERM is a clean stop.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("zibd: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let open_files = crate::process::raise_open_file_limit();
    tracing::debug!(?open_files, "open file limit");
    let daemon = match Daemon::start(DaemonOptions::new(&config_path)).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("zibd: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); break }
            _ = int.recv() => { tracing::info!("SIGINT"); break }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", config_path.display());
                let _ = daemon.reload().await; // logged either way
            }
        }
    }
    daemon.stop().await;
    ExitCode::SUCCESS
}

/// A report as [`Response::Report`]: its text for people and its JSON; a bucket prefix with
/// no backups is "not found".
fn report_reply<T: serde::Serialize>(
    r: Result<T, crate::restore::RestoreError>,
    text: fn(&T) -> String,
) -> Response {
    match r {
        Ok(r) => match serde_json::to_value(&r) {
            Ok(json) => Response::Report { text: text(&r), json },
            Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
        },
        Err(e @ crate::restore::RestoreError::NoCatalog { .. }) => {
            Response::error(ErrorKind::NotFound, e.to_string())
        }
        Err(e) => Response::error(ErrorKind::Internal, e.to_string()),
    }
}
