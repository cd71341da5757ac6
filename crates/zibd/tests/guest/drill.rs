//! Restore drills against real OpenZFS (issue 16): `zibd restore drill` restores the newest
//! backup from the bucket into a throwaway `<pool>/zib-drill-<id>`, never mounted, checks the
//! received snapshot's GUID against the source's, and destroys it; a damaged chunk fails the
//! drill, names the chunk, and leaves nothing behind. The same through a zibd: `zibctl restore
//! drill`, its result in `zibctl status`.

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

/// `zibctl restore drill` through a zibd on real OpenZFS: the daemon restores the newest backup
/// into a throwaway dataset under the dataset's lock, passes on the GUID, destroys it, and the
/// result shows in `zibctl status`; a damaged chunk fails it (exit 1, red in status) and leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zibctl_restore_drill_through_the_daemon_passes_then_fails_on_a_damaged_chunk() {
    use crate::config_toml::{ConfigToml, quoted};
    use crate::daemon::{Zibd as Daemon, text, wait_ready, zibctl, zibctl_ok};
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("gddrill").await;
    let client = s3.client();
    let src = TestPool::create("zgddrill");
    let ds = create_encrypted_dataset(&src, "data", PASSPHRASE);
    write_files(&ds.mountpoint, 81, 5, 50_000);
    let work = work_dir("gddrill");
    let socket = work.join("run/zibd.sock");
    let config = work.join("zibd.toml");
    ConfigToml::new(&work, &bucket, s3.endpoint())
        .daemon("socket", quoted(socket.display()))
        .target("prefix", quoted("zib"))
        .target("storage_class", quoted("STANDARD"))
        .target("chunk_size", quoted("64KiB"))
        // Never due during the test: the drill_schedule is checked at load, the drills asked for.
        .dataset(&ds.name, "0 3 1 1 *")
        .dataset_key("drill_schedule", quoted("0 4 1 1 *"))
        .write(&config);
    let zibd = Daemon::spawn(&config, s3.endpoint(), work.join("zibd.log"));
    wait_ready(&socket, &zibd).await;
    let out = zibctl_ok(&socket, &["trigger", &ds.name, "--wait"], &zibd).await;
    assert!(out.contains("done"), "{out}");
    let snap = newest_zib_snapshot(&ds.name);
    let guid = zfs_get(&format!("{}@{snap}", ds.name), "guid");

    let out = zibctl_ok(&socket, &["restore", "drill", &ds.name, "--json"], &zibd).await;
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["result"], "passed", "{out}");
    assert_eq!(r["snapshot"], snap.as_str());
    assert_eq!(r["received_guid"], guid.as_str(), "the received snapshot is the source's");
    assert_eq!(r["kept"], false);
    assert!(r["target"].as_str().unwrap().starts_with(&format!("{}/zib-drill-", src.name())));
    assert_eq!(drill_datasets(src.name()), Vec::<String>::new(), "the drill dataset is destroyed");
    let table = zibctl_ok(&socket, &["status"], &zibd).await;
    assert!(table.contains(&format!("{}: drill passed@{snap}", ds.name)), "{table}");

    // A chunk damaged in the bucket (same size): exit 1, the chunk named, red in status.
    let keys = {
        let out = client.list_objects_v2().bucket(&bucket).send().await.unwrap();
        out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let mk = keys.iter().find(|k| k.ends_with(".manifest.json")).unwrap();
    let m = Manifest::from_json(mk, &get_bytes(&client, &bucket, mk).await).unwrap();
    let bad = &m.chunks[m.chunks.len() / 2];
    let mut bytes = get_bytes(&client, &bucket, &bad.key).await;
    bytes[0] ^= 0xff;
    put_bytes(&client, &bucket, &bad.key, bytes).await;
    let o = zibctl(&socket, &["restore", "drill", &ds.name]).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(out.contains("FAILED") && out.contains(&format!("{} is corrupt", bad.key)), "{out}");
    assert_eq!(drill_datasets(src.name()), Vec::<String>::new(), "a failed drill leaves nothing");
    let all = zibctl_ok(&socket, &["status", "--json"], &zibd).await;
    let Ok(zib_protocol::Response::Status { daemon, .. }) = serde_json::from_str(&all) else {
        panic!("{all}")
    };
    let last = daemon.drills[0].last.clone().unwrap();
    assert!(!last.passed && last.reason.unwrap().contains("is corrupt"), "{all}");
    assert!(daemon.drills[0].next.is_some(), "{all}");
    let (status, _) = zibd.terminate(std::time::Duration::from_secs(60)).await;
    assert!(status.success());
}
