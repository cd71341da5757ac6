//! Cron schedules: parsed once at config load, then asked "when is the next run after t?".
//!
//! Accepts the classic 5-field form (`min hour day-of-month month day-of-week`, read as crontab
//! reads it: day of week 0-7 from Sunday, or SUN-SAT), the `cron` crate's 6/7-field form with
//! seconds (and year; its day of week counts 1-7 from Sunday), and `@hourly`-style shorthands.
//! Unlike crontab, a day of month and a day of week given together must both match.

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

/// Parsed schedules by expression, so that 1,000 datasets on one schedule hold one parsed form
/// (parsed once, not 1,000 times) and a reload of the same file parses nothing. Weak: a
/// schedule no config uses any more goes away.
fn interned()
-> &'static std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<cron::Schedule>>> {
    static INTERNED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<cron::Schedule>>>,
    > = std::sync::OnceLock::new();
    INTERNED.get_or_init(Default::default)
}

impl FromStr for CronSchedule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let mut interned = interned().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(schedule) = interned.get(t).and_then(std::sync::Weak::upgrade) {
            return Ok(Self { text: text.to_owned(), schedule });
        }
        let schedule = std::sync::Arc::new(Self::parse_expression(text)?);
        interned.retain(|_, w| w.strong_count() > 0);
        interned.insert(t.to_owned(), std::sync::Arc::downgrade(&schedule));
        Ok(Self { text: text.to_owned(), schedule })
    }
}

impl CronSchedule {
    fn parse_expression(text: &str) -> Result<cron::Schedule, String> {
        let t = text.trim();
        let fields: Vec<&str> = t.split_whitespace().collect();
        let expr = if !t.starts_with('@') && fields.len() == 5 {
            let weekdays = crontab_weekdays(fields[4])
                .map_err(|e| format!("invalid cron schedule {text:?}: day of week: {e}"))?;
            format!("0 {} {weekdays}", fields[..4].join(" "))
        } else {
            t.to_owned()
        };
        let schedule = cron::Schedule::from_str(&expr).map_err(|e| {
            format!("invalid cron schedule {text:?}: {e} (use 5 fields \"min hour day month weekday\", e.g. \"0 3 * * *\", or 6-7 with seconds first)")
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(format!("cron schedule {text:?} never fires"));
        }
        Ok(schedule)
    }
}

/// Crontab's day-of-week field in the `cron` crate's numbering. Crontab counts 0-7 from Sunday
/// (0 and 7 both Sunday, 1 Monday); the crate counts 1-7 from Sunday, so "0 3 * * 1" taken as
/// it is would run on Sundays, and "0 3 * * 0" would not parse. Lists, ranges, steps and the
/// names SUN-SAT are read as crontab reads them and written out as the crate's list.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_owned());
    }
    let day = |s: &str| -> Result<u32, String> {
        const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        if let Some(n) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(n as u32);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(format!("{s:?} is not a day (0-7 from Sunday, or SUN-SAT)")),
        }
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(n) if n >= 1 => (r, n),
                _ => return Err(format!("{part:?}: the step must be a number from 1")),
            },
            None => (part, 1),
        };
        let (from, to) = match range.split_once('-') {
            _ if range == "*" => (0, 6),
            Some((a, b)) => (day(a)?, day(b)?),
            None if step > 1 => (day(range)?, 6),
            None => (day(range)?, day(range)?),
        };
        if from > to {
            return Err(format!("{part:?}: the range runs backwards"));
        }
        for d in (from..=to).step_by(step as usize) {
            days[(d % 7) as usize] = true;
        }
    }
    let list: Vec<String> =
        (0..7).filter(|d| days[*d as usize]).map(|d: u32| (d + 1).to_string()).collect();
    Ok(list.join(","))
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
    fn the_day_of_week_is_crontab_s() {
        // 2026-11-26 is a Thursday.
        let next = |expr: &str| {
            let c: CronSchedule = expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mut t0 = t("2026-11-26T12:00:00Z");
            let mut days = Vec::new();
            for _ in 0..4 {
                t0 = c.next_after(t0, TimeZone::Utc).unwrap();
                days.push(t0.format("%a").to_string());
            }
            days.join(" ")
        };
        assert_eq!(next("0 3 * * 1"), "Mon Mon Mon Mon");
        assert_eq!(next("0 3 * * 0"), "Sun Sun Sun Sun");
        assert_eq!(next("0 3 * * 7"), "Sun Sun Sun Sun");
        assert_eq!(next("0 3 * * 1-5"), "Fri Mon Tue Wed");
        assert_eq!(next("0 3 * * 5-7"), "Fri Sat Sun Fri");
        assert_eq!(next("0 3 * * 6,0"), "Sat Sun Sat Sun");
        assert_eq!(next("0 3 * * mon,WED"), "Mon Wed Mon Wed");
        assert_eq!(next("0 3 * * */2"), "Sat Sun Tue Thu");
        assert_eq!(next("0 3 * * 1-5/2"), "Fri Mon Wed Fri");
        assert_eq!(next("0 3 * * *"), "Fri Sat Sun Mon");
        for bad in ["0 3 * * 8", "0 3 * * 5-1", "0 3 * * 1/0", "0 3 * * MONDAY,x"] {
            let e = bad.parse::<CronSchedule>().unwrap_err();
            assert!(e.contains("day of week"), "{bad}: {e}");
        }
        // The 6/7-field form is the cron crate's own (1 = Sunday), as documented.
        assert_eq!(next("0 0 3 * * 1"), "Sun Sun Sun Sun");
    }

    #[test]
    fn one_expression_is_parsed_once_and_shared() {
        let a: CronSchedule = "17 4 * * 1".parse().unwrap();
        let b: CronSchedule = " 17 4 * * 1".parse().unwrap();
        let c: CronSchedule = "17 5 * * 1".parse().unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.schedule, &b.schedule));
        assert!(!std::sync::Arc::ptr_eq(&a.schedule, &c.schedule));
        assert_eq!(b.as_str(), " 17 4 * * 1", "each keeps its own text");
        let next = t("2026-11-30T04:17:00Z");
        assert_eq!(a.next_after(t("2026-11-26T00:00:00Z"), TimeZone::Utc), Some(next));
        assert_eq!(
            c.next_after(t("2026-11-26T00:00:00Z"), TimeZone::Utc),
            Some(t("2026-11-30T05:17:00Z"))
        );
        // An invalid one is not remembered as valid.
        assert!("61 4 * * 1".parse::<CronSchedule>().is_err());
        assert!("61 4 * * 1".parse::<CronSchedule>().is_err());
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
