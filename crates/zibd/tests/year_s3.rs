//! A simulated year of daily backups (issue 12), against moto with a simulated clock: zibd runs
//! with `ZIB_TEST_NOW` (its clock), moto reads the same instant from a file (object times), and
//! the stand-in zfs makes a growing dataset (a full stream grows 1000 bytes a day, an
//! incremental is 20000 bytes; idle on Sundays and during a three-week holiday). Checked: chains
//! stay within `max_chain`, a new chain starts only when `max_chain` or `full_every` allows it,
//! local snapshots and bookmarks stay bounded, idle days make zero PUTs (counted at the proxy),
//! retention keeps the newest two chains and every chain younger than Deep Archive's 180 days
//! (the newest and the oldest kept chain both restore), and the cost ledger equals figures
//! computed here by hand. Prints the figures (PUTs, objects, bytes, chain lengths, cost).

use std::{collections::BTreeMap, path::PathBuf, process::Output};

use sha2::{Digest, Sha256};
use zib_core::Manifest;
use zib_testkit::{FaultProxy, Matcher, MotoServer};

mod support;
use support::{ConfigToml, FakeZfs, config::quoted};

const DAY: i64 = 86_400;
const DAYS: i64 = 365;
const CHUNK: u64 = 64 * 1024;
const MAX_CHAIN: usize = 30;
const FULL_EVERY_DAYS: i64 = 45;
const KEEP_CHAINS: usize = 2;
const KEEP_SNAPSHOTS: usize = 2;
const INCREMENTAL: u64 = 20_000;
const GB: f64 = (1u64 << 30) as f64;

/// The stream of a full backup taken on `day`: the dataset grows.
fn full_size(day: i64) -> u64 {
    150_000 + 1_000 * day as u64
}

/// Nothing is written on Sundays (every 7th day) nor during a holiday in the summer.
fn idle(day: i64) -> bool {
    day % 7 == 6 || (150..171).contains(&day)
}

/// One chain as the simulation saw it: (seq, day) of each backup, the full first.
#[derive(Debug, Clone)]
struct Chain {
    links: Vec<(u64, i64)>,
}

impl Chain {
    fn full_day(&self) -> i64 {
        self.links[0].1
    }
    fn last_day(&self) -> i64 {
        self.links.last().unwrap().1
    }
}

struct Year {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Year {
    fn zibd(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let env = [&[("ZIB_LOG", "warn".to_owned())], env].concat();
        support::zibd(&self.config, &self.root, &self.endpoint, args, &env)
    }

    fn count(&self, dir: &str) -> usize {
        std::fs::read_dir(self.root.join("zfs").join(dir)).map_or(0, |d| d.count())
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "zibd failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-15 + 1e-9 * b.abs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_year_of_daily_backups_stays_bounded_restorable_and_costed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let clock = root.join("clock");
    let moto = MotoServer::spawn_with_clock(&clock);
    let bucket = moto.create_bucket("year").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let config = root.join("zibd.toml");
    ConfigToml::new(&root, &bucket, &proxy.endpoint())
        .target("storage_class", quoted("DEEP_ARCHIVE"))
        .target("chunk_size", CHUNK)
        .dataset("tank/photos", "0 3 * * *")
        .dataset_key("keep_snapshots", KEEP_SNAPSHOTS)
        .dataset_key("max_chain", MAX_CHAIN)
        .dataset_key("full_every", quoted(format!("{FULL_EVERY_DAYS}d")))
        .dataset_key("rebaseline_ratio", quoted("off"))
        .dataset_key("keep_chains", KEEP_CHAINS)
        .write(&config);
    let year = Year { _dir: dir, root: root.clone(), config, endpoint: proxy.endpoint() };
    // Day 0 is the next 03:00 UTC, so the simulated clock never runs behind the real one.
    let now = chrono::Utc::now().timestamp();
    let start = (now / DAY + 1) * DAY + 3 * 3600;
    let at = |day: i64| start + day * DAY;

    let mut chains: Vec<Chain> = Vec::new();
    let (mut puts, mut idle_days, mut pruned) = (0usize, 0, 0u64);
    let (mut max_snaps, mut max_books) = (0, 0);
    let (mut by_max_chain, mut by_full_every) = (0, 0);
    for day in 0..DAYS {
        let t = at(day);
        std::fs::write(&clock, t.to_string()).unwrap();
        proxy.reset_counts();
        let written = if idle(day) { "1000" } else { "100000" };
        let env = [
            ("ZIB_TEST_NOW", t.to_string()),
            ("FAKE_ZFS_WRITTEN", written.to_owned()),
            ("FAKE_ZFS_SIZE", INCREMENTAL.to_string()),
            ("FAKE_ZFS_FULL_SIZE", full_size(day).to_string()),
            ("FAKE_ZFS_HEADER", "1".to_owned()),
        ];
        let out = ok(&year.zibd(&["backup", "tank/photos"], &env));
        let day_puts = proxy.count(&Matcher::put());
        puts += day_puts;
        if idle(day) && day > 0 {
            assert!(out.contains("skipped (no change)"), "day {day}: {out}");
            assert_eq!(day_puts, 0, "day {day}: an idle day makes zero PUTs");
            idle_days += 1;
        } else {
            let full = out.starts_with("full backup #");
            assert!(full || out.starts_with("incremental backup #"), "day {day}: {out}");
            let seq: u64 =
                out.split('#').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            if full {
                // A new chain only when a rule allows it (or on the first day).
                if let Some(c) = chains.last() {
                    let long = c.links.len() >= MAX_CHAIN;
                    let old = day - c.full_day() >= FULL_EVERY_DAYS;
                    assert!(long || old, "day {day}: a re-baseline no rule allows: {c:?}");
                    by_max_chain += usize::from(long);
                    by_full_every += usize::from(old && !long);
                }
                chains.push(Chain { links: vec![(seq, day)] });
            } else {
                let c = chains.last_mut().expect("an incremental extends a chain");
                assert!(c.links.len() < MAX_CHAIN, "day {day}: chain beyond max_chain");
                assert!(day - c.full_day() < FULL_EVERY_DAYS, "day {day}: a full was due");
                c.links.push((seq, day));
            }
        }
        // zib's local snapshots and bookmarks stay bounded (nothing else makes any here).
        let (snaps, books) = (year.count("snap"), year.count("book"));
        assert!(
            snaps <= KEEP_SNAPSHOTS && books == 1,
            "day {day}: {snaps} snapshots, {books} bookmarks"
        );
        (max_snaps, max_books) = (max_snaps.max(snaps), max_books.max(books));
        // Retention after the backup, as the daemon does (every four weeks here, to keep the run short,
        // and on the last day).
        if (day % 28 == 0 && !idle(day)) || day == DAYS - 1 {
            let o = year.zibd(&["prune", "tank/photos", "--json"], &env[..1]);
            let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
            pruned += v["deleted"].as_u64().unwrap();
        }
    }
    assert!(
        by_max_chain > 0 && by_full_every > 0,
        "both rules fired: {by_max_chain} {by_full_every}"
    );
    let last_day = DAYS - 1;
    assert!(!idle(last_day));

    // What is stored: exactly the chains retention must keep, whole.
    let client = moto.client();
    let listing: Vec<_> = zib_testkit::list_all(&client, &bucket)
        .await
        .iter()
        .map(|o| {
            (
                o.key().unwrap().to_owned(),
                o.size().unwrap() as u64,
                o.storage_class().map(|c| c.as_str().to_owned()),
            )
        })
        .collect();
    let mut manifests: BTreeMap<u64, (String, Manifest)> = BTreeMap::new();
    for (k, _, _) in listing.iter().filter(|(k, _, _)| k.ends_with(".manifest.json")) {
        let bytes = zib_testkit::get_bytes(&client, &bucket, k).await;
        let m = Manifest::from_json(k, &bytes).unwrap();
        manifests.insert(m.seq, (k.clone(), m));
    }
    let n = chains.len();
    let kept: Vec<&Chain> = chains
        .iter()
        .enumerate()
        .filter(|(i, c)| *i + KEEP_CHAINS >= n || last_day - c.last_day() < 180)
        .map(|(_, c)| c)
        .collect();
    let kept_seqs: Vec<u64> = kept.iter().flat_map(|c| c.links.iter().map(|l| l.0)).collect();
    assert_eq!(manifests.keys().copied().collect::<Vec<_>>(), kept_seqs);
    let chunk_objects: usize = manifests.values().map(|(_, m)| m.chunks.len()).sum();
    assert_eq!(listing.len(), manifests.len() + chunk_objects, "no object outside a kept chain");
    assert!(pruned > 0, "old chains were deleted");

    // The newest and the oldest kept chain restore (stand-in receive: the streams are checked
    // against their manifests' SHA-256 and GUIDs here).
    for (name, chain) in [("oldest", kept[0]), ("newest", *kept.last().unwrap())] {
        let zfs = FakeZfs::new();
        let newest = &manifests[&chain.links.last().unwrap().0].1;
        let work = root.join(format!("restore-{name}"));
        let o = year.zibd(
            &[
                "restore",
                "run",
                "--dataset",
                "tank/photos",
                "--snapshot",
                newest.to.name.as_str(),
                "--to",
                &format!("pool/{name}"),
                "--work-dir",
                work.to_str().unwrap(),
                "--poll-initial-secs",
                "0.2",
                "--poll-max-secs",
                "1",
            ],
            &zfs.env(),
        );
        ok(&o);
        let got = zfs.received();
        assert_eq!(got.len(), chain.links.len(), "{name} chain: one stream per link");
        for (stream, (seq, _)) in got.iter().zip(&chain.links) {
            let m = &manifests[seq].1;
            assert_eq!(hex::encode(Sha256::digest(stream)), m.stream_sha256, "{name} #{seq}");
            let to_guid = u64::from_le_bytes(stream[40..48].try_into().unwrap());
            assert_eq!(to_guid.to_string(), m.to.guid);
        }
    }

    // The cost ledger, by hand: Deep Archive chunks at $0.00099/GB-month plus 32 KiB each, and
    // 8 KiB each at STANDARD's $0.023; manifests at STANDARD.
    let t = at(last_day);
    let o = year.zibd(&["cost", "--json"], &[("ZIB_TEST_NOW", t.to_string())]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let l = &v["ledger"];
    let class_of = |c: &str| {
        l["classes"].as_array().unwrap().iter().find(|x| x["storage_class"] == c).unwrap().clone()
    };
    let (std, da) = (class_of("STANDARD"), class_of("DEEP_ARCHIVE"));
    let manifest_bytes: u64 = listing.iter().filter(|o| o.0.ends_with(".json")).map(|o| o.1).sum();
    let chunk_bytes: u64 = listing.iter().filter(|o| !o.0.ends_with(".json")).map(|o| o.1).sum();
    assert_eq!(chunk_bytes, manifests.values().map(|(_, m)| m.stream_size).sum::<u64>());
    assert_eq!(
        (std["objects"].as_u64(), std["bytes"].as_u64()),
        (Some(manifests.len() as u64), Some(manifest_bytes))
    );
    assert_eq!(
        (da["objects"].as_u64(), da["bytes"].as_u64()),
        (Some(chunk_objects as u64), Some(chunk_bytes))
    );
    let k = chunk_objects as f64;
    let std_monthly = manifest_bytes as f64 / GB * 0.023;
    let da_monthly =
        chunk_bytes as f64 / GB * 0.00099 + k * 32768.0 / GB * 0.00099 + k * 8192.0 / GB * 0.023;
    assert!(close(da["monthly"].as_f64().unwrap(), da_monthly), "{da}");
    assert!(close(std["monthly"].as_f64().unwrap(), std_monthly), "{std}");
    assert!(close(l["monthly_total"].as_f64().unwrap(), std_monthly + da_monthly), "{l}");

    let lengths: Vec<usize> = chains.iter().map(|c| c.links.len()).collect();
    let kept_lengths: Vec<usize> = kept.iter().map(|c| c.links.len()).collect();
    println!(
        "simulated year: {DAYS} days, {} backups ({} chains, lengths {lengths:?}; {by_max_chain} re-baselines by max_chain = {MAX_CHAIN}, {by_full_every} by full_every = {FULL_EVERY_DAYS}d), {idle_days} idle days with 0 PUTs; {puts} PUTs in all; at most {max_snaps} local snapshots and {max_books} bookmark; {pruned} objects pruned; at the end {} objects ({} manifests, {chunk_objects} chunks), {chunk_bytes} chunk bytes + {manifest_bytes} manifest bytes in {} chains (lengths {kept_lengths:?}); monthly cost ${:.9} (Deep Archive ${da_monthly:.9}, STANDARD ${std_monthly:.9})",
        DAYS - idle_days as i64,
        chains.len(),
        listing.len(),
        manifests.len(),
        kept.len(),
        std_monthly + da_monthly,
    );
}
