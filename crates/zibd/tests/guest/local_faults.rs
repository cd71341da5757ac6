//! Local faults (issue 17), with real OpenZFS and s3s-fs behind the counting proxy: the spool
//! on a tiny tmpfs that fills up mid-chunk, the state directory read-only, `zfs send` killed
//! mid-stream, the dataset destroyed and the pool exported mid-run, the clock stepped back an
//! hour between runs. Each run that fails says what went wrong (the message is checked, in the
//! output and, where the state can take it, in the state's last error, which `zibctl status`
//! shows), commits nothing partial (the bucket is checked: no manifest but for a whole
//! stream), leaves no spool file and no `zib-send` hold; the next run, once the fault is gone,
//! recovers by itself, and what it committed restores byte for byte.
//!
//! A run is held mid-stream by delaying every PUT at the proxy: `max_spooled_chunks = 2` then
//! keeps `zfs send` blocked on its pipe with most of the stream unread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zib_core::{DatasetName, KeyLayout};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, S3sFsServer, test_env};

use crate::backup::Zibd;
use crate::common::*;
use crate::crash_rounds::{
    Leftovers, check_bucket, check_restored_chain, files_under, read_state, restore_cmd, zib_holds,
};
use crate::restore::snapshots;

const PASSPHRASE: &str = "zib guest local faults passphrase";
/// Generous: the guest is emulated.
const WAIT: Duration = Duration::from_secs(180);

/// One dataset backed up through the proxy, with what each committed snapshot held.
struct Case {
    s3: S3sFsServer,
    bucket: String,
    proxy: FaultProxy,
    pool: TestPool,
    ds: EncryptedDataset,
    zibd: Zibd,
    /// Committed snapshots of the current chain: (name, files).
    snaps: Vec<(String, BTreeMap<String, String>)>,
    /// The files as the next snapshot will hold them.
    want: BTreeMap<String, String>,
    runs: u32,
}

/// Output text of a finished run.
struct Run {
    ok: bool,
    text: String,
}

impl Case {
    async fn new(tag: &str) -> Case {
        let s3 = S3sFsServer::start();
        let bucket = s3.create_bucket(&format!("gf{tag}")).await;
        let proxy = FaultProxy::start(s3.endpoint()).await;
        let pool = TestPool::create(&format!("zf{tag}"));
        let ds = create_encrypted_dataset(&pool, "data", PASSPHRASE);
        let zibd = Zibd::new(&proxy.endpoint(), &bucket, &ds.name, "STANDARD");
        write_files(&ds.mountpoint, 71, 16, 100_000);
        let want = checksum_tree(&ds.mountpoint);
        Case { s3, bucket, proxy, pool, ds, zibd, snaps: Vec::new(), want, runs: 0 }
    }

    /// Changes the files (new ones under `dir`); the next committed snapshot holds them.
    fn change(&mut self, dir: &str, seed: u64) {
        write_files(&self.ds.mountpoint.join(dir), seed, 5, 80_000);
        self.want = checksum_tree(&self.ds.mountpoint);
        // Snapshot names have one-second resolution.
        std::thread::sleep(Duration::from_millis(1100));
    }

    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
        c.arg("--config").arg(&self.zibd.config).args(["backup", &self.ds.name]);
        c.env("ZIB_LOG", "info").env_remove("ZIB_FAILPOINT").env_remove("ZIB_TEST_NOW");
        for (k, v) in test_env(&self.zibd.endpoint) {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Starts `zibd backup`, its output to a log file.
    fn spawn(&mut self, env: &[(&str, &str)]) -> (Child, PathBuf) {
        self.runs += 1;
        let log = self.zibd.dir.join(format!("run-{}.log", self.runs));
        let f = std::fs::File::create(&log).unwrap();
        let mut c = self.command(env);
        c.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        (c.spawn().expect("spawn zibd"), log)
    }

    fn finish(&self, mut child: Child, log: &Path) -> Run {
        let deadline = Instant::now() + WAIT;
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("zibd backup still running after {WAIT:?}: {}", read(log));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run { ok: st.success(), text: format!("{st}\n{}", read(log)) }
    }

    fn backup(&mut self, env: &[(&str, &str)]) -> Run {
        let (child, log) = self.spawn(env);
        self.finish(child, &log)
    }

    /// A run that must succeed with `kind` ("full" / "incremental") backup #`seq`; records
    /// its snapshot.
    fn backup_ok(&mut self, env: &[(&str, &str)], kind: &str, seq: usize) -> String {
        let r = self.backup(env);
        assert!(r.ok, "zibd backup failed: {}", r.text);
        self.committed(&r, kind, seq);
        r.text
    }

    /// Records the snapshot that run `r` committed as `kind` backup #`seq`.
    fn committed(&mut self, r: &Run, kind: &str, seq: usize) {
        let said = format!("{kind} backup #{seq} of {}@", self.ds.name);
        let snap = r
            .text
            .split(&said)
            .nth(1)
            .and_then(|s| s.split(':').next())
            .unwrap_or_else(|| panic!("no `{said}` in {}", r.text))
            .to_owned();
        self.snaps.push((snap, self.want.clone()));
    }

    /// Holds every PUT for `secs` at the proxy.
    fn delay_puts(&self, secs: u64) {
        let delay = FaultAction::Delay(Duration::from_secs(secs));
        self.proxy.add_fault(Fault::new(Matcher::put(), delay).always());
    }

    /// Waits until the run is mid-stream: a PUT arrived and `zfs send` of the dataset runs.
    /// Returns the pid of `zfs send`.
    fn wait_mid_stream(&self, log: &Path) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let pat = format!("zfs send .*{}@", self.ds.name);
            if self.proxy.count(&Matcher::put()) >= 1
                && let Ok(out) = try_run("pgrep", &["-f", &pat])
                && let Some(pid) = out.lines().next().and_then(|l| l.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "the run never got mid-stream: {}", read(log));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn layout(&self) -> KeyLayout {
        KeyLayout::new("guest", &DatasetName::new(&self.ds.name).unwrap())
    }

    /// The bucket holds exactly `n` whole manifests (and chunks zib named); returns the rest.
    async fn bucket(&self, n: usize) -> Leftovers {
        check_bucket(&self.s3.client(), &self.bucket, &self.layout(), n).await.1
    }

    fn state(&self) -> zib_core::state::DatasetState {
        read_state(&self.zibd.dir, &self.ds.name)
    }

    /// Nothing is left behind by a run that ended: no spool file, no `zib-send` hold.
    fn nothing_left(&self, when: &str) {
        let spool = files_under(&self.zibd.dir.join("spool"));
        assert_eq!(spool, Vec::<PathBuf>::new(), "{when}: spool files left");
        assert_eq!(zib_holds(&self.ds.name), Vec::<String>::new(), "{when}: holds left");
    }

    /// No key was written twice.
    fn no_key_twice(&self) {
        let twice: Vec<_> =
            self.proxy.successful_puts_per_key().into_iter().filter(|(_, n)| *n > 1).collect();
        assert_eq!(twice, Vec::<(String, usize)>::new(), "keys written more than once");
    }

    /// The newest chain restores from the bucket alone, every snapshot byte for byte.
    fn restores(&self) {
        let dst = TestPool::create("zfdst");
        let target = dst.dataset("r");
        let mp = mountpoint("faultr");
        let work = work_dir("faultrw");
        let key = self.ds.key_location();
        let o =
            restore_cmd(self.s3.endpoint(), &self.bucket, &self.ds.name, &target, &mp, &key, &work)
                .output()
                .unwrap();
        assert!(o.status.success(), "zibd restore run: {}", crate::restore::out(&o));
        assert_eq!(check_restored_chain(&target, &mp, &self.snaps), 0, "a snapshot differs");
    }
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A mount the test made; lazily unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let opts = format!("size={size},mode=0700");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", at.to_str().unwrap()]);
        Mounted(at.to_owned())
    }

    /// `at` bound onto itself read-only.
    fn read_only(at: &Path) -> Mounted {
        let p = at.to_str().unwrap();
        run("mount", &["--bind", p, p]);
        let m = Mounted(at.to_owned());
        run("mount", &["-o", "remount,bind,ro", p, p]);
        m
    }

    fn unmount(self) {
        run("umount", &[self.0.to_str().unwrap()]);
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = try_run("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_fills_up_mid_chunk_fails_clearly_and_the_next_run_recovers() {
    let mut c = Case::new("spool").await;
    // Room for one 64 KiB chunk and half of the next, which waits for the first one's PUT.
    let spool = c.zibd.dir.join("spool");
    let tiny = Mounted::tmpfs(&spool, "96k");
    c.delay_puts(2);
    let r = c.backup(&[]);
    assert!(!r.ok, "{}", r.text);
    assert!(
        r.text.contains(&format!("spool file {}", spool.display()))
            && r.text.contains("No space left on device"),
        "{}",
        r.text
    );
    let err = c.state().stats.last_error.unwrap_or_default();
    assert!(err.contains("No space left on device"), "status shows: {err}");
    assert_eq!(c.bucket(0).await.abandoned, 0);
    c.nothing_left("after the full spool");

    // Room again: the next run goes on by itself.
    run("mount", &["-o", "remount,size=16m", spool.to_str().unwrap()]);
    c.proxy.clear_faults();
    c.backup_ok(&[], "full", 1);
    assert_eq!(c.state().stats.last_error, None, "status is clear again");
    c.bucket(1).await;
    c.nothing_left("after the recovery");
    c.no_key_twice();
    drop(tiny);
    c.restores();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_directory_fails_clearly_and_the_next_run_recovers() {
    let mut c = Case::new("rost").await;
    c.backup_ok(&[], "full", 1);
    c.change("two", 72);
    let state_dir = c.zibd.dir.join("state");
    let before = snapshots(&c.ds.name);
    let ro = Mounted::read_only(&state_dir);
    let r = c.backup(&[]);
    assert!(!r.ok, "{}", r.text);
    assert!(
        r.text.contains(&state_dir.display().to_string())
            && r.text.contains("Read-only file system"),
        "{}",
        r.text
    );
    assert_eq!(snapshots(&c.ds.name), before, "no snapshot taken that the state cannot record");
    c.bucket(1).await;
    c.nothing_left("after the read-only state");

    ro.unmount();
    c.backup_ok(&[], "incremental", 2);
    c.bucket(2).await;
    c.nothing_left("after the recovery");
    c.no_key_twice();
    c.restores();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zfs_send_killed_mid_stream_fails_clearly_commits_nothing_and_the_next_run_recovers() {
    let mut c = Case::new("send").await;
    c.delay_puts(1);
    let (child, log) = c.spawn(&[]);
    let pid = c.wait_mid_stream(&log);
    run("kill", &["-KILL", &pid.to_string()]);
    let r = c.finish(child, &log);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("`zfs send") && r.text.contains("SIGKILL"), "{}", r.text);
    let err = c.state().stats.last_error.unwrap_or_default();
    assert!(err.contains("`zfs send") && err.contains("SIGKILL"), "status shows: {err}");
    assert_eq!(c.bucket(0).await.abandoned, 0);
    c.nothing_left("after zfs send was killed");
    assert!(c.state().pending.is_some(), "the backup stays pending, to resume");

    c.proxy.clear_faults();
    c.backup_ok(&[], "full", 1);
    assert_eq!(c.state().stats.last_error, None);
    c.bucket(1).await;
    c.nothing_left("after the recovery");
    c.no_key_twice();
    c.restores();
}

/// Removes the dataset or its pool from under a run held mid-stream: ZFS refuses while the
/// send runs (and the hold stands), so the fault is forced as an administrator would (the hold
/// released by hand, the command repeated until ZFS lets it through). The run must then
/// either commit the whole stream or fail with nothing committed; a run while the dataset is
/// missing names it; once it is back (`restore_it`) the next run recovers by itself.
async fn pulled_from_under_a_run(
    c: &mut Case,
    what: &str,
    pull: &[&str],
    restore_it: impl FnOnce(&mut Case) -> &'static str,
) {
    c.delay_puts(1);
    let (child, log) = c.spawn(&[]);
    c.wait_mid_stream(&log);
    let snap = format!("{}@{}", c.ds.name, crate::backup::newest_zib_snapshot(&c.ds.name));
    let mut tries = 1;
    if let Err(e) = try_run(pull[0], &pull[1..]) {
        eprintln!("{what} mid-stream: refused at first: {}", e.trim());
        run("zfs", &["release", "zib-send", &snap]);
        let deadline = Instant::now() + WAIT;
        while let Err(e) = try_run(pull[0], &pull[1..]) {
            tries += 1;
            assert!(Instant::now() < deadline, "{what}: still refused: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    c.proxy.clear_faults();
    let r = c.finish(child, &log);
    let last_line = r.text.trim_end().lines().last().unwrap_or_default().to_owned();
    eprintln!(
        "{what}: through after {tries} tries; the run {}: {last_line}",
        if r.ok { "committed" } else { "failed" }
    );
    if r.ok {
        c.committed(&r, "full", 1);
        c.bucket(1).await;
    } else {
        // The failure names the dataset (or its snapshot) and what became of it.
        assert!(last_line.contains(&c.ds.name), "{what}: {}", r.text);
        assert_eq!(c.bucket(0).await.abandoned, 0);
    }
    assert!(files_under(&c.zibd.dir.join("spool")).is_empty(), "{what}: spool files left");

    // While it is gone: a clear error naming the dataset, nothing stored.
    let keys = zib_testkit::list_all(&c.s3.client(), &c.bucket).await.len();
    let r = c.backup(&[]);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains(&c.ds.name) && r.text.contains("does not exist"), "{what}: {}", r.text);
    assert_eq!(zib_testkit::list_all(&c.s3.client(), &c.bucket).await.len(), keys);
    let err = c.state().stats.last_error.unwrap_or_default();
    assert!(err.contains("does not exist"), "status shows: {err}");

    let seq = c.snaps.len() + 1;
    let kind = restore_it(c);
    c.backup_ok(&[], kind, seq);
    assert_eq!(c.state().stats.last_error, None);
    c.bucket(seq).await;
    c.nothing_left("after the recovery");
    c.no_key_twice();
    c.restores();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataset_destroyed_mid_run_commits_nothing_partial_and_a_new_one_is_backed_up() {
    let mut c = Case::new("dstr").await;
    let ds = c.ds.name.clone();
    pulled_from_under_a_run(&mut c, "zfs destroy", &["zfs", "destroy", "-r", "-f", &ds], |c| {
        // A new dataset under the same name: a new chain, from a full.
        c.ds = create_encrypted_dataset(&c.pool, "data", PASSPHRASE);
        c.change("new", 73);
        c.snaps.clear();
        "full"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_exported_mid_run_commits_nothing_partial_and_the_next_run_recovers() {
    let mut c = Case::new("expo").await;
    let pool = c.pool.name().to_owned();
    pulled_from_under_a_run(&mut c, "zpool export", &["zpool", "export", "-f", &pool], |c| {
        let dir = base_dir().join("pools");
        zpool(&["import", "-l", "-d", dir.to_str().unwrap(), c.pool.name()]);
        assert_eq!(zfs_get(&c.ds.name, "mounted"), "yes");
        if c.snaps.is_empty() {
            // The run failed: the next one finishes that full backup.
            "full"
        } else {
            c.change("two", 74);
            "incremental"
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_an_hour_between_runs_keeps_the_chain_in_order() {
    let mut c = Case::new("clock").await;
    let now = chrono::Utc::now().timestamp();
    let (t0, back) = (now.to_string(), (now - 3600).to_string());
    c.backup_ok(&[("ZIB_TEST_NOW", &t0)], "full", 1);
    c.change("two", 75);
    c.backup_ok(&[("ZIB_TEST_NOW", &back)], "incremental", 2);
    assert!(c.snaps[1].0 < c.snaps[0].0, "#2 is named an hour before #1: {:?}", c.snaps);
    // The newest by chain is #2, though its name and time are older: restored as the latest.
    c.restores();
    c.change("three", 76);
    c.backup_ok(&[], "incremental", 3);
    // keep_snapshots = 2 kept the two newest by creation, not by name.
    let names: Vec<String> = c.snaps[1..].iter().map(|s| s.0.clone()).collect();
    assert_eq!(snapshots(&c.ds.name), names);
    c.bucket(3).await;
    c.nothing_left("after the runs");
    c.no_key_twice();
    c.restores();
}
