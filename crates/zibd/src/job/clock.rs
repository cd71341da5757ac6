//! Wall-clock time for schedules, behind a trait so tests can drive it.
//!
//! Cron ticks are wall-clock instants, so the job tasks ask a [`Clock`] for "now" and wait with
//! [`Clock::sleep_until`]. [`SystemClock`] re-reads the system time at least every minute while
//! it waits, so a clock step (NTP, suspend/resume) delays a run by at most that much.
//! [`ManualClock`] only moves when a test moves it; everything else (S3, `zfs`, timeouts) keeps
//! running on real time. [`spawn_looks`] is the loop of the daemon-wide schedules (the
//! scheduled verify, the datasets' drills) on such a clock.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::JobContext;

/// A boxed, sendable future (what [`Clock::sleep_until`] returns).
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Completes once [`Clock::now`] has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single sleep of [`SystemClock`]: it re-reads the time after this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture {
        Box::pin(async move {
            loop {
                let left = at - Utc::now();
                let Ok(left) = left.to_std() else { return };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(MAX_SLEEP)).await;
            }
        })
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Arc::new(watch::Sender::new(start)) }
    }

    /// Sets the time (never backwards: a smaller value is ignored).
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_if_modified(|now| {
            if t > *now {
                *now = t;
                true
            } else {
                false
            }
        });
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let t = *self.now.borrow() + chrono::Duration::from_std(d).expect("duration in range");
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, never wake.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// How often [`spawn_looks`] looks at the schedules between their ticks.
pub const LOOK_EVERY: Duration = Duration::from_secs(60);

/// A daemon-wide schedule (`daemon.verify_schedule`, the datasets' `drill_schedule`s) as a task
/// on `ctx`'s tracker, until shutdown: each look asks `next` for the first tick after the
/// previous look of each schedule in force, keyed (so a schedule changed by a reload takes
/// effect within a minute), and awaits `run` with the keys of those due; ticks that pass while
/// it runs are skipped.
pub fn spawn_looks<K, N, R, F>(ctx: &JobContext, next: N, run: R)
where
    K: Send + 'static,
    N: Fn(DateTime<Utc>) -> Vec<(K, DateTime<Utc>)> + Send + 'static,
    R: Fn(Vec<K>) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let ctx = ctx.clone();
    ctx.tracker.clone().spawn(async move {
        let mut since = ctx.clock.now();
        loop {
            let now = ctx.clock.now();
            let (due, later): (Vec<_>, Vec<_>) =
                next(since).into_iter().partition(|(_, t)| *t <= now);
            if !due.is_empty() {
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return,
                    () = run(due.into_iter().map(|(k, _)| k).collect()) => {}
                }
                since = ctx.clock.now();
                continue;
            }
            since = now;
            let wake = later.iter().fold(now + LOOK_EVERY, |w, (_, t)| w.min(*t));
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                () = ctx.clock.sleep_until(wake) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let c = ManualClock::new(t0);
        let mut s = c.sleep_until(t0 + chrono::Duration::seconds(60));
        assert!(futures::poll!(&mut s).is_pending());
        c.advance(Duration::from_secs(59));
        assert!(futures::poll!(&mut s).is_pending());
        c.set(t0); // never backwards
        assert_eq!(c.now(), t0 + chrono::Duration::seconds(59));
        c.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), s).await.expect("woken");
    }

    #[tokio::test]
    async fn system_clock_past_deadline_is_immediate() {
        let s = SystemClock.sleep_until(Utc::now() - chrono::Duration::seconds(5));
        tokio::time::timeout(Duration::from_secs(1), s).await.expect("immediate");
    }
}
