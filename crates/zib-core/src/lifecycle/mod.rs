//! The long life of a dataset's backups: when to start a new chain (re-baseline, or because the
//! base of the next incremental is gone) and which old chains and abandoned uploads may leave
//! the bucket (retention). Pure decisions on plain data;
//! zibd gathers the inputs (catalog, listing, clock) and carries the decisions out.

pub mod broken_chain;
pub mod chain_cache;
pub mod cost_ledger;
pub mod rebaseline;
pub mod retention;

pub use broken_chain::{BaseDecision, BrokenBase, OnBrokenChain};
pub use chain_cache::ChainCache;
pub use cost_ledger::{CostLedger, LedgerRequest};
pub use rebaseline::{ChainSummary, RebaselineDecision, RebaselinePolicy, RebaselineReason};
pub use retention::{PrunePlan, RetentionPolicy, StoredObject};

#[cfg(test)]
mod cost_ledger_cases;
#[cfg(test)]
mod retention_cases;
#[cfg(test)]
mod retention_props;
#[cfg(test)]
mod years_simulated;
