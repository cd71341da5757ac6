//! One daemon with 500 datasets (issue 16's scale, issue 17's load), in-process, against
//! s3s-fs behind the counting proxy and the stand-in zfs: every dataset triggered at once runs
//! to success without ever exceeding `max_concurrent_jobs`, while 50 clients ask for the
//! status over the socket at the same time, every request answered with every dataset. The
//! requests a run makes are counted at the proxy and printed. The latency figures are the
//! benchmark's (`scripts/bench/daemon --busy 500`, release build), not asserted here: a timed
//! assertion would fail on a busy machine without a bug.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use zib_protocol::{Client, JobState, Request, Response};
use zib_testkit::{FaultProxy, S3sFsServer};

mod support;
use support::{ConfigToml, FakeZfs, config::quoted};
use zibd::{
    daemon::{Daemon, DaemonOptions},
    job::ManualClock,
    outside::Outside,
    systemd::Notifier,
};

const DATASETS: usize = 500;

/// The two tests of this file each load the machine with hundreds of backups (one stand-in
/// zfs process per zfs command); run side by side, on a busy machine, each starved the other
/// past its deadline. They take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const MAX_JOBS: usize = 4;
const CLIENTS: usize = 50;
const REQUESTS: usize = 20;

fn name(i: usize) -> String {
    format!("scale/ds{i:03}")
}

/// What one status reply showed: datasets listed, runs going (the daemon's count and the
/// datasets' states), and how many have succeeded.
#[derive(Debug, Clone, Copy)]
struct Seen {
    datasets: usize,
    jobs_running: u32,
    running_states: usize,
    succeeded: usize,
}

async fn ask_status(socket: &Path) -> Seen {
    let mut c = Client::connect(socket).await.expect("connect");
    match c.call(&Request::Status { dataset: None }).await.expect("a status reply") {
        Response::Status { daemon, datasets } => Seen {
            datasets: datasets.len(),
            jobs_running: daemon.jobs_running,
            running_states: datasets
                .iter()
                .filter(|d| {
                    matches!(
                        d.state,
                        JobState::Snapshotting | JobState::Uploading | JobState::Finishing
                    )
                })
                .count(),
            succeeded: datasets.iter().filter(|d| d.last_success.is_some()).count(),
        },
        other => panic!("status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_datasets_run_within_max_concurrent_jobs_while_fifty_clients_ask_status() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("scale").await;
    let proxy = FaultProxy::start(s3.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let zfs = FakeZfs::at(root.join("zfs")).knob("FAKE_ZFS_SIZE", "20000");
    let socket = root.join("run/zibd.sock");
    let mut config = ConfigToml::new(root, &bucket, &proxy.endpoint())
        .daemon("socket", quoted(socket.display()))
        .daemon("max_concurrent_jobs", MAX_JOBS)
        .target("storage_class", quoted("STANDARD"))
        .target("chunk_size", quoted("64KiB"))
        .target("max_parallel_puts", 1);
    for i in 0..DATASETS {
        zfs.create(&name(i));
        // Once a year, at a time the manual clock never reaches: runs only when triggered.
        config = config.dataset(&name(i), "0 0 0 1 1 *");
    }
    let path = root.join("zibd.toml");
    config.write(&path);
    let started = Instant::now();
    let daemon = Daemon::start(DaemonOptions {
        config_path: path,
        clock: Arc::new(ManualClock::new("2026-01-01T00:00:30Z".parse().unwrap())),
        notifier: Notifier::disabled(),
        outside: Outside { zfs: zfs.zfs(), s3_credentials: Some(zib_testkit::test_credentials()) },
    })
    .await
    .expect("the daemon starts");
    let to_ready = started.elapsed();
    let idle = ask_status(&socket).await;
    assert_eq!((idle.datasets, idle.jobs_running, idle.succeeded), (DATASETS, 0, 0));

    // Every dataset at once, through the socket as zibctl does.
    let mut c = Client::connect(&socket).await.unwrap();
    for i in 0..DATASETS {
        let r =
            c.call(&Request::Trigger { dataset: name(i), wait: false, full: false }).await.unwrap();
        assert!(matches!(r, Response::Ok { .. }), "trigger {}: {r:?}", name(i));
    }

    // 50 clients x REQUESTS status requests while the runs go.
    let load_started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let socket = socket.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..REQUESTS {
                seen.push(ask_status(&socket).await);
            }
            seen
        }));
    }
    let mut answered = 0;
    let mut busiest = 0;
    for c in clients {
        for s in c.await.expect("a client task") {
            answered += 1;
            assert_eq!(s.datasets, DATASETS, "every reply lists every dataset: {s:?}");
            assert!(
                s.jobs_running as usize <= MAX_JOBS && s.running_states <= MAX_JOBS,
                "more runs at once than max_concurrent_jobs = {MAX_JOBS}: {s:?}"
            );
            busiest = busiest.max(s.running_states);
        }
    }
    let load_time = load_started.elapsed();
    assert_eq!(answered, CLIENTS * REQUESTS);

    let deadline = Instant::now() + Duration::from_secs(900);
    let last = loop {
        let s = ask_status(&socket).await;
        assert!(s.running_states <= MAX_JOBS, "{s:?}");
        if s.succeeded == DATASETS && s.jobs_running == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "not every run succeeded in 15 min: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_done = started.elapsed();
    assert!(daemon.stop().await, "a clean stop");
    assert_eq!(last.datasets, DATASETS);

    // At most MAX_JOBS runs reached the bucket at once (one PUT in flight per run), and no key
    // was stored twice.
    let peak_puts = proxy.peak_in_flight("PUT");
    assert!(peak_puts <= MAX_JOBS, "{peak_puts} PUTs at once with {MAX_JOBS} job slots");
    let twice: Vec<_> =
        proxy.successful_puts_per_key().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "keys stored twice: {twice:?}");
    let mut per_kind = BTreeMap::new();
    for r in proxy.requests() {
        let kind = if r.method == "GET" && r.query.contains("list-type") {
            "LIST".to_owned()
        } else {
            r.method.clone()
        };
        *per_kind.entry(kind).or_insert(0usize) += 1;
    }
    let per_run: Vec<String> =
        per_kind.iter().map(|(k, n)| format!("{k} {:.2}", *n as f64 / DATASETS as f64)).collect();
    eprintln!(
        "scale: {DATASETS} datasets, max_concurrent_jobs {MAX_JOBS}: to READY {to_ready:?}; \
         {answered} status replies from {CLIENTS} clients in {load_time:?} while runs went \
         (at most {busiest} running in any); all {DATASETS} backups done {all_done:?} after \
         the start; peak PUTs at once {peak_puts}; requests {per_kind:?}, per run: {}",
        per_run.join(", ")
    );
}

/// LISTs the proxy saw (ListObjectsV2).
fn lists(proxy: &FaultProxy) -> usize {
    proxy.requests().iter().filter(|r| r.method == "GET" && r.query.contains("list-type")).count()
}

/// A tree's members all run at the tree's tick, and each backup checks its key root in the
/// bucket first: one listing of the tree's prefix answers them all (s3/listing_groups.rs), a
/// listing a tick instead of one a member. The second tick's backups are incrementals on the
/// first ones (the shared listing showed each member what it had), and a member that has
/// written since the listing lists its own root: nothing is answered from a stale listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_fifty_lists_the_bucket_once_a_tick_not_once_a_member() {
    const MEMBERS: usize = 50;
    let _turn = ONE_AT_A_TIME.lock().await;
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("tree-list").await;
    let proxy = FaultProxy::start(s3.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Every run has changes (written above min_change): no idle skips.
    let zfs = FakeZfs::at(root.join("zfs"))
        .knob("FAKE_ZFS_SIZE", "5000")
        .knob("FAKE_ZFS_WRITTEN", "1000000");
    zfs.create("big/tree");
    for i in 1..MEMBERS {
        zfs.create(&format!("big/tree/m{i:02}"));
    }
    let path = root.join("zibd.toml");
    ConfigToml::new(root, &bucket, &proxy.endpoint())
        .daemon("socket", quoted(root.join("run/zibd.sock").display()))
        .daemon("max_concurrent_jobs", MAX_JOBS)
        .target("storage_class", quoted("STANDARD"))
        .dataset("big/tree", "0 * * * * *")
        .dataset_key("recursive", true)
        .write(&path);
    let clock = ManualClock::new("2026-01-01T00:00:30Z".parse().unwrap());
    let daemon = Daemon::start(DaemonOptions {
        config_path: path,
        clock: Arc::new(clock.clone()),
        notifier: Notifier::disabled(),
        outside: Outside { zfs: zfs.zfs(), s3_credentials: Some(zib_testkit::test_credentials()) },
    })
    .await
    .expect("the daemon starts");
    let socket = root.join("run/zibd.sock");
    // Waits until every member has a backup newer than `before` (its snapshot then), done at
    // the tick of `minute`; returns the chain lengths and the snapshots.
    let tick = async |minute: u32, before: &BTreeMap<String, String>| {
        let next: chrono::DateTime<chrono::Utc> =
            format!("2026-01-01T00:{:02}:00Z", minute + 1).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let mut c = Client::connect(&socket).await.unwrap();
            let Response::Status { datasets, .. } =
                c.call(&Request::Status { dataset: None }).await.unwrap()
            else {
                panic!("status")
            };
            assert_eq!(datasets.len(), MEMBERS);
            let snaps: BTreeMap<String, String> = datasets
                .iter()
                .filter(|d| d.state == JobState::Scheduled && d.next_run == Some(next))
                .filter_map(|d| {
                    let snap = d.last_success.as_ref()?.snapshot.clone()?;
                    (before.get(&d.dataset) != Some(&snap)).then(|| (d.dataset.clone(), snap))
                })
                .collect();
            if snaps.len() == MEMBERS {
                return (datasets.iter().map(|d| d.chain_length).collect::<Vec<_>>(), snaps);
            }
            if Instant::now() >= deadline {
                let left: Vec<_> =
                    datasets.iter().filter(|d| !snaps.contains_key(&d.dataset)).collect();
                panic!("{} of {MEMBERS} done at minute {minute}; not done: {left:#?}", snaps.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    clock.set("2026-01-01T00:01:00Z".parse().unwrap());
    let (lengths, snaps) = tick(1, &BTreeMap::new()).await;
    assert_eq!(lengths, vec![1; MEMBERS], "the first tick: a full each");
    let first = lists(&proxy);
    assert!(first <= 2, "{first} listings for {MEMBERS} members at the first tick");

    clock.set("2026-01-01T00:02:00Z".parse().unwrap());
    let (lengths, _) = tick(2, &snaps).await;
    assert_eq!(lengths, vec![2; MEMBERS], "the second tick: an incremental each");
    let second = lists(&proxy) - first;
    assert!(second <= 2, "{second} listings for {MEMBERS} members at the second tick");
    let twice: Vec<_> =
        proxy.successful_puts_per_key().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "keys stored twice: {twice:?}");
    assert!(daemon.stop().await);
    eprintln!(
        "tree of {MEMBERS}: listings {first} at the first tick, {second} at the second \
         (one a member before)"
    );
}
