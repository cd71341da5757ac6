//! Restore drills against real OpenZFS (issue 16): `zibd restore drill` restores the newest
//! backup from the bucket into a throwaway `<pool>/zib-drill-<id>`, never mounted, checks the
//! received snapshot's GUID against the source's, and destroys it; a damaged chunk fails the
//! drill, names the chunk, and leaves nothing behind.

use zib_core::Manifest;
use zib_testkit::{S3sFsServer, get_bytes, put_bytes};

use crate::backup::{Zibd, newest_zib_snapshot};
use crate::common::*;

const PASSPHRASE: &str = "zib guest drill passphrase";

/// The pool's datasets whose name says they are a drill's.
fn drill_datasets(pool: &str) -> Vec<String> {
    let out = zfs(&["list", "-H", "-r", "-o", "name", pool]);
    out.lines().filter(|l| l.contains("/zib-drill-")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_passes_on_a_good_backup_and_fails_on_a_damaged_chunk_leaving_nothing() {
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("gdrill").await;
    let client = s3.client();
    let src = TestPool::create("zgdrill");
    let ds = create_encrypted_dataset(&src, "data", PASSPHRASE);
    let zibd = Zibd::new(s3.endpoint(), &bucket, &ds.name, "STANDARD");
    write_files(&ds.mountpoint, 71, 5, 50_000);
    assert!(zibd.backup_ok(&ds.name).contains("full backup #1"));
    write_files(&ds.mountpoint.join("two"), 72, 3, 50_000);
    assert!(zibd.backup_ok(&ds.name).contains("incremental backup #2"));
    let snap = newest_zib_snapshot(&ds.name);
    let guid = zfs_get(&format!("{}@{snap}", ds.name), "guid");
    let work = work_dir("gdrill");
    let w = work.to_str().unwrap();

    let o = zibd.run(&["restore", "drill", "--dataset", &ds.name, "--work-dir", w, "--json"], &[]);
    let (out, err) =
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["result"], "passed", "{out}");
    assert_eq!(r["snapshot"], snap.as_str());
    assert_eq!(r["received_guid"], guid.as_str(), "the received snapshot is the source's");
    assert_eq!(r["source_guid"]["snapshot"], guid.as_str());
    assert_eq!(r["streams"], 2);
    assert_eq!(r["kept"], false);
    let target = r["target"].as_str().unwrap();
    assert!(target.starts_with(&format!("{}/zib-drill-", src.name())), "{target}");
    assert!(err.contains("restore drill passed"), "{err}");
    assert_eq!(drill_datasets(src.name()), Vec::<String>::new(), "the drill dataset is destroyed");
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the drill leaves no record or spool: {left:?}");

    // --keep: the drill dataset stays, received but never mounted nor its key loaded.
    let o = zibd.run(&["restore", "drill", "--dataset", &ds.name, "--work-dir", w, "--keep"], &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.contains("PASSED") && out.contains("KEPT"), "{out}");
    let kept = drill_datasets(src.name());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(zfs_get(&kept[0], "mounted"), "no");
    assert_eq!(zfs_get(&kept[0], "keystatus"), "unavailable");
    zfs(&["destroy", "-r", &kept[0]]);

    // A chunk of the incremental damaged in the bucket (same size): the drill fails, names it.
    let keys = {
        let out = client.list_objects_v2().bucket(&bucket).send().await.unwrap();
        out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let mk = keys.iter().filter(|k| k.ends_with(".manifest.json")).max().unwrap();
    let m = Manifest::from_json(mk, &get_bytes(&client, &bucket, mk).await).unwrap();
    assert_eq!(m.seq, 2);
    let bad = &m.chunks[0];
    let mut bytes = get_bytes(&client, &bucket, &bad.key).await;
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    put_bytes(&client, &bucket, &bad.key, bytes).await;
    let o = zibd.run(&["restore", "drill", "--dataset", &ds.name, "--work-dir", w], &[]);
    let (out, err) =
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "a damaged backup fails the drill: {out}");
    assert!(out.contains("FAILED") && out.contains(&format!("{} is corrupt", bad.key)), "{out}");
    assert!(err.contains("restore drill FAILED") && err.contains("failed"), "{err}");
    assert_eq!(drill_datasets(src.name()), Vec::<String>::new(), "a failed drill leaves nothing");
}
