//! `zibctl status --watch` in a real terminal (a tmux pane) against a real daemon: zibd
//! in-process with its control socket, s3s-fs as the bucket and zibd's stand-in zfs
//! (`crates/zibd/tests/support`). The pane shows a line per dataset, in colour, redrawn in
//! place; a backup triggered with `zibctl trigger` shows its progress bar and then its success;
//! a dataset never backed up turns stale (red) after its `stale_after`; a daemon restart is
//! shown and survived; Ctrl-C ends zibctl with exit 0 and the cursor shown again.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../zibd/tests/support/config.rs"]
mod config;
#[path = "../../zibd/tests/support/fake_zfs.rs"]
#[allow(dead_code)] // a part of it serves here
mod fake_zfs;

use config::{ConfigToml, quoted};
use fake_zfs::FakeZfs;
use zib_testkit::{S3sFsServer, Tmux};
use zibd::{
    daemon::{Daemon, DaemonOptions},
    job::SystemClock,
    outside::Outside,
    systemd::Notifier,
};

/// The tmux server's name (`-L`); its socket is under the test's own `TMUX_TMPDIR`.
const SERVER: &str = "zibctl-watch";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls the pane every 100 ms until `pred` holds of it; fails after 60 s.
async fn pane_until(tmux: &Tmux, what: &str, escapes: bool, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pane = tmux.capture(escapes);
        if pred(&pane) {
            return pane;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{pane}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pane's line of `ds`.
fn line<'a>(pane: &'a str, ds: &str) -> &'a str {
    pane.lines().find(|l| l.starts_with(ds)).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_in_a_terminal_against_a_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("watch").await;
    // Streams of 1 MiB in chunks of 64 KiB; `slow` holds the run in `uploading`.
    let zfs = FakeZfs::at(root.join("zfs")).knob("FAKE_ZFS_SIZE", "1048576");
    let (fresh, run) = ("watch/fresh", "watch/run");
    zfs.slow(run, true);
    let socket = root.join("run/zibd.sock");
    let config = root.join("zibd.toml");
    ConfigToml::new(root, &bucket, s3.endpoint())
        .daemon("socket", quoted(socket.display()))
        .daemon("shutdown_timeout_secs", 10)
        .target("storage_class", quoted("STANDARD"))
        .target("chunk_size", quoted("64KiB"))
        .dataset(fresh, "0 0 3 * * *")
        .dataset_key("stale_after", quoted("2s"))
        .dataset(run, "0 0 3 * * *")
        .write(&config);
    let start = || {
        Daemon::start(DaemonOptions {
            config_path: config.clone(),
            clock: Arc::new(SystemClock),
            notifier: Notifier::disabled(),
            outside: Outside {
                zfs: zfs.zfs(),
                s3_credentials: Some(zib_testkit::test_credentials()),
            },
        })
    };
    let daemon = start().await.expect("daemon starts");

    let zibctl = env!("CARGO_BIN_EXE_zibctl");
    let sock = socket.display().to_string();
    // Ctrl-C reaches the pane's whole process group: the shell around zibctl traps it to live
    // on, say how zibctl exited and keep the pane (a dead pane's cursor flag is reset).
    let shell = r#"trap true INT; "$@"; echo "zibctl exited $?"; exec sleep 600"#;
    #[rustfmt::skip]
    let tmux = Tmux::start(root, SERVER, "watch", (120, 30), &[
        "sh", "-c", shell, "sh",
        "env", "-u", "NO_COLOR", "-u", "ZIBCTL_SOCKET", "TZ=UTC",
        zibctl, "--socket", &sock, "status", "--watch", "--interval", "1",
    ]);

    // A line per dataset; the header in bold (colour on a terminal).
    let first = pane_until(&tmux, "a line per dataset", false, |p| {
        line(p, fresh).contains("scheduled") && line(p, run).contains("scheduled")
    })
    .await;
    assert!(first.contains("DATASET") && first.contains("every 1s; Ctrl-C to quit"), "{first}");
    assert!(tmux.capture(true).contains("\x1b[1mDATASET"), "bold header");
    // Never backed up, up for longer than its stale_after of 2 s: stale, in red.
    pane_until(&tmux, "watch/fresh stale in red", true, |p| p.contains("\x1b[31mnever (stale)"))
        .await;

    // A backup through zibctl: its bar, then its success.
    let out = std::process::Command::new(zibctl)
        .args(["--socket", &sock, "trigger", run])
        .output()
        .unwrap();
    assert!(out.status.success(), "zibctl trigger: {}", text(&out.stderr));
    let busy = pane_until(&tmux, "the running backup's bar", false, |p| {
        let l = line(p, run);
        l.contains("uploading") && l.contains("% ") && l.contains("/ 1.0 MiB")
    })
    .await;
    assert!(line(&busy, run).contains('['), "{busy}");
    zfs.slow(run, false);
    let done = pane_until(&tmux, "the backup's success", false, |p| {
        let l = line(p, run);
        l.contains("scheduled") && l.contains("ok ")
    })
    .await;
    // Redrawn in place: one frame on the screen, without the bar any more.
    assert_eq!(done.matches("DATASET").count(), 1, "{done}");
    assert!(!line(&done, run).contains('['), "{done}");

    // The daemon goes away: the view says so and goes on; it comes back: the view with it.
    assert!(daemon.stop().await);
    pane_until(&tmux, "zibd is not reachable", false, |p| p.contains("zibd is not reachable"))
        .await;
    let daemon = start().await.expect("daemon starts again");
    let back = pane_until(&tmux, "the view after the restart", false, |p| {
        line(p, run).contains("ok ") && !p.contains("not reachable")
    })
    .await;
    assert_eq!(back.matches("DATASET").count(), 1, "{back}");

    tmux.send_keys("C-c");
    let end = pane_until(&tmux, "zibctl to exit", false, |p| p.contains("zibctl exited")).await;
    // On a line of its own: zibctl ends its last frame's footer with a newline.
    assert!(end.lines().any(|l| l.starts_with("zibctl exited 0")), "exit 0 on Ctrl-C: {end}");
    assert!(line(&end, run).contains("ok "), "the last frame stays: {end}");
    assert_eq!(tmux.display("#{cursor_flag}"), "1", "the cursor is shown again");
    assert!(daemon.stop().await);
}
