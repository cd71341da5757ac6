//! What a restore reports: the outcome of a run, and the text of `zibd restore list|plan`.

use serde::Serialize;
use zib_core::{DatasetName, SnapName, human::human_bytes, restore_plan::RestorePlan};

use super::BucketCatalog;

/// The outcome of a completed restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub dataset: DatasetName,
    pub snapshot: SnapName,
    pub target: DatasetName,
    pub streams: usize,
    pub chunks: u64,
    pub bytes: u64,
    /// RestoreObject requests sent by this run.
    pub thaw_requests_sent: u64,
    /// HEAD polls of thaw state made by this run.
    pub polls: u64,
    pub resumed: bool,
    pub encrypted: bool,
    pub key_loaded: bool,
    pub mounted: bool,
    /// What the user still has to do (load the key, mount), if anything.
    pub next_steps: Vec<String>,
}

/// A human-readable listing of a bucket's catalog: per dataset, each backup with its snapshot,
/// date, size, chunks, class and base.
pub fn format_catalog(cat: &BucketCatalog) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "catalog s3://{}/{}", cat.bucket, cat.prefix);
    for c in &cat.datasets {
        let total: u64 = c.manifests.iter().map(|m| m.stream_size).sum();
        let _ = writeln!(
            s,
            "\n{}  ({} backups, {} stored)",
            c.dataset,
            c.manifests.len(),
            human_bytes(total)
        );
        let _ = writeln!(
            s,
            "  {:>6}  {:<28} {:<20} {:>12} {:>7}  {:<13} base",
            "seq", "snapshot", "created (UTC)", "size", "chunks", "class"
        );
        for m in &c.manifests {
            let base = match &m.from {
                None => "full".to_owned(),
                Some(f) => format!("incremental from {}", f.name),
            };
            let restorable =
                if c.chain_to(Some(&m.to.name)).is_ok() { "" } else { "  [chain broken]" };
            let _ = writeln!(
                s,
                "  {:>6}  {:<28} {:<20} {:>12} {:>7}  {:<13} {base}{restorable}",
                m.seq,
                m.to.name.as_str(),
                m.snapshot_created.format("%Y-%m-%d %H:%M:%S"),
                human_bytes(m.stream_size),
                m.chunks.len(),
                m.storage_class.as_str(),
            );
        }
    }
    if !cat.skipped.is_empty() {
        let _ = writeln!(s, "\nskipped {} unreadable manifest(s):", cat.skipped.len());
        for m in &cat.skipped {
            let _ = writeln!(s, "  {}: {}", m.key, m.reason);
        }
    }
    s
}

/// A human-readable plan with a quote per tier.
pub fn format_plan(plan: &RestorePlan, quote: &zib_core::pricing::Quote) -> String {
    use std::fmt::Write as _;
    use zib_core::pricing::format_money;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "restore of {}@{} (guid {}) needs {} streams:",
        plan.dataset,
        plan.snapshot.name,
        plan.snapshot.guid,
        plan.steps.len()
    );
    for (i, st) in plan.steps.iter().enumerate() {
        let kind = match &st.from {
            None => "full".to_owned(),
            Some(f) => format!("incremental from {}", f.name),
        };
        let _ = writeln!(
            s,
            "  {}. #{} {} ({kind}): {} in {} chunks, {}{}",
            i + 1,
            st.seq,
            st.to.name,
            human_bytes(st.stream_size),
            st.chunks.len(),
            st.storage_class,
            if st.needs_thaw() { ", needs a thaw" } else { "" }
        );
        let _ = writeln!(s, "     {}", st.manifest_key);
    }
    let _ = writeln!(
        s,
        "total: {} bytes ({}) in {} objects; {} objects ({} bytes) to thaw first",
        plan.total_bytes(),
        human_bytes(plan.total_bytes()),
        plan.total_objects(),
        plan.thaw_objects(),
        plan.thaw_bytes()
    );
    let _ = writeln!(
        s,
        "restored copies are kept {} days: the download is expected to take about {:.1} h at {}/s, after thaws that finish within the tier's time (--days can ask for more, not less)",
        quote.days,
        plan.expected_download_hours(),
        human_bytes(zib_core::restore_plan::PLANNED_DOWNLOAD_BYTES_PER_SEC)
    );
    let _ = writeln!(
        s,
        "quote (price table: `[pricing]` in the config overrides it; restored copies kept {} days):",
        quote.days
    );
    for t in &quote.tiers {
        let when = if t.ready_within_hours == 0 {
            "readable at once".to_owned()
        } else {
            format!("within {} h", t.ready_within_hours)
        };
        let c = &quote.currency;
        let _ = writeln!(
            s,
            "  {:<8} total {:>12}  ({when}; retrieval {}, restore requests {}, restored copy {}, GET requests {}, egress {})",
            t.tier.as_str(),
            format_money(t.total, c),
            format_money(t.retrieval, c),
            format_money(t.restore_requests, c),
            format_money(t.restored_copy, c),
            format_money(t.get_requests, c),
            format_money(t.egress, c),
        );
    }
    s
}
