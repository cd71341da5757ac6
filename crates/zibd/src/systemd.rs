//! systemd integration (sd_notify): READY=1, a one-line STATUS=, WATCHDOG=1, STOPPING=1.
//!
//! Every call is a no-op when the notifier is disabled or `NOTIFY_SOCKET` is unset, so zibd runs
//! the same without systemd. Send errors are logged at debug level and otherwise ignored: a
//! missing supervisor must never stop the daemon. Sends never block: a manager that does not
//! read (its queue holds 512 datagrams by default, `net.unix.max_dgram_qlen`) once held a
//! runtime thread and the shutdown of a daemon that had sent a STATUS= for each of 500 runs;
//! now a STATUS= or WATCHDOG=1 that would block is dropped, and READY=1 / STOPPING=1 are tried
//! for up to 200 ms.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use zib_core::human::human_duration;

/// Talks to the service manager, if any.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// Notifies the manager named by `NOTIFY_SOCKET` (if set).
    pub fn from_env() -> Self {
        Self { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    /// Never notifies (in-process tests, which may run under a service manager themselves).
    pub fn disabled() -> Self {
        Self { enabled: false }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, state: &[NotifyState], tries: u32) {
        if !self.enabled {
            return;
        }
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
        let msg: String = state.iter().map(|s| format!("{s}\n")).collect();
        let mut tries = tries.max(1);
        loop {
            match Self::send_datagram(&path, msg.as_bytes()) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries > 1 => {
                    tries -= 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sd_notify failed");
                    return;
                }
            }
        }
    }

    /// READY=1 with a first STATUS=. Call only once the control socket answers.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)], 20);
    }

    /// STATUS=<line>.
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)], 1);
    }

    /// STOPPING=1 with a last STATUS=.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)], 20);
    }

    /// WATCHDOG=1.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog], 1);
    }

    /// One datagram to the manager's socket (a path, or `@name` in the abstract namespace), without
    /// blocking.
    fn send_datagram(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
        use std::os::unix::{ffi::OsStrExt, net::UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg, &addr)?;
            }
            None => {
                sock.send_to(msg, path)?;
            }
        }
        Ok(())
    }

    /// How often to send WATCHDOG=1: half of `WATCHDOG_USEC`, if the watchdog is on for this
    /// process (`WATCHDOG_PID` unset or ours).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }
}

/// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) reads it: the watchdog is on when the
/// value is a positive number and `WATCHDOG_PID` is unset or names this process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(our_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(50)))
}

/// Counts for the STATUS= line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSummary {
    pub running: usize,
    pub queued: usize,
    pub idle: usize,
    pub paused: usize,
    pub failed: usize,
    /// The dataset that runs next, and when.
    pub next: Option<(String, DateTime<Utc>)>,
}

/// "1 running, 2 idle, next tank/photos in 3h" (parts with a zero count are left out, except
/// that an empty daemon says "0 datasets").
pub fn status_line(s: &StatusSummary, now: DateTime<Utc>) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (s.running, "running"),
        (s.queued, "queued"),
        (s.idle, "idle"),
        (s.paused, "paused"),
        (s.failed, "failed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        parts.push("0 datasets".to_owned());
    }
    if let Some((ds, at)) = &s.next {
        parts.push(format!(
            "next {ds} in {}",
            human_duration((*at - now).num_seconds().max(0) as u64)
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_reads_well() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let s = StatusSummary {
            running: 1,
            idle: 2,
            next: Some(("tank/photos".into(), now + chrono::Duration::seconds(3 * 3600 + 59))),
            ..Default::default()
        };
        assert_eq!(status_line(&s, now), "1 running, 2 idle, next tank/photos in 3h");
        assert_eq!(status_line(&StatusSummary::default(), now), "0 datasets");
        let p = StatusSummary { paused: 3, ..Default::default() };
        assert_eq!(status_line(&p, now), "3 paused");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(2 * 86_400 + 5), "2d");
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        assert_eq!(watchdog_interval(Some("4000000"), None, 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_interval(Some("4000000"), Some("7"), 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_interval(Some("4000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn disabled_notifier_is_silent() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x");
        n.stopping("y");
    }
}
