//! Re-baseline: when the next backup starts a new chain with a full stream instead of adding
//! one more incremental to the current chain.
//!
//! A long chain is slow and costly to restore (every link is thawed, read and received) and
//! fragile (one lost link loses everything after it). Three rules, each can be off:
//! - `max_chain`: the chain already holds this many streams (the full counts as one);
//! - `rebaseline_ratio`: its incrementals add up to more than this fraction of the full;
//! - `full_every`: the full is at least this old.
//!
//! A re-baseline only adds a new full; the earlier chain stays in the bucket, complete and
//! restorable, until retention removes it as a whole.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::period::Period;

/// Default `max_chain`: a restore applies at most a year of daily streams.
pub const DEFAULT_MAX_CHAIN: u32 = 365;
/// Default `rebaseline_ratio`: once the incrementals hold as much as the full, a new full is
/// about as big as what a restore of the chain reads anyway.
pub const DEFAULT_REBASELINE_RATIO: f64 = 1.0;
/// Default `full_every`: the DEEP_ARCHIVE minimum storage duration, so the previous full may be
/// deleted without an early-deletion charge when the next one is made.
pub const DEFAULT_FULL_EVERY: Period = Period::days(180);

/// When to re-baseline; `None` turns a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RebaselinePolicy {
    pub max_chain: Option<u32>,
    pub rebaseline_ratio: Option<f64>,
    pub full_every: Option<Period>,
}

impl Default for RebaselinePolicy {
    fn default() -> Self {
        Self {
            max_chain: Some(DEFAULT_MAX_CHAIN),
            rebaseline_ratio: Some(DEFAULT_REBASELINE_RATIO),
            full_every: Some(DEFAULT_FULL_EVERY),
        }
    }
}

impl RebaselinePolicy {
    /// Every rule off: chains grow forever (the behaviour before re-baselines existed).
    pub const OFF: Self = Self { max_chain: None, rebaseline_ratio: None, full_every: None };
}

/// What the decision needs to know about the chain the next incremental would extend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSummary {
    pub full_seq: u64,
    pub full_size: u64,
    /// When the full was committed.
    pub full_committed_at: DateTime<Utc>,
    /// Stream sizes of the incrementals after the full, in chain order.
    pub incremental_sizes: Vec<u64>,
}

impl ChainSummary {
    /// The summary of a chain as `Catalog::chain_to` returns it (full first). None when the
    /// chain is empty or does not start with a full.
    pub fn from_chain(chain: &[&Manifest]) -> Option<Self> {
        let (full, rest) = chain.split_first()?;
        if !full.is_full() {
            return None;
        }
        Some(Self {
            full_seq: full.seq,
            full_size: full.stream_size,
            full_committed_at: full.committed_at,
            incremental_sizes: rest.iter().map(|m| m.stream_size).collect(),
        })
    }

    /// Streams in the chain, the full included.
    pub fn links(&self) -> u64 {
        1 + self.incremental_sizes.len() as u64
    }

    pub fn incremental_bytes(&self) -> u64 {
        self.incremental_sizes.iter().sum()
    }
}

/// Why the next backup is a full one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RebaselineReason {
    /// No committed backup to continue from.
    FirstBackup,
    /// Asked for (`--full`).
    Forced,
    /// The chain the next incremental would extend is not restorable from the bucket.
    BrokenChain {
        detail: String,
    },
    MaxChain {
        links: u64,
        max_chain: u32,
    },
    FullEvery {
        full_age_days: i64,
        full_every: Period,
    },
    Ratio {
        incremental_bytes: u64,
        full_bytes: u64,
        ratio: f64,
    },
}

impl RebaselineReason {
    /// Whether this full may wait for a day with changes (issue 12, idle days cost nothing):
    /// a rule's re-baseline (chain length, age, ratio) may; a first backup, a forced one and a
    /// broken chain's may not, as the bucket holds nothing restorable to go on from.
    pub fn waits_for_change(&self) -> bool {
        matches!(self, Self::MaxChain { .. } | Self::FullEvery { .. } | Self::Ratio { .. })
    }
}

impl fmt::Display for RebaselineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FirstBackup => f.write_str("no earlier backup to continue from"),
            Self::Forced => f.write_str("a full backup was asked for"),
            Self::BrokenChain { detail } => write!(f, "the current chain is broken: {detail}"),
            Self::MaxChain { links, max_chain } => {
                write!(f, "the chain holds {links} streams (max_chain = {max_chain})")
            }
            Self::FullEvery { full_age_days, full_every } => {
                write!(f, "the full is {full_age_days} days old (full_every = {full_every})")
            }
            Self::Ratio { incremental_bytes, full_bytes, ratio } => write!(
                f,
                "the incrementals add up to {incremental_bytes} bytes, more than {ratio} x the full's {full_bytes} (rebaseline_ratio = {ratio})"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RebaselineDecision {
    Incremental,
    Full(RebaselineReason),
}

impl RebaselineDecision {
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }
}

impl RebaselinePolicy {
    /// Full or incremental for the next backup, given the chain it would extend (None when there
    /// is none), the time, and whether a full was asked for. The first rule that fires is the
    /// reason given, in this order: forced, first backup, max_chain, full_every, ratio.
    pub fn decide(
        &self,
        chain: Option<&ChainSummary>,
        now: DateTime<Utc>,
        force_full: bool,
    ) -> RebaselineDecision {
        use RebaselineDecision::{Full, Incremental};
        if force_full {
            return Full(RebaselineReason::Forced);
        }
        let Some(c) = chain else { return Full(RebaselineReason::FirstBackup) };
        if let Some(max_chain) = self.max_chain
            && c.links() >= u64::from(max_chain)
        {
            return Full(RebaselineReason::MaxChain { links: c.links(), max_chain });
        }
        if let Some(full_every) = self.full_every
            && full_every.has_passed_since(c.full_committed_at, now)
        {
            let full_age_days = (now - c.full_committed_at).num_days();
            return Full(RebaselineReason::FullEvery { full_age_days, full_every });
        }
        if let Some(ratio) = self.rebaseline_ratio {
            let (inc, full) = (c.incremental_bytes(), c.full_size);
            if inc as f64 > ratio * full as f64 {
                return Full(RebaselineReason::Ratio {
                    incremental_bytes: inc,
                    full_bytes: full,
                    ratio,
                });
            }
        }
        Incremental
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rules_rebaseline_waits_for_a_day_with_changes() {
        use RebaselineReason::*;
        let every = Period::days(180);
        assert!(MaxChain { links: 3, max_chain: 3 }.waits_for_change());
        assert!(FullEvery { full_age_days: 200, full_every: every }.waits_for_change());
        assert!(Ratio { incremental_bytes: 2, full_bytes: 1, ratio: 1.0 }.waits_for_change());
        assert!(!FirstBackup.waits_for_change());
        assert!(!Forced.waits_for_change());
        assert!(!BrokenChain { detail: "gone".into() }.waits_for_change());
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn chain(full_size: u64, incs: &[u64]) -> ChainSummary {
        ChainSummary {
            full_seq: 1,
            full_size,
            full_committed_at: t("2026-01-01T03:00:00Z"),
            incremental_sizes: incs.to_vec(),
        }
    }

    const JAN2: &str = "2026-01-02T03:00:00Z";

    #[test]
    fn first_and_forced_backups_are_full() {
        let p = RebaselinePolicy::default();
        assert_eq!(
            p.decide(None, t(JAN2), false),
            RebaselineDecision::Full(RebaselineReason::FirstBackup)
        );
        let c = chain(100, &[]);
        assert_eq!(
            p.decide(Some(&c), t(JAN2), true),
            RebaselineDecision::Full(RebaselineReason::Forced)
        );
        assert_eq!(
            RebaselinePolicy::OFF.decide(None, t(JAN2), false),
            RebaselineDecision::Full(RebaselineReason::FirstBackup)
        );
        assert_eq!(p.decide(Some(&c), t(JAN2), false), RebaselineDecision::Incremental);
    }

    #[test]
    fn max_chain_counts_the_full_as_a_link() {
        let p = RebaselinePolicy { max_chain: Some(3), ..RebaselinePolicy::OFF };
        // full + 1 incremental = 2 streams: a third may still be added.
        assert_eq!(
            p.decide(Some(&chain(100, &[1])), t(JAN2), false),
            RebaselineDecision::Incremental
        );
        // full + 2 incrementals = 3 streams = max_chain: the 4th backup starts a new chain.
        let d = p.decide(Some(&chain(100, &[1, 1])), t(JAN2), false);
        assert_eq!(
            d,
            RebaselineDecision::Full(RebaselineReason::MaxChain { links: 3, max_chain: 3 })
        );
        let RebaselineDecision::Full(r) = d else { unreachable!() };
        assert_eq!(r.to_string(), "the chain holds 3 streams (max_chain = 3)");
        // max_chain = 1: every backup is a full.
        let p1 = RebaselinePolicy { max_chain: Some(1), ..RebaselinePolicy::OFF };
        assert!(p1.decide(Some(&chain(100, &[])), t(JAN2), false).is_full());
    }

    #[test]
    fn ratio_compares_the_incrementals_sum_with_the_full() {
        let p = RebaselinePolicy { rebaseline_ratio: Some(0.5), ..RebaselinePolicy::OFF };
        // 20 + 30 = 50 = 0.5 x 100: not more than the ratio yet.
        assert_eq!(
            p.decide(Some(&chain(100, &[20, 30])), t(JAN2), false),
            RebaselineDecision::Incremental
        );
        // 20 + 31 = 51 > 50.
        assert_eq!(
            p.decide(Some(&chain(100, &[20, 31])), t(JAN2), false),
            RebaselineDecision::Full(RebaselineReason::Ratio {
                incremental_bytes: 51,
                full_bytes: 100,
                ratio: 0.5
            })
        );
    }

    #[test]
    fn full_every_counts_whole_days_since_the_full_was_committed() {
        let p = RebaselinePolicy { full_every: Some(Period::days(180)), ..RebaselinePolicy::OFF };
        let c = chain(100, &[1; 10]);
        // 2026-01-01T03:00 + 180 days = 2026-06-30T03:00.
        assert_eq!(
            p.decide(Some(&c), t("2026-06-30T02:59:59Z"), false),
            RebaselineDecision::Incremental
        );
        assert_eq!(
            p.decide(Some(&c), t("2026-06-30T03:00:00Z"), false),
            RebaselineDecision::Full(RebaselineReason::FullEvery {
                full_age_days: 180,
                full_every: Period::days(180)
            })
        );
    }

    #[test]
    fn all_rules_off_never_rebaseline() {
        let c = chain(1, &[1_000_000; 5000]);
        assert_eq!(
            RebaselinePolicy::OFF.decide(Some(&c), t("2036-01-01T00:00:00Z"), false),
            RebaselineDecision::Incremental
        );
    }

    #[test]
    fn the_first_rule_that_fires_is_the_reason() {
        let p = RebaselinePolicy::default();
        // 365 streams, 200 days old, ratio exceeded: max_chain is reported.
        let c = chain(10, &[1; 364]);
        assert!(matches!(
            p.decide(Some(&c), t("2026-07-20T03:00:00Z"), false),
            RebaselineDecision::Full(RebaselineReason::MaxChain { .. })
        ));
        // 364 streams: full_every is next.
        let c = chain(10, &[1; 363]);
        assert!(matches!(
            p.decide(Some(&c), t("2026-07-20T03:00:00Z"), false),
            RebaselineDecision::Full(RebaselineReason::FullEvery { .. })
        ));
        assert!(matches!(
            p.decide(Some(&c), t(JAN2), false),
            RebaselineDecision::Full(RebaselineReason::Ratio { .. })
        ));
    }

    #[test]
    fn summaries_come_from_a_catalog_chain() {
        let mut full = crate::manifest::sample();
        full.seq = 1;
        full.from = None;
        full.stream_size = 1000;
        let mut inc = crate::manifest::sample();
        inc.stream_size = 25;
        let s = ChainSummary::from_chain(&[&full, &inc]).unwrap();
        assert_eq!((s.full_seq, s.full_size, s.links(), s.incremental_bytes()), (1, 1000, 2, 25));
        assert!(ChainSummary::from_chain(&[&inc]).is_none());
        assert!(ChainSummary::from_chain(&[]).is_none());
    }
}
