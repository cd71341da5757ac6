//! The counting proxy as a program, for `scripts/bench` (not a test): forwards to an S3
//! server, optionally capping each client connection's rate each way (uploads and downloads), and on SIGTERM or SIGINT
//! prints what it saw: requests per method, the most in flight at once, bytes of request
//! bodies are not counted (the tools' inputs are known).
//!
//! Usage: zib-bench-proxy --upstream http://127.0.0.1:PORT [--cap BYTES_PER_SEC]
//! Prints `endpoint http://127.0.0.1:PORT` on its first line, the report on exit.

use std::collections::BTreeMap;

use zib_testkit::FaultProxy;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut upstream, mut cap) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--upstream" => upstream = args.next(),
            "--cap" => {
                cap = args.next().map(|c| c.parse::<u64>().expect("--cap: bytes per second"))
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let upstream = upstream.expect("--upstream http://HOST:PORT");
    let proxy = FaultProxy::start_capped(&upstream, cap).await;
    // The handler first: a SIGTERM right after the endpoint is announced still gets the report.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    println!("endpoint {}", proxy.endpoint());
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let mut per_method: BTreeMap<String, usize> = BTreeMap::new();
    for r in proxy.requests() {
        *per_method.entry(r.method.clone()).or_default() += 1;
    }
    let total: usize = per_method.values().sum();
    let methods: Vec<String> = per_method
        .iter()
        .map(|(m, n)| format!("{m}={n} (peak {} at once)", proxy.peak_in_flight(m)))
        .collect();
    println!("requests {total}: {}", methods.join(", "));
}
