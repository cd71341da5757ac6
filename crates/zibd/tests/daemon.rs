//! The daemon in-process, with a [`ManualClock`] for schedules: ticks, missed ticks while a
//! run is busy, pause/resume, trigger (also through the socket with `wait`), reload
//! (add/remove/invalid), against a real local S3 server (s3s-fs) and a stand-in `zfs` script;
//! plus the real `zibd` binary under a fake service manager (sd_notify READY/STATUS/WATCHDOG/
//! STOPPING, SIGTERM exits 0).

use std::{
    collections::BTreeMap,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use zib_protocol::{Client, DatasetStatus, ErrorKind, JobState, Request, Response};
use zib_testkit::{S3sFsServer, test_env};

mod support;
use support::{ConfigToml, FakeZfs, config::quoted};
use zibd::{
    control::{Handler, Peer, Reply},
    daemon::{Daemon, DaemonCore, DaemonOptions},
    job::ManualClock,
    outside::Outside,
    systemd::Notifier,
};

/// The stand-in zfs of these tests (tests/support/fake_zfs.sh), one per test process (tests
/// use distinct dataset names): streams of 1 MiB, so a slow send (16 KiB every 0.2 s, see
/// [`FakeZfs::slow`]) keeps a run busy for ~13 s and still stops at a safe point when
/// cancelled. Its state is under target/tmp, kept after the run (for a look at its `calls`;
/// `cargo clean` removes it); never cleared here, as other test processes may share the target
/// directory.
fn fake_zfs() -> &'static FakeZfs {
    static ZFS: OnceLock<FakeZfs> = OnceLock::new();
    ZFS.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon-test");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("fake-zfs").tempdir_in(&base).unwrap().keep();
        FakeZfs::at(dir).knob("FAKE_ZFS_SIZE", "1048576")
    })
}

/// What the in-process daemons reach the outside with: the stand-in zfs, the test credentials.
fn outside() -> Outside {
    Outside { zfs: fake_zfs().zfs(), s3_credentials: Some(zib_testkit::test_credentials()) }
}

fn hold(ds: &str, on: bool) {
    fake_zfs().slow(ds, on);
}

fn snapshots_taken(ds: &str) -> usize {
    let log = fake_zfs().calls();
    log.lines().filter(|l| l.starts_with(&format!("snapshot {ds}@"))).count()
}

/// A child process killed on drop (a failed assertion must not leave a zibd running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

struct Bed {
    dir: tempfile::TempDir,
    config: PathBuf,
    endpoint: String,
    bucket: String,
    clock: ManualClock,
    _s3: S3sFsServer,
}

impl Bed {
    async fn new() -> Bed {
        let s3 = S3sFsServer::start();
        let bucket = s3.create_bucket("daemon").await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("zibd.toml");
        Bed {
            endpoint: s3.endpoint().to_owned(),
            bucket,
            config,
            dir,
            clock: ManualClock::new(t("2026-01-01T00:00:30Z")),
            _s3: s3,
        }
    }

    /// Writes the config with these `(dataset, schedule)` entries.
    fn write_config(&self, datasets: &[(&str, &str)]) {
        self.write_config_jobs(datasets, 2);
    }

    /// The config of these tests, without datasets.
    fn config_toml(&self, max_jobs: usize) -> ConfigToml {
        let root = self.dir.path();
        ConfigToml::new(root, &self.bucket, &self.endpoint)
            .daemon("socket", quoted(root.join("run/zibd.sock").display()))
            .daemon("shutdown_timeout_secs", 10)
            .daemon("max_concurrent_jobs", max_jobs)
            .target("storage_class", quoted("STANDARD"))
            .target("chunk_size", quoted("64KiB"))
            .target("max_attempts", 3)
    }

    /// The same, with `daemon.max_concurrent_jobs = max_jobs`.
    fn write_config_jobs(&self, datasets: &[(&str, &str)], max_jobs: usize) {
        let mut c = self.config_toml(max_jobs);
        for (ds, schedule) in datasets {
            c = c.dataset(ds, schedule);
        }
        c.write(&self.config);
    }

    async fn start(&self) -> Daemon {
        self.start_with(outside()).await
    }

    /// The same, reaching the outside with `outside` (another stand-in zfs).
    async fn start_with(&self, outside: Outside) -> Daemon {
        let opts = DaemonOptions {
            config_path: self.config.clone(),
            clock: Arc::new(self.clock.clone()),
            notifier: Notifier::disabled(),
            outside,
        };
        Daemon::start(opts).await.expect("daemon starts")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/zibd.sock")
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Vec<String> {
        let out = self._s3.client().list_objects_v2().bucket(&self.bucket).send().await.unwrap();
        out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect()
    }
}

/// Triggers a backup of `ds` and waits until it succeeded with a snapshot other than `last`
/// (which it then updates).
async fn back_up(core: &DaemonCore, ds: &str, last: &mut Option<String>) -> DatasetStatus {
    expect_ok(ask(core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    let s = wait_for(core, ds, "the backup is done", |s| {
        let snap = s.last_success.as_ref().and_then(|l| l.snapshot.clone());
        snap.is_some() && snap != *last && s.state == JobState::Scheduled
    })
    .await;
    *last = s.last_success.as_ref().and_then(|l| l.snapshot.clone());
    s
}

fn root() -> Peer {
    Peer { uid: 0, gid: 0, pid: None, groups: vec![] }
}

async fn ask(core: &DaemonCore, r: Request) -> Response {
    match core.handle(r, root()).await {
        Reply::One(r) => r,
        Reply::Frame(body) => zib_protocol::decode_response(&body).expect("a reply frame").response,
        Reply::Stream(_) => panic!("unexpected stream"),
    }
}

async fn status(core: &DaemonCore, ds: &str) -> DatasetStatus {
    match ask(core, Request::Status { dataset: Some(ds.into()) }).await {
        Response::Status { mut datasets, .. } => datasets.remove(0),
        other => panic!("status: {other:?}"),
    }
}

/// `ds` in the all-datasets status reply.
async fn status_of_all(core: &DaemonCore, ds: &str) -> DatasetStatus {
    match ask(core, Request::Status { dataset: None }).await {
        Response::Status { datasets, .. } => {
            datasets.into_iter().find(|d| d.dataset == ds).expect("the dataset in the status")
        }
        other => panic!("status: {other:?}"),
    }
}

async fn names(core: &DaemonCore) -> Vec<String> {
    match ask(core, Request::Status { dataset: None }).await {
        Response::Status { datasets, .. } => datasets.into_iter().map(|d| d.dataset).collect(),
        other => panic!("status: {other:?}"),
    }
}

/// Polls the status of `ds` until `pred` holds (real time, 30 s at most).
async fn wait_for(
    core: &DaemonCore,
    ds: &str,
    what: &str,
    pred: impl Fn(&DatasetStatus) -> bool,
) -> DatasetStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(core, ds).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {ds}: {what}; last status {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expect_ok(r: Response) -> String {
    match r {
        Response::Ok { message } => message.unwrap_or_default(),
        other => panic!("expected ok, got {other:?}"),
    }
}

fn expect_err(r: Response, kind: ErrorKind) -> String {
    match r {
        Response::Error { kind: k, message } if k == kind => message,
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

/// `trigger --wait` (a full backup with `full`) and the run's final frame.
async fn trigger_and_wait(core: &DaemonCore, ds: &str, full: bool) -> Response {
    let Reply::Stream(mut rx) =
        core.handle(Request::Trigger { dataset: ds.into(), wait: true, full }, root()).await
    else {
        panic!("trigger --wait streams")
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a frame")
            .expect("a final frame")
        {
            Response::Progress(_) => {}
            other => return other,
        }
    }
}

/// Destroys every snapshot and bookmark of `ds` in the fake zfs, as an admin might.
fn destroy_snapshots_and_bookmarks(ds: &str) {
    let stem = ds.replace('/', "%2F");
    for dir in ["snap", "book"] {
        for e in std::fs::read_dir(fake_zfs().dir.join(dir)).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{stem}@")) || n.starts_with(&format!("{stem}#")) {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_base_starts_a_new_chain_with_a_status_note_and_trigger_full_works() {
    let bed = Bed::new().await;
    let ds = "full/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let d = bed.start().await;
    let core = d.core();
    let done = trigger_and_wait(&core, ds, false).await;
    assert!(matches!(&done, Response::Done { ok: true, .. }), "{done:?}");
    destroy_snapshots_and_bookmarks(ds);
    // Snapshot names have one-second resolution: let the next run get its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The incremental cannot go on: on_broken_chain = "full" (the default) starts a new chain,
    // and status says why (issue 12).
    let Response::Done { ok: true, message, .. } = trigger_and_wait(&core, ds, false).await else {
        panic!("a new chain starts by itself")
    };
    assert!(message.contains("(full backup #2)"), "{message}");
    let s = status(&core, ds).await;
    let note = s.last_note.as_ref().map(|n| n.message.clone()).unwrap_or_default();
    assert!(note.contains("is gone and has no bookmark: started a new chain"), "{s:?}");
    // `trigger --full` works while the daemon holds the dataset's lock.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let Response::Done { ok: true, message, .. } = trigger_and_wait(&core, ds, true).await else {
        panic!("trigger --full starts a new chain")
    };
    assert!(message.contains("(full backup #3)"), "{message}");
    let s = status(&core, ds).await;
    assert_eq!((s.chain_length, s.state), (1, JobState::Scheduled), "{s:?}");
    assert!(s.last_note.is_none(), "a plain full has no note: {s:?}");
    assert!(d.stop().await);
}

/// One request over the control socket, and its one reply.
async fn over_the_socket(path: &Path, r: Request) -> Response {
    Client::connect(path).await.unwrap().call(&r).await.unwrap()
}

/// A backed-up dataset lost and being restored into itself, its restore held in the receiving
/// phase: S3 goes through a proxy which holds the restore's chunk downloads from the first on
/// (the stand-in's stream has no zfs send header, so a first chunk let through would end the
/// restore at its header check, racing the test). The proxy must outlive the test's daemons.
async fn restore_held_in_receiving(
    bed: &mut Bed,
    ds: &str,
    schedule: &str,
) -> (Daemon, zib_testkit::FaultProxy, zib_protocol::RestoreStart) {
    let proxy = zib_testkit::FaultProxy::start(&bed.endpoint).await;
    bed.endpoint = proxy.endpoint();
    bed.write_config(&[(ds, schedule)]);
    let d = bed.start().await;
    let done = trigger_and_wait(&d.core(), ds, false).await;
    assert!(matches!(&done, Response::Done { ok: true, .. }), "{done:?}");
    // The disaster: the dataset is gone. Its recovery: restore it into itself.
    destroy_snapshots_and_bookmarks(ds);
    let hang = zib_testkit::FaultAction::Delay(Duration::from_secs(3600));
    proxy.add_fault(
        zib_testkit::Fault::new(zib_testkit::Matcher::get().path_contains("/a00/"), hang)
            .nth(1)
            .always(),
    );
    let start = zib_protocol::RestoreStart {
        dataset: ds.into(),
        snapshot: None,
        to: ds.into(),
        tier: zib_protocol::RestoreTier::Bulk,
        days: 1,
        bucket: None,
        prefix: None,
        mountpoint: None,
        no_mount: false,
        key_location: None,
    };
    let r = over_the_socket(&bed.socket(), Request::RestoreStart(start.clone())).await;
    assert!(matches!(&r, Response::RestoreStarted { id } if id == ds), "{r:?}");
    use zib_protocol::RestoreState as S;
    restore_job_until(bed, ds, "receiving", |j| j.state == S::Receiving).await;
    (d, proxy, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_backed_up_dataset_holds_its_backups_while_it_runs() {
    let mut bed = Bed::new().await;
    let ds = "dr/data";
    let (d, _proxy, _) = restore_held_in_receiving(&mut bed, ds, "0 * * * * *").await;
    let core = d.core();
    let before = snapshots_taken(ds);
    // A trigger is refused, naming the restore.
    let r = over_the_socket(
        &bed.socket(),
        Request::Trigger { dataset: ds.into(), wait: false, full: false },
    )
    .await;
    let e = expect_err(r, ErrorKind::Conflict);
    assert!(e.contains("a restore into dr/data is unfinished"), "{e}");
    // A scheduled run is skipped (and counted as missed).
    bed.clock.set(t("2026-01-01T00:01:00Z"));
    let s = wait_for(&core, ds, "the tick skipped", |s| s.missed_ticks == 1).await;
    assert!(s.progress.is_none(), "{s:?}");
    assert_eq!(snapshots_taken(ds), before, "a dataset being restored was snapshotted");
    assert!(d.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_fires_and_a_busy_run_counts_a_missed_tick() {
    let bed = Bed::new().await;
    let ds = "sched/data";
    bed.write_config(&[(ds, "0 * * * * *")]);
    let d = bed.start().await;
    let core = d.core();

    let s = status(&core, ds).await;
    assert_eq!(s.state, JobState::Scheduled);
    assert_eq!(s.next_run, Some(t("2026-01-01T00:01:00Z")));
    assert_eq!(snapshots_taken(ds), 0);
    assert_eq!(core.status_line(), "1 idle, next sched/data in 30s");

    // The tick starts a run; the held `zfs send` keeps it busy.
    hold(ds, true);
    bed.clock.set(t("2026-01-01T00:01:00Z"));
    let s = wait_for(&core, ds, "uploading", |s| s.state == JobState::Uploading).await;
    let line = core.status_line();
    assert!(line.starts_with("1 running") && line.contains("next sched/data in"), "{line}");
    let p = s.progress.expect("progress while uploading");
    assert!(p.snapshot.starts_with(&format!("{ds}@zib-")), "{p:?}");
    assert_eq!(p.bytes_total_estimate, Some(1 << 20));
    assert_eq!(p.chunks_total_estimate, Some(16));
    assert_eq!(s.next_run, Some(t("2026-01-01T00:02:00Z")));

    // The next tick comes while the run is going: skipped and counted, no second run.
    bed.clock.set(t("2026-01-01T00:02:00Z"));
    let s = wait_for(&core, ds, "a missed tick", |s| s.missed_ticks == 1).await;
    assert_eq!(s.state, JobState::Uploading);
    assert_eq!(s.next_run, Some(t("2026-01-01T00:03:00Z")));
    expect_err(
        ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await,
        ErrorKind::Busy,
    );
    assert_eq!(snapshots_taken(ds), 1);

    hold(ds, false);
    let s = wait_for(&core, ds, "success", |s| {
        s.last_success.is_some() && s.state == JobState::Scheduled
    })
    .await;
    assert_eq!(s.last_success.as_ref().unwrap().bytes, 1 << 20);
    assert_eq!(s.chain_length, 1);
    assert!(s.last_error.is_none(), "{s:?}");
    assert!(s.progress.is_none());

    // Snapshot names have one-second resolution: let the next run get its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Three ticks passed at once (clock jump): one run, two counted as missed.
    bed.clock.set(t("2026-01-01T00:05:00Z"));
    let s = wait_for(&core, ds, "second backup", |s| {
        s.chain_length == 2 && s.state == JobState::Scheduled
    })
    .await;
    assert_eq!(s.missed_ticks, 3);
    assert_eq!(s.next_run, Some(t("2026-01-01T00:06:00Z")));
    assert_eq!(snapshots_taken(ds), 2);
    assert!(d.stop().await, "stopped in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_slots_bound_concurrent_runs_and_a_queued_run_can_be_cancelled() {
    let bed = Bed::new().await;
    let (a, b, c) = ("slots/a", "slots/b", "slots/c");
    bed.write_config_jobs(&[(a, "0 0 3 * * *"), (b, "0 0 3 * * *"), (c, "0 0 3 * * *")], 1);
    let d = bed.start().await;
    let core = d.core();
    hold(a, true);
    expect_ok(ask(&core, Request::Trigger { dataset: a.into(), wait: false, full: false }).await);
    wait_for(&core, a, "uploading", |s| s.state == JobState::Uploading).await;
    expect_ok(ask(&core, Request::Trigger { dataset: b.into(), wait: false, full: false }).await);
    expect_ok(ask(&core, Request::Trigger { dataset: c.into(), wait: false, full: false }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&core, b).await.state, JobState::Queued, "only one job slot");
    assert_eq!(status(&core, c).await.state, JobState::Queued);
    assert_eq!(snapshots_taken(b), 0, "a queued run has not started");
    match ask(&core, Request::Status { dataset: None }).await {
        Response::Status { daemon, .. } => {
            assert_eq!((daemon.jobs_running, daemon.jobs_max), (1, Some(1)))
        }
        other => panic!("{other:?}"),
    }
    // Cancelling a queued run frees nothing and starts nothing.
    let msg = expect_ok(ask(&core, Request::Cancel { dataset: c.into() }).await);
    assert!(msg.contains("cancelling"), "{msg}");
    wait_for(&core, c, "idle again", |s| s.state == JobState::Scheduled).await;
    assert_eq!(status(&core, b).await.state, JobState::Queued);
    // A reload with two slots lets b run while a is still going.
    bed.write_config_jobs(&[(a, "0 0 3 * * *"), (b, "0 0 3 * * *"), (c, "0 0 3 * * *")], 2);
    expect_ok(ask(&core, Request::Reload).await);
    wait_for(&core, b, "b ran beside a", |s| s.last_success.is_some()).await;
    assert_eq!(status(&core, a).await.state, JobState::Uploading, "a is still held");
    hold(a, false);
    wait_for(&core, a, "a done", |s| s.last_success.is_some()).await;
    let sc = status(&core, c).await;
    assert!(sc.last_success.is_none() && sc.last_error.is_none(), "{sc:?}");
    assert_eq!(snapshots_taken(c), 0);
    assert!(d.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_shows_failed_with_its_error_and_jitter_delays_the_next_run() {
    let mut bed = Bed::new().await;
    bed.bucket = "zib-no-such-bucket-for-daemon-test".into();
    let ds = "fail/data";
    bed.write_config(&[(ds, "0 * * * * *")]);
    let mut text = std::fs::read_to_string(&bed.config).unwrap();
    text.push_str("jitter_secs = 20\n");
    std::fs::write(&bed.config, text).unwrap();
    let d = bed.start().await;
    let core = d.core();
    let next = status(&core, ds).await.next_run.expect("scheduled");
    assert!((t("2026-01-01T00:01:00Z")..=t("2026-01-01T00:01:20Z")).contains(&next), "{next}");

    let done = trigger_and_wait(&core, ds, false).await;
    let Response::Done { ok: false, message, .. } = done else {
        panic!("expected a failed run, got {done:?}")
    };
    assert!(message.contains("failed"), "{message}");
    let s = status(&core, ds).await;
    assert_eq!(s.state, JobState::Failed);
    let e = s.last_error.expect("last error");
    assert!(e.message.contains("bucket") || e.message.contains("Bucket"), "{}", e.message);
    assert!(s.last_success.is_none());
    assert!(d.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_skips_the_schedule_and_resume_continues() {
    let bed = Bed::new().await;
    let ds = "pause/data";
    bed.write_config(&[(ds, "0 * * * * *")]);
    let d = bed.start().await;
    let core = d.core();

    // The all-datasets reply is shared for a moment (status_reply.rs), never past a change
    // its asker made: the pause shows in the very next one.
    assert_eq!(status_of_all(&core, ds).await.state, JobState::Scheduled);
    let msg = expect_ok(ask(&core, Request::Pause { dataset: None }).await);
    assert!(msg.contains("paused 1 datasets"), "{msg}");
    let s = status(&core, ds).await;
    assert_eq!((s.state, s.paused, s.next_run), (JobState::Paused, true, None));
    assert_eq!(status_of_all(&core, ds).await.state, JobState::Paused);
    bed.clock.set(t("2026-01-01T00:03:00Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = status(&core, ds).await;
    assert_eq!(s.state, JobState::Paused);
    assert_eq!(s.missed_ticks, 0, "paused ticks are skipped, not missed");
    assert_eq!(snapshots_taken(ds), 0, "a paused dataset must not run");
    expect_err(
        ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await,
        ErrorKind::Conflict,
    );

    // Resume re-arms the schedule from now.
    expect_ok(ask(&core, Request::Resume { dataset: Some(ds.into()) }).await);
    assert_eq!(status_of_all(&core, ds).await.state, JobState::Scheduled);
    let s = status(&core, ds).await;
    assert_eq!(
        (s.state, s.paused, s.next_run),
        (JobState::Scheduled, false, Some(t("2026-01-01T00:04:00Z")))
    );

    // Pause during a run stops it at a safe point; resume continues it.
    hold(ds, true);
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "uploading", |s| s.state == JobState::Uploading).await;
    let msg = expect_ok(ask(&core, Request::Pause { dataset: Some(ds.into()) }).await);
    assert!(msg.contains("safe point"), "{msg}");
    let s =
        wait_for(&core, ds, "paused after the run stopped", |s| s.state == JobState::Paused).await;
    assert!(s.last_error.is_none(), "a pause is not a failure: {s:?}");
    assert!(s.last_success.is_none());
    hold(ds, false);
    let msg = expect_ok(ask(&core, Request::Resume { dataset: Some(ds.into()) }).await);
    assert!(msg.contains("continuing"), "{msg}");
    let s = wait_for(&core, ds, "success after resume", |s| {
        s.last_success.is_some() && s.state == JobState::Scheduled
    })
    .await;
    assert_eq!(s.chain_length, 1);
    assert_eq!(snapshots_taken(ds), 1, "the interrupted backup was continued, not started again");

    // Unknown datasets are named as such.
    let e = expect_err(
        ask(&core, Request::Pause { dataset: Some("nope/x".into()) }).await,
        ErrorKind::NotFound,
    );
    assert!(e.contains("pause/data"), "{e}");
    assert!(d.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_datasets_and_rejects_an_invalid_config() {
    let bed = Bed::new().await;
    let (a, b, c) = ("rel/a", "rel/b", "rel/c");
    bed.write_config(&[(a, "0 * * * * *")]);
    let d = bed.start().await;
    let core = d.core();
    assert_eq!(names(&core).await, [a]);

    // A running job is not disturbed by a reload that adds datasets.
    hold(a, true);
    expect_ok(ask(&core, Request::Trigger { dataset: a.into(), wait: false, full: false }).await);
    wait_for(&core, a, "uploading", |s| s.state == JobState::Uploading).await;
    bed.write_config(&[(a, "0 * * * * *"), (b, "30 * * * * *")]);
    let msg = expect_ok(ask(&core, Request::Reload).await);
    assert!(msg.contains("added rel/b"), "{msg}");
    assert_eq!(names(&core).await, [a, b]);
    assert_eq!(status(&core, b).await.next_run, Some(t("2026-01-01T00:01:30Z")));
    assert_eq!(status(&core, a).await.state, JobState::Uploading);

    // An invalid file is refused; the running config stays.
    std::fs::write(
        &bed.config,
        std::fs::read_to_string(&bed.config).unwrap().replace("30 * * * * *", "61 * * * *"),
    )
    .unwrap();
    let e = expect_err(ask(&core, Request::Reload).await, ErrorKind::Conflict);
    assert!(e.contains("zibd.toml") && e.contains("keeping the running configuration"), "{e}");
    assert_eq!(names(&core).await, [a, b]);
    assert_eq!(status(&core, a).await.state, JobState::Uploading);

    // Remove a (it finishes its run first, then releases its lock), add c.
    bed.write_config(&[(b, "30 * * * * *"), (c, "0 0 * * * *")]);
    let msg = expect_ok(
        d.reload()
            .await
            .map(Response::ok)
            .unwrap_or_else(|e| Response::error(e.kind(), e.to_string())),
    );
    assert!(msg.contains("removed rel/a") && msg.contains("added rel/c"), "{msg}");
    assert_eq!(names(&core).await, [b, c]);
    let store = zibd::state_store::StateStore::new(bed.dir.path().join("state"));
    let a_name = zib_core::DatasetName::new(a).unwrap();
    assert!(store.lock(&a_name).is_err(), "a's task holds its lock while its run finishes");
    hold(a, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let locked = loop {
        match store.lock(&a_name) {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "a's lock was never released: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        locked.state.last.as_ref().map(|c| c.seq),
        Some(1),
        "a's run completed after its removal"
    );
    drop(locked);

    // b is scheduled: its tick still works after the reloads.
    bed.clock.set(t("2026-01-01T00:01:30Z"));
    wait_for(&core, b, "b's first backup", |s| s.last_success.is_some()).await;
    assert!(d.stop().await);
    // Once shutting down, a reload is refused as such (not as a conflict).
    let e = expect_err(ask(&core, Request::Reload).await, ErrorKind::ShuttingDown);
    assert!(e.contains("shutting down"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_wait_streams_progress_over_the_socket_then_done() {
    let bed = Bed::new().await;
    let ds = "wait/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let d = bed.start().await;

    let mut s = Client::connect(&bed.socket()).await.unwrap();
    let mut progress = 0;
    let request = Request::Trigger { dataset: ds.into(), wait: true, full: false };
    let done = s
        .stream(&request, Some(Duration::from_secs(30)), |p| {
            assert_eq!(p.dataset, ds);
            progress += 1;
        })
        .await
        .unwrap();
    match done {
        Response::Done { ok, snapshot, bytes, message } => {
            assert!(ok, "{message}");
            assert!(snapshot.unwrap().starts_with(&format!("{ds}@zib-")));
            assert_eq!(bytes, Some(1 << 20));
        }
        other => panic!("expected done, got {other:?}"),
    }
    assert!(progress >= 1, "at least one progress frame");
    // Restore requests reach the restore jobs.
    let core = d.core();
    expect_err(
        ask(&core, Request::RestoreStatus { id: Some("tank/nope".into()) }).await,
        ErrorKind::NotFound,
    );
    match ask(&core, Request::RestoreStatus { id: None }).await {
        Response::RestoreStatus { jobs } => assert!(jobs.is_empty()),
        other => panic!("{other:?}"),
    }
    let bad = zib_protocol::RestoreStart {
        dataset: ds.into(),
        snapshot: None,
        to: "tank/x@not-a-dataset".into(),
        tier: zib_protocol::RestoreTier::Bulk,
        days: 1,
        bucket: None,
        prefix: None,
        mountpoint: None,
        no_mount: false,
        key_location: None,
    };
    expect_err(ask(&core, Request::RestoreStart(bad)).await, ErrorKind::InvalidRequest);
    // The connection stays usable after the stream.
    assert!(matches!(s.call(&Request::Version).await.unwrap(), Response::Version { .. }));
    assert!(d.stop().await);
    assert!(!bed.socket().exists(), "the socket file is removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_running_backup_at_a_safe_point_and_a_restart_resumes() {
    let bed = Bed::new().await;
    let ds = "stop/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let d = bed.start().await;
    let core = d.core();
    hold(ds, true);
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "uploading", |s| s.state == JobState::Uploading).await;
    let t0 = Instant::now();
    assert!(d.stop().await, "jobs stopped before the deadline");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The state says a backup is pending; the lock is free again.
    let store = zibd::state_store::StateStore::new(bed.dir.path().join("state"));
    let l = store.lock(&zib_core::DatasetName::new(ds).unwrap()).unwrap();
    assert!(l.state.pending.is_some() && l.state.last.is_none(), "{:?}", l.state);
    assert!(l.state.stats.last_error.is_none(), "a shutdown is not a failure: {:?}", l.state.stats);
    drop(l);

    hold(ds, false);
    let d = bed.start().await;
    let core = d.core();
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    let s = wait_for(&core, ds, "resumed backup", |s| s.last_success.is_some()).await;
    assert_eq!(s.chain_length, 1);
    assert_eq!(snapshots_taken(ds), 1, "the restarted daemon continued the same snapshot");
    assert!(d.stop().await);
}

/// The `zibd` binary on `config`, reaching neither zfs (`/bin/false`) nor a cloud metadata
/// service: for the tests of the daemon process itself (start, notify, signals).
fn offline_zibd(config: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config")
        .arg(config)
        .env("ZIB_ZFS_BIN", "/bin/false")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// systemd gives a service a soft limit of 1,024 open files (hard 524,288), and the daemon
/// holds one state lock a dataset: a tree of 1,000 datasets would not start. Here the same at a
/// smaller scale: 100 datasets under a soft limit of 64 (hard 4,096), through `prlimit`. The
/// daemon raises its soft limit to the hard one, starts, and lists every dataset.
#[test]
fn more_datasets_than_the_soft_open_file_limit_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zibd.toml");
    let socket = dir.path().join("run/zibd.sock");
    let mut c = ConfigToml::new(dir.path(), "nofile-test", "http://127.0.0.1:9")
        .daemon("socket", quoted(socket.display()));
    for i in 0..100 {
        c = c.dataset(&format!("tank/many{i:03}"), "0 3 * * *");
    }
    c.write(&config);
    let child = std::process::Command::new("prlimit")
        .args(["--nofile=64:4096", "--"])
        .arg(env!("CARGO_BIN_EXE_zibd"))
        .arg("--config")
        .arg(&config)
        .env("ZIB_ZFS_BIN", "/bin/false")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs zibd");
    let mut child = Killed(child);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let datasets = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("zibd exited ({status}) under a soft limit of 64 open files: {err}");
        }
        let answer = rt.block_on(async {
            let mut s = Client::connect(&socket).await.ok()?;
            s.call(&Request::Status { dataset: None }).await.ok()
        });
        if let Some(Response::Status { datasets, .. }) = answer {
            break datasets.len();
        }
        assert!(Instant::now() < deadline, "zibd did not answer within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(datasets, 100);
}

/// A service manager that does not read its notifications (systemd under load; its queue
/// holds 512 datagrams by default): the daemon must not block on them. 700 status changes
/// (pause/resume) fill the queue, the daemon still answers, and SIGTERM still stops it
/// promptly; before, a full queue held a runtime thread and the shutdown.
#[test]
fn a_manager_that_does_not_read_its_notifications_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zibd.toml");
    let socket = dir.path().join("run/zibd.sock");
    ConfigToml::new(dir.path(), "notify-full", "http://127.0.0.1:9")
        .daemon("socket", quoted(socket.display()))
        .dataset("tank/photos", "0 3 * * *")
        .write(&config);
    let notify_path = dir.path().join("notify.sock");
    let _notify = UnixDatagram::bind(&notify_path).unwrap(); // never read
    let child = offline_zibd(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("WATCHDOG_USEC")
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut c = loop {
            if let Ok(c) = Client::connect(&socket).await {
                break c;
            }
            assert!(Instant::now() < deadline, "zibd did not bind its socket");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for i in 0..350 {
            for r in [Request::Pause { dataset: None }, Request::Resume { dataset: None }] {
                let answer = tokio::time::timeout(Duration::from_secs(10), c.call(&r)).await;
                assert!(
                    matches!(answer, Ok(Ok(Response::Ok { .. }))),
                    "request {i}: {answer:?} (blocked on a full notify queue?)"
                );
            }
        }
    });
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "zibd did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fake service manager: READY=1 must come only once the control socket answers; STATUS=
/// is set; WATCHDOG=1 pings come at half WATCHDOG_USEC; SIGHUP reloads; SIGTERM gives
/// STOPPING=1 and exit 0.
#[test]
fn sd_notify_ready_only_after_the_control_socket_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zibd.toml");
    ConfigToml::new(dir.path(), "notify-test", "http://127.0.0.1:9")
        .daemon("socket", quoted(dir.path().join("run/zibd.sock").display()))
        .dataset("tank/photos", "0 3 * * *")
        .write(&config);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let socket = dir.path().join("run/zibd.sock");
    let child = offline_zibd(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .unwrap();
    let mut child = Killed(child);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let version = |path: &Path| -> Result<(), String> {
        rt.block_on(async {
            let mut s = Client::connect(path).await.map_err(|e| e.to_string())?;
            match s.call(&Request::Version).await.map_err(|e| e.to_string())? {
                Response::Version { .. } => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    };

    let mut buf = [0u8; 4096];
    let mut messages = Vec::new();
    let recv = |buf: &mut [u8]| -> String {
        let n = notify.recv(buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Everything up to and including READY=1.
    loop {
        let m = recv(&mut buf);
        messages.push(m.clone());
        if m.lines().any(|l| l == "READY=1") {
            // At the moment READY=1 arrives the socket must already answer.
            version(&socket).unwrap_or_else(|e| {
                panic!("READY=1 sent but the control socket does not answer: {e}")
            });
            let status = m
                .lines()
                .find_map(|l| l.strip_prefix("STATUS="))
                .expect("READY=1 comes with a STATUS=");
            assert!(
                status.contains("1 idle") && status.contains("next tank/photos in"),
                "{status}"
            );
            break;
        }
        assert!(!m.contains("STOPPING"), "stopped before READY: {messages:?}");
    }
    // Watchdog pings follow.
    let t0 = Instant::now();
    let mut pings = 0;
    while pings < 2 {
        if recv(&mut buf).lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no watchdog pings");
    }
    // SIGHUP re-reads the config: a new dataset appears.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[[dataset]]\nname = \"tank/docs\"\nschedule = \"0 4 * * *\"\n"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = rt.block_on(async {
            let mut s = Client::connect(&socket).await.unwrap();
            match s.call(&Request::Status { dataset: None }).await.unwrap() {
                Response::Status { datasets, .. } => {
                    datasets.into_iter().map(|d| d.dataset).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            }
        });
        if names == ["tank/docs", "tank/photos"] {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: STOPPING=1, exit 0, socket removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        let m = recv(&mut buf);
        if m.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "zibd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket file left behind");
}

/// A second zibd on the same state refuses to start and leaves the first one's socket alone;
/// an invalid config exits 78.
#[test]
fn second_daemon_and_invalid_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zibd.toml");
    let text = ConfigToml::new(dir.path(), "second-test", "http://127.0.0.1:9")
        .dataset("tank/a", "0 3 * * *")
        .render();
    std::fs::write(&config, &text).unwrap();
    let zibd = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
        c.arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    };
    let mut first = Killed(zibd().spawn().unwrap());
    let socket = dir.path().join("zibd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "first zibd never bound its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = zibd().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("locked by another zib process"), "{err}");
    assert!(socket.exists(), "the second zibd must not remove the first one's socket");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.0.wait().unwrap().success());

    std::fs::write(&config, text.replace("0 3 * * *", "0 25 * * *")).unwrap();
    let out = zibd().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("zibd.toml") && err.contains("schedule"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_backup_applies_remote_retention() {
    let bed = Bed::new().await;
    let ds = "retain/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    // Every backup a new chain (max_chain = 1), only the newest kept; STANDARD has no minimum
    // storage duration, so the older chain may go at once.
    let mut cfg = std::fs::read_to_string(&bed.config).unwrap();
    cfg.push_str("max_chain = 1\nkeep_chains = 1\n");
    std::fs::write(&bed.config, cfg).unwrap();
    let d = bed.start().await;
    let core = d.core();
    let keys = || bed.keys();
    let mut last_snapshot = None;
    for n in 1..=2u64 {
        let s = back_up(&core, ds, &mut last_snapshot).await;
        // Each backup is a chain of its own (max_chain = 1).
        assert_eq!(s.chain_length, 1);
        // 1 MiB in 64 KiB chunks: 16 chunks and a manifest per backup.
        let k = keys().await;
        assert_eq!(k.len(), 17, "after backup #{n}: {k:?}");
        assert!(k.iter().all(|k| k.contains(&format!("/{n:06}-"))), "after backup #{n}: {k:?}");
    }
    assert!(d.stop().await);
}

/// One request over the control socket, one reply.
async fn over_socket(bed: &Bed, r: &Request) -> Response {
    let c = Client::connect(&bed.socket()).await.unwrap();
    c.with_reply_timeout(Duration::from_secs(60)).call(r).await.unwrap()
}

fn expect_report(r: Response) -> (String, serde_json::Value) {
    match r {
        Response::Report { text, json } => (text, json),
        other => panic!("expected a report, got {other:?}"),
    }
}

/// `zibd ARGS` (the binary, foreground) with the bed's config and the test credentials.
fn zibd_cmd(bed: &Bed, args: &[&str]) -> (String, String, bool) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config").arg(&bed.config).args(args);
    for (k, v) in test_env(&bed.endpoint) {
        c.env(k, v);
    }
    c.envs(fake_zfs().env()).env("ZIB_LOG", "warn");
    let o = c.output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.success(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_and_prune_through_the_control_socket() {
    let bed = Bed::new().await;
    let ds = "ledger/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    // Every backup a chain of its own, no retention yet: two backups leave two chains.
    let base = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, format!("{base}max_chain = 1\n")).unwrap();
    let d = bed.start().await;
    let core = d.core();
    let keys = || bed.keys();
    let mut last_snapshot = None;
    for _ in 1..=2u64 {
        back_up(&core, ds, &mut last_snapshot).await;
    }
    assert_eq!(keys().await.len(), 34);

    // zibctl cost: two chains of 1 MiB in 16 STANDARD chunks of 64 KiB and a manifest each.
    let (text, json) =
        expect_report(over_socket(&bed, &Request::Cost { dataset: Some(ds.into()) }).await);
    let classes = json["ledger"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 1, "{classes:?}");
    assert_eq!(
        (classes[0]["storage_class"].as_str(), classes[0]["objects"].as_u64()),
        (Some("STANDARD"), Some(34))
    );
    let bytes = classes[0]["bytes"].as_u64().unwrap();
    assert!(bytes > 2 << 20 && bytes < (2 << 20) + 20_000, "{bytes}");
    let monthly = classes[0]["monthly"].as_f64().unwrap();
    assert!((monthly - bytes as f64 / (1u64 << 30) as f64 * 0.023).abs() < 1e-15, "{monthly}");
    assert_eq!(json["ledger"]["datasets"][0]["chains"].as_array().unwrap().len(), 2);
    assert!(text.contains("chain #1..#1") && text.contains("chain #2..#2"), "{text}");
    // The same ledger as `zibd cost` from the bucket alone.
    let (out, err, ok) = zibd_cmd(&bed, &["cost", "--dataset", ds, "--json"]);
    assert!(ok, "{err}");
    let fg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fg["ledger"]["classes"], json["ledger"]["classes"]);
    assert_eq!(fg["ledger"]["datasets"][0]["chains"], json["ledger"]["datasets"][0]["chains"]);
    // An unknown dataset is named.
    let e = expect_err(
        ask(&core, Request::Cost { dataset: Some("no/such".into()) }).await,
        ErrorKind::NotFound,
    );
    assert!(e.contains("no/such"), "{e}");

    // keep_chains = 1 from now on; the daemon has not pruned yet (no backup since).
    std::fs::write(&bed.config, format!("{base}max_chain = 1\nkeep_chains = 1\n")).unwrap();
    expect_ok(ask(&core, Request::Reload).await);
    let dry = Request::PruneNow { dataset: Some(ds.into()), dry_run: true };
    let (text, json) = expect_report(over_socket(&bed, &dry).await);
    assert!(text.contains("(dry run): would delete 17 objects"), "{text}");
    assert_eq!(json["plan"]["objects"].as_u64(), Some(17));
    assert_eq!(json["deleted"].as_u64(), Some(0));
    // Equal to `zibd prune --dry-run`'s output (a dry run takes no lock, so it runs beside zibd).
    let (out, err, ok) = zibd_cmd(&bed, &["prune", "--dry-run", ds]);
    assert!(ok, "{err}");
    assert_eq!(out, text);
    // The same JSON, but for each object's age (taken at each run's own "now").
    let without_ages = |mut v: serde_json::Value| {
        for d in v["plan"]["deletions"].as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("age_days");
        }
        v
    };
    let (out, _, _) = zibd_cmd(&bed, &["prune", "--dry-run", "--json", ds]);
    let fg = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(without_ages(fg), without_ages(json));
    assert_eq!(keys().await.len(), 34, "a dry run deletes nothing");

    // While a backup runs, prune is refused as busy (the backup prunes after itself).
    hold(ds, true);
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "uploading", |s| s.state == JobState::Uploading).await;
    let prune = Request::PruneNow { dataset: Some(ds.into()), dry_run: false };
    let e = expect_err(over_socket(&bed, &prune).await, ErrorKind::Busy);
    assert!(e.contains("is running"), "{e}");
    expect_ok(ask(&core, Request::Cancel { dataset: ds.into() }).await);
    hold(ds, false);
    wait_for(&core, ds, "the run stopped", |s| {
        s.progress.is_none() && s.state != JobState::Cancelling
    })
    .await;

    // Now it prunes: chain #1 goes, chain #2 stays; run again, nothing is left to delete.
    let (text, json) = expect_report(over_socket(&bed, &prune).await);
    assert!(text.contains("deleted 17 objects"), "{text}");
    assert_eq!(json["deleted"].as_u64(), Some(17));
    let k = keys().await;
    assert!(k.iter().all(|k| !k.contains("/000001-")), "{k:?}");
    assert!(k.iter().filter(|k| k.contains("/000002-")).count() == 17, "{k:?}");
    let all = Request::PruneNow { dataset: None, dry_run: false };
    let (text, json) = expect_report(over_socket(&bed, &all).await);
    assert!(text.contains("deleted 0 objects"), "{text}");
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    assert!(d.stop().await);
}

/// Issue 16: `zibctl verify` through the socket gives the report `zibd verify` prints, clean
/// after two real backups, and names the chunk once one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_through_the_control_socket() {
    let bed = Bed::new().await;
    let ds = "verify/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let d = bed.start().await;
    let core = d.core();
    let mut last_snapshot = None;
    for _ in 0..2 {
        back_up(&core, ds, &mut last_snapshot).await;
    }
    let req = Request::Verify { dataset: Some(ds.into()), deep: false };
    let (text, json) = expect_report(over_socket(&bed, &req).await);
    assert_eq!(json["report"]["clean"], true, "{json:#}");
    assert_eq!(json["report"]["problems"].as_array().map(Vec::len), Some(0), "{json:#}");
    let chunks = json["report"]["datasets"][0]["chunks"].as_u64().unwrap();
    assert_eq!(json["report"]["datasets"][0]["chunks_sound"].as_u64(), Some(chunks));
    assert!(chunks >= 2, "{json:#}");
    assert_eq!(json["report"]["requests"]["head"].as_u64(), Some(chunks));
    assert!(text.contains(": clean"), "{text}");
    // The same report as `zibd verify`.
    let (out, err, ok) = zibd_cmd(&bed, &["verify", "--dataset", ds]);
    assert!(ok, "{err}");
    assert_eq!(out, text);

    // A chunk deleted behind zib's back: named, not clean.
    let gone = bed.keys().await.into_iter().find(|k| k.ends_with("/a00/00000000")).unwrap();
    bed._s3.client().delete_object().bucket(&bed.bucket).key(&gone).send().await.unwrap();
    let (text, json) = expect_report(over_socket(&bed, &req).await);
    assert_eq!(json["report"]["clean"], false);
    assert_eq!(json["report"]["problems"][0]["key"], gone.as_str());
    assert_eq!(json["report"]["problems"][0]["kind"], "missing_chunk");
    assert!(text.contains("PROBLEMS FOUND") && text.contains(&gone), "{text}");
    let (_, _, ok) = zibd_cmd(&bed, &["verify", "--dataset", ds]);
    assert!(!ok, "zibd verify exits non-zero on a damaged bucket");
    // An unknown dataset is named.
    let e = expect_err(
        ask(&core, Request::Verify { dataset: Some("no/such".into()), deep: false }).await,
        ErrorKind::NotFound,
    );
    assert!(e.contains("no/such"), "{e}");
    assert!(d.stop().await);
}

/// Issue 12: a triggered run on an idle day is done without a snapshot, and status says
/// `skipped (no change)` (zibctl prints the note). Issue 15: the skip clears an earlier
/// failure, also across a restart (the state file forgets the error as a success does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_shows_skipped_no_change_in_status() {
    let bed = Bed::new().await;
    let ds = "idle/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let d = bed.start().await;
    let core = d.core();
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "the first backup", |s| {
        s.last_success.is_some() && s.state == JobState::Scheduled
    })
    .await;
    assert_eq!(snapshots_taken(ds), 1);
    assert!(d.stop().await);
    // A failure after it, as an earlier daemon recorded it in the state file.
    let store = zibd::state_store::StateStore::new(bed.dir.path().join("state"));
    let name = zib_core::DatasetName::new(ds).unwrap();
    let mut l = store.lock(&name).unwrap();
    l.state.stats.last_error = Some("S3 503 SlowDown after 8 attempts".into());
    l.state.stats.last_error_at = Some(Utc::now());
    l.save().unwrap();
    drop(l);
    let d = bed.start().await;
    let core = d.core();
    let s = status(&core, ds).await;
    assert_eq!(s.state, JobState::Failed, "{s:#?}");
    assert!(s.last_error.is_some(), "{s:#?}");
    // Issue 15: the reply carries the stale_after in force, the default for a daily run.
    assert_eq!(s.stale_after_secs, Some(2 * 86_400), "{s:#?}");
    let written = fake_zfs().dir.join("written");
    std::fs::create_dir_all(&written).unwrap();
    std::fs::write(written.join(ds.replace('/', "%2F")), "0\n").unwrap();
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    let s = wait_for(&core, ds, "the idle run", |s| s.last_note.is_some()).await;
    let note = &s.last_note.as_ref().unwrap().message;
    assert!(note.starts_with("skipped (no change)"), "{note}");
    assert_eq!(s.state, JobState::Scheduled);
    assert_eq!(snapshots_taken(ds), 1, "no snapshot on an idle day");
    // The error stays in the reply until a restart, older than the note (zibctl shows it no
    // more); the state file no longer holds it.
    assert!(s.last_error.as_ref().unwrap().at < s.last_note.as_ref().unwrap().at, "{s:#?}");
    assert!(d.stop().await);
    let st = store.read(&name).unwrap();
    assert!(st.stats.last_error.is_none() && st.stats.last_error_at.is_none(), "{:?}", st.stats);
    let d = bed.start().await;
    let s = status(&d.core(), ds).await;
    assert_eq!(s.state, JobState::Scheduled, "{s:#?}");
    assert_eq!(s.last_error, None, "{s:#?}");
    assert!(d.stop().await);
}

use support::prom_text;

/// Adds `lines` to the config's `[daemon]` table.
fn daemon_settings(bed: &Bed, lines: &str) {
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, text.replacen("[daemon]\n", &format!("[daemon]\n{lines}\n"), 1))
        .unwrap();
}

/// One plain HTTP/1.0 GET: the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("a header block");
    (head.to_owned(), body.to_owned())
}

/// Scrapes `/metrics` and parses it strictly.
async fn scrape(addr: std::net::SocketAddr) -> prom_text::Exposition {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    prom_text::parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_textfile_follow_a_backup_and_a_failure() {
    let bed = Bed::new().await;
    let ds = "metrics/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    let textfile = bed.dir.path().join("node_exporter/zib.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    daemon_settings(
        &bed,
        &format!("metrics_listen = \"127.0.0.1:0\"\nmetrics_textfile = \"{}\"", textfile.display()),
    );
    // The failure below destroys the base: fail on it rather than start a new chain.
    let text = std::fs::read_to_string(&bed.config).unwrap();
    let text = text.replace(
        "name = \"metrics/data\"\n",
        "name = \"metrics/data\"\non_broken_chain = \"fail\"\n",
    );
    std::fs::write(&bed.config, text).unwrap();
    let d = bed.start().await;
    let core = d.core();
    let addr = d.metrics_addr().expect("the endpoint is on");
    let l = [("dataset", ds)];
    let state = |m: &prom_text::Exposition, st: &str| {
        m.get("zib_dataset_state", &[("dataset", ds), ("state", st)])
    };

    // Before any backup: scheduled, nothing uploaded, no last success series.
    let m = scrape(addr).await;
    assert_eq!(state(&m, "scheduled"), Some(1.0));
    assert_eq!(state(&m, "running"), Some(0.0));
    assert_eq!(m.get("zib_dataset_puts_total", &l), Some(0.0));
    assert_eq!(m.get("zib_dataset_last_success_timestamp_seconds", &l), None);
    // The clock stands at 00:00:30; the schedule's next tick is 03:00:00.
    assert_eq!(m.get("zib_dataset_next_run_seconds", &l), Some(3.0 * 3600.0 - 30.0));
    assert_eq!(m.get("zib_jobs_max", &[]), Some(2.0));
    let info = m.samples.iter().find(|s| s.name == "zib_daemon_info").expect("info");
    assert_eq!(info.labels["version"], env!("CARGO_PKG_VERSION"));
    let started = m.get("zib_daemon_start_time_seconds", &[]).unwrap();
    assert!((Utc::now().timestamp() as f64 - started).abs() < 60.0, "{started}");
    // The textfile is written at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !textfile.exists() {
        assert!(Instant::now() < deadline, "no textfile written at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // During a (held) backup: running, and the counters grow while it uploads.
    hold(ds, true);
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "uploading", |s| s.state == JobState::Uploading).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let during = loop {
        let m = scrape(addr).await;
        if m.get("zib_dataset_puts_total", &l).unwrap() >= 1.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "no PUT counted during the backup");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state(&during, "running"), Some(1.0));
    assert_eq!(state(&during, "scheduled"), Some(0.0));
    assert_eq!(during.get("zib_jobs_running", &[]), Some(1.0));
    let puts = during.get("zib_dataset_puts_total", &l).unwrap();
    let bytes = during.get("zib_dataset_uploaded_bytes_total", &l).unwrap();
    // Chunks are 64 KiB; the manifest comes last.
    assert_eq!(bytes, puts * 65536.0, "{puts} PUTs, {bytes} bytes");
    hold(ds, false);
    let s = wait_for(&core, ds, "success", |s| {
        s.last_success.is_some() && s.state == JobState::Scheduled
    })
    .await;

    // After it: the last backup's figures, 16 chunks and the manifest.
    let m = scrape(addr).await;
    let at = s.last_success.as_ref().unwrap().at;
    let last = m.get("zib_dataset_last_success_timestamp_seconds", &l).unwrap();
    assert_eq!(last, at.timestamp_millis() as f64 / 1000.0);
    assert_eq!(m.get("zib_dataset_last_attempt_timestamp_seconds", &l), Some(last));
    assert_eq!(m.get("zib_dataset_last_attempt_success", &l), Some(1.0));
    assert_eq!(m.get("zib_dataset_last_backup_bytes", &l), Some(1048576.0));
    assert_eq!(m.get("zib_dataset_last_backup_objects", &l), Some(17.0));
    assert_eq!(m.get("zib_dataset_puts_total", &l), Some(17.0));
    let up = m.get("zib_dataset_uploaded_bytes_total", &l).unwrap();
    assert!(up > 1048576.0 && up < 1048576.0 + 65536.0, "chunks and a manifest: {up}");
    assert_eq!(m.get("zib_dataset_chain_length", &l), Some(1.0));
    assert_eq!(m.get("zib_dataset_failures_total", &l), Some(0.0));
    assert_eq!(state(&m, "scheduled"), Some(1.0));
    assert_eq!(m.get("zib_jobs_running", &[]), Some(0.0));
    // The textfile has it too, written after the run.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = prom_text::parse(&std::fs::read_to_string(&textfile).unwrap());
        if f.get("zib_dataset_last_backup_bytes", &l) == Some(1048576.0) {
            assert_eq!(f.get("zib_dataset_puts_total", &l), Some(17.0));
            break;
        }
        assert!(Instant::now() < deadline, "the textfile was not rewritten after the run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A failed run: counted, last attempt 0, state failed; the last success stays.
    destroy_snapshots_and_bookmarks(ds);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let done = trigger_and_wait(&core, ds, false).await;
    assert!(matches!(done, Response::Done { ok: false, .. }), "{done:?}");
    let m = scrape(addr).await;
    assert_eq!(m.get("zib_dataset_failures_total", &l), Some(1.0));
    assert_eq!(m.get("zib_dataset_last_attempt_success", &l), Some(0.0));
    assert!(m.get("zib_dataset_last_attempt_timestamp_seconds", &l).unwrap() > last);
    assert_eq!(m.get("zib_dataset_last_success_timestamp_seconds", &l), Some(last));
    assert_eq!(state(&m, "failed"), Some(1.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = prom_text::parse(&std::fs::read_to_string(&textfile).unwrap());
        if f.get("zib_dataset_failures_total", &l) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the textfile was not rewritten after the failure");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only /metrics (and /) is served.
    let (head, _) = http_get(addr, "/nope").await;
    assert!(head.contains(" 404 "), "{head}");
    assert!(d.stop().await);
    // The endpoint is gone with the daemon.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after stop");
}

#[test]
fn the_strict_parser_rejects_what_the_format_does_not_allow() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"q\\\"\\\\\\n\"} 1\n";
    assert_eq!(prom_text::parse(ok).get("a_total", &[("l", "q\"\\\n")]), Some(1.0));
    for bad in [
        "# HELP a x\n# TYPE a gauge\na 1", // no final line feed
        "# HELP a x\n# TYPE a gauge\na{l=\"\\t\"} 1\n", // unknown escape
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n", // a series twice
        "# HELP a x\n# TYPE a counter\na 1\n", // counter without _total
        "# TYPE a gauge\na 1\n",           // no HELP
        "# HELP a x\n# TYPE a gauge\nb 1\n", // sample outside its family
        "# HELP a x\n# TYPE a gauge\na one\n", // not a number
        "# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b gauge\na 1\n", // family split
    ] {
        let r = std::panic::catch_unwind(|| prom_text::parse(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

/// The notifications recorded by the notify command of [`notify_settings`]: (event, its
/// environment), oldest first.
fn notifications(dir: &Path) -> Vec<(String, BTreeMap<String, String>)> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
            .collect(),
        Err(_) => vec![],
    };
    files.sort();
    files
        .iter()
        .map(|f| {
            let env: BTreeMap<String, String> = std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect();
            (env.get("ZIB_EVENT").cloned().unwrap_or_default(), env)
        })
        .collect()
}

/// `daemon.notify_command`: a script that writes its environment to one file per call in `dir`
/// (a temp name renamed into place, so a reader never sees half a file).
fn notify_settings(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"f="$0/$(date +%s%N)-$ZIB_EVENT"; env > "$f.tmp"; mv "$f.tmp" "$f""#;
    format!(
        "notify_command = [\"/bin/sh\", \"-c\", {script:?}, {:?}]\nnotify_timeout_secs = 10",
        dir.display().to_string()
    )
}

async fn wait_notifications(dir: &Path, n: usize) -> Vec<(String, BTreeMap<String, String>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = notifications(dir);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{n} notifications expected, got {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The daemon's environment must hold credentials the notify command must not see. Nothing in
/// these tests sets the process environment, so without them the test runs itself again as a
/// child process of this test binary with the test credentials in its environment.
#[test]
fn notify_command_runs_on_failure_recovery_and_staleness_without_secrets() {
    const NAME: &str = "notify_command_runs_on_failure_recovery_and_staleness_without_secrets";
    if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads", "1", "--nocapture"])
            .env("AWS_ACCESS_KEY_ID", zib_testkit::TEST_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", zib_testkit::TEST_SECRET_ACCESS_KEY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test in a child process:\n{stdout}\n{stderr}"
        );
        return;
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(notify_command_with_credentials_in_the_environment());
}

async fn notify_command_with_credentials_in_the_environment() {
    let bed = Bed::new().await;
    let (ds, idle) = ("alerts/data", "alerts/idle");
    bed.write_config(&[(ds, "0 0 3 * * *"), (idle, "0 0 3 * * *")]);
    let events = bed.dir.path().join("events");
    daemon_settings(&bed, &notify_settings(&events));
    // The idle dataset (never backed up) is stale an hour after the daemon started watching.
    let text = std::fs::read_to_string(&bed.config).unwrap();
    // The failure below destroys the base: fail on it rather than start a new chain.
    let text = text.replace(
        "name = \"alerts/data\"\n",
        "name = \"alerts/data\"\non_broken_chain = \"fail\"\n",
    );
    std::fs::write(&bed.config, format!("{text}stale_after = \"1h\"\n")).unwrap();
    // The daemon's environment holds credentials; the notify command must not see them.
    assert!(std::env::var("AWS_SECRET_ACCESS_KEY").is_ok());
    let d = bed.start().await;
    let core = d.core();

    // A success is quiet.
    let done = trigger_and_wait(&core, ds, false).await;
    assert!(matches!(done, Response::Done { ok: true, .. }), "{done:?}");
    let success_at = status(&core, ds).await.last_success.unwrap().at;

    // A failure: its error, the last success.
    destroy_snapshots_and_bookmarks(ds);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let done = trigger_and_wait(&core, ds, false).await;
    assert!(matches!(done, Response::Done { ok: false, .. }), "{done:?}");
    let got = wait_notifications(&events, 1).await;
    assert_eq!(got.len(), 1, "only the failure so far: {got:#?}");
    let (event, env) = &got[0];
    assert_eq!(event, "failure");
    assert_eq!(env["ZIB_DATASET"], ds);
    assert!(env["ZIB_ERROR"].contains(&format!("`zibctl trigger --full {ds}`")), "{env:?}");
    assert_eq!(
        env["ZIB_LAST_SUCCESS"],
        success_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(env["ZIB_MESSAGE"].contains(&format!("backup of {ds} failed")), "{env:?}");
    assert!(env.contains_key("ZIB_LAST_ATTEMPT") && env.contains_key("ZIB_HOST"), "{env:?}");

    // The recovery.
    let done = trigger_and_wait(&core, ds, true).await;
    assert!(matches!(done, Response::Done { ok: true, .. }), "{done:?}");
    let got = wait_notifications(&events, 2).await;
    let (event, env) = &got[1];
    assert_eq!(event, "recovery");
    assert_eq!(env["ZIB_DATASET"], ds);
    assert!(!env.contains_key("ZIB_ERROR"), "{env:?}");
    assert!(env["ZIB_MESSAGE"].contains("succeeded again"), "{env:?}");

    // Staleness: an hour and a minute later by the daemon's clock (no tick falls in between).
    bed.clock.set(t("2026-01-01T01:01:00Z"));
    let got = wait_notifications(&events, 3).await;
    let (event, env) = &got[2];
    assert_eq!(event, "stale");
    assert_eq!(env["ZIB_DATASET"], idle);
    assert_eq!(env["ZIB_STALE_AFTER_SECS"], "3600");
    assert!(!env.contains_key("ZIB_LAST_SUCCESS"), "never backed up: {env:?}");
    assert!(env["ZIB_MESSAGE"].contains("no successful backup of alerts/idle"), "{env:?}");
    // Once per stale spell: later looks are quiet.
    bed.clock.set(t("2026-01-01T01:05:00Z"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = notifications(&events);
    assert_eq!(
        got.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["failure", "recovery", "stale"]
    );

    // No secret and nothing else of the daemon's environment reached the command.
    for (_, env) in &got {
        for k in env.keys() {
            assert!(
                k.starts_with("ZIB_")
                    || ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_"]
                        .contains(&k.as_str()),
                "{k} reached the notify command"
            );
        }
    }
    assert!(d.stop().await);
}

/// The restore job `id` over the socket, once it is in a state `pred` accepts (30 s at most).
async fn restore_job_until(
    bed: &Bed,
    id: &str,
    what: &str,
    pred: impl Fn(&zib_protocol::RestoreJobStatus) -> bool,
) -> zib_protocol::RestoreJobStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r =
            over_the_socket(&bed.socket(), Request::RestoreStatus { id: Some(id.into()) }).await;
        let Response::RestoreStatus { mut jobs } = r else { panic!("{r:?}") };
        if pred(&jobs[0]) {
            return jobs.remove(0);
        }
        assert!(Instant::now() < deadline, "restore {id}: {what}; last {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_stops_and_a_restart_does_not_continue_it() {
    let mut bed = Bed::new().await;
    let ds = "rcancel/data";
    let (d, _proxy, start) = restore_held_in_receiving(&mut bed, ds, "0 0 3 * * *").await;
    use zib_protocol::RestoreState as S;

    // Unknown ids are not found; the running job is cancelled.
    let e = expect_err(
        over_the_socket(&bed.socket(), Request::RestoreCancel { id: "no/such".into() }).await,
        ErrorKind::NotFound,
    );
    assert!(e.contains("no restore job no/such") && e.contains(ds), "{e}");
    let msg =
        expect_ok(over_the_socket(&bed.socket(), Request::RestoreCancel { id: ds.into() }).await);
    assert!(msg.contains("cancelling restore job") && msg.contains("does not continue"), "{msg}");
    let j = restore_job_until(&bed, ds, "cancelled", |j| j.state == S::Cancelled).await;
    assert!(j.finished_at.is_some() && j.error.is_some(), "{j:?}");
    // A second cancel: not running any more.
    let e = expect_err(
        over_the_socket(&bed.socket(), Request::RestoreCancel { id: ds.into() }).await,
        ErrorKind::Conflict,
    );
    assert!(e.contains("is not running: it was cancelled"), "{e}");
    assert!(d.stop().await);

    // The restart does not continue it: no job, and the record says cancelled.
    let d = bed.start().await;
    let r = over_the_socket(&bed.socket(), Request::RestoreStatus { id: None }).await;
    let Response::RestoreStatus { jobs } = r else { panic!("{r:?}") };
    assert!(jobs.is_empty(), "a cancelled restore was continued: {jobs:?}");
    let record = bed.dir.path().join("state/restore/restore-rcancel%2Fdata.json");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(rec["cancelled_at"].is_string(), "{rec}");
    assert!(rec["finished_at"].is_null(), "{rec}");
    // Starting it again continues it, and clears the mark (a restart would continue it now).
    let r = over_the_socket(&bed.socket(), Request::RestoreStart(start)).await;
    assert!(matches!(&r, Response::RestoreStarted { id } if id == ds), "{r:?}");
    restore_job_until(&bed, ds, "receiving again", |j| j.state == S::Receiving).await;
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(rec.get("cancelled_at").is_none_or(|v| v.is_null()), "{rec}");
    assert!(d.stop().await);
}

#[test]
fn json_logs_are_one_object_a_line_with_the_events_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zibd.toml");
    ConfigToml::new(dir.path(), "json-logs", "http://127.0.0.1:9")
        .dataset("tank/a", "0 3 * * *")
        .write(&config);
    let mut child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_zibd"))
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ZIB_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let socket = dir.path().join("zibd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "zibd never bound its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut err = String::new();
    use std::io::Read;
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(child.0.wait().unwrap().success(), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|v| v["message"].as_str().is_some_and(|m| m.ends_with(" ready")))
        .unwrap_or_else(|| panic!("no ready line in {err}"));
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert_eq!(ready["datasets"], 1, "the event's fields are top-level keys: {ready}");
    assert!(ready["timestamp"].is_string(), "{ready}");
}

#[test]
fn man_pages_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("zibd.1")).unwrap();
    assert!(page.contains(".TH zibd 1") && page.contains("cold storage"), "{page}");
    let backup = std::fs::read_to_string(dir.path().join("zibd-backup.1")).unwrap();
    assert!(backup.contains("\\-\\-full"), "{backup}");
    // A packaging command, not one for users: hidden from --help.
    let help =
        std::process::Command::new(env!("CARGO_BIN_EXE_zibd")).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("man "), "listed in --help");
}

/// The bucket's keys of `ds`'s own prefix.
async fn keys_of(bed: &Bed, ds: &str) -> Vec<String> {
    let own = format!("backups/{ds}@zib/");
    bed.keys().await.into_iter().filter(|k| k.starts_with(&own)).collect()
}

/// A tree (issue 16): every descendant not excluded is a dataset of its own (own task, chain,
/// state and key prefix), a child created later is picked up at reload and at the tree's next
/// tick, and one destroyed keeps its objects and its task, idle, reported once as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_backs_up_each_child_and_follows_children_created_and_destroyed() {
    let bed = Bed::new().await;
    let zfs = fake_zfs();
    let root = "tree/docker";
    let child = |c: &str| format!("{root}/{c}");
    zfs.create(root);
    for c in ["a", "b", "c", "cache", "cache/x", "cachefoo"] {
        zfs.create(&child(c));
    }
    bed.config_toml(4)
        .dataset(root, "0 * * * * *")
        .dataset_key("recursive", true)
        .dataset_key("exclude", format!("[{}]", quoted(format!("{root}/cache*"))))
        .write(&bed.config);
    let d = bed.start().await;
    let core = d.core();
    let members = |v: &[&str]| -> Vec<String> {
        std::iter::once(root.to_owned()).chain(v.iter().map(|c| child(c))).collect()
    };
    assert_eq!(names(&core).await, members(&["a", "b", "c"]), "excluded: cache, cache/x, cachefoo");

    // The first tick backs up each of them, each under its own prefix.
    bed.clock.set(t("2026-01-01T00:01:00Z"));
    for ds in members(&["a", "b", "c"]) {
        let s = wait_for(&core, &ds, "its first backup", |s| s.last_success.is_some()).await;
        assert_eq!(s.chain_length, 1, "{ds}");
        assert_eq!(
            keys_of(&bed, &ds).await.iter().filter(|k| k.ends_with(".manifest.json")).count(),
            1,
            "{ds}"
        );
    }
    assert!(
        !bed.keys().await.iter().any(|k| k.contains("cache")),
        "excluded children are not backed up"
    );
    let store = zibd::state_store::StateStore::new(bed.dir.path().join("state"));
    for ds in members(&["a", "b", "c"]) {
        assert!(store.state_path(&zib_core::DatasetName::new(&ds).unwrap()).exists(), "{ds}");
    }

    // A child created later: picked up at reload, scheduled like the others.
    zfs.create(&child("d"));
    let msg = expect_ok(ask(&core, Request::Reload).await);
    assert!(msg.contains(&format!("added {}", child("d"))), "{msg}");
    assert_eq!(names(&core).await, members(&["a", "b", "c", "d"]));
    assert_eq!(status(&core, &child("d")).await.next_run, Some(t("2026-01-01T00:02:00Z")));

    // Another one, created without a reload: picked up and backed up at the tree's next tick.
    zfs.create(&child("e"));
    let before_b = keys_of(&bed, &child("b")).await;
    bed.clock.set(t("2026-01-01T00:02:00Z"));
    for ds in members(&["a", "b", "c", "d"]) {
        wait_for(&core, &ds, "the second tick's backup", |s| {
            s.state == JobState::Scheduled
                && s.last_success.as_ref().is_some_and(|l| l.at > t("2026-01-01T00:00:00Z"))
                && s.next_run == Some(t("2026-01-01T00:03:00Z"))
        })
        .await;
    }
    wait_for(&core, &child("e"), "e's first backup at the tick", |s| s.last_success.is_some())
        .await;
    assert_eq!(names(&core).await, members(&["a", "b", "c", "d", "e"]));
    let b_keys = keys_of(&bed, &child("b")).await;
    assert!(b_keys.len() > before_b.len(), "b's second backup");

    // b is destroyed on the host: its objects stay, its task stays, idle, never failing.
    zfs.destroy(&child("b"));
    let snapshots_of_b = || snapshots_taken(&child("b"));
    bed.clock.set(t("2026-01-01T00:03:00Z"));
    let s = wait_for(&core, &child("b"), "b reported gone", |s| {
        s.last_note.as_ref().is_some_and(|n| n.message.contains("source gone"))
            && s.state == JobState::Idle
    })
    .await;
    assert_eq!(s.last_note.as_ref().unwrap().message, "source gone; 1 chains kept in bucket");
    assert_eq!(s.state, JobState::Idle, "{s:#?}");
    assert_eq!(s.next_run, None);
    assert!(s.last_error.is_none(), "{s:#?}");
    wait_for(&core, &child("a"), "a's third backup", |s| {
        s.next_run == Some(t("2026-01-01T00:04:00Z")) && s.state == JobState::Scheduled
    })
    .await;
    let tried = snapshots_of_b();
    bed.clock.set(t("2026-01-01T00:04:00Z"));
    wait_for(&core, &child("a"), "a's fourth backup", |s| {
        s.next_run == Some(t("2026-01-01T00:05:00Z")) && s.state == JobState::Scheduled
    })
    .await;
    assert_eq!(snapshots_of_b(), tried, "no run of a gone dataset");
    assert_eq!(keys_of(&bed, &child("b")).await, b_keys, "b's objects untouched");
    let m = core.metrics();
    let bm = m.datasets.iter().find(|d| d.dataset == child("b")).unwrap();
    assert_eq!(bm.failures, 0);
    let e = expect_err(
        ask(&core, Request::Trigger { dataset: child("b"), wait: false, full: false }).await,
        ErrorKind::Conflict,
    );
    assert!(e.contains("source gone"), "{e}");

    // After a restart it is known from its state file, and still reported.
    assert!(d.stop().await);
    let d = bed.start().await;
    let core = d.core();
    assert_eq!(names(&core).await, members(&["a", "b", "c", "d", "e"]));
    let s =
        wait_for(&core, &child("b"), "b reported gone after a restart", |s| s.last_note.is_some())
            .await;
    assert_eq!(s.last_note.as_ref().unwrap().message, "source gone; 1 chains kept in bucket");
    assert_eq!(keys_of(&bed, &child("b")).await, b_keys);
    assert!(d.stop().await);
}

/// The daemon's whole-prefix status reply: its daemon part.
async fn daemon_info(core: &DaemonCore) -> zib_protocol::DaemonInfo {
    match ask(core, Request::Status { dataset: None }).await {
        Response::Status { daemon, .. } => daemon,
        other => panic!("status: {other:?}"),
    }
}

/// Polls the daemon part of the status until `pred` holds (real time, 30 s at most).
async fn wait_for_daemon(
    core: &DaemonCore,
    what: &str,
    pred: impl Fn(&zib_protocol::DaemonInfo) -> bool,
) -> zib_protocol::DaemonInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = daemon_info(core).await;
        if pred(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last {d:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 16: `daemon.verify_schedule` verifies the whole prefix on its own; the result and the
/// next tick show in status and the metrics, a damaged bucket turns it red, the result outlives
/// a restart, and `zibctl verify` of the whole prefix replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_verify_shows_in_status_and_metrics_and_outlives_a_restart() {
    use zib_protocol::VerifyTrigger;
    let bed = Bed::new().await;
    let ds = "verifysched/data";
    bed.write_config(&[(ds, "0 0 3 * * *")]);
    daemon_settings(&bed, "metrics_listen = \"127.0.0.1:0\"\nverify_schedule = \"0 4 * * *\"");
    let d = bed.start().await;
    let core = d.core();
    let mut last_snapshot = None;
    back_up(&core, ds, &mut last_snapshot).await;
    // The clock stands at 00:00:30 on 1 January: the first check is due at 04:00.
    let info = daemon_info(&core).await;
    assert_eq!(info.next_verify, Some(t("2026-01-01T04:00:00Z")), "{info:#?}");
    assert_eq!(info.last_verify, None);
    let m = scrape(d.metrics_addr().unwrap()).await;
    assert_eq!(m.get("zib_verify_last_clean", &[]), None);

    // 04:00: the scheduled check runs, clean, and the next is the day after.
    bed.clock.set(t("2026-01-01T04:00:01Z"));
    let info = wait_for_daemon(&core, "the first scheduled verify", |i| {
        i.last_verify.is_some() && i.next_verify == Some(t("2026-01-02T04:00:00Z"))
    })
    .await;
    let v = info.last_verify.unwrap();
    assert!(v.clean, "{v:#?}");
    assert_eq!(v.trigger, VerifyTrigger::Schedule);
    assert_eq!(v.datasets, 1);
    assert!(v.chunks >= 1, "{v:#?}");
    assert_eq!(v.requests, 1 + 1 + v.chunks, "one LIST, one manifest GET, a HEAD per chunk");
    let m = scrape(d.metrics_addr().unwrap()).await;
    assert_eq!(m.get("zib_verify_last_clean", &[]), Some(1.0));
    assert_eq!(m.get("zib_verify_last_errors", &[]), Some(0.0));
    let at = m.get("zib_verify_last_timestamp_seconds", &[]).unwrap();
    assert_eq!(at, t("2026-01-01T04:00:01Z").timestamp() as f64);

    // A chunk deleted behind zib's back: the next day's check finds it.
    let gone = bed.keys().await.into_iter().find(|k| k.ends_with("/a00/00000000")).unwrap();
    bed._s3.client().delete_object().bucket(&bed.bucket).key(&gone).send().await.unwrap();
    bed.clock.set(t("2026-01-02T04:00:01Z"));
    let info = wait_for_daemon(&core, "the second scheduled verify", |i| {
        i.last_verify.as_ref().is_some_and(|v| !v.clean)
    })
    .await;
    let v = info.last_verify.unwrap();
    assert_eq!(v.errors, 1, "{v:#?}");
    assert!(v.line().starts_with("1 error: 1 dataset"), "{}", v.line());
    let m = scrape(d.metrics_addr().unwrap()).await;
    assert_eq!(m.get("zib_verify_last_clean", &[]), Some(0.0));
    assert_eq!(m.get("zib_verify_last_errors", &[]), Some(1.0));
    assert!(d.stop().await);

    // After a restart the red result still shows until a check replaces it.
    let d = bed.start().await;
    let core = d.core();
    let info = daemon_info(&core).await;
    assert_eq!(info.last_verify.as_ref().map(|v| v.errors), Some(1), "{info:#?}");
    // `zibctl verify` of the whole prefix replaces it (asked for, still red: the chunk is gone).
    let (_, json) =
        expect_report(over_socket(&bed, &Request::Verify { dataset: None, deep: false }).await);
    assert_eq!(json["report"]["clean"], false);
    let info = daemon_info(&core).await;
    let v = info.last_verify.unwrap();
    assert_eq!(v.trigger, VerifyTrigger::Request);
    assert_eq!(v.at, zibd::job::Clock::now(&bed.clock));
    assert_eq!(v.errors, 1);
    assert!(d.stop().await);
}

/// The stand-in zfs of the drill test: streams with a begin record, and receives that make the
/// snapshot the record names (a drill checks its GUID); its own state, as [`fake_zfs`]'s.
fn drill_zfs() -> &'static FakeZfs {
    static ZFS: OnceLock<FakeZfs> = OnceLock::new();
    ZFS.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon-test");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("drill-zfs").tempdir_in(&base).unwrap().keep();
        FakeZfs::at(dir)
            .knob("FAKE_ZFS_SIZE", "200000")
            .knob("FAKE_ZFS_HEADER", "1")
            .knob("FAKE_ZFS_RECEIVE_SNAPSHOTS", "1")
    })
}

/// The drills of the status reply.
async fn drills(core: &DaemonCore) -> Vec<zib_protocol::DrillStatus> {
    daemon_info(core).await.drills
}

/// Issue 16: `zibctl restore drill` through the daemon restores the newest backup into a
/// throwaway dataset, passes on the GUID and destroys it; it is refused while the dataset's
/// backup runs; `drill_schedule` drills on its own, a damaged chunk fails it; the last drill
/// shows in status and the metrics, a failed one is announced through notify_command, and it
/// outlives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drills_through_the_daemon_and_on_schedule_show_in_status_metrics_and_alerts() {
    use zib_protocol::DrillTrigger;
    let zfs = drill_zfs();
    let drill_outside =
        || Outside { zfs: zfs.zfs(), s3_credentials: Some(zib_testkit::test_credentials()) };
    let bed = Bed::new().await;
    let ds = "drilld/data";
    let events = bed.dir.path().join("events");
    bed.config_toml(2)
        // Backups at 06:00: none falls before the drill's 05:00 below.
        .dataset(ds, "0 0 6 * * *")
        .dataset_key("drill_schedule", quoted("0 5 * * *"))
        .write(&bed.config);
    daemon_settings(
        &bed,
        &format!("metrics_listen = \"127.0.0.1:0\"\n{}", notify_settings(&events)),
    );
    let d = bed.start_with(drill_outside()).await;
    let core = d.core();
    // The clock stands at 00:00:30 on 1 January: the first drill is due at 05:00.
    let info = wait_for_daemon(&core, "the next drill", |i| !i.drills.is_empty()).await.drills;
    assert_eq!(info.len(), 1, "{info:#?}");
    assert_eq!((info[0].next, &info[0].last), (Some(t("2026-01-01T05:00:00Z")), &None));
    let done = trigger_and_wait(&core, ds, false).await;
    let Response::Done { ok: true, snapshot: Some(first), .. } = done else { panic!("{done:?}") };

    // Asked for: it passes, by GUID, and leaves no drill dataset.
    let drill = |yes| Request::RestoreDrill {
        dataset: ds.into(),
        snapshot: None,
        yes,
        tier: zib_protocol::RestoreTier::Bulk,
    };
    let (text, json) = expect_report(over_socket(&bed, &drill(false)).await);
    assert_eq!(json["result"], "passed", "{json:#}");
    assert_eq!(json["dataset"], ds);
    assert_eq!(format!("{ds}@{}", json["snapshot"].as_str().unwrap()), first);
    assert_eq!(json["received_guid"], json["manifest_guid"]);
    assert_eq!(json["source_guid"]["snapshot"], json["manifest_guid"]);
    assert_eq!(json["kept"], false);
    let target = json["target"].as_str().unwrap().to_owned();
    assert!(target.starts_with("drilld/zib-drill-"), "{target}");
    assert!(text.contains("PASSED") && text.contains("the drill dataset is destroyed"), "{text}");
    let calls = zfs.calls();
    assert!(calls.contains(&format!("destroy -r {target}")), "{calls}");
    assert!(!zfs.file("received", &target).exists(), "the drill dataset is gone");
    let info = drills(&core).await;
    let last = info[0].last.clone().unwrap();
    assert!(last.passed && last.reason.is_none(), "{last:#?}");
    assert_eq!(last.trigger, DrillTrigger::Request);
    assert_eq!(last.bytes, json["bytes"].as_u64().unwrap());
    assert!(last.bytes >= 200_000 && last.chunks >= 4, "{last:#?}");
    let m = scrape(d.metrics_addr().unwrap()).await;
    assert_eq!(m.get("zib_drill_last_passed", &[("dataset", ds)]), Some(1.0));
    assert_eq!(
        m.get("zib_drill_last_timestamp_seconds", &[("dataset", ds)]),
        Some(t("2026-01-01T00:00:30Z").timestamp() as f64)
    );
    assert_eq!(m.get("zib_drill_last_bytes", &[("dataset", ds)]), Some(last.bytes as f64));

    // Never beside a backup of the same dataset: refused while one runs (and the other way
    // round: see a_backup_waits_for_a_running_drill_and_a_trigger_meanwhile_is_busy).
    zfs.slow(ds, true);
    expect_ok(ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await);
    wait_for(&core, ds, "the backup runs", |s| s.state == JobState::Uploading).await;
    let e = expect_err(over_socket(&bed, &drill(false)).await, ErrorKind::Busy);
    assert!(e.contains(&format!("a backup of {ds} is running")), "{e}");
    zfs.slow(ds, false);
    wait_for(&core, ds, "the second backup is done", |s| {
        s.state == JobState::Scheduled
            && s.last_success.as_ref().and_then(|l| l.snapshot.as_ref()) != Some(&first)
    })
    .await;

    // A chunk of the full replaced behind zib's back: the scheduled drill at 05:00 fails on
    // it, shows red, and is announced.
    let chunk = bed.keys().await.into_iter().find(|k| k.ends_with("/a00/00000000")).unwrap();
    let s3 = bed._s3.client();
    let junk = aws_sdk_s3::primitives::ByteStream::from(vec![7u8; 65_536]);
    s3.put_object().bucket(&bed.bucket).key(&chunk).body(junk).send().await.unwrap();
    bed.clock.set(t("2026-01-01T05:00:01Z"));
    let info = wait_for_daemon(&core, "the scheduled drill", |i| {
        i.drills
            .first()
            .and_then(|d| d.last.as_ref())
            .is_some_and(|l| l.trigger == DrillTrigger::Schedule)
    })
    .await;
    let status = &info.drills[0];
    let last = status.last.clone().unwrap();
    assert!(!last.passed, "{last:#?}");
    let reason = last.reason.clone().unwrap();
    assert!(reason.contains("the restore failed") && reason.contains("corrupt"), "{reason}");
    assert_eq!(status.next, Some(t("2026-01-02T05:00:00Z")));
    assert!(!status.running);
    let m = scrape(d.metrics_addr().unwrap()).await;
    assert_eq!(m.get("zib_drill_last_passed", &[("dataset", ds)]), Some(0.0));
    let got = wait_notifications(&events, 1).await;
    let (event, env) = &got[0];
    assert_eq!(event, "drill_failed", "{got:#?}");
    assert_eq!(env["ZIB_DATASET"], ds);
    assert!(env["ZIB_ERROR"].contains("corrupt"), "{env:?}");
    assert!(env["ZIB_MESSAGE"].contains(&format!("restore drill of {ds} failed")), "{env:?}");
    let leftovers: Vec<_> = std::fs::read_dir(zfs.dir.join("received"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // This test's pool only: other tests drill in the same stand-in at the same time.
        .filter(|n| n.starts_with("drilld%2Fzib-drill-"))
        .collect();
    assert!(leftovers.is_empty(), "a failed drill destroys its dataset too: {leftovers:?}");
    assert!(d.stop().await);

    // After a restart the failed drill still shows (and is not announced again).
    let d = bed.start_with(drill_outside()).await;
    let core = d.core();
    let info = drills(&core).await;
    assert_eq!(info[0].last.as_ref().map(|l| l.passed), Some(false), "{info:#?}");
    let one = match ask(&core, Request::Status { dataset: Some(ds.into()) }).await {
        Response::Status { daemon, .. } => daemon.drills,
        other => panic!("{other:?}"),
    };
    assert_eq!(one.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(notifications(&events).len(), 1, "announced once");
    assert!(d.stop().await);
}

/// A drill cut short by the daemon's death (SIGKILL, power loss) leaves its throwaway dataset
/// and its lock file, a record (here damaged) and spool files under `<state_dir>/drill/`. The
/// next start destroys that dataset and removes its files, and touches nothing else: not a
/// dataset whose lock file is there but whose name is no drill's, nor a drill's whose lock is
/// held (one running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_cut_short_is_cleared_at_the_next_start_and_nothing_else() {
    use std::os::unix::fs::DirBuilderExt;
    let zfs = FakeZfs::new();
    let bed = Bed::new().await;
    bed.config_toml(2).dataset("drilld/data", "0 0 6 * * *").write(&bed.config);
    let work = bed.dir.path().join("state/drill");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&work).unwrap();
    let (left, foreign, running) =
        ("drilld/zib-drill-20260101T000000-7-0", "drilld/kept-by-hand", "drilld/zib-drill-now");
    let stem = |ds: &str| format!("restore-{}", ds.replace('/', "%2F"));
    for ds in [left, foreign, running] {
        std::fs::create_dir_all(zfs.file("received", ds).parent().unwrap()).unwrap();
        std::fs::write(zfs.file("received", ds), b"").unwrap();
        std::fs::write(work.join(format!("{}.lock", stem(ds))), b"").unwrap();
    }
    std::fs::write(work.join(format!("{}.json", stem(left))), b"{ damaged").unwrap();
    let spool = work.join("restore-spool").join(left.replace('/', "%2F"));
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("0.00000003.chunk"), vec![1u8; 4096]).unwrap();
    // A drill of this daemon's own that runs now holds its target's lock.
    let held = std::fs::File::open(work.join(format!("{}.lock", stem(running)))).unwrap();
    let held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();

    let d = bed
        .start_with(Outside {
            zfs: zfs.zfs(),
            s3_credentials: Some(zib_testkit::test_credentials()),
        })
        .await;
    let lock = work.join(format!("{}.lock", stem(left)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock.exists() {
        assert!(Instant::now() < deadline, "the drill cut short was not cleared: {}", zfs.calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stopping waits for the clearing task: whatever it did is done.
    assert!(d.stop().await);
    drop(held);
    let calls = zfs.calls();
    assert!(calls.contains(&format!("destroy -r {left}")), "{calls}");
    assert!(!zfs.file("received", left).exists(), "the drill dataset is gone");
    assert!(!work.join(format!("{}.json", stem(left))).exists(), "its record is gone");
    assert!(!spool.exists(), "its spool is gone");
    for ds in [foreign, running] {
        assert!(!calls.contains(&format!("destroy -r {ds}")), "{ds} was destroyed: {calls}");
        assert!(zfs.file("received", ds).exists(), "{ds} is still there");
        assert!(work.join(format!("{}.lock", stem(ds))).exists(), "{ds}'s lock file is kept");
    }
}

/// Issue 16: a drill holds its dataset's lock: a trigger while it runs is refused as busy,
/// and a scheduled backup that comes due meanwhile waits and starts when the drill has ended.
/// The drill is held by a proxy that delays its first chunk's download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_waits_for_a_running_drill_and_a_trigger_meanwhile_is_busy() {
    let zfs = drill_zfs();
    let mut bed = Bed::new().await;
    let proxy = zib_testkit::FaultProxy::start(&bed.endpoint).await;
    bed.endpoint = proxy.endpoint();
    let ds = "drillheld/data";
    bed.write_config(&[(ds, "0 0 6 * * *")]);
    let outside = Outside { zfs: zfs.zfs(), s3_credentials: Some(zib_testkit::test_credentials()) };
    let d = bed.start_with(outside).await;
    let core = d.core();
    let done = trigger_and_wait(&core, ds, false).await;
    let Response::Done { ok: true, snapshot: Some(first), .. } = done else { panic!("{done:?}") };
    let hold = zib_testkit::FaultAction::Delay(Duration::from_secs(4));
    proxy.add_fault(zib_testkit::Fault::new(
        zib_testkit::Matcher::get().path_contains("/a00/00000000"),
        hold,
    ));
    let socket = bed.socket();
    let drill = tokio::spawn(async move {
        let r = Request::RestoreDrill {
            dataset: ds.into(),
            snapshot: None,
            yes: false,
            tier: zib_protocol::RestoreTier::Bulk,
        };
        let c = Client::connect(&socket).await.unwrap();
        c.with_reply_timeout(Duration::from_secs(60)).call(&r).await.unwrap()
    });
    wait_for_daemon(&core, "the drill runs", |i| i.drills.first().is_some_and(|d| d.running)).await;
    let e = expect_err(
        ask(&core, Request::Trigger { dataset: ds.into(), wait: false, full: false }).await,
        ErrorKind::Busy,
    );
    assert!(e.contains(&format!("a restore drill of {ds} is running")), "{e}");
    // 06:00: the scheduled backup comes due while the drill runs; it waits, not missed.
    bed.clock.set(t("2026-01-01T06:00:01Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = status(&core, ds).await;
    assert!(s.progress.is_none() && s.missed_ticks == 0, "{s:#?}");
    assert_eq!(s.last_success.as_ref().and_then(|l| l.snapshot.as_ref()), Some(&first));
    let (_, json) = expect_report(drill.await.unwrap());
    assert_eq!(json["result"], "passed", "{json:#}");
    // The lock is back: the backup that came due runs now.
    let s = wait_for(&core, ds, "the waiting backup ran", |s| {
        s.state == JobState::Scheduled
            && s.last_success.as_ref().and_then(|l| l.snapshot.as_ref()) != Some(&first)
    })
    .await;
    assert_eq!(s.missed_ticks, 0, "{s:#?}");
    assert!(!drills(&core).await[0].running);
    assert!(d.stop().await);
}

/// Issue 16: a `drill_schedule` on a dataset whose chunks need a thaw is refused at start (exit
/// 78, the file, the line and the key named) and at reload (the running config stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_schedule_on_archived_chunks_is_refused_at_start_and_at_reload() {
    let bed = Bed::new().await;
    let ds = "drillcfg/data";
    let archived = bed
        .config_toml(2)
        .dataset(ds, "0 0 6 * * *")
        .dataset_key("storage_class", quoted("DEEP_ARCHIVE"))
        .dataset_key("drill_schedule", quoted("0 5 * * SUN"));
    archived.write(&bed.config);
    let line = std::fs::read_to_string(&bed.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("drill_schedule"))
        .unwrap()
        + 1;
    let opts = DaemonOptions {
        config_path: bed.config.clone(),
        clock: Arc::new(bed.clock.clone()),
        notifier: Notifier::disabled(),
        outside: outside(),
    };
    let e = Daemon::start(opts).await.expect_err("an archived dataset's drill_schedule");
    assert_eq!(e.exit_code(), 78);
    let e = e.to_string();
    assert!(
        e.contains(&bed.config.display().to_string())
            && e.contains(&format!("dataset {ds}: drill_schedule (line {line})"))
            && e.contains("DEEP_ARCHIVE"),
        "{e}"
    );
    // A running daemon keeps its config when a reload brings the same mistake.
    bed.write_config(&[(ds, "0 0 6 * * *")]);
    let d = bed.start().await;
    let core = d.core();
    archived.write(&bed.config);
    let e = expect_err(ask(&core, Request::Reload).await, ErrorKind::Conflict);
    assert!(
        e.contains("drill_schedule (line") && e.contains("keeping the running configuration"),
        "{e}"
    );
    assert!(drills(&core).await.is_empty(), "no drill was scheduled");
    assert!(d.stop().await);
}
