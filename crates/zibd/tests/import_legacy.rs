//! Host tests of `zibd import-legacy` against moto: a bucket written the way
//! zfs-incremental-backup writes it (one PUT per chunk with `If-None-Match: *`, its 5 tags,
//! DEEP_ARCHIVE, more than 10 chunks per stream, its RON save file), the stand-in `zfs`
//! (tests/support/fake_zfs.sh) for the snapshots, then one zib backup and restores across the
//! legacy and zib parts (the restore stand-in of tests/support/restore_catalog.rs).

use std::path::{Path, PathBuf};
use std::process::Output;

use aws_sdk_s3::primitives::ByteStream;
use zib_core::Manifest;
use zib_testkit::{FaultProxy, MotoServer, Outcome as ProxyOutcome, get_bytes};

mod support;
use support::{ConfigToml, FakeZfs, catalog, config::quoted};

/// The legacy tool's chunk size here: streams of 11_500 bytes are 12 chunks.
const LEGACY_CHUNK: usize = 1000;
const LEGACY_LEN: usize = 11_500;

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    save_file: PathBuf,
    endpoint: String,
    bucket: String,
    client: aws_sdk_s3::Client,
}

/// What the legacy tool left: `done` streams complete, then maybe an unfinished one.
struct Legacy {
    done: u64,
    /// `backing_up_progress` as RON.
    progress: &'static str,
    /// The chunks of stream `done` already in the bucket.
    unfinished_chunks: u64,
}

impl Bed {
    /// Snapshots tank/photos@backup0..2 (stand-in zfs) and their streams uploaded as the
    /// legacy tool does, with its save file saying 3 backed up.
    async fn new(moto: &MotoServer, name: &str) -> Bed {
        let legacy = Legacy { done: 3, progress: "None", unfinished_chunks: 0 };
        Bed::build(moto, name, moto.endpoint(), legacy).await
    }

    /// Snapshots backup0..2; streams 0..done uploaded as the tool does, and the first
    /// chunks of stream `done`; zibd talks to S3 at `endpoint`.
    async fn build(moto: &MotoServer, name: &str, endpoint: &str, legacy: Legacy) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let client = moto.client();
        let bucket = moto.create_bucket(name).await;
        let config = root.join("zibd.toml");
        ConfigToml::new(&root, &bucket, endpoint)
            .target("prefix", quoted("zib"))
            .target("storage_class", quoted("DEEP_ARCHIVE"))
            .target("chunk_size", 65536)
            .dataset("tank/photos", "0 3 * * *")
            // The stand-in's streams are all alike in size: no re-baseline for that.
            .dataset_key("rebaseline_ratio", quoted("off"))
            .write(&config);
        let save_file = root.join("save_data.ron");
        std::fs::write(
            &save_file,
            format!(
                r#"(
    config: (
        dataset: (
            zpool: "tank",
            dataset: "photos",
        ),
        bucket: "{bucket}",
        snapshot_prefix: "backup",
        object_prefix: "legacy/",
    ),
    state: (
        snapshots_backed_up: {done},
        backing_up_progress: {progress},
    ),
)"#,
                done = legacy.done,
                progress = legacy.progress,
            ),
        )
        .unwrap();
        let bed = Bed {
            _dir: dir,
            root,
            config,
            save_file,
            endpoint: endpoint.to_owned(),
            bucket,
            client,
        };
        for n in 0..3 {
            bed.fake_zfs(&["snapshot", &format!("tank/photos@backup{n}")], LEGACY_LEN);
            // A stream with the begin record restore checks (the stand-in's are random bytes).
            let guid = |n: u64| bed.guid_of(&format!("backup{n}"));
            let from = if n == 0 { 0 } else { guid(n - 1) };
            let stream = catalog::send_stream(n, LEGACY_LEN, guid(n), from);
            std::fs::write(bed.root.join(format!("zfs/data/tank%2Fphotos@backup{n}")), &stream)
                .unwrap();
            let key = if n == 0 {
                "legacy/backup0".to_owned()
            } else {
                format!("legacy/backup{}_backup{n}", n - 1)
            };
            let chunks = match n.cmp(&legacy.done) {
                std::cmp::Ordering::Less => usize::MAX,
                std::cmp::Ordering::Equal => legacy.unfinished_chunks as usize,
                std::cmp::Ordering::Greater => 0,
            };
            zib_testkit::legacy_upload(
                &bed.client,
                &bed.bucket,
                &key,
                &stream,
                LEGACY_CHUNK,
                chunks,
            )
            .await;
        }
        bed
    }

    /// The stand-in zfs of the backups (its state in `root/zfs`).
    fn backup_zfs(&self) -> FakeZfs {
        FakeZfs::at(self.root.join("zfs")).knob("FAKE_ZFS_SIZE", "300000")
    }

    fn fake_zfs(&self, args: &[&str], size: usize) {
        FakeZfs::at(self.root.join("zfs")).knob("FAKE_ZFS_SIZE", size.to_string()).run_ok(args);
    }

    /// The stand-in's GUID of tank/photos@`snap`.
    fn guid_of(&self, snap: &str) -> u64 {
        let f = std::fs::read_to_string(self.root.join(format!("zfs/snap/tank%2Fphotos@{snap}")));
        f.unwrap().split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The bytes the stand-in's `zfs send` gives for tank/photos@`snap`.
    fn stream_of(&self, snap: &str) -> Vec<u8> {
        std::fs::read(self.root.join(format!("zfs/data/tank%2Fphotos@{snap}"))).unwrap()
    }

    /// Each object under `prefix` with its ETag and modification time.
    async fn objects(&self, prefix: &str) -> Vec<(String, String, String)> {
        let out =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).send().await.unwrap();
        out.contents()
            .iter()
            .map(|o| {
                let m = o.last_modified().map(|t| t.to_string()).unwrap_or_default();
                (o.key().unwrap().to_owned(), o.e_tag().unwrap_or_default().to_owned(), m)
            })
            .collect()
    }

    fn zibd(&self, args: &[&str], zfs: &FakeZfs, extra: &[(&str, &str)]) -> Output {
        let mut c = support::zibd_command(&self.endpoint, zfs);
        c.arg("--config").arg(&self.config).args(args);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// `zibd restore run --to TARGET` (moto thaws at once; poll it often) plus `extra`.
    fn restore(&self, target: &str, extra: &[&str], zfs: &FakeZfs, work: &Path) -> Output {
        let args = ["restore", "run", "--to", target, "--work-dir", work.to_str().unwrap()];
        let poll = ["--poll-initial-secs", "0.05", "--poll-max-secs", "0.2"];
        self.zibd(&[&args[..], &poll[..], extra].concat(), zfs, &[])
    }

    fn import(&self, extra: &[&str]) -> Output {
        let save = self.save_file.to_str().unwrap();
        self.zibd(
            &[&["import-legacy", "--state-file", save][..], extra].concat(),
            &self.backup_zfs(),
            &[],
        )
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let out =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).send().await.unwrap();
        out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect()
    }

    async fn manifests(&self) -> Vec<Manifest> {
        let mut v = Vec::new();
        for k in self.keys("zib/").await {
            if k.ends_with(".manifest.json") {
                v.push(
                    Manifest::from_json(&k, &get_bytes(&self.client, &self.bucket, &k).await)
                        .unwrap(),
                );
            }
        }
        v.sort_by_key(|m| m.seq);
        v
    }
}

/// The stdout of a run that must have succeeded.
fn ok(o: &Output) -> String {
    let (stdout, stderr) = out(o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    stdout
}

impl Bed {
    /// The streams a restore of `snapshot` (to a stand-in target) fed to `zfs receive`.
    fn restored(&self, snapshot: &str) -> Vec<Vec<u8>> {
        let fake = FakeZfs::new();
        let work = tempfile::tempdir().unwrap();
        ok(&self.restore("pool/new", &["--snapshot", snapshot], &fake, work.path()));
        fake.received()
    }
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_a_zib_backup_continues_the_chain_and_legacy_snapshots_restore() {
    let moto = MotoServer::start();
    let bed = Bed::new(&moto, "legacy").await;
    let legacy_keys = bed.keys("legacy/").await;
    assert_eq!(legacy_keys.len(), 36);

    // A text-sorted join of a stream's listing is not the stream: numeric order matters.
    let listed: Vec<String> =
        legacy_keys.iter().filter(|k| k.starts_with("legacy/backup0/")).cloned().collect();
    assert_eq!(listed[2], "legacy/backup0/10", "S3 lists in text order");
    // The bytes of each chunk as uploaded (a GET of DEEP_ARCHIVE needs a thaw).
    let full = bed.stream_of("backup0");
    let parts: Vec<&[u8]> = full.chunks(LEGACY_CHUNK).collect();
    let join = |keys: &[String]| -> Vec<u8> {
        keys.iter()
            .flat_map(|k| parts[k.rsplit('/').next().unwrap().parse::<usize>().unwrap()].to_vec())
            .collect()
    };
    assert!(join(&listed) != full, "the text-sorted join would corrupt the stream");

    // A dry run writes nothing.
    let o = bed.import(&["--dry-run"]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("would adopt 3 streams"), "{stdout}");
    assert!(bed.keys("zib/").await.is_empty());

    let o = bed.import(&[]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("adopted 3 streams of tank/photos"), "{stdout}");
    assert!(stdout.contains("to keep: $"), "{stdout}");
    assert!(stdout.contains("34500 bytes in DEEP_ARCHIVE"), "{stdout}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 3);
    let numeric: Vec<String> = ms[0].chunks.iter().map(|c| c.key.clone()).collect();
    assert!(join(&numeric) == full, "the adopted manifest joins the stream in numeric order");
    for (n, m) in ms.iter().enumerate() {
        assert_eq!(m.to.name.as_str(), format!("backup{n}"));
        assert_eq!(m.chunks.len(), 12);
        assert_eq!(m.chunks[10].key, format!("{}/10", m.legacy.as_ref().unwrap().stream_key));
        assert!(m.chunks.iter().all(|c| c.md5.is_some()));
        assert_eq!(m.stream_size, LEGACY_LEN as u64);
    }
    // Nothing of the tool's was touched; importing again writes nothing and succeeds.
    assert_eq!(bed.keys("legacy/").await, legacy_keys);
    let o = bed.import(&[]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("wrote 0 manifests (3 already there)"), "{stdout}");

    // The next zib backup is an incremental from the last legacy snapshot.
    let o = bed.zibd(&["backup", "tank/photos"], &bed.backup_zfs(), &[]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("incremental backup #4"), "{stdout}\n{stderr}");
    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 4);
    let zib = &ms[3];
    assert_eq!(zib.from.as_ref().unwrap(), &ms[2].to);
    assert!(zib.legacy.is_none());

    // Restore the newest (legacy + zib streams) and an older snapshot (legacy only).
    let fake = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    // The newest legacy snapshot (the stand-in's zib stream has no begin record, so the zib
    // part is restored by the guest test with real ZFS).
    let o = bed.restore("pool/new", &["--snapshot", "backup2"], &fake, work.path());
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let got = fake.received();
    assert_eq!(got.len(), 3, "{}", fake.calls());
    for (n, g) in got.iter().enumerate() {
        assert!(g == &bed.stream_of(&format!("backup{n}")), "legacy stream {n} differs");
    }

    let fake = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let o = bed.restore("pool/old", &["--snapshot", "backup1"], &fake, work.path());
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let got = fake.received();
    assert_eq!(got.len(), 2, "{}", fake.calls());
    assert!(got[1] == bed.stream_of("backup1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_middle_chunk_is_refused_with_its_key_and_nothing_is_written() {
    let moto = MotoServer::start();
    let bed = Bed::new(&moto, "legacy-gap").await;
    bed.client
        .delete_object()
        .bucket(&bed.bucket)
        .key("legacy/backup0_backup1/5")
        .send()
        .await
        .unwrap();
    let o = bed.import(&[]);
    let (stdout, stderr) = out(&o);
    assert!(!o.status.success(), "{stdout}");
    assert!(stderr.contains("legacy/backup0_backup1/5 is missing"), "{stderr}");
    assert!(bed.keys("zib/").await.is_empty());
    assert!(!bed.root.join("state/tank%2Fphotos.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_chunk_that_does_not_match_its_md5_never_reaches_zfs_receive() {
    let moto = MotoServer::start();
    let bed = Bed::new(&moto, "legacy-md5").await;
    let o = bed.import(&[]);
    assert!(o.status.success(), "{:?}", out(&o));
    // The manifest of the full says chunk 3 has another MD5 (as if the object had been replaced).
    let key = "zib/tank/photos@zib/000001-backup0.manifest.json";
    let mut m = Manifest::from_json(key, &get_bytes(&bed.client, &bed.bucket, key).await).unwrap();
    m.chunks[3].md5 = Some("0".repeat(32));
    bed.client
        .put_object()
        .bucket(&bed.bucket)
        .key(key)
        .body(ByteStream::from(m.to_json()))
        .send()
        .await
        .unwrap();
    let fake = FakeZfs::new();
    let work = tempfile::tempdir().unwrap();
    let o = bed.restore("pool/r", &[], &fake, work.path());
    let (stdout, stderr) = out(&o);
    assert!(!o.status.success(), "{stdout}");
    assert!(stderr.contains("legacy/backup0/3") && stderr.contains("MD5"), "{stderr}");
    let got = fake.received();
    assert!(
        got.iter().map(Vec::len).sum::<usize>() <= 3 * LEGACY_CHUNK,
        "bytes past the bad chunk reached zfs receive"
    );
}

/// The tool was killed after the PUT of chunk 4 of backup1_backup2, before it saved
/// `parts_uploaded: 5`: its own next run PUTs chunk 4 again and dies on 412, for ever.
const UNFINISHED: &str = "Some(Uploading((parts_uploaded: 4, upload_save_data: Uploading)))";

/// The manifest of `seq` in the bucket.
fn by_seq(ms: &[Manifest], seq: u64) -> &Manifest {
    ms.iter().find(|m| m.seq == seq).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_legacy_upload_is_finished_without_a_412_and_without_overwriting() {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let legacy = Legacy { done: 2, progress: UNFINISHED, unfinished_chunks: 5 };
    let bed = Bed::build(&moto, "legacy-unfinished", &proxy.endpoint(), legacy).await;
    let before = bed.objects("legacy/").await;
    assert_eq!(before.len(), 2 * 12 + 5);

    let stdout = ok(&bed.import(&["--dry-run"]));
    assert!(
        stdout.contains("would finish the unfinished upload legacy/backup1_backup2 of @backup2 as zib backup #3: its first 5 chunks in the bucket (the save file records 4)"),
        "{stdout}"
    );
    assert!(bed.keys("zib/").await.is_empty());

    proxy.reset_counts();
    let stdout = ok(&bed.import(&[]));
    assert!(stdout.contains("adopted 2 streams of tank/photos"), "{stdout}");
    assert!(
        stdout.contains("finished the unfinished upload legacy/backup1_backup2 of @backup2 (the save file records 4 chunks): 5 of its chunks matched a fresh zfs send (size and MD5) and are kept where they are, 7 uploaded under zib's keys; committed as backup #3"),
        "{stdout}"
    );
    // Nothing was written to the tool's keys, no request was refused with 412, and every
    // object of the tool's is as it was (same ETag, same modification time).
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let legacy_key = r.key.as_deref().is_some_and(|k| k.starts_with("legacy/"));
        assert!(!(legacy_key && r.method != "GET" && r.method != "HEAD"), "{r:?}");
        assert_ne!(r.outcome, Some(ProxyOutcome::Forwarded(412)), "{r:?}");
    }
    assert_eq!(bed.objects("legacy/").await, before);

    let ms = bed.manifests().await;
    assert_eq!(ms.len(), 3);
    let m = by_seq(&ms, 3);
    assert_eq!(m.to.name.as_str(), "backup2");
    assert_eq!(m.from.as_ref(), Some(&by_seq(&ms, 2).to));
    assert_eq!(m.version, zib_core::manifest::VERSION_LEGACY);
    assert_eq!(m.legacy.as_ref().unwrap().stream_key, "legacy/backup1_backup2");
    assert_eq!((m.chunks.len(), m.stream_size), (12, LEGACY_LEN as u64));
    let stream = bed.stream_of("backup2");
    for (i, (c, part)) in m.chunks.iter().zip(stream.chunks(LEGACY_CHUNK)).enumerate() {
        if i < 5 {
            assert_eq!(c.key, format!("legacy/backup1_backup2/{i}"));
            assert!(c.md5.is_some() && c.sha256.is_empty(), "{c:?}");
        } else {
            assert!(c.key.starts_with("zib/tank/photos@zib/000003-backup2/"), "{c:?}");
            assert_eq!((c.md5.as_ref(), c.sha256.as_str()), (None, catalog::sha(part).as_str()));
        }
    }
    // Importing again finds it finished and writes nothing.
    let stdout = ok(&bed.import(&[]));
    assert!(stdout.contains("finished by an earlier import"), "{stdout}");
    assert!(stdout.contains("wrote 0 manifests (2 already there)"), "{stdout}");
    assert_eq!(bed.manifests().await.len(), 3);

    // The stream restores, legacy and zib chunks alike.
    let got = bed.restored("backup2");
    assert_eq!(got.len(), 3);
    assert!(got[2] == stream, "the finished stream differs");

    // The next zib backup continues from it.
    let stdout = ok(&bed.zibd(&["backup", "tank/photos"], &bed.backup_zfs(), &[]));
    assert!(stdout.contains("incremental backup #4"), "{stdout}");
    assert_eq!(by_seq(&bed.manifests().await, 4).from.as_ref(), Some(&m.to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_upload_the_send_does_not_reproduce_is_uploaded_again_and_reported() {
    let moto = MotoServer::start();
    let legacy = Legacy { done: 2, progress: UNFINISHED, unfinished_chunks: 5 };
    let bed = Bed::build(&moto, "legacy-resent", moto.endpoint(), legacy).await;
    // The same snapshots now send other bytes (openzfs#13778).
    let (to, from) = (bed.guid_of("backup2"), bed.guid_of("backup1"));
    let other = catalog::send_stream(77, LEGACY_LEN, to, from);
    std::fs::write(bed.root.join("zfs/data/tank%2Fphotos@backup2"), &other).unwrap();
    let before = bed.objects("legacy/").await;

    let stdout = ok(&bed.import(&[]));
    assert!(
        stdout.contains("finished the unfinished upload legacy/backup1_backup2 of @backup2 under zib's layout (12 chunks uploaded): zfs send did not reproduce the tool's chunks"),
        "{stdout}"
    );
    let left: Vec<String> = (0..5).map(|i| format!("legacy/backup1_backup2/{i}")).collect();
    assert!(
        stdout.contains(&format!(
            "left in the bucket, unused (zib never deletes them without being asked): {}",
            left.join(", ")
        )),
        "{stdout}"
    );
    assert_eq!(bed.objects("legacy/").await, before, "the tool's chunks are left as they were");

    let ms = bed.manifests().await;
    let m = by_seq(&ms, 3);
    assert_eq!((m.version, m.legacy.as_ref()), (zib_core::manifest::VERSION, None));
    assert!(m.chunks.iter().all(|c| c.key.starts_with("zib/") && c.md5.is_none()), "{m:?}");
    assert_eq!(m.stream_sha256, catalog::sha(&other));

    let got = bed.restored("backup2");
    assert_eq!(got.len(), 3);
    assert!(got[2] == other, "the re-uploaded stream differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_gone_before_import_gets_a_placeholder_guid_and_the_chain_still_restores() {
    let moto = MotoServer::start();
    let bed = Bed::new(&moto, "legacy-gone").await;
    let streams: Vec<Vec<u8>> = (0..3).map(|n| bed.stream_of(&format!("backup{n}"))).collect();
    bed.fake_zfs(&["destroy", "tank/photos@backup0"], 0);
    let stdout = ok(&bed.import(&[]));
    assert!(stdout.contains("adopted 3 streams"), "{stdout}");
    let ms = bed.manifests().await;
    let gone = zib_core::legacy::adopt::unknown_guid("backup0");
    assert_eq!(by_seq(&ms, 1).to.guid, gone);
    assert_eq!(by_seq(&ms, 2).from.as_ref().unwrap().guid, gone);
    assert_eq!(by_seq(&ms, 2).to.guid, bed.guid_of("backup1").to_string());
    // The chain links through the placeholder, and the full's stream (whose begin record has
    // the real GUID) is not refused for it.
    assert!(bed.restored("backup2") == streams, "the restored chain differs");
    assert!(bed.restored("backup0") == streams[..1], "the full alone differs");
}
