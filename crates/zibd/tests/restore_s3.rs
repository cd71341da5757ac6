//! Host tests of `zibd restore` against moto (archive classes, RestoreObject, slow thaws), with
//! a catalog written straight through the S3 API and a stand-in `zfs` (ZIB_ZFS_BIN) that
//! writes what `zfs receive` gets to files. The real-ZFS proof is tests/guest/restore.rs.

use std::{path::Path, process::Output};

use zib_core::{DatasetName, KeyLayout, StorageClass, pricing::Pricing};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer, put_bytes};

mod support;
use support::{FakeZfs, catalog::*};

/// Runs `zibd restore ARGS` with no config file and the test credentials.
fn zibd(endpoint: &str, zfs: &FakeZfs, args: &[&str]) -> Output {
    let mut c = support::zibd_command(endpoint, zfs);
    c.arg("--config").arg("/nonexistent/zibd.toml").arg("restore").args(args);
    c.env("ZIB_LOG", "info");
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Which chunks of the first stream the restore record (in `work`, for `target` as its file
/// name has it) says were handed to `zfs receive`.
fn received_flags(work: &Path, target: &str) -> Vec<bool> {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.join(format!("restore-{target}.json"))).unwrap(),
    )
    .unwrap();
    let chunks = rec["chunks"][0].as_array().unwrap();
    chunks.iter().map(|c| c["received"].as_bool().unwrap()).collect()
}

fn bucket_args<'a>(bucket: &'a str, endpoint: &'a str) -> Vec<&'a str> {
    vec!["--bucket", bucket, "--prefix", PREFIX, "--endpoint", endpoint, "--region", "us-east-1"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_plan_read_the_catalog_from_the_bucket_alone() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rlist").await;
    let ms = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    seed_home(&client, &bucket).await;
    let ep = moto.endpoint();
    let zfs = FakeZfs::new();
    let b = bucket_args(&bucket, ep);

    let o = zibd(ep, &zfs, &[&["list"], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for s in [
        "tank/photos",
        "tank/home",
        "zib-20261101T000000Z",
        "zib-20261103T000000Z",
        "incremental from zib-20261102T000000Z",
        "DEEP_ARCHIVE",
        "STANDARD",
        "full",
    ] {
        assert!(out.contains(s), "{s} missing from:\n{out}");
    }

    let o = zibd(ep, &zfs, &[&["list", "--json", "--dataset", "tank/photos"], &b[..]].concat());
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["datasets"].as_array().unwrap().len(), 1);
    let listed: Vec<&str> = v["datasets"][0]["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["to"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["zib-20261101T000000Z", "zib-20261102T000000Z", "zib-20261103T000000Z"]);
    assert_eq!(
        v["datasets"][0]["manifests"][2]["chunks"].as_array().unwrap().len(),
        ms[2].chunks.len()
    );

    // Several datasets: plan must be told which.
    let o = zibd(ep, &zfs, &[&["plan"], &b[..]].concat());
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("several datasets") && text(&o).1.contains("--dataset"),
        "{}",
        text(&o).1
    );

    // The plan of an older snapshot: two streams, 5 chunks to thaw, quotes from the table.
    let o = zibd(
        ep,
        &zfs,
        &[
            &[
                "plan",
                "--dataset",
                "tank/photos",
                "--snapshot",
                "zib-20261102T000000Z",
                "--days",
                "3",
                "--json",
            ],
            &b[..],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total_objects"], 6);
    assert_eq!(v["thaw_objects"], 6);
    assert_eq!(v["total_bytes"], 4700);
    assert_eq!(v["plan"]["steps"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["plan"]["steps"][1]["manifest_key"],
        "backups/tank/photos@zib/000002-zib-20261102T000000Z.manifest.json"
    );
    let p = Pricing::default();
    let gb = 4700.0 / (1u64 << 30) as f64;
    let tiers = v["quote"]["tiers"].as_array().unwrap();
    let bulk = tiers.iter().find(|t| t["tier"] == "bulk").unwrap();
    let std = tiers.iter().find(|t| t["tier"] == "standard").unwrap();
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-15;
    assert!(close(&bulk["retrieval"], gb * p.bulk_retrieval_per_gb), "{bulk}");
    assert!(close(&bulk["restore_requests"], 6.0 / 1000.0 * 0.025), "{bulk}");
    assert!(close(&bulk["restored_copy"], gb * 0.023 * 3.0 / 30.0), "{bulk}");
    assert!(close(&std["retrieval"], gb * 0.02), "{std}");
    assert!(close(&std["restore_requests"], 6.0 / 1000.0 * 0.10), "{std}");
    assert_eq!(
        (bulk["ready_within_hours"].as_u64(), std["ready_within_hours"].as_u64()),
        (Some(48), Some(12))
    );
    assert_eq!(ms[1].chunks.len() + ms[0].chunks.len(), 6);

    // Human output names the tiers and their times.
    let o = zibd(ep, &zfs, &[&["plan", "--dataset", "tank/photos"], &b[..]].concat());
    let (out, _) = text(&o);
    assert!(
        out.contains("3 streams")
            && out.contains("within 48 h")
            && out.contains("within 12 h")
            && out.contains("7 objects"),
        "{out}"
    );

    // No catalog under another prefix.
    let o =
        zibd(ep, &zfs, &["list", "--bucket", &bucket, "--prefix", "elsewhere", "--endpoint", ep]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no zib catalog under s3://"), "{}", text(&o).1);
    // No bucket and no config.
    let o = zibd(ep, &zfs, &["list"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--bucket"), "{}", text(&o).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_thaw_is_requested_once_per_chunk_polled_and_received_in_order() {
    // A private moto: the slow-restore setting is server-wide.
    let moto = MotoServer::spawn();
    let client = moto.client();
    let bucket = moto.create_bucket("rthaw").await;
    let chain = chain3();
    seed(&client, &bucket, "tank/photos", &chain, StorageClass::DeepArchive).await;
    moto.set_restore_transition_manual(4);
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap();
    let b = bucket_args(&bucket, &ep);
    let o = zibd(
        &ep,
        &zfs,
        &[
            &[
                "run",
                "--to",
                "pool/restored",
                "--work-dir",
                wd,
                "--poll-initial-secs",
                "0.05",
                "--poll-max-secs",
                "0.2",
                "--days",
                "2",
            ],
            &b[..],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // Every stream, in order, byte for byte, each into its own receive.
    let got = zfs.received();
    assert_eq!(got.len(), 3, "{}", zfs.calls());
    for (g, b) in got.iter().zip(&chain) {
        assert!(g == &b.data, "stream {} differs", b.snap);
    }
    let calls = zfs.calls();
    assert_eq!(
        calls.lines().filter(|l| l.starts_with("receive -s -u -x sharenfs -x sharesmb -x mountpoint -o canmount=noauto pool/restored")).count(),
        3,
        "{calls}"
    );
    // One RestoreObject per chunk (9 chunks), none twice; several HEAD polls per chunk.
    let restores = proxy.count(&Matcher::post().query_contains("restore"));
    assert_eq!(restores, 4 + 2 + 1);
    assert!(out.contains("7 thaw requests sent"), "{out}");
    let polls: u64 =
        out.split(" polls").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(polls > 7, "expected several polls per chunk, got {polls}: {out}");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.path().join("restore-pool%2Frestored.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["steps_received"], 3);
    assert!(rec["finished_at"].is_string());
    for c in rec["chunks"].as_array().unwrap().iter().flat_map(|s| s.as_array().unwrap()) {
        assert_eq!(
            (c["thaw_requests"].as_u64(), c["received"].as_bool()),
            (Some(1), Some(true)),
            "{c}"
        );
    }
    // The restored copies exist for 2 days (moto reports the expiry).
    let h = client
        .head_object()
        .bucket(&bucket)
        .key(rec["plan"]["steps"][0]["chunks"][0]["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(h.restore().unwrap().contains("ongoing-request=\"false\""), "{:?}", h.restore());

    // The same command again (as after a run killed once it had recorded the end): while the
    // target does not hold the snapshot by GUID it is not this restore's, and is refused;
    // once it does, the restore is reported done and nothing is downloaded or received again.
    let again =
        || zibd(&ep, &zfs, &[&["run", "--to", "pool/restored", "--work-dir", wd], &b[..]].concat());
    let o = again();
    assert!(text(&o).1.contains("pool/restored already exists"), "{}", text(&o).1);
    let snap_file = zfs.file("snap", &format!("pool/restored@{}", chain[2].snap));
    std::fs::write(&snap_file, "999 500 1700000000\n").unwrap();
    let o = again();
    assert!(text(&o).1.contains("pool/restored already exists"), "other GUID: {}", text(&o).1);
    std::fs::write(&snap_file, format!("{} 500 1700000000\n", chain[2].guid)).unwrap();
    let gets = proxy.requests().len();
    let o = again();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("nothing was done again"), "{out}");
    assert_eq!(zfs.received().len(), 3, "no receive again: {}", zfs.calls());
    let chunk_gets = proxy
        .requests()
        .iter()
        .skip(gets)
        .filter(|r| r.method == "GET" && r.path.contains("/a00/"))
        .count();
    assert_eq!(chunk_gets, 0, "no chunk downloaded again");

    // Without the record: the target exists, and is not known to be this restore's.
    std::fs::remove_file(work.path().join("restore-pool%2Frestored.json")).unwrap();
    let o =
        zibd(&ep, &zfs, &[&["run", "--to", "pool/restored", "--work-dir", wd], &b[..]].concat());
    assert!(!o.status.success());
    assert!(text(&o).1.contains("pool/restored already exists"), "{}", text(&o).1);
    moto.unset_restore_transition();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_caught_before_zfs_receive_and_named() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rcorrupt").await;
    let chain = chain3();
    let ms = seed(&client, &bucket, "tank/photos", &chain, StorageClass::Standard).await;
    // Replace chunk 2 of the full stream with wrong bytes of the same size.
    let bad_key = ms[0].chunks[2].key.clone();
    put_bytes(&client, &bucket, &bad_key, vec![0x5a; CHUNK as usize]).await;
    let ep = moto.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let b = bucket_args(&bucket, ep);
    let o = zibd(
        ep,
        &zfs,
        &[
            &[
                "run",
                "--to",
                "pool/r",
                "--work-dir",
                work.path().to_str().unwrap(),
                "--parallel",
                "3",
            ],
            &b[..],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains(&format!("chunk s3://{bucket}/{bad_key} is corrupt"))
            && err.contains("SHA-256"),
        "{err}"
    );
    // The two good chunks before it were verified and handed to zfs receive, in order; the
    // bad one never was.
    assert_eq!(received_flags(work.path(), "pool%2Fr"), [true, true, false, false]);
    // The receive was stopped (killed, not given an end of input) when the bad chunk was found,
    // so it read at most those two chunks: what it got is a prefix of them, never a bad byte.
    let got = zfs.received();
    assert!(got.len() <= 1, "{} receives", got.len());
    let good = &chain[0].data[..2 * CHUNK as usize];
    assert!(got.first().is_none_or(|g| good.starts_with(g)), "receive got other bytes");
    assert!(!zfs.calls().contains("receive -A"), "{}", zfs.calls());
    // No spool file is left with the bad bytes.
    let spool: Vec<_> = std::fs::read_dir(work.path().join("restore-spool")).unwrap().collect();
    assert!(spool.is_empty(), "{spool:?}");

    // A missing chunk is named too.
    client.delete_object().bucket(&bucket).key(&bad_key).send().await.unwrap();
    let o = zibd(
        ep,
        &zfs,
        &[&["run", "--to", "pool/r2", "--work-dir", work.path().to_str().unwrap()], &b[..]]
            .concat(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains(&format!("chunk s3://{bucket}/{bad_key} is missing")),
        "{}",
        text(&o).1
    );
}

/// Issue 11 #7: every chunk matches its own SHA-256 but the manifest's whole-stream SHA-256
/// does not: the stream's last chunk (which carries its end) never reaches `zfs receive`, so
/// the receive cannot commit a stream the manifest does not describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_hash_mismatch_holds_back_the_last_chunk() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rwhole").await;
    let chain = chain3();
    let ms = seed(&client, &bucket, "tank/photos", &chain[..1], StorageClass::Standard).await;
    let mut m = ms[0].clone();
    m.stream_sha256 = sha(b"another stream");
    let layout = KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap());
    put_bytes(&client, &bucket, &layout.manifest_key(1, &m.to.name), m.to_json()).await;
    let ep = moto.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let b = bucket_args(&bucket, ep);
    let wd = work.path().to_str().unwrap();
    let o = zibd(ep, &zfs, &[&["run", "--to", "pool/r", "--work-dir", wd], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("the stream's SHA-256 is"), "{err}");
    assert_eq!(received_flags(work.path(), "pool%2Fr"), [true, true, true, false]);
    let got = zfs.received();
    assert!(got.len() <= 1, "{} receives", got.len());
    let all_but_last = &chain[0].data[..3 * CHUNK as usize];
    assert!(got.first().is_none_or(|g| all_but_last.starts_with(g)), "receive got the end");
    let spool: Vec<_> = std::fs::read_dir(work.path().join("restore-spool")).unwrap().collect();
    assert!(spool.is_empty(), "{spool:?}");
}

/// The chunk files in a restore's spool (under `work`), with their sizes.
fn spooled(work: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(work.join("restore-spool")) else { return out };
    for d in dirs.flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".chunk") {
                out.push((name, f.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    out
}

/// Issue 14: while a chunk is being fed to a `zfs receive` that does not read, the next
/// chunks still download (the link is not idle while the receive works), and the spool holds
/// at most `--parallel` + 1 chunk files all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_go_on_while_a_chunk_is_fed_within_the_spool_bound() {
    // Chunks larger than the pipe and the sockets' buffers together: a download that is not
    // driven while chunk 0 is fed cannot finish.
    const BIG: u64 = 16 << 20;
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("roverlap").await;
    let chain = [Backup {
        snap: "zib-20261101T000000Z",
        guid: "111",
        data: send_stream(9, 4 * BIG as usize, 111, 0),
    }];
    seed_chunked(&client, &bucket, "tank/photos", &chain, StorageClass::Standard, BIG).await;
    let ep = moto.endpoint();
    let zfs = FakeZfs::new();
    zfs.pause_receive(true);
    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap();
    let mut c = support::zibd_command(ep, &zfs);
    c.arg("--config").arg("/nonexistent/zibd.toml").arg("restore");
    c.args(
        [
            &["run", "--to", "pool/r", "--work-dir", wd, "--parallel", "2"],
            &bucket_args(&bucket, ep)[..],
        ]
        .concat(),
    );
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();

    // Chunk 0 goes to the paused receive; chunks 1 and 2 must arrive whole meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut most = 0;
    let ahead = loop {
        let files = spooled(work.path());
        most = most.max(files.len());
        let whole: Vec<&String> = files.iter().filter(|(_, n)| *n == BIG).map(|(f, _)| f).collect();
        if whole.iter().any(|f| f.ends_with("00000001.chunk"))
            && whole.iter().any(|f| f.ends_with("00000002.chunk"))
        {
            break files;
        }
        if std::time::Instant::now() > deadline {
            zfs.pause_receive(false);
            let o = child.wait_with_output().unwrap();
            panic!(
                "chunks 1 and 2 did not download while chunk 0 was fed: {files:?}\n{}",
                text(&o).1
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Held there (the receive still reads nothing): chunk 3 waits for a free place.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let files = spooled(work.path());
    most = most.max(files.len());
    assert!(!files.iter().any(|(f, _)| f.ends_with("00000003.chunk")), "{files:?} (was {ahead:?})");

    zfs.pause_receive(false);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        most = most.max(spooled(work.path()).len());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    support::ok(&o);
    assert!(most <= 3, "{most} chunk files at once with --parallel 2");
    assert_eq!(zfs.received(), [chain[0].data.clone()]);
    assert!(spooled(work.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_broken_chain_and_restore_object_denied() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rerrors").await;
    let ms = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    proxy.add_fault(
        Fault::new(
            Matcher::post().query_contains("restore"),
            FaultAction::status(403, "AccessDenied", "Access Denied"),
        )
        .always(),
    );
    let ep = proxy.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap();
    let b = bucket_args(&bucket, &ep);
    let o = zibd(
        &ep,
        &zfs,
        &[&["run", "--to", "pool/r", "--work-dir", wd, "--tier", "standard"], &b[..]].concat(),
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("may not thaw archived objects") && err.contains("s3:RestoreObject"),
        "{err}"
    );
    assert!(zfs.received().is_empty());
    // The refused restore is recorded; running it again with another snapshot is refused clearly.
    let o = zibd(
        &ep,
        &zfs,
        &[
            &["run", "--to", "pool/r", "--work-dir", wd, "--snapshot", "zib-20261101T000000Z"],
            &b[..],
        ]
        .concat(),
    );
    assert!(text(&o).1.contains("unfinished restore"), "{}", text(&o).1);
    // Expedited does not exist for Deep Archive.
    let o = zibd(&ep, &zfs, &[&["run", "--to", "pool/r3", "--tier", "expedited"], &b[..]].concat());
    assert!(text(&o).1.contains("Expedited tier does not exist"), "{}", text(&o).1);
    // A 403 InvalidObjectState on RestoreObject is not a permission problem: it is named as
    // what it is, not as missing s3:RestoreObject rights.
    proxy.clear_faults();
    proxy.add_fault(
        Fault::new(
            Matcher::post().query_contains("restore"),
            FaultAction::status(
                403,
                "InvalidObjectState",
                "The operation is not valid for the object's storage class",
            ),
        )
        .always(),
    );
    let other = tempfile::tempdir().unwrap();
    let o = zibd(
        &ep,
        &zfs,
        &[&["run", "--to", "pool/r4", "--work-dir", other.path().to_str().unwrap()], &b[..]]
            .concat(),
    );
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(
        err.contains("RestoreObject")
            && err.contains("InvalidObjectState")
            && !err.contains("may not thaw"),
        "{err}"
    );

    // Remove the middle manifest: the chain to the newest is broken, the full alone is fine.
    let layout = KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap());
    client
        .delete_object()
        .bucket(&bucket)
        .key(layout.manifest_key(2, &ms[1].to.name))
        .send()
        .await
        .unwrap();
    let o = zibd(&ep, &zfs, &[&["plan"], &b[..]].concat());
    assert!(
        text(&o).1.contains("broken chain") && text(&o).1.contains("zib-20261102T000000Z"),
        "{}",
        text(&o).1
    );
    let o = zibd(&ep, &zfs, &[&["plan", "--snapshot", "zib-20261101T000000Z"], &b[..]].concat());
    assert!(o.status.success(), "{}", text(&o).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thaw_that_expired_before_the_download_is_requested_again() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rexpired").await;
    let chain =
        vec![Backup { snap: "zib-20261101T000000Z", guid: "1", data: send_stream(7, 2500, 1, 0) }];
    let ms = seed(&client, &bucket, "tank/photos", &chain, StorageClass::DeepArchive).await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    // The first GET of chunk 1 finds its restored copy gone, as after an expiry.
    let path = format!("/{bucket}/{}", ms[0].chunks[1].key.replace('@', "%40"));
    proxy.add_fault(
        Fault::new(
            Matcher::get().path_contains(&path),
            FaultAction::status(
                403,
                "InvalidObjectState",
                "The operation is not valid for the object's storage class",
            ),
        )
        .nth(1)
        .times(1),
    );
    let ep = proxy.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let b = bucket_args(&bucket, &ep);
    let o = zibd(
        &ep,
        &zfs,
        &[
            &[
                "run",
                "--to",
                "pool/r",
                "--work-dir",
                work.path().to_str().unwrap(),
                "--poll-initial-secs",
                "0.05",
                "--parallel",
                "1",
            ],
            &b[..],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("expired"), "{err}");
    assert_eq!(zfs.received(), vec![chain[0].data.clone()]);
    // 3 chunks, one of them thawed twice.
    assert_eq!(
        proxy.count(&Matcher::post().query_contains("restore")),
        4,
        "{:?}",
        proxy
            .requests()
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect::<Vec<_>>()
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("restore-pool%2Fr.json")).unwrap())
            .unwrap();
    assert_eq!(rec["chunks"][0][1]["thaw_requests"], 2);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Issue 11 #12: the restore's work directory and spool are 0700 and its files 0600; a work
/// directory others may write to (or another user's) is refused; a symlink planted where a work
/// file is written is never followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_work_files_are_private_and_planted_symlinks_are_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rprivate").await;
    let chain = chain3();
    seed(&client, &bucket, "tank/photos", &chain, StorageClass::Standard).await;
    let ep = moto.endpoint();
    let b = bucket_args(&bucket, ep);
    let tmp = tempfile::tempdir().unwrap();
    let run = |zfs: &FakeZfs, to: &str, wd: &Path| {
        zibd(ep, zfs, &[&["run", "--to", to, "--work-dir", wd.to_str().unwrap()], &b[..]].concat())
    };

    // A shared directory (like /tmp) is refused by name before anything is read.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let zfs = FakeZfs::new();
    let o = run(&zfs, "pool/r", &shared);
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(
        err.contains(&shared.display().to_string())
            && err.contains("writable by its group or by others"),
        "{err}"
    );
    assert!(zfs.calls().is_empty(), "{}", zfs.calls());

    // A fresh one: 0700 directories, 0600 files.
    let wd = tmp.path().join("work");
    let o = run(&zfs, "pool/r", &wd);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(zfs.received().len(), 3);
    assert_eq!((mode(&wd), mode(&wd.join("restore-spool"))), (0o700, 0o700));
    assert_eq!(mode(&wd.join("restore-pool%2Fr.json")), 0o600);
    assert_eq!(mode(&wd.join("restore-pool%2Fr.lock")), 0o600);

    // Symlinks planted at a work file's path (say, before the directory was private): the
    // files they point to stay as they are.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, wd.join("restore-pool%2Fs.json.tmp")).unwrap();
    let zfs = FakeZfs::new();
    let o = run(&zfs, "pool/s", &wd);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(mode(&wd.join("restore-pool%2Fs.json")), 0o600);
    std::os::unix::fs::symlink(&victim, wd.join("restore-pool%2Ft.lock")).unwrap();
    let o = run(&FakeZfs::new(), "pool/t", &wd);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("restore-pool%2Ft.lock"), "{}", text(&o).1);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // Another user's directory (needs root to make one).
    if nix::unistd::geteuid().is_root() {
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let o = run(&FakeZfs::new(), "pool/u", &theirs);
        assert!(!o.status.success());
        assert!(text(&o).1.contains("owned by uid 65534"), "{}", text(&o).1);
    }
}
/// Issue 11 #4: an unreadable, foreign or newer-format manifest under the prefix is skipped
/// with a warning naming its key; list, plan and run go on with what is intact, and a chain
/// that needed a skipped manifest says which one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_is_skipped_by_name_and_the_rest_restores() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rbadmanifest").await;
    let chain = chain3();
    let ms = seed(&client, &bucket, "tank/photos", &chain, StorageClass::Standard).await;
    let put = |key: String, body: Vec<u8>| {
        let client = client.clone();
        let bucket = bucket.clone();
        async move {
            put_bytes(&client, &bucket, &key, body).await;
            key
        }
    };
    let photos = KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap());
    let snap = |s: &str| zib_core::SnapName::new(s).unwrap();
    // A newer format beside the chain, garbage for another dataset, a foreign JSON object, and
    // a manifest whose key says tank/home but whose body describes tank/photos.
    let mut newer = ms[2].clone();
    newer.seq = 4;
    newer.version = 99;
    let newer_key =
        put(photos.manifest_key(4, &snap("zib-20261104T000000Z")), newer.to_json()).await;
    let home = KeyLayout::new(PREFIX, &DatasetName::new("tank/home").unwrap());
    let garbage_key =
        put(home.manifest_key(1, &snap("zib-20261101T000000Z")), b"{not json".to_vec()).await;
    let foreign_key = put(
        home.manifest_key(2, &snap("zib-20261102T000000Z")),
        br#"{"format":"other","version":1}"#.to_vec(),
    )
    .await;
    let misfiled_key =
        put(home.manifest_key(3, &snap("zib-20261103T000000Z")), ms[0].to_json()).await;

    let ep = moto.endpoint();
    let b = bucket_args(&bucket, ep);
    let zfs = FakeZfs::new();
    let o = zibd(ep, &zfs, &[&["list"], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("zib-20261103T000000Z") && out.contains("skipped 4"), "{out}");
    for k in [&newer_key, &garbage_key, &foreign_key, &misfiled_key] {
        assert!(out.contains(k.as_str()), "{k} not named in:\n{out}");
        assert!(err.contains(k.as_str()), "no warning naming {k}:\n{err}");
    }
    assert!(out.contains("newer than this zib"), "{out}");
    let o = zibd(ep, &zfs, &[&["list", "--json"], &b[..]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["skipped"].as_array().unwrap().len(), 4, "{v}");

    let o = zibd(ep, &zfs, &[&["plan", "--dataset", "tank/photos"], &b[..]].concat());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("3 streams"), "{}", text(&o).0);
    // Every manifest of tank/home is bad: the error lists them.
    let o = zibd(ep, &zfs, &[&["plan", "--dataset", "tank/home"], &b[..]].concat());
    assert!(!o.status.success());
    assert!(text(&o).1.contains(&garbage_key) && text(&o).1.contains("skipped"), "{}", text(&o).1);

    let work = tempfile::tempdir().unwrap();
    let run = [
        "run",
        "--dataset",
        "tank/photos",
        "--to",
        "pool/r",
        "--work-dir",
        work.path().to_str().unwrap(),
    ];
    let o = zibd(ep, &zfs, &[&run[..], &b[..]].concat());
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(zfs.received(), chain.iter().map(|c| c.data.clone()).collect::<Vec<_>>());

    // A chain that needed a skipped manifest: the broken-chain error names it.
    let middle = photos.manifest_key(2, &snap("zib-20261102T000000Z"));
    put(middle.clone(), b"\x00\x01 not a manifest".to_vec()).await;
    let o = zibd(ep, &zfs, &[&["plan", "--dataset", "tank/photos"], &b[..]].concat());
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(err.contains("broken chain") && err.contains(&middle), "{err}");
}

/// The `zfs receive` command lines the stand-in zfs saw.
fn receives(zfs: &FakeZfs) -> Vec<String> {
    zfs.calls().lines().filter(|l| l.starts_with("receive ")).map(str::to_owned).collect()
}

/// Issue 11 #11: whatever properties a stream might carry, `zfs receive` keeps them from
/// mounting or sharing anything on the host; only the user's mountpoint is ever set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_keeps_a_streams_mountpoint_canmount_and_shares_off_the_host() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rprops").await;
    seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::Standard).await;
    let ep = moto.endpoint();
    let b = bucket_args(&bucket, ep);
    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap();

    // No mountpoint asked for: it mounts nowhere by itself, not even at the next boot.
    let zfs = FakeZfs::new();
    let o = zibd(ep, &zfs, &[&["run", "--to", "pool/r", "--work-dir", wd], &b[..]].concat());
    assert!(o.status.success(), "{:?}", text(&o));
    let off = "receive -s -u -x sharenfs -x sharesmb -x mountpoint -o canmount=noauto pool/r";
    assert_eq!(receives(&zfs), vec![off; 3]);

    // A mountpoint asked for: set with the full stream, kept (never taken from a stream) by
    // the incrementals.
    let zfs = FakeZfs::new();
    let run = ["run", "--to", "pool/m", "--work-dir", wd, "--mountpoint", "/mnt/m"];
    let o = zibd(ep, &zfs, &[&run[..], &b[..]].concat());
    assert!(o.status.success(), "{:?}", text(&o));
    let inc = "receive -s -u -x sharenfs -x sharesmb -x mountpoint -x canmount pool/m";
    assert_eq!(
        receives(&zfs),
        vec![
            "receive -s -u -x sharenfs -x sharesmb -o mountpoint=/mnt/m -x canmount pool/m",
            inc,
            inc
        ]
    );
}

/// Issue 16: a volume's streams (their begin record says so) are received with none of the
/// mount and share options, which do not apply to volumes and which a `zfs receive` of one
/// dataset's stream refuses ("property 'sharenfs' does not apply to datasets of this type"):
/// with them no volume could be restored. Nothing to mount afterwards, and the report says
/// where its device is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_received_without_the_filesystem_options_and_not_mounted() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rvolume").await;
    let vol = |seed, len, to, from| {
        with_header(volume_begin_record(1, FEATURE_COMPRESSED, to, from), seed, len)
    };
    let chain = [
        Backup { snap: "zib-20261101T000000Z", guid: "111", data: vol(1, 3500, 111, 0) },
        Backup { snap: "zib-20261102T000000Z", guid: "222", data: vol(2, 1200, 222, 111) },
    ];
    seed(&client, &bucket, "tank/vol", &chain, StorageClass::Standard).await;
    let ep = moto.endpoint();
    let b = bucket_args(&bucket, ep);
    let work = tempfile::tempdir().unwrap();
    let zfs = FakeZfs::new();
    let run = [
        "run",
        "--to",
        "pool/v",
        "--work-dir",
        work.path().to_str().unwrap(),
        "--mountpoint",
        "/mnt/v",
    ];
    let o = zibd(ep, &zfs, &[&run[..], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(receives(&zfs), vec!["receive -s -u pool/v"; 2]);
    let received = zfs.received();
    assert_eq!(received, [chain[0].data.clone(), chain[1].data.clone()]);
    assert!(!zfs.calls().lines().any(|l| l.starts_with("mount ")), "{}", zfs.calls());
    assert!(out.contains("pool/v is a volume: its device is /dev/zvol/pool/v"), "{out}");
}

/// Issue 11 #11: a stream is checked against its manifest before any of it reaches `zfs
/// receive`: a `zfs send -R`/`-p` package (which carries properties), a stream that was not
/// sent raw although its manifest says `-w`, or one of another snapshot is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_unlike_its_manifest_is_refused_before_zfs_receive() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rforeign").await;
    let cases = [
        ("tank/package", begin_record(2, FEATURE_COMPRESSED, 1, 0), "zfs send -R or -p"),
        ("tank/notraw", begin_record(1, 0, 1, 0), "not sent raw"),
        ("tank/other", begin_record(1, FEATURE_COMPRESSED, 2, 0), "snapshot GUID 2"),
    ];
    for (ds, header, _) in &cases {
        let chain = [Backup {
            snap: "zib-20261101T000000Z",
            guid: "1",
            data: with_header(header.clone(), 5, 2500),
        }];
        seed(&client, &bucket, ds, &chain, StorageClass::Standard).await;
    }
    let ep = moto.endpoint();
    let b = bucket_args(&bucket, ep);
    for (ds, _, why) in cases {
        let zfs = FakeZfs::new();
        let work = tempfile::tempdir().unwrap();
        let run =
            ["run", "--dataset", ds, "--to", "pool/r", "--work-dir", work.path().to_str().unwrap()];
        let o = zibd(ep, &zfs, &[&run[..], &b[..]].concat());
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{ds}: {out}\n{err}");
        assert!(
            err.contains(why)
                && err.contains("000001-zib-20261101T000000Z")
                && err.contains("nothing of it"),
            "{ds}: {err}"
        );
        assert!(zfs.received().iter().all(Vec::is_empty), "{ds}: bytes reached zfs receive");
    }
}

/// The RestoreObject requests the proxy saw, per object key.
fn thaw_requests(proxy: &FaultProxy) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in proxy.requests() {
        if r.method == "POST" && r.query.contains("restore") {
            *out.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
        }
    }
    out
}

/// Issue 11 #5: a bucket lifecycle rule moved the chunks (and one manifest) to DEEP_ARCHIVE
/// although the manifests say STANDARD. Whether an object needs a thaw is its own class (HEAD),
/// a thaw still in progress is waited for, the archived manifest is thawed too, each object is
/// asked for once, and everything is received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_a_lifecycle_rule_archived_behind_the_manifest_are_thawed_and_waited_for() {
    use aws_sdk_s3::types::StorageClass as S3Class;
    // A private moto: the slow-restore setting is server-wide.
    let moto = MotoServer::spawn();
    let client = moto.client();
    let bucket = moto.create_bucket("rlifecycle").await;
    let chain = chain3();
    let ms = seed(&client, &bucket, "tank/photos", &chain, StorageClass::DeepArchive).await;
    let layout = KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap());
    let mut archived_manifest = String::new();
    for (i, m) in ms.iter().enumerate() {
        let mut m = m.clone();
        m.storage_class = StorageClass::Standard;
        let key = layout.manifest_key(m.seq, &m.to.name);
        let class = if i == 1 { S3Class::DeepArchive } else { S3Class::Standard };
        if i == 1 {
            archived_manifest = key.clone();
        }
        client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .storage_class(class)
            .body(m.to_json().into())
            .send()
            .await
            .unwrap();
    }
    moto.set_restore_transition_manual(4);
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    let b = bucket_args(&bucket, &ep);
    let zfs = FakeZfs::new();

    // plan reads without thawing: it names the archived manifest and says how to go on.
    let o = zibd(&ep, &zfs, &[&["plan"], &b[..]].concat());
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(err.contains(&archived_manifest) && err.contains("restore run` thaws it"), "{err}");

    let work = tempfile::tempdir().unwrap();
    let run = [
        "run",
        "--to",
        "pool/r",
        "--work-dir",
        work.path().to_str().unwrap(),
        "--poll-initial-secs",
        "0.05",
        "--poll-max-secs",
        "0.2",
    ];
    let o = zibd(&ep, &zfs, &[&run[..], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("lifecycle"), "{err}");
    assert_eq!(zfs.received(), chain.iter().map(|c| c.data.clone()).collect::<Vec<_>>());
    // Every chunk and the archived manifest thawed, each asked for exactly once.
    let asked = thaw_requests(&proxy);
    let mut want: Vec<String> =
        ms.iter().flat_map(|m| m.chunks.iter().map(|c| c.key.clone())).collect();
    want.push(archived_manifest);
    want.sort();
    assert_eq!(asked.keys().cloned().collect::<Vec<_>>(), want, "{asked:?}");
    assert!(asked.values().all(|n| *n == 1), "{asked:?}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("restore-pool%2Fr.json")).unwrap())
            .unwrap();
    for c in rec["chunks"].as_array().unwrap().iter().flat_map(|s| s.as_array().unwrap()) {
        assert_eq!(
            (c["archived"].as_bool(), c["thaw_requests"].as_u64()),
            (Some(true), Some(1)),
            "{c}"
        );
    }
    moto.unset_restore_transition();
}

/// Issue 11 #6: when the thawed copies expired during a long restore (here: between a crash
/// and the resume), the first expiry found asks again for every remaining chunk at once, not
/// for each one as its download comes up; and `days` follows the plan's expected download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_thaws_are_asked_for_again_all_at_once() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rrethaw").await;
    let chain = chain3();
    let ms = seed(&client, &bucket, "tank/photos", &chain, StorageClass::DeepArchive).await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    let b = bucket_args(&bucket, &ep);
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let run = [
        "run",
        "--to",
        "pool/r",
        "--work-dir",
        work.path().to_str().unwrap(),
        "--poll-initial-secs",
        "0.05",
        "--parallel",
        "1",
        "--days",
        "1",
    ];
    let args = [&run[..], &b[..]].concat();
    // The first run stops after one chunk, as a crash would.
    let mut c = support::zibd_command(&ep, &zfs);
    c.args(["--config", "/nonexistent/zibd.toml", "restore"]).args(&args);
    let o = c.env("ZIB_FAILPOINT", "restore-after-chunk:1").output().unwrap();
    assert!(!o.status.success(), "{:?}", text(&o));
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("restore-pool%2Fr.json")).unwrap())
            .unwrap();
    assert_eq!(rec["days"], 3, "1 day asked for, but Bulk thaws take up to 48 h");
    // Every thawed copy expires meanwhile: the objects are archived again with no copy.
    let keys: Vec<String> =
        ms.iter().flat_map(|m| m.chunks.iter().map(|c| c.key.clone())).collect();
    for (k, data) in keys.iter().zip(chain.iter().flat_map(|c| c.data.chunks(CHUNK as usize))) {
        client
            .put_object()
            .bucket(&bucket)
            .key(k)
            .storage_class(aws_sdk_s3::types::StorageClass::DeepArchive)
            .body(data.to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let seen = proxy.requests().len();
    let o = zibd(&ep, &zfs, &args);
    assert!(o.status.success(), "{:?}", text(&o));
    let reqs = &proxy.requests()[seen..];
    let is_thaw =
        |r: &&zib_testkit::RecordedRequest| r.method == "POST" && r.query.contains("restore");
    let thaws: Vec<_> = reqs.iter().filter(is_thaw).collect();
    let mut asked: Vec<String> = thaws.iter().map(|r| r.key.clone().unwrap()).collect();
    asked.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(asked, want, "each chunk asked for again once");
    // All of them before the second chunk download of this run.
    let gets: Vec<u64> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.key.as_ref().is_some_and(|k| keys.contains(k)))
        .map(|r| r.id)
        .collect();
    let last_thaw = thaws.iter().map(|r| r.id).max().unwrap();
    assert!(
        gets.len() >= 2 && last_thaw < gets[1],
        "thaws {:?}, gets {gets:?}",
        thaws.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert_eq!(zfs.received().last(), chain.last().map(|c| &c.data));
    // The plan says how long the copies are kept, and why.
    let o = zibd(&ep, &zfs, &[&["plan", "--days", "1"], &b[..]].concat());
    let out = text(&o).0;
    assert!(out.contains("kept 3 days") && out.contains("expected to take about"), "{out}");
}

/// Issue 16: a drill of archived backups shows what it would thaw and cost and stops unless
/// given --yes: no RestoreObject is sent and zfs is never asked to receive or destroy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_of_archived_chunks_quotes_first_and_thaws_nothing_without_yes() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("rdrill").await;
    let ms = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    let chunks: usize = ms.iter().map(|m| m.chunks.len()).sum();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    let zfs = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let b = bucket_args(&bucket, &ep);
    let args = ["drill", "--dataset", "tank/photos", "--work-dir", work.path().to_str().unwrap()];
    let o = zibd(&ep, &zfs, &[&args[..], &b[..]].concat());
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains(&format!("must thaw {chunks} archived chunks"))
            && err.contains("for the bulk tier")
            && err.contains("run it again with --yes"),
        "{err}"
    );
    assert_eq!(thaw_requests(&proxy).len(), 0, "no thaw without --yes");
    let calls = zfs.calls();
    assert!(!calls.contains("receive") && !calls.contains("destroy"), "{calls}");

    // Without --dataset the drill does not guess.
    let o = zibd(&ep, &zfs, &[&["drill"][..], &b[..]].concat());
    assert!(
        !o.status.success() && text(&o).1.contains("a drill needs --dataset"),
        "{}",
        text(&o).1
    );
}
