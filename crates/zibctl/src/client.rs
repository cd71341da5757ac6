//! Talking to zibd over its control socket, and turning every failure into a clear message and
//! an exit code.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zib_protocol::{ClientError, ErrorKind, ProgressUpdate, Request, Response};

/// Exit codes (also listed in `zibctl --help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// zibd refused the request or the operation failed (including a failed `trigger --wait`).
    pub const FAILED: u8 = 1;
    /// Bad command line (from clap).
    pub const USAGE: u8 = 2;
    /// zibd is not reachable: no socket, nobody listening, or no answer in time.
    pub const UNREACHABLE: u8 = 3;
    /// Permission denied (on the socket, or for a mutating request).
    pub const PERMISSION: u8 = 4;
    /// zibd answered something zibctl does not understand (version mismatch?).
    pub const PROTOCOL: u8 = 5;
}

/// A failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::PermissionDenied(_) => exit::PERMISSION,
            CliError::Protocol(_) => exit::PROTOCOL,
            CliError::Failed(_) => exit::FAILED,
        }
    }

    /// The error for an `Error` reply from zibd.
    pub fn from_reply(kind: ErrorKind, message: String) -> CliError {
        match kind {
            ErrorKind::PermissionDenied => CliError::PermissionDenied(message),
            ErrorKind::Unsupported | ErrorKind::InvalidRequest | ErrorKind::FrameTooLarge => {
                CliError::Protocol(format!(
                    "{message} (zibctl {} speaks protocol {})",
                    env!("CARGO_PKG_VERSION"),
                    zib_protocol::PROTOCOL_VERSION
                ))
            }
            ErrorKind::ShuttingDown => CliError::Unreachable(message),
            _ => CliError::Failed(message),
        }
    }
}

/// Explains a failed `connect` to the socket.
pub fn connect_error(path: &Path, e: &io::Error) -> CliError {
    let p = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => CliError::Unreachable(format!(
            "no control socket at {p}: is zibd running? (or pass --socket / set ZIBCTL_SOCKET)"
        )),
        io::ErrorKind::ConnectionRefused => CliError::Unreachable(format!(
            "nothing is listening on {p} (a stale socket): is zibd running?"
        )),
        io::ErrorKind::PermissionDenied => {
            CliError::PermissionDenied(permission_hint(path, socket_group(path).as_deref()))
        }
        _ => CliError::Unreachable(format!("cannot connect to {p}: {e}: is zibd running?")),
    }
}

/// The message for a socket we may not open.
pub fn permission_hint(path: &Path, group: Option<&str>) -> String {
    match group {
        Some(g) if g != "root" => format!(
            "permission denied on {}: run zibctl as root or as a member of group '{g}' (e.g. usermod -aG {g} $USER, then log in again)",
            path.display()
        ),
        _ => format!(
            "permission denied on {}: run zibctl as root (or set daemon.socket_group in zibd's config)",
            path.display()
        ),
    }
}

/// The group owning the socket, or else its directory (the socket itself may be out of reach).
fn socket_group(path: &Path) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => std::fs::metadata(path.parent()?).ok()?,
    };
    let gid = meta.gid();
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
}

/// A connection to zibd: [`zib_protocol::Client`], with every failure and every `error` reply
/// turned into a [`CliError`].
#[derive(Debug)]
pub struct Client {
    inner: zib_protocol::Client,
    path: PathBuf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, CliError> {
        let inner = zib_protocol::Client::connect(path).await.map_err(|e| match e {
            ClientError::Connect { source, .. } => connect_error(path, &source),
            e => CliError::Unreachable(e.to_string()),
        })?;
        Ok(Client { inner, path: path.to_owned() })
    }

    /// One request, one reply (within [`zib_protocol::REPLY_TIMEOUT`]).
    pub async fn call(&mut self, request: &Request) -> Result<Response, CliError> {
        let reply = self.inner.call(request).await;
        self.reply(reply)
    }

    /// One request, one reply, with no time limit (a report on a large bucket takes a while to
    /// list, a prune to delete).
    pub async fn call_unbounded(&mut self, request: &Request) -> Result<Response, CliError> {
        let reply = match self.inner.send(request).await {
            Ok(()) => self.inner.recv(None).await,
            Err(e) => Err(e),
        };
        self.reply(reply)
    }

    /// A streamed request (`trigger --wait`): `progress` sees each progress frame, the final
    /// reply is returned; no time limit (a run takes as long as it takes).
    pub async fn stream(
        &mut self,
        request: &Request,
        progress: impl FnMut(&ProgressUpdate),
    ) -> Result<Response, CliError> {
        let reply = self.inner.stream(request, None, progress).await;
        self.reply(reply)
    }

    fn reply(&self, reply: Result<Response, ClientError>) -> Result<Response, CliError> {
        match reply.map_err(|e| self.client_error(e))? {
            Response::Error { kind, message } => Err(CliError::from_reply(kind, message)),
            Response::Unknown => Err(CliError::Protocol(format!(
                "zibd (protocol {}) sent a reply this zibctl (protocol {}) does not know; upgrade zibctl",
                self.inner.peer_protocol().unwrap_or_default(),
                zib_protocol::PROTOCOL_VERSION
            ))),
            r => Ok(r),
        }
    }

    fn client_error(&self, e: ClientError) -> CliError {
        let p = self.path.display();
        match e {
            ClientError::Connect { source, .. } => connect_error(&self.path, &source),
            ClientError::Send(e) => CliError::Unreachable(format!("sending to zibd at {p}: {e}")),
            ClientError::Timeout(t) => CliError::Unreachable(format!(
                "zibd did not answer within {} s on {p}",
                t.as_secs()
            )),
            ClientError::Closed => CliError::Unreachable(
                "zibd closed the connection without an answer (did it stop?)".into(),
            ),
            ClientError::Read(e) => CliError::Unreachable(format!("reading from zibd: {e}")),
            ClientError::BadFrame(e) => CliError::Protocol(format!("bad reply from zibd: {e}")),
            ClientError::Decode(e) => CliError::Protocol(format!(
                "cannot read zibd's reply ({e}); is zibd of the same release as zibctl {}?",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }
}

/// The error for a reply of the wrong type.
pub fn unexpected(request: &Request, response: &Response) -> CliError {
    CliError::Protocol(format!("unexpected reply to {}: {response:?}", request.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_say_what_to_do() {
        let p = Path::new("/nonexistent-zib/zibd.sock");
        let e = connect_error(p, &io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        assert!(e.to_string().contains("is zibd running?"), "{e}");
        assert!(e.to_string().contains("/nonexistent-zib/zibd.sock"), "{e}");
        let e = connect_error(p, &io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(e.to_string().contains("is zibd running?"), "{e}");
        let e = connect_error(p, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.exit_code(), exit::PERMISSION);
    }

    #[test]
    fn permission_hints_name_the_group() {
        let p = Path::new("/run/zibd/zibd.sock");
        let m = permission_hint(p, Some("zib"));
        assert!(m.contains("group 'zib'") && m.contains("/run/zibd/zibd.sock"), "{m}");
        let m = permission_hint(p, Some("root"));
        assert!(m.contains("run zibctl as root") && m.contains("socket_group"), "{m}");
        assert_eq!(permission_hint(p, None), m);
    }

    #[test]
    fn reply_errors_map_to_exit_codes() {
        assert_eq!(
            CliError::from_reply(ErrorKind::PermissionDenied, "x".into()).exit_code(),
            exit::PERMISSION
        );
        assert_eq!(CliError::from_reply(ErrorKind::NotFound, "x".into()).exit_code(), exit::FAILED);
        assert_eq!(CliError::from_reply(ErrorKind::Busy, "x".into()).exit_code(), exit::FAILED);
        assert_eq!(
            CliError::from_reply(ErrorKind::Unsupported, "x".into()).exit_code(),
            exit::PROTOCOL
        );
        assert_eq!(CliError::from_reply(ErrorKind::Unknown, "x".into()).exit_code(), exit::FAILED);
        assert_eq!(
            CliError::from_reply(ErrorKind::ShuttingDown, "x".into()).exit_code(),
            exit::UNREACHABLE
        );
    }
}
