//! Cron schedules: parsed once at config load, then asked "when is the next run after t?".
//!
//! Accepts the classic 5-field form (`min hour day-of-month month day-of-week`, as in crontab),
//! the `cron` crate's 6/7-field form with seconds (and year), and `@hourly`-style shorthands.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The time zone schedules are read in (`daemon.timezone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TimeZone {
    #[default]
    #[serde(rename = "UTC")]
    Utc,
    #[serde(rename = "local")]
    Local,
}

/// A parsed schedule. Clones share the parsed form: the `cron` crate keeps each field as a
/// set of every allowed value (years 1970-2100 included), a few KB a schedule, and every job
/// and config copy held one of its own (1,000 datasets: megabytes of idle daemon).
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    schedule: std::sync::Arc<cron::Schedule>,
}

impl CronSchedule {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first tick strictly after `after`, in the given time zone.
    pub fn next_after(&self, after: DateTime<Utc>, tz: TimeZone) -> Option<DateTime<Utc>> {
        match tz {
            TimeZone::Utc => self.schedule.after(&after).next(),
            TimeZone::Local => {
                self.schedule.after(&after.with_timezone(&chrono::Local)).next().map(|t| t.to_utc())
            }
        }
    }

    /// How many ticks fall in (`from`, `to`] — used to count runs missed while a job was busy
    /// or the daemon was down. Capped so that a long outage cannot loop for long.
    pub fn ticks_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: TimeZone,
        cap: usize,
    ) -> usize {
        let mut n = 0;
        let mut t = from;
        while n < cap {
            match self.next_after(t, tz) {
                Some(next) if next <= to => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }
}

impl FromStr for CronSchedule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let fields = t.split_whitespace().count();
        let expr = if !t.starts_with('@') && fields == 5 { format!("0 {t}") } else { t.to_owned() };
        let schedule = cron::Schedule::from_str(&expr).map_err(|e| {
            format!("invalid cron schedule {text:?}: {e} (use 5 fields \"min hour day month weekday\", e.g. \"0 3 * * *\", or 6-7 with seconds first)")
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("cron schedule {text:?} never fires"));
        }
        Ok(Self { text: text.to_owned(), schedule: std::sync::Arc::new(schedule) })
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.text)
    }
}
impl PartialEq for CronSchedule {
    fn eq(&self, o: &Self) -> bool {
        self.text == o.text
    }
}
impl TryFrom<String> for CronSchedule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<CronSchedule> for String {
    fn from(c: CronSchedule) -> String {
        c.text
    }
}
impl Serialize for CronSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}
impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn five_field_form_is_crontab() {
        let c: CronSchedule = "30 3 * * *".parse().unwrap();
        assert_eq!(
            c.next_after(t("2026-11-26T07:00:00Z"), TimeZone::Utc),
            Some(t("2026-11-27T03:30:00Z"))
        );
        assert_eq!(
            c.next_after(t("2026-11-26T03:29:59Z"), TimeZone::Utc),
            Some(t("2026-11-26T03:30:00Z"))
        );
        // strictly after
        assert_eq!(
            c.next_after(t("2026-11-26T03:30:00Z"), TimeZone::Utc),
            Some(t("2026-11-27T03:30:00Z"))
        );
    }

    #[test]
    fn six_field_and_shorthand() {
        let c: CronSchedule = "*/10 * * * * *".parse().unwrap();
        assert_eq!(
            c.next_after(t("2026-11-26T07:00:01Z"), TimeZone::Utc),
            Some(t("2026-11-26T07:00:10Z"))
        );
        let d: CronSchedule = "@daily".parse().unwrap();
        assert_eq!(
            d.next_after(t("2026-11-26T07:00:00Z"), TimeZone::Utc),
            Some(t("2026-11-27T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "61 * * * *", "* * *", "bogus", "0 0 30 2 * *"] {
            let e = bad.parse::<CronSchedule>().err();
            assert!(e.is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn counts_missed_ticks() {
        let c: CronSchedule = "0 * * * *".parse().unwrap();
        assert_eq!(
            c.ticks_between(
                t("2026-11-26T00:30:00Z"),
                t("2026-11-26T05:00:00Z"),
                TimeZone::Utc,
                100
            ),
            5
        );
        assert_eq!(
            c.ticks_between(
                t("2026-11-26T00:30:00Z"),
                t("2026-11-30T05:00:00Z"),
                TimeZone::Utc,
                10
            ),
            10
        );
    }
}
