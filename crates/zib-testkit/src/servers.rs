//! Local S3 servers for tests: moto (cold-storage semantics) and s3s-fs (checksums, size).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, s3_client};

const INSTALL_HINT: &str = "install the test bed with `scripts/testbed/setup` (as root), or run \
                            everything with `scripts/test`";

/// Path of a test-bed tool: `$ZIB_TESTBED_PREFIX/bin/NAME` (default prefix
/// `/opt/zib-testbed`), else NAME on `PATH`. Panics with the install hint if missing:
/// a test that needs it must fail, not skip.
pub fn testbed_bin(name: &str) -> PathBuf {
    let prefix =
        std::env::var_os("ZIB_TESTBED_PREFIX").unwrap_or_else(|| "/opt/zib-testbed".into());
    let p = Path::new(&prefix).join("bin").join(name);
    if is_executable(&p) {
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return p;
            }
        }
    }
    panic!(
        "test-bed binary `{name}` not found in {}/bin nor on PATH: {INSTALL_HINT}",
        Path::new(&prefix).display()
    );
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// One HTTP/1.0 request on a fresh connection; returns (status, body). Test helper only.
pub(crate) fn http_request(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {hostport}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: {}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.200}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A spawned server process; killed (and reaped) on drop.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `make_cmd(port, dir)` on a free port until it answers HTTP (3 tries, for the
/// port race). Returns the endpoint and the process.
fn spawn_server(
    what: &str,
    bin_name: &str,
    make_cmd: impl Fn(&Path, u16, &Path) -> Command,
) -> (String, ServerProcess) {
    let bin = testbed_bin(bin_name);
    let mut last_err = String::new();
    for _attempt in 0..3 {
        let dir = tempfile::Builder::new()
            .prefix(&format!("zib-{bin_name}-"))
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let log = dir.path().join("server.log");
        let logf = std::fs::File::create(&log).expect("server log");
        let mut cmd = make_cmd(&bin, port, dir.path());
        cmd.stdin(Stdio::null()).stdout(logf.try_clone().expect("dup log")).stderr(logf);
        let child =
            cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}: {INSTALL_HINT}", bin.display()));
        let mut proc = ServerProcess { child, log, _dir: dir };
        let endpoint = format!("http://127.0.0.1:{port}");
        let limit = startup_limit();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                last_err = format!(
                    "{what} exited with {status}; log:\n{}",
                    std::fs::read_to_string(&proc.log).unwrap_or_default()
                );
                break;
            }
            // Listening yet? Then wait for the first answer (under the guest's emulated CPU,
            // moto takes ~20 s to listen and ~40 s more to answer its first request).
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                let left = deadline.saturating_duration_since(Instant::now());
                if http_request(&endpoint, "GET", "/", b"", left.max(Duration::from_secs(1)))
                    .is_ok()
                {
                    return (endpoint, proc);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} ({}) did not answer on {endpoint} within {} s; log:\n{}",
                    bin.display(),
                    limit.as_secs(),
                    std::fs::read_to_string(&proc.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("{what} failed to start 3 times: {last_err}");
}

/// How long a spawned server may take to answer: 60 s on the host, 300 s in the guest
/// (`ZIB_IN_GUEST`, set by run-in-guest), where Python runs under CPU emulation.
fn startup_limit() -> Duration {
    if std::env::var_os("ZIB_IN_GUEST").is_some() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(60)
    }
}

fn endpoint_from_env(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
}

/// The methods both server handles share: `start()` (the env var's server or a private
/// one), `endpoint()`, `is_private()`, `client()`, `create_bucket()`.
macro_rules! server_handle_methods {
    ($ty:ident) => {
        impl $ty {
            /// Uses the server named by [`Self::ENDPOINT_ENV`], or spawns a private one.
            pub fn start() -> $ty {
                match endpoint_from_env(Self::ENDPOINT_ENV) {
                    Some(endpoint) => $ty { endpoint, process: None },
                    None => Self::spawn(),
                }
            }

            /// `http://HOST:PORT`, without a trailing slash.
            pub fn endpoint(&self) -> &str {
                &self.endpoint
            }

            /// True if this handle spawned (and will kill) its own server.
            pub fn is_private(&self) -> bool {
                self.process.is_some()
            }

            /// An S3 client for this server with the test credentials.
            pub fn client(&self) -> aws_sdk_s3::Client {
                s3_client(&self.endpoint)
            }

            /// Creates a uniquely named bucket; returns its name.
            pub async fn create_bucket(&self, prefix: &str) -> String {
                crate::client::create_bucket(&self.client(), prefix).await
            }
        }
    };
}

server_handle_methods!(MotoServer);
server_handle_methods!(S3sFsServer);

/// A moto S3 server (`moto_server`): DEEP_ARCHIVE objects, RestoreObject, conditional PUTs.
///
/// [`MotoServer::start`] uses `ZIB_TEST_MOTO_ENDPOINT` when set (a server shared by the
/// whole run, e.g. the host's from inside the guest), else spawns one on a free loopback
/// port and kills it on drop. Buckets are the unit of isolation: use [`Self::create_bucket`].
#[derive(Debug)]
pub struct MotoServer {
    endpoint: String,
    process: Option<ServerProcess>,
}

impl MotoServer {
    /// Env var naming an already-running moto server (`http://HOST:PORT`).
    pub const ENDPOINT_ENV: &'static str = "ZIB_TEST_MOTO_ENDPOINT";

    /// Always spawns a private server (for tests that change server-wide settings).
    pub fn spawn() -> MotoServer {
        let (endpoint, process) = spawn_server("moto server", "moto_server", |bin, port, _| {
            let mut c = Command::new(bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            c
        });
        MotoServer { endpoint, process: Some(process) }
    }

    /// Spawns a private server whose clock (object times such as LastModified, restore
    /// expiries) reads the Unix seconds in `clock_file` on every use, the wall clock while the
    /// file is absent or unreadable: for tests that simulate months of daily runs. moto has no
    /// clock of its own to set, so its `utcnow` is replaced before the server starts.
    pub fn spawn_with_clock(clock_file: &Path) -> MotoServer {
        const BOOT: &str = r#"
import datetime, sys
clock = sys.argv.pop(1)
import moto.core.utils as utils
import moto.s3.models as s3models
wall = utils.utcnow
def utcnow():
    try:
        with open(clock) as f:
            t = float(f.read().strip())
    except (OSError, ValueError):
        return wall()
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None)
utils.utcnow = utcnow
s3models.utcnow = utcnow
from moto.server import main
sys.exit(main())
"#;
        let (endpoint, process) = spawn_server("moto server", "moto_server", |bin, port, _| {
            // The interpreter of the moto_server script (its #! line).
            let script = std::fs::read_to_string(bin.canonicalize().expect("moto_server"))
                .expect("read moto_server");
            let python = script.lines().next().and_then(|l| l.strip_prefix("#!")).expect("#!");
            let mut c = Command::new(python.trim());
            c.args(["-c", BOOT]).arg(clock_file).args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            c
        });
        MotoServer { endpoint, process: Some(process) }
    }

    /// Makes restores slow: every restore stays `ongoing-request="true"` for `times`
    /// requests on the key (moto's manual state transition). Server-wide: use
    /// [`Self::spawn`] for a private server when tests run in parallel.
    pub fn set_restore_transition_manual(&self, times: u32) {
        let body = format!(
            r#"{{"model_name":"s3::keyrestore","transition":{{"progression":"manual","times":{times}}}}}"#
        );
        self.moto_api("/moto-api/state-manager/set-transition", &body);
    }

    /// Undoes [`Self::set_restore_transition_manual`]: restores complete at once again.
    pub fn unset_restore_transition(&self) {
        self.moto_api(
            "/moto-api/state-manager/unset-transition",
            r#"{"model_name":"s3::keyrestore"}"#,
        );
    }

    fn moto_api(&self, path: &str, body: &str) {
        match http_request(&self.endpoint, "POST", path, body.as_bytes(), startup_limit()) {
            Ok((s, _)) if (200..300).contains(&s) => {}
            Ok((s, b)) => panic!("moto {path}: HTTP {s}: {b}"),
            Err(e) => panic!("moto {path}: {e}"),
        }
    }
}

/// An s3s-fs server: files on disk (a temp dir), validates checksums (400 BadDigest),
/// cheap for large objects. No storage classes, no RestoreObject.
///
/// [`S3sFsServer::start`] uses `ZIB_TEST_S3SFS_ENDPOINT` when set, else spawns one on a
/// free loopback port with a temp data dir, killed and removed on drop.
#[derive(Debug)]
pub struct S3sFsServer {
    endpoint: String,
    process: Option<ServerProcess>,
}

impl S3sFsServer {
    /// Env var naming an already-running s3s-fs server (`http://HOST:PORT`).
    pub const ENDPOINT_ENV: &'static str = "ZIB_TEST_S3SFS_ENDPOINT";

    /// Always spawns a private server.
    pub fn spawn() -> S3sFsServer {
        let (endpoint, process) = spawn_server("s3s-fs", "s3s-fs", |bin, port, dir| {
            let data = dir.join("data");
            std::fs::create_dir_all(&data).expect("s3s-fs data dir");
            let mut c = Command::new(bin);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", TEST_ACCESS_KEY_ID, "--secret-key", TEST_SECRET_ACCESS_KEY])
                .arg(&data);
            c
        });
        S3sFsServer { endpoint, process: Some(process) }
    }
}
