//! Host integration tests of the backup engine: the real `zibd` binary against real local S3
//! servers (s3s-fs for checksums, moto for archive classes), with a stand-in `zfs` script so
//! they run in seconds on any host. The proof against real OpenZFS is the guest suite
//! (tests/guest/backup.rs); these pin down the S3 side: keys, checksums, PUT counts, resume.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
};

use zib_core::{DatasetName, KeyLayout, Manifest, SnapName};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer, S3sFsServer};

mod support;

use support::{ConfigToml, FakeZfs, config::quoted, failed, fake_zfs::SCRIPT as FAKE_ZFS, ok};
const CHUNK: u64 = 64 * 1024;

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    endpoint: String,
    bucket: String,
    client: aws_sdk_s3::Client,
}

impl Bed {
    async fn new(endpoint: &str, client: aws_sdk_s3::Client, bucket: String, class: &str) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let config = root.join("zibd.toml");
        ConfigToml::new(&root, &bucket, endpoint)
            .target("storage_class", quoted(class))
            .target("chunk_size", CHUNK)
            .target("max_attempts", 8)
            .dataset("tank/photos", "0 3 * * *")
            .write(&config);
        Bed { _dir: dir, root, config, endpoint: endpoint.into(), bucket, client }
    }

    /// Points the config at another bucket and prefix, as a user editing `[target]` would.
    fn retarget(&mut self, bucket: &str, prefix: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("bucket = ") {
                    format!("bucket = \"{bucket}\"")
                } else if l.starts_with("prefix = ") {
                    format!("prefix = \"{prefix}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text).unwrap();
        self.bucket = bucket.to_owned();
    }

    /// Replaces the config's one dataset by `names` (same settings).
    fn set_datasets(&self, names: &[&str]) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let (head, _) = text.split_once("[[dataset]]").unwrap();
        let mut text = head.to_owned();
        for n in names {
            text.push_str(&format!("[[dataset]]\nname = \"{n}\"\nschedule = \"0 3 * * *\"\n\n"));
        }
        std::fs::write(&self.config, text).unwrap();
    }

    /// Sets a `[target]` key (replacing its line if there is one), as a user editing it would.
    fn set_target(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} = ")))
            .map(str::to_owned)
            .collect();
        let at = lines.iter().position(|l| l == "[target]").unwrap() + 1;
        lines.insert(at, format!("{key} = {value}"));
        std::fs::write(&self.config, lines.join("\n") + "\n").unwrap();
    }

    fn zibd(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let env = [&[("FAKE_ZFS_SIZE", "300000".to_owned())], env].concat();
        support::zibd(&self.config, &self.root, &self.endpoint, args, &env)
    }

    fn backup(&self, env: &[(&str, String)]) -> Output {
        self.zibd(&["backup", "tank/photos"], env)
    }

    async fn keys(&self) -> Vec<(String, Option<String>)> {
        let out = self.client.list_objects_v2().bucket(&self.bucket).send().await.unwrap();
        out.contents()
            .iter()
            .map(|o| {
                (o.key().unwrap().to_owned(), o.storage_class().map(|c| c.as_str().to_owned()))
            })
            .collect()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        zib_testkit::get_bytes(&self.client, &self.bucket, key).await
    }

    async fn manifests(&self) -> Vec<Manifest> {
        let mut v = Vec::new();
        for (k, _) in self.keys().await {
            if k.ends_with(".manifest.json") {
                v.push(Manifest::from_json(&k, &self.get(&k).await).unwrap());
            }
        }
        v
    }

    /// The bytes `zfs send` printed for a snapshot (the fake keeps them).
    fn stream_of(&self, snap: &SnapName) -> Vec<u8> {
        std::fs::read(self.root.join("zfs/data").join(format!("tank%2Fphotos@{snap}"))).unwrap()
    }

    /// `cat` of the chunks in key order, as a user would do by hand.
    async fn cat_chunks(&self, m: &Manifest) -> Vec<u8> {
        let prefix =
            KeyLayout::new("backups", &m.dataset).attempt_prefix(m.seq, &m.to.name, m.attempt);
        let mut keys: Vec<String> = self
            .keys()
            .await
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(&prefix))
            .collect();
        keys.sort();
        let mut all = Vec::new();
        for k in keys {
            all.extend(self.get(&k).await);
        }
        all
    }

    /// The dataset's state as zibd would load it (its chunk journal folded in).
    fn state(&self) -> serde_json::Value {
        let store = zibd::state_store::StateStore::new(self.root.join("state"));
        let st = store.read(&DatasetName::new("tank/photos").unwrap()).unwrap();
        serde_json::to_value(st).unwrap()
    }
}

async fn s3s_bed(proxy: bool) -> (S3sFsServer, Option<FaultProxy>, Bed) {
    let server = S3sFsServer::start();
    let bucket = server.create_bucket("backup").await;
    let p = if proxy { Some(FaultProxy::start(server.endpoint()).await) } else { None };
    let endpoint = p.as_ref().map_or_else(|| server.endpoint().to_owned(), |p| p.endpoint());
    let bed = Bed::new(&endpoint, server.client(), bucket, "STANDARD").await;
    (server, p, bed)
}

/// Chunk PUTs per key the server accepted (2xx): with parallel PUTs a crash can cut some off
/// half-way, and the next run sends those again; a key is never written twice.
fn chunk_puts(p: &FaultProxy) -> BTreeMap<String, usize> {
    p.successful_puts_per_key()
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".manifest.json"))
        .collect()
}

/// Chunks the pending backup records as stored: in order, and ahead (parallel PUTs).
fn recorded_chunks(st: &serde_json::Value) -> usize {
    let p = &st["pending"];
    p["chunks"].as_array().unwrap().len() + p["stored_ahead"].as_object().map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incrementals_are_plain_splits_of_the_stream() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    ok(&bed.backup(&[]));
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    let (full, inc) = (&ms[0], &ms[1]);
    assert!(
        full.is_full()
            && full.seq == 1
            && full.send_args == ["-w", &format!("tank/photos@{}", full.to.name)]
    );
    assert_eq!(inc.seq, 2);
    assert_eq!(
        inc.from.as_ref().unwrap(),
        &full.to,
        "the incremental's base is the full's snapshot, by GUID"
    );
    assert_eq!(inc.send_args[..2], ["-w", "-i"]);
    for m in &ms {
        // 300000 bytes in 64 KiB chunks: 4 full chunks and a tail.
        assert_eq!(m.stream_size, 300_000);
        assert_eq!(m.chunks.len(), 5);
        assert_eq!(m.chunks[4].size, 300_000 - 4 * CHUNK);
        let stream = bed.stream_of(&m.to.name);
        assert_eq!(
            bed.cat_chunks(m).await,
            stream,
            "cat of the chunks in key order is the zfs send stream"
        );
        assert_eq!(m.stream_sha256, zibd::s3::sha256_hex(&stream));
    }
    // One PUT per chunk and one per manifest: never multipart, never twice.
    let puts = proxy.puts_per_key();
    assert_eq!(puts.len(), 12);
    assert!(puts.values().all(|&n| n == 1), "{puts:?}");
    assert_eq!(proxy.count(&Matcher::post()), 0, "no multipart uploads");
    let st = bed.state();
    assert_eq!(st["last"]["seq"], 2);
    assert!(st["pending"].is_null());
    // keep_snapshots = 2 by default: both zib snapshots stay, the newest is bookmarked.
    assert!(bed.root.join("zfs/book").join(format!("tank%2Fphotos#{}", inc.to.name)).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_checks_the_sha256_we_send() {
    let server = S3sFsServer::start();
    let bucket = server.create_bucket("cksum").await;
    let store = zibd::s3::S3Store::from_client(server.client(), &bucket);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c");
    std::fs::write(&f, b"hello chunk").unwrap();
    let wrong = zibd::s3::sha256_hex(b"other bytes");
    let e =
        store.put_chunk("bad", &f, 11, &wrong, zib_core::StorageClass::Standard).await.unwrap_err();
    assert!(e.to_string().contains("BadDigest") || e.status() == Some(400), "{e}");
    let right = zibd::s3::sha256_hex(b"hello chunk");
    let out = store.put_chunk("k", &f, 11, &right, zib_core::StorageClass::Standard).await.unwrap();
    assert_eq!(out, zibd::s3::PutOutcome::Stored);
    // A second PUT of the same bytes meets If-None-Match and is accepted after a HEAD check...
    let out = store.put_chunk("k", &f, 11, &right, zib_core::StorageClass::Standard).await.unwrap();
    assert_eq!(out, zibd::s3::PutOutcome::AlreadyPresent);
    // ...but different bytes under the same key are refused and never overwrite.
    std::fs::write(&f, b"HELLO CHUNK").unwrap();
    let other = zibd::s3::sha256_hex(b"HELLO CHUNK");
    let e =
        store.put_chunk("k", &f, 11, &other, zib_core::StorageClass::Standard).await.unwrap_err();
    assert!(e.to_string().contains("never overwrites"), "{e}");
    let kept = zib_testkit::get_bytes(&server.client(), &bucket, "k").await;
    assert_eq!(&kept[..], b"hello chunk");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_a_put_before_the_state_save_uploads_nothing_twice() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    // One PUT at a time (several in flight: parallel_puts_crashed_with_several_in_flight_...).
    bed.set_target("max_parallel_puts", "1");
    let err = failed(&bed.backup(&[("ZIB_FAILPOINT", "after-put:3".into())]));
    assert!(err.contains("failpoint after-put"), "{err}");
    // Two chunks recorded, the third stored but not recorded.
    assert_eq!(bed.state()["pending"]["chunks"].as_array().unwrap().len(), 2);
    assert_eq!(chunk_puts(&proxy).len(), 3);
    ok(&bed.backup(&[]));
    let puts = chunk_puts(&proxy);
    assert_eq!(puts.len(), 5, "{puts:?}");
    assert!(puts.values().all(|&n| n == 1), "a chunk was PUT twice: {puts:?}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    // The snapshot was not taken twice.
    assert_eq!(std::fs::read_dir(bed.root.join("zfs/snap")).unwrap().count(), 1);
}

/// Issue 14: `max_parallel_puts` chunk PUTs are in flight at once, measured at the proxy
/// (each PUT held there for a while, so that they can only overlap if zibd sends them so),
/// never more; the manifest lists the chunks in stream order and each key is PUT once.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_puts_overlap_up_to_the_setting_and_commit_in_order() {
    for parallel in [4usize, 2] {
        let (_s, proxy, bed) = s3s_bed(true).await;
        let proxy = proxy.unwrap();
        bed.set_target("max_parallel_puts", &parallel.to_string());
        let hold = std::time::Duration::from_millis(700);
        let chunks = Matcher::put().path_contains("/a00/");
        proxy.add_fault(Fault::new(chunks, FaultAction::Delay(hold)).always());
        let started = std::time::Instant::now();
        ok(&bed.zibd(&["backup", "tank/photos"], &[("FAKE_ZFS_SIZE", (9 * CHUNK).to_string())]));
        let took = started.elapsed();
        assert_eq!(proxy.peak_in_flight("PUT"), parallel, "PUTs in flight at once");
        // 9 chunks, each held 0.7 s: one at a time would take over 6 s.
        assert!(took < hold * 9 / 2 + std::time::Duration::from_secs(2), "{took:?}");
        let ms = bed.manifests().await;
        assert_eq!(ms.len(), 1);
        let keys: Vec<_> = ms[0].chunks.iter().map(|c| c.key.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "the manifest lists the chunks in stream order");
        assert_eq!(keys.len(), 9);
        assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
        let puts = proxy.puts_per_key();
        assert!(puts.values().all(|&n| n == 1), "{puts:?}");
        assert_eq!(puts.len(), 10);
        assert!(bed.state()["pending"].is_null());
    }
}

/// Issue 14 #2: `[daemon] max_upload_rate` holds for all parallel PUTs together: 2 MiB
/// through 4 PUTs at once at 512 KiB/s take about 4 s (less the first burst of 64 KiB), where
/// unlimited they take a fraction of a second; measured as the span of the chunk PUTs at the
/// proxy. A generous tolerance: the figures are for the benchmark.
#[tokio::test(flavor = "multi_thread")]
async fn the_upload_rate_limit_holds_for_parallel_puts_together() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("max_parallel_puts", "4");
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(
        &bed.config,
        text.replace("[daemon]\n", "[daemon]\nmax_upload_rate = \"512KiB/s\"\n"),
    )
    .unwrap();
    let size = 2 << 20;
    let started = std::time::Instant::now();
    ok(&bed.zibd(&["backup", "tank/photos"], &[("FAKE_ZFS_SIZE", size.to_string())]));
    let took = started.elapsed().as_secs_f64();
    assert!(proxy.peak_in_flight("PUT") >= 2, "the PUTs ran in parallel");
    let rate = size as f64 / took;
    assert!(rate <= 512.0 * 1024.0 * 1.15, "{rate} bytes/s over {took} s");
    assert!(rate >= 512.0 * 1024.0 * 0.5, "{rate} bytes/s over {took} s");
    let ms = bed.manifests().await;
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

/// Issue 14 #2: `max_download_rate` paces the reading of GET bodies (restores).
#[tokio::test(flavor = "multi_thread")]
async fn the_download_rate_limit_paces_get_bodies() {
    let server = S3sFsServer::start();
    let bucket = server.create_bucket("rate").await;
    let body = vec![5u8; 1 << 20];
    zib_testkit::put_bytes(&server.client(), &bucket, "big", body.clone()).await;
    let limit = zibd::bandwidth::Bandwidth::new(256 * 1024);
    let store =
        zibd::s3::S3Store::from_client(server.client(), &bucket).with_limits(None, Some(limit));
    let started = std::time::Instant::now();
    assert_eq!(store.get_bytes("big", 2 << 20).await.unwrap(), body);
    let took = started.elapsed().as_secs_f64();
    // 1 MiB at 256 KiB/s, less the first burst of 64 KiB: 3.75 s.
    assert!((3.0..6.0).contains(&took), "{took} s");
    let unlimited = zibd::s3::S3Store::from_client(server.client(), &bucket);
    let started = std::time::Instant::now();
    unlimited.get_bytes("big", 2 << 20).await.unwrap();
    assert!(started.elapsed().as_secs_f64() < 1.5);
}

/// Issue 14: a crash while several PUTs are in flight, finished out of order (chunk 0 held
/// at the proxy, chunk 3 delayed): the state records which chunks are stored (chunk 1 or 2,
/// ahead of the missing chunk 0), the next run sends none of the stored ones again (the other,
/// stored but not recorded, is found by its HEAD) and commits, and no key is written twice.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_puts_crashed_with_several_in_flight_resume_without_resending() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("max_parallel_puts", "4");
    let first = Matcher::put().path_contains("/a00/00000000");
    proxy.add_fault(Fault::new(first, FaultAction::Delay(std::time::Duration::from_secs(3))));
    let late = Matcher::put().path_contains("/a00/00000003");
    proxy.add_fault(Fault::new(late, FaultAction::Delay(std::time::Duration::from_secs(2))));
    // Killed when the second PUT has finished (one of chunks 1 and 2 recorded, the other stored, not recorded).
    let err = failed(&bed.backup(&[("ZIB_FAILPOINT", "after-put:2".into())]));
    assert!(err.contains("failpoint after-put"), "{err}");
    let st = bed.state();
    let p = &st["pending"];
    assert_eq!(p["chunks"].as_array().unwrap().len(), 0, "chunk 0 was not stored: {p}");
    // Chunks 1 and 2 go through at once: the first to finish is recorded (ahead of chunk 0),
    // the second is stored but not recorded (the kill). Which is first is the server's timing.
    let ahead: Vec<u64> =
        p["stored_ahead"].as_object().unwrap().keys().map(|k| k.parse().unwrap()).collect();
    assert!(ahead == [1] || ahead == [2], "{p}");
    let unrecorded = 3 - ahead[0];
    // Chunk 0 (held) was still in flight when the other two finished: at least 2 at once (a
    // third in flight as well depends on how fast the reader spools on a busy machine).
    assert!(proxy.peak_in_flight("PUT") >= 2, "{}", proxy.peak_in_flight("PUT"));
    let key = |i| pending_chunk_key(&st, i);
    let stored = proxy.successful_puts_per_key();
    assert_eq!(stored.get(&key(unrecorded)), Some(&1), "chunk {unrecorded} was stored");
    proxy.clear_faults();
    proxy.reset_counts();
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("already stored with the same SHA-256"), "{err}");
    let puts = proxy.puts_per_key();
    for i in [1, 2] {
        assert_eq!(puts.get(&key(i)), None, "chunk {i} was sent again: {puts:?}");
    }
    assert_eq!(puts.get(&key(0)), Some(&1), "chunk 0 is sent (once) by the resumed run");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].attempt, 0, "no new attempt: the stored chunks were used");
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

/// Issue 14: stored chunks are never a dead end however many PUTs were in flight at the
/// crash: here the state is behind on every stored chunk (all records lost), and the resumed
/// run finds each by its HEAD (SHA-256 compared), writes none again and commits attempt 0.
#[tokio::test(flavor = "multi_thread")]
async fn chunks_stored_but_never_recorded_are_found_and_not_written_again() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("max_parallel_puts", "4");
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:1".into())]));
    // Forget every chunk record, as if all the PUTs had landed and none was saved.
    {
        let store = zibd::state_store::StateStore::new(bed.root.join("state"));
        let mut locked = store.lock(&DatasetName::new("tank/photos").unwrap()).unwrap();
        locked.state.pending.as_mut().unwrap().clear_chunks();
        locked.save().unwrap();
    }
    let stored_before: Vec<String> = chunk_puts(&proxy).into_keys().collect();
    assert!(!stored_before.is_empty());
    proxy.reset_counts();
    let log = ok(&bed.backup(&[]));
    let written = proxy.successful_puts_per_key();
    for k in &stored_before {
        assert_eq!(written.get(k), None, "{k} written twice");
    }
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    // Attempt 0 unless the kill cut a PUT off inside the server: s3s-fs drops a request whose
    // client went away after writing the body but before its metadata, leaving an object with
    // no SHA-256 (seen on the loaded machine). zib cannot match such an object and never
    // overwrites it: it uploads the stream again as attempt 1, and says why.
    if ms[0].attempt != 0 {
        assert_eq!(ms[0].attempt, 1, "{log}");
        assert!(log.contains("the stored object has no SHA-256 to compare"), "{log}");
    }
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_chunks_and_after_the_manifest_resume_cleanly() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into())]));
    ok(&bed.backup(&[]));
    assert!(chunk_puts(&proxy).values().all(|&n| n == 1));
    // Crash after the manifest PUT, before the state records the commit.
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-manifest:1".into())]));
    assert!(!bed.state()["pending"].is_null());
    let out = bed.backup(&[]);
    ok(&out);
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2, "the committed backup is recognised, not redone");
    assert_eq!(bed.state()["last"]["seq"], 2);
    assert!(chunk_puts(&proxy).values().all(|&n| n == 1));
    let manifests = proxy.puts_per_key().into_iter().filter(|(k, _)| k.ends_with(".json"));
    assert!(manifests.map(|(_, n)| n).all(|n| n == 1), "manifest PUT twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_differs_on_resume_starts_a_new_attempt() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let random = [("FAKE_ZFS_RANDOM", "1".to_string())];
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into()), random[0].clone()]));
    let err = ok(&bed.backup(&random));
    assert!(err.contains("new attempt"), "{err}");
    let ms = bed.manifests().await;
    assert_eq!(ms[0].attempt, 1);
    assert!(ms[0].chunks.iter().all(|c| c.key.contains("/a01/")));
    let cat = bed.cat_chunks(&ms[0]).await;
    assert_eq!(zibd::s3::sha256_hex(&cat), ms[0].stream_sha256);
    // Attempt 0's chunks are still there (never deleted by zib), but not in any manifest.
    assert!(bed.keys().await.iter().any(|(k, _)| k.contains("/a00/")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_that_fails_commits_nothing() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let err = failed(&bed.backup(&[("FAKE_ZFS_FAIL_AFTER", "200000".into())]));
    assert!(err.contains("send broke off"), "stderr of zfs send is reported: {err}");
    assert!(bed.manifests().await.is_empty());
    // The truncated tail was never stored: at most the 3 full chunks before the failure. (How
    // many of those were PUT before the failure was seen depends on timing with parallel PUTs:
    // on a busy machine none may have been, so "at least one" is not asserted.)
    let keys = bed.keys().await;
    assert!(keys.len() <= 3, "{keys:?}");
    for (k, _) in &keys {
        let head = bed.client.head_object().bucket(&bed.bucket).key(k).send().await.unwrap();
        assert_eq!(head.content_length(), Some(CHUNK as i64), "{k}");
    }
    let st = bed.state();
    assert!(st["stats"]["last_error"].as_str().unwrap().contains("send broke off"));
    ok(&bed.backup(&[]));
    assert_eq!(bed.manifests().await.len(), 1);
}

/// The key of chunk `index` of the pending backup's current attempt.
fn pending_chunk_key(st: &serde_json::Value, index: u64) -> String {
    let p = &st["pending"];
    let to = SnapName::new(p["to"].as_str().unwrap()).unwrap();
    let layout = KeyLayout::new("backups", &DatasetName::new("tank/photos").unwrap());
    layout.chunk_key(p["seq"].as_u64().unwrap(), &to, p["attempt"].as_u64().unwrap() as u32, index)
}

/// A crash after two chunks, then an object of the right size at the third chunk's key: with
/// no SHA-256 (a server that kept the body of a PUT whose client went away) or with other
/// bytes (a non-reproducible raw send). The next run must start a new attempt, not stick.
async fn a_stray_object_at_the_next_chunk_key_starts_a_new_attempt(meta: Option<&str>) {
    let (_s, _p, bed) = s3s_bed(false).await;
    // One PUT at a time, so that the third chunk's key is the next one and still free.
    bed.set_target("max_parallel_puts", "1");
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into())]));
    let st = bed.state();
    assert_eq!(st["pending"]["chunks"].as_array().unwrap().len(), 2);
    let key = pending_chunk_key(&st, 2);
    let stray = vec![7u8; CHUNK as usize];
    let mut put = bed
        .client
        .put_object()
        .bucket(&bed.bucket)
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from(stray.clone()));
    if let Some(sha) = meta {
        put = put.metadata(zibd::s3::META_SHA256, sha);
    }
    put.send().await.unwrap();
    for run in 0..2 {
        let out = bed.backup(&[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "run {run} after the stray object failed: {err}");
        if run == 0 {
            assert!(err.contains("new attempt"), "{err}");
        }
    }
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0].attempt, 1, "the first backup went on as attempt 1");
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    assert_eq!(bed.get(&key).await, stray, "the stray object is never overwritten");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_chunk_without_a_sha256_starts_a_new_attempt() {
    a_stray_object_at_the_next_chunk_key_starts_a_new_attempt(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_chunk_with_other_bytes_starts_a_new_attempt() {
    let other = zibd::s3::sha256_hex(&[7u8; CHUNK as usize]);
    a_stray_object_at_the_next_chunk_key_starts_a_new_attempt(Some(&other)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_send_lets_the_put_in_flight_finish() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    // 200000 bytes are 3 chunks and a tail. With 2 chunks spooled at most, the reader reaches
    // the end (and the failure) while the third chunk's PUT is on its way: delay that one.
    // (The default spools 5: the reader could then fail before the uploader took any chunk,
    // which a loaded machine showed: no PUT at all.)
    bed.set_target("max_spooled_chunks", "2");
    let delay = std::time::Duration::from_secs(3);
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::Delay(delay)).nth(3));
    let err = failed(&bed.backup(&[("FAKE_ZFS_FAIL_AFTER", "200000".into())]));
    assert!(err.contains("send broke off"), "{err}");
    let puts: Vec<_> = proxy.requests().into_iter().filter(|r| r.method == "PUT").collect();
    assert!(!puts.is_empty());
    for r in &puts {
        assert_eq!(
            r.outcome,
            Some(zib_testkit::Outcome::Forwarded(200)),
            "a PUT was dropped half-way: {r:?}"
        );
    }
    // Every stored chunk is recorded, so the next run neither probes nor re-sends it.
    let recorded = recorded_chunks(&bed.state());
    assert_eq!(recorded, puts.len(), "{puts:?}");
    assert_eq!(bed.keys().await.len(), recorded);
}

/// Issue 11 #2: a stream with more chunks than a manifest may list is refused before anything
/// is uploaded, and the next run starts afresh (with the chunk size the config names then).
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_too_large_for_its_chunk_size_is_refused_before_uploading() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let estimate = [("FAKE_ZFS_ESTIMATE", (CHUNK * 50_000 + 1).to_string())];
    let err = failed(&bed.backup(&estimate));
    assert!(
        err.contains("more than a backup in chunks of 65536 bytes can hold")
            && err.contains("at most 50000 chunks")
            && err.contains("raise chunk_size for this dataset to at least 65537 bytes"),
        "{err}"
    );
    assert!(bed.keys().await.is_empty(), "nothing uploaded: {:?}", bed.keys().await);
    assert!(bed.state()["pending"].is_null(), "the backup that cannot commit is abandoned");
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

/// Every file below `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// `zibd backup DATASET` started with every PUT held at the proxy for 120 s (stderr piped).
fn backup_with_puts_held(bed: &Bed, proxy: &FaultProxy, dataset: &str) -> std::process::Child {
    proxy.add_fault(Fault::new(
        Matcher::put(),
        FaultAction::Delay(std::time::Duration::from_secs(120)),
    ));
    support::zibd_command(&bed.endpoint, &FakeZfs::at(bed.root.join("zfs")))
        .arg("--config")
        .arg(&bed.config)
        .args(["backup", dataset])
        .env("FAKE_ZFS_SIZE", "300000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Issue 11 #10: a backup of tank/vm cleans up after its own earlier runs only, never the
/// spooled chunks of tank/vm.old (whose upload may be running: the daemon runs both at once).
#[tokio::test(flavor = "multi_thread")]
async fn starting_one_dataset_leaves_the_spool_of_a_similarly_named_one_alone() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_datasets(&["tank/vm", "tank/vm.old"]);
    let spool = bed.root.join("spool");
    // tank/vm.old dies while a PUT is held at the proxy: that chunk's spool file stays on disk,
    // as it is while its upload runs (a chunk's file goes only when its PUT has returned, so
    // this holds however fast the reader or the other PUTs are).
    let mut run = backup_with_puts_held(&bed, &proxy, "tank/vm.old");
    let waited = std::time::Instant::now();
    while proxy.peak_in_flight("PUT") == 0 {
        assert!(run.try_wait().unwrap().is_none(), "tank/vm.old's backup ended before a PUT");
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "no PUT reached the proxy in 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    run.kill().unwrap();
    run.wait().unwrap();
    let spooled = files_under(&spool);
    assert!(!spooled.is_empty(), "the held PUT's chunk is still spooled");
    ok(&bed.zibd(&["backup", "tank/vm"], &[]));
    let left = files_under(&spool);
    for f in &spooled {
        assert!(left.contains(f), "starting tank/vm deleted {}: left {left:?}", f.display());
    }
    // tank/vm.old's own next run removes its leftovers, and finishes.
    ok(&bed.zibd(&["backup", "tank/vm.old"], &[]));
    assert!(files_under(&spool).is_empty(), "{:?}", files_under(&spool));
}

/// A run that stops leaves no chunk file behind, neither the one whose PUT was in flight nor
/// those read ahead and still queued for the uploader (dropped with it): each spooled chunk's
/// file goes with the chunk, so only a crash leaves files for the next run to clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_leaves_no_spooled_chunk_behind() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("max_parallel_puts", "1");
    bed.set_target("max_spooled_chunks", "3");
    let spool = bed.root.join("spool");
    // The first PUT is held: one chunk in flight, two read ahead and queued, the reader
    // waiting for room.
    let mut run = backup_with_puts_held(&bed, &proxy, "tank/photos");
    let waited = std::time::Instant::now();
    while proxy.peak_in_flight("PUT") == 0 || files_under(&spool).len() < 3 {
        assert!(run.try_wait().unwrap().is_none(), "the backup ended before it was stopped");
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "not 3 chunks spooled with a PUT in flight within 60 s: {:?}",
            files_under(&spool)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(files_under(&spool).len(), 3, "max_spooled_chunks holds");
    // Ctrl-C, as a user at the terminal would.
    let int =
        std::process::Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap();
    assert!(int.success());
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stopped backup does not report success: {err}");
    assert!(files_under(&spool).is_empty(), "left in the spool: {:?}", files_under(&spool));
    assert!(bed.manifests().await.is_empty(), "nothing committed");
    // And the next run goes on from what was stored.
    proxy.clear_faults();
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn full_abandons_an_unfinished_full() {
    // An unfinished full that cannot go on (whatever the cause): `--full` is the user's way out.
    let (_s, _p, bed) = s3s_bed(false).await;
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into())]));
    let old = bed.state()["pending"].clone();
    assert!(old["from"].is_null() && recorded_chunks(&bed.state()) == 2);
    let out = bed.zibd(&["backup", "--full", "tank/photos"], &[]);
    let err = ok(&out);
    assert!(err.contains("abandoning the unfinished full backup"), "{err}");
    let st = bed.state();
    assert!(st["pending"].is_null());
    assert_eq!(st["last"]["seq"], 1);
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].is_full());
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

/// Every manifest under `prefix` in the bed's current bucket.
async fn manifests_under(bed: &Bed, prefix: &str) -> Vec<Manifest> {
    let mut v = Vec::new();
    for (k, _) in bed.keys().await {
        if k.starts_with(prefix) && k.ends_with(".manifest.json") {
            v.push(Manifest::from_json(&k, &bed.get(&k).await).unwrap());
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_bucket_starts_a_new_chain() {
    let (server, _p, mut bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    ok(&bed.backup(&[]));
    let other = server.create_bucket("other").await;
    bed.retarget(&other, "backups");
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("not in s3://"), "the reason is logged: {err}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert!(ms[0].is_full(), "the first backup in a new bucket is a full: {:?}", ms[0].from);
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    // The chain in the new bucket continues from its own full.
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms[1].from.as_ref(), Some(&ms[0].to));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_prefix_starts_a_new_chain() {
    let (_s, _p, mut bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    let bucket = bed.bucket.clone();
    bed.retarget(&bucket, "elsewhere");
    ok(&bed.backup(&[]));
    let ms = manifests_under(&bed, "elsewhere/").await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].is_full(), "{:?}", ms[0].from);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_bucket_starts_a_new_chain() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    ok(&bed.backup(&[]));
    for (k, _) in bed.keys().await {
        bed.client.delete_object().bucket(&bed.bucket).key(&k).send().await.unwrap();
    }
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].is_full(), "{:?}", ms[0].from);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_backup_does_not_follow_the_config_to_another_bucket() {
    let (server, _p, mut bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into())]));
    assert_eq!(recorded_chunks(&bed.state()), 2);
    let other = server.create_bucket("other").await;
    bed.retarget(&other, "backups");
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("abandoning"), "{err}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].is_full());
    // Every chunk the manifest lists is in this bucket: `cat` of them is the stream.
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    for c in &ms[0].chunks {
        assert!(bed.keys().await.iter().any(|(k, _)| k == &c.key), "{} not in {other}", c.key);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_backup_whose_chunks_vanished_starts_a_new_attempt() {
    // An emptied bucket (or a state file written before destinations were recorded, carried to
    // another bucket): the chunks recorded as stored are not there any more.
    let (_s, _p, bed) = s3s_bed(false).await;
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-save:2".into())]));
    for (k, _) in bed.keys().await {
        bed.client.delete_object().bucket(&bed.bucket).key(&k).send().await.unwrap();
    }
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("new attempt"), "{err}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].attempt, 1);
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_server_errors_are_retried() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::slow_down()).nth(2));
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::internal_error()).nth(4));
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::DropResponse).nth(5));
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::DropConnection).nth(7));
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    assert!(proxy.count(&Matcher::put()) >= 9, "retried PUTs are visible at the proxy");
}

/// A stall: the proxy holds the request for an hour before forwarding it.
fn stall() -> FaultAction {
    FaultAction::Delay(std::time::Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_with_an_unfinished_restore_is_not_snapshotted() {
    // `zibd restore run` into tank/photos was interrupted (its record is in the default work
    // dir; one that cannot be read counts as unfinished too).
    let (_s, _p, bed) = s3s_bed(false).await;
    let work = bed.root.join("state/restore");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("restore-tank%2Fphotos.json"), b"{}").unwrap();
    let err = failed(&bed.backup(&[]));
    assert!(err.contains("a restore into tank/photos is unfinished"), "{err}");
    let snaps = std::fs::read_dir(bed.root.join("zfs/snap")).map_or(0, |d| d.count());
    assert_eq!(snaps, 0, "a dataset being restored was snapshotted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_taken_just_before_a_crash_is_adopted() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-snapshot:1".into())]));
    let name = bed.state()["pending"]["to"].as_str().unwrap().to_owned();
    assert!(bed.state()["pending"]["to_guid"].is_null());
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("adopting the snapshot an interrupted run took"), "{err}");
    let ms = bed.manifests().await;
    assert_eq!((ms.len(), ms[1].to.name.as_str()), (2, name.as_str()));
}

/// An interrupted run recorded its snapshot's name but took no snapshot; then a snapshot of
/// that name appears that this backup did not take, with this createtxg and creation time
/// (seconds before now). It must not be adopted.
async fn a_foreign_snapshot_under_the_pending_name_is_not_adopted(txg: u64, age: i64) {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-pending:1".into())]));
    let pending = bed.state()["pending"].clone();
    let name = pending["to"].as_str().unwrap().to_owned();
    assert!(pending["to_guid"].is_null() && pending["from"].is_object(), "{pending}");
    let file = format!("tank%2Fphotos@{name}");
    let created = chrono::Utc::now().timestamp() - age;
    std::fs::write(bed.root.join("zfs/snap").join(&file), format!("4242 {txg} {created}\n"))
        .unwrap();
    std::fs::write(bed.root.join("zfs/data").join(&file), vec![7u8; 1000]).unwrap();
    let err = ok(&bed.backup(&[]));
    assert!(err.contains("not taken for it") && err.contains(&name), "{err}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert_ne!(ms[1].to.guid, "4242", "the foreign snapshot was adopted");
    assert_ne!(ms[1].to.name.as_str(), name);
    assert_eq!(ms[1].from.as_ref(), Some(&ms[0].to));
    assert_eq!(bed.cat_chunks(&ms[1]).await, bed.stream_of(&ms[1].to.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_under_the_pending_name_older_than_the_base_is_not_adopted() {
    // As after the clock went back: the name comes round again, on a snapshot from before the
    // base (the fake's transaction groups count from 101).
    a_foreign_snapshot_under_the_pending_name_is_not_adopted(50, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_under_the_pending_name_made_before_the_backup_was_planned_is_not_adopted() {
    a_foreign_snapshot_under_the_pending_name_is_not_adopted(1_000_000, 3600).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conditional_request_conflict_on_a_put_is_retried() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    // S3's answer when another conditional write to the key is in progress: "try again".
    let conflict = FaultAction::status(
        409,
        "ConditionalRequestConflict",
        "A conflicting conditional operation is currently in progress against this resource. Try again.",
    );
    proxy.add_fault(Fault::new(Matcher::put(), conflict).nth(2));
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    let puts = proxy.requests().into_iter().filter(|r| r.method == "PUT").collect::<Vec<_>>();
    assert_eq!(puts[1].outcome, Some(zib_testkit::Outcome::Injected(409)), "{puts:?}");
    // Parallel PUTs: the retry comes after the PUTs already on their way.
    assert!(
        puts[2..].iter().any(
            |r| r.key == puts[1].key && r.outcome == Some(zib_testkit::Outcome::Forwarded(200))
        ),
        "the PUT that met the conflict was sent again: {puts:?}"
    );
    assert_eq!(puts.len(), 7, "5 chunks, the manifest and one retry: {puts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_put_times_out_and_is_retried() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("request_timeout_secs", "3");
    proxy.add_fault(Fault::new(Matcher::put(), stall()).nth(2));
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
    // 5 chunks and the manifest, and the stalled PUT once more.
    let puts = proxy.requests().into_iter().filter(|r| r.method == "PUT").collect::<Vec<_>>();
    assert_eq!(puts.len(), 7, "{puts:?}");
    assert_ne!(puts[1].outcome, Some(zib_testkit::Outcome::Forwarded(200)), "{puts:?}");
    assert!(
        puts[2..].iter().any(
            |r| r.key == puts[1].key && r.outcome == Some(zib_testkit::Outcome::Forwarded(200))
        ),
        "the stalled PUT was sent again: {puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_that_stalls_every_time_fails_naming_the_operation_and_key() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    bed.set_target("request_timeout_secs", "5");
    bed.set_target("max_attempts", "2");
    proxy.add_fault(Fault::new(Matcher::put(), stall()).always());
    let err = failed(&bed.backup(&[]));
    assert!(
        err.contains("PutObject")
            && err.contains("backups/tank/photos@zib/000001-")
            && err.contains("timed out")
            && err.contains("request_timeout_secs"),
        "{err}"
    );
    // Each chunk PUT in flight (up to max_parallel_puts) made its 2 attempts, each given up.
    let puts = proxy.puts_per_key();
    assert!(!puts.is_empty() && puts.len() <= 4, "{puts:?}");
    assert!(puts.values().all(|&n| n == 2), "each attempt was given up: {puts:?}");
    proxy.clear_faults();
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(bed.cat_chunks(&ms[0]).await, bed.stream_of(&ms[0].to.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_failure_is_a_clear_error_and_state_stays_consistent() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::service_unavailable()).always());
    let err = failed(&bed.backup(&[]));
    assert!(err.contains("PutObject") && err.contains("backups/tank/photos@zib/000001-"), "{err}");
    proxy.clear_faults();
    ok(&bed.backup(&[]));
    assert_eq!(bed.manifests().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_state_is_rebuilt_from_the_catalog() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    std::fs::remove_file(bed.root.join("state/tank%2Fphotos.json")).unwrap();
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1].seq, 2);
    assert_eq!(ms[1].from.as_ref(), Some(&ms[0].to));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_is_refused_while_the_state_is_locked() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let store = zibd::state_store::StateStore::new(bed.root.join("state"));
    let _held = store.lock(&DatasetName::new("tank/photos").unwrap()).unwrap();
    let err = failed(&bed.backup(&[]));
    assert!(
        err.contains(&format!("locked by another zib process (pid {})", std::process::id())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_base_is_explained_and_full_starts_a_new_chain() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, text + "on_broken_chain = \"fail\"\n").unwrap();
    ok(&bed.backup(&[]));
    // Destroy the base snapshot (and there is no bookmark of it before the first prune... the
    // engine made one: remove it too, as an admin might).
    for d in ["zfs/snap", "zfs/book"] {
        for e in std::fs::read_dir(bed.root.join(d)).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    let err = failed(&bed.backup(&[]));
    assert!(err.contains("is gone and has no bookmark") && err.contains("--full"), "{err}");
    assert!(bed.state()["pending"].is_null(), "refused when planning: no snapshot taken");
    assert!(std::fs::read_dir(bed.root.join("zfs/snap")).unwrap().next().is_none());
    // `--full` abandons that incremental and starts a new chain, which restores on its own.
    let out = bed.zibd(&["backup", "--full", "tank/photos"], &[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("full backup #2"));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert!(ms[1].is_full() && ms[1].seq == 2);
    let cat = zib_core::catalog::Catalog::new(DatasetName::new("tank/photos").unwrap(), ms);
    assert_eq!(cat.chain_to(None).unwrap().len(), 1);
}

/// The stand-in zfs's bookmarks of tank/photos (short names) with their GUIDs, oldest first.
fn bookmarks(bed: &Bed) -> Vec<(String, String)> {
    let mut v: Vec<(u64, String, String)> = std::fs::read_dir(bed.root.join("zfs/book"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let line = std::fs::read_to_string(e.path()).unwrap();
            let f: Vec<&str> = line.split_whitespace().collect();
            let short = n.split_once('#').unwrap().1.to_owned();
            (f[1].parse().unwrap(), short, f[0].to_owned())
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n, g)| (n, g)).collect()
}

fn bookmark_file(bed: &Bed, short: &str) -> PathBuf {
    bed.root.join("zfs/book").join(format!("tank%2Fphotos#{short}"))
}

/// Issue 11 #14: a crash between the commit's state save and the bookmark leaves the base
/// without one (here: the bookmark removed, the same state). The next run bookmarks it from
/// its snapshot, so the chain goes on after that snapshot is destroyed.
#[tokio::test(flavor = "multi_thread")]
async fn a_base_a_crash_left_without_a_bookmark_is_bookmarked_by_the_next_run() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    let base = bed.state()["last"]["snapshot"].clone();
    let base_name = base["name"].as_str().unwrap().to_owned();
    std::fs::remove_file(bookmark_file(&bed, &base_name)).unwrap();
    // The next run stops after its first PUT: its start has repaired the base's bookmark.
    let err = failed(&bed.backup(&[("ZIB_FAILPOINT", "after-put:1".into())]));
    assert!(err.contains("had no bookmark"), "{err}");
    assert_eq!(bookmarks(&bed), [(base_name.clone(), base["guid"].as_str().unwrap().to_owned())]);
    // The base snapshot is destroyed meanwhile; the incremental goes on from the bookmark.
    let snap = bed.root.join("zfs/snap").join(format!("tank%2Fphotos@{base_name}"));
    std::fs::remove_file(snap).unwrap();
    ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1].from.as_ref().unwrap().name.as_str(), base_name);
    assert!(ms[1].send_args.contains(&format!("tank/photos#{base_name}")), "{:?}", ms[1].send_args);
}

/// Issue 11 #14: a bookmark with the base's name but another GUID is reported and not used;
/// after each commit only the newest base's bookmark is kept among zib's, and bookmarks zib
/// did not make stay.
#[tokio::test(flavor = "multi_thread")]
async fn bookmarks_are_checked_by_guid_and_only_the_newest_base_keeps_one() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    let base = bed.state()["last"]["snapshot"]["name"].as_str().unwrap().to_owned();
    // Someone else's bookmark, and zib's replaced by one of another snapshot (GUID 7).
    std::fs::write(bookmark_file(&bed, "mine"), "5 1 1700000000\n").unwrap();
    std::fs::write(bookmark_file(&bed, &base), "7 2 1700000000\n").unwrap();
    let err = ok(&bed.backup(&[]));
    assert!(
        err.contains(&format!("bookmark tank/photos#{base} has GUID 7"))
            && err.contains("not trusted"),
        "{err}"
    );
    ok(&bed.backup(&[]));
    let newest = bed.state()["last"]["snapshot"].clone();
    let guid = newest["guid"].as_str().unwrap().to_owned();
    let newest = newest["name"].as_str().unwrap().to_owned();
    assert_eq!(bookmarks(&bed), [("mine".to_owned(), "5".to_owned()), (newest, guid)]);
    // The chain is whole: full, then two incrementals, the second from the snapshot itself
    // (the untrusted bookmark was never sent from).
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 3);
    assert!(ms[1].send_args.contains(&format!("tank/photos@{base}")), "{:?}", ms[1].send_args);
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_archive_chunks_and_standard_manifests_on_moto() {
    let server = MotoServer::start();
    let bucket = server.create_bucket("archive").await;
    let bed = Bed::new(server.endpoint(), server.client(), bucket, "DEEP_ARCHIVE").await;
    ok(&bed.backup(&[]));
    let keys = bed.keys().await;
    assert_eq!(keys.len(), 6);
    for (k, class) in &keys {
        let want = if k.ends_with(".manifest.json") { "STANDARD" } else { "DEEP_ARCHIVE" };
        assert_eq!(class.as_deref().unwrap_or("STANDARD"), want, "{k}");
    }
    // An archived chunk cannot be read without a thaw: the manifest can.
    let chunk = keys.iter().find(|(k, _)| !k.ends_with(".json")).unwrap();
    let e = bed.client.get_object().bucket(&bed.bucket).key(&chunk.0).send().await.unwrap_err();
    assert!(e.into_service_error().is_invalid_object_state());
    assert_eq!(bed.manifests().await.len(), 1);
}

#[test]
fn fake_zfs_is_only_a_fake() {
    // Keeps the stand-in honest about its scope: it must refuse what it does not implement.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(FAKE_ZFS)
        .arg("receive")
        .env("FAKE_ZFS_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = FakeZfs::new().run(&["rollback", "tank/photos@x"]);
    assert!(!out.status.success());
    assert!(Path::new(FAKE_ZFS).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn max_chain_starts_a_new_full_chain_and_the_earlier_chain_stays_restorable() {
    let (_s, _p, bed) = s3s_bed(false).await;
    // The [[dataset]] table is the config's last: these keys are the dataset's.
    let mut cfg = std::fs::read_to_string(&bed.config).unwrap();
    cfg.push_str("max_chain = 3\nrebaseline_ratio = \"off\"\n");
    std::fs::write(&bed.config, cfg).unwrap();
    let mut logs = Vec::new();
    for _ in 0..5 {
        logs.push(ok(&bed.backup(&[])));
    }
    let ms = bed.manifests().await;
    let shape: Vec<(u64, bool)> = ms.iter().map(|m| (m.seq, m.is_full())).collect();
    assert_eq!(shape, vec![(1, true), (2, false), (3, false), (4, true), (5, false)]);
    assert_eq!(ms[1].from.as_ref(), Some(&ms[0].to));
    assert_eq!(ms[2].from.as_ref(), Some(&ms[1].to));
    assert_eq!(ms[4].from.as_ref(), Some(&ms[3].to), "the new chain continues from its full");
    assert!(
        logs[3].contains("starting a new chain") && logs[3].contains("max_chain = 3"),
        "{}",
        logs[3]
    );
    assert!(!logs[2].contains("starting a new chain"), "{}", logs[2]);
    // The state knows where the current chain starts (status shows its length, 2).
    assert_eq!(
        (bed.state()["last"]["seq"].as_u64(), bed.state()["last"]["chain_full_seq"].as_u64()),
        (Some(5), Some(4))
    );

    // Both chains are restorable from the bucket alone: the catalog shows no broken link, and
    // a plan for the earlier chain's newest snapshot reads its full and both incrementals.
    let o = bed.zibd(&["restore", "list"], &[]);
    ok(&o);
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(list.contains("5 backups") && !list.contains("chain broken"), "{list}");
    let snap = ms[2].to.name.to_string();
    let o = bed.zibd(&["restore", "plan", "--snapshot", &snap, "--json"], &[]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seqs: Vec<u64> =
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let o = bed.zibd(&["restore", "plan", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seqs: Vec<u64> =
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_whose_manifest_left_the_bucket_is_not_extended() {
    let (_s, _p, bed) = s3s_bed(false).await;
    ok(&bed.backup(&[]));
    ok(&bed.backup(&[]));
    // The full's manifest is gone (deleted by hand): an incremental on top would be
    // unrestorable, so the next backup starts a new chain.
    let full = bed.manifests().await.remove(0);
    let key = KeyLayout::new("backups", &full.dataset).manifest_key(full.seq, &full.to.name);
    bed.client.delete_object().bucket(&bed.bucket).key(&key).send().await.unwrap();
    let log = ok(&bed.backup(&[]));
    let ms = bed.manifests().await;
    assert_eq!(ms.last().unwrap().seq, 3);
    assert!(ms.last().unwrap().is_full(), "{log}");
    assert!(log.contains("the current chain is broken"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_whole_old_chains_manifest_first_and_resumes_on_moto() {
    let server = MotoServer::start();
    let bucket = server.create_bucket("prune").await;
    let bed = Bed::new(server.endpoint(), server.client(), bucket, "DEEP_ARCHIVE").await;
    let mut cfg = std::fs::read_to_string(&bed.config).unwrap();
    cfg.push_str("max_chain = 2\nrebaseline_ratio = \"off\"\nkeep_chains = 2\n");
    std::fs::write(&bed.config, cfg).unwrap();
    for _ in 0..5 {
        ok(&bed.backup(&[]));
    }
    // Chains #1..#2, #3..#4, #5; each backup is a manifest and 5 chunks.
    let ms = bed.manifests().await;
    let fulls: Vec<u64> = ms.iter().filter(|m| m.is_full()).map(|m| m.seq).collect();
    assert_eq!(fulls, vec![1, 3, 5]);
    let all = bed.keys().await;
    assert_eq!(all.len(), 30);
    let prune = |args: &[&str], env: &[(&str, String)]| {
        bed.zibd(&[&["prune", "tank/photos"], args].concat(), env)
    };
    let json = |o: &Output| -> serde_json::Value {
        ok(o);
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // Everything is seconds old, far below DEEP_ARCHIVE's 180 days: the oldest chain is held,
    // and deleting it now would cost the remaining ~180 days of storage of its 10 chunks:
    // (2 x 300000 bytes + 10 x 32 KiB) / 2^30 GB x $0.00099 x 180 / 30.
    let v = json(&prune(&["--dry-run", "--json"], &[]));
    assert_eq!(v["plan"]["objects"], 0, "{v:#}");
    let chain = &v["plan"]["chains"][0];
    assert_eq!(
        (chain["fate"]["fate"].as_str(), chain["seqs"].clone()),
        (Some("held"), serde_json::json!([1, 2]))
    );
    let charge = chain["fate"]["early_deletion_charge"].as_f64().unwrap();
    let want = (2.0 * 300_000.0 + 10.0 * 32_768.0) / (1u64 << 30) as f64 * 0.00099 * 6.0;
    assert!((charge - want).abs() < want * 1e-4, "{charge} vs {want}");
    assert_eq!(v["plan"]["chains"][1]["fate"]["reason"], "keep_chains");
    assert_eq!(v["plan"]["chains"][2]["fate"]["reason"], "newest_complete");
    let o = prune(&["--dry-run"], &[]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("held") && text.contains("--allow-early-deletion"), "{text}");
    assert_eq!(bed.keys().await, all, "a dry run deletes nothing");

    // With the allowance: 12 objects, newest link first, each manifest before its chunks.
    let v = json(&prune(&["--dry-run", "--allow-early-deletion", "--json"], &[]));
    let keys: Vec<&str> = v["plan"]["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 12);
    assert!(keys[0].ends_with(".manifest.json") && keys[0].contains("/000002-"), "{keys:?}");
    assert!(keys[6].ends_with(".manifest.json") && keys[6].contains("/000001-"), "{keys:?}");
    assert!((v["plan"]["early_deletion_charge"].as_f64().unwrap() - want).abs() < want * 1e-4);

    // Interrupted after two deletions (#2's manifest and one chunk): #1 is still listed and
    // restorable, nothing shows a broken chain.
    let o = prune(&["--allow-early-deletion"], &[("ZIB_FAILPOINT", "after-delete:2".into())]);
    failed(&o);
    assert_eq!(bed.keys().await.len(), 28);
    let o = bed.zibd(&["restore", "list"], &[]);
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(list.contains("4 backups") && !list.contains("chain broken"), "{list}");

    // Run again: the rest goes (#2's orphaned chunks included), and the two kept chains stay
    // restorable.
    let v = json(&prune(&["--allow-early-deletion", "--json"], &[]));
    assert_eq!(v["deleted"], 10, "{v:#}");
    let left = bed.keys().await;
    assert_eq!(left.len(), 18);
    assert!(left.iter().all(|(k, _)| !k.contains("/000001-") && !k.contains("/000002-")));
    let steps = |args: &[&str]| -> Vec<u64> {
        let v = json(&bed.zibd(&[&["restore", "plan", "--json"], args].concat(), &[]));
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(steps(&["--snapshot", ms[3].to.name.as_str()]), vec![3, 4]);
    assert_eq!(steps(&[]), vec![5]);

    // And again: nothing left to do.
    let v = json(&prune(&["--allow-early-deletion", "--json"], &[]));
    assert_eq!((v["deleted"].as_u64(), v["plan"]["objects"].as_u64()), (Some(0), Some(0)));
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Issue 11 #12: the spool holds plaintext chunks of unencrypted datasets: a spool directory
/// others may write to is refused by name, and the one zib uses is 0700, its state files 0600.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_dir_others_can_write_to_is_refused_and_the_spool_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = MotoServer::start();
    let bucket = server.create_bucket("private").await;
    let bed = Bed::new(server.endpoint(), server.client(), bucket, "STANDARD").await;
    let spool = bed.root.join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = bed.backup(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&spool.display().to_string())
            && err.contains("writable by its group or by others"),
        "{err}"
    );
    assert!(bed.keys().await.is_empty(), "nothing was uploaded");

    // Readable by others (a directory made by an older zib): tightened, and the backup runs.
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(&bed.backup(&[]));
    assert_eq!(mode(&spool), 0o700);
    let state = bed.root.join("state");
    assert_eq!(mode(&state.join("tank%2Fphotos.json")), 0o600);
    assert_eq!(mode(&state.join("tank%2Fphotos.lock")), 0o600);
}

/// Issue 12: an idle day (fewer than `min_change` bytes written since zib's last snapshot, by
/// `written@<that snapshot>`, not since a newer foreign one) takes no snapshot and makes zero
/// PUTs; a busier day, `--full` and `min_change = 0` back up.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_day_is_skipped_with_zero_puts_and_no_snapshot() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    ok(&bed.backup(&[]));
    let base = bed.state()["last"]["snapshot"]["name"].as_str().unwrap().to_owned();
    // A failure after it, as a run recorded it: an idle day clears it (nothing is behind).
    {
        let store = zibd::state_store::StateStore::new(bed.root.join("state"));
        let mut l = store.lock(&DatasetName::new("tank/photos").unwrap()).unwrap();
        l.state.stats.last_error = Some("S3 503 SlowDown after 8 attempts".into());
        l.state.stats.last_error_at = Some(chrono::Utc::now());
        l.save().unwrap();
    }
    // Someone else's snapshot, newer than zib's: the change is counted from zib's.
    std::fs::write(bed.root.join("zfs/snap/tank%2Fphotos@theirs"), "9 999 1700000000\n").unwrap();
    let snaps = || std::fs::read_dir(bed.root.join("zfs/snap")).unwrap().count();
    let before = snaps();
    proxy.reset_counts();
    let log = bed.root.join("zfs.log");
    let idle =
        [("FAKE_ZFS_WRITTEN", "65535".to_owned()), ("FAKE_ZFS_LOG", log.display().to_string())];
    let out = bed.backup(&idle);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("skipped (no change)") && stdout.contains("65535 bytes"), "{stdout}");
    assert_eq!(proxy.puts_per_key().len(), 0, "an idle day makes zero PUTs");
    assert_eq!(snaps(), before, "and takes no snapshot");
    let asked = std::fs::read_to_string(&log).unwrap();
    assert!(asked.contains(&format!("written@{base} tank/photos")), "{asked}");
    assert!(bed.state()["pending"].is_null());
    let stats = &bed.state()["stats"];
    assert!(stats["last_error"].is_null() && stats["last_error_at"].is_null(), "{stats:#}");
    assert_eq!(bed.manifests().await.len(), 1);
    // 64 KiB written (the default min_change): backed up.
    ok(&bed.backup(&[("FAKE_ZFS_WRITTEN", "65536".into())]));
    assert_eq!(bed.manifests().await.len(), 2);
    // --full never skips.
    ok(&bed.zibd(&["backup", "--full", "tank/photos"], &[("FAKE_ZFS_WRITTEN", "0".into())]));
    assert_eq!(bed.manifests().await.len(), 3);
    // min_change = 0 never skips.
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, text + "min_change = 0\n").unwrap();
    ok(&bed.backup(&[("FAKE_ZFS_WRITTEN", "0".into())]));
    assert_eq!(bed.manifests().await.len(), 4);
}

/// The stand-in zfs's user holds on tank/photos's snapshots: short name -> tags.
fn holds(bed: &Bed) -> BTreeMap<String, Vec<String>> {
    let dir = bed.root.join("zfs/hold");
    let Ok(entries) = std::fs::read_dir(&dir) else { return BTreeMap::new() };
    entries
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let tags = std::fs::read_to_string(e.path()).unwrap();
            (n.split_once('@').unwrap().1.to_owned(), tags.lines().map(str::to_owned).collect())
        })
        .filter(|(_, t): &(String, Vec<String>)| !t.is_empty())
        .collect()
}

fn fake_zfs(bed: &Bed, args: &[&str]) -> Output {
    FakeZfs::at(bed.root.join("zfs")).run(args)
}

/// Issue 12: the snapshot being sent carries zib's hold (`zib-send`) from before the send
/// until its manifest is committed, so it cannot be destroyed mid-stream; a failed run
/// releases it, a crashed run's hold is reused by the resume or released by the next run that
/// abandons that backup, and holds zib did not make stay.
#[tokio::test(flavor = "multi_thread")]
async fn the_snapshot_being_sent_is_held_until_its_commit() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let log = bed.root.join("zfs.log");
    let logged = [("FAKE_ZFS_LOG", log.display().to_string())];
    // Killed after the first chunk's PUT: mid-stream, the snapshot is held.
    let env = [logged[0].clone(), ("ZIB_FAILPOINT", "after-put:1".into())];
    failed(&bed.backup(&env));
    let snap = bed.state()["pending"]["to"].as_str().unwrap().to_owned();
    assert_eq!(holds(&bed), BTreeMap::from([(snap.clone(), vec!["zib-send".to_owned()])]));
    let asked = std::fs::read_to_string(&log).unwrap();
    let (hold, send) = (asked.find("hold zib-send").unwrap(), asked.find("send -w").unwrap());
    assert!(hold < send, "held before the send: {asked}");
    let o = fake_zfs(&bed, &["destroy", &format!("tank/photos@{snap}")]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("being held"));
    // Someone else's hold on it too; the resume reuses zib's and releases only that one.
    fake_zfs(&bed, &["hold", "theirs", &format!("tank/photos@{snap}")]);
    ok(&bed.backup(&[]));
    assert_eq!(bed.state()["last"]["snapshot"]["name"], snap.as_str());
    assert_eq!(holds(&bed), BTreeMap::from([(snap.clone(), vec!["theirs".to_owned()])]));
    fake_zfs(&bed, &["release", "theirs", &format!("tank/photos@{snap}")]);

    // A send that fails: the run ends with its hold released (the backup stays pending).
    failed(&bed.backup(&[("FAKE_ZFS_FAIL_AFTER", "1000".into())]));
    assert!(bed.state()["pending"].is_object());
    assert_eq!(holds(&bed), BTreeMap::new());
    ok(&bed.backup(&[]));
    assert_eq!(holds(&bed), BTreeMap::new());

    // A crash leaves a hold; a `--full` that abandons that backup releases it at its start,
    // so the abandoned snapshot can be pruned.
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-put:1".into())]));
    let abandoned = bed.state()["pending"]["to"].as_str().unwrap().to_owned();
    assert_eq!(holds(&bed).keys().collect::<Vec<_>>(), [&abandoned]);
    ok(&bed.zibd(&["backup", "--full", "tank/photos"], &[]));
    assert_eq!(holds(&bed), BTreeMap::new());
    let o = fake_zfs(&bed, &["destroy", &format!("tank/photos@{abandoned}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn restore_steps(bed: &Bed, args: &[&str]) -> Vec<u64> {
    let o = bed.zibd(&[&["restore", "plan", "--json"], args].concat(), &[]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect()
}

/// Issue 12, chain safety: with on_broken_chain = "full" (the default) a base that is gone
/// with its bookmark, or whose name now has another GUID, makes the next backup a new chain's
/// full, with a log line and a note (status shows it as last_note); an unfinished incremental
/// whose base vanished since is abandoned for one. Each new chain restores on its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_base_starts_a_new_chain_by_default_with_a_note() {
    let (_s, _p, bed) = s3s_bed(false).await;
    let base_files = |bed: &Bed| {
        let name = bed.state()["last"]["snapshot"]["name"].as_str().unwrap().to_owned();
        let snap = bed.root.join("zfs/snap").join(format!("tank%2Fphotos@{name}"));
        (name.clone(), snap, bookmark_file(bed, &name))
    };
    ok(&bed.backup(&[]));
    // Gone: snapshot and bookmark destroyed.
    let (b1, snap, book) = base_files(&bed);
    std::fs::remove_file(snap).unwrap();
    std::fs::remove_file(book).unwrap();
    let o = bed.backup(&[]);
    let err = ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let said = format!(
        "the base of the next incremental, tank/photos@{b1}, is gone and has no bookmark: started a new chain with a full backup (on_broken_chain = \"full\")"
    );
    assert!(out.contains("full backup #2") && out.contains(&format!("note: {said}")), "{out}");
    assert!(err.contains(&said), "{err}");
    assert_eq!(restore_steps(&bed, &[]), vec![2]);

    // Another GUID under the base's name (the snapshot re-made by hand), no bookmark.
    ok(&bed.backup(&[]));
    let (b3, snap, book) = base_files(&bed);
    std::fs::write(&snap, "99 9999 1700000000\n").unwrap();
    std::fs::remove_file(book).unwrap();
    let o = bed.backup(&[]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("full backup #4")
            && out.contains(&format!("tank/photos@{b3}, exists only with another GUID (99)")),
        "{out}"
    );
    assert_eq!(restore_steps(&bed, &[]), vec![4]);

    // An incremental interrupted mid-upload whose base then vanishes: abandoned, and the
    // next run sends a full instead.
    failed(&bed.backup(&[("ZIB_FAILPOINT", "after-put:1".into())]));
    assert!(bed.state()["pending"]["from"].is_object());
    let (_, snap, book) = base_files(&bed);
    std::fs::remove_file(snap).unwrap();
    std::fs::remove_file(book).unwrap();
    let o = bed.backup(&[]);
    let err = ok(&o);
    assert!(err.contains("abandoning it to start a new chain"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("full backup #5"));
    assert_eq!(restore_steps(&bed, &[]), vec![5]);
    // The earlier chains are untouched and restore too.
    let ms = bed.manifests().await;
    let fulls: Vec<u64> = ms.iter().filter(|m| m.is_full()).map(|m| m.seq).collect();
    assert_eq!(fulls, vec![1, 2, 4, 5]);
    assert_eq!(restore_steps(&bed, &["--snapshot", ms[2].to.name.as_str()]), vec![2, 3]);
}

/// Issue 12: the re-baseline decision reads the current chain from the local state's cache,
/// not from the bucket (zero manifest GETs), while the cache ends with the newest backup and
/// every link is listed; without a cache it reads each link once and keeps it again.
#[tokio::test(flavor = "multi_thread")]
async fn the_rebaseline_decision_reads_the_chain_from_the_local_cache() {
    let (_s, proxy, bed) = s3s_bed(true).await;
    let proxy = proxy.unwrap();
    let text = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(&bed.config, text + "max_chain = 5\nrebaseline_ratio = \"off\"\n").unwrap();
    let manifest_gets = || proxy.count(&Matcher::get().path_contains(".manifest.json"));
    for _ in 0..3 {
        ok(&bed.backup(&[]));
    }
    proxy.reset_counts();
    ok(&bed.backup(&[]));
    assert_eq!(manifest_gets(), 0, "the chain came from the cache");
    assert_eq!(bed.state()["chain"]["keys"].as_array().unwrap().len(), 4);
    // A state without the cache (an older file): the chain is read from the bucket, once.
    let file = bed.root.join("state/tank%2Fphotos.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    st.as_object_mut().unwrap().remove("chain").unwrap();
    std::fs::write(&file, serde_json::to_vec(&st).unwrap()).unwrap();
    proxy.reset_counts();
    ok(&bed.backup(&[]));
    assert_eq!(manifest_gets(), 4, "one GET per link of the chain");
    assert_eq!(bed.state()["chain"]["summary"]["incremental_sizes"].as_array().unwrap().len(), 4);
    // The chain holds 5 streams: the next backup starts a new one, decided from the cache.
    proxy.reset_counts();
    let out = bed.backup(&[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("full backup #6"));
    assert_eq!(manifest_gets(), 0);
    assert_eq!(bed.state()["chain"]["keys"].as_array().unwrap().len(), 1);
}

/// Issue 17: a bucket holding keys zib did not write (another tool's file, a junk
/// `.manifest.json`, a real manifest copied under a key with `..` and under another seq, and a
/// well-formed manifest at a zib key that names another tool's object as its chunk) is never
/// acted upon: restore lists and plans the real backups only, prune deletes nothing and names
/// the object it cannot account for, the next backup continues the real chain, and every
/// foreign object keeps its bytes. Before `Manifest::check_key`, the last one passed for the
/// newest backup: restore planned it, and prune (keep_chains = 1) would have deleted the real
/// newest chain.
#[tokio::test(flavor = "multi_thread")]
async fn keys_zib_did_not_write_are_never_acted_upon() {
    let server = MotoServer::start();
    let bucket = server.create_bucket("hostile").await;
    let bed = Bed::new(server.endpoint(), server.client(), bucket, "STANDARD").await;
    let mut cfg = std::fs::read_to_string(&bed.config).unwrap();
    cfg.push_str("max_chain = 2\nrebaseline_ratio = \"off\"\nkeep_chains = 1\n");
    std::fs::write(&bed.config, cfg).unwrap();
    for _ in 0..3 {
        ok(&bed.backup(&[]));
    }
    // Chains #1..#2 and #3.
    let ms = bed.manifests().await;
    assert_eq!(
        ms.iter().map(|m| (m.seq, m.is_full())).collect::<Vec<_>>(),
        [(1, true), (2, false), (3, true)]
    );
    let layout = KeyLayout::new("backups", &ms[0].dataset);
    let real_newest = layout.manifest_key(3, &ms[2].to.name);
    let newest_bytes = bed.get(&real_newest).await;

    let other = format!("{}rclone/photos.tar", layout.root());
    let other_bytes = vec![7u8; 300];
    let mut hostile = ms[0].clone();
    hostile.seq = 4;
    hostile.to = zib_core::manifest::SnapRef {
        name: SnapName::new("zib-20991231T000000Z").unwrap(),
        guid: "4242".into(),
    };
    hostile.committed_at = ms[2].committed_at + chrono::Duration::days(1);
    hostile.stream_size = 300;
    hostile.stream_sha256 = support::catalog::sha(&other_bytes);
    hostile.chunks = vec![zib_core::manifest::ChunkRecord::new(
        other.clone(),
        300,
        support::catalog::sha(&other_bytes),
    )];
    let foreign: Vec<(String, Vec<u8>)> = vec![
        (other.clone(), other_bytes.clone()),
        (format!("{}notes.manifest.json", layout.root()), b"not a manifest".to_vec()),
        (
            format!(
                "{}../tank/photos@zib/{}",
                layout.root(),
                real_newest.rsplit('/').next().unwrap()
            ),
            newest_bytes.clone(),
        ),
        (layout.manifest_key(9, &ms[2].to.name), newest_bytes.clone()),
        (layout.manifest_key(4, &hostile.to.name), hostile.to_json()),
    ];
    for (k, b) in &foreign {
        zib_testkit::put_bytes(&bed.client, &bed.bucket, k, b.clone()).await;
    }
    let before = bed.keys().await;
    for (k, _) in &foreign {
        assert!(before.iter().any(|(l, _)| l == k), "the server keeps {k} as it is");
    }
    let json = |o: &Output| -> serde_json::Value {
        ok(o);
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // Restore sees the three real backups; the newest is #3.
    let v = json(&bed.zibd(&["restore", "list", "--json"], &[]));
    let listed: Vec<u64> = v["datasets"][0]["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2, 3], "{v:#}");
    let v = json(&bed.zibd(&["restore", "plan", "--json"], &[]));
    let steps: Vec<u64> =
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3], "{v:#}");

    // Prune cannot account for what is at zib's keys: it deletes nothing and says which.
    for args in [&["--dry-run"][..], &[]] {
        let err = failed(&bed.zibd(&[&["prune", "tank/photos"], args].concat(), &[]));
        assert!(err.contains("backups/tank/photos@zib/000004-zib-20991231T000000Z"), "{err}");
        assert_eq!(bed.keys().await, before, "prune {args:?} deleted something");
    }

    // The next backup continues the real chain #3 (max_chain 2), after every listed seq.
    let log = ok(&bed.backup(&[]));
    assert!(log.contains("not a manifest of zib's, passed over"), "{log}");
    assert!(!log.contains("behind the catalog"), "{log}");
    let fourth = bed
        .keys()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.ends_with(".manifest.json")
                && !before.iter().any(|(b, _)| b == k)
                && layout.parse_manifest_key(k).is_some()
        })
        .collect::<Vec<_>>();
    assert_eq!(fourth.len(), 1, "{fourth:?}");
    let m = Manifest::from_json(&fourth[0], &bed.get(&fourth[0]).await).unwrap();
    assert_eq!((m.seq, m.from.as_ref()), (10, Some(&ms[2].to)), "{m:#?}");
    let v = json(&bed.zibd(&["restore", "plan", "--json"], &[]));
    let steps: Vec<u64> =
        v["plan"]["steps"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 10], "{v:#}");
    for (k, b) in &foreign {
        assert_eq!(&bed.get(k).await, b, "{k} changed");
    }
}
