//! A counting, fault-injecting HTTP/1.1 reverse proxy on loopback, for S3 tests.
//!
//! Point the client under test at [`FaultProxy::endpoint`] instead of the server's; every
//! request is recorded (method, path, query, outcome) and forwarded unchanged (the `Host`
//! header too, so SigV4 signatures stay valid), unless a [`Fault`] matches it:
//!
//! ```no_run
//! # async fn demo() {
//! use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer};
//! let moto = MotoServer::start();
//! let proxy = FaultProxy::start(moto.endpoint()).await;
//! // The 2nd PUT under /bucket/data/ gets 503 SlowDown, twice in a row.
//! proxy.add_fault(Fault::new(Matcher::put().path_prefix("/bucket/data/"), FaultAction::slow_down())
//!     .nth(2).times(2));
//! let client = zib_testkit::s3_client(&proxy.endpoint());
//! // ... run the code under test with `client` ...
//! assert_eq!(proxy.puts_per_key().get("data/0001").copied(), Some(3));
//! # }
//! ```
//!
//! It also measures how many requests of a method were in flight at once
//! ([`FaultProxy::peak_in_flight`]: do parallel PUTs really overlap?), and
//! [`FaultProxy::start_capped`] caps the rate at which it reads each client connection, the
//! regime of real S3 where one connection, not the server, is the limit.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// A concrete error type: a boxed trait object here trips a higher-ranked `Send` check
// in tokio::spawn.
type ProxyError = std::io::Error;
type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Which requests a [`Fault`] or a count applies to. All set fields must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// HTTP method, e.g. "PUT" (case-insensitive).
    pub method: Option<String>,
    /// Raw request path prefix, e.g. "/bucket/data/".
    pub path_prefix: Option<String>,
    /// Substring of the raw request path.
    pub path_contains: Option<String>,
    /// Substring of the raw query string, e.g. "uploadId" or "restore".
    pub query_contains: Option<String>,
}

impl Matcher {
    /// Matches every request.
    pub fn any() -> Matcher {
        Matcher::default()
    }
    /// Matches requests with this method.
    pub fn method(method: &str) -> Matcher {
        Matcher { method: Some(method.to_ascii_uppercase()), ..Matcher::default() }
    }
    pub fn get() -> Matcher {
        Self::method("GET")
    }
    pub fn put() -> Matcher {
        Self::method("PUT")
    }
    pub fn head() -> Matcher {
        Self::method("HEAD")
    }
    pub fn post() -> Matcher {
        Self::method("POST")
    }
    pub fn delete() -> Matcher {
        Self::method("DELETE")
    }
    pub fn path_prefix(mut self, prefix: &str) -> Matcher {
        self.path_prefix = Some(prefix.to_string());
        self
    }
    pub fn path_contains(mut self, s: &str) -> Matcher {
        self.path_contains = Some(s.to_string());
        self
    }
    pub fn query_contains(mut self, s: &str) -> Matcher {
        self.query_contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
            && self.path_contains.as_ref().is_none_or(|p| path.contains(p.as_str()))
            && self.query_contains.as_ref().is_none_or(|q| query.contains(q.as_str()))
    }

    /// True if this matcher selects the recorded request.
    pub fn matches_request(&self, r: &RecordedRequest) -> bool {
        self.matches(&r.method, &r.path, &r.query)
    }
}

/// What an injected fault does to a request.
#[derive(Debug, Clone)]
pub enum FaultAction {
    /// Answer with this status and an S3 XML error body (the request is not forwarded).
    Status { status: u16, code: String, message: String },
    /// Read the request, then close the connection without any response (not forwarded).
    DropConnection,
    /// Forward the request (so the server acts on it), then close the connection instead
    /// of returning the response: the client cannot tell whether it worked.
    DropResponse,
    /// Wait, then forward normally.
    Delay(Duration),
}

impl FaultAction {
    /// 503 SlowDown, S3's throttling answer.
    pub fn slow_down() -> FaultAction {
        Self::status(503, "SlowDown", "Please reduce your request rate.")
    }
    /// 500 InternalError.
    pub fn internal_error() -> FaultAction {
        Self::status(500, "InternalError", "We encountered an internal error. Please try again.")
    }
    /// 503 ServiceUnavailable.
    pub fn service_unavailable() -> FaultAction {
        Self::status(503, "ServiceUnavailable", "Service is unable to handle request.")
    }
    /// Any status with an S3 error code.
    pub fn status(status: u16, code: &str, message: &str) -> FaultAction {
        FaultAction::Status { status, code: code.to_string(), message: message.to_string() }
    }
}

/// A fault: applies `action` to the `nth` (1-based) request matching `matcher`, counted
/// from when the fault was added, and to the `times - 1` matching requests after it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub matcher: Matcher,
    pub action: FaultAction,
    pub nth: u64,
    pub times: u64,
    seen: u64,
}

impl Fault {
    /// Applies to the first matching request only (see [`Fault::nth`], [`Fault::times`]).
    pub fn new(matcher: Matcher, action: FaultAction) -> Fault {
        Fault { matcher, action, nth: 1, times: 1, seen: 0 }
    }
    /// Starts at the nth matching request (1-based).
    pub fn nth(mut self, n: u64) -> Fault {
        assert!(n >= 1, "nth is 1-based");
        self.nth = n;
        self
    }
    /// Applies to this many consecutive matching requests.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = n;
        self
    }
    /// Applies to every matching request from the nth on.
    pub fn always(mut self) -> Fault {
        self.times = u64::MAX;
        self
    }
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the server answered with this status.
    Forwarded(u16),
    /// Answered by an injected fault with this status.
    Injected(u16),
    /// Connection dropped by an injected fault (before or after forwarding).
    Dropped,
    /// The upstream server could not be reached or failed mid-request.
    UpstreamError(String),
}

/// One request seen by the proxy, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Arrival number, from 0, never reused (not reset by [`FaultProxy::reset_counts`]).
    pub id: u64,
    pub method: String,
    /// Raw (percent-encoded) path, e.g. "/bucket/dir/key".
    pub path: String,
    /// Raw query string without '?', empty if none.
    pub query: String,
    /// Path-style object key: the decoded path after "/bucket/"; None for bucket-level
    /// requests.
    pub key: Option<String>,
    /// Filled in when the request is done; `None` while in flight.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    requests: Vec<RecordedRequest>,
    faults: Vec<Fault>,
    /// Requests per method between arrival and their response (or failure).
    in_flight: BTreeMap<String, usize>,
    /// The most of `in_flight` ever seen per method.
    peak: BTreeMap<String, usize>,
}

/// Counts a request as in flight until dropped.
struct InFlight {
    st: Arc<Mutex<State>>,
    method: String,
}

impl InFlight {
    fn new(st: &Arc<Mutex<State>>, method: &str) -> InFlight {
        let mut s = lock(st);
        let n = s.in_flight.entry(method.to_owned()).or_insert(0);
        *n += 1;
        let n = *n;
        let peak = s.peak.entry(method.to_owned()).or_insert(0);
        *peak = (*peak).max(n);
        InFlight { st: st.clone(), method: method.to_owned() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.st).in_flight.get_mut(&self.method) {
            *n -= 1;
        }
    }
}

/// The proxy. Listens on 127.0.0.1 on a free port until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    endpoint: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://HOST:PORT`). Must be called within a
    /// tokio runtime; the proxy runs on it until dropped.
    pub async fn start(upstream: &str) -> FaultProxy {
        Self::start_capped(upstream, None).await
    }

    /// Like [`FaultProxy::start`], reading each client connection at most at `cap` bytes per
    /// second (request bodies: uploads), when given.
    pub async fn start_capped(upstream: &str, cap: Option<u64>) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        assert!(!upstream.contains('/'), "upstream must be http://HOST:PORT, got {upstream}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let upstream = upstream.clone();
                conns.spawn(serve_connection(Capped::new(stream, cap), upstream, st));
                while conns.try_join_next().is_some() {}
            }
        });
        FaultProxy { endpoint, state, task }
    }

    /// `http://127.0.0.1:PORT`: give this to the client under test.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Adds a fault; faults are checked in the order added, the first that fires wins.
    pub fn add_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// All requests so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests (faults keep their own counts).
    pub fn reset_counts(&self) {
        self.lock().requests.clear();
    }

    /// Number of recorded requests that `matcher` selects.
    pub fn count(&self, matcher: &Matcher) -> usize {
        self.lock().requests.iter().filter(|r| matcher.matches_request(r)).count()
    }

    /// The most requests with `method` that were in flight at once (from their arrival to
    /// their response).
    pub fn peak_in_flight(&self, method: &str) -> usize {
        self.lock().peak.get(&method.to_ascii_uppercase()).copied().unwrap_or(0)
    }

    /// Number of PUT requests (including multipart part uploads) per object key.
    pub fn puts_per_key(&self) -> BTreeMap<String, usize> {
        self.per_key("PUT")
    }

    /// Number of PUT requests per object key that the server answered with a 2xx: how often
    /// each key was actually written. A PUT cut off by a crashed client, or answered 412
    /// (the key exists), does not count.
    pub fn successful_puts_per_key(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.lock().requests.iter() {
            if let (Some(k), Some(Outcome::Forwarded(200..=299))) = (&r.key, &r.outcome)
                && r.method.eq_ignore_ascii_case("PUT")
            {
                *out.entry(k.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Number of requests with `method` per object key.
    pub fn per_key(&self, method: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.lock().requests.iter() {
            if let Some(k) = &r.key
                && r.method.eq_ignore_ascii_case(method)
            {
                *out.entry(k.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(st: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    st.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve_connection(stream: Capped, upstream: String, st: Arc<Mutex<State>>) {
    let sender: Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
    let svc = service_fn(move |req: Request<Incoming>| {
        let st = st.clone();
        let upstream = upstream.clone();
        let sender = sender.clone();
        async move { handle(req, upstream, st, sender).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    upstream: String,
    st: Arc<Mutex<State>>,
    sender: Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let _in_flight = InFlight::new(&st, &method.to_ascii_uppercase());
    let (id, action) = {
        let mut s = lock(&st);
        let id = s.next_id;
        s.next_id += 1;
        s.requests.push(RecordedRequest {
            id,
            key: key_of(&path),
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            outcome: None,
        });
        let mut action = None;
        for f in s.faults.iter_mut() {
            if f.matcher.matches(&method, &path, &query) {
                f.seen += 1;
                if action.is_none() && f.seen >= f.nth && f.seen - f.nth < f.times {
                    action = Some(f.action.clone());
                }
            }
        }
        (id, action)
    };
    let set = |o: Outcome| {
        if let Some(r) = lock(&st).requests.iter_mut().rev().find(|r| r.id == id) {
            r.outcome = Some(o);
        }
    };

    match action {
        Some(FaultAction::Status { status, code, message }) => {
            drain(req.into_body()).await;
            set(Outcome::Injected(status));
            let body = if method == "HEAD" {
                String::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>{message}</Message><RequestId>zib-fault-proxy</RequestId></Error>"
                )
            };
            let resp = Response::builder()
                .status(StatusCode::from_u16(status).map_err(ProxyError::other)?)
                .header("content-type", "application/xml")
                .header("x-amz-request-id", "zib-fault-proxy")
                .body(full(body))
                .map_err(ProxyError::other)?;
            return Ok(resp);
        }
        Some(FaultAction::DropConnection) => {
            drain(req.into_body()).await;
            set(Outcome::Dropped);
            return Err(std::io::Error::other("fault: drop connection"));
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::DropResponse) | None => {}
    }
    let drop_response = matches!(action, Some(FaultAction::DropResponse));

    match forward(req, &upstream, &sender).await {
        Ok(resp) => {
            if drop_response {
                // Let the server finish, then hang up on the client.
                let _ = resp.into_body().collect().await;
                set(Outcome::Dropped);
                return Err(std::io::Error::other("fault: drop response"));
            }
            set(Outcome::Forwarded(resp.status().as_u16()));
            Ok(resp.map(|b| b.boxed()))
        }
        Err(e) => {
            set(Outcome::UpstreamError(e.to_string()));
            Err(e)
        }
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: &str,
    sender: &tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
) -> Result<Response<Incoming>, ProxyError> {
    let mut guard = sender.lock().await;
    let reusable = match guard.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        let stream = TcpStream::connect(upstream).await?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::other)?;
        tokio::spawn(conn);
        *guard = Some(s);
    }
    let s = guard.as_mut().expect("sender");
    let (mut parts, body) = req.into_parts();
    // Origin-form URI; the Host header (signed by SigV4) is kept as the client sent it.
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    parts.uri = pq.parse().map_err(ProxyError::other)?;
    s.send_request(Request::from_parts(parts, body)).await.map_err(ProxyError::other)
}

async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

fn full(s: String) -> ProxyBody {
    Full::new(Bytes::from(s)).map_err(|e: Infallible| match e {}).boxed()
}

/// A client connection, read at most at `cap` bytes per second (a token bucket holding up to
/// a tenth of a second of bytes, so the rate holds over any stretch longer than that).
#[derive(Debug)]
struct Capped {
    inner: TcpStream,
    cap: Option<u64>,
    /// Bytes that may be read now, and when that was last refilled.
    tokens: f64,
    refilled: tokio::time::Instant,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    scratch: Vec<u8>,
}

impl Capped {
    fn new(inner: TcpStream, cap: Option<u64>) -> Capped {
        Capped {
            inner,
            cap,
            tokens: 0.0,
            refilled: tokio::time::Instant::now(),
            sleep: None,
            scratch: if cap.is_some() { vec![0; 64 * 1024] } else { Vec::new() },
        }
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let Some(cap) = this.cap else {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let burst = (cap as f64 / 10.0).max(1.0);
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            let now = tokio::time::Instant::now();
            let elapsed = now.duration_since(this.refilled).as_secs_f64();
            this.tokens = (this.tokens + elapsed * cap as f64).min(burst);
            this.refilled = now;
            if this.tokens >= 1.0 {
                break;
            }
            let wait = (1.0 - this.tokens) / cap as f64;
            this.sleep =
                Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001)))));
        }
        let allowed = (this.tokens as usize).min(buf.remaining()).min(this.scratch.len());
        let mut limited = tokio::io::ReadBuf::new(&mut this.scratch[..allowed]);
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        if let Poll::Ready(Ok(())) = &r {
            let n = limited.filled().len();
            buf.put_slice(limited.filled());
            this.tokens -= n as f64;
        }
        r
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// "/bucket/a%20b/c" -> Some("a b/c"); "/bucket" or "/bucket/" -> None.
fn key_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (_, key) = rest.split_once('/')?;
    if key.is_empty() { None } else { Some(percent_decode(key)) }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_decoded() {
        assert_eq!(key_of("/b/a%20b/c"), Some("a b/c".to_string()));
        assert_eq!(key_of("/b/x%2"), Some("x%2".to_string()));
        assert_eq!(key_of("/b/"), None);
        assert_eq!(key_of("/b"), None);
    }

    #[test]
    fn nth_and_times() {
        let m = Matcher::put().path_prefix("/b/");
        assert!(m.matches("put", "/b/k", ""));
        assert!(!m.matches("GET", "/b/k", ""));
        assert!(!m.matches("PUT", "/c/k", ""));
        assert!(Matcher::any().query_contains("uploads").matches("POST", "/b/k", "uploads"));
    }
}
