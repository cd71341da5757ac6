//! The request ledger against moto, behind the counting fault proxy: every request zibd sends is
//! counted once per attempt (a retried PUT twice), by the kind and class S3 bills it as, added
//! to `<state_dir>/requests.json` by each foreground command, and `zibd cost` shows it with its
//! price; the counts are checked against the proxy's own, and the price against one computed
//! by hand from the list prices.

use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer};

mod support;

use support::{ConfigToml, config::quoted};

/// 5 chunks of 64 KiB (a 300,000-byte stream) and the manifest.
const CHUNK: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_per_attempt_recorded_and_priced() {
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("ledger").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let ep = proxy.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("zibd.toml");
    ConfigToml::new(root, &bucket, &ep)
        .target("storage_class", quoted("DEEP_ARCHIVE"))
        .target("chunk_size", CHUNK)
        .target("max_attempts", 4)
        .dataset("tank/photos", "0 3 * * *")
        .write(&config);
    let zibd = |args: &[&str]| {
        let o = support::zibd(&config, root, &ep, args, &[("ZIB_LOG", "warn".into())]);
        assert!(o.status.success(), "zibd {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o
    };

    // The second PUT (a chunk: the manifest is the last) gets a 503 once: the SDK retries it,
    // and both attempts are billed.
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::service_unavailable()).nth(2));
    zibd(&["backup", "tank/photos"]);
    let puts = proxy.count(&Matcher::put());
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("state/requests.json")).unwrap()).unwrap();
    let c = &ledger["counts"];
    // 5 chunks (one of them twice) in DEEP_ARCHIVE, the manifest in STANDARD.
    assert_eq!(c["put"]["DEEP_ARCHIVE"], 6, "{ledger}");
    assert_eq!(c["put"]["STANDARD"], 1, "{ledger}");
    assert_eq!(puts, 7, "the proxy saw {puts} PUTs");
    let (gets, heads, lists) = (
        proxy.count(&Matcher::get()) - proxy.count(&Matcher::get().query_contains("list-type")),
        proxy.count(&Matcher::head()),
        proxy.count(&Matcher::get().query_contains("list-type")),
    );
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as usize;
    assert_eq!((n(&c["get"]), n(&c["head"]), n(&c["list"])), (gets, heads, lists), "{ledger}");

    // `zibd cost` adds its own requests (the listing and the manifest reads) before it reports.
    let o = zibd(&["cost", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["requests_counted"], true, "{v}");
    let r = &v["requests"];
    let c = &r["counts"];
    let all = proxy.requests().len();
    let counted: usize =
        ["get", "head", "list", "delete", "other"].iter().map(|k| n(&c[*k])).sum::<usize>()
            + n(&c["put"]["DEEP_ARCHIVE"])
            + n(&c["put"]["STANDARD"]);
    assert_eq!(counted, all, "every request the proxy saw is in the ledger: {r}");
    let lists = proxy.count(&Matcher::get().query_contains("list-type"));
    let gets = proxy.count(&Matcher::get()) - lists;
    let heads = proxy.count(&Matcher::head());
    assert_eq!((n(&c["get"]), n(&c["head"]), n(&c["list"])), (gets, heads, lists), "{r}");
    // By hand: DEEP_ARCHIVE PUTs $0.05 / 1,000, STANDARD $0.005, GET and HEAD $0.0004, LIST
    // $0.005.
    let want = 6.0 * 0.05 / 1000.0
        + 0.005 / 1000.0
        + (gets + heads) as f64 * 0.0004 / 1000.0
        + lists as f64 * 0.005 / 1000.0;
    let total = r["cost"]["total"].as_f64().unwrap();
    assert!((total - want).abs() < 1e-12, "cost {total}, by hand {want}: {r}");

    let o = zibd(&["cost"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("requests made since"), "{out}");
    assert!(out.contains("7 PUTs (1 STANDARD, 6 DEEP_ARCHIVE)"), "{out}");
}
