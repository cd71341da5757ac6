//! Adapter: runs `daemon.notify_command` for one notification. The details go in `ZIB_*`
//! environment variables, and nothing else of zibd's environment does (no `AWS_*`, no
//! credentials of any kind): the environment is cleared and only `PATH`, `HOME`, `LANG`,
//! `LC_ALL` and `TZ` are passed on. No stdin; stdout and stderr are kept for the log. The
//! command runs in its own process group, which is killed when it overruns its time limit.

use std::{os::unix::process::CommandExt, process::Stdio, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::AsyncReadExt;
use zib_core::alerts::AlertEvent;

/// The variables of zibd's own environment a notify command gets (none can hold a secret).
const PASSED_ON: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// Output kept for the log, per stream.
const OUTPUT_KEPT: usize = 2000;

/// One notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event: AlertEvent,
    pub dataset: String,
    /// The failure's message (failure; drill_failed: why the drill failed), or the last error
    /// (stale, when the last run failed).
    pub error: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub stale_after: Option<Duration>,
    /// How old the last success (or the watch of a dataset never backed up) is.
    pub age: Option<Duration>,
}

/// Why a notify command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot run the notify command {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("the notify command {program} did not finish within {secs} s and was killed")]
    Timeout { program: String, secs: u64 },
    #[error("the notify command {program} failed ({status}): {stderr}")]
    Exit { program: String, status: std::process::ExitStatus, stderr: String },
}

impl Notification {
    /// `ZIB_MESSAGE`: one line for a mail subject or a push message.
    pub fn message(&self, host: &str) -> String {
        let ds = &self.dataset;
        let when = |t: Option<DateTime<Utc>>| {
            t.map_or("never".to_owned(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        };
        match self.event {
            AlertEvent::Failure => format!(
                "zib on {host}: backup of {ds} failed: {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
            AlertEvent::Recovery => {
                format!(
                    "zib on {host}: backup of {ds} succeeded again at {}",
                    when(self.last_success)
                )
            }
            AlertEvent::DrillFailed => format!(
                "zib on {host}: restore drill of {ds} failed: {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
            AlertEvent::Stale => format!(
                "zib on {host}: no successful backup of {ds} for {} (last success: {})",
                zib_core::human::human_duration(self.age.unwrap_or_default().as_secs()),
                when(self.last_success)
            ),
        }
    }

    /// The `ZIB_*` variables (absent values are left out).
    pub fn env(&self, host: &str) -> Vec<(&'static str, String)> {
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut v = vec![
            ("ZIB_EVENT", self.event.as_str().to_owned()),
            ("ZIB_DATASET", self.dataset.clone()),
            ("ZIB_HOST", host.to_owned()),
            ("ZIB_MESSAGE", self.message(host)),
            ("ZIB_VERSION", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        if let Some(e) = &self.error {
            v.push(("ZIB_ERROR", e.clone()));
        }
        if let Some(t) = self.last_success {
            v.push(("ZIB_LAST_SUCCESS", rfc(t)));
        }
        if let Some(t) = self.last_attempt {
            v.push(("ZIB_LAST_ATTEMPT", rfc(t)));
        }
        if let Some(d) = self.stale_after {
            v.push(("ZIB_STALE_AFTER_SECS", d.as_secs().to_string()));
        }
        if let Some(d) = self.age {
            v.push(("ZIB_SINCE_SUCCESS_SECS", d.as_secs().to_string()));
        }
        v
    }
}

/// This machine's name, for the message (`ZIB_HOST`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Runs `argv` for `n`, at most `timeout`. Its stdout is returned (for the log).
pub async fn run(
    argv: &[String],
    n: &Notification,
    timeout: Duration,
) -> Result<String, NotifyError> {
    let program = argv.first().cloned().unwrap_or_default();
    let host = host_name();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(PASSED_ON.iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
        .envs(n.env(&host))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.as_std_mut().process_group(0);
    let mut child =
        cmd.spawn().map_err(|source| NotifyError::Spawn { program: program.clone(), source })?;
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
        (status, o, e)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => {
            // The whole group: a shell's children (curl, sleep) go too.
            if let Some(pg) = pgid {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            }
            Err(NotifyError::Timeout { program, secs: timeout.as_secs() })
        }
        Ok((Err(source), _, _)) => Err(NotifyError::Spawn { program, source }),
        Ok((Ok(status), o, e)) => {
            let text = |b: &[u8]| {
                let s = String::from_utf8_lossy(&b[..b.len().min(OUTPUT_KEPT)]);
                s.trim().to_owned()
            };
            if status.success() {
                Ok(text(&o))
            } else {
                Err(NotifyError::Exit { program, status, stderr: text(&e) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Notification {
        Notification {
            event: AlertEvent::Failure,
            dataset: "tank/home".into(),
            error: Some("S3 said no".into()),
            last_success: Some(
                DateTime::parse_from_rfc3339("2026-12-01T03:00:00Z").unwrap().to_utc(),
            ),
            last_attempt: None,
            stale_after: Some(Duration::from_secs(172_800)),
            age: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into(), "zib-notify".into()]
    }

    #[tokio::test]
    async fn the_command_gets_the_details_and_nothing_else() {
        let out = run(&sh("env | sort"), &failure(), Duration::from_secs(10)).await.unwrap();
        let vars: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
        for want in [
            "ZIB_EVENT=failure",
            "ZIB_DATASET=tank/home",
            "ZIB_ERROR=S3 said no",
            "ZIB_LAST_SUCCESS=2026-12-01T03:00:00Z",
            "ZIB_STALE_AFTER_SECS=172800",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing in\n{out}");
        }
        let msg = out.lines().find(|l| l.starts_with("ZIB_MESSAGE=")).unwrap();
        assert!(msg.contains("backup of tank/home failed: S3 said no"), "{msg}");
        // sh itself adds PWD/SHLVL/_; nothing else of ours comes through.
        for v in vars {
            assert!(
                v.starts_with("ZIB_")
                    || PASSED_ON.contains(&v)
                    || ["PWD", "SHLVL", "_"].contains(&v),
                "{v} leaked into the notify command's environment"
            );
        }
    }

    #[tokio::test]
    async fn an_overrunning_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let t0 = std::time::Instant::now();
        let e = run(&sh(&script), &failure(), Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, NotifyError::Timeout { secs: 1, .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Killed (a zombie until reaped by init at most): gone or not running.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the child sleep {pid} survived: {stat}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn a_failing_or_missing_command_is_an_error_with_its_stderr() {
        let e = run(&sh("echo no mail server >&2; exit 3"), &failure(), Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed") && e.contains("no mail server"), "{e}");
        let e = run(&["/nonexistent/notify".into()], &failure(), Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot run the notify command /nonexistent/notify"), "{e}");
    }
}
