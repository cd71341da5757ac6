//! S3 faults beyond throttling, 5xx and dropped connections (those, a request held before its
//! body and one 409 on a chunk are in backup_s3.rs): a server that stalls half-way through a
//! request or a response body, a 403 AccessDenied on one key, a listing that comes in pages,
//! 409 and 412 on the conditional PUTs. The real `zibd` against s3s-fs behind the fault proxy,
//! with the stand-in zfs for backups and a `cat` for `zfs receive` for restores. Each case
//! checks the error text, the state, the objects in the bucket and the requests the proxy
//! counted, and that the next run recovers by itself.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use zib_core::{DatasetName, Manifest};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, Outcome, S3sFsServer};

mod support;

use support::{ConfigToml, FakeZfs, config::quoted, failed, ok};

const CHUNK: u64 = 64 * 1024;
/// The stand-in zfs's stream per snapshot: its begin record and 300000 bytes, 5 chunks of
/// [`CHUNK`].
const STREAM: &str = "300000";

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    bucket: String,
    proxy: FaultProxy,
    /// Straight to the server, past the proxy.
    client: aws_sdk_s3::Client,
    _server: S3sFsServer,
}

/// The request timeout of the stall tests: a stalled body is given up after it.
const STALL_TIMEOUT: (&str, &str) = ("request_timeout_secs", "2");

impl Bed {
    /// A config for tank/photos on s3s-fs behind the proxy, `chunk` bytes a chunk, then
    /// `target` and `dataset` keys (TOML values) on top. The request timeout is 60 s: only the
    /// stall tests set a short one ([`STALL_TIMEOUT`]); with 2 s for all, an attempt that
    /// was merely slow on a busy machine timed out, and a test that counts attempts saw one
    /// more (a 412 test: dropped, cut off by the timeout, 412).
    async fn new(chunk: u64, target: &[(&str, &str)], dataset: &[(&str, &str)]) -> Bed {
        let server = S3sFsServer::start();
        let bucket = server.create_bucket("faults").await;
        let proxy = FaultProxy::start(server.endpoint()).await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let config = root.join("zibd.toml");
        let mut c = ConfigToml::new(&root, &bucket, &proxy.endpoint())
            .target("storage_class", quoted("STANDARD"))
            .target("chunk_size", chunk)
            .target("request_timeout_secs", 60);
        for (k, v) in target {
            c = c.target(k, v);
        }
        c = c.dataset("tank/photos", "0 3 * * *");
        for (k, v) in dataset {
            c = c.dataset_key(k, v);
        }
        c.write(&config);
        let client = server.client();
        Bed { _dir: dir, root, config, bucket, proxy, client, _server: server }
    }

    fn zibd(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let env =
            [&[("FAKE_ZFS_SIZE", STREAM.to_owned()), ("FAKE_ZFS_HEADER", "1".to_owned())], env]
                .concat();
        support::zibd(&self.config, &self.root, &self.proxy.endpoint(), args, &env)
    }

    fn backup(&self) -> Output {
        self.zibd(&["backup", "tank/photos"], &[])
    }

    /// `zibd ARGS` (with `env` on top) given `limit` to finish (a run that hangs is killed and
    /// fails the test), and how long it took.
    async fn zibd_within(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        limit: Duration,
    ) -> (Output, Duration) {
        let mut c =
            support::zibd_command(&self.proxy.endpoint(), &FakeZfs::at(self.root.join("zfs")));
        c.arg("--config").arg(&self.config).args(args);
        c.env("FAKE_ZFS_SIZE", STREAM).env("FAKE_ZFS_HEADER", "1");
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let mut c = tokio::process::Command::from(c);
        c.kill_on_drop(true);
        let started = Instant::now();
        let out = tokio::time::timeout(limit, c.output())
            .await
            .unwrap_or_else(|_| panic!("zibd {args:?} still running after {limit:?}: it hangs"))
            .unwrap();
        (out, started.elapsed())
    }

    /// `zibd restore run --to pool/r` of the newest snapshot into `zfs`, its record in `work`.
    fn restore(&self, zfs: &FakeZfs, work: &Path) -> Output {
        let args = ["restore", "run", "--to", "pool/r", "--work-dir", work.to_str().unwrap()];
        self.zibd(&args, &zfs.env())
    }

    /// Every key in the bucket, straight from the server (all pages).
    async fn keys(&self) -> Vec<String> {
        let objects = zib_testkit::list_all(&self.client, &self.bucket).await;
        objects.iter().map(|o| o.key().unwrap().to_owned()).collect()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        zib_testkit::get_bytes(&self.client, &self.bucket, key).await
    }

    async fn manifests(&self) -> Vec<Manifest> {
        let mut v = Vec::new();
        for k in self.keys().await {
            if k.ends_with(".manifest.json") {
                v.push(Manifest::from_json(&k, &self.get(&k).await).unwrap());
            }
        }
        v
    }

    /// The chunks of `m` as stored, in order: the stream as `zfs send` printed it.
    async fn stored_stream(&self, m: &Manifest) -> Vec<u8> {
        let mut all = Vec::new();
        for c in &m.chunks {
            all.extend(self.get(&c.key).await);
        }
        all
    }

    /// Asserts `m`'s chunks are all stored and make up the stream the stand-in zfs sent.
    async fn assert_whole(&self, m: &Manifest) {
        let stored = self.stored_stream(m).await;
        assert_eq!(sha(&stored), m.stream_sha256, "seq {}: chunks unlike the manifest", m.seq);
        let data =
            std::fs::read(self.root.join("zfs/data").join(format!("tank%2Fphotos@{}", m.to.name)))
                .unwrap();
        assert!(stored.ends_with(&data), "seq {}: not the snapshot's stream", m.seq);
    }

    fn state(&self) -> serde_json::Value {
        let store = zibd::state_store::StateStore::new(self.root.join("state"));
        let st = store.read(&DatasetName::new("tank/photos").unwrap()).unwrap();
        serde_json::to_value(st).unwrap()
    }

    /// The raw request path prefix of the objects of backup `seq` (keys as the SDK sends them).
    fn seq_path(&self, seq: u64) -> String {
        format!("/{}/backups/tank/photos%40zib/{seq:06}-", self.bucket)
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// PUTs the server accepted (2xx), per key: a key written twice would show a 2 here.
fn written(p: &FaultProxy) -> BTreeMap<String, usize> {
    p.successful_puts_per_key()
}

fn assert_each_written_once(p: &FaultProxy) {
    let w = written(p);
    assert!(w.values().all(|&n| n == 1), "a key was written twice: {w:?}");
}

/// The requests `m` selects, as (key, outcome).
fn seen(p: &FaultProxy, m: &Matcher) -> Vec<(Option<String>, Option<Outcome>)> {
    p.requests().into_iter().filter(|r| m.matches_request(r)).map(|r| (r.key, r.outcome)).collect()
}

/// Every file under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn is_manifest(k: &str) -> bool {
    k.ends_with(".manifest.json")
}

// --- a server that stalls mid-body ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_put_whose_body_stalls_half_way_times_out_is_sent_again_and_a_lasting_stall_fails() {
    // 256 KiB chunks: a 16 KiB head of the body is well inside the first chunk; its PUT
    // attempt gets 2 s + 4 s (one per 64 KiB) before it is given up.
    let bed = Bed::new(4 * CHUNK, &[("max_attempts", "3"), STALL_TIMEOUT], &[]).await;
    let stalled = Matcher::put().path_prefix(&bed.seq_path(1)).path_contains("/a00/00000000");
    bed.proxy
        .add_fault(Fault::new(stalled.clone(), FaultAction::StallRequestBody { after: 16384 }));
    // Far more than the run needs (one attempt given up after 6 s, then the rest).
    let limit = Duration::from_secs(120);
    let (o, took) = bed.zibd_within(&["backup", "tank/photos"], &[], limit).await;
    ok(&o);
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    let tries = seen(&bed.proxy, &stalled);
    assert_eq!(tries.len(), 2, "{tries:?}");
    match tries[0].1 {
        Some(Outcome::Stalled { body_bytes }) => {
            assert!((16384..4 * CHUNK).contains(&body_bytes), "stalled after {body_bytes} bytes")
        }
        ref o => panic!("the first PUT was not stalled: {o:?}"),
    }
    assert_eq!(tries[1].1, Some(Outcome::Forwarded(200)));
    assert!(took.as_secs() >= 6, "the stalled attempt was given up after {took:?}");
    // 2 chunks (the begin record and 300000 bytes), the manifest, the stalled PUT again.
    assert_eq!(bed.proxy.count(&Matcher::put()), 2 + 1 + 1);
    assert_each_written_once(&bed.proxy);

    // A server that stalls on every attempt: the run fails naming the PUT, the key and the
    // setting; nothing is committed; the next run finishes the same backup.
    let every = Matcher::put().path_prefix(&bed.seq_path(2));
    bed.proxy.add_fault(Fault::new(every, FaultAction::StallRequestBody { after: 16384 }).always());
    let (o, failed_after) = bed.zibd_within(&["backup", "tank/photos"], &[], limit).await;
    let err = failed(&o);
    assert!(
        err.contains("PutObject")
            && err.contains("backups/tank/photos@zib/000002-")
            && err.contains("timed out")
            && err.contains("request_timeout_secs"),
        "{err}"
    );
    // Chunk 0's 3 attempts (6 s each) and chunk 1's (3 s each), side by side.
    let stalled_puts = bed.proxy.count(&Matcher::put().path_prefix(&bed.seq_path(2)));
    assert!(failed_after >= Duration::from_secs(18), "given up after {failed_after:?}");
    assert_eq!(stalled_puts, 2 * 3, "3 attempts of each chunk");
    println!(
        "figures: a PUT stalled once: the run took {took:.1?}; stalled on every attempt: failed after {failed_after:.1?}, {stalled_puts} PUTs at the proxy"
    );
    assert_eq!(bed.manifests().await.len(), 1, "a stalled run committed a manifest");
    let st = bed.state();
    assert_eq!(st["last"]["seq"], 1, "{st}");
    assert!(st["pending"].is_object(), "{st}");
    bed.proxy.clear_faults();
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert_eq!((ms[1].seq, ms[1].from.as_ref()), (2, Some(&ms[0].to)));
    bed.assert_whole(&ms[1]).await;
    assert_each_written_once(&bed.proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_whose_body_stalls_half_way_is_read_again_and_the_restore_is_whole() {
    let bed = Bed::new(CHUNK, &[STALL_TIMEOUT], &[]).await;
    ok(&bed.backup());
    let m = bed.manifests().await.remove(0);
    // Chunk 2's body stops after 4 KiB; the restore gives it up after request_timeout_secs
    // without data, and reads it again.
    let key = &m.chunks[2].key;
    let chunk = Matcher::get().path_contains(&key.replace('@', "%40"));
    bed.proxy.add_fault(Fault::new(chunk.clone(), FaultAction::StallResponseBody { after: 4096 }));
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let args = ["restore", "run", "--to", "pool/r", "--work-dir", work.path().to_str().unwrap()];
    let (o, took) = bed.zibd_within(&args, &zfs.env(), Duration::from_secs(120)).await;
    let err = ok(&o);
    println!("figures: a chunk GET stalled after 4096 bytes: the restore took {took:.1?}");
    assert!(took >= Duration::from_secs(2), "the stalled body was given up after {took:?}");
    assert!(
        err.contains("download broke off; retrying")
            && err.contains(key.as_str())
            && err.contains("request_timeout_secs"),
        "{err}"
    );
    let got = zfs.received();
    assert_eq!(got.len(), 1);
    assert_eq!(sha(&got[0]), m.stream_sha256, "the restored stream differs");
    let gets = seen(&bed.proxy, &chunk);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].1, Some(Outcome::Stalled { body_bytes: 4096 }));
    assert_eq!(gets[1].1, Some(Outcome::Forwarded(200)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_or_manifest_whose_body_stalls_is_read_again() {
    let bed = Bed::new(CHUNK, &[STALL_TIMEOUT], &[]).await;
    ok(&bed.backup());
    ok(&bed.backup());
    bed.proxy.reset_counts();
    let list = Matcher::get().query_contains("list-type=2");
    let manifest = Matcher::get().path_contains("000002-");
    bed.proxy.add_fault(Fault::new(list.clone(), FaultAction::StallResponseBody { after: 100 }));
    bed.proxy.add_fault(Fault::new(manifest.clone(), FaultAction::StallResponseBody { after: 10 }));
    let o = bed.zibd(&["restore", "list", "--json"], &[]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = v["datasets"][0]["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{v:#}");
    let lists = seen(&bed.proxy, &list);
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert_eq!(lists[0].1, Some(Outcome::Stalled { body_bytes: 100 }));
    let reads: Vec<_> = seen(&bed.proxy, &manifest)
        .into_iter()
        .filter(|(k, _)| k.as_deref().is_some_and(is_manifest))
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0].1, Some(Outcome::Stalled { body_bytes: 10 }));
    assert_eq!(reads[1].1, Some(Outcome::Forwarded(200)));
}

// --- 403 AccessDenied on one key -------------------------------------------------------------

fn access_denied() -> FaultAction {
    FaultAction::status(403, "AccessDenied", "Access Denied")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_denied_on_one_key_fails_naming_it_commits_nothing_and_the_next_run_resumes() {
    let bed = Bed::new(CHUNK, &[], &[]).await;
    let denied = Matcher::put().path_prefix(&bed.seq_path(1)).path_contains("/a00/00000002");
    bed.proxy.add_fault(Fault::new(denied.clone(), access_denied()).always());
    let err = failed(&bed.backup());
    let key = "backups/tank/photos@zib/000001-";
    assert!(
        err.contains("PutObject") && err.contains(key) && err.contains("/a00/00000002"),
        "{err}"
    );
    assert!(err.contains("AccessDenied") || err.contains("Access Denied"), "{err}");
    // Not retried: one request, answered 403.
    assert_eq!(seen(&bed.proxy, &denied).len(), 1, "a 403 was retried");
    let keys = bed.keys().await;
    assert!(!keys.iter().any(|k| is_manifest(k)), "committed despite a refused chunk: {keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with("/a00/00000002")), "{keys:?}");
    let st = bed.state();
    assert!(st["pending"].is_object() && st["last"].is_null(), "{st}");
    let recorded = st["pending"]["chunks"].as_array().unwrap().len();
    assert_eq!(recorded, 2, "chunks 0 and 1 recorded, the refused one not: {st}");

    // Permission granted: the next run resumes the same backup, sending only what is missing.
    bed.proxy.clear_faults();
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    assert_eq!(ms[0].to.name.as_str(), st["pending"]["to"].as_str().unwrap());
    assert_each_written_once(&bed.proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_put_denied_commits_nothing_and_the_next_run_commits_without_resending() {
    let bed = Bed::new(CHUNK, &[], &[]).await;
    let manifest = Matcher::put().path_contains(".manifest.json");
    bed.proxy.add_fault(Fault::new(manifest, access_denied()).always());
    let err = failed(&bed.backup());
    assert!(err.contains("PutObject") && err.contains(".manifest.json"), "{err}");
    assert!(bed.manifests().await.is_empty());
    let st = bed.state();
    assert!(st["last"].is_null() && st["pending"].is_object(), "{st}");
    bed.proxy.clear_faults();
    bed.proxy.reset_counts();
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    let puts = bed.proxy.puts_per_key();
    assert!(puts.keys().all(|k| is_manifest(k)), "chunks sent again: {puts:?}");
    assert_eq!(puts.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_denied_on_one_chunk_fails_naming_it_and_the_next_restore_finishes() {
    let bed = Bed::new(CHUNK, &[], &[]).await;
    ok(&bed.backup());
    let m = bed.manifests().await.remove(0);
    let key = m.chunks[3].key.clone();
    let denied = Matcher::get().path_contains(&key.replace('@', "%40"));
    bed.proxy.add_fault(Fault::new(denied.clone(), access_denied()).always());
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let err = failed(&bed.restore(&zfs, work.path()));
    assert!(err.contains("GetObject") && err.contains(&key), "{err}");
    assert_eq!(seen(&bed.proxy, &denied).len(), 1, "a 403 was retried");
    // At most chunks 0..2 went to zfs receive (the downloads run ahead in parallel), never
    // the refused chunk or what follows it.
    let got = zfs.received();
    assert!(got.len() <= 1, "{} receives", got.len());
    let stream = bed.stored_stream(&m).await;
    let first3: usize = m.chunks[..3].iter().map(|c| c.size as usize).sum();
    assert!(got.first().is_none_or(|g| stream[..first3].starts_with(g)), "received beyond it");
    let spool = files_under(&work.path().join("restore-spool"));
    assert!(spool.is_empty(), "spool files left behind: {spool:?}");

    bed.proxy.clear_faults();
    ok(&bed.restore(&zfs, work.path()));
    // The stream is received again from its first chunk, in one more `zfs receive` (the
    // stand-in keeps no resume token, so there is no partial state to abort).
    let again = zfs.received();
    assert_eq!(again.len(), got.len() + 1, "receives: {} then {}", got.len(), again.len());
    assert_eq!(sha(again.last().unwrap()), m.stream_sha256, "the restored stream differs");
}

// --- a listing that pages --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_key_of_a_listing_in_pages_is_seen_by_backup_restore_verify_and_prune() {
    // Chains #1..#2, #3..#4, #5 (a manifest and 5 chunks each: 30 keys), listed 4 at a time.
    let policy = [("max_chain", "2"), ("rebaseline_ratio", "\"off\""), ("keep_chains", "2")];
    let bed = Bed::new(CHUNK, &[], &policy).await;
    let list = Matcher::get().query_contains("list-type=2");
    bed.proxy
        .add_fault(Fault::new(list.clone(), FaultAction::PageListing { max_keys: 4 }).always());
    for _ in 0..5 {
        ok(&bed.backup());
    }
    // Each backup saw its whole chain (else it would have started a new one).
    let ms = bed.manifests().await;
    let shape: Vec<(u64, bool)> = ms.iter().map(|m| (m.seq, m.is_full())).collect();
    assert_eq!(shape, [(1, true), (2, false), (3, true), (4, false), (5, true)]);
    assert_eq!(bed.keys().await.len(), 30);
    let served = |p: &FaultProxy| p.count(&list) - forwarded_lists(p, &list);
    assert!(served(&bed.proxy) > 0, "no listing was paged: {:?}", seen(&bed.proxy, &list));

    let json = |o: Output| -> serde_json::Value {
        ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // restore list and plan: all five backups, the newest chain's plan.
    bed.proxy.reset_counts();
    let v = json(bed.zibd(&["restore", "list", "--json"], &[]));
    assert_eq!(v["datasets"][0]["manifests"].as_array().unwrap().len(), 5, "{v:#}");
    // One listing of 30 keys in 8 pages (4 + ... + 2): one forwarded, 7 from the proxy's copy.
    assert_eq!((bed.proxy.count(&list), forwarded_lists(&bed.proxy, &list)), (8, 1));
    println!("figures: restore list of 30 keys in pages of 4: 8 listing requests, 1 forwarded");
    let v = json(bed.zibd(&["restore", "plan", "--json"], &[]));
    let steps: Vec<u64> =
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(steps, [5]);

    // verify: 25 chunks, all sound, nothing unnamed.
    let v = json(bed.zibd(&["verify", "--json"], &[]));
    let r = &v["report"];
    assert_eq!(r["clean"], true, "{v:#}");
    assert_eq!(r["datasets"][0]["chunks"], 25, "{v:#}");
    assert_eq!(r["datasets"][0]["chunks_sound"], 25, "{v:#}");
    assert_eq!(r["unnamed"].as_array().map_or(0, |u| u.len()), 0, "{v:#}");

    // prune: the oldest chain (#1..#2, 12 objects, the last of them on the last pages) goes.
    let v = json(bed.zibd(&["prune", "tank/photos", "--dry-run", "--json"], &[]));
    assert_eq!(v["plan"]["objects"], 12, "{v:#}");
    let v = json(bed.zibd(&["prune", "tank/photos", "--json"], &[]));
    assert_eq!(v["deleted"], 12, "{v:#}");
    let left = bed.keys().await;
    assert_eq!(left.len(), 18, "{left:?}");
    assert!(left.iter().all(|k| !k.contains("/000001-") && !k.contains("/000002-")), "{left:?}");
    let v = json(bed.zibd(&["prune", "tank/photos", "--dry-run", "--json"], &[]));
    assert_eq!(v["plan"]["objects"], 0, "{v:#}");
}

/// Listing requests the proxy forwarded to the server (the rest it answered from its copy).
fn forwarded_lists(p: &FaultProxy, list: &Matcher) -> usize {
    seen(p, list).iter().filter(|(_, o)| matches!(o, Some(Outcome::Forwarded(_)))).count()
}

// --- 409 and 412 on the conditional PUTs -------------------------------------------------------

fn conflict() -> FaultAction {
    FaultAction::status(
        409,
        "ConditionalRequestConflict",
        "A conflicting conditional operation is currently in progress against this resource. Try again.",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_409_on_the_manifest_put_is_retried_and_a_lasting_one_commits_nothing() {
    let bed = Bed::new(CHUNK, &[("max_attempts", "3")], &[]).await;
    let manifest = Matcher::put().path_contains(".manifest.json");
    bed.proxy.add_fault(Fault::new(manifest.clone(), conflict()));
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    let tries = seen(&bed.proxy, &manifest);
    assert_eq!(
        tries.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        [Some(Outcome::Injected(409)), Some(Outcome::Forwarded(200))]
    );

    // A conflict that does not go away: after max_attempts the run fails, naming the code
    // and the manifest; the state still has backup #2 pending, #1 as the last.
    bed.proxy.add_fault(Fault::new(manifest.clone(), conflict()).always());
    let err = failed(&bed.backup());
    assert!(
        err.contains("PutObject")
            && err.contains("ConditionalRequestConflict")
            && err.contains("/000002-")
            && err.contains(".manifest.json"),
        "{err}"
    );
    assert_eq!(seen(&bed.proxy, &manifest).len(), 2 + 3, "3 attempts of the second manifest");
    assert_eq!(bed.manifests().await.len(), 1);
    let st = bed.state();
    assert_eq!((st["last"]["seq"].as_u64(), st["pending"]["seq"].as_u64()), (Some(1), Some(2)));
    bed.proxy.clear_faults();
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    bed.assert_whole(&ms[1]).await;
    assert_each_written_once(&bed.proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_412_on_the_retry_of_a_put_that_was_stored_counts_as_stored() {
    // The server stores the manifest and the third chunk, but their answers are lost: the
    // SDK sends each again, the server answers 412 (the key exists), and zib checks what is
    // stored is its own (HEAD for a chunk, the bytes for the manifest).
    let bed = Bed::new(CHUNK, &[], &[]).await;
    let chunk = Matcher::put().path_contains("/a00/00000002");
    let manifest = Matcher::put().path_contains(".manifest.json");
    bed.proxy.add_fault(Fault::new(chunk.clone(), FaultAction::DropResponse));
    bed.proxy.add_fault(Fault::new(manifest.clone(), FaultAction::DropResponse));
    ok(&bed.backup());
    for m in [&chunk, &manifest] {
        let tries: Vec<_> = seen(&bed.proxy, m).into_iter().map(|(_, o)| o).collect();
        assert_eq!(tries, [Some(Outcome::Dropped), Some(Outcome::Forwarded(412))]);
    }
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    // Each key was written once (the dropped answers were to the one write that counted).
    let keys = bed.keys().await;
    assert_eq!(keys.len(), 6);
    let st = bed.state();
    assert!(st["pending"].is_null() && st["last"]["seq"] == 1, "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_412_on_a_chunk_nothing_is_stored_under_fails_clearly_and_the_next_run_stores_it() {
    // The server refuses the conditional PUT (412: the key exists), yet HEAD finds nothing:
    // not zib's object, nothing to accept. The run stops naming the key; the next stores it.
    let bed = Bed::new(CHUNK, &[], &[]).await;
    let chunk = Matcher::put().path_contains("/a00/00000001");
    bed.proxy.add_fault(Fault::new(
        chunk.clone(),
        FaultAction::status(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ),
    ));
    let err = failed(&bed.backup());
    assert!(err.contains("/a00/00000001"), "{err}");
    assert!(err.contains("412") || err.contains("PreconditionFailed"), "{err}");
    assert!(bed.manifests().await.is_empty());
    assert!(!bed.keys().await.iter().any(|k| k.ends_with("/a00/00000001")));
    ok(&bed.backup());
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    bed.assert_whole(&ms[0]).await;
    assert_each_written_once(&bed.proxy);
}
