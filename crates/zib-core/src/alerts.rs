//! Which notification fires when (`daemon.notify_command`): a failed backup, the first success
//! after failures (recovery), and a dataset with no success for its `stale_after`. A pure
//! decision over what the daemon observes, with the little it must remember between looks, so
//! each rule is unit-tested here and the daemon only carries the events out.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    metrics::AttemptResult,
    schedule::{CronSchedule, TimeZone},
};

/// A notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    /// A backup run failed (every failed run).
    Failure,
    /// A run succeeded after one or more failed.
    Recovery,
    /// No success for `stale_after` (once until the next success).
    Stale,
    /// A restore drill failed or could not run (every such drill; see [`drill_event`]).
    DrillFailed,
}

impl AlertEvent {
    /// The value of `ZIB_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Failure => "failure",
            AlertEvent::Recovery => "recovery",
            AlertEvent::Stale => "stale",
            AlertEvent::DrillFailed => "drill_failed",
        }
    }
}

/// What the daemon sees of one dataset at a look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// The end of the last run and how it ended.
    pub last_attempt: Option<(DateTime<Utc>, AttemptResult)>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// What the decision remembers of one dataset between looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertMemory {
    /// The last run already dealt with.
    seen_attempt: Option<DateTime<Utc>>,
    /// The last run dealt with failed.
    failing: bool,
    /// A stale notification was sent and no success came since.
    stale_sent: bool,
    /// Since when the dataset is watched: staleness of one never backed up counts from here.
    watched_since: DateTime<Utc>,
}

impl AlertMemory {
    /// The memory at the first look (daemon start, dataset added): runs before it fire
    /// nothing, but a failure before it is remembered, so the next success is a recovery.
    pub fn new(first: &Observed, now: DateTime<Utc>) -> Self {
        Self {
            seen_attempt: first.last_attempt.map(|(t, _)| t),
            failing: matches!(first.last_attempt, Some((_, AttemptResult::Failure))),
            stale_sent: false,
            watched_since: now,
        }
    }

    /// Since when the dataset is watched.
    pub fn watched_since(&self) -> DateTime<Utc> {
        self.watched_since
    }
}

/// The events of one look at a dataset, updating `mem`. At most one per rule: a failure or a
/// recovery for a run not seen before, and a stale event when the last success (or, never
/// backed up, the start of watching) lies `stale_after` or more before `now`.
pub fn decide(
    mem: &mut AlertMemory,
    obs: &Observed,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    if let Some((at, result)) = obs.last_attempt
        && mem.seen_attempt != Some(at)
    {
        mem.seen_attempt = Some(at);
        match result {
            AttemptResult::Failure => {
                mem.failing = true;
                events.push(AlertEvent::Failure);
            }
            AttemptResult::Success | AttemptResult::Skipped => {
                if mem.failing {
                    events.push(AlertEvent::Recovery);
                }
                mem.failing = false;
            }
        }
    }
    let since = obs.last_success_at.unwrap_or(mem.watched_since);
    let stale = chrono::TimeDelta::from_std(stale_after).is_ok_and(|d| now - since >= d);
    if !stale {
        mem.stale_sent = false;
    } else if !mem.stale_sent {
        mem.stale_sent = true;
        events.push(AlertEvent::Stale);
    }
    events
}

/// The event of a dataset's last drill at a look: [`AlertEvent::DrillFailed`] for a failed
/// drill not dealt with before. `seen` is when the last drill dealt with ended; a look with
/// `seen` unset (the first, at start) only remembers, so a failure from before a restart is
/// not announced twice.
pub fn drill_event(
    seen: &mut Option<Option<DateTime<Utc>>>,
    last: Option<&crate::drill_summary::DrillSummary>,
) -> Option<AlertEvent> {
    let at = last.map(|d| d.at);
    let before = seen.replace(at)?;
    match last {
        Some(d) if before != at && !d.passed => Some(AlertEvent::DrillFailed),
        _ => None,
    }
}

/// `stale_after` when a dataset does not set it: twice the schedule's interval (the gap
/// between its next two ticks after `now`), at least one hour (a minutely schedule is not
/// stale after two minutes of a slow upload). None for a schedule with no next ticks.
pub fn default_stale_after(
    schedule: &CronSchedule,
    tz: TimeZone,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let t1 = schedule.next_after(now, tz)?;
    let t2 = schedule.next_after(t1, tz)?;
    let twice = (t2 - t1).to_std().ok()? * 2;
    Some(twice.max(Duration::from_secs(3600)))
}

/// A dataset's `stale_after` in force: the configured one, else [`default_stale_after`]. The
/// alerts and the status reply (`zibctl status --watch` colours a stale dataset) both take it
/// from here, so they agree.
pub fn stale_after(
    ds: &crate::config::DatasetConfig,
    tz: TimeZone,
    now: DateTime<Utc>,
) -> Option<Duration> {
    ds.stale_after.map(|s| s.0).or_else(|| default_stale_after(&ds.schedule, tz, now))
}

/// A span the config writes with a unit: `"90m"`, `"26h"`, `"2d"`, `"1w"`, `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number and a unit (s, m, h, d, w), such as \"26h\" or \"2d\""
            )
        };
        let unit = t.chars().last().ok_or_else(bad)?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = t[..t.len() - 1].trim().parse().map_err(|_| bad())?;
        let secs = n
            .checked_mul(mult)
            .filter(|s| *s > 0 && *s <= 3650 * 86_400)
            .ok_or_else(|| format!("invalid duration {s:?}: must be between 1s and 10 years"))?;
        Ok(Span(Duration::from_secs(secs)))
    }
}

impl TryFrom<String> for Span {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        s.to_string()
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_drill_is_announced_once_and_one_from_before_the_start_not_at_all() {
        use crate::drill_summary::{DrillSummary, DrillTrigger};
        let drill = |at: &str, passed: bool| DrillSummary {
            passed,
            ..DrillSummary::not_run("x".into(), at.parse().unwrap(), DrillTrigger::Schedule)
        };
        let old = drill("2026-12-01T05:00:00Z", false);
        let mut seen = None;
        // First look: a failure from before the start is only remembered.
        assert_eq!(drill_event(&mut seen, Some(&old)), None);
        assert_eq!(drill_event(&mut seen, Some(&old)), None);
        let new = drill("2026-12-02T05:00:00Z", false);
        assert_eq!(drill_event(&mut seen, Some(&new)), Some(AlertEvent::DrillFailed));
        assert_eq!(drill_event(&mut seen, Some(&new)), None, "once");
        assert_eq!(drill_event(&mut seen, Some(&drill("2026-12-03T05:00:00Z", true))), None);
        // A dataset with no drill at the first look: its first failed drill is announced.
        let mut seen = None;
        assert_eq!(drill_event(&mut seen, None), None);
        assert_eq!(drill_event(&mut seen, Some(&new)), Some(AlertEvent::DrillFailed));
        assert_eq!(AlertEvent::DrillFailed.as_str(), "drill_failed");
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn obs(attempt: Option<(&str, AttemptResult)>, success: Option<&str>) -> Observed {
        Observed { last_attempt: attempt.map(|(a, r)| (t(a), r)), last_success_at: success.map(t) }
    }

    #[test]
    fn a_failure_fires_for_each_failed_run_and_the_next_success_is_a_recovery() {
        let now = t("2026-12-01T03:00:00Z");
        let o = obs(
            Some(("2026-12-01T02:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T02:00:00Z"),
        );
        let mut m = AlertMemory::new(&o, now);
        assert_eq!(decide(&mut m, &o, DAY, now), vec![], "nothing new");
        let f1 = obs(
            Some(("2026-12-01T03:00:00Z", AttemptResult::Failure)),
            Some("2026-12-01T02:00:00Z"),
        );
        assert_eq!(decide(&mut m, &f1, DAY, now), vec![AlertEvent::Failure]);
        assert_eq!(decide(&mut m, &f1, DAY, now), vec![], "the same run fires once");
        let f2 = obs(
            Some(("2026-12-01T04:00:00Z", AttemptResult::Failure)),
            Some("2026-12-01T02:00:00Z"),
        );
        assert_eq!(decide(&mut m, &f2, DAY, now), vec![AlertEvent::Failure], "each failed run");
        let ok = obs(
            Some(("2026-12-01T05:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T05:00:00Z"),
        );
        assert_eq!(decide(&mut m, &ok, DAY, now), vec![AlertEvent::Recovery]);
        let ok2 = obs(
            Some(("2026-12-01T06:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T06:00:00Z"),
        );
        assert_eq!(decide(&mut m, &ok2, DAY, now), vec![], "a success after a success is quiet");
    }

    #[test]
    fn a_skipped_idle_run_also_recovers() {
        let now = t("2026-12-01T03:00:00Z");
        let f = obs(Some(("2026-12-01T02:00:00Z", AttemptResult::Failure)), None);
        let mut m = AlertMemory::new(&f, now);
        let s = obs(
            Some(("2026-12-01T03:00:00Z", AttemptResult::Skipped)),
            Some("2026-12-01T03:00:00Z"),
        );
        assert_eq!(decide(&mut m, &s, DAY, now), vec![AlertEvent::Recovery]);
    }

    #[test]
    fn a_failure_from_before_the_start_fires_nothing_but_its_recovery_does() {
        let now = t("2026-12-01T03:00:00Z");
        let f = obs(
            Some(("2026-12-01T01:00:00Z", AttemptResult::Failure)),
            Some("2026-11-30T23:00:00Z"),
        );
        let mut m = AlertMemory::new(&f, now);
        assert_eq!(decide(&mut m, &f, DAY, now), vec![]);
        let ok = obs(
            Some(("2026-12-01T04:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T04:00:00Z"),
        );
        assert_eq!(decide(&mut m, &ok, DAY, now), vec![AlertEvent::Recovery]);
    }

    #[test]
    fn stale_fires_once_when_the_last_success_is_old_enough_and_again_after_a_new_success_ages() {
        let start = t("2026-12-01T00:00:00Z");
        let o = obs(
            Some(("2026-12-01T00:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T00:00:00Z"),
        );
        let mut m = AlertMemory::new(&o, start);
        assert_eq!(decide(&mut m, &o, DAY, t("2026-12-01T23:59:59Z")), vec![]);
        assert_eq!(decide(&mut m, &o, DAY, t("2026-12-02T00:00:00Z")), vec![AlertEvent::Stale]);
        assert_eq!(decide(&mut m, &o, DAY, t("2026-12-03T00:00:00Z")), vec![], "once");
        // Failures meanwhile fire as failures, not as stale again.
        let f = obs(
            Some(("2026-12-03T01:00:00Z", AttemptResult::Failure)),
            Some("2026-12-01T00:00:00Z"),
        );
        assert_eq!(decide(&mut m, &f, DAY, t("2026-12-03T01:00:00Z")), vec![AlertEvent::Failure]);
        let ok = obs(
            Some(("2026-12-03T02:00:00Z", AttemptResult::Success)),
            Some("2026-12-03T02:00:00Z"),
        );
        assert_eq!(decide(&mut m, &ok, DAY, t("2026-12-03T02:00:00Z")), vec![AlertEvent::Recovery]);
        assert_eq!(
            decide(&mut m, &ok, DAY, t("2026-12-04T02:00:00Z")),
            vec![AlertEvent::Stale],
            "re-armed"
        );
    }

    #[test]
    fn a_dataset_never_backed_up_is_stale_counted_from_the_start_of_watching() {
        let start = t("2026-12-01T00:00:00Z");
        let o = obs(None, None);
        let mut m = AlertMemory::new(&o, start);
        assert_eq!(decide(&mut m, &o, DAY, t("2026-12-01T12:00:00Z")), vec![]);
        assert_eq!(decide(&mut m, &o, DAY, t("2026-12-02T00:00:00Z")), vec![AlertEvent::Stale]);
    }

    #[test]
    fn already_stale_at_the_first_look_fires_at_once() {
        let now = t("2026-12-10T00:00:00Z");
        let o = obs(
            Some(("2026-12-01T00:00:00Z", AttemptResult::Success)),
            Some("2026-12-01T00:00:00Z"),
        );
        let mut m = AlertMemory::new(&o, now);
        assert_eq!(decide(&mut m, &o, DAY, now), vec![AlertEvent::Stale]);
    }

    #[test]
    fn default_stale_after_is_twice_the_interval_and_at_least_an_hour() {
        let now = t("2026-12-01T00:30:00Z");
        let daily: CronSchedule = "0 3 * * *".parse().unwrap();
        assert_eq!(default_stale_after(&daily, TimeZone::Utc, now), Some(2 * DAY));
        let hourly: CronSchedule = "0 * * * *".parse().unwrap();
        assert_eq!(
            default_stale_after(&hourly, TimeZone::Utc, now),
            Some(Duration::from_secs(7200))
        );
        let minutely: CronSchedule = "* * * * *".parse().unwrap();
        assert_eq!(
            default_stale_after(&minutely, TimeZone::Utc, now),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn the_configured_stale_after_wins_over_the_default() {
        let now = t("2026-12-01T00:30:00Z");
        let ds = |extra: &str| -> crate::config::DatasetConfig {
            toml::from_str(&format!("name = \"tank/a\"\nschedule = \"0 3 * * *\"\n{extra}"))
                .unwrap()
        };
        assert_eq!(stale_after(&ds(""), TimeZone::Utc, now), Some(2 * DAY));
        let set = ds("stale_after = \"26h\"");
        assert_eq!(stale_after(&set, TimeZone::Utc, now), Some(Duration::from_secs(26 * 3600)));
    }

    #[test]
    fn spans_take_units_and_refuse_the_rest() {
        assert_eq!("26h".parse::<Span>().unwrap().0, Duration::from_secs(26 * 3600));
        assert_eq!("90m".parse::<Span>().unwrap().0, Duration::from_secs(5400));
        assert_eq!("2d".parse::<Span>().unwrap().0, 2 * DAY);
        assert_eq!("1w".parse::<Span>().unwrap().0, 7 * DAY);
        assert_eq!("45s".parse::<Span>().unwrap().0, Duration::from_secs(45));
        assert_eq!("26h".parse::<Span>().unwrap().to_string(), "26h");
        for bad in ["", "26", "h", "2y", "-1h", "0h", "1.5h"] {
            let e = bad.parse::<Span>().unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }
}
