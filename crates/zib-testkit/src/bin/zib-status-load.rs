//! Load on zibd's control socket, for the daemon benchmark (`scripts/bench/daemon`) and the
//! load figures of issues 14 and 17: `CLIENTS` connections at once, each sending `REQUESTS`
//! status requests one after another (a new connection per request, as `zibctl status` does,
//! unless `--keep-open`), timing every round trip. Prints one line of figures and exits 1 if
//! any request failed or was answered with anything but a status reply naming `--expect`
//! datasets. Not a test: it measures.
//!
//! Usage: zib-status-load SOCKET [--clients N] [--requests N] [--expect DATASETS] [--keep-open]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zib_protocol::{Client, Request, Response};

struct Args {
    socket: PathBuf,
    clients: usize,
    requests: usize,
    expect: Option<usize>,
    keep_open: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut socket = None;
    let (mut clients, mut requests, mut expect, mut keep_open) = (1, 100, None, false);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--clients" => clients = num("--clients")?,
            "--requests" => requests = num("--requests")?,
            "--expect" => expect = Some(num("--expect")?),
            "--keep-open" => keep_open = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => socket = Some(PathBuf::from(s)),
        }
    }
    let socket = socket.ok_or("usage: zib-status-load SOCKET [--clients N] [--requests N]")?;
    Ok(Args { socket, clients, requests, expect, keep_open })
}

/// One client's round trips; the first failure ends it.
async fn client(a: &Args) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(a.requests);
    let mut open: Option<Client> = None;
    for i in 0..a.requests {
        let t = Instant::now();
        let mut c = match open.take() {
            Some(c) => c,
            None => Client::connect(&a.socket).await.map_err(|e| format!("request {i}: {e}"))?,
        };
        let reply = c
            .call(&Request::Status { dataset: None })
            .await
            .map_err(|e| format!("request {i}: {e}"))?;
        times.push(t.elapsed());
        match reply {
            Response::Status { datasets, .. } => {
                if let Some(n) = a.expect
                    && datasets.len() != n
                {
                    return Err(format!("request {i}: {} datasets, expected {n}", datasets.len()));
                }
            }
            other => return Err(format!("request {i}: not a status reply: {other:?}")),
        }
        if a.keep_open {
            open = Some(c);
        }
    }
    Ok(times)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("zib-status-load: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { client(&a).await })
        })
        .collect();
    let mut all = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(times)) => all.extend(times),
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("client task: {e}")),
        }
    }
    let wall = start.elapsed();
    all.sort();
    if all.is_empty() {
        eprintln!("zib-status-load: no request answered: {failures:?}");
        return ExitCode::FAILURE;
    }
    println!(
        "clients={} requests={} answered={} failed={} p50_ms={} p99_ms={} max_ms={} wall_s={:.2}",
        a.clients,
        a.clients * a.requests,
        all.len(),
        failures.len(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().expect("not empty")),
        wall.as_secs_f64()
    );
    for f in &failures {
        eprintln!("zib-status-load: {f}");
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
