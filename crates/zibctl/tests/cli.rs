//! The zibctl binary against a scripted fake daemon (built from zib-protocol alone): output,
//! exit codes, streaming, errors, and the socket option / environment variable.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{Duration, Utc};
use tokio::net::UnixListener;
use zib_protocol::{
    DaemonInfo, DatasetStatus, ErrorKind, JobState, LastSuccess, ProgressUpdate, Request, Response,
    RunProgress, decode_request, encode_response, read_frame, write_frame,
};

/// Serves one connection: each request is answered by `script`, which returns the frames to send.
fn fake_daemon(
    dir: &Path,
    script: impl Fn(Request) -> Vec<Response> + Send + 'static,
) -> (PathBuf, tokio::task::JoinHandle<Vec<Request>>) {
    let path = dir.join("zibd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(body)) = read_frame(&mut stream).await {
            let request = decode_request(&body).expect("zibctl sends valid requests").request;
            seen.push(request.clone());
            for response in script(request) {
                write_frame(&mut stream, &encode_response(&response)).await.unwrap();
            }
        }
        seen
    });
    (path, task)
}

async fn zibctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibctl"));
    // Local times in UTC, whatever the machine's zone.
    cmd.arg("--socket").arg(socket).args(args).env_remove("ZIBCTL_SOCKET").env("TZ", "UTC");
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status_reply() -> Response {
    let now = Utc::now();
    Response::Status {
        daemon: DaemonInfo {
            version: "0.1.0".into(),
            protocol_version: 1,
            started_at: now - Duration::hours(3),
            uptime_secs: 3 * 3600,
            jobs_running: 1,
            jobs_max: Some(2),
            restores_running: 0,
            last_verify: None,
            next_verify: None,
            drills: vec![],
        },
        datasets: vec![DatasetStatus {
            dataset: "tank/photos".into(),
            state: JobState::Uploading,
            paused: false,
            schedule: Some("0 3 * * *".into()),
            progress: Some(RunProgress {
                snapshot: "tank/photos@zib-1".into(),
                incremental: false,
                started_at: None,
                bytes_sent: 1024 * 1024 * 1024,
                bytes_total_estimate: Some(4 * 1024 * 1024 * 1024),
                chunks_done: 1,
                chunks_total_estimate: Some(4),
                rate_bytes_per_sec: Some(10 * 1024 * 1024),
                eta_secs: Some(300),
            }),
            last_success: Some(LastSuccess {
                at: now - Duration::minutes(5),
                snapshot: None,
                bytes: 2048,
            }),
            last_error: None,
            next_run: Some(now + Duration::hours(3) + Duration::seconds(30)),
            chain_length: 3,
            missed_ticks: 0,
            last_note: None,
            stale_after_secs: None,
        }],
    }
}

#[tokio::test]
async fn status_table() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |_| vec![status_reply()]);
    let out = zibctl(&sock, &["status"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("zibd 0.1.0 (protocol 1), up 3h, 1 of 2 jobs running\n"), "{text}");
    assert!(
        text.contains("tank/photos  uploading  1.0 GiB / 4.0 GiB (25%), chunk 2/4  10.0 MiB/s  5m"),
        "{text}"
    );
    assert!(text.contains("5m ago (2.0 KiB)") && text.contains("in 3h"), "{text}");
    // The next run in local time too (TZ=UTC here), and the chain since the last full.
    let next = (Utc::now() + Duration::hours(3) + Duration::seconds(30)).format("(%a %H:%M)");
    let next_alt = (Utc::now() + Duration::hours(3) + Duration::seconds(29)).format("(%a %H:%M)");
    assert!(text.contains(&next.to_string()) || text.contains(&next_alt.to_string()), "{text}");
    assert!(
        text.contains("CHAIN") && text.trim_end().lines().nth(3).unwrap().ends_with(" 3"),
        "{text}"
    );
    assert_eq!(task.await.unwrap(), [Request::Status { dataset: None }]);
}

#[tokio::test]
async fn status_json_is_the_protocol_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |_| vec![status_reply()]);
    let out = zibctl(&sock, &["status", "tank/photos", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "status");
    assert_eq!(v["datasets"][0]["dataset"], "tank/photos");
    assert_eq!(v["datasets"][0]["progress"]["bytes_sent"], 1024 * 1024 * 1024);
    assert_eq!(task.await.unwrap(), [Request::Status { dataset: Some("tank/photos".into()) }]);
}

fn progress(n: u64) -> Response {
    Response::Progress(ProgressUpdate {
        dataset: "tank/a".into(),
        state: JobState::Uploading,
        progress: Some(RunProgress {
            snapshot: "tank/a@zib-1".into(),
            incremental: true,
            started_at: None,
            bytes_sent: n * 1024,
            bytes_total_estimate: Some(3072),
            chunks_done: n,
            chunks_total_estimate: Some(3),
            rate_bytes_per_sec: None,
            eta_secs: None,
        }),
        message: None,
    })
}

#[tokio::test]
async fn trigger_wait_shows_progress_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |_| {
        vec![
            progress(0),
            progress(1),
            Response::Done {
                ok: true,
                message: "backed up tank/a@zib-1".into(),
                snapshot: None,
                bytes: Some(3072),
            },
        ]
    });
    let out = zibctl(&sock, &["trigger", "tank/a", "--wait"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "tank/a: uploading tank/a@zib-1, 0 B / 3.0 KiB (0%), chunk 1/3\n\
         tank/a: uploading tank/a@zib-1, 1.0 KiB / 3.0 KiB (33%), chunk 2/3\n\
         tank/a: done: backed up tank/a@zib-1\n"
    );
    assert_eq!(
        task.await.unwrap(),
        [Request::Trigger { dataset: "tank/a".into(), wait: true, full: false }]
    );

    let dir = tempfile::tempdir().unwrap();
    let (sock, _task) = fake_daemon(dir.path(), |_| {
        vec![
            progress(0),
            Response::Done {
                ok: false,
                message: "zfs send failed".into(),
                snapshot: None,
                bytes: None,
            },
        ]
    });
    let out = zibctl(&sock, &["trigger", "tank/a", "--wait"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("backup of tank/a failed: zfs send failed"), "{}", stderr(&out));
}

#[tokio::test]
async fn mutating_commands_print_the_daemon_message() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |r| match r {
        Request::Pause { dataset: None } => vec![Response::ok("paused 2 datasets")],
        _ => vec![Response::Ok { message: None }],
    });
    let out = zibctl(&sock, &["pause"]).await;
    assert!(out.status.success());
    assert_eq!(stdout(&out), "paused 2 datasets\n");
    assert_eq!(task.await.unwrap(), [Request::Pause { dataset: None }]);

    for (args, expected, request) in [
        (
            &["resume", "tank/a"][..],
            "resumed tank/a\n",
            Request::Resume { dataset: Some("tank/a".into()) },
        ),
        (
            &["cancel", "tank/a"][..],
            "cancelling the run of tank/a\n",
            Request::Cancel { dataset: "tank/a".into() },
        ),
        (&["reload"][..], "configuration reloaded\n", Request::Reload),
        (
            &["restore", "cancel", "tank/r"][..],
            "cancelling restore job tank/r\n",
            Request::RestoreCancel { id: "tank/r".into() },
        ),
        (
            &["trigger", "tank/a"][..],
            "triggered a backup of tank/a\n",
            Request::Trigger { dataset: "tank/a".into(), wait: false, full: false },
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (sock, task) = fake_daemon(dir.path(), |_| vec![Response::Ok { message: None }]);
        let out = zibctl(&sock, args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), expected);
        assert_eq!(task.await.unwrap(), [request]);
    }
}

#[tokio::test]
async fn trigger_full_asks_for_a_new_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |_| vec![Response::Ok { message: None }]);
    let out = zibctl(&sock, &["trigger", "--full", "tank/a"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "triggered a full backup of tank/a\n");
    assert_eq!(
        task.await.unwrap(),
        [Request::Trigger { dataset: "tank/a".into(), wait: false, full: true }]
    );
}

/// `zibctl restore drill` sends the drill request and prints the daemon's report; it exits 0
/// only when the drill passed (a failed drill, or the quote of one that must thaw, is 1).
#[tokio::test]
async fn restore_drill_prints_the_report_and_exits_by_its_result() {
    for (result, code) in [("passed", 0), ("failed", 1), ("needs_consent", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (sock, task) = fake_daemon(dir.path(), move |_| {
            vec![Response::Report {
                text: format!("restore drill of tank/a@zib-1 {result}\n"),
                json: serde_json::json!({ "result": result, "dataset": "tank/a" }),
            }]
        });
        let out =
            zibctl(&sock, &["restore", "drill", "tank/a", "--yes", "--tier", "standard"]).await;
        assert_eq!(out.status.code(), Some(code), "{result}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("restore drill of tank/a@zib-1 {result}\n"));
        assert_eq!(
            task.await.unwrap(),
            [Request::RestoreDrill {
                dataset: "tank/a".into(),
                snapshot: None,
                yes: true,
                tier: zib_protocol::RestoreTier::Standard
            }]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (sock, _task) = fake_daemon(dir.path(), |_| {
        vec![Response::Report {
            text: String::new(),
            json: serde_json::json!({ "result": "passed" }),
        }]
    });
    let out = zibctl(&sock, &["restore", "drill", "tank/a", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["result"], "passed");
}

#[tokio::test]
async fn daemon_errors_map_to_exit_codes() {
    for (kind, code) in [
        (ErrorKind::PermissionDenied, 4),
        (ErrorKind::NotFound, 1),
        (ErrorKind::Busy, 1),
        (ErrorKind::Unsupported, 5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _task) = fake_daemon(dir.path(), move |_| {
            vec![Response::error(
                kind,
                "permission denied: 'reload' needs root or membership in group 'zib'",
            )]
        });
        let out = zibctl(&sock, &["reload"]).await;
        assert_eq!(out.status.code(), Some(code), "{kind:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("group 'zib'"), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn not_running_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sock");
    let out = zibctl(&missing, &["status"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is zibd running?"), "{}", stderr(&out));

    // A stale socket file: nobody listens.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = zibctl(&stale, &["status"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is zibd running?"), "{}", stderr(&out));
}

#[tokio::test]
async fn socket_from_the_environment_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = fake_daemon(dir.path(), |_| {
        vec![Response::Version { daemon_version: "0.1.0".into(), protocol_version: 1 }]
    });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibctl"))
        .arg("version")
        .env("ZIBCTL_SOCKET", &sock)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("zibctl {} (protocol 1)\nzibd 0.1.0 (protocol 1)\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(task.await.unwrap(), [Request::Version]);
}

#[tokio::test]
async fn usage_errors_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("unused.sock");
    let out = zibctl(&sock, &["cancel"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = zibctl(&sock, &["completions", "bash"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("zibctl"));
    let out = zibctl(&sock, &["--help"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("Exit codes:"));
}

/// A user who may not open the socket is told which group it needs (exit 4). Needs root to run
/// zibctl as nobody; skipped otherwise.
#[tokio::test]
async fn permission_denied_on_the_socket_names_the_group() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run zibctl as another user");
        return;
    }
    let Some(group) = nix::unistd::Group::from_name("daemon").ok().flatten() else {
        eprintln!("skipped: no group 'daemon'");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("zibd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    nix::unistd::chown(&path, None, Some(group.gid)).unwrap();
    let out = {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zibctl"));
        cmd.arg("--socket").arg(&path).arg("reload").uid(65534).gid(65534);
        tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap()
    };
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("group 'daemon'"), "{}", stderr(&out));
}

#[test]
fn man_pages_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zibctl"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("zibctl.1")).unwrap();
    assert!(page.contains(".TH zibctl 1") && page.contains("Exit codes"), "{page}");
    let cancel = std::fs::read_to_string(dir.path().join("zibctl-restore-cancel.1")).unwrap();
    assert!(cancel.contains("does not continue it"), "{cancel}");
}

/// A status reply whose running backup has sent `n` GiB of 4, and whose last success (5
/// minutes ago) is stale after 60 seconds.
fn watched_reply(n: u64) -> Response {
    let Response::Status { daemon, mut datasets } = status_reply() else { unreachable!() };
    let d = &mut datasets[0];
    d.progress.as_mut().unwrap().bytes_sent = n * 1024 * 1024 * 1024;
    d.stale_after_secs = Some(60);
    Response::Status { daemon, datasets }
}

/// A fake daemon answering the k-th status request with `watched_reply(k)` (1 GiB more each).
fn watched_daemon(dir: &Path) -> (PathBuf, tokio::task::JoinHandle<Vec<Request>>) {
    let asked = std::sync::atomic::AtomicU64::new(0);
    fake_daemon(dir, move |_| {
        let k = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        vec![watched_reply(k.min(4))]
    })
}

/// Runs `zibctl --socket SOCK ARGS` with its stdout into a pipe until `enough` holds of what
/// it printed, then sends it SIGINT, which must end it with exit 0; returns what it printed.
async fn watch_into_a_pipe(sock: &Path, args: &[&str], enough: impl Fn(&str) -> bool) -> String {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zibctl"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .env("TZ", "UTC")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !enough(&text) {
        assert!(std::time::Instant::now() < deadline, "not enough in 30 s: {text}");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), out.read(&mut buf))
            .await
            .expect("a frame within 30 s")
            .unwrap();
        assert!(n > 0, "zibctl closed stdout: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("zibctl ends on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    text
}

/// `status --watch` into a pipe: plain frames (no escape codes), one per interval, until
/// SIGINT, which ends it with exit 0.
#[tokio::test]
async fn status_watch_in_a_pipe_prints_plain_frames_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = watched_daemon(dir.path());
    let args = ["status", "--watch", "--interval", "1"];
    // Until the second frame's bar (1 GiB more each refresh).
    let text = watch_into_a_pipe(&sock, &args, |t| t.contains("50% 2.0 GiB / 4.0 GiB")).await;
    assert!(!text.contains('\x1b'), "escape codes in a pipe: {text:?}");
    assert!(text.contains("[##--------]  25% 1.0 GiB / 4.0 GiB"), "{text}");
    assert!(text.contains("[#####-----]  50% 2.0 GiB / 4.0 GiB"), "{text}");
    assert!(text.contains("5m ago (stale)"), "{text}");
    let seen = task.await.unwrap();
    assert!(seen.len() >= 2 && seen.iter().all(|r| *r == Request::Status { dataset: None }));
}

/// `status --watch --json`: one status reply a line, as `status --json` prints it, for each
/// refresh.
#[tokio::test]
async fn status_watch_json_is_one_reply_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, task) = watched_daemon(dir.path());
    let args = ["status", "tank/photos", "--watch", "--json", "--interval", "1"];
    let text = watch_into_a_pipe(&sock, &args, |t| t.matches('\n').count() >= 2).await;
    let lines: Vec<&str> = text.lines().collect();
    for (k, l) in lines.iter().take(2).enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["type"], "status", "{l}");
        let sent = v["datasets"][0]["progress"]["bytes_sent"].as_u64().unwrap();
        assert_eq!(sent, (k as u64 + 1) << 30, "the k-th reply: {l}");
        assert_eq!(v["datasets"][0]["stale_after_secs"], 60, "{l}");
    }
    let seen = task.await.unwrap();
    let ds = Some("tank/photos".to_owned());
    assert!(seen.len() >= 2 && seen.iter().all(|r| *r == Request::Status { dataset: ds.clone() }));
}
