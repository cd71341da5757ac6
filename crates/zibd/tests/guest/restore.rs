//! `zibd restore` against real OpenZFS and moto: backups made by the real `zibd backup`
//! (DEEP_ARCHIVE, 64 KiB chunks), then the local state and the source dataset are wiped and
//! everything comes back from the bucket alone, checked file by file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use zib_core::pricing::Pricing;
use zib_testkit::{MotoServer, test_env};

use crate::common::*;
use crate::config_toml::{ConfigToml, quoted};

const PASSPHRASE: &str = "zib restore test passphrase";
const PREFIX: &str = "guest-restore";

/// An encrypted source dataset backed up by the real zibd binary.
pub(crate) struct Source {
    _pool: TestPool,
    pub(crate) ds: EncryptedDataset,
    pub(crate) work: PathBuf,
    pub(crate) config: PathBuf,
    endpoint: String,
    bucket: String,
    /// (snapshot name, checksums of the files at that snapshot), oldest first.
    pub(crate) snaps: Vec<(String, BTreeMap<String, String>)>,
}

pub(crate) fn zibd(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
    for (k, v) in test_env(endpoint) {
        c.env(k, v);
    }
    c.env("ZIB_LOG", "info").env_remove("ZIB_FAILPOINT").env_remove("ZIBD_CONFIG");
    c
}

pub(crate) fn out(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Source {
    pub(crate) fn new(endpoint: &str, bucket: &str, tag: &str) -> Source {
        let pool = TestPool::create(&format!("zr{tag}"));
        let ds = create_encrypted_dataset(&pool, "data", PASSPHRASE);
        let work = work_dir(&format!("restore-{tag}"));
        let config = work.join("zibd.toml");
        ConfigToml::new(&work, bucket, endpoint)
            .target("prefix", quoted(PREFIX))
            .target("storage_class", quoted("DEEP_ARCHIVE"))
            .target("chunk_size", quoted("64KiB"))
            .dataset(&ds.name, "@daily")
            .dataset_key("keep_snapshots", 5)
            .write(&config);
        Source {
            _pool: pool,
            ds,
            work,
            config,
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            snaps: Vec::new(),
        }
    }

    /// Changes some files, then runs `zibd backup`; records the snapshot and its files.
    pub(crate) fn change_and_backup(&mut self, seed: u64, files: usize, max: usize) {
        write_files(&self.ds.mountpoint, seed, files, max);
        if seed > 1 {
            let _ = std::fs::remove_file(
                self.ds.mountpoint.join(format!("d1/f1-{}.bin", seed * 4 + 1)),
            );
        }
        let want = checksum_tree(&self.ds.mountpoint);
        // Snapshot names have one-second resolution.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let o = zibd(&self.endpoint)
            .arg("--config")
            .arg(&self.config)
            .args(["backup", &self.ds.name])
            .output()
            .unwrap();
        assert!(o.status.success(), "zibd backup: {}", out(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let snap = stdout
            .split(&format!("{}@", self.ds.name))
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("no snapshot in {stdout}"));
        self.snaps.push((snap.to_owned(), want));
    }

    /// Nothing local is left: no state, no spool, no source dataset.
    pub(crate) fn wipe_local(&self) {
        zfs(&["destroy", "-r", &self.ds.name]);
        let _ = std::fs::remove_dir_all(self.work.join("state"));
        let _ = std::fs::remove_dir_all(self.work.join("spool"));
    }

    /// `zibd restore ARGS` with no config file: bucket, prefix and endpoint as flags.
    pub(crate) fn restore(&self, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = zibd(endpoint);
        c.args(["--config", "/nonexistent/zibd.toml", "restore"]).args(args);
        c.args(["--bucket", &self.bucket, "--prefix", PREFIX, "--endpoint", endpoint]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

/// The `zfs receive` of a killed zibd sees EOF and exits on its own (saving its partial
/// state); wait for that before the next run, as a user would.
pub(crate) fn wait_receive_gone(target: &str) {
    for _ in 0..600 {
        if try_run("pgrep", &["-f", &format!("zfs receive -s -u.* {target}$")]).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("zfs receive into {target} still running 60 s after zibd was killed");
}

pub(crate) fn snapshots(ds: &str) -> Vec<String> {
    zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", ds])
        .lines()
        .map(|l| l.rsplit_once('@').unwrap().1.to_owned())
        .collect()
}

pub(crate) fn restore_args<'a>(
    target: &'a str,
    mp: &'a str,
    key: &'a str,
    work: &'a str,
) -> Vec<&'a str> {
    vec![
        "run",
        "--to",
        target,
        "--mountpoint",
        mp,
        "--key-location",
        key,
        "--work-dir",
        work,
        "--poll-initial-secs",
        "0.2",
        "--poll-max-secs",
        "1",
    ]
}

pub(crate) fn check_restored(target: &str, mp: &Path, src: &Source, upto: usize) {
    assert_eq!(zfs_get(target, "encryption"), "aes-256-gcm");
    assert_eq!(zfs_get(target, "keystatus"), "available");
    assert_eq!(zfs_get(target, "mounted"), "yes");
    let names: Vec<String> = src.snaps[..=upto].iter().map(|s| s.0.clone()).collect();
    assert_eq!(snapshots(target), names);
    assert_eq!(
        checksum_tree(mp),
        src.snaps[upto].1,
        "restored files differ from the source at {}",
        src.snaps[upto].0
    );
    for (name, want) in &src.snaps[..upto] {
        assert_eq!(
            &checksum_tree(&mp.join(".zfs/snapshot").join(name)),
            want,
            "restored @{name} differs"
        );
    }
}

/// What [`SlowThawProxy`] saw.
#[derive(Debug, Default)]
struct ThawStats {
    /// RestoreObject requests per object path.
    restores: BTreeMap<String, u32>,
    /// HEADs per object path since its first RestoreObject.
    heads: BTreeMap<String, u32>,
    /// HEAD answers rewritten to `ongoing-request="true"`.
    in_progress_answers: u32,
}

/// A loopback HTTP/1.1 proxy in front of the shared moto that makes thaws slow for the
/// requests going through it only (moto's own slow-restore switch is server-wide, and a
/// private moto starts too slowly under emulation): the first `polls` HEADs of an object
/// after its RestoreObject say `ongoing-request="true"`. One request per connection.
struct SlowThawProxy {
    endpoint: String,
    stats: std::sync::Arc<std::sync::Mutex<ThawStats>>,
}

impl SlowThawProxy {
    async fn start(upstream: &str, polls: u32) -> SlowThawProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let stats = std::sync::Arc::new(std::sync::Mutex::new(ThawStats::default()));
        let (up, st) = (upstream.trim_start_matches("http://").to_owned(), stats.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (up, st) = (up.clone(), st.clone());
                tokio::spawn(async move {
                    if let Err(e) = Self::serve(conn, &up, &st, polls).await {
                        eprintln!("slow-thaw proxy: {e}");
                    }
                });
            }
        });
        SlowThawProxy { endpoint, stats }
    }

    async fn serve(
        conn: tokio::net::TcpStream,
        upstream: &str,
        stats: &std::sync::Mutex<ThawStats>,
        polls: u32,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::io::BufReader::new(conn);
        let mut head = Vec::new();
        let mut len = 0usize;
        let mut request_line = String::new();
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if request_line.is_empty() {
                request_line = line.trim_end().to_owned();
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            if !lower.starts_with("connection:") {
                head.extend_from_slice(line.as_bytes());
            }
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await?;
        let mut up = tokio::net::TcpStream::connect(upstream).await?;
        up.write_all(&head).await?;
        up.write_all(&body).await?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;

        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |p| p + 4);
        let (rhead, rbody) = resp.split_at(split);
        let mut rhead = String::from_utf8_lossy(rhead).into_owned();
        {
            let mut st = stats.lock().unwrap();
            if method == "POST" && query.contains("restore") {
                *st.restores.entry(path.to_owned()).or_default() += 1;
            } else if method == "HEAD" && st.restores.contains_key(path) {
                let n = st.heads.entry(path.to_owned()).or_default();
                *n += 1;
                if *n <= polls {
                    st.in_progress_answers += 1;
                    rhead = rhead
                        .split("\r\n")
                        .map(|l| {
                            if l.to_ascii_lowercase().starts_with("x-amz-restore:") {
                                "x-amz-restore: ongoing-request=\"true\"".to_owned()
                            } else {
                                l.to_owned()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\r\n");
                }
            }
        }
        let rhead: String = rhead
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n")
            .replacen("\r\n", "\r\nConnection: close\r\n", 1);
        let mut w = conn.into_inner();
        w.write_all(rhead.as_bytes()).await?;
        w.write_all(rbody).await?;
        w.shutdown().await
    }

    fn restores(&self) -> u32 {
        self.stats.lock().unwrap().restores.values().sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_latest_and_older_from_the_bucket_alone_and_catch_a_corrupt_chunk() {
    require_zfs();
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("grestore").await;
    let ep = moto.endpoint().to_owned();
    let mut src = Source::new(&ep, &bucket, "a");
    src.change_and_backup(1, 16, 100_000);
    src.change_and_backup(2, 6, 80_000);
    src.change_and_backup(3, 5, 50_000);
    src.wipe_local();
    let work = work_dir("rwork");
    let w = work.to_str().unwrap();

    // list and plan, with the quote checked against the price table.
    let o = src.restore(&ep, &["list"], &[]);
    assert!(o.status.success(), "{}", out(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    for (s, _) in &src.snaps {
        assert!(listing.contains(s.as_str()), "{s} missing: {listing}");
    }
    let o = src.restore(&ep, &["plan", "--json", "--days", "5"], &[]);
    assert!(o.status.success(), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (objects, bytes) =
        (v["total_objects"].as_u64().unwrap(), v["total_bytes"].as_u64().unwrap());
    assert_eq!(v["plan"]["steps"].as_array().unwrap().len(), 3);
    assert_eq!(
        (v["thaw_objects"].as_u64().unwrap(), v["thaw_bytes"].as_u64().unwrap()),
        (objects, bytes),
        "all chunks are DEEP_ARCHIVE"
    );
    let chunk_count: u64 = v["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["chunks"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(objects, chunk_count);
    assert!(objects > 10, "expected many 64 KiB chunks, got {objects}");
    let p = Pricing::default();
    let gb = bytes as f64 / (1u64 << 30) as f64;
    for t in v["quote"]["tiers"].as_array().unwrap() {
        let (per_gb, per_1000, hours) =
            if t["tier"] == "bulk" { (0.0025, 0.025, 48) } else { (0.02, 0.10, 12) };
        let f = |k: &str| t[k].as_f64().unwrap();
        assert!((f("retrieval") - gb * per_gb).abs() < 1e-15, "{t}");
        assert!((f("restore_requests") - objects as f64 / 1000.0 * per_1000).abs() < 1e-15, "{t}");
        assert!(
            (f("restored_copy") - gb * p.restored_copy_per_gb_month * 5.0 / 30.0).abs() < 1e-15,
            "{t}"
        );
        assert_eq!(t["ready_within_hours"], hours);
        assert_eq!(f("egress"), 0.0);
    }

    // The latest snapshot, into another pool, key loaded from its file, every file compared.
    let dst = TestPool::create("zrdst");
    let latest = dst.dataset("latest");
    let mp = mountpoint("latest");
    let key = src.ds.key_location();
    let o = src.restore(&ep, &restore_args(&latest, mp.to_str().unwrap(), &key, w), &[]);
    assert!(o.status.success(), "{}", out(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("{objects} chunks"))
            && stdout.contains(&format!("{objects} thaw requests sent")),
        "{stdout}"
    );
    check_restored(&latest, &mp, &src, 2);

    // An older snapshot: only the chain up to it.
    let older = dst.dataset("older");
    let mp2 = mountpoint("older");
    let mut args = restore_args(&older, mp2.to_str().unwrap(), &key, w);
    args.extend(["--snapshot", &src.snaps[1].0]);
    let o = src.restore(&ep, &args, &[]);
    assert!(o.status.success(), "{}", out(&o));
    check_restored(&older, &mp2, &src, 1);

    // The target exists now: refused.
    let o = src.restore(
        &ep,
        &restore_args(&older, mp2.to_str().unwrap(), &key, &format!("{w}/other")),
        &[],
    );
    assert!(!o.status.success());
    assert!(out(&o).contains("already exists"), "{}", out(&o));

    // Without a key location: restored but locked, and the user is told how to load the key.
    let locked = dst.dataset("locked");
    let o = src.restore(
        &ep,
        &[
            "run",
            "--to",
            &locked,
            "--work-dir",
            w,
            "--snapshot",
            &src.snaps[0].0,
            "--poll-initial-secs",
            "0.2",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(zfs_get(&locked, "keystatus"), "unavailable");
    assert!(
        out(&o).contains(&format!("zfs load-key -L file:///path/to/keyfile {locked}")),
        "{}",
        out(&o)
    );

    // A corrupt chunk in the last incremental: caught before zfs receive, named, nothing of it received.
    let client = moto.client();
    let last = &v["plan"]["steps"][2]["chunks"][0];
    let bad_key = last["key"].as_str().unwrap();
    let size = last["size"].as_u64().unwrap() as usize;
    client
        .put_object()
        .bucket(&bucket)
        .key(bad_key)
        .storage_class(StorageClass::DeepArchive)
        .body(ByteStream::from(vec![0xa5u8; size]))
        .send()
        .await
        .unwrap();
    let bad = dst.dataset("bad");
    let mp3 = mountpoint("bad");
    let o = src.restore(&ep, &restore_args(&bad, mp3.to_str().unwrap(), &key, w), &[]);
    assert!(!o.status.success());
    let text = out(&o);
    assert!(
        text.contains(&format!("chunk s3://{bucket}/{bad_key} is corrupt"))
            && text.contains("nothing of it was passed to zfs receive"),
        "{text}"
    );
    assert_eq!(
        snapshots(&bad),
        vec![src.snaps[0].0.clone(), src.snaps[1].0.clone()],
        "the corrupt stream must not be received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_thaw_and_a_killed_restore_resume_without_asking_twice() {
    require_zfs();
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("gresume").await;
    let mut src = Source::new(moto.endpoint(), &bucket, "b");
    src.change_and_backup(1, 16, 100_000);
    src.change_and_backup(2, 8, 80_000);
    src.wipe_local();
    // Every thaw takes 3 polls before it is done.
    let proxy = SlowThawProxy::start(moto.endpoint(), 3).await;
    let ep = proxy.endpoint.clone();

    let o = src.restore(&ep, &["plan", "--json"], &[]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    let full_chunks = v["plan"]["steps"][0]["chunks"].as_array().unwrap().len();
    let incr_chunks = v["plan"]["steps"][1]["chunks"].as_array().unwrap().len();
    assert!(full_chunks >= 4 && incr_chunks >= 2, "{full_chunks} {incr_chunks}");
    let total = full_chunks + incr_chunks;

    let dst = TestPool::create("zrres");
    let target = dst.dataset("resumed");
    let mp = mountpoint("resumed");
    let key = src.ds.key_location();
    let work = work_dir("rresume");
    let w = work.to_str().unwrap();
    let args = restore_args(&target, mp.to_str().unwrap(), &key, w);

    // 1st run: killed in the middle of the full stream.
    let fp1 = format!("restore-after-chunk:{}", full_chunks / 2);
    let o = src.restore(&ep, &args, &[("ZIB_FAILPOINT", &fp1)]);
    assert!(
        !o.status.success() && out(&o).contains("failpoint restore-after-chunk reached"),
        "{}",
        out(&o)
    );
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.join(format!("restore-{}.json", target.replace('/', "%2F")))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["steps_received"], 0);
    assert_eq!(proxy.restores() as usize, total, "every chunk's thaw requested once, up front");
    {
        let st = proxy.stats.lock().unwrap();
        assert!(st.restores.values().all(|n| *n == 1), "{st:?}");
        // The chunks received so far each waited through 3 "in progress" polls.
        assert!(st.in_progress_answers as usize >= 3 * (full_chunks / 2), "{st:?}");
    }
    wait_receive_gone(&target);

    // 2nd run: aborts the partial receive, receives the full again, killed inside the incremental.
    let fp2 = format!("restore-after-chunk:{}", full_chunks + 1);
    let o = src.restore(&ep, &args, &[("ZIB_FAILPOINT", &fp2)]);
    assert!(
        !o.status.success() && out(&o).contains("failpoint restore-after-chunk reached"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("aborting the interrupted partial receive"), "{}", out(&o));
    assert_eq!(snapshots(&target), vec![src.snaps[0].0.clone()]);
    wait_receive_gone(&target);

    // 3rd run: completes; no thaw was ever requested twice.
    let o = src.restore(&ep, &args, &[]);
    assert!(o.status.success(), "{}", out(&o));
    let text = out(&o);
    assert!(text.contains("(resumed)") && text.contains("0 thaw requests sent"), "{text}");
    assert_eq!(proxy.restores() as usize, total, "no thaw requested twice");
    assert!(proxy.stats.lock().unwrap().in_progress_answers as usize >= 3 * total);
    check_restored(&target, &mp, &src, 1);
}

/// `zibctl --socket S ARGS` (zibctl sits next to zibd in the target directory).
fn zibctl(socket: &Path, args: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_zibd")).parent().unwrap().join("zibctl");
    assert!(bin.exists(), "{} is missing: build it first (`cargo build -p zibctl`)", bin.display());
    Command::new(bin).arg("--socket").arg(socket).args(args).output().unwrap()
}

/// The daemon, with thaw polls every second or two; killed on drop.
fn spawn_daemon(config: &Path, endpoint: &str, log: &Path) -> tokio::process::Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config")
        .arg(config)
        .env("ZIB_LOG", "info")
        .env("ZIB_RESTORE_POLL", "0.5,1")
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in test_env(endpoint) {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true);
    c.spawn().unwrap()
}

async fn restore_jobs(socket: &Path, log: &Path) -> Vec<serde_json::Value> {
    let o = zibctl(socket, &["restore", "status", "--json"]);
    assert!(
        o.status.success(),
        "{}\nzibd log:\n{}",
        out(&o),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    v["jobs"].as_array().cloned().unwrap_or_default()
}

async fn wait_job(
    socket: &Path,
    log: &Path,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..600 {
        if std::path::Path::new(socket).exists()
            && let Some(j) = restore_jobs(socket, log).await.into_iter().next()
            && f(&j)
        {
            return j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!(
        "timed out waiting for the restore job to be {what}; zibd log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zibctl_restore_runs_as_a_daemon_job_that_survives_a_daemon_restart() {
    require_zfs();
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("gdaemon").await;
    let mut src = Source::new(moto.endpoint(), &bucket, "c");
    src.change_and_backup(1, 10, 80_000);
    src.change_and_backup(2, 4, 60_000);
    src.wipe_local();
    // Thaws take 6 polls (3 s or more at the daemon's 0.5-1 s interval): time to restart it.
    let proxy = SlowThawProxy::start(moto.endpoint(), 6).await;

    let work = work_dir("rdaemon");
    let socket = work.join("zibd.sock");
    let log = work.join("zibd.log");
    let config = work.join("daemon.toml");
    ConfigToml::new(&work, &bucket, &proxy.endpoint)
        .daemon("socket", quoted(socket.display()))
        .daemon("state_dir", quoted(work.join("dstate").display()))
        .daemon("spool_dir", quoted(work.join("dspool").display()))
        .target("prefix", quoted(PREFIX))
        .write(&config);
    let dst = TestPool::create("zrdmn");
    let target = dst.dataset("fromdaemon");

    let mut daemon = spawn_daemon(&config, &proxy.endpoint, &log);
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let o = zibctl(
        &socket,
        &["restore", "start", &src.ds.name, "--to", &target, "--tier", "standard", "--days", "2"],
    );
    assert!(
        o.status.success(),
        "{}\nzibd log:\n{}",
        out(&o),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let j = wait_job(&socket, &log, "thawing", |j| {
        j["state"] == "thawing" && j["objects_total"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(j["to"], target.as_str());
    assert_eq!(j["tier"], "standard");
    let total = j["objects_total"].as_u64().unwrap();

    // Restart the daemon in the middle of the thaw.
    let pid = daemon.id().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let st = tokio::time::timeout(std::time::Duration::from_secs(60), daemon.wait())
        .await
        .expect("zibd exits after SIGTERM")
        .unwrap();
    assert!(
        st.success(),
        "zibd exit {st}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        !zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", dst.name()]).contains('@'),
        "nothing received yet"
    );
    let _daemon = spawn_daemon(&config, &proxy.endpoint, &log);
    let j =
        wait_job(&socket, &log, "done", |j| j["state"] == "done" || j["state"] == "failed").await;
    assert_eq!(
        j["state"],
        "done",
        "{j}\nzibd log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(proxy.restores() as u64, total, "no thaw requested twice across the restart");
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("continuing an unfinished restore job")
    );

    // Daemon jobs do not load keys: the user does, then mounts.
    assert_eq!(snapshots(&target), src.snaps.iter().map(|s| s.0.clone()).collect::<Vec<_>>());
    assert_eq!(zfs_get(&target, "keystatus"), "unavailable");
    let mp = mountpoint("fromdaemon");
    zfs(&["load-key", "-L", &src.ds.key_location(), &target]);
    // Received without a mountpoint: nothing mounts it by itself (issue 11 #11); the user
    // does as the job's next steps say.
    assert_eq!(zfs_get(&target, "canmount"), "noauto");
    zfs(&["set", "canmount=on", &target]);
    zfs(&["set", &format!("mountpoint={}", mp.display()), &target]); // mounts it, key loaded
    assert_eq!(zfs_get(&target, "mounted"), "yes");
    assert_eq!(checksum_tree(&mp), src.snaps[1].1);
}

/// Writes `stream` to the bucket as backup #1 of `ds` the way zib lays it out (64 KiB chunks,
/// STANDARD), with a manifest saying it was sent raw (`-w`) as zib's are.
async fn put_backup(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    ds: &str,
    snap: &str,
    guid: &str,
    stream: &[u8],
) {
    use zib_core::{ChunkRecord, DatasetName, KeyLayout, Manifest, SnapName, SnapRef, manifest};
    let ds = DatasetName::new(ds).unwrap();
    let layout = KeyLayout::new(PREFIX, &ds);
    let to = SnapName::new(snap).unwrap();
    let chunk = 64 * 1024;
    let mut chunks = Vec::new();
    for (j, part) in stream.chunks(chunk).enumerate() {
        let key = layout.chunk_key(1, &to, 0, j as u64);
        zib_testkit::put_bytes(client, bucket, &key, part.to_vec()).await;
        chunks.push(ChunkRecord::new(key, part.len() as u64, sha256_hex(part)));
    }
    let m = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        dataset: ds.clone(),
        seq: 1,
        from: None,
        to: SnapRef { name: to.clone(), guid: guid.into() },
        snapshot_created: chrono::Utc::now(),
        committed_at: chrono::Utc::now(),
        send_args: vec!["-w".into()],
        attempt: 0,
        storage_class: zib_core::StorageClass::Standard,
        chunk_size: chunk as u64,
        stream_size: stream.len() as u64,
        stream_sha256: sha256_hex(stream),
        chunks,
        zib_version: "guest-test".into(),
        legacy: None,
    };
    m.check().unwrap();
    zib_testkit::put_bytes(client, bucket, &layout.manifest_key(1, &to), m.to_json()).await;
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Issue 11 #11: a stream that carries `mountpoint=<a host path>` and `canmount=on` (a `zfs
/// send -p` package: zib never makes one, a hostile bucket could) is received by zib's
/// `zfs receive` options with neither taking effect, not even at the next `zfs mount -a` (the
/// boot-time mount); and `zibd restore` refuses such a stream by its header before any of it
/// reaches `zfs receive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carrying_mountpoint_and_canmount_takes_neither_into_effect() {
    use tokio::io::AsyncWriteExt;
    let pool = TestPool::create("zprops");
    // Datasets of this pool that mount by themselves do so under here.
    let pool_mp = mountpoint("pool");
    zfs(&["set", &format!("mountpoint={}", pool_mp.display()), pool.name()]);
    let host_path = base_dir().join("mnt").join(unique_name("hostpath"));
    let src = pool.dataset("src");
    zfs(&[
        "create",
        "-o",
        &format!("mountpoint={}", host_path.display()),
        "-o",
        "canmount=on",
        "-o",
        "zib:probe=carried",
        &src,
    ]);
    std::fs::write(host_path.join("planted"), b"from the stream").unwrap();
    zfs(&["snapshot", &format!("{src}@s1")]);
    let work = work_dir("props");
    let file = work.join("props.zstream");
    zfs_send_to_file(&["-p", &format!("{src}@s1")], &file);
    let guid = zfs_get(&format!("{src}@s1"), "guid");
    zfs(&["destroy", "-r", &src]);
    let _ = std::fs::remove_dir(&host_path);

    // The adapter's receive, as a restore without --mountpoint runs it.
    let target = pool.dataset("r");
    let z = zibd::zfs::Zfs::default();
    let mut sink = z
        .receive(&zibd::zfs::ReceiveOptions {
            target: zib_core::DatasetName::new(&target).unwrap(),
            mountpoint: None,
            full: true,
            volume: false,
        })
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    sink.stdin().write_all(&bytes).await.unwrap();
    sink.finish().await.unwrap();
    assert_eq!(zfs_get(&target, "zib:probe"), "carried", "the stream did carry properties");
    assert_ne!(zfs_get(&target, "mountpoint"), host_path.display().to_string());
    assert_eq!(zfs_get(&target, "canmount"), "noauto");
    assert_eq!(zfs_get(&target, "mounted"), "no");
    // What a boot does: mount every dataset that mounts by itself.
    zfs(&["mount", "-a"]);
    assert_eq!(zfs_get(&target, "mounted"), "no");
    assert!(!host_path.join("planted").exists(), "the stream's mountpoint took effect");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&host_path.display().to_string()), "{mounts}");

    // The same stream in a bucket: zibd restore refuses it before zfs receive gets any of it.
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("gprops").await;
    put_backup(&client, &bucket, "tank/hostile", "zib-20261101T000000Z", &guid, &bytes).await;
    let target2 = pool.dataset("r2");
    let mut c = zibd(moto.endpoint());
    c.args(["--config", "/nonexistent/zibd.toml", "restore", "run", "--to", &target2]);
    c.args(["--work-dir", work.join("restore").to_str().unwrap()]);
    c.args(["--bucket", &bucket, "--prefix", PREFIX, "--endpoint", moto.endpoint()]);
    let o = c.output().unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    let text = out(&o);
    assert!(text.contains("zfs send -R or -p") && text.contains("nothing of it"), "{text}");
    assert!(try_run("zfs", &["list", &target2]).is_err(), "{target2} was created: {text}");
    assert!(!host_path.exists() || std::fs::read_dir(&host_path).unwrap().next().is_none());
}
