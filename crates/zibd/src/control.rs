//! The control socket: the Unix-socket server `zibctl` talks to.
//!
//! This module is the socket layer only. It binds the socket with the right ownership, reads
//! capped frames ([`zib_protocol::frame`]), answers malformed ones, checks the peer's credentials
//! for mutating requests, and hands every valid, authorized [`Request`] to the daemon's
//! [`Handler`]. It knows nothing about datasets or jobs.
//!
//! Use (the daemon, after it holds its per-dataset state locks):
//!
//! ```text
//! let socket = control::ControlSocket::bind(&control::ControlConfig {
//!     replace_stale: true, // we hold the state locks, so no other zibd owns the path
//!     ..control::ControlConfig::new(&cfg.daemon.socket, cfg.daemon.socket_group.clone())
//! })?;
//! let server = tokio::spawn(control::serve(socket, handler.clone(), shutdown_token.cancelled_owned()));
//! sd_notify READY=1 // connections made from now on queue in the backlog and are answered
//! ```
//!
//! Guarantees: a frame that is not a valid request gets `Error { invalid_request }` (or
//! `unsupported` for an unknown request type or protocol version) and the connection stays
//! usable; a length prefix above [`zib_protocol::MAX_FRAME_LEN`] gets `Error { frame_too_large }` and the
//! connection is closed; a half frame then EOF, or a client idle longer than
//! [`ControlConfig::read_timeout`], just closes the connection. None of these affect other
//! connections or the daemon. At most [`ControlConfig::max_connections`] connections are served
//! at once; further clients wait in the listen backlog.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, broadcast, mpsc};
use zib_protocol::{
    ErrorKind, FrameError, MAX_REPLY_FRAME_LEN, Rejected, Request, Response, decode_request,
    encode_response, read_frame, write_frame,
};

use crate::path_error::{PathError, io_err};

/// Mode of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of the socket's directory when zibd creates it.
pub const SOCKET_DIR_MODE: u32 = 0o750;

/// Who is on the other end of a connection (from `SO_PEERCRED`, at connect time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id.
    pub uid: u32,
    /// Effective (primary) group id.
    pub gid: u32,
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
    /// Supplementary group ids (from `/proc/<pid>/status`, else `getgrouplist`; may be empty).
    pub groups: Vec<u32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        Ok(())
    }
}

/// What the daemon answers to one request: a single frame, or a stream of frames for
/// `Trigger { wait: true }`.
#[derive(Debug)]
pub enum Reply {
    /// One response frame.
    One(Response),
    /// One response frame, already encoded (one reply sent to many connections).
    Frame(std::sync::Arc<[u8]>),
    /// Frames forwarded to the client as they come: any number of [`Response::Progress`], then
    /// one final frame ([`Response::Done`] or [`Response::Error`]); the server stops reading the
    /// receiver after the first final frame. If the sender is dropped without a final frame the
    /// client gets `Done { ok: false }`. If the client goes away the receiver is dropped, so
    /// `send` on the daemon's side fails: treat that as "nobody waits any more", never as a
    /// reason to stop the run.
    Stream(mpsc::Receiver<Response>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::One(r)
    }
}

/// The daemon's side: carries out requests. Called only with requests that parsed and that the
/// peer is allowed to make (see [`authorize`]); may be called concurrently from many connections.
///
/// An implementation may use `async fn handle(&self, request: Request, peer: Peer) -> Reply`.
/// It should return promptly (a connection does not watch for shutdown while `handle` runs):
/// long work such as a waited-for backup goes into a [`Reply::Stream`] fed by another task.
pub trait Handler: Send + Sync + 'static {
    /// Carries out `request` for `peer`.
    fn handle(&self, request: Request, peer: Peer) -> impl Future<Output = Reply> + Send;
}

/// Who may make mutating requests (resolved at bind time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The configured socket group: its name and gid.
    pub group: Option<(String, u32)>,
    /// The daemon's own effective uid (root in production; the test user in tests).
    pub daemon_uid: u32,
}

impl Access {
    /// Whether `peer` may make mutating requests: root, the daemon's own user, or a member
    /// (primary or supplementary) of the socket group.
    pub fn may_mutate(&self, peer: &Peer) -> bool {
        if self.is_privileged(peer) {
            return true;
        }
        match &self.group {
            Some((_, gid)) => peer.gid == *gid || peer.groups.contains(gid),
            None => false,
        }
    }

    /// Root, or the daemon's own user: a peer the daemon's privileges give nothing new.
    pub fn is_privileged(&self, peer: &Peer) -> bool {
        peer.uid == 0 || peer.uid == self.daemon_uid
    }
}

/// The permission check: read-only requests (`status`, `version`, `restore_status`) are allowed
/// for anyone who could connect; mutating ones need [`Access::may_mutate`]. A `restore_start`
/// naming its own bucket or prefix needs root (or the daemon's user): the daemon, as root, would
/// `zfs receive` a stream from a place its configuration does not vouch for; one naming a
/// mountpoint or a key location too (the daemon would mount there, or read that file, as
/// root). `Err` is the
/// `permission_denied` error to send back (`Rejected::into_response`).
pub fn authorize(request: &Request, peer: &Peer, access: &Access) -> Result<(), Rejected> {
    if let Request::RestoreStart(r) = request
        && (r.mountpoint.is_some() || r.key_location.is_some())
        && !access.is_privileged(peer)
    {
        return Err(Rejected {
            kind: ErrorKind::PermissionDenied,
            message: format!(
                "permission denied: 'restore_start' with a mountpoint or key location (--mountpoint/--key-location) needs root, since zibd would mount there or read that file as root; leave them out (the dataset keeps the mountpoint its stream names, under the target; load the key and mount by hand), or run `zibd restore run` as root; you are uid {}",
                peer.uid
            ),
        });
    }
    if let Request::RestoreStart(r) = request
        && (r.bucket.is_some() || r.prefix.is_some())
        && !access.is_privileged(peer)
    {
        return Err(Rejected {
            kind: ErrorKind::PermissionDenied,
            message: format!(
                "permission denied: 'restore_start' from another bucket or prefix (--bucket/--prefix) needs root, since zibd would receive a stream the configured target does not vouch for; leave them out to restore from the configured target, or run `zibd restore run` as root; you are uid {}",
                peer.uid
            ),
        });
    }
    if !request.is_mutating() || access.may_mutate(peer) {
        return Ok(());
    }
    let needed = match &access.group {
        Some((name, _)) => format!("root or membership in group '{name}'"),
        None => "root (no daemon.socket_group is configured)".to_owned(),
    };
    Err(Rejected {
        kind: ErrorKind::PermissionDenied,
        message: format!(
            "permission denied: '{}' needs {needed}; you are uid {}",
            request.type_name(),
            peer.uid
        ),
    })
}

/// How to bind and run the control socket.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The socket path (`daemon.socket`).
    pub path: PathBuf,
    /// Group owning the socket (`daemon.socket_group`); its members may make mutating requests.
    /// `None`: the socket keeps the daemon's primary group and only root (and the daemon's own
    /// user) may mutate.
    pub group: Option<String>,
    /// Remove a leftover socket file at `path` whose listener is gone. Set this only while
    /// holding the per-dataset state locks (they prove no other zibd runs with this config);
    /// even then a socket that still accepts connections is never removed. A path that is not a
    /// socket is never removed.
    pub replace_stale: bool,
    /// A connection that sends no complete frame for this long is closed.
    pub read_timeout: Duration,
    /// A client that does not read its reply for this long is disconnected.
    pub write_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long to wait for connections still being answered.
    pub shutdown_grace: Duration,
}

impl ControlConfig {
    /// Defaults: no stale-socket removal, 30 s read and write timeouts, 64 connections, 5 s grace.
    pub fn new(path: impl Into<PathBuf>, group: Option<String>) -> Self {
        ControlConfig {
            path: path.into(),
            group,
            replace_stale: false,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The configured group does not exist.
    #[error(
        "control socket group '{0}' does not exist: create it (groupadd {0}) or change daemon.socket_group"
    )]
    NoSuchGroup(String),
    /// Looking the group up failed.
    #[error("looking up control socket group '{name}': {source}")]
    GroupLookup { name: String, source: nix::Error },
    /// Another process (another zibd?) accepts connections on the path.
    #[error("{}: another zibd is already listening on this control socket", .0.display())]
    InUse(PathBuf),
    /// A socket file is in the way and removing it was not allowed.
    #[error("{}: a control socket file already exists (left by a zibd that died?); it is removed only once this zibd holds the state locks", .0.display())]
    Exists(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{}: exists and is not a socket; refusing to remove it", .0.display())]
    NotASocket(PathBuf),
    /// A file-system operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// A bound control socket, ready for [`serve`]. Binding needs no async runtime.
#[derive(Debug)]
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    config: ControlConfig,
    access: Access,
    /// (dev, ino) of the socket file we created, so we only ever unlink our own.
    file_id: (u64, u64),
}

impl ControlSocket {
    /// Creates the directory (mode 0750, group-owned, if missing) and the socket (mode 0660,
    /// owned by the daemon's user — root in production — and the configured group).
    pub fn bind(config: &ControlConfig) -> Result<ControlSocket, ControlError> {
        let path = config.path.as_path();
        let group = match &config.group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some((name.clone(), g.gid.as_raw())),
                Ok(None) => return Err(ControlError::NoSuchGroup(name.clone())),
                Err(source) => {
                    return Err(ControlError::GroupLookup { name: name.clone(), source });
                }
            },
        };
        let gid = group.as_ref().map(|(_, gid)| nix::unistd::Gid::from_raw(*gid));

        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SOCKET_DIR_MODE))
                .map_err(io_err("setting mode of", dir))?;
            if gid.is_some() {
                nix::unistd::chown(dir, None, gid)
                    .map_err(|e| io_err("changing group of", dir)(e.into()))?;
            }
        }

        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotASocket(path.to_owned()));
            }
            Ok(_) => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse(path.to_owned()));
                }
                if !config.replace_stale {
                    return Err(ControlError::Exists(path.to_owned()));
                }
                tracing::info!(path = %path.display(), "removing stale control socket");
                std::fs::remove_file(path).map_err(io_err("removing stale socket", path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", path)(e).into()),
        }

        let listener =
            std::os::unix::net::UnixListener::bind(path).map_err(io_err("binding", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err("setting mode of", path))?;
        if gid.is_some() {
            nix::unistd::chown(path, None, gid)
                .map_err(|e| io_err("changing group of", path)(e.into()))?;
        }
        listener.set_nonblocking(true).map_err(io_err("configuring", path))?;
        let meta = std::fs::metadata(path).map_err(io_err("inspecting", path))?;
        Ok(ControlSocket {
            listener,
            config: config.clone(),
            access: Access { group, daemon_uid: nix::unistd::geteuid().as_raw() },
            file_id: (meta.dev(), meta.ino()),
        })
    }

    /// The permission rules in force.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.config.path
    }
}

/// Serves `socket` until `shutdown` completes, then stops accepting, tells open connections to
/// finish (a streaming `trigger --wait` gets `Error { shutting_down }`), waits up to
/// [`ControlConfig::shutdown_grace`] for them, and removes the socket file if it is still ours.
/// Must run inside a tokio runtime. Accept errors (e.g. out of file descriptors) are logged and
/// retried, never fatal.
pub async fn serve<H: Handler>(socket: ControlSocket, handler: Arc<H>, shutdown: impl Future) {
    let ControlSocket { listener, config, access, file_id } = socket;
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control socket cannot be registered with the runtime");
            return;
        }
    };
    let config = Arc::new(config);
    let access = Arc::new(access);
    let (notify_shutdown, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));

    let accept_loop = async {
        let mut backoff = Duration::from_millis(50);
        loop {
            let permit = limit.clone().acquire_owned().await.expect("semaphore never closed");
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(50);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let conn = Connection {
                handler: handler.clone(),
                access: access.clone(),
                config: config.clone(),
                shutdown: notify_shutdown.subscribe(),
            };
            let done = done_tx.clone();
            tokio::spawn(async move {
                conn.run(stream).await;
                drop(permit);
                drop(done);
            });
        }
    };
    tokio::select! {
        () = accept_loop => {}
        _ = shutdown => tracing::debug!("control socket shutting down"),
    }
    drop(listener);
    drop(notify_shutdown);
    drop(done_tx);
    if tokio::time::timeout(config.shutdown_grace, done_rx.recv()).await.is_err() {
        tracing::warn!("control connections still open after the shutdown grace period");
    }
    // Unlink only our own socket file, never one a successor bound meanwhile.
    if let Ok(meta) = std::fs::symlink_metadata(&config.path)
        && (meta.dev(), meta.ino()) == file_id
    {
        let _ = std::fs::remove_file(&config.path);
    }
}

/// Reads the `Groups:` line of a `/proc/<pid>/status` text.
pub fn parse_proc_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Supplementary groups of a peer: from `/proc/<pid>/status` (what the process really has), else
/// from the group database for its user name.
fn peer_groups(pid: Option<i32>, uid: u32, gid: u32) -> Vec<u32> {
    if let Some(pid) = pid.filter(|&p| p > 0)
        && let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(groups) = parse_proc_status_groups(&text)
    {
        return groups;
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
    user.and_then(|u| {
        let name = std::ffi::CString::new(u.name).ok()?;
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()
    })
    .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
    .unwrap_or_default()
}

async fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let groups =
        tokio::task::spawn_blocking(move || peer_groups(pid, uid, gid)).await.unwrap_or_default();
    Ok(Peer { uid, gid, pid, groups })
}

struct Connection<H> {
    handler: Arc<H>,
    access: Arc<Access>,
    config: Arc<ControlConfig>,
    shutdown: broadcast::Receiver<()>,
}

/// Whether the connection stays open after a step.
enum Next {
    Continue,
    Close,
}

impl<H: Handler> Connection<H> {
    async fn run(mut self, stream: UnixStream) {
        let peer = match peer_of(&stream).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "control connection without peer credentials; closing");
                return;
            }
        };
        let (mut rd, mut wr) = stream.into_split();
        loop {
            let read = tokio::select! {
                _ = self.shutdown.recv() => return,
                r = tokio::time::timeout(self.config.read_timeout, read_frame(&mut rd)) => r,
            };
            let body = match read {
                Err(_) => {
                    tracing::debug!(%peer, "control connection idle too long; closing");
                    return;
                }
                Ok(Ok(None)) => return,
                Ok(Ok(Some(body))) => body,
                Ok(Err(FrameError::TooLarge { len, max })) => {
                    tracing::info!(%peer, len, "control frame too large; closing");
                    let msg = format!(
                        "frame of {len} bytes exceeds the limit of {max} bytes; closing the connection"
                    );
                    let _ = send(
                        &mut wr,
                        self.config.write_timeout,
                        &Response::error(ErrorKind::FrameTooLarge, msg),
                    )
                    .await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control connection broke mid-frame");
                    return;
                }
            };
            let next = match decode_request(&body) {
                Err(rejected) => {
                    tracing::debug!(%peer, error = %rejected, "bad control request");
                    send(&mut wr, self.config.write_timeout, &rejected.into_response()).await
                }
                Ok(frame) => match authorize(&frame.request, &peer, &self.access) {
                    Err(denied) => {
                        tracing::info!(%peer, request = frame.request.type_name(), "control request refused");
                        send(&mut wr, self.config.write_timeout, &denied.into_response()).await
                    }
                    Ok(()) => {
                        tracing::debug!(%peer, request = ?frame.request, "control request");
                        match self.handler.handle(frame.request, peer.clone()).await {
                            Reply::One(response) => {
                                send(&mut wr, self.config.write_timeout, &response).await
                            }
                            Reply::Frame(body) => {
                                send_body(&mut wr, self.config.write_timeout, &body).await
                            }
                            Reply::Stream(rx) => self.forward(&mut rd, &mut wr, rx).await,
                        }
                    }
                },
            };
            if let Next::Close = next {
                return;
            }
        }
    }

    /// Forwards a streamed reply until its final frame.
    async fn forward(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        mut rx: mpsc::Receiver<Response>,
    ) -> Next {
        let mut probe = [0u8; 1];
        let wt = self.config.write_timeout;
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(response) => {
                        let last = response.is_final();
                        if let Next::Close = send(wr, wt, &response).await {
                            return Next::Close;
                        }
                        if last {
                            return Next::Continue;
                        }
                    }
                    None => {
                        let end = Response::Done {
                            ok: false,
                            message: "the run ended without reporting a result; see zibctl status".into(),
                            snapshot: None,
                            bytes: None,
                        };
                        return send(wr, wt, &end).await;
                    }
                },
                _ = self.shutdown.recv() => {
                    let msg = "zibd is shutting down; the run stops at its next safe point and resumes after restart";
                    let _ = send(wr, wt, &Response::error(ErrorKind::ShuttingDown, msg)).await;
                    return Next::Close;
                }
                r = rd.read(&mut probe) => {
                    if let Ok(n) = r && n > 0 {
                        let msg = "a request was sent while a reply was still streaming; closing the connection";
                        let _ = send(wr, wt, &Response::error(ErrorKind::InvalidRequest, msg)).await;
                    }
                    // EOF or error: the client went away; stop forwarding (the run goes on).
                    return Next::Close;
                }
            }
        }
    }
}

/// Writes one response frame, within `timeout`.
async fn send(wr: &mut OwnedWriteHalf, timeout: Duration, response: &Response) -> Next {
    send_body(wr, timeout, &encode_response(response)).await
}

/// Writes one encoded response frame, within `timeout`.
async fn send_body(wr: &mut OwnedWriteHalf, timeout: Duration, body: &[u8]) -> Next {
    let too_large;
    let mut body = body;
    if body.len() > MAX_REPLY_FRAME_LEN as usize {
        tracing::error!(len = body.len(), "control reply larger than a frame");
        too_large = encode_response(&Response::error(
            ErrorKind::Internal,
            format!(
                "the reply ({} bytes) is larger than the frame limit; ask for one dataset",
                body.len()
            ),
        ));
        body = &too_large;
    }
    match tokio::time::timeout(timeout, write_frame(wr, body)).await {
        Ok(Ok(())) => Next::Continue,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "control reply could not be written");
            Next::Close
        }
        Err(_) => {
            tracing::debug!("control client does not read its replies; closing");
            Next::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_groups() {
        let text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_proc_status_groups(text), Some(vec![4, 24, 27, 1000]));
        assert_eq!(parse_proc_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_proc_status_groups("Name:\tx\n"), None);
        assert_eq!(parse_proc_status_groups("Groups:\tx\n"), None);
    }
}
