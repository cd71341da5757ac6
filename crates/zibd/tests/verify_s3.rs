//! Host tests of `zibd verify` against moto behind the counting proxy: a catalog written as zib
//! writes it, then damaged in each way the issue names (a deleted chunk, a replaced chunk, a
//! missing manifest link, a foreign key); each is found and named, a clean bucket is reported
//! clean, and the requests the report claims are the ones the proxy counted.

use zib_core::{DatasetName, KeyLayout, SnapName, StorageClass};
use zib_testkit::{FaultProxy, Matcher, MotoServer, test_env};

mod support;
use support::catalog::*;

/// `zibd verify --json ARGS` against `endpoint`: (exit code, report, stderr).
async fn zibd_verify(
    endpoint: &str,
    bucket: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config").arg("/nonexistent/zibd.toml").arg("verify").arg("--json");
    c.args([
        "--bucket",
        bucket,
        "--prefix",
        PREFIX,
        "--endpoint",
        endpoint,
        "--region",
        "us-east-1",
    ]);
    c.args(extra);
    for (k, v) in test_env(endpoint) {
        c.env(k, v);
    }
    c.env("ZIB_LOG", "warn").env_remove("ZIB_FAILPOINT").env_remove("ZIBD_CONFIG");
    let o = c.output().await.unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr: {err}"));
    (o.status.code().unwrap_or(-1), v, err)
}

fn photos() -> KeyLayout {
    KeyLayout::new(PREFIX, &DatasetName::new("tank/photos").unwrap())
}

fn snap(s: &str) -> SnapName {
    SnapName::new(s).unwrap()
}

/// (severity, kind, key) of each problem.
fn problems(v: &serde_json::Value) -> Vec<(String, String, String)> {
    v["report"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (s("severity"), s("kind"), s("key"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_clean_bucket_clean_and_finds_each_kind_of_damage() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("verify").await;
    // tank/photos: 3 backups in DEEP_ARCHIVE (4 + 2 + 1 chunks); tank/home: 1 in STANDARD.
    let ms = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    seed_home(&client, &bucket).await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();

    // Clean: exit 0, every chunk sound, the newest snapshot restorable.
    let (code, v, err) = zibd_verify(&ep, &bucket, &[]).await;
    assert_eq!(code, 0, "{err}");
    let r = &v["report"];
    assert_eq!(r["clean"], true, "{v:#}");
    assert_eq!(problems(&v), [], "{v:#}");
    let ds = r["datasets"].as_array().unwrap();
    assert_eq!(ds.len(), 2);
    let p = ds.iter().find(|d| d["dataset"] == "tank/photos").unwrap();
    assert_eq!((p["chunks"].as_u64(), p["chunks_sound"].as_u64()), (Some(7), Some(7)));
    assert_eq!(p["newest_restorable"], "zib-20261103T000000Z");
    // The requests the report names are the ones made: 1 LIST, 4 manifest GETs, 8 chunk HEADs,
    // and nothing else (no GET of a chunk, no RestoreObject).
    let counted = (
        proxy.count(&Matcher::get().query_contains("list-type")),
        proxy.count(&Matcher::get()) - proxy.count(&Matcher::get().query_contains("list-type")),
        proxy.count(&Matcher::head()),
        proxy.count(&Matcher::any()),
    );
    let claimed = &r["requests"];
    assert_eq!(
        counted,
        (
            claimed["list"].as_u64().unwrap() as usize,
            claimed["get"].as_u64().unwrap() as usize,
            claimed["head"].as_u64().unwrap() as usize,
            13
        ),
        "{:?}",
        proxy.requests()
    );
    assert_eq!(
        (claimed["list"].as_u64(), claimed["get"].as_u64(), claimed["head"].as_u64()),
        (Some(1), Some(4), Some(8))
    );
    let cost = claimed["cost"].as_f64().unwrap();
    assert!((cost - (0.005 / 1000.0 + 12.0 * 0.0004 / 1000.0)).abs() < 1e-15, "{cost}");

    // A foreign key under the prefix: listed with its bytes, still clean.
    client
        .put_object()
        .bucket(&bucket)
        .key(format!("{PREFIX}/tank/photos@zib/notes.txt"))
        .body(vec![1u8; 33].into())
        .send()
        .await
        .unwrap();
    let (code, v, _) = zibd_verify(&ep, &bucket, &["--dataset", "tank/photos"]).await;
    assert_eq!(code, 0);
    assert_eq!(v["report"]["unnamed"][0]["key"], format!("{PREFIX}/tank/photos@zib/notes.txt"));
    assert_eq!(v["report"]["unnamed_bytes"], 33);

    // A replaced chunk (seq 2, chunk 1: other bytes of the same size, stored as zib would).
    let replaced = ms[1].chunks[1].key.clone();
    put_chunk(
        &client,
        &bucket,
        &replaced,
        &vec![9u8; ms[1].chunks[1].size as usize],
        StorageClass::DeepArchive,
    )
    .await;
    // A deleted chunk (seq 3's only one).
    let deleted = ms[2].chunks[0].key.clone();
    client.delete_object().bucket(&bucket).key(&deleted).send().await.unwrap();
    let (code, v, err) = zibd_verify(&ep, &bucket, &["--dataset", "tank/photos"]).await;
    assert_eq!(code, 1, "not clean: exit 1; {err}");
    assert!(err.contains("verify found 2 error(s)"), "{err}");
    assert_eq!(v["report"]["clean"], false);
    assert_eq!(
        problems(&v),
        [
            ("error".into(), "wrong_checksum".into(), replaced.clone()),
            ("error".into(), "missing_chunk".into(), deleted.clone()),
        ]
    );
    let p = &v["report"]["datasets"][0];
    assert_eq!(p["newest_restorable"], "zib-20261101T000000Z", "{p:#}");
    assert_eq!(p["newest_error"], "backups #2, #3 of its chain have bad chunks", "{p:#}");

    // A missing manifest link: seq 2's manifest gone, seq 3 leads back to no full.
    let m2 = photos().manifest_key(2, &snap("zib-20261102T000000Z"));
    client.delete_object().bucket(&bucket).key(&m2).send().await.unwrap();
    let m3 = photos().manifest_key(3, &snap("zib-20261103T000000Z"));
    let (code, v, _) = zibd_verify(&ep, &bucket, &["--dataset", "tank/photos"]).await;
    assert_eq!(code, 1);
    let found = problems(&v);
    assert!(found.contains(&("error".into(), "broken_chain".into(), m3.clone())), "{found:?}");
    // seq 2's chunks are now named by no manifest.
    let unnamed: Vec<&str> = v["report"]["unnamed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].as_str().unwrap())
        .collect();
    assert!(unnamed.contains(&replaced.as_str()), "{unnamed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_text_names_the_problem_and_the_key() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("verify-text").await;
    let ms = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    let deleted = ms[0].chunks[2].key.clone();
    client.delete_object().bucket(&bucket).key(&deleted).send().await.unwrap();
    let ep = moto.endpoint();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_zibd"))
        .args([
            "--config",
            "/nonexistent/zibd.toml",
            "verify",
            "--bucket",
            &bucket,
            "--prefix",
            PREFIX,
        ])
        .args(["--endpoint", ep, "--region", "us-east-1"])
        .envs(test_env(ep))
        .env("ZIB_LOG", "warn")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.starts_with(&format!("verify s3://{bucket}/{PREFIX}/: PROBLEMS FOUND")), "{out}");
    assert!(
        out.contains(&format!(
            "error: tank/photos backup #1: {deleted}: missing: the chunk is not in the bucket"
        )),
        "{out}"
    );
    assert!(out.contains("NOTHING RESTORABLE"), "the full is damaged: {out}");
    assert!(out.contains("requests: 1 LIST, 3 GET, 7 HEAD"), "{out}");
}

/// `--deep` downloads and hashes what is readable, which finds a chunk whose bytes no stored
/// checksum vouches for; archived chunks are quoted and not touched, thawed only with
/// `--allow-thaw`, and hashed by a later run once readable. The requests are counted at the
/// proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_verify_hashes_what_is_readable_and_thaws_archived_chunks_only_when_allowed() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("verify-deep").await;
    let photos = seed(&client, &bucket, "tank/photos", &chain3(), StorageClass::DeepArchive).await;
    let home = seed_home(&client, &bucket).await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    // tank/home's chunk: other bytes of the same size, stored with no checksum (as another
    // tool, or a server without additional checksums, would): HEAD cannot tell.
    let bad = home[0].chunks[0].key.clone();
    let size = home[0].chunks[0].size as usize;
    client
        .put_object()
        .bucket(&bucket)
        .key(&bad)
        .body(vec![7u8; size].into())
        .send()
        .await
        .unwrap();
    let (code, v, err) = zibd_verify(&ep, &bucket, &[]).await;
    assert_eq!(code, 0, "the cheap check can only warn: {err}");
    assert_eq!(problems(&v), [("warning".into(), "checksum_unavailable".into(), bad.clone())]);

    proxy.reset_counts();
    let (code, v, err) = zibd_verify(&ep, &bucket, &["--deep"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        problems(&v),
        [
            ("error".into(), "bad_content".into(), bad.clone()),
            ("warning".into(), "checksum_unavailable".into(), bad.clone()),
        ]
    );
    let d = &v["report"]["deep"];
    let n_photos = photos.iter().map(|m| m.chunks.len()).sum::<usize>() as u64;
    assert_eq!((d["hashed"].as_u64(), d["archived"].as_u64()), (Some(1), Some(n_photos)), "{d:#}");
    assert_eq!(d["thaws_requested"], 0);
    let photo_bytes: u64 = photos.iter().flat_map(|m| &m.chunks).map(|c| c.size).sum();
    assert_eq!(d["thaw_quote"]["volume"]["archived_bytes"].as_u64(), Some(photo_bytes));
    let chunk_gets = |p: &FaultProxy| {
        p.requests()
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && !r.path.ends_with(".manifest.json")
                    && !r.query.contains("list-type")
            })
            .count()
    };
    assert_eq!(chunk_gets(&proxy), 1, "only the readable chunk is downloaded");
    assert_eq!(proxy.count(&Matcher::post().query_contains("restore")), 0, "nothing thawed");

    proxy.reset_counts();
    let (_, v, err) = zibd_verify(&ep, &bucket, &["--deep", "--allow-thaw"]).await;
    let d = &v["report"]["deep"];
    assert_eq!(d["thaws_requested"].as_u64(), Some(n_photos), "{err}");
    assert_eq!(proxy.count(&Matcher::post().query_contains("restore")), n_photos as usize);

    // Once thawed (moto thaws at once), the next deep check hashes them: all sound.
    proxy.reset_counts();
    let (code, v, _) = zibd_verify(&ep, &bucket, &["--deep"]).await;
    assert_eq!(code, 1, "tank/home's chunk is still bad");
    let d = &v["report"]["deep"];
    assert_eq!((d["hashed"].as_u64(), d["archived"].as_u64()), (Some(n_photos + 1), Some(0)));
    assert_eq!(chunk_gets(&proxy), n_photos as usize + 1);
    assert_eq!(proxy.count(&Matcher::post().query_contains("restore")), 0);
    assert_eq!(problems(&v)[0], ("error".into(), "bad_content".into(), bad));
}
