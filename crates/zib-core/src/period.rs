//! A span of whole days as the config writes it (`"400d"`, `"26w"`), for age rules such as
//! `full_every` and `keep_within`. Days, not months: a month has no fixed length, and the S3
//! minimum storage durations it is compared with are counted in days.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    days: u32,
}

impl Period {
    pub const fn days(days: u32) -> Self {
        Self { days }
    }
    pub fn as_days(self) -> u32 {
        self.days
    }
    pub fn as_duration(self) -> chrono::TimeDelta {
        chrono::TimeDelta::days(i64::from(self.days))
    }
    /// Whether `then` lies at least this long before `now`.
    pub fn has_passed_since(self, then: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now - then >= self.as_duration()
    }
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "invalid period {s:?}: expected a whole number of days or weeks such as \"400d\" or \"26w\""
            )
        };
        let (num, mult) = if let Some(n) = t.strip_suffix('d') {
            (n, 1)
        } else if let Some(n) = t.strip_suffix('w') {
            (n, 7)
        } else {
            return Err(bad());
        };
        let n: u32 = num.trim().parse().map_err(|_| bad())?;
        let days = n
            .checked_mul(mult)
            .filter(|d| *d > 0 && *d <= 36_500)
            .ok_or_else(|| format!("invalid period {s:?}: must be between 1 day and 100 years"))?;
        Ok(Self { days })
    }
}

impl TryFrom<String> for Period {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}
impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}d", self.days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_days_and_weeks() {
        assert_eq!("400d".parse::<Period>().unwrap().as_days(), 400);
        assert_eq!(" 26w ".parse::<Period>().unwrap().as_days(), 182);
        for bad in ["", "400", "6m", "1.5d", "-3d", "0d", "d", "99999999w"] {
            let e = bad.parse::<Period>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
        assert_eq!(Period::days(7).to_string(), "7d");
    }

    #[test]
    fn passes_after_whole_days() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let p = Period::days(2);
        assert!(!p.has_passed_since(t0, t0 + chrono::TimeDelta::hours(47)));
        assert!(p.has_passed_since(t0, t0 + chrono::TimeDelta::hours(48)));
    }
}
