//! Carries out the lifecycle decisions of `zib_core::lifecycle`: gathers what they look at
//! from the bucket (the current chain, for the re-baseline decision; the listing and catalog,
//! for a prune) and runs what they decide (the deletions of a prune, in order).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use zib_core::{
    Config, DatasetConfig, DatasetName, DatasetState, KeyLayout, Manifest,
    catalog::Catalog,
    human::human_bytes,
    lifecycle::{
        ChainCache, ChainSummary, PrunePlan, RebaselineDecision, RebaselinePolicy,
        RebaselineReason, RetentionPolicy, StoredObject,
        retention::{ChainFate, KeepReason, PruneRequest},
    },
    pricing::format_money,
};

use crate::s3::{ListedObject, ManifestGetError, S3Error, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("the catalog in the bucket is unreadable: {0}")]
    Catalog(String),
}

impl From<ManifestGetError> for LifecycleError {
    fn from(e: ManifestGetError) -> Self {
        match e {
            ManifestGetError::S3(e) => Self::S3(e),
            ManifestGetError::Invalid(e) => Self::Catalog(e.to_string()),
        }
    }
}

/// The chain the newest backup (`newest_key`) belongs to, read back link by link from the
/// bucket (one GET per link), full first. `Err(detail)` inside when a link is missing: the
/// chain is not restorable from the bucket, so it must not be extended.
pub async fn current_chain(
    s3: &S3Store,
    layout: &KeyLayout,
    listing: &[ListedObject],
    newest_key: &str,
) -> Result<Result<Vec<Manifest>, String>, LifecycleError> {
    let read = |key: String| async move {
        match s3.get_manifest(&key).await {
            Ok(m) => Ok(Some(m)),
            Err(ManifestGetError::S3(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(LifecycleError::from(e)),
        }
    };
    let mut manifests: Vec<(u64, &str)> = listing
        .iter()
        .filter_map(|o| layout.parse_manifest_key(&o.key).map(|(seq, _)| (seq, o.key.as_str())))
        .collect();
    manifests.sort_unstable();
    let Some(newest) = read(newest_key.to_owned()).await? else {
        return Ok(Err(format!("the newest backup's manifest {newest_key} is not in the bucket")));
    };
    let mut chain = vec![newest];
    while let Some(base) = chain.last().expect("not empty").from.clone() {
        let cur_seq = chain.last().expect("not empty").seq;
        let mut found = None;
        for (seq, key) in manifests.iter().rev().filter(|(s, _)| *s < cur_seq) {
            if layout.parse_manifest_key(key).is_some_and(|(_, snap)| snap == base.name) {
                let Some(m) = read((*key).to_owned()).await? else { continue };
                if m.to.guid == base.guid {
                    found = Some(m);
                    break;
                }
                tracing::debug!(seq, %key, "same snapshot name, other GUID: not the base");
            }
        }
        match found {
            Some(m) => chain.push(m),
            None => {
                return Ok(Err(format!(
                    "backup #{cur_seq} is an incremental from {} (guid {}), whose manifest is not in the bucket",
                    base.name, base.guid
                )));
            }
        }
    }
    chain.reverse();
    Ok(Ok(chain))
}

/// Full or incremental for the next backup of a dataset whose newest committed backup has
/// the manifest `newest_key` (None: there is none), and the chain it ends for the local cache.
/// The chain comes from `cache` while zib-core trusts it against the listing (no GET), else
/// from the bucket, link by link (one GET each).
#[allow(clippy::too_many_arguments)]
pub async fn decide_rebaseline(
    s3: &S3Store,
    layout: &KeyLayout,
    listing: &[ListedObject],
    newest_key: Option<&str>,
    cache: Option<&ChainCache>,
    policy: &RebaselinePolicy,
    now: chrono::DateTime<chrono::Utc>,
    force_full: bool,
) -> Result<(RebaselineDecision, Option<ChainCache>), LifecycleError> {
    let Some(newest_key) = newest_key.filter(|_| !force_full) else {
        return Ok((policy.decide(None, now, force_full), None));
    };
    if *policy == RebaselinePolicy::OFF {
        // No rule looks at the chain: skip the GETs.
        return Ok((RebaselineDecision::Incremental, cache.cloned()));
    }
    let listed: std::collections::HashSet<&str> = listing.iter().map(|o| o.key.as_str()).collect();
    if let Some(c) = cache
        && let Some(summary) = c.summary_if_listed(newest_key, |k| listed.contains(k))
    {
        return Ok((policy.decide(Some(summary), now, false), Some(c.clone())));
    }
    match current_chain(s3, layout, listing, newest_key).await? {
        Ok(chain) => {
            let refs: Vec<&Manifest> = chain.iter().collect();
            let summary = ChainSummary::from_chain(&refs).ok_or_else(|| {
                LifecycleError::Catalog(format!(
                    "the chain of {newest_key} does not start with a full"
                ))
            })?;
            let keys = chain.iter().map(|m| layout.manifest_key(m.seq, &m.to.name)).collect();
            let decision = policy.decide(Some(&summary), now, false);
            Ok((decision, Some(ChainCache { keys, summary })))
        }
        Err(detail) => {
            Ok((RebaselineDecision::Full(RebaselineReason::BrokenChain { detail }), None))
        }
    }
}

/// How `zibd prune` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Plan and report only; delete nothing.
    pub dry_run: bool,
    /// Delete objects younger than their class's minimum storage duration too, for the charge
    /// the plan shows.
    pub allow_early_deletion: bool,
}

/// What a prune planned and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    pub dataset: DatasetName,
    pub dry_run: bool,
    pub retention: RetentionPolicy,
    pub plan: PrunePlan,
    /// Objects deleted by this run (0 for a dry run).
    pub deleted: u64,
}

/// A listed object as zib-core's lifecycle decisions see it.
pub fn stored_object(o: &ListedObject) -> StoredObject {
    StoredObject {
        key: o.key.clone(),
        size: o.size,
        storage_class: o.storage_class.as_deref().and_then(|c| c.parse().ok()),
        last_modified: o.last_modified,
    }
}

/// Plans the prune of `ds` from the bucket's listing and catalog and, unless a dry run, runs
/// it: one DeleteObject per planned object, in the plan's order (each manifest before its
/// chunks), each logged. Interrupted, it is run again: the new plan is what is left. `state`
/// is the dataset's (locked, unless a dry run): its unfinished upload is never touched.
/// `cancel` stops it between two deletions.
pub async fn prune(
    s3: &S3Store,
    cfg: &Config,
    ds: &DatasetConfig,
    state: &DatasetState,
    opts: PruneOptions,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<PruneReport, LifecycleError> {
    let layout = KeyLayout::new(&cfg.resolve(ds).prefix, &ds.name);
    let listing = s3.list_root(layout.root()).await?;
    let mut manifests = Vec::new();
    for o in &listing {
        if layout.parse_manifest_key(&o.key).is_none() {
            continue;
        }
        let m = s3.get_manifest(&o.key).await?;
        if m.dataset != ds.name {
            return Err(LifecycleError::Catalog(format!(
                "{} describes dataset {}, not {}",
                o.key, m.dataset, ds.name
            )));
        }
        manifests.push(m);
    }
    let catalog = Catalog::new(ds.name.clone(), manifests);
    let stored: Vec<StoredObject> = listing.iter().map(stored_object).collect();
    let in_progress =
        state.pending.as_ref().map(|p| layout.attempt_prefix(p.seq, &p.to, p.attempt));
    let plan = PruneRequest {
        catalog: &catalog,
        layout: &layout,
        listing: &stored,
        policy: ds.retention_policy(),
        pricing: &cfg.pricing,
        now,
        allow_early_deletion: opts.allow_early_deletion,
        in_progress,
    }
    .plan();
    let mut deleted = 0;
    if !opts.dry_run {
        for d in &plan.deletions {
            if cancel.is_cancelled() {
                tracing::warn!(dataset = %ds.name, deleted, left = plan.deletions.len() as u64 - deleted, "prune stopped; the next one continues");
                break;
            }
            s3.delete(&d.key).await?;
            deleted += 1;
            tracing::info!(dataset = %ds.name, key = %d.key, kind = ?d.kind, seq = d.seq, bytes = d.size, "deleted");
            crate::failpoint::hit("after-delete");
        }
        if deleted > 0 {
            tracing::info!(
                dataset = %ds.name, objects = deleted, bytes = plan.bytes,
                early_deletion_charge = plan.early_deletion_charge,
                "prune done"
            );
        }
    }
    Ok(PruneReport {
        dataset: ds.name.clone(),
        dry_run: opts.dry_run,
        retention: ds.retention_policy(),
        plan,
        deleted,
    })
}

/// The report for people: totals, each chain's fate, held abandoned objects, the deletions.
pub fn format_prune(r: &PruneReport) -> String {
    use std::fmt::Write as _;
    let p = &r.plan;
    let money = |v: f64| format_money(v, &p.currency);
    let mut s = String::new();
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let n = if r.dry_run { p.objects } else { r.deleted };
    let _ = writeln!(
        s,
        "prune of {}{}: {verb} {n} objects ({}), saving {} a month, early-deletion charge {}",
        r.dataset,
        if r.dry_run { " (dry run)" } else { "" },
        human_bytes(p.bytes),
        money(p.monthly_saving),
        money(p.early_deletion_charge),
    );
    if !r.retention.is_configured() {
        let _ = writeln!(
            s,
            "  no keep_chains or keep_within configured for {}: no chain is deleted",
            r.dataset
        );
    }
    for c in &p.chains {
        let (first, last) = (c.seqs[0], c.seqs[c.seqs.len() - 1]);
        let fate = match &c.fate {
            ChainFate::Keep(reason) => format!("keep ({})", keep_reason(reason)),
            ChainFate::Delete => verb.to_owned(),
            ChainFate::Held { deletable_from, early_deletion_charge } => format!(
                "held: deletable free of charge from {}; now for {} (--allow-early-deletion)",
                deletable_from.format("%Y-%m-%d"),
                money(*early_deletion_charge)
            ),
            ChainFate::Damaged { missing } => {
                format!(
                    "left alone: damaged, {} objects missing (first {})",
                    missing.len(),
                    missing[0]
                )
            }
        };
        let _ = writeln!(
            s,
            "  chain #{first}..#{last} ({} backups, {}, newest {}): {fate}",
            c.seqs.len(),
            human_bytes(c.bytes),
            c.newest_committed_at.format("%Y-%m-%d"),
        );
    }
    if !p.broken_seqs.is_empty() {
        let _ = writeln!(s, "  left alone, leading back to no full: {:?}", p.broken_seqs);
    }
    for h in &p.held_abandoned {
        let when = h
            .deletable_from
            .map_or("unknown age".into(), |t| format!("from {}", t.format("%Y-%m-%d")));
        let _ = writeln!(s, "  abandoned, kept for now ({when}): {}", h.key);
    }
    for d in &p.deletions {
        let _ = writeln!(
            s,
            "  {verb}: {} ({:?}, {}, {})",
            d.key,
            d.kind,
            human_bytes(d.size),
            d.storage_class
        );
    }
    s
}

fn keep_reason(r: &KeepReason) -> String {
    match r {
        KeepReason::NoRetention => "no retention configured".into(),
        KeepReason::NewestComplete => "the newest complete chain".into(),
        KeepReason::KeepChains { rank, keep_chains } => {
            format!("newest but {} of keep_chains = {keep_chains}", rank - 1)
        }
        KeepReason::KeepWithin { keep_within } => {
            format!("a backup within keep_within = {keep_within}")
        }
    }
}
