//! Host tests of `zibd cost` against moto: a catalog written straight through the S3 API (plus
//! an abandoned chunk and a stray file), and the ledger's figures checked against values
//! computed by hand from the list prices here, not from zib-core's functions.

use std::process::Output;

use aws_sdk_s3::{primitives::ByteStream, types::StorageClass as S3Class};
use chrono::{DateTime, TimeDelta, Utc};
use zib_core::{DatasetName, KeyLayout, SnapName, StorageClass};
use zib_testkit::{MotoServer, test_env};

mod support;
use support::catalog::*;

const GB: f64 = (1u64 << 30) as f64;

fn zibd_cost(endpoint: &str, args: &[&str]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config").arg("/nonexistent/zibd.toml").arg("cost").args(args);
    for (k, v) in test_env(endpoint) {
        c.env(k, v);
    }
    c.env("ZIB_LOG", "warn").env_remove("ZIB_FAILPOINT").env_remove("ZIBD_CONFIG");
    c.output().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-15 + 1e-9 * b.abs()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn date(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().to_utc()
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, len: usize, class: &str) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .storage_class(S3Class::from(class))
        .body(ByteStream::from(vec![7u8; len]))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_ledger_of_a_seeded_bucket_equals_hand_computed_figures() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("cost").await;
    let before = Utc::now() - TimeDelta::seconds(2);
    // tank/photos: 3 backups in DEEP_ARCHIVE, 1000-byte chunks: 3500 + 1200 + 700 bytes in
    // 4 + 2 + 1 = 7 chunks. tank/home: one 400-byte backup in STANDARD.
    let photos = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    let home = seed_home(&client, &bucket).await;
    // An abandoned first attempt of photos' seq 3 (50 bytes) and a stray file (10 bytes).
    let layout = KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap());
    let abandoned = layout.chunk_key(3, &SnapName::new("zib-20261103T000000Z").unwrap(), 1, 0);
    put(&client, &bucket, &abandoned, 50, "DEEP_ARCHIVE").await;
    put(&client, &bucket, "backups/README", 10, "STANDARD").await;
    let after = Utc::now() + TimeDelta::seconds(2);
    let manifest_bytes: u64 =
        photos.iter().chain(&home).map(|m| m.to_json().len() as u64).sum::<u64>();

    let ep = moto.endpoint();
    let args = ["--bucket", &bucket, "--prefix", PREFIX, "--endpoint", ep, "--region", "us-east-1"];
    let o = zibd_cost(ep, &[&args[..], &["--json"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = &v["ledger"];

    // Named objects per class (BTreeMap order of the classes: STANDARD before DEEP_ARCHIVE).
    let classes = l["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2, "{classes:?}");
    let (std, da) = (&classes[0], &classes[1]);
    assert_eq!(std["storage_class"], "STANDARD");
    assert_eq!(
        (std["objects"].as_u64(), std["bytes"].as_u64()),
        (Some(5), Some(manifest_bytes + 400))
    );
    let std_monthly = (manifest_bytes + 400) as f64 / GB * 0.023;
    assert!(close(f(&std["monthly"]), std_monthly), "{std}");
    assert_eq!(da["storage_class"], "DEEP_ARCHIVE");
    assert_eq!((da["objects"].as_u64(), da["bytes"].as_u64()), (Some(7), Some(5400)));
    // Per object: 8 KiB at STANDARD's $0.023 and 32 KiB at DEEP_ARCHIVE's $0.00099.
    assert_eq!(da["overhead_standard_bytes"].as_u64(), Some(7 * 8192));
    assert_eq!(da["overhead_archive_bytes"].as_u64(), Some(7 * 32768));
    let da_overhead = 7.0 * 8192.0 / GB * 0.023 + 7.0 * 32768.0 / GB * 0.00099;
    assert!(close(f(&da["overhead_monthly"]), da_overhead), "{da}");
    let da_monthly = 5400.0 / GB * 0.00099 + da_overhead;
    assert!(close(f(&da["monthly"]), da_monthly), "{da}");
    assert!(close(f(&l["monthly"]), std_monthly + da_monthly));

    // Unnamed: the abandoned chunk and the stray file, apart.
    let unnamed: Vec<&str> =
        l["unnamed"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(unnamed, ["backups/README", abandoned.as_str()]);
    let unnamed_monthly = 10.0 / GB * 0.023 + (50.0 + 32768.0) / GB * 0.00099 + 8192.0 / GB * 0.023;
    assert!(close(f(&l["unnamed_monthly"]), unnamed_monthly), "{}", l["unnamed_monthly"]);
    assert!(close(f(&l["monthly_total"]), std_monthly + da_monthly + unnamed_monthly));
    assert_eq!(l["missing"].as_array().unwrap().len(), 0);

    // Datasets are in name order: tank/home, tank/photos.
    let ds = l["datasets"].as_array().unwrap();
    assert_eq!(
        (ds[0]["dataset"].as_str(), ds[1]["dataset"].as_str()),
        (Some("tank/home"), Some("tank/photos"))
    );
    // Chains: photos' one chain may go 180 days after its last upload; home's (STANDARD) at once.
    let pc = &ds[1]["chains"][0];
    assert_eq!(
        (pc["full_seq"].as_u64(), pc["newest_seq"].as_u64(), pc["objects"].as_u64()),
        (Some(1), Some(3), Some(10))
    );
    let from = date(&pc["deletable_from"]);
    assert!(
        from >= before + TimeDelta::days(180) && from <= after + TimeDelta::days(180),
        "{from}"
    );
    let from = date(&ds[0]["chains"][0]["deletable_from"]);
    assert!(from >= before && from <= after, "{from}");

    // The full restore of photos' newest snapshot: 3 streams, 7 archived chunks, 5400 bytes,
    // thawed copies kept 7 days, no egress beyond the free 100 GB.
    let r = &ds[1]["restore"];
    assert_eq!(
        (r["snapshot"].as_str(), r["streams"].as_u64()),
        (Some("zib-20261103T000000Z"), Some(3))
    );
    let tiers = r["quote"]["tiers"].as_array().unwrap();
    let (bulk, standard) = (&tiers[0], &tiers[1]);
    assert_eq!(bulk["tier"], "bulk");
    let copy = 5400.0 / GB * 0.023 * 7.0 / 30.0;
    let gets = 7.0 / 1000.0 * 0.0004;
    assert!(close(f(&bulk["total"]), 5400.0 / GB * 0.0025 + 7.0 / 1000.0 * 0.025 + copy + gets));
    assert!(close(f(&standard["total"]), 5400.0 / GB * 0.02 + 7.0 / 1000.0 * 0.10 + copy + gets));
    assert_eq!(v["requests_counted"], false);

    // The text names the same things.
    let o = zibd_cost(ep, &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in [
        "DEEP_ARCHIVE",
        "56.0 KiB + 224.0 KiB",
        "not named by any manifest",
        abandoned.as_str(),
        "dataset tank/photos: 10 objects",
        "chain #1..#3 (3 backups, 10 objects",
        "deletable free of charge from",
        "full restore of @zib-20261103T000000Z today (3 streams, 7 chunks",
        "requests made so far: not counted",
    ] {
        assert!(out.contains(s), "missing {s:?} in:\n{out}");
    }

    // --dataset lists only that dataset's root: the stray file is not under it.
    let o = zibd_cost(ep, &[&args[..], &["--json", "--dataset", "tank/home"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = &v["ledger"];
    assert_eq!(l["datasets"].as_array().unwrap().len(), 1);
    assert_eq!(l["unnamed"].as_array().unwrap().len(), 0);
    let home_bytes = home[0].to_json().len() as u64 + 400;
    assert!(close(f(&l["monthly_total"]), home_bytes as f64 / GB * 0.023));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_an_empty_prefix_says_there_is_no_catalog() {
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("costnone").await;
    let ep = moto.endpoint();
    let o = zibd_cost(ep, &["--bucket", &bucket, "--prefix", PREFIX, "--endpoint", ep]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no zib catalog under s3://"), "{err}");
}
