//! What the daemon keeps of each dataset's last restore drill (scheduled by the dataset's
//! `drill_schedule`, or asked for with `zibctl restore drill`): a few numbers for `zibctl
//! status`, the metrics and the alerts, so a drill that failed last month still shows until
//! one that passed replaces it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How the drill came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillTrigger {
    /// The dataset's `drill_schedule`.
    Schedule,
    /// `zibctl restore drill`.
    Request,
}

/// A dataset's last drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillSummary {
    /// When it ended.
    pub at: DateTime<Utc>,
    pub trigger: DrillTrigger,
    /// The received snapshot's GUID was the manifest's (and the source's, when still there).
    pub passed: bool,
    /// The snapshot drilled (its name, without the dataset), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// How long the restore took.
    #[serde(default)]
    pub seconds: f64,
    /// Bytes and chunks restored (or planned, when the restore failed).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub chunks: u64,
    /// The restore's quoted cost, in `currency`.
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub currency: String,
    /// Why it failed, or why it could not run (a thaw it may not pay for, no backup, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DrillSummary {
    /// The summary of a drill that could not run or judge at all (`passed` is false).
    pub fn not_run(reason: String, at: DateTime<Utc>, trigger: DrillTrigger) -> Self {
        Self {
            at,
            trigger,
            passed: false,
            snapshot: None,
            seconds: 0.0,
            bytes: 0,
            chunks: 0,
            cost: 0.0,
            currency: String::new(),
            reason: Some(reason),
        }
    }

    /// One line for people: "passed: zib-2026...: 1.0 MiB, 3 chunks in 4.2 s" or
    /// "FAILED: <reason>".
    pub fn line(&self) -> String {
        use crate::human::{count, human_bytes};
        let what = self.snapshot.as_deref().map(|s| format!("@{s}")).unwrap_or_default();
        let size = format!(
            "{}, {} in {:.1} s",
            human_bytes(self.bytes),
            count(self.chunks, "chunk", "chunks"),
            self.seconds
        );
        match (&self.reason, self.passed) {
            (_, true) => format!("passed{what}: {size}"),
            (Some(r), false) if self.snapshot.is_some() => format!("FAILED{what}: {r}"),
            (Some(r), false) => format!("FAILED: {r}"),
            (None, false) => format!("FAILED{what}: {size}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_and_why() {
        let at = "2026-12-01T05:00:00Z".parse().unwrap();
        let mut s = DrillSummary {
            at,
            trigger: DrillTrigger::Schedule,
            passed: true,
            snapshot: Some("zib-20261201T040000Z".into()),
            seconds: 4.2,
            bytes: 1024 * 1024,
            chunks: 3,
            cost: 0.0,
            currency: "USD".into(),
            reason: None,
        };
        assert_eq!(s.line(), "passed@zib-20261201T040000Z: 1.0 MiB, 3 chunks in 4.2 s");
        s.passed = false;
        s.reason = Some("the restore failed: chunk x is corrupt".into());
        assert_eq!(s.line(), "FAILED@zib-20261201T040000Z: the restore failed: chunk x is corrupt");
        let n = DrillSummary::not_run("no backup".into(), at, DrillTrigger::Request);
        assert!(!n.passed);
        assert_eq!(n.line(), "FAILED: no backup");
        let json = serde_json::to_value(&n).unwrap();
        assert!(json.get("snapshot").is_none(), "{json}");
        let back: DrillSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, n);
    }
}
