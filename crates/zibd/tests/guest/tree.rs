//! Whole trees of datasets on real OpenZFS (issue 16): one `[[dataset]]` with `recursive =
//! true` and an `exclude` glob over a tree of 20 filesystems and volumes, with two encryption
//! roots of their own keys among them (one inside the other), backed up by the daemon on the
//! tree's schedule through a FaultProxy that counts the requests. Every member gets its own
//! chain (one raw send each, so the encrypted ones stay encrypted); a child created between
//! runs joins at the next tick without a reload; a child destroyed keeps its chain (reported,
//! nothing deleted); the excluded subtree never reaches the bucket; no more than
//! `max_concurrent_jobs` backups run at once. Then every member, the destroyed one included, is
//! restored from the bucket alone into another pool and compared with its source: each
//! snapshot's GUID and files, volume bytes, and encryption kept with the keys unloaded.
//! Under emulation it takes about 8 minutes (486 s on a quiet host: run 2 includes up to two
//! minutes waiting for its tick), for 185 objects and 228 requests (185 PUT, 42 LIST).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use zib_protocol::{Client, DatasetStatus, JobState, Request, Response};
use zib_testkit::{FaultProxy, S3sFsServer, list_all};

use crate::common::*;
use crate::config_toml::{ConfigToml, quoted};
use crate::daemon::{Zibd, wait_ready};

/// Generous: the guest is emulated.
const WAIT: Duration = Duration::from_secs(900);
const JOBS: usize = 3;
const KEYS: [&str; 2] = ["zib tree outer passphrase", "zib tree inner passphrase"];
const PREFIX: &str = "tree";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fs,
    Vol,
}

/// The tree below the root (""), parents first: name, kind, and the key when the dataset is
/// an encryption root of its own (its descendants inherit it).
const TREE: &[(&str, Kind, Option<usize>)] = &[
    ("", Kind::Fs, None),
    ("a", Kind::Fs, None),
    ("a/a1", Kind::Fs, None),
    ("a/a1/deep", Kind::Fs, None),
    ("a/a2", Kind::Fs, None),
    ("b", Kind::Fs, None),
    ("b/b1", Kind::Fs, None),
    ("b/b2", Kind::Fs, None),
    ("c", Kind::Fs, None),
    ("c/c1", Kind::Fs, None),
    ("d", Kind::Fs, None),
    ("e", Kind::Fs, None),
    ("vol", Kind::Vol, None),
    ("enc", Kind::Fs, Some(0)),
    ("enc/e1", Kind::Fs, None),
    ("enc/e1/deep", Kind::Fs, None),
    ("enc/e2", Kind::Fs, None),
    ("enc/evol", Kind::Vol, None),
    ("enc/other", Kind::Fs, Some(1)),
    ("enc/other/o1", Kind::Fs, None),
];
/// Left out by the pattern `<root>/cache*` (the inner one by its parent).
const EXCLUDED: &[&str] = &["cache", "cache/inner"];
/// Created between the runs.
const NEW: &str = "a/new";
/// Destroyed between the runs.
const GONE: &str = "b/b2";
const VOLSIZE: u64 = 4 << 20;

/// The source pool and what the test knows of each dataset.
struct Tree {
    _pool: TestPool,
    root: String,
    keys: [PathBuf; 2],
    /// Filesystems' mountpoints by relative name.
    mounts: BTreeMap<String, PathBuf>,
    kinds: BTreeMap<String, Kind>,
}

impl Tree {
    fn name(&self, rel: &str) -> String {
        if rel.is_empty() { self.root.clone() } else { format!("{}/{rel}", self.root) }
    }

    /// The key of the encryption root `rel` is under (itself included), if any.
    fn key_of(rel: &str) -> Option<usize> {
        let mut best = None;
        for (r, _, k) in TREE {
            if k.is_some() && (rel == *r || rel.starts_with(&format!("{r}/"))) {
                best = *k;
            }
        }
        best
    }

    fn create(&mut self, rel: &str, kind: Kind, key: Option<usize>) {
        let name = self.name(rel);
        let mut args: Vec<String> = vec!["create".into()];
        if let Some(k) = key {
            args.extend(
                [
                    "-o",
                    "encryption=aes-256-gcm",
                    "-o",
                    "keyformat=passphrase",
                    "-o",
                    &format!("keylocation=file://{}", self.keys[k].display()),
                ]
                .map(String::from),
            );
        }
        match kind {
            Kind::Fs => {
                let mp = mountpoint("tree");
                args.extend(["-o".into(), format!("mountpoint={}", mp.display())]);
                self.mounts.insert(rel.to_owned(), mp);
            }
            Kind::Vol => {
                args.extend(["-V".into(), VOLSIZE.to_string(), "-o".into(), "volmode=dev".into()])
            }
        }
        args.push(name.clone());
        zfs(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.kinds.insert(rel.to_owned(), kind);
    }

    /// A few hundred KiB of new data in `rel`.
    fn change(&self, rel: &str, seed: u64) {
        match self.kinds[rel] {
            Kind::Fs => {
                write_files(&self.mounts[rel].join(format!("r{seed}")), seed, 3, 120_000);
            }
            Kind::Vol => {
                use std::os::unix::fs::FileExt;
                let dev = zvol_dev(&self.name(rel));
                let f = std::fs::OpenOptions::new().write(true).open(&dev).expect("open zvol");
                let mut data = vec![0u8; 128 << 10];
                fastrand::Rng::with_seed(seed).fill(&mut data);
                f.write_all_at(&data, (seed % 16) * (256 << 10)).expect("write zvol");
                f.sync_all().expect("sync zvol");
            }
        }
    }
}

/// The block device of volume `name`: udev's /dev/zvol link, else the zd device whose
/// `zvol_id` names it.
fn zvol_dev(name: &str) -> PathBuf {
    let link = Path::new("/dev/zvol").join(name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if link.exists() {
            return link;
        }
        for e in std::fs::read_dir("/dev").expect("/dev").flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with("zd") && f[2..].bytes().all(|c| c.is_ascii_digit()) {
                for id in ["/usr/lib/udev/zvol_id", "/lib/udev/zvol_id"] {
                    if let Ok(n) = try_run(id, &[&format!("/dev/{f}")])
                        && n.trim() == name
                    {
                        return e.path();
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no block device for the volume {name}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `ds`'s snapshots, oldest first, with their GUIDs.
fn snapshot_guids(ds: &str) -> Vec<(String, String)> {
    let out = zfs(&[
        "list",
        "-H",
        "-p",
        "-t",
        "snapshot",
        "-o",
        "name,guid",
        "-s",
        "createtxg",
        "-d",
        "1",
        ds,
    ]);
    out.lines()
        .map(|l| {
            let (n, g) = l.split_once('\t').expect("name\tguid");
            (n.rsplit_once('@').expect("a snapshot").1.to_owned(), g.to_owned())
        })
        .collect()
}

/// What a restored dataset must equal: its snapshots (name, GUID) and, for a filesystem, the
/// files of each; for a volume, the SHA-256 of its bytes at the newest.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    snaps: Vec<(String, String)>,
    files: Vec<BTreeMap<String, String>>,
    volume: Option<String>,
}

fn record(tree: &Tree, rel: &str) -> Record {
    let name = tree.name(rel);
    let snaps = snapshot_guids(&name);
    match tree.kinds[rel] {
        Kind::Fs => {
            let mp = &tree.mounts[rel];
            let files = snaps
                .iter()
                .map(|(s, _)| checksum_tree(&mp.join(".zfs/snapshot").join(s)))
                .collect();
            Record { snaps, files, volume: None }
        }
        Kind::Vol => {
            Record { snaps, files: Vec::new(), volume: Some(sha256_file(&zvol_dev(&name))) }
        }
    }
}

async fn all_status(socket: &Path) -> (zib_protocol::DaemonInfo, Vec<DatasetStatus>) {
    let mut c = Client::connect(socket).await.expect("connect to zibd");
    match c.call(&Request::Status { dataset: None }).await.expect("status") {
        Response::Status { daemon, datasets } => (daemon, datasets),
        other => panic!("status: {other:?}"),
    }
}

fn running(s: &DatasetStatus) -> bool {
    matches!(
        s.state,
        JobState::Snapshotting | JobState::Uploading | JobState::Finishing | JobState::Cancelling
    )
}

/// Polls the daemon until `pred` holds for the whole status.
async fn wait_all(
    socket: &Path,
    zibd: &Zibd,
    what: &str,
    pred: impl Fn(&[DatasetStatus]) -> bool,
) -> Vec<DatasetStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, all) = all_status(socket).await;
        if pred(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status {all:#?}\nzibd log:\n{}",
            zibd.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The daemon's answer to `request`, which must be an Ok; its message.
async fn ask_ok(socket: &Path, zibd: &Zibd, request: &Request) -> String {
    let mut c = Client::connect(socket).await.expect("connect to zibd");
    match c.call(request).await.expect("an answer") {
        Response::Ok { message } => message.unwrap_or_default(),
        other => panic!("{request:?}: {other:?}\nzibd log:\n{}", zibd.log()),
    }
}

/// The most backups seen running at once, by the datasets' states and by the daemon's count,
/// and whether one was ever seen queued for a slot.
#[derive(Debug, Default, Clone, Copy)]
struct Concurrency {
    max_states: usize,
    max_jobs_running: u32,
    queued_seen: bool,
    samples: u64,
}

/// Polls the status every 100 ms into `seen` until the daemon goes away.
fn watch_concurrency(
    socket: PathBuf,
    seen: Arc<Mutex<Concurrency>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(mut c) = Client::connect(&socket).await else { return };
            while let Ok(Response::Status { daemon, datasets }) =
                c.call(&Request::Status { dataset: None }).await
            {
                {
                    let mut s = seen.lock().unwrap();
                    let now = datasets.iter().filter(|d| running(d)).count();
                    s.max_states = s.max_states.max(now);
                    s.max_jobs_running = s.max_jobs_running.max(daemon.jobs_running);
                    s.queued_seen |= datasets.iter().any(|d| d.state == JobState::Queued);
                    s.samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// The config: the tree on an hourly schedule at `minute`.
fn write_config(work: &Path, bucket: &str, endpoint: &str, root: &str, minute: u32) {
    ConfigToml::new(work, bucket, endpoint)
        .daemon("max_concurrent_jobs", JOBS)
        .daemon("shutdown_timeout_secs", 30)
        .target("prefix", quoted(PREFIX))
        .target("storage_class", quoted("STANDARD"))
        .target("chunk_size", quoted("64KiB"))
        .dataset(root, &format!("0 {minute} * * * *"))
        .dataset_key("recursive", true)
        .dataset_key("exclude", format!("[{}]", quoted(format!("{root}/cache*"))))
        .dataset_key("min_change", 0)
        .dataset_key("keep_snapshots", 10)
        .write(&work.join("zibd.toml"));
}

/// Restores `src`'s newest snapshot (its whole chain) from the bucket alone into `target`,
/// keys not loaded, not mounted.
async fn restore(endpoint: &str, bucket: &str, src: &str, target: &str, work: &Path) {
    let o = tokio::process::Command::from(crate::restore::zibd(endpoint))
        .args(["--config", "/nonexistent/zibd.toml", "restore", "run", "--no-mount"])
        .args(["--dataset", src, "--to", target, "--work-dir"])
        .arg(work)
        .args(["--bucket", bucket, "--prefix", PREFIX, "--endpoint", endpoint])
        .output()
        .await
        .expect("spawn zibd restore");
    assert!(o.status.success(), "restore of {src}: {}", crate::restore::out(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tree_of_twenty_datasets_backs_up_each_follows_children_and_restores_all() {
    let t_start = Instant::now();
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("gtree").await;
    let proxy = FaultProxy::start(s3.endpoint()).await;
    let client = s3.client();

    let pool = TestPool::with_size("zgtree", "768M");
    let root = pool.dataset("t");
    let mut tree = Tree {
        root: root.clone(),
        _pool: pool,
        keys: KEYS.map(key_file),
        mounts: BTreeMap::new(),
        kinds: BTreeMap::new(),
    };
    for (rel, kind, key) in TREE {
        tree.create(rel, *kind, *key);
    }
    for rel in EXCLUDED {
        tree.create(rel, Kind::Fs, None);
    }
    for (i, rel) in TREE.iter().map(|t| t.0).chain(EXCLUDED.iter().copied()).enumerate() {
        tree.change(rel, 100 + i as u64);
    }
    assert_eq!(zfs_get(&tree.name("enc/e1/deep"), "encryptionroot"), tree.name("enc"));
    assert_eq!(zfs_get(&tree.name("enc/other/o1"), "encryptionroot"), tree.name("enc/other"));
    let t_built = t_start.elapsed();
    eprintln!("tree: {} datasets made in {t_built:?}", TREE.len() + EXCLUDED.len());

    // No tick during the first run: it is triggered.
    let work = work_dir("tree");
    let socket = work.join("zibd.sock");
    let ep = proxy.endpoint();
    write_config(&work, &bucket, &ep, &root, (Utc::now().minute() + 40) % 60);
    let zibd = Zibd::spawn(&work.join("zibd.toml"), &ep, work.join("zibd.log"));
    wait_ready(&socket, &zibd).await;
    let (daemon, all) = all_status(&socket).await;
    assert_eq!(daemon.jobs_max, Some(JOBS as u32));
    let mut want: Vec<String> = TREE.iter().map(|t| tree.name(t.0)).collect();
    want.sort();
    let names: Vec<String> = all.iter().map(|s| s.dataset.clone()).collect();
    assert_eq!(names, want, "the tree's 20 datasets, the excluded subtree left out");
    let seen = Arc::new(Mutex::new(Concurrency::default()));
    let watcher = watch_concurrency(socket.clone(), seen.clone());

    // --- run 1: every member at once, each a full stream of its own, JOBS at a time.
    let t1 = Instant::now();
    for ds in &want {
        let trigger = Request::Trigger { dataset: ds.clone(), wait: false, full: false };
        ask_ok(&socket, &zibd, &trigger).await;
    }
    let all = wait_all(&socket, &zibd, "every member's first backup", |all| {
        all.iter().all(|s| s.last_success.is_some() && !running(s))
    })
    .await;
    let run1 = t1.elapsed();
    eprintln!("tree: run 1 took {run1:?}");
    for s in &all {
        assert!(s.chain_length == 1 && s.last_error.is_none(), "{s:#?}");
    }
    let keys = list_all(&client, &bucket).await;
    let key_names: Vec<String> = keys.iter().map(|o| o.key().unwrap().to_owned()).collect();
    for ds in &want {
        let own = format!("{PREFIX}/{ds}@zib/");
        assert!(
            key_names.iter().any(|k| k.starts_with(&own) && k.ends_with(".manifest.json")),
            "{ds} has no manifest of its own under {own}"
        );
    }

    // --- between the runs: new data everywhere; the tree's schedule set to the next minute
    // but one (a reload); then one child destroyed and one created, which only the tick sees.
    let gone = tree.name(GONE);
    let survivors: Vec<&str> =
        TREE.iter().map(|t| t.0).filter(|r| *r != GONE).chain([NEW]).collect();
    for (i, rel) in survivors.iter().filter(|r| **r != NEW).enumerate() {
        tree.change(rel, 200 + i as u64);
    }
    let tick = {
        let t = Utc::now() + chrono::Duration::seconds(60);
        t.with_second(0).unwrap().with_nanosecond(0).unwrap() + chrono::Duration::minutes(1)
    };
    write_config(&work, &bucket, &ep, &root, tick.minute());
    let msg = ask_ok(&socket, &zibd, &Request::Reload).await;
    assert!(msg.contains("added none; removed none"), "{msg}");
    let gone_record = record(&tree, GONE);
    let gone_prefix = format!("{PREFIX}/{gone}@zib/");
    let gone_keys: Vec<String> =
        key_names.iter().filter(|k| k.starts_with(&gone_prefix)).cloned().collect();
    zfs(&["destroy", "-r", &gone]);
    tree.kinds.remove(GONE);
    tree.create(NEW, Kind::Fs, None);
    tree.change(NEW, 300);
    assert!(
        Utc::now() < tick,
        "the changes took longer than the 60 s given before the tick at {tick}: give them more"
    );

    // --- run 2, the tick: the tree is listed again, the new child joins and is backed up, the
    // destroyed one is reported and left alone, the others take an incremental each.
    let t2 = Instant::now();
    let new = tree.name(NEW);
    let all = wait_all(&socket, &zibd, "the second run", |all| {
        all.iter().any(|s| s.dataset == new)
            && all.iter().all(|s| {
                if s.dataset == gone {
                    s.last_note.as_ref().is_some_and(|n| n.message.contains("source gone"))
                } else {
                    s.last_success.as_ref().is_some_and(|l| l.at > tick) && !running(s)
                }
            })
    })
    .await;
    let run2 = t2.elapsed();
    eprintln!("tree: run 2 took {run2:?} after the tick");
    for s in &all {
        assert!(s.last_error.is_none(), "{s:#?}");
        if s.dataset == gone {
            assert_eq!(
                s.last_note.as_ref().unwrap().message,
                "source gone; 1 chains kept in bucket"
            );
            assert_eq!((s.state, s.next_run), (JobState::Idle, None), "{s:#?}");
        } else {
            let chain = if s.dataset == new { 1 } else { 2 };
            assert_eq!(s.chain_length, chain, "{s:#?}");
        }
    }
    let mut c = Client::connect(&socket).await.unwrap();
    let refused =
        c.call(&Request::Trigger { dataset: gone.clone(), wait: false, full: false }).await;
    assert!(
        matches!(&refused, Ok(Response::Error { message, .. }) if message.contains("source gone")),
        "{refused:?}"
    );
    drop(c);
    let (st, _) = zibd.terminate(Duration::from_secs(60)).await;
    assert!(st.success(), "zibd exited with {st}");
    watcher.abort();
    let seen = *seen.lock().unwrap();
    assert!(seen.samples > 10, "{seen:?}");
    assert!(
        seen.max_states <= JOBS && seen.max_jobs_running as usize <= JOBS,
        "more than max_concurrent_jobs = {JOBS} backups at once: {seen:?}"
    );
    assert!(seen.queued_seen && seen.max_states >= 2, "the limit was never reached: {seen:?}");

    // --- the bucket: every member under its own prefix, the destroyed one's objects intact,
    // nothing of the excluded subtree.
    let objects = list_all(&client, &bucket).await;
    let key_names: Vec<String> = objects.iter().map(|o| o.key().unwrap().to_owned()).collect();
    let excluded_prefix = format!("{PREFIX}/{root}/cache");
    let leaked: Vec<&String> =
        key_names.iter().filter(|k| k.starts_with(&excluded_prefix)).collect();
    assert!(leaked.is_empty(), "the excluded subtree reached the bucket: {leaked:?}");
    let gone_after: Vec<String> =
        key_names.iter().filter(|k| k.starts_with(&gone_prefix)).cloned().collect();
    assert_eq!(gone_after, gone_keys, "the destroyed child's objects are untouched");
    let bytes: i64 = objects.iter().filter_map(|o| o.size()).sum();
    let requests = proxy.requests();
    let count = |m: &str| requests.iter().filter(|r| r.method.eq_ignore_ascii_case(m)).count();
    let manifests = key_names.iter().filter(|k| k.ends_with(".manifest.json")).count();

    // --- restore every member from the bucket alone into another pool: parents first, the
    // datasets of one depth at once.
    let mut records: BTreeMap<String, Record> = BTreeMap::new();
    for rel in &survivors {
        records.insert((*rel).to_owned(), record(&tree, rel));
    }
    records.insert(GONE.to_owned(), gone_record);
    let dst = TestPool::with_size("zgtreer", "768M");
    let target_of = |rel: &str| {
        if rel.is_empty() { dst.dataset("t") } else { dst.dataset(&format!("t/{rel}")) }
    };
    let depth = |rel: &str| if rel.is_empty() { 0 } else { rel.matches('/').count() + 1 };
    let rwork = work_dir("tree-restore");
    let t3 = Instant::now();
    for d in 0..=records.keys().map(|r| depth(r)).max().unwrap() {
        let level: Vec<_> = records
            .keys()
            .filter(|r| depth(r) == d)
            .map(|rel| {
                let (src, target) = (tree.name(rel), target_of(rel));
                let w = rwork.join(format!("d{}", rel.replace('/', "_")));
                let (ep, bucket) = (s3.endpoint().to_owned(), bucket.clone());
                async move { restore(&ep, &bucket, &src, &target, &w).await }
            })
            .collect();
        futures::future::join_all(level).await;
    }
    let restore_time = t3.elapsed();
    eprintln!("tree: {} restores took {restore_time:?}", records.len());
    for (rel, want) in &records {
        let t = target_of(rel);
        assert_eq!(snapshot_guids(&t), want.snaps, "{t}: snapshots and GUIDs of {rel:?}");
        assert_eq!(zfs_get(&t, "receive_resume_token"), "-");
        let kind = if want.volume.is_some() { "volume" } else { "filesystem" };
        assert_eq!(zfs_get(&t, "type"), kind, "{t}");
    }
    // Encryption kept by the raw sends: received encrypted, keys not loaded.
    let mut roots_seen = Vec::new();
    for rel in records.keys() {
        let t = target_of(rel);
        match Tree::key_of(rel) {
            None => assert_eq!(zfs_get(&t, "encryption"), "off", "{t}"),
            Some(_) => {
                assert_eq!(zfs_get(&t, "encryption"), "aes-256-gcm", "{t}");
                assert_eq!(zfs_get(&t, "keystatus"), "unavailable", "{t}: raw received");
                let er = zfs_get(&t, "encryptionroot");
                roots_seen
                    .push(format!("{rel} -> {}", er.strip_prefix(&target_of("")).unwrap_or(&er)));
            }
        }
    }
    for own in ["enc", "enc/other"] {
        let t = target_of(own);
        assert_eq!(zfs_get(&t, "encryptionroot"), t, "{own} stays an encryption root");
    }
    // Keys loaded (each with its source root's key), then every snapshot compared.
    for (rel, want) in &records {
        let t = target_of(rel);
        if let Some(k) = Tree::key_of(rel) {
            let er = zfs_get(&t, "encryptionroot");
            if zfs_get(&er, "keystatus") != "available" {
                zfs(&["load-key", "-L", &format!("file://{}", tree.keys[k].display()), &er]);
            }
        }
        match &want.volume {
            Some(sha) => {
                // A volume received without its key gets its device only when it changes: a
                // new volmode (no partition scan either) makes it.
                zfs(&["set", "volmode=dev", &t]);
                assert_eq!(&sha256_file(&zvol_dev(&t)), sha, "{t}: the volume's bytes");
            }
            None => {
                let mp = mountpoint("tree-r");
                zfs(&["set", &format!("mountpoint={}", mp.display()), &t]);
                if zfs_get(&t, "mounted") != "yes" {
                    zfs(&["mount", &t]);
                }
                for ((s, _), files) in want.snaps.iter().zip(&want.files) {
                    assert_eq!(
                        &checksum_tree(&mp.join(".zfs/snapshot").join(s)),
                        files,
                        "{t}@{s} differs from its source"
                    );
                }
                assert_eq!(&checksum_tree(&mp), want.files.last().unwrap(), "{t}");
            }
        }
    }
    eprintln!(
        "tree: {} datasets restored ({} snapshots); made in {t_built:?}, run 1 {run1:?}, run 2 \
         {run2:?}, restores {restore_time:?}, total {:?}; bucket: {} objects ({manifests} \
         manifests, {bytes} bytes); requests: {} PUT, {} GET, {} HEAD, {} LIST, {} in all; \
         concurrency {seen:?}; encryption roots after the raw receives: {}",
        records.len(),
        records.values().map(|r| r.snaps.len()).sum::<usize>(),
        t_start.elapsed(),
        objects.len(),
        count("PUT"),
        requests.iter().filter(|r| r.method == "GET" && r.key.is_some()).count(),
        count("HEAD"),
        requests.iter().filter(|r| r.method == "GET" && r.key.is_none()).count(),
        requests.len(),
        roots_seen.join(", ")
    );
}
