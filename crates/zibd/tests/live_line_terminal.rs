//! Issue 15: `zibd backup` in a real terminal (a tmux pane) shows one live line (phase, bar,
//! bytes, rate, time left) redrawn in place, then its report; with stderr not a terminal it
//! draws nothing (no escape codes, no bar). s3s-fs as the bucket, the stand-in zfs sending
//! slowly so the line is there to see.

use std::time::{Duration, Instant};

use zib_testkit::{S3sFsServer, Tmux};

mod support;
use support::{ConfigToml, FakeZfs, ok};

/// The tmux server's name (`-L`); its socket is under the test's own `TMUX_TMPDIR`.
const SERVER: &str = "zibd-live-line";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_backup_draws_one_live_line_on_a_terminal_and_none_on_a_pipe() {
    let server = S3sFsServer::start();
    let bucket = server.create_bucket("live").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("zibd.toml");
    ConfigToml::new(root, &bucket, server.endpoint())
        .target("storage_class", support::config::quoted("STANDARD"))
        .target("chunk_size", 64 * 1024)
        .dataset("tank/photos", "0 3 * * *")
        .write(&config);
    let zfs = FakeZfs::at(root.join("zfs"));

    // Not a terminal: plain log lines only.
    let out = support::zibd(
        &config,
        root,
        server.endpoint(),
        &["backup", "tank/photos"],
        &[("FAKE_ZFS_SIZE", "300000".into())],
    );
    let err = ok(&out);
    assert!(!err.contains("\x1b[2K") && !err.contains("uploading ["), "{err}");

    // A terminal: the second backup sends slowly (16 KiB every 0.2 s, about 4 s).
    zfs.slow("tank/photos", true);
    let cmd = support::zibd_command(server.endpoint(), &zfs);
    let mut script = String::from("env");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            script.push_str(&format!(
                " {}={}",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            ));
        }
    }
    script.push_str(&format!(
        " FAKE_ZFS_SIZE=300000 ZIB_LOG=info {} --config {} backup tank/photos; echo EXIT=$?; sleep 600",
        shell_quote(env!("CARGO_BIN_EXE_zibd")),
        shell_quote(&config.display().to_string())
    ));
    let sh = root.join("run.sh");
    std::fs::write(&sh, script).unwrap();
    let tmp = root.join("tmux");
    std::fs::create_dir_all(&tmp).unwrap();
    let sh = sh.display().to_string();
    let tmux = Tmux::start(&tmp, SERVER, "live", (120, 30), &["bash", &sh]);

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bars_seen = 0;
    let pane = loop {
        let pane = tmux.capture(false);
        let live: Vec<&str> = pane.lines().filter(|l| l.starts_with("uploading")).collect();
        // Redrawn in place: never two progress lines on the screen.
        assert!(live.len() <= 1, "the live line scrolled:\n{pane}");
        if live.first().is_some_and(|l| l.contains("] ") && l.contains("% ") && l.contains(" / ")) {
            bars_seen += 1;
        }
        if pane.contains("EXIT=") {
            break pane;
        }
        assert!(Instant::now() < deadline, "the backup did not end within 90 s:\n{pane}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pane.contains("EXIT=0"), "{pane}");
    assert!(bars_seen >= 2, "the bar was seen {bars_seen} times:\n{pane}");
    assert!(pane.contains("incremental backup #2 of tank/photos@"), "the report follows:\n{pane}");
    // The per-chunk lines are gone from a terminal: the report and the last frame remain.
    assert!(!pane.contains("requesting thaw"), "{pane}");
}
