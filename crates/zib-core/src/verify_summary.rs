//! What the daemon keeps of its last verification (scheduled by `daemon.verify_schedule`, or
//! asked for with `zibctl verify`): a few numbers for `zibctl status` and the metrics, so a
//! check that found a missing chunk months ago still shows until a clean one replaces it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::verify::VerifyReport;

/// How the verification came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyTrigger {
    /// `daemon.verify_schedule`.
    Schedule,
    /// `zibctl verify` (of the whole prefix; a one-dataset check is not kept).
    Request,
}

/// The last verification's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySummary {
    /// When it finished.
    pub at: DateTime<Utc>,
    pub trigger: VerifyTrigger,
    /// Chunks were downloaded and hashed too (`--deep`; never thawed by the daemon).
    #[serde(default)]
    pub deep: bool,
    /// No error-severity finding, and the check ran to its end.
    pub clean: bool,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub warnings: u64,
    /// Datasets and chunks checked.
    #[serde(default)]
    pub datasets: u64,
    #[serde(default)]
    pub chunks: u64,
    /// Objects under the prefix no manifest names.
    #[serde(default)]
    pub unnamed: u64,
    /// Requests made (LIST + GET + HEAD) and their price.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub currency: String,
    /// Why the check stopped before a report (the listing failed, ...); `clean` is false.
    #[serde(default)]
    pub failure: Option<String>,
}

impl VerifySummary {
    /// The summary of a finished check.
    pub fn of_report(
        r: &VerifyReport,
        at: DateTime<Utc>,
        trigger: VerifyTrigger,
        deep: bool,
    ) -> Self {
        let b = &r.requests;
        Self {
            at,
            trigger,
            deep,
            clean: r.clean,
            errors: r.datasets.iter().map(|d| d.errors).sum(),
            warnings: r.datasets.iter().map(|d| d.warnings).sum(),
            datasets: r.datasets.len() as u64,
            chunks: r.datasets.iter().map(|d| d.chunks).sum(),
            unnamed: r.unnamed.len() as u64,
            requests: b.list + b.get + b.head,
            cost: b.cost,
            currency: b.currency.clone(),
            failure: None,
        }
    }

    /// The summary of a check that could not finish.
    pub fn failed(message: String, at: DateTime<Utc>, trigger: VerifyTrigger, deep: bool) -> Self {
        Self {
            at,
            trigger,
            deep,
            clean: false,
            errors: 0,
            warnings: 0,
            datasets: 0,
            chunks: 0,
            unnamed: 0,
            requests: 0,
            cost: 0.0,
            currency: String::new(),
            failure: Some(message),
        }
    }

    /// One line for people: "clean: 3 datasets, 120 chunks" or "2 errors, 1 warning".
    pub fn line(&self) -> String {
        use crate::human::count;
        if let Some(f) = &self.failure {
            return format!("did not finish: {f}");
        }
        let what = format!(
            "{}, {}{}",
            count(self.datasets, "dataset", "datasets"),
            count(self.chunks, "chunk", "chunks"),
            if self.deep { " hashed" } else { "" }
        );
        let mut line = if self.clean {
            format!("clean: {what}")
        } else {
            format!("{}: {what}", count(self.errors, "error", "errors"))
        };
        if self.warnings > 0 {
            line.push_str(&format!(", {}", count(self.warnings, "warning", "warnings")));
        }
        if self.unnamed > 0 {
            line.push_str(&format!(
                ", {} no manifest names",
                count(self.unnamed, "object", "objects")
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{DatasetVerify, RequestBill};

    fn report(errors: u64, warnings: u64, clean: bool) -> VerifyReport {
        VerifyReport {
            clean,
            datasets: vec![DatasetVerify {
                dataset: crate::DatasetName::new("tank/a").unwrap(),
                backups: 2,
                chains: 1,
                chunks: 7,
                chunks_sound: 7 - errors,
                bytes: 700,
                newest_restorable: None,
                newest_error: None,
                errors,
                warnings,
            }],
            problems: vec![],
            unnamed: vec![],
            unnamed_bytes: 0,
            requests: RequestBill {
                list: 1,
                get: 2,
                head: 7,
                cost: 0.00001,
                currency: "USD".into(),
            },
            deep: None,
        }
    }

    #[test]
    fn a_summary_counts_the_report() {
        let at = "2026-12-01T05:00:00Z".parse().unwrap();
        let s = VerifySummary::of_report(&report(0, 0, true), at, VerifyTrigger::Schedule, false);
        assert!(s.clean);
        assert_eq!((s.datasets, s.chunks, s.requests), (1, 7, 10));
        assert_eq!(s.line(), "clean: 1 dataset, 7 chunks");
        let bad = VerifySummary::of_report(&report(2, 1, false), at, VerifyTrigger::Request, true);
        assert!(!bad.clean);
        assert_eq!(bad.line(), "2 errors: 1 dataset, 7 chunks hashed, 1 warning");
        let f = VerifySummary::failed("listing: 403".into(), at, VerifyTrigger::Schedule, false);
        assert!(!f.clean);
        assert_eq!(f.line(), "did not finish: listing: 403");
    }
}
