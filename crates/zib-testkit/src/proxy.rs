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
//! Beyond answering in its stead, a fault can stall a body half-way
//! ([`FaultAction::StallRequestBody`], [`FaultAction::StallResponseBody`]: the client must time
//! out), or page a listing itself ([`FaultAction::PageListing`]: ListObjectsV2 cut into pages of
//! a few keys, with continuation tokens the proxy answers from its copy of the listing, so the
//! client's signed requests need no rewriting).
//!
//! It also measures how many requests of a method were in flight at once
//! ([`FaultProxy::peak_in_flight`]: do parallel PUTs really overlap?), and
//! [`FaultProxy::start_capped`] caps the rate at which it reads and writes each client
//! connection, the regime of real S3 where one connection, not the server, is the limit.

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
    /// Forward normally, then wait before answering: the server has done the request (a PUT
    /// stored its object) while the client still waits, the window a crash of the client
    /// must survive.
    DelayResponse(Duration),
    /// Read the first `after` bytes of the request body, then stop reading and never answer
    /// (not forwarded): a server that stalls mid-upload. The client's remaining bytes wait in
    /// the socket buffers (or in its write, once those are full) until it gives up.
    StallRequestBody { after: u64 },
    /// Forward the request, send the response's status and headers and the first `after`
    /// bytes of its body, then send nothing more: a server that stalls mid-download.
    StallResponseBody { after: u64 },
    /// A ListObjectsV2 (`GET ?list-type=2`) answered in pages of at most `max_keys` keys: the
    /// first request is forwarded and the server's whole listing kept; its first page goes to
    /// the client with `IsTruncated` and a `NextContinuationToken` of the proxy's, and each
    /// request carrying such a token is answered from the kept listing (not forwarded; its
    /// outcome is `Injected(200)`). A listing the server itself truncated passes unchanged.
    PageListing { max_keys: usize },
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
    /// A body stalled by an injected fault after this many bytes (of the request body for
    /// [`FaultAction::StallRequestBody`], of the response body for
    /// [`FaultAction::StallResponseBody`]).
    Stalled { body_bytes: u64 },
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
    /// Listings kept by [`FaultAction::PageListing`], by their number in its tokens.
    listings: Vec<Listing>,
}

/// A server's whole ListObjectsV2 answer, cut into its `<Contents>` elements and the rest.
#[derive(Debug, Clone)]
struct Listing {
    /// The answer without its `<Contents>` elements; `CONTENTS_AT` marks where they stood.
    skeleton: String,
    contents: Vec<String>,
}

const CONTENTS_AT: &str = "\u{0}zib-contents\u{0}";
const PAGE_TOKEN: &str = "zib-proxy-page-";

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

    /// Like [`FaultProxy::start`], reading and writing each client connection at most at `cap`
    /// bytes per second each way (request bodies: uploads; response bodies: downloads), when
    /// given.
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
    /// each key was actually written. A PUT whose client was killed after sending the whole
    /// body still counts when the server stored it (the answer is recorded even though nobody
    /// reads it); one cut off mid-body, or answered 412 (the key exists), does not.
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
    let set = |o: Outcome| record(&st, id, o);

    match action {
        Some(FaultAction::Status { status, code, message }) => {
            drain(req.into_body()).await;
            set(Outcome::Injected(status));
            let body = if method == "HEAD" { String::new() } else { error_xml(&code, &message) };
            return Ok(xml_response(status, body));
        }
        Some(FaultAction::DropConnection) => {
            drain(req.into_body()).await;
            set(Outcome::Dropped);
            return Err(std::io::Error::other("fault: drop connection"));
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::StallRequestBody { after }) => {
            let mut body = req.into_body();
            let got = read_some(&mut body, after).await;
            set(Outcome::Stalled { body_bytes: got });
            // Never answer, and keep the body unread (a dropped body would be drained by
            // hyper, letting the client finish its upload); the proxy's end drops this.
            let _unread = body;
            return std::future::pending().await;
        }
        Some(FaultAction::PageListing { max_keys }) => {
            if let Some((n, offset)) = page_token(&query) {
                let listing = lock(&st).listings.get(n).cloned();
                drain(req.into_body()).await;
                let Some(listing) = listing else {
                    set(Outcome::Injected(400));
                    return Ok(xml_response(400, error_xml("InvalidArgument", "unknown token")));
                };
                set(Outcome::Injected(200));
                return Ok(xml_response(200, listing.page(n, offset, max_keys)));
            }
        }
        Some(
            FaultAction::StallResponseBody { .. }
            | FaultAction::DropResponse
            | FaultAction::DelayResponse(_),
        )
        | None => {}
    }
    let drop_response = matches!(action, Some(FaultAction::DropResponse));

    // The exchange with the server is a task of its own, so that its outcome is recorded even
    // when the client goes away first: a killed client whose PUT the server still completed
    // has written that object, and it counts.
    let exchange = {
        let (st, sender) = (st.clone(), sender.clone());
        tokio::spawn(async move {
            let r = forward(req, &upstream, &sender).await;
            let o = match &r {
                Ok(resp) => Outcome::Forwarded(resp.status().as_u16()),
                Err(e) => Outcome::UpstreamError(e.to_string()),
            };
            record(&st, id, o);
            r
        })
    };
    match exchange.await.map_err(ProxyError::other)? {
        Ok(resp) => {
            if let Some(FaultAction::DelayResponse(d)) = action {
                tokio::time::sleep(d).await;
            }
            if drop_response {
                // Let the server finish, then hang up on the client.
                let _ = resp.into_body().collect().await;
                set(Outcome::Dropped);
                return Err(std::io::Error::other("fault: drop response"));
            }
            if let Some(FaultAction::StallResponseBody { after }) = action {
                set(Outcome::Stalled { body_bytes: after });
                return Ok(resp.map(|b| StallAfter { inner: b, left: after }.boxed()));
            }
            if let Some(FaultAction::PageListing { max_keys }) = action
                && resp.status() == StatusCode::OK
            {
                let (parts, body) = resp.into_parts();
                let text = body.collect().await.map_err(ProxyError::other)?.to_bytes();
                let text = String::from_utf8_lossy(&text).into_owned();
                set(Outcome::Forwarded(200));
                let Some(listing) = Listing::parse(&text).filter(|l| l.contents.len() > max_keys)
                else {
                    return Ok(Response::from_parts(parts, full(text)));
                };
                let n = {
                    let mut s = lock(&st);
                    s.listings.push(listing.clone());
                    s.listings.len() - 1
                };
                return Ok(xml_response(200, listing.page(n, 0, max_keys)));
            }
            Ok(resp.map(|b| b.boxed()))
        }
        Err(e) => Err(e),
    }
}

/// Sets the outcome of request `id`.
fn record(st: &Mutex<State>, id: u64, o: Outcome) {
    if let Some(r) = lock(st).requests.iter_mut().rev().find(|r| r.id == id) {
        r.outcome = Some(o);
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

fn error_xml(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>zib-fault-proxy</RequestId></Error>"
    )
}

/// An answer of the proxy's own: `status`, an XML body.
fn xml_response(status: u16, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/xml"));
    h.insert("x-amz-request-id", hyper::header::HeaderValue::from_static("zib-fault-proxy"));
    resp
}

/// Reads up to `limit` bytes of a body (at least what its frames hold up to there), and how
/// many it read.
async fn read_some(body: &mut Incoming, limit: u64) -> u64 {
    let mut got = 0u64;
    while got < limit {
        match body.frame().await {
            Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
    got
}

/// A response body that ends its data after `left` bytes and then never finishes.
struct StallAfter {
    inner: Incoming,
    left: u64,
}

impl hyper::body::Body for StallAfter {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        if self.left == 0 {
            return Poll::Pending; // the stall: never woken, dropped with the connection
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let n = (data.len() as u64).min(self.left);
                    self.left -= n;
                    data.truncate(n as usize);
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
                }
                // Trailers: hold them back too.
                Err(_) => {
                    self.left = 0;
                    Poll::Pending
                }
            },
            Poll::Ready(None) => {
                // The body was shorter than `after`: stall at its end instead.
                self.left = 0;
                Poll::Pending
            }
            other => other,
        }
    }
}

/// `(listing number, offset)` of a continuation token the proxy made, from a query string.
fn page_token(query: &str) -> Option<(usize, usize)> {
    let v = query.split('&').find_map(|kv| kv.strip_prefix("continuation-token="))?;
    let (n, offset) = percent_decode(v)
        .strip_prefix(PAGE_TOKEN)?
        .split_once('-')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))?;
    Some((n.parse().ok()?, offset.parse().ok()?))
}

/// The text of one XML element's value, e.g. `tag_value(s, "IsTruncated")`.
fn tag_value<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = s.find(&open)? + open.len();
    let end = s[start..].find(&format!("</{tag}>"))? + start;
    Some(&s[start..end])
}

/// `s` with the value of element `tag` replaced (unchanged if there is none).
fn set_tag(s: &str, tag: &str, value: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    match (s.find(&open), s.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{open}{value}{}", &s[..a], &s[b..]),
        _ => s.to_owned(),
    }
}

impl Listing {
    /// Cuts a complete (untruncated) ListObjectsV2 answer; None for anything else.
    fn parse(text: &str) -> Option<Listing> {
        if !text.contains("<ListBucketResult") || tag_value(text, "IsTruncated")? != "false" {
            return None;
        }
        let (open, close) = ("<Contents>", "</Contents>");
        let mut skeleton = String::new();
        let mut contents = Vec::new();
        let mut rest = text;
        while let Some(a) = rest.find(open) {
            let b = rest[a..].find(close)? + a + close.len();
            skeleton.push_str(&rest[..a]);
            if contents.is_empty() {
                skeleton.push_str(CONTENTS_AT);
            }
            contents.push(rest[a..b].to_owned());
            rest = &rest[b..];
        }
        skeleton.push_str(rest);
        if contents.is_empty() {
            return None;
        }
        Some(Listing { skeleton, contents })
    }

    /// The page of listing `n` from key `offset` on, at most `max_keys` keys.
    fn page(&self, n: usize, offset: usize, max_keys: usize) -> String {
        let end = (offset + max_keys.max(1)).min(self.contents.len());
        let keys = self.contents.get(offset..end).unwrap_or_default().concat();
        let truncated = end < self.contents.len();
        let mut s = self.skeleton.replace(CONTENTS_AT, &keys);
        s = set_tag(&s, "KeyCount", &(end.saturating_sub(offset)).to_string());
        s = set_tag(&s, "MaxKeys", &max_keys.to_string());
        s = set_tag(&s, "IsTruncated", if truncated { "true" } else { "false" });
        if truncated {
            let token =
                format!("<NextContinuationToken>{PAGE_TOKEN}{n}-{end}</NextContinuationToken>");
            s = s.replacen("</IsTruncated>", &format!("</IsTruncated>{token}"), 1);
        }
        s
    }
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

/// A client connection, read and written at most at `cap` bytes per second each way.
#[derive(Debug)]
struct Capped {
    inner: TcpStream,
    /// Uploads (request bodies) and downloads (response bodies).
    read: Option<Rate>,
    write: Option<Rate>,
    scratch: Vec<u8>,
}

impl Capped {
    fn new(inner: TcpStream, cap: Option<u64>) -> Capped {
        Capped {
            inner,
            read: cap.map(Rate::new),
            write: cap.map(Rate::new),
            scratch: if cap.is_some() { vec![0; 64 * 1024] } else { Vec::new() },
        }
    }
}

/// A token bucket of `cap` bytes per second holding up to a tenth of a second of bytes, so
/// the rate holds over any stretch longer than that. An empty bucket waits for a hundredth of a
/// second of bytes, not for one: a client then wakes about 100 times a second, where waking for
/// each millisecond's few bytes cost every tool in the capped rows CPU seconds of its own.
#[derive(Debug)]
struct Rate {
    cap: u64,
    /// Bytes that may go now, and when that was last refilled.
    tokens: f64,
    refilled: tokio::time::Instant,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Sleeps taken (for the test of the wake rate).
    sleeps: u64,
}

impl Rate {
    fn new(cap: u64) -> Rate {
        Rate { cap, tokens: 0.0, refilled: tokio::time::Instant::now(), sleep: None, sleeps: 0 }
    }

    /// How many bytes (at least 1) may go now, or Pending until some may.
    fn poll_allowed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<usize> {
        use std::task::Poll;
        let burst = (self.cap as f64 / 10.0).max(1.0);
        let quantum = (self.cap as f64 / 100.0).clamp(1.0, burst);
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            let now = tokio::time::Instant::now();
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.cap as f64).min(burst);
            self.refilled = now;
            if self.tokens >= 1.0 {
                return Poll::Ready(self.tokens as usize);
            }
            let wait = (quantum - self.tokens) / self.cap as f64;
            self.sleeps += 1;
            self.sleep =
                Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001)))));
        }
    }

    fn spent(&mut self, n: usize) {
        self.tokens -= n as f64;
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
        let Some(rate) = this.read.as_mut() else {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let Poll::Ready(allowed) = rate.poll_allowed(cx) else { return Poll::Pending };
        let allowed = allowed.min(buf.remaining()).min(this.scratch.len());
        let mut limited = tokio::io::ReadBuf::new(&mut this.scratch[..allowed]);
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        if let Poll::Ready(Ok(())) = &r {
            let n = limited.filled().len();
            buf.put_slice(limited.filled());
            rate.spent(n);
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
        use std::task::Poll;
        let this = &mut *self;
        let Some(rate) = this.write.as_mut() else {
            return std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let Poll::Ready(allowed) = rate.poll_allowed(cx) else { return Poll::Pending };
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed.min(buf.len())]);
        if let Poll::Ready(Ok(n)) = &r {
            rate.spent(*n);
        }
        r
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
    fn listings_are_cut_into_pages_with_tokens() {
        let xml = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>false</IsTruncated>\
            <Contents><Key>a</Key></Contents><Contents><Key>b</Key></Contents>\
            <Contents><Key>c</Key></Contents><Name>bk</Name><MaxKeys>1000</MaxKeys>\
            <KeyCount>3</KeyCount></ListBucketResult>";
        let l = Listing::parse(xml).unwrap();
        assert_eq!(l.contents.len(), 3);
        let p0 = l.page(4, 0, 2);
        assert!(p0.contains("<Key>a</Key></Contents><Contents><Key>b</Key>"), "{p0}");
        assert!(!p0.contains("<Key>c</Key>"), "{p0}");
        assert!(p0.contains("<IsTruncated>true</IsTruncated><NextContinuationToken>zib-proxy-page-4-2</NextContinuationToken>"), "{p0}");
        assert!(p0.contains("<KeyCount>2</KeyCount>") && p0.contains("<MaxKeys>2</MaxKeys>"));
        let p1 = l.page(4, 2, 2);
        assert!(p1.contains("<Key>c</Key>") && !p1.contains("<Key>a</Key>"), "{p1}");
        assert!(
            p1.contains("<IsTruncated>false</IsTruncated>") && !p1.contains("NextContinuation")
        );
        assert_eq!(
            page_token("list-type=2&continuation-token=zib-proxy-page-4-2&prefix=x"),
            Some((4, 2))
        );
        assert_eq!(page_token("list-type=2&continuation-token=other"), None);
        let truncated = xml.replace("<IsTruncated>false", "<IsTruncated>true");
        assert!(Listing::parse(&truncated).is_none(), "a listing the server truncated passes");
    }

    /// The cap holds (2 MB at 10 MB/s from an empty bucket take at least 0.2 s, however busy
    /// the machine), and an empty bucket waits for a hundredth of a second of bytes: at most
    /// one sleep per 100 kB (a busy machine only wakes it less often).
    #[tokio::test]
    async fn the_cap_holds_and_wakes_about_a_hundred_times_a_second() {
        let (cap, total) = (10_000_000u64, 2_000_000usize);
        let mut rate = Rate::new(cap);
        let start = std::time::Instant::now();
        let mut sent = 0;
        while sent < total {
            let allowed = std::future::poll_fn(|cx| rate.poll_allowed(cx)).await;
            let n = allowed.min(64 * 1024).min(total - sent);
            rate.spent(n);
            sent += n;
        }
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 0.19, "2 MB went in {took:.3} s at a cap of 10 MB/s");
        assert!(rate.sleeps <= 22, "{} sleeps for 2 MB (a quantum is 100 kB)", rate.sleeps);
        // A wake gives at most the burst (1 MB), so 2 MB need at least two.
        assert!(rate.sleeps >= 2, "{} sleeps: the bucket did not pace", rate.sleeps);
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
