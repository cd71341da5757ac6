//! The first end-to-end test: proves the test bed (issue 2). Real OpenZFS in the guest,
//! moto on the host at 10.0.2.2, cold-storage semantics:
//! encrypted dataset -> `zfs send -w` full and `-w -i` incremental -> PUT as DEEP_ARCHIVE
//! -> unrestored GET fails with InvalidObjectState -> RestoreObject -> GET -> `zfs receive`
//! into a second pool -> load the key -> same files.
//! (It moves into the product's own tests once the backup engine exists.)

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, StorageClass, Tier};
use zib_testkit::MotoServer;

use crate::common::*;

const PASSPHRASE: &str = "zib test passphrase 1";

async fn put_deep_archive(client: &aws_sdk_s3::Client, bucket: &str, key: &str, file: &Path) {
    let body = ByteStream::from_path(file).await.expect("open stream file");
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .storage_class(StorageClass::DeepArchive)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
}

async fn restore_and_wait(client: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    let params = GlacierJobParameters::builder().tier(Tier::Bulk).build().expect("job params");
    let req = RestoreRequest::builder().days(1).glacier_job_parameters(params).build();
    client
        .restore_object()
        .bucket(bucket)
        .key(key)
        .restore_request(req)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("RestoreObject {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
        });
    for _ in 0..120 {
        let head = client.head_object().bucket(bucket).key(key).send().await.expect("HEAD");
        let restore = head.restore().unwrap_or_default();
        if restore.contains("ongoing-request=\"false\"") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("restore of {key} did not complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_send_through_deep_archive_and_back() {
    require_zfs();
    let work = work_dir("bed");

    // Source: encrypted dataset with two snapshots.
    let src_pool = TestPool::create("zbsrc");
    let ds = create_encrypted_dataset(&src_pool, "data", PASSPHRASE);
    write_files(&ds.mountpoint, 1, 40, 200_000);
    let s1 = ds.snapshot("s1");
    let at_s1 = checksum_tree(&ds.mountpoint);
    write_files(&ds.mountpoint, 2, 20, 300_000); // new files
    write_files(&ds.mountpoint, 1, 10, 50_000); // overwrite some of the first ones
    std::fs::remove_file(ds.mountpoint.join("d3/f1-39.bin")).expect("delete a file");
    let s2 = ds.snapshot("s2");
    let at_s2 = checksum_tree(&ds.mountpoint);
    assert_ne!(at_s1, at_s2);

    let full = work.join("full.zstream");
    let incr = work.join("incr.zstream");
    zfs_send_to_file(&["-w", &s1], &full);
    zfs_send_to_file(&["-w", "-i", &s1, &s2], &incr);
    assert!(std::fs::metadata(&full).expect("full").len() > 1_000_000);
    assert!(std::fs::metadata(&incr).expect("incr").len() > 100_000);

    // S3: cold storage on moto (the host's, at 10.0.2.2, when run by scripts/test).
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("bed").await;
    let objects = [("streams/full", &full), ("streams/incr", &incr)];
    for (key, file) in objects {
        put_deep_archive(&client, &bucket, key, file).await;
        let head = client.head_object().bucket(&bucket).key(key).send().await.expect("HEAD");
        assert_eq!(head.storage_class(), Some(&StorageClass::DeepArchive), "{key}");
    }

    // Not restored yet: GET must fail with InvalidObjectState.
    for (key, _) in objects {
        let err = client
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .expect_err("GET of an unrestored DEEP_ARCHIVE object must fail")
            .into_service_error();
        assert!(err.is_invalid_object_state(), "{key}: expected InvalidObjectState, got {err:?}");
    }

    // Restore, then GET back byte for byte.
    for (key, file) in objects {
        restore_and_wait(&client, &bucket, key).await;
        let back = work.join(format!("{}.back", key.replace('/', "_")));
        let data = zib_testkit::get_bytes(&client, &bucket, key).await;
        std::fs::write(&back, data).expect("write downloaded stream");
        assert_eq!(sha256_file(&back), sha256_file(file), "{key} changed in S3");
    }

    // Receive into a second pool: still encrypted, key not loaded, then load and compare.
    let dst_pool = TestPool::create("zbdst");
    let target = dst_pool.dataset("restored");
    let mp = mountpoint("restored");
    let mp_opt = format!("mountpoint={}", mp.display());
    zfs_receive_from_file(&["-o", &mp_opt, &target], &work.join("streams_full.back"));
    zfs_receive_from_file(&[&target], &work.join("streams_incr.back"));
    assert_eq!(zfs_get(&target, "encryption"), "aes-256-gcm");
    assert_eq!(zfs_get(&target, "keystatus"), "unavailable");
    let snaps = zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", &target]);
    assert_eq!(
        snaps.lines().collect::<Vec<_>>(),
        vec![format!("{target}@s1"), format!("{target}@s2")]
    );
    zfs(&["load-key", "-L", &ds.key_location(), &target]);
    zfs(&["mount", &target]);
    assert_eq!(checksum_tree(&mp), at_s2, "restored files differ from the source at @s2");
    assert_eq!(
        checksum_tree(&mp.join(".zfs/snapshot/s1")),
        at_s1,
        "restored @s1 differs from the source at @s1"
    );
}
