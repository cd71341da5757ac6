//! The one live line a foreground command (`zibd backup`, `zibd restore run`) keeps at the
//! bottom of a terminal: the phase, a bar, bytes, rate, time left (and for a restore the
//! streams and the thaws ready), redrawn in place four times a second, instead of a log line
//! per step. Log lines still go above it ([`crate::process`] clears it before each). When
//! stderr is not a terminal (a pipe, the journal, a test) nothing is drawn and the log lines
//! are all there is.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use zib_core::human::{bar, human_bytes, human_duration, human_rate};

use crate::{
    backup::{Phase, Progress},
    process,
    restore::{RestorePhase, RestoreProgress},
};

/// Cells of the bar.
const BAR: usize = 20;
/// The longest line drawn: wider than the terminal, a line would wrap and its redraw would
/// leave its first row behind.
const MAX_WIDTH: usize = 79;

/// Redraws `render(progress, elapsed)` until the sender goes, then leaves the last frame;
/// `None` (nothing spawned) when stderr is not a terminal.
pub fn spawn<T>(
    mut rx: watch::Receiver<T>,
    render: fn(&T, Duration) -> String,
) -> Option<tokio::task::JoinHandle<()>>
where
    T: Send + Sync + 'static,
{
    if !process::stderr_is_live() {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let open = tokio::select! {
                _ = tick.tick() => true,
                r = rx.changed() => r.is_ok(),
            };
            let line = clip(&render(&rx.borrow(), start.elapsed()));
            process::draw_live_line(&line);
            if !open {
                process::end_live_line();
                return;
            }
        }
    }))
}

fn clip(line: &str) -> String {
    line.chars().take(MAX_WIDTH).collect()
}

/// `done` of `total` bytes after `elapsed`: the rate and what is left at it.
fn rate_and_eta(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 0.5 || done == 0 {
        return String::new();
    }
    let rate = done as f64 / secs;
    let mut s = format!(" {}", human_rate(rate as u64));
    if let Some(t) = total.filter(|t| *t > done) {
        s.push_str(&format!(" ETA {}", human_duration(((t - done) as f64 / rate) as u64)));
    }
    s
}

/// A backup's line: `uploading [#####---------------]  25% 3.0 GiB / 12.0 GiB 45.0 MiB/s ETA 3m 24s`.
pub fn backup(p: &Progress, elapsed: Duration) -> String {
    let phase = match p.phase {
        Phase::Starting => "starting",
        Phase::Snapshotting => "snapshotting",
        Phase::Uploading => "uploading",
        Phase::Committing => "committing",
        Phase::Pruning => "pruning",
    };
    if p.phase != Phase::Uploading {
        return phase.to_owned();
    }
    let amount = match p.bytes_estimate {
        Some(t) => format!(
            "{} {} / {}",
            bar(p.bytes_done, t, BAR),
            human_bytes(p.bytes_done),
            human_bytes(t)
        ),
        None => format!("{} sent", human_bytes(p.bytes_done)),
    };
    format!("{phase} {amount}{}", rate_and_eta(p.bytes_done, p.bytes_estimate, elapsed))
}

/// A restore's line: `receiving stream 1/2 [###-----] 15% 6.0 MiB / 40.0 MiB 12.0 MiB/s ETA 3s`,
/// or while thaws run `thawing: 3/9 chunks ready`.
pub fn restore(p: &RestoreProgress, elapsed: Duration) -> String {
    match p.phase {
        RestorePhase::Planning => "planning".into(),
        RestorePhase::Thawing => {
            format!("thawing: {}/{} chunks ready", p.thaw_ready, p.thaw_needed)
        }
        RestorePhase::Receiving => {
            let stream = (p.steps_received + 1).min(p.steps_total.max(1));
            let mut s = format!(
                "receiving stream {stream}/{} {} {} / {}{}",
                p.steps_total,
                bar(p.bytes_received, p.bytes_total, BAR),
                human_bytes(p.bytes_received),
                human_bytes(p.bytes_total),
                rate_and_eta(p.bytes_received, Some(p.bytes_total), elapsed)
            );
            if p.thaw_needed > 0 && p.thaw_ready < p.thaw_needed {
                s.push_str(&format!(", thawed {}/{}", p.thaw_ready, p.thaw_needed));
            }
            s
        }
        RestorePhase::Finishing => "finishing (key, mount)".into(),
        RestorePhase::Done => "done".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_line_shows_the_bar_bytes_rate_and_time_left() {
        let mut p = Progress {
            phase: Phase::Uploading,
            bytes_done: 3 << 20,
            bytes_estimate: Some(12 << 20),
            ..Default::default()
        };
        assert_eq!(
            backup(&p, Duration::from_secs(3)),
            "uploading [#####---------------]  25% 3.0 MiB / 12.0 MiB 1.0 MiB/s ETA 9s"
        );
        p.bytes_estimate = None;
        assert_eq!(backup(&p, Duration::from_secs(3)), "uploading 3.0 MiB sent 1.0 MiB/s");
        // Nothing measured yet: no rate.
        assert_eq!(backup(&p, Duration::from_millis(100)), "uploading 3.0 MiB sent");
        p.phase = Phase::Committing;
        assert_eq!(backup(&p, Duration::from_secs(3)), "committing");
    }

    #[test]
    fn a_restore_line_shows_the_stream_the_bar_and_the_thaws() {
        let mut p = RestoreProgress {
            phase: RestorePhase::Thawing,
            steps_total: 2,
            thaw_needed: 9,
            thaw_ready: 3,
            bytes_total: 40 << 20,
            ..Default::default()
        };
        assert_eq!(restore(&p, Duration::from_secs(1)), "thawing: 3/9 chunks ready");
        p.phase = RestorePhase::Receiving;
        p.bytes_received = 6 << 20;
        let line = restore(&p, Duration::from_secs(2));
        assert!(line.starts_with("receiving stream 1/2 [###-----------------]  15% 6.0 MiB / 40.0 MiB 3.0 MiB/s ETA 11s"), "{line}");
        assert!(line.ends_with(", thawed 3/9"), "{line}");
        assert!(clip(&line).chars().count() <= MAX_WIDTH);
    }
}
