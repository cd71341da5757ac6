//! The control socket server against real Unix sockets, with a fake [`Handler`] (this tests the
//! socket layer: framing, garbage, permissions, streaming, concurrency, file modes — not jobs).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use zib_protocol::{
    Client, ClientError, DaemonInfo, DatasetStatus, ErrorKind, JobState, MAX_FRAME_LEN,
    PROTOCOL_VERSION, ProgressUpdate, Request, Response, RunProgress,
};
use zibd::control::{
    Access, ControlConfig, ControlError, ControlSocket, Handler, Peer, Reply, authorize, serve,
};

/// Answers like a daemon would, without any jobs. Dataset names steer the streamed replies:
/// `fail` ends with `Done { ok: false }`, `drop` ends without a final frame, `slow` streams until
/// the client or the server goes away.
#[derive(Default)]
struct FakeHandler {
    calls: AtomicUsize,
    peers: std::sync::Mutex<Vec<Peer>>,
    /// Datasets in an all-datasets status reply (0: the usual two).
    huge_status: usize,
}

fn daemon_info() -> DaemonInfo {
    DaemonInfo {
        version: "0.1.0-test".into(),
        protocol_version: PROTOCOL_VERSION,
        started_at: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
        uptime_secs: 5,
        jobs_running: 0,
        jobs_max: Some(2),
        restores_running: 0,
        last_verify: None,
        next_verify: None,
        drills: vec![],
    }
}

fn dataset(name: &str) -> DatasetStatus {
    DatasetStatus {
        dataset: name.into(),
        state: JobState::Idle,
        paused: false,
        schedule: Some("@daily".into()),
        progress: None,
        last_success: None,
        last_error: None,
        next_run: None,
        chain_length: 0,
        missed_ticks: 0,
        last_note: None,
        stale_after_secs: None,
    }
}

fn progress(dataset: &str, n: u64) -> Response {
    Response::Progress(ProgressUpdate {
        dataset: dataset.into(),
        state: JobState::Uploading,
        progress: Some(RunProgress {
            snapshot: format!("{dataset}@zib-1"),
            incremental: false,
            started_at: None,
            bytes_sent: n * 100,
            bytes_total_estimate: Some(300),
            chunks_done: n,
            chunks_total_estimate: Some(3),
            rate_bytes_per_sec: Some(100),
            eta_secs: Some(3 - n),
        }),
        message: None,
    })
}

impl Handler for FakeHandler {
    async fn handle(&self, request: Request, peer: Peer) -> Reply {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.peers.lock().unwrap().push(peer);
        match request {
            Request::Version => Response::Version {
                daemon_version: "0.1.0-test".into(),
                protocol_version: PROTOCOL_VERSION,
            }
            .into(),
            Request::Status { dataset: Some(d) } if d == "missing" => {
                Response::error(ErrorKind::NotFound, "no dataset 'missing' is configured").into()
            }
            Request::Status { dataset: None } if self.huge_status > 0 => {
                let datasets = (0..self.huge_status)
                    .map(|i| dataset(&format!("tank/dataset-with-a-long-name-{i}")))
                    .collect();
                Response::Status { daemon: daemon_info(), datasets }.into()
            }
            Request::Status { dataset } => {
                let datasets = match dataset {
                    Some(d) => vec![self::dataset(&d)],
                    None => vec![self::dataset("tank/a"), self::dataset("tank/b")],
                };
                Response::Status { daemon: daemon_info(), datasets }.into()
            }
            Request::Trigger { dataset, wait: true, .. } => {
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    if dataset == "slow" {
                        let mut n = 0;
                        while tx.send(progress(&dataset, n % 3)).await.is_ok() {
                            n += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        return;
                    }
                    for n in 0..3 {
                        if tx.send(progress(&dataset, n)).await.is_err() {
                            return;
                        }
                    }
                    let done = match dataset.as_str() {
                        "drop" => return,
                        "fail" => Response::Done {
                            ok: false,
                            message: "zfs send failed".into(),
                            snapshot: None,
                            bytes: None,
                        },
                        _ => Response::Done {
                            ok: true,
                            message: "backed up".into(),
                            snapshot: Some(format!("{dataset}@zib-1")),
                            bytes: Some(300),
                        },
                    };
                    let _ = tx.send(done).await;
                });
                Reply::Stream(rx)
            }
            Request::Cancel { dataset } if dataset == "missing" => {
                Response::error(ErrorKind::NotFound, "no dataset 'missing' is configured").into()
            }
            _ => Response::ok("done").into(),
        }
    }
}

struct Server {
    path: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    handler: Arc<FakeHandler>,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(FakeHandler::default(), |_| {}).await
    }

    async fn start_with(handler: FakeHandler, tweak: impl FnOnce(&mut ControlConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/zibd.sock");
        let mut config = ControlConfig::new(&path, None);
        tweak(&mut config);
        let socket = ControlSocket::bind(&config).unwrap();
        let handler = Arc::new(handler);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(socket, handler.clone(), async {
            let _ = stopped.await;
        }));
        Server { path, _dir: dir, stop: Some(stop), task, handler }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve stops")
            .unwrap();
    }
}

async fn connect(path: &Path) -> Client {
    Client::connect(path).await.unwrap()
}

async fn send(client: &mut Client, request: &Request) {
    client.send(request).await.unwrap();
}

/// The next frame within 10 s; `None` once the server closed the connection.
async fn recv(client: &mut Client) -> Option<Response> {
    match client.recv_frame(Some(Duration::from_secs(10))).await {
        Ok(frame) => {
            assert_eq!(frame.protocol, PROTOCOL_VERSION);
            Some(frame.response)
        }
        Err(e @ (ClientError::Timeout(_) | ClientError::Decode(_))) => {
            panic!("expected a valid reply in time: {e}")
        }
        Err(_) => None,
    }
}

/// Sends one request on a new connection, returns every frame up to the final one.
async fn call(path: &Path, request: Request) -> Vec<Response> {
    let mut s = connect(path).await;
    send(&mut s, &request).await;
    let mut out = Vec::new();
    loop {
        let r = recv(&mut s).await.expect("a reply before the connection closed");
        let last = r.is_final();
        out.push(r);
        if last {
            return out;
        }
    }
}

/// Reads until the server closes the connection; returns the frames it sent before.
async fn drain_until_closed(s: &mut Client) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(r) = recv(s).await {
        out.push(r);
    }
    out
}

async fn assert_still_serves(path: &Path) {
    let r = call(path, Request::Version).await;
    assert_eq!(
        r,
        [Response::Version {
            daemon_version: "0.1.0-test".into(),
            protocol_version: PROTOCOL_VERSION
        }]
    );
}

fn error_kind(r: &Response) -> ErrorKind {
    match r {
        Response::Error { kind, .. } => *kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_requests_and_keeps_the_connection() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    send(&mut s, &Request::Version).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Version { .. })));
    send(&mut s, &Request::Status { dataset: None }).await;
    let Some(Response::Status { datasets, daemon }) = recv(&mut s).await else {
        panic!("no status")
    };
    assert_eq!(datasets.len(), 2);
    assert_eq!(daemon.protocol_version, PROTOCOL_VERSION);
    send(&mut s, &Request::Cancel { dataset: "missing".into() }).await;
    assert_eq!(error_kind(&recv(&mut s).await.unwrap()), ErrorKind::NotFound);
    send(&mut s, &Request::Pause { dataset: None }).await;
    assert_eq!(recv(&mut s).await, Some(Response::ok("done")));
    drop(s);
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_a_close() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    // "GET " as a length prefix is ~1.2 GB: over the cap.
    s.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: zibd\r\n\r\n").await.unwrap();
    let frames = drain_until_closed(&mut s).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(error_kind(&frames[0]), ErrorKind::FrameTooLarge);
    assert_still_serves(&server.path).await;
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 1, "garbage never reaches the handler");
    server.shutdown().await;
}

#[tokio::test]
async fn four_gib_length_prefix_is_refused() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    s.get_mut().write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.get_mut().write_all(&[b'{'; 64]).await.unwrap();
    let frames = drain_until_closed(&mut s).await;
    assert_eq!(frames.len(), 1);
    let Response::Error { kind, message } = &frames[0] else { panic!("{frames:?}") };
    assert_eq!(*kind, ErrorKind::FrameTooLarge);
    assert!(message.contains(&u32::MAX.to_string()), "{message}");
    // Exactly one over the cap is refused too.
    let mut s = connect(&server.path).await;
    s.get_mut().write_all(&(MAX_FRAME_LEN + 1).to_be_bytes()).await.unwrap();
    let frames = drain_until_closed(&mut s).await;
    assert_eq!(error_kind(&frames[0]), ErrorKind::FrameTooLarge);
    assert_still_serves(&server.path).await;
    server.shutdown().await;
}

#[tokio::test]
async fn half_a_frame_then_eof_closes_quietly() {
    let server = Server::start().await;
    for partial in [&[0u8, 0][..], &[0, 0, 0, 100, b'{', b'"', b't'][..]] {
        let mut s = connect(&server.path).await;
        s.get_mut().write_all(partial).await.unwrap();
        s.get_mut().shutdown().await.unwrap();
        assert!(drain_until_closed(&mut s).await.is_empty());
    }
    assert_still_serves(&server.path).await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_json_gets_invalid_request_and_the_connection_goes_on() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    for bad in [
        &b"{not json"[..],
        b"\xff\xfe\x00garbage",
        b"[]",
        b"{\"request\":{\"type\":\"version\"}}",
        b"{\"protocol\":1,\"request\":{\"type\":\"trigger\"}}",
        b"{\"protocol\":1,\"request\":{\"type\":\"trigger\",\"dataset\":7}}",
        b"",
    ] {
        s.send_frame(bad).await.unwrap();
        let r = recv(&mut s).await.expect("an error reply");
        assert_eq!(error_kind(&r), ErrorKind::InvalidRequest, "{:?}", String::from_utf8_lossy(bad));
    }
    send(&mut s, &Request::Version).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Version { .. })));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_request_type_and_protocol_get_unsupported() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    s.send_frame(br#"{"protocol":1,"request":{"type":"prune","dataset":"tank/a","keep":3}}"#)
        .await
        .unwrap();
    let r = recv(&mut s).await.unwrap();
    assert_eq!(error_kind(&r), ErrorKind::Unsupported);
    let Response::Error { message, .. } = r else { unreachable!() };
    assert!(message.contains("prune"), "{message}");
    s.send_frame(br#"{"protocol":2,"request":{"type":"version"}}"#).await.unwrap();
    assert_eq!(error_kind(&recv(&mut s).await.unwrap()), ErrorKind::Unsupported);
    send(&mut s, &Request::Version).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Version { .. })));
    server.shutdown().await;
}

#[tokio::test]
async fn idle_clients_are_disconnected() {
    let server =
        Server::start_with(FakeHandler::default(), |c| c.read_timeout = Duration::from_millis(200))
            .await;
    let mut idle = connect(&server.path).await;
    let started = std::time::Instant::now();
    assert!(drain_until_closed(&mut idle).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that sent half a frame and stalls is dropped too.
    let mut stalled = connect(&server.path).await;
    stalled.get_mut().write_all(&[0, 0, 0, 50, b'{']).await.unwrap();
    assert!(drain_until_closed(&mut stalled).await.is_empty());
    assert_still_serves(&server.path).await;
    server.shutdown().await;
}

#[tokio::test]
async fn idle_clients_cannot_starve_the_slots() {
    let server = Server::start_with(FakeHandler::default(), |c| {
        c.read_timeout = Duration::from_millis(300);
        c.max_connections = 2;
    })
    .await;
    let _a = connect(&server.path).await;
    let _b = connect(&server.path).await;
    // Both slots are taken by idle clients; a third waits in the backlog until they time out.
    tokio::time::timeout(Duration::from_secs(5), assert_still_serves(&server.path)).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn trigger_wait_streams_progress_then_done() {
    let server = Server::start().await;
    let frames =
        call(&server.path, Request::Trigger { dataset: "tank/a".into(), wait: true, full: false })
            .await;
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert!(frames[..3].iter().all(|f| matches!(f, Response::Progress(_))));
    assert!(matches!(&frames[3], Response::Done { ok: true, .. }));

    let frames =
        call(&server.path, Request::Trigger { dataset: "fail".into(), wait: true, full: false })
            .await;
    assert!(matches!(frames.last(), Some(Response::Done { ok: false, .. })));

    // A stream dropped without a final frame still ends the reply.
    let frames =
        call(&server.path, Request::Trigger { dataset: "drop".into(), wait: true, full: false })
            .await;
    assert_eq!(frames.len(), 4);
    assert!(matches!(frames.last(), Some(Response::Done { ok: false, .. })));

    // After a streamed reply the connection takes further requests.
    let mut s = connect(&server.path).await;
    send(&mut s, &Request::Trigger { dataset: "tank/a".into(), wait: true, full: false }).await;
    while !recv(&mut s).await.unwrap().is_final() {}
    send(&mut s, &Request::Version).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Version { .. })));
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_frees_its_slot() {
    let server = Server::start_with(FakeHandler::default(), |c| c.max_connections = 1).await;
    let mut s = connect(&server.path).await;
    send(&mut s, &Request::Trigger { dataset: "slow".into(), wait: true, full: false }).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Progress(_))));
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), assert_still_serves(&server.path)).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_streams_and_removes_the_socket() {
    let server = Server::start().await;
    let mut s = connect(&server.path).await;
    send(&mut s, &Request::Trigger { dataset: "slow".into(), wait: true, full: false }).await;
    assert!(matches!(recv(&mut s).await, Some(Response::Progress(_))));
    let path = server.path.clone();
    let Server { stop, task, _dir, .. } = server;
    stop.unwrap().send(()).unwrap();
    let frames = drain_until_closed(&mut s).await;
    let last = frames.last().expect("a final frame");
    assert_eq!(error_kind(last), ErrorKind::ShuttingDown);
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed on shutdown");
    drop(_dir);
}

#[tokio::test]
async fn oversized_reply_becomes_an_internal_error() {
    // ~22 MB of JSON (about 87 bytes a dataset): above the 16 MiB reply cap.
    let server =
        Server::start_with(FakeHandler { huge_status: 250_000, ..Default::default() }, |_| {})
            .await;
    let r = call(&server.path, Request::Status { dataset: None }).await;
    assert_eq!(error_kind(&r[0]), ErrorKind::Internal);
    assert_still_serves(&server.path).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_status_of_twenty_thousand_datasets_is_one_reply() {
    // ~1.7 MB of JSON: above the 1 MiB request cap, which replies once had too (a status of
    // about 4,000 datasets became an error); the client reads up to MAX_REPLY_FRAME_LEN.
    let server =
        Server::start_with(FakeHandler { huge_status: 20_000, ..Default::default() }, |_| {}).await;
    let mut c = Client::connect(&server.path).await.unwrap();
    match c.call(&Request::Status { dataset: None }).await.unwrap() {
        Response::Status { datasets, .. } => assert_eq!(datasets.len(), 20_000),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients() {
    let server = Server::start_with(FakeHandler::default(), |c| c.max_connections = 8).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let path = server.path.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&path).await;
            for _ in 0..5 {
                send(&mut s, &Request::Status { dataset: Some(format!("tank/{i}")) }).await;
                let Some(Response::Status { datasets, .. }) = recv(&mut s).await else {
                    panic!("no status")
                };
                assert_eq!(datasets[0].dataset, format!("tank/{i}"));
            }
            drop(s); // free the slot before taking another
            if i % 10 == 0 {
                let frames = call(
                    &path,
                    Request::Trigger { dataset: format!("tank/{i}"), wait: true, full: false },
                )
                .await;
                assert!(matches!(frames.last(), Some(Response::Done { ok: true, .. })));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 510);
    server.shutdown().await;
}

#[tokio::test]
async fn the_handler_sees_the_real_peer_credentials() {
    let server = Server::start().await;
    assert_still_serves(&server.path).await;
    let peer = server.handler.peers.lock().unwrap()[0].clone();
    assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(peer.gid, nix::unistd::getegid().as_raw());
    assert_eq!(peer.pid, Some(std::process::id() as i32));
    let ours: Vec<u32> =
        nix::unistd::getgroups().unwrap().into_iter().map(|g| g.as_raw()).collect();
    assert_eq!(peer.groups, ours);
    server.shutdown().await;
}

#[tokio::test]
async fn socket_and_directory_modes() {
    // Own the socket by our primary group, named as in the config.
    let gid = nix::unistd::getegid();
    let group = nix::unistd::Group::from_gid(gid).unwrap().expect("our primary group has a name");
    let server =
        Server::start_with(FakeHandler::default(), |c| c.group = Some(group.name.clone())).await;
    let sock = std::fs::metadata(&server.path).unwrap();
    assert_eq!(sock.permissions().mode() & 0o7777, 0o660);
    assert_eq!(sock.gid(), gid.as_raw());
    assert_eq!(sock.uid(), nix::unistd::geteuid().as_raw());
    let dir = std::fs::metadata(server.path.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o7777, 0o750);
    assert_eq!(dir.gid(), gid.as_raw());
    assert_still_serves(&server.path).await;
    server.shutdown().await;
}

#[test]
fn a_missing_group_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        ControlConfig::new(dir.path().join("zibd.sock"), Some("no-such-group-zib-test".into()));
    let err = ControlSocket::bind(&config).unwrap_err();
    assert!(matches!(err, ControlError::NoSuchGroup(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-group-zib-test") && msg.contains("socket_group"), "{msg}");
    assert!(!dir.path().join("zibd.sock").exists());
}

#[tokio::test]
async fn stale_live_and_foreign_files_at_the_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zibd.sock");

    // A stale socket (its listener is gone): refused unless replace_stale.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut config = ControlConfig::new(&path, None);
    assert!(matches!(ControlSocket::bind(&config), Err(ControlError::Exists(_))));
    config.replace_stale = true;
    let socket = ControlSocket::bind(&config).unwrap();

    // A live one is never removed, even with replace_stale.
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(socket, Arc::new(FakeHandler::default()), async {
        let _ = stopped.await;
    }));
    let err = tokio::task::spawn_blocking({
        let config = config.clone();
        move || ControlSocket::bind(&config).unwrap_err()
    })
    .await
    .unwrap();
    assert!(matches!(err, ControlError::InUse(_)), "{err:?}");
    assert!(err.to_string().contains("another zibd"), "{err}");
    assert_still_serves(&path).await;
    stop.send(()).unwrap();
    task.await.unwrap();

    // Something that is not a socket is never removed.
    std::fs::write(&path, b"precious").unwrap();
    assert!(matches!(ControlSocket::bind(&config), Err(ControlError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer { uid, gid, pid: Some(4242), groups: groups.to_vec() }
}

fn mutating() -> Vec<Request> {
    vec![
        Request::Trigger { dataset: "tank/a".into(), wait: false, full: false },
        Request::Pause { dataset: None },
        Request::Resume { dataset: Some("tank/a".into()) },
        Request::Cancel { dataset: "tank/a".into() },
        Request::Reload,
        restore_from(None, None),
    ]
}

fn read_only() -> Vec<Request> {
    vec![Request::Status { dataset: None }, Request::Version, Request::RestoreStatus { id: None }]
}

#[test]
fn permission_decisions() {
    let access = Access { group: Some(("zib".into(), 990)), daemon_uid: 0 };
    let root = peer(0, 0, &[]);
    let primary_member = peer(1000, 990, &[]);
    let supplementary_member = peer(1001, 1001, &[27, 990]);
    let stranger = peer(1002, 1002, &[27, 100]);
    for req in mutating() {
        assert!(authorize(&req, &root, &access).is_ok(), "{req:?}");
        assert!(authorize(&req, &primary_member, &access).is_ok(), "{req:?}");
        assert!(authorize(&req, &supplementary_member, &access).is_ok(), "{req:?}");
        let zib_protocol::Rejected { kind, message } =
            authorize(&req, &stranger, &access).unwrap_err();
        assert_eq!(kind, ErrorKind::PermissionDenied);
        assert!(message.contains("'zib'") && message.contains("1002"), "{message}");
        assert!(message.contains(req.type_name()), "{message}");
    }
    for req in read_only() {
        for p in [&root, &primary_member, &supplementary_member, &stranger] {
            assert!(authorize(&req, p, &access).is_ok(), "{req:?} for {p}");
        }
    }
}

fn restore_from(bucket: Option<&str>, prefix: Option<&str>) -> Request {
    Request::RestoreStart(zib_protocol::RestoreStart {
        dataset: "tank/a".into(),
        snapshot: None,
        to: "tank/r".into(),
        tier: zib_protocol::RestoreTier::Bulk,
        days: 1,
        bucket: bucket.map(Into::into),
        prefix: prefix.map(Into::into),
        mountpoint: None,
        no_mount: false,
        key_location: None,
    })
}

/// Issue 11 #11: a socket-group member may restore from the configured target, but another
/// bucket or prefix would have the root daemon `zfs receive` a stream of the member's choosing.
#[test]
fn a_restore_from_another_bucket_or_prefix_needs_root() {
    let access = Access { group: Some(("zib".into(), 990)), daemon_uid: 0 };
    let member = peer(1000, 990, &[]);
    let supplementary_member = peer(1001, 1001, &[990]);
    assert!(authorize(&restore_from(None, None), &member, &access).is_ok());
    for req in [
        restore_from(Some("attacker-bucket"), None),
        restore_from(None, Some("elsewhere")),
        restore_from(Some("b"), Some("p")),
    ] {
        for p in [&member, &supplementary_member] {
            let zib_protocol::Rejected { kind, message } =
                authorize(&req, p, &access).expect_err("an override needs root");
            assert_eq!(kind, ErrorKind::PermissionDenied);
            assert!(
                message.contains("needs root")
                    && message.contains("--bucket")
                    && message.contains(&p.uid.to_string()),
                "{message}"
            );
        }
        assert!(authorize(&req, &peer(0, 0, &[]), &access).is_ok(), "root may: {req:?}");
        let own = Access { group: None, daemon_uid: 500 };
        assert!(authorize(&req, &peer(500, 500, &[]), &own).is_ok(), "the daemon's user may");
    }
}

/// Issue 15: a daemon restore may name a mountpoint and a key location, but only for root (or
/// the daemon's user): a socket-group member must not have the root daemon mount over a path
/// of their choosing or read a file of their choosing as the key. `no_mount` is anyone's.
#[test]
fn a_restore_with_a_mountpoint_or_key_location_needs_root() {
    let access = Access { group: Some(("zib".into(), 990)), daemon_uid: 0 };
    let member = peer(1000, 990, &[]);
    let with = |mountpoint: Option<&str>, key: Option<&str>, no_mount: bool| {
        let Request::RestoreStart(mut r) = restore_from(None, None) else { unreachable!() };
        r.mountpoint = mountpoint.map(Into::into);
        r.key_location = key.map(Into::into);
        r.no_mount = no_mount;
        Request::RestoreStart(r)
    };
    assert!(authorize(&with(None, None, true), &member, &access).is_ok());
    for req in [with(Some("/etc"), None, false), with(None, Some("file:///etc/shadow"), false)] {
        let zib_protocol::Rejected { kind, message } =
            authorize(&req, &member, &access).expect_err("needs root");
        assert_eq!(kind, ErrorKind::PermissionDenied);
        assert!(message.contains("--mountpoint") && message.contains("uid 1000"), "{message}");
        assert!(authorize(&req, &peer(0, 0, &[]), &access).is_ok(), "root may: {req:?}");
    }
}

#[test]
fn permission_without_a_group_and_for_the_daemon_user() {
    let access = Access { group: None, daemon_uid: 500 };
    assert!(authorize(&Request::Reload, &peer(0, 0, &[]), &access).is_ok());
    assert!(authorize(&Request::Reload, &peer(500, 500, &[]), &access).is_ok());
    let zib_protocol::Rejected { kind, message } =
        authorize(&Request::Reload, &peer(1000, 0, &[0]), &access)
            .expect_err("a stranger may not reload");
    assert_eq!(kind, ErrorKind::PermissionDenied);
    assert!(message.contains("root"), "{message}");
    assert!(authorize(&Request::Version, &peer(1000, 1000, &[]), &access).is_ok());
}

/// The child side of [`a_real_stranger_is_refused_mutations`]: run as another user, it talks to
/// the socket named by `ZIB_TEST_STRANGER_SOCKET` and prints what it got.
#[tokio::test]
#[ignore = "helper run as another user by a_real_stranger_is_refused_mutations"]
async fn stranger_client() {
    let Some(path) = std::env::var_os("ZIB_TEST_STRANGER_SOCKET") else { return };
    for (name, request) in [
        ("status", Request::Status { dataset: None }),
        ("reload", Request::Reload),
        ("restore_elsewhere", restore_from(Some("someone-elses-bucket"), None)),
    ] {
        let reply = call(Path::new(&path), request).await;
        match &reply[0] {
            Response::Error { kind, message } => println!("RESULT {name} {kind:?} {message}"),
            other => println!("RESULT {name} ok {}", serde_json::to_value(other).unwrap()["type"]),
        }
    }
}

/// Over the real socket, with real `SO_PEERCRED`: a process of uid/gid 65534 (nobody) may read
/// status but not reload, unless it is in the socket group. Needs root (to start the child as
/// nobody); skipped otherwise.
#[tokio::test]
async fn a_real_stranger_is_refused_mutations() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let nobody_group =
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534)).unwrap().map(|g| g.name);
    let mut cases = vec![(None, "PermissionDenied")];
    if let Some(name) = nobody_group {
        cases.push((Some(name), "ok"));
    }
    for (group, reload_result) in cases {
        let server = Server::start_with(FakeHandler::default(), |c| c.group = group.clone()).await;
        // Let the stranger reach the socket at all: when it is not in the socket's group, open
        // the modes up (this test is about the credential check, not the file modes).
        std::fs::set_permissions(server._dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        if group.is_none() {
            std::fs::set_permissions(
                server.path.parent().unwrap(),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let socket_path = server.path.clone();
        // The server runs on this (current-thread) runtime: wait for the child off it.
        let out = tokio::task::spawn_blocking(move || {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "stranger_client",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("ZIB_TEST_STRANGER_SOCKET", socket_path)
                .uid(65534)
                .gid(65534)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("RESULT status ok \"status\""), "{group:?}: {stdout}");
        let reload =
            stdout.lines().find(|l| l.starts_with("RESULT reload")).expect("a reload result");
        assert!(
            reload.starts_with(&format!("RESULT reload {reload_result}")),
            "{group:?}: {reload}"
        );
        if group.is_none() {
            assert!(reload.contains("uid 65534") && reload.contains("root"), "{reload}");
        }
        // Even a member of the socket group may not restore from a bucket of its choosing.
        let elsewhere = stdout
            .lines()
            .find(|l| l.starts_with("RESULT restore_elsewhere"))
            .expect("a restore result");
        assert!(
            elsewhere.starts_with("RESULT restore_elsewhere PermissionDenied")
                && elsewhere.contains("uid 65534"),
            "{group:?}: {elsewhere}"
        );
        // The handler saw the stranger's status request, and its reload only when allowed.
        let peers = server.handler.peers.lock().unwrap().clone();
        assert!(peers.iter().all(|p| p.uid == 65534 && p.gid == 65534), "{peers:?}");
        assert_eq!(peers.len(), if reload_result == "ok" { 2 } else { 1 });
        server.shutdown().await;
    }
}
