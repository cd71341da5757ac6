//! Random crash rounds (issue 17): the moments nobody chose. A seeded loop starts the real
//! `zibd backup` (real OpenZFS, s3s-fs behind the counting [`FaultProxy`], 64 KiB chunks so
//! that kills land mid-stream, each PUT's answer held back 300 ms after the server stored it
//! so that kills land between a store and its record), SIGKILLs it at a random moment, starts
//! it again, and so on until a run completes; then changes the data and goes on, for N
//! generations. Then `zibd restore run` of the whole chain is killed and resumed the same way
//! until it is done. The daemon (`zibd run`, a per-minute schedule, triggered at each start)
//! goes through the same rounds in a test of its own.
//!
//! At the end: every snapshot restores byte for byte; no key was written twice (a second
//! PUT of an existing key that the server answered 2xx counts; one it refused with 412, or
//! one cut off mid-body, does not); exactly one manifest per link, each naming only chunks
//! that are there with their sizes, and no object outside a manifest but the chunks of an
//! abandoned attempt of a committed link; no `zib-send` hold, no pending backup and no spool
//! or restore chunk file is left behind. The figures (rounds, kills, PUTs) are printed.
//!
//! Knobs: `ZIB_TEST_CRASH_SEED` replays a run (the seed is always printed),
//! `ZIB_TEST_CRASH_GENERATIONS` (default 3) makes it a soak.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zib_core::{DatasetName, KeyLayout, Manifest};
use zib_testkit::{
    Fault, FaultAction, FaultProxy, Matcher, Outcome, S3sFsServer, get_bytes, list_all, test_env,
};

use crate::backup::Zibd;
use crate::common::*;
use crate::restore::{snapshots, wait_receive_gone};

const PASSPHRASE: &str = "zib guest crash rounds passphrase";
/// A generation's kills stop after this many rounds and the run finishes uncut (counted and
/// printed), so the test always ends; the window grows after every kill, so this is rare.
const MAX_ROUNDS: u32 = 40;

/// The seed: `ZIB_TEST_CRASH_SEED`, else a random one; printed either way so a failure replays.
pub(crate) fn seed(test: &str) -> u64 {
    let seed = match std::env::var("ZIB_TEST_CRASH_SEED") {
        Ok(s) => {
            s.trim().parse().unwrap_or_else(|_| panic!("ZIB_TEST_CRASH_SEED={s:?}: not a u64"))
        }
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{test}: seed {seed} (replay with ZIB_TEST_CRASH_SEED={seed})");
    seed
}

/// `ZIB_TEST_CRASH_GENERATIONS`, default 3.
pub(crate) fn generations() -> usize {
    match std::env::var("ZIB_TEST_CRASH_GENERATIONS") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("ZIB_TEST_CRASH_GENERATIONS={s:?}")),
        Err(_) => 3,
    }
}

/// Kills a command at random moments until one run of it exits by itself.
pub(crate) struct Killer {
    rng: fastrand::Rng,
    /// A kill comes uniformly within this many milliseconds of the start; the window grows
    /// by a quarter after each kill (a resumed run is shorter anyway), so a run completes.
    window_ms: u64,
    pub(crate) rounds: u32,
    pub(crate) kills: u32,
    /// Generations whose last run went uncut after [`MAX_ROUNDS`].
    pub(crate) uncut: u32,
    /// The moments of the kills, in ms after the start.
    pub(crate) moments: Vec<u64>,
}

impl Killer {
    pub(crate) fn new(seed: u64, window_ms: u64) -> Killer {
        Killer {
            rng: fastrand::Rng::with_seed(seed),
            window_ms,
            rounds: 0,
            kills: 0,
            uncut: 0,
            moments: Vec::new(),
        }
    }

    pub(crate) fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// Starts `cmd()` (its output to a log file under `logs`) and SIGKILLs it at a random
    /// moment, `after_kill` between the kill and the next start, until a run ends by itself;
    /// returns that run's exit status and output.
    pub(crate) fn until_done(
        &mut self,
        what: &str,
        logs: &Path,
        mut cmd: impl FnMut() -> Command,
        mut after_kill: impl FnMut(),
    ) -> (ExitStatus, String) {
        for round in 0.. {
            self.rounds += 1;
            let log = logs.join(format!("{what}-{}.log", self.rounds));
            let f = std::fs::File::create(&log).expect("create round log");
            let mut c = cmd();
            c.stdin(Stdio::null()).stdout(f.try_clone().expect("dup log")).stderr(f);
            let t0 = Instant::now();
            let mut child = c.spawn().expect("spawn zibd");
            let cut = round < MAX_ROUNDS;
            if !cut {
                self.uncut += 1;
            }
            let at = Duration::from_millis(self.rng.u64(0..self.window_ms.max(1)));
            let status = loop {
                if let Some(st) = child.try_wait().expect("wait zibd") {
                    break Some(st);
                }
                if cut && t0.elapsed() >= at {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let text = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(st) = status {
                eprintln!("crash rounds: {what} round {}: ended by itself ({st})", round + 1);
                return (st, text());
            }
            child.kill().expect("SIGKILL zibd");
            let st = child.wait().expect("reap zibd");
            // Killed, not exited meanwhile: only then it counts as a kill.
            use std::os::unix::process::ExitStatusExt;
            if st.signal() == Some(9) {
                self.kills += 1;
                self.moments.push(at.as_millis() as u64);
                self.window_ms += self.window_ms / 4 + 1;
                eprintln!(
                    "crash rounds: {what} round {}: killed at {} ms",
                    round + 1,
                    at.as_millis()
                );
                after_kill();
            } else {
                return (st, text());
            }
        }
        unreachable!()
    }
}

/// Files under `dir` (recursively), as paths.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.map(|e| e.expect("dir entry")) {
        let p = e.path();
        if e.file_type().expect("file type").is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Lines containing `needle` in the files under `dir` whose names start with `prefix`.
fn count_in_logs(dir: &Path, prefix: &str, needle: &str) -> usize {
    files_under(dir)
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default().matches(needle).count())
        .sum()
}

/// What a resumed run says of a chunk that a killed one had stored without recording it.
const FOUND_STORED: &str = "chunk was already stored with the same SHA-256";

/// Every snapshot of `ds` with a `zib-send` hold, as `snapshot\tholds`.
pub(crate) fn zib_holds(ds: &str) -> Vec<String> {
    let snaps = zfs(&["list", "-H", "-t", "snapshot", "-o", "name", "-r", ds]);
    snaps
        .lines()
        .filter_map(|s| {
            let h = zfs(&["holds", "-H", s]);
            h.lines().any(|l| l.split('\t').nth(1) == Some("zib-send")).then(|| format!("{s}\t{h}"))
        })
        .collect()
}

/// What [`check_bucket`] found besides the manifests.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Leftovers {
    /// Chunk objects of an attempt of a committed link other than the committed one.
    pub(crate) abandoned: usize,
    /// Chunk objects of a link with no manifest (an unfinished backup's).
    pub(crate) uncommitted: usize,
}

/// What the bucket holds for one dataset, checked: one manifest per link 1..=n, each whole
/// (every chunk there with its size, sizes adding up to the stream), linked to the one
/// before (a full starts a new chain); every other object a chunk zib named, of an abandoned
/// attempt or of a link not committed. Returns the manifests by seq and those counts.
pub(crate) async fn check_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &KeyLayout,
    n: usize,
) -> (Vec<Manifest>, Leftovers) {
    let objects = list_all(client, bucket).await;
    let sizes: BTreeMap<String, u64> = objects
        .iter()
        .map(|o| (o.key().unwrap().to_owned(), o.size().unwrap_or(0) as u64))
        .collect();
    let mut manifests: BTreeMap<u64, Manifest> = BTreeMap::new();
    for k in sizes.keys() {
        if let Some((seq, _)) = layout.parse_manifest_key(k) {
            let m = Manifest::from_json(k, &get_bytes(client, bucket, k).await)
                .unwrap_or_else(|e| panic!("manifest {k} does not parse: {e}"));
            assert_eq!(m.seq, seq, "{k}");
            assert!(manifests.insert(seq, m).is_none(), "two manifests for link #{seq}: {k}");
        }
    }
    let seqs: Vec<u64> = manifests.keys().copied().collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "one manifest per backup");
    let mut named = std::collections::BTreeSet::new();
    let mut prev: Option<&Manifest> = None;
    for m in manifests.values() {
        let mut total = 0;
        for c in &m.chunks {
            assert_eq!(sizes.get(&c.key), Some(&c.size), "manifest #{}: chunk {}", m.seq, c.key);
            total += c.size;
            named.insert(c.key.clone());
        }
        assert_eq!(total, m.stream_size, "manifest #{}: chunk sizes add up", m.seq);
        match (prev, &m.from) {
            (_, None) => {}
            (Some(p), Some(from)) => {
                assert_eq!(from, &p.to, "manifest #{} links to #{}", m.seq, p.seq)
            }
            (None, Some(from)) => panic!("manifest #{}: an incremental from {from:?} first", m.seq),
        }
        prev = Some(m);
    }
    let mut left = Leftovers::default();
    for k in sizes.keys() {
        if named.contains(k) || layout.parse_manifest_key(k).is_some() {
            continue;
        }
        let c = layout
            .parse_chunk_key(k)
            .unwrap_or_else(|| panic!("an object zib did not name: {k} (all: {sizes:?})"));
        match manifests.get(&c.seq) {
            Some(m) => {
                assert!(
                    c.snapshot != m.to.name || c.attempt != m.attempt,
                    "chunk {k} of the committed attempt, not in its manifest"
                );
                left.abandoned += 1;
            }
            None => left.uncommitted += 1,
        }
    }
    (manifests.into_values().collect(), left)
}

/// The counting proxy, holding back every PUT's answer for 300 ms after the server stored
/// it: a kill then often falls between the store and the client's record of it.
async fn crash_proxy(upstream: &str) -> FaultProxy {
    let proxy = FaultProxy::start(upstream).await;
    let late = FaultAction::DelayResponse(Duration::from_millis(300));
    proxy.add_fault(Fault::new(Matcher::put(), late).always());
    proxy
}

/// PUT figures from the proxy: (requests, answered 2xx, answered 412, cut off or failed).
pub(crate) fn put_figures(proxy: &FaultProxy) -> (usize, usize, usize, usize) {
    let puts: Vec<_> =
        proxy.requests().into_iter().filter(|r| r.method.eq_ignore_ascii_case("PUT")).collect();
    let ok = puts.iter().filter(|r| matches!(r.outcome, Some(Outcome::Forwarded(200..=299))));
    let refused = puts.iter().filter(|r| r.outcome == Some(Outcome::Forwarded(412)));
    let (ok, refused) = (ok.count(), refused.count());
    (puts.len(), ok, refused, puts.len() - ok - refused)
}

/// Generation `g`'s change of the files under `dir`: many new files first, then a few new ones,
/// one of the first generation's files removed and one overwritten.
fn change_generation(rng: &mut fastrand::Rng, dir: &Path, g: usize) {
    let (files, max) = if g == 0 { (14, 100_000) } else { (rng.usize(3..8), 90_000) };
    write_files(dir, rng.u64(..), files, max);
    if g > 0 {
        let mut old: Vec<_> =
            std::fs::read_dir(dir.join("d1")).unwrap().map(|e| e.unwrap().path()).collect();
        old.sort();
        if old.len() >= 2 {
            std::fs::remove_file(&old[0]).unwrap();
            std::fs::write(&old[1], vec![g as u8; 70_000]).unwrap();
        }
    }
}

/// The checks after the backup generations of `ds` (state and spool under `root`): one whole
/// manifest per generation naming its snapshot, every chunk committed, no hold, no spool file,
/// nothing pending. Returns the figures (PUTs, chunks) and the keys written more than once.
async fn check_backups(
    proxy: &FaultProxy,
    s3: &S3sFsServer,
    bucket: &str,
    ds: &str,
    root: &Path,
    snaps: &[(String, BTreeMap<String, String>)],
) -> (String, Vec<(String, usize)>) {
    let twice: Vec<_> =
        proxy.successful_puts_per_key().into_iter().filter(|(_, n)| *n > 1).collect();
    let (puts, stored, refused, cut) = put_figures(proxy);
    let layout = KeyLayout::new("guest", &DatasetName::new(ds).unwrap());
    let (manifests, left) = check_bucket(&s3.client(), bucket, &layout, snaps.len()).await;
    assert_eq!(left.uncommitted, 0, "every backup committed: {left:?}");
    for (m, (snap, _)) in manifests.iter().zip(snaps) {
        assert_eq!(m.to.name.as_str(), snap, "manifest #{} names the committed snapshot", m.seq);
    }
    assert_eq!(zib_holds(ds), Vec::<String>::new(), "no zib-send hold is left");
    let spool = files_under(&root.join("spool"));
    assert_eq!(spool, Vec::<PathBuf>::new(), "no spool file is left");
    let state = read_state(root, ds);
    assert!(state.pending.is_none(), "no backup is left pending: {:?}", state.pending);
    let figures = format!(
        "{puts} PUTs: {stored} stored, {refused} refused with 412, {cut} cut off; {} chunks in {} \
         manifests, {} chunk objects of abandoned attempts",
        manifests.iter().map(|m| m.chunks.len()).sum::<usize>(),
        manifests.len(),
        left.abandoned,
    );
    (figures, twice)
}

/// The state of `ds` under `<root>/state`, as zibd loads it.
pub(crate) fn read_state(root: &Path, ds: &str) -> zib_core::state::DatasetState {
    ::zibd::state_store::StateStore::new(root.join("state"))
        .read(&DatasetName::new(ds).unwrap())
        .expect("state")
}

/// `zibd restore run` of `dataset`'s newest snapshot (its whole chain) from the bucket alone
/// (prefix `guest`, no config) into `target`: key loaded from `key`, mounted on `mp`.
pub(crate) fn restore_cmd(
    endpoint: &str,
    bucket: &str,
    dataset: &str,
    target: &str,
    mp: &Path,
    key: &str,
    work: &Path,
) -> Command {
    let mut c = crate::restore::zibd(endpoint);
    c.args(["--config", "/nonexistent/zibd.toml", "restore"]);
    c.args(crate::restore::restore_args(target, mp.to_str().unwrap(), key, work.to_str().unwrap()));
    c.args(["--dataset", dataset, "--bucket", bucket, "--prefix", "guest", "--endpoint", endpoint]);
    c
}

/// The restored `target` holds exactly `snaps` (name, files), in order, with no partial
/// receive left, its key loaded and mounted on `mp` with the last one's files. Returns how
/// many snapshots differ from the source (each named on stderr).
pub(crate) fn check_restored_chain(
    target: &str,
    mp: &Path,
    snaps: &[(String, BTreeMap<String, String>)],
) -> usize {
    let names: Vec<String> = snaps.iter().map(|s| s.0.clone()).collect();
    assert_eq!(snapshots(target), names, "every snapshot received, in order");
    assert_eq!(zfs_get(target, "keystatus"), "available");
    assert_eq!(zfs_get(target, "mounted"), "yes");
    assert_eq!(zfs_get(target, "receive_resume_token"), "-", "no partial receive is left");
    assert_eq!(&checksum_tree(mp), &snaps.last().unwrap().1, "restored files differ");
    let mut lost = 0;
    for (name, want) in snaps {
        if &checksum_tree(&mp.join(".zfs/snapshot").join(name)) != want {
            lost += 1;
            eprintln!("restored @{name} differs from the source");
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_of_backup_and_restore_lose_nothing() {
    let seed = seed("crash rounds");
    let gens = generations();
    let t_start = Instant::now();
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("gcrash").await;
    let proxy = crash_proxy(s3.endpoint()).await;
    let src = TestPool::create("zgcr");
    let ds = create_encrypted_dataset(&src, "data", PASSPHRASE);
    let zibd = Zibd::new(&proxy.endpoint(), &bucket, &ds.name, "STANDARD");
    let logs = work_dir("crashlogs");
    let mut killer = Killer::new(seed, 3000);

    // Backup: each generation changes the data, then runs until a run completes.
    let mut snaps: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut backup_kills = Vec::new();
    let mut committed_by_killed = 0;
    for g in 0..gens {
        change_generation(killer.rng(), &ds.mountpoint, g);
        let want = checksum_tree(&ds.mountpoint);
        // Snapshot names have one-second resolution.
        std::thread::sleep(Duration::from_millis(1100));
        let kills_before = killer.kills;
        let (st, text) = killer.until_done(
            &format!("backup{}", g + 1),
            &logs,
            || {
                let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
                c.arg("--config").arg(&zibd.config).args(["backup", &ds.name]);
                c.env("ZIB_LOG", "info").env_remove("ZIB_FAILPOINT");
                for (k, v) in test_env(&zibd.endpoint) {
                    c.env(k, v);
                }
                c
            },
            || {},
        );
        assert!(
            st.success(),
            "generation {}: the completing zibd backup failed ({st}): {text}",
            g + 1
        );
        // The completing run committed this generation's backup, or a killed one had (the kill
        // came after the commit): then the completing run finds nothing new to back up.
        let last = read_state(&zibd.dir, &ds.name).last.expect("a committed backup");
        assert_eq!(last.seq, g as u64 + 1, "generation {}: {text}", g + 1);
        let snap = last.snapshot.name.as_str().to_owned();
        let kind = if g == 0 { "full" } else { "incremental" };
        let said = format!("{kind} backup #{} of {}@{snap}:", g + 1, ds.name);
        if !text.contains(&said) {
            assert!(text.contains("skipped (no change)"), "generation {}: {text}", g + 1);
            committed_by_killed += 1;
        }
        backup_kills.push(killer.kills - kills_before);
        snaps.push((snap, want));
    }
    let backup_rounds = killer.rounds;

    let (figures, twice) = check_backups(&proxy, &s3, &bucket, &ds.name, &zibd.dir, &snaps).await;
    eprintln!(
        "crash rounds: backup: {gens} generations, {backup_rounds} rounds, {} kills (per generation \
         {backup_kills:?}, {} uncut, {committed_by_killed} committed by a killed run), {figures}; \
         {} chunks stored by a killed run found stored by the next",
        killer.kills,
        killer.uncut,
        count_in_logs(&logs, "backup", FOUND_STORED),
    );
    assert_eq!(twice, Vec::<(String, usize)>::new(), "keys written more than once (seed {seed})");

    // Restore: the whole chain, from the bucket alone, killed and resumed until done.
    let dst = TestPool::create("zgcrd");
    let target = dst.dataset("r");
    let mp = mountpoint("crashr");
    let work = work_dir("crashrw");
    let key = ds.key_location();
    let kills_before = killer.kills;
    let rounds_before = killer.rounds;
    killer.window_ms = 4000;
    let (st, text) = killer.until_done(
        "restore",
        &logs,
        || restore_cmd(s3.endpoint(), &bucket, &ds.name, &target, &mp, &key, &work),
        || wait_receive_gone(&target),
    );
    assert!(st.success(), "the completing zibd restore run failed ({st}): {text}");
    let lost = check_restored_chain(&target, &mp, &snaps);
    let names = snaps.len();
    let chunk_files: Vec<_> = files_under(&work)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
        .collect();
    eprintln!(
        "crash rounds: restore: {} rounds, {} kills; {names} snapshots restored, {lost} differ; \
         seed {seed}, {} s in all; kill moments (ms) {:?}",
        killer.rounds - rounds_before,
        killer.kills - kills_before,
        t_start.elapsed().as_secs(),
        killer.moments,
    );
    assert_eq!(lost, 0, "snapshots restored with other files (seed {seed})");
    assert_eq!(chunk_files, Vec::<PathBuf>::new(), "no restore chunk file is left");
}

/// `zibctl --socket S ARGS` (zibctl sits next to zibd in the target directory).
fn zibctl(socket: &Path, args: &[&str]) -> std::process::Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_zibd")).parent().unwrap().join("zibctl");
    assert!(bin.exists(), "{} is missing: build it first (`cargo build -p zibctl`)", bin.display());
    Command::new(bin).arg("--socket").arg(socket).args(args).output().unwrap()
}

/// Whether the daemon at `socket` answers that `ds` runs nothing now (idle or waiting for its
/// schedule).
fn run_is_over(socket: &Path, ds: &str) -> bool {
    let o = zibctl(socket, &["status", ds, "--json"]);
    if !o.status.success() {
        return false;
    }
    match serde_json::from_slice::<zib_protocol::Response>(&o.stdout) {
        Ok(zib_protocol::Response::Status { datasets, .. }) => datasets.iter().all(|d| {
            matches!(d.state, zib_protocol::JobState::Idle | zib_protocol::JobState::Scheduled)
        }),
        other => panic!("zibctl status --json: unexpected output {other:?}"),
    }
}

/// Where the daemon of [`random_kills_of_the_daemon_lose_nothing`] runs.
struct DaemonBed {
    root: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    logs: PathBuf,
    endpoint: String,
    ds: String,
}

/// The daemon (`zibd run`, a per-minute schedule) in crash rounds: each round starts it,
/// triggers the dataset once the socket answers, and SIGKILLs it at a random moment, until a
/// round's daemon has run a backup to its end with backup #`seq` committed and nothing
/// pending; then a SIGTERM must stop it cleanly. Returns the number of rounds.
fn daemon_until_committed(killer: &mut Killer, bed: &DaemonBed, seq: u64) -> u32 {
    let DaemonBed { root, config, socket, logs, endpoint, ds } = bed;
    for round in 1.. {
        killer.rounds += 1;
        let log = logs.join(format!("daemon{seq}-{round}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
        c.arg("--config").arg(config).env("ZIB_LOG", "info").env_remove("NOTIFY_SOCKET");
        for (k, v) in test_env(endpoint) {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
        let t0 = Instant::now();
        let mut child = c.spawn().expect("spawn zibd run");
        let cut = round <= MAX_ROUNDS;
        if !cut {
            killer.uncut += 1;
        }
        // One round in four is killed while the daemon starts (before it answers); the others
        // at a moment after the trigger was taken: starting takes seconds in the emulated
        // guest, and a window counted from the spawn would mostly end there.
        let in_start = killer.rng.u8(0..4) == 0;
        let at = Duration::from_millis(killer.rng.u64(0..killer.window_ms.max(1)));
        let mut triggered: Option<Instant> = None;
        let deadline = t0 + Duration::from_secs(300);
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("zibd run exited by itself ({st}): {}", text());
            }
            let since = if in_start { Some(t0) } else { triggered };
            if cut && since.is_some_and(|t| t.elapsed() >= at) {
                child.kill().unwrap();
                child.wait().unwrap();
                killer.kills += 1;
                killer.moments.push(at.as_millis() as u64);
                killer.window_ms += killer.window_ms / 4 + 1;
                let t = text();
                let tail: Vec<&str> = t.lines().rev().take(6).collect();
                eprintln!(
                    "daemon crash rounds: #{seq} round {round}: killed {} ms after {}; log ends (newest first):\n  {}",
                    at.as_millis(),
                    if in_start { "the start" } else { "the trigger" },
                    tail.join("\n  ")
                );
                break;
            }
            // A kill is the only failure here: a run that fails by itself is a finding.
            let t = text();
            assert!(!t.contains("backup failed"), "#{seq} round {round}: {t}");
            let st = read_state(root, ds);
            // The completing round is one whose daemon ran a backup to its end, as the backup
            // rounds' completing run does: the last round may have been killed just after it
            // committed, before it released its send hold, and the next run releases that (a
            // daemon that found the state committed and stopped at once left the hold). A
            // status answered also means the daemon's signal handlers exist, so the SIGTERM
            // below must be a clean stop.
            if st.last.as_ref().is_some_and(|l| l.seq == seq)
                && st.pending.is_none()
                && t.contains("backup run starting")
                && run_is_over(socket, ds)
            {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
                let st = child.wait().unwrap();
                assert!(st.success(), "zibd run after SIGTERM: {st}: {}", text());
                eprintln!(
                    "daemon crash rounds: #{seq} round {round}: committed {} ms after the start",
                    t0.elapsed().as_millis()
                );
                return round;
            }
            if triggered.is_none() && socket.exists() {
                let o = zibctl(socket, &["trigger", ds]);
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                // A scheduled run may have started a moment earlier: then zibd says so.
                if o.status.success() || said.contains("already running") {
                    triggered = Some(Instant::now());
                }
            }
            assert!(
                Instant::now() < deadline,
                "backup #{seq} not committed within 300 s (triggered: {}): {}",
                triggered.is_some(),
                text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_of_the_daemon_lose_nothing() {
    let seed = seed("daemon crash rounds");
    let gens = generations();
    let t_start = Instant::now();
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("gcrashd").await;
    let proxy = crash_proxy(s3.endpoint()).await;
    let src = TestPool::create("zgcrdm");
    let ds = create_encrypted_dataset(&src, "data", PASSPHRASE);
    let root = work_dir("crashd");
    let socket = root.join("zibd.sock");
    let config = root.join("zibd.toml");
    crate::config_toml::ConfigToml::new(&root, &bucket, &proxy.endpoint())
        .daemon("socket", crate::config_toml::quoted(socket.display()))
        .target("prefix", crate::config_toml::quoted("guest"))
        .target("storage_class", crate::config_toml::quoted("STANDARD"))
        .target("chunk_size", crate::config_toml::quoted("64KiB"))
        .target("max_spooled_chunks", 2)
        .dataset(&ds.name, "0 * * * * *")
        .dataset_key("keep_snapshots", 2)
        .write(&config);
    let bed = DaemonBed {
        root: root.clone(),
        config,
        socket,
        logs: work_dir("crashdlogs"),
        endpoint: proxy.endpoint(),
        ds: ds.name.clone(),
    };
    let mut killer = Killer::new(seed, 3000);
    let mut snaps = Vec::new();
    let mut per_gen = Vec::new();
    for g in 0..gens {
        change_generation(killer.rng(), &ds.mountpoint, g);
        let want = checksum_tree(&ds.mountpoint);
        std::thread::sleep(Duration::from_millis(1100));
        let kills_before = killer.kills;
        daemon_until_committed(&mut killer, &bed, g as u64 + 1);
        per_gen.push(killer.kills - kills_before);
        let last = read_state(&root, &ds.name).last.expect("committed");
        snaps.push((last.snapshot.name.as_str().to_owned(), want));
    }

    let (figures, twice) = check_backups(&proxy, &s3, &bucket, &ds.name, &root, &snaps).await;
    eprintln!(
        "daemon crash rounds: {gens} generations, {} rounds, {} kills (per generation {per_gen:?}, \
         {} uncut), {figures}; {} chunks stored by a killed run found stored by the next; \
         seed {seed}; kill moments (ms) {:?}",
        killer.rounds,
        killer.kills,
        killer.uncut,
        count_in_logs(&bed.logs, "daemon", FOUND_STORED),
        killer.moments,
    );
    assert_eq!(twice, Vec::<(String, usize)>::new(), "keys written more than once (seed {seed})");

    let dst = TestPool::create("zgcrdd");
    let target = dst.dataset("r");
    let mp = mountpoint("crashdr");
    let work = work_dir("crashdrw");
    let o = restore_cmd(s3.endpoint(), &bucket, &ds.name, &target, &mp, &ds.key_location(), &work)
        .output()
        .unwrap();
    assert!(o.status.success(), "zibd restore run: {}", crate::restore::out(&o));
    let lost = check_restored_chain(&target, &mp, &snaps);
    eprintln!(
        "daemon crash rounds: {} snapshots restored, {lost} differ; {} s in all",
        snaps.len(),
        t_start.elapsed().as_secs()
    );
    assert_eq!(lost, 0, "snapshots restored with other files (seed {seed})");
}
