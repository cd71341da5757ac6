//! zibd as a service on real OpenZFS: two encrypted datasets on a per-minute schedule, driven
//! with zibctl (trigger, status while uploading, pause, resume), SIGTERM in the middle of an
//! upload, a restart, and the backup completes with no chunk stored twice (PUTs counted per key
//! by a FaultProxy in front of moto, which also slows PUTs down so the upload takes a while).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use zib_core::{DatasetName, KeyLayout, Manifest};
use zib_protocol::{DatasetStatus, JobState, Response};
use zib_testkit::{
    Fault, FaultAction, FaultProxy, Matcher, MotoServer, Outcome, TEST_SECRET_ACCESS_KEY, test_env,
};

use crate::common::*;
use crate::config_toml::{ConfigToml, quoted};

const PASSPHRASE: &str = "zib daemon test passphrase";
/// Generous: the guest is emulated.
const WAIT: Duration = Duration::from_secs(300);

/// zibctl sits next to zibd in the target directory (built by `cargo test --workspace` or
/// `cargo build -p zibctl`).
fn zibctl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_zibd")).parent().expect("target dir").join("zibctl");
    assert!(p.exists(), "{} is missing: build it first (`cargo build -p zibctl`)", p.display());
    p
}

/// A zibd process, killed on drop, its log in a file.
pub(crate) struct Zibd {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Zibd {
    pub(crate) fn spawn(config: &Path, endpoint: &str, log: PathBuf) -> Zibd {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open zibd log");
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
        c.arg("--config")
            .arg(config)
            .env("ZIB_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        c.stdout(out.try_clone().expect("dup log")).stderr(out).kill_on_drop(true);
        for (k, v) in test_env(endpoint) {
            c.env(k, v);
        }
        Zibd { child: c.spawn().expect("spawn zibd"), log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within `within`).
    pub(crate) async fn terminate(
        mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("running") as i32;
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .expect("kill");
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(st) => (st.expect("wait"), t0.elapsed()),
            Err(_) => {
                panic!("zibd did not exit within {within:?} of SIGTERM; log:\n{}", self.log())
            }
        }
    }
}

async fn zibctl(socket: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(zibctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("spawn zibctl")
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn zibctl_ok(socket: &Path, args: &[&str], zibd: &Zibd) -> String {
    let o = zibctl(socket, args).await;
    assert!(o.status.success(), "zibctl {args:?} failed: {}\nzibd log:\n{}", text(&o), zibd.log());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn status(socket: &Path, ds: &str, zibd: &Zibd) -> DatasetStatus {
    let out = zibctl_ok(socket, &["status", ds, "--json"], zibd).await;
    match serde_json::from_str::<Response>(&out) {
        Ok(Response::Status { mut datasets, .. }) if datasets.len() == 1 => datasets.remove(0),
        other => panic!("zibctl status --json: unexpected output {other:?}: {out}"),
    }
}

async fn wait_status(
    socket: &Path,
    ds: &str,
    zibd: &Zibd,
    what: &str,
    pred: impl Fn(&DatasetStatus) -> bool,
) -> DatasetStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(socket, ds, zibd).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {ds}: {what}; last status {s:#?}\nzibd log:\n{}",
            zibd.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the daemon answers `zibctl version`.
pub(crate) async fn wait_ready(socket: &Path, zibd: &Zibd) {
    let deadline = Instant::now() + WAIT;
    loop {
        let o = zibctl(socket, &["version"]).await;
        if o.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "zibd never answered: {}\nzibd log:\n{}",
            text(&o),
            zibd.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dataset's state as zibd would load it (its chunk journal folded in).
fn state(state_dir: &Path, ds: &str) -> serde_json::Value {
    let store = zibd::state_store::StateStore::new(state_dir);
    let st = store.read(&zib_core::DatasetName::new(ds).unwrap()).expect("state");
    serde_json::to_value(st).unwrap()
}

/// Chunks the pending backup has stored: the contiguous ones and those stored ahead of a gap
/// (parallel PUTs finish in any order).
fn pending_chunks(st: &serde_json::Value) -> usize {
    let p = &st["pending"];
    p["chunks"].as_array().map_or(0, Vec::len)
        + p["stored_ahead"].as_object().map_or(0, |m| m.len())
}

/// Triggers a backup; a tick may have started one a moment earlier (then zibd says so).
async fn trigger(socket: &Path, ds: &str, zibd: &Zibd) {
    let o = zibctl(socket, &["trigger", ds]).await;
    assert!(
        o.status.success() || text(&o).contains("already running"),
        "zibctl trigger {ds}: {}\nzibd log:\n{}",
        text(&o),
        zibd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zibd_with_zibctl_pause_resume_sigterm_restart_no_chunk_twice() {
    let pool = TestPool::with_size("zd", "512M");
    let a = create_encrypted_dataset(&pool, "a", PASSPHRASE);
    let b = create_encrypted_dataset(&pool, "b", PASSPHRASE);
    // 4 MiB of incompressible data: 64+ chunks of 64 KiB.
    let mut big = vec![0u8; 4 << 20];
    fastrand::Rng::with_seed(4).fill(&mut big);
    std::fs::write(a.mountpoint.join("big.bin"), &big).expect("write data");
    write_files(&b.mountpoint, 11, 6, 64 << 10);

    let moto = MotoServer::start();
    let bucket = moto.create_bucket("daemon").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    // Slow every PUT down so the upload of `a` takes a while.
    proxy.add_fault(
        Fault::new(Matcher::put(), FaultAction::Delay(Duration::from_millis(250))).always(),
    );

    let work = work_dir("zibd");
    let state_dir = work.join("state");
    let socket = work.join("run/zibd.sock");
    let config = work.join("zibd.toml");
    // One PUT at a time: the proxy slows each PUT so that the upload is still running at the
    // pause and the SIGTERM; four at once finished the whole stream before the pause.
    // Issue 15: the metrics endpoint, scraped during the real backup and after it.
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address")
    };
    ConfigToml::new(&work, &bucket, &proxy.endpoint())
        .daemon("metrics_listen", quoted(metrics))
        .daemon("socket", quoted(socket.display()))
        .daemon("shutdown_timeout_secs", 30)
        .daemon("max_concurrent_jobs", 2)
        .target("prefix", quoted("zib"))
        .target("storage_class", quoted("DEEP_ARCHIVE"))
        .target("chunk_size", quoted("64KiB"))
        .target("max_attempts", 5)
        .target("max_parallel_puts", 1)
        .dataset(&a.name, "0 * * * * *")
        .dataset(&b.name, "0 * * * * *")
        .write(&config);
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"))
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("check-config");
    assert!(ok.status.success(), "{}", text(&ok));

    // --- first daemon: trigger, status while uploading, pause, resume, SIGTERM mid-upload.
    let zibd = Zibd::spawn(&config, &proxy.endpoint(), work.join("zibd-1.log"));
    wait_ready(&socket, &zibd).await;
    let all = zibctl_ok(&socket, &["status", "--json"], &zibd).await;
    let Ok(Response::Status { datasets, daemon }) = serde_json::from_str::<Response>(&all) else {
        panic!("status --json: {all}")
    };
    assert_eq!(
        datasets.iter().map(|d| d.dataset.as_str()).collect::<Vec<_>>(),
        [a.name.as_str(), b.name.as_str()]
    );
    assert_eq!(daemon.jobs_max, Some(2));
    for d in &datasets {
        let next = d.next_run.expect("a per-minute schedule has a next run");
        assert!(next <= chrono::Utc::now() + chrono::Duration::seconds(61), "{d:?}");
    }

    trigger(&socket, &a.name, &zibd).await;
    let s = wait_status(&socket, &a.name, &zibd, "uploading with a rate and an ETA", |s| {
        s.state == JobState::Uploading
            && s.progress.as_ref().is_some_and(|p| {
                p.chunks_done >= 2 && p.rate_bytes_per_sec.is_some() && p.eta_secs.is_some()
            })
    })
    .await;
    let p = s.progress.as_ref().expect("progress");
    assert!(p.snapshot.starts_with(&format!("{}@zib-", a.name)), "{p:?}");
    let m = scrape(metrics).await;
    let la = [("dataset", a.name.as_str())];
    assert_eq!(
        m.get("zib_dataset_state", &[("dataset", a.name.as_str()), ("state", "running")]),
        Some(1.0)
    );
    assert!(m.get("zib_dataset_puts_total", &la).is_some_and(|n| n >= 2.0), "{m:?}");
    assert!(m.get("zib_dataset_uploaded_bytes_total", &la).is_some_and(|n| n >= 2.0 * 65536.0));
    assert_eq!(m.get("zib_dataset_last_success_timestamp_seconds", &la), None);
    assert!(p.bytes_total_estimate.is_some_and(|n| n >= 4 << 20), "{p:?}");
    assert!(p.chunks_total_estimate.is_some_and(|n| n >= 64), "{p:?}");
    assert!(!p.incremental);
    // The table for people names the dataset and its state.
    let table = zibctl_ok(&socket, &["status"], &zibd).await;
    assert!(table.contains(&a.name) && table.contains("uploading"), "{table}");
    // A second run of the same dataset is refused while one is going.
    let busy = zibctl(&socket, &["trigger", &a.name]).await;
    assert!(!busy.status.success() && text(&busy).contains("already running"), "{}", text(&busy));

    // Pause: the upload stops at a safe point, nothing is uploaded while paused.
    zibctl_ok(&socket, &["pause", &a.name], &zibd).await;
    let s = wait_status(&socket, &a.name, &zibd, "paused", |s| s.state == JobState::Paused).await;
    assert!(s.paused && s.next_run.is_none() && s.progress.is_none(), "{s:?}");
    let st1 = state(&state_dir, &a.name);
    let n1 = pending_chunks(&st1);
    assert!(n1 >= 2, "chunks stored before the pause: {n1}; state: {st1:#}; status: {s:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending_chunks(&state(&state_dir, &a.name)), n1, "uploaded while paused");
    assert_eq!(status(&socket, &a.name, &zibd).await.state, JobState::Paused);

    // Resume: the interrupted backup continues where it stopped.
    let msg = zibctl_ok(&socket, &["resume", &a.name], &zibd).await;
    assert!(msg.contains("continuing"), "{msg}");
    wait_status(&socket, &a.name, &zibd, "uploading past the pause point", |s| {
        s.state == JobState::Uploading
            && s.progress.as_ref().is_some_and(|p| p.chunks_done as usize >= n1 + 3)
    })
    .await;

    // SIGTERM in the middle of the upload: a clean stop, exit 0, consistent state.
    let (st, took) = zibd.terminate(Duration::from_secs(60)).await;
    assert!(st.success(), "zibd exited with {st} after SIGTERM");
    assert!(
        took < Duration::from_secs(35),
        "shutdown took {took:?}, more than shutdown_timeout_secs"
    );
    let st = state(&state_dir, &a.name);
    let n2 = pending_chunks(&st);
    assert!(n2 >= n1 + 3 && st["last"].is_null(), "state after SIGTERM: {st:#}");
    assert!(n2 < 64, "the upload finished before SIGTERM ({n2} chunks): slow the PUTs down more");
    assert!(!socket.exists(), "socket left behind after a clean stop");

    // --- restart: the backup resumes and completes.
    let zibd = Zibd::spawn(&config, &proxy.endpoint(), work.join("zibd-2.log"));
    wait_ready(&socket, &zibd).await;
    let o = zibctl(&socket, &["trigger", &a.name, "--wait"]).await;
    assert!(o.status.success(), "zibctl trigger --wait: {}\nzibd log:\n{}", text(&o), zibd.log());
    let s = wait_status(&socket, &a.name, &zibd, "committed", |s| s.last_success.is_some()).await;
    assert!(s.chain_length >= 1 && s.last_error.is_none(), "{s:?}");
    let m = scrape(metrics).await;
    let la = [("dataset", a.name.as_str())];
    let last = m.get("zib_dataset_last_success_timestamp_seconds", &la).expect("a last success");
    assert!((chrono::Utc::now().timestamp() as f64 - last).abs() < 600.0, "{last}");
    assert!(m.get("zib_dataset_chain_length", &la).is_some_and(|n| n >= 1.0), "{m:?}");
    // b is backed up by its per-minute schedule alone.
    let sb = wait_status(&socket, &b.name, &zibd, "a scheduled backup of b", |s| {
        s.last_success.is_some()
    })
    .await;
    assert!(sb.last_error.is_none(), "{sb:?}");

    // --- every chunk of a's first backup was stored exactly once.
    let st = state(&state_dir, &a.name);
    assert!(st["last"]["seq"].as_u64().is_some_and(|n| n >= 1), "{st:#}");
    let client = moto.client();
    let listing =
        client.list_objects_v2().bucket(&bucket).prefix("zib/").send().await.expect("list");
    let layout = KeyLayout::new("zib", &DatasetName::new(&a.name).expect("name"));
    let manifest_key = listing
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .find(|k| layout.parse_manifest_key(k).is_some_and(|(seq, _)| seq == 1))
        .unwrap_or_else(|| panic!("no manifest #1 of {} in {:?}", a.name, listing.contents()))
        .to_owned();
    let body = client
        .get_object()
        .bucket(&bucket)
        .key(&manifest_key)
        .send()
        .await
        .expect("get manifest")
        .body
        .collect()
        .await
        .expect("body");
    let m = Manifest::from_json(&manifest_key, &body.into_bytes()).expect("manifest");
    assert_eq!(m.seq, 1);
    assert!(m.chunks.len() >= 64, "{} chunks", m.chunks.len());
    // Chunk PUTs carry If-None-Match: *, so at most one of them can store a key; what must not
    // happen is a chunk sent again after it was stored (a 412) or a chunk stored by no PUT.
    // A PUT cut off by the pause or SIGTERM may have no recorded outcome: it counts as the one
    // that stored the chunk only if it is the only PUT of that key (resume HEAD-probes first).
    let requests = proxy.requests();
    let mut twice = Vec::new();
    for c in &m.chunks {
        let puts: Vec<_> = requests
            .iter()
            .filter(|r| r.method == "PUT" && r.key.as_deref() == Some(c.key.as_str()))
            .collect();
        let stored = puts
            .iter()
            .filter(|r| matches!(r.outcome, Some(Outcome::Forwarded(200..=299))))
            .count();
        let again =
            puts.iter().filter(|r| matches!(r.outcome, Some(Outcome::Forwarded(412)))).count();
        let cut_off_alone = puts.len() == 1 && puts[0].outcome.is_none();
        // Nothing may follow the PUT that stored it.
        let stored_last = stored == 1
            && matches!(
                puts.last().and_then(|r| r.outcome.as_ref()),
                Some(Outcome::Forwarded(200..=299))
            );
        if again > 0 || !(stored_last || cut_off_alone) {
            twice.push(format!(
                "{}: {:?}",
                c.key,
                puts.iter().map(|r| &r.outcome).collect::<Vec<_>>()
            ));
        }
    }
    assert!(twice.is_empty(), "chunks not stored exactly once:\n{}", twice.join("\n"));
    let log = format!(
        "{}{}",
        std::fs::read_to_string(work.join("zibd-1.log")).unwrap_or_default(),
        zibd.log()
    );
    assert!(!log.contains(TEST_SECRET_ACCESS_KEY), "the secret key appears in zibd's log");
    assert!(log.contains("SIGTERM") && log.contains("all jobs stopped"), "log:\n{log}");

    let (st, _) = zibd.terminate(Duration::from_secs(60)).await;
    assert!(st.success(), "second zibd exited with {st}");
}

/// `GET /metrics` of the daemon at `addr`, parsed strictly.
async fn scrape(addr: std::net::SocketAddr) -> crate::prom_text::Exposition {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("the metrics endpoint");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .expect("the metrics endpoint answers")
        .expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").expect("a header block");
    assert!(head.contains(" 200"), "{head}");
    crate::prom_text::parse(body)
}
