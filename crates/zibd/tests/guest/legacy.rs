//! Coming from zfs-incremental-backup, with real OpenZFS and moto: a bucket made the way that
//! tool makes it (`zfs send -w` full and `-w -i` incrementals of an encrypted dataset, cut into
//! `<object_prefix><p>0/<i>` and `<object_prefix><p>{n-1}_<p>{n}/<i>` chunks of a fixed size,
//! each one plain PUT as DEEP_ARCHIVE with `If-None-Match: *` and the tool's tags, and its RON
//! save file), imported by `zibd import-legacy`, continued by one zib backup, then restored from
//! the bucket alone after the source and the local state are gone.

use std::path::Path;

use zib_testkit::{MotoServer, legacy_upload};

use crate::common::*;
use crate::restore::{Source, check_restored, out, restore_args, zibd};

/// The tool's chunk size here: small, so that every stream has more than 10 chunks.
const LEGACY_CHUNK: usize = 16 * 1024;

/// `zfs send ARGS` into memory.
fn send(args: &[&str], work: &Path, name: &str) -> Vec<u8> {
    let f = work.join(name);
    zfs_send_to_file(args, &f);
    std::fs::read(&f).unwrap()
}

/// Moto with a fresh bucket, and an encrypted source dataset whose zibd config names it.
async fn setup(tag: &str) -> (MotoServer, aws_sdk_s3::Client, String, Source) {
    require_zfs();
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket(&format!("g{tag}")).await;
    let src = Source::new(moto.endpoint(), &bucket, tag);
    (moto, client, bucket, src)
}

/// Snapshot `backup<n>` of the source as the tool takes it, after writing files (`seed`):
/// recorded with its files in `src.snaps`; returns its `zfs send -w` stream (`-i` from
/// `backup<n-1>` after the first).
fn legacy_snapshot(src: &mut Source, n: usize, seed: u64, files: usize, max: usize) -> Vec<u8> {
    write_files(&src.ds.mountpoint, seed, files, max);
    if n > 0 {
        let _ = std::fs::remove_file(src.ds.mountpoint.join(format!("d1/f1-{}.bin", n * 4 + 1)));
    }
    let want = checksum_tree(&src.ds.mountpoint);
    let snap = src.ds.snapshot(&format!("backup{n}"));
    src.snaps.push((format!("backup{n}"), want));
    let name = format!("s{n}");
    if n == 0 {
        send(&["-w", &snap], &src.work, &name)
    } else {
        let base = format!("{}@backup{}", src.ds.name, n - 1);
        send(&["-w", "-i", &base, &snap], &src.work, &name)
    }
}

/// The tool's save file for the source: `done` backups, then `progress` (RON).
fn save_file(src: &Source, bucket: &str, done: u64, progress: &str) -> std::path::PathBuf {
    let (pool, rel) = src.ds.name.split_once('/').unwrap();
    let save = src.work.join("save_data.ron");
    std::fs::write(
        &save,
        format!(
            "(\n    config: (\n        dataset: (\n            zpool: \"{pool}\",\n            dataset: \"{rel}\",\n        ),\n        bucket: \"{bucket}\",\n        snapshot_prefix: \"backup\",\n        object_prefix: \"legacy/\",\n    ),\n    state: (\n        snapshots_backed_up: {done},\n        backing_up_progress: {progress},\n    ),\n)"
        ),
    )
    .unwrap();
    save
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_bucket_is_imported_continued_by_zib_and_restored_from_the_bucket_alone() {
    let (moto, client, bucket, mut src) = setup("legacy").await;
    let ep = moto.endpoint().to_owned();

    // The tool's three backups: backup0 (full), backup1 and backup2 (incrementals).
    let mut streams = Vec::new();
    for (n, (files, max)) in [(30, 150_000), (8, 120_000), (8, 120_000)].into_iter().enumerate() {
        let stream = legacy_snapshot(&mut src, n, n as u64 + 1, files, max);
        let key = match n {
            0 => "legacy/backup0".to_owned(),
            _ => format!("legacy/backup{}_backup{n}", n - 1),
        };
        assert!(stream.len() > 10 * LEGACY_CHUNK, "stream {n} is only {} bytes", stream.len());
        legacy_upload(&client, &bucket, &key, &stream, LEGACY_CHUNK, usize::MAX).await;
        streams.push(stream);
    }
    let save = save_file(&src, &bucket, 3, "None");

    // A text-sorted join of the full's listing (10 before 2) is not the stream: zfs receive
    // refuses it. Joined by chunk number it is the stream.
    let listed = client.list_objects_v2().bucket(&bucket).prefix("legacy/backup0/").send().await;
    let listed: Vec<String> =
        listed.unwrap().contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
    assert_eq!(listed[2], "legacy/backup0/10", "S3 lists in text order");
    let parts: Vec<&[u8]> = streams[0].chunks(LEGACY_CHUNK).collect();
    let index = |k: &String| k.rsplit('/').next().unwrap().parse::<usize>().unwrap();
    let text_join: Vec<u8> = listed.iter().flat_map(|k| parts[index(k)].to_vec()).collect();
    let mut numeric = listed.clone();
    numeric.sort_by_key(index);
    let numeric_join: Vec<u8> = numeric.iter().flat_map(|k| parts[index(k)].to_vec()).collect();
    assert!(numeric_join == streams[0]);
    let joined = src.work.join("text-sorted.zstream");
    std::fs::write(&joined, &text_join).unwrap();
    let scratch = TestPool::create("zlscr");
    let f = std::fs::File::open(&joined).unwrap();
    let o = std::process::Command::new("zfs")
        .args(["receive", "-u", &scratch.dataset("joined")])
        .stdin(f)
        .output()
        .unwrap();
    assert!(!o.status.success(), "zfs receive took the text-sorted join: {}", out(&o));

    // Import: a dry run first, then for real; nothing of the tool's changes.
    let before = client.list_objects_v2().bucket(&bucket).prefix("legacy/").send().await.unwrap();
    let etags =
        |l: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output| -> Vec<(String, String)> {
            l.contents()
                .iter()
                .map(|o| (o.key().unwrap().to_owned(), o.e_tag().unwrap().to_owned()))
                .collect()
        };
    let import = |dry: bool| {
        let mut c = zibd(&ep);
        c.arg("--config").arg(&src.config).args(["import-legacy", "--state-file"]).arg(&save);
        if dry {
            c.arg("--dry-run");
        }
        c.output().unwrap()
    };
    let o = import(true);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("would adopt 3 streams"), "{}", out(&o));
    let o = import(false);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains(&format!("adopted 3 streams of {}", src.ds.name)), "{}", out(&o));
    let after = client.list_objects_v2().bucket(&bucket).prefix("legacy/").send().await.unwrap();
    assert_eq!(etags(&after), etags(&before));

    // One zib backup continues the chain from backup2.
    src.change_and_backup(4, 6, 60_000);
    assert!(src.snaps[3].0.starts_with("zib-"), "{:?}", src.snaps[3].0);

    // Nothing local is left; restore the newest (legacy + zib streams) and an older snapshot
    // (legacy streams only), every file compared.
    src.wipe_local();
    let dst = TestPool::create("zldst");
    let key = src.ds.key_location();
    let work = work_dir("lwork");
    let w = work.to_str().unwrap();
    let latest = dst.dataset("latest");
    let mp = mountpoint("llatest");
    let o = src.restore(&ep, &restore_args(&latest, mp.to_str().unwrap(), &key, w), &[]);
    assert!(o.status.success(), "{}", out(&o));
    check_restored(&latest, &mp, &src, 3);

    let older = dst.dataset("older");
    let mp2 = mountpoint("lolder");
    let mut args = restore_args(&older, mp2.to_str().unwrap(), &key, w);
    args.extend(["--snapshot", "backup1"]);
    let o = src.restore(&ep, &args, &[]);
    assert!(o.status.success(), "{}", out(&o));
    check_restored(&older, &mp2, &src, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_legacy_upload_is_finished_against_a_fresh_real_send_and_restores() {
    let (moto, client, bucket, mut src) = setup("lunf").await;
    let ep = moto.endpoint().to_owned();

    // backup0 whole; backup1 killed after the PUT of chunk 4, before the save of its count.
    let full = legacy_snapshot(&mut src, 0, 11, 12, 60_000);
    legacy_upload(&client, &bucket, "legacy/backup0", &full, LEGACY_CHUNK, usize::MAX).await;
    let incr = legacy_snapshot(&mut src, 1, 12, 8, 80_000);
    assert!(incr.len() > 8 * LEGACY_CHUNK, "stream 1 is only {} bytes", incr.len());
    legacy_upload(&client, &bucket, "legacy/backup0_backup1", &incr, LEGACY_CHUNK, 5).await;
    let progress = "Some(Uploading((parts_uploaded: 4, upload_save_data: Uploading)))";
    let save = save_file(&src, &bucket, 1, progress);
    let listing = || async {
        let l = client.list_objects_v2().bucket(&bucket).prefix("legacy/").send().await.unwrap();
        l.contents()
            .iter()
            .map(|o| (o.key().unwrap().to_owned(), o.e_tag().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    let before = listing().await;

    let o = zibd(&ep)
        .arg("--config")
        .arg(&src.config)
        .args(["import-legacy", "--state-file"])
        .arg(&save)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("finished the unfinished upload legacy/backup0_backup1 of @backup1 (the save file records 4 chunks): 5 of its chunks matched a fresh zfs send"),
        "{}",
        out(&o)
    );
    assert_eq!(listing().await, before, "the tool's objects changed");

    src.wipe_local();
    let dst = TestPool::create("zludst");
    let target = dst.dataset("back");
    let mp = mountpoint("lunf");
    let work = work_dir("luwork");
    let key = src.ds.key_location();
    let args = restore_args(&target, mp.to_str().unwrap(), &key, work.to_str().unwrap());
    let o = src.restore(&ep, &args, &[]);
    assert!(o.status.success(), "{}", out(&o));
    check_restored(&target, &mp, &src, 1);
}
