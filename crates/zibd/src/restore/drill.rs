//! Restore drill (`zibd restore drill`): a real restore of a backed-up snapshot from the
//! bucket into a throwaway `<pool>/zib-drill-<id>` (never mounted, its key never loaded),
//! judged by GUID against the manifest and the source ([`zib_core::drill`]), then destroyed
//! whatever the outcome, with its progress record. The quote comes first; a drill that must
//! thaw archived chunks runs only when the caller said yes.

use std::{path::Path, time::Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zib_core::{
    DatasetName, SnapName,
    drill::{DrillVerdict, SourceGuid, drill_target, is_drill_target, judge},
    human::{count, human_bytes},
    pricing::{RestoreTier, TierQuote},
};

use crate::zfs::Zfs;

use super::{
    RestoreEngine, RestoreError, RestoreOptions, RestoreProgress, RestoreProgressFile, plan, run,
};

/// What to drill and how.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub dataset: DatasetName,
    /// The newest backed-up snapshot when None.
    pub snapshot: Option<SnapName>,
    /// Where the throwaway dataset goes: the source's pool when None.
    pub parent: Option<String>,
    /// The drill's own id (the throwaway dataset's suffix).
    pub id: String,
    /// Run even though archived chunks must be thawed (and paid for).
    pub yes: bool,
    /// Keep the drill dataset afterwards (for a look by hand).
    pub keep: bool,
    /// Where the progress record and spool go while the drill runs.
    pub work_dir: std::path::PathBuf,
    /// The restore settings (tier, days, poll, pricing); `target` is replaced by the drill's.
    pub restore: RestoreOptions,
}

/// The outcome of a drill, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub dataset: DatasetName,
    pub snapshot: SnapName,
    pub target: DatasetName,
    #[serde(flatten)]
    pub verdict: DrillVerdict,
    pub manifest_guid: String,
    pub received_guid: Option<String>,
    pub source_guid: SourceGuid,
    pub streams: usize,
    pub chunks: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// The restore's quoted cost for the tier used, in `currency`.
    pub cost: f64,
    pub currency: String,
    /// Whether the drill dataset is still there (`--keep`, or its destroy failed).
    pub kept: bool,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.verdict == DrillVerdict::Passed
    }
}

/// A drill's refusal before anything was restored.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(
        "the drill of {dataset}@{snapshot} must thaw {objects} archived chunks ({bytes} bytes), quoted at {cost:.4} {currency} for the {tier} tier, ready within {hours} h; run it again with --yes to pay for it"
    )]
    NeedsConsent {
        dataset: DatasetName,
        snapshot: SnapName,
        objects: u64,
        bytes: u64,
        cost: f64,
        currency: String,
        tier: RestoreTier,
        hours: u32,
    },
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// Runs a drill: quote, restore into the throwaway dataset, judge, destroy. A failed restore
/// is a failed drill (reported, not an error), so that a damaged chunk reads as "the drill
/// failed: chunk ... is corrupt"; errors are what stopped the drill from judging at all.
pub async fn drill(
    engine: &RestoreEngine,
    opts: &DrillOptions,
    cancel: &CancellationToken,
) -> Result<DrillReport, DrillError> {
    let p = plan(engine, Some(&opts.dataset), opts.snapshot.as_ref(), None).await?;
    let tier = opts.restore.tier;
    let quote = p.quote(&opts.restore.pricing, opts.restore.days);
    let tq: &TierQuote = quote.tier(tier);
    if p.thaw_objects() > 0 && !opts.yes {
        return Err(DrillError::NeedsConsent {
            dataset: p.dataset.clone(),
            snapshot: p.snapshot.name.clone(),
            objects: p.thaw_objects(),
            bytes: p.thaw_bytes(),
            cost: tq.total,
            currency: quote.currency.clone(),
            tier,
            hours: tq.ready_within_hours,
        });
    }
    let parent = opts.parent.as_deref().unwrap_or(opts.dataset.pool());
    let target = drill_target(parent, &opts.id).map_err(|e| DrillError::Target(e.to_string()))?;
    let mut ropts = opts.restore.clone();
    ropts.target = target.clone();
    ropts.dataset = Some(p.dataset.clone());
    ropts.snapshot = Some(p.snapshot.name.clone());
    ropts.no_mount = true;
    ropts.mountpoint = None;
    ropts.key_location = None;
    tracing::info!(dataset = %p.dataset, snapshot = %p.snapshot.name, %target, streams = p.steps.len(), chunks = p.total_objects(), "restore drill starting");

    let started = Instant::now();
    let mut file = RestoreProgressFile::open(&opts.work_dir, &target)?;
    let (tx, _rx) = watch::channel(RestoreProgress::default());
    let restored = run(engine, &ropts, &mut file, &tx, cancel).await;
    let seconds = started.elapsed().as_secs_f64();

    let received = match engine.zfs.snapshot_info(&target, &p.snapshot.name).await {
        Ok(s) => s.map(|s| s.guid),
        Err(e) if restored.is_err() => {
            tracing::debug!(error = %e, "no drill dataset to look at");
            None
        }
        Err(e) => return Err(RestoreError::from(e).into()),
    };
    let source = source_guid(engine, &p.dataset, &p.snapshot.name).await;
    let verdict = match &restored {
        Err(e) => DrillVerdict::Failed { reason: format!("the restore failed: {e}") },
        Ok(_) => judge(&p.snapshot.guid, received.as_deref(), &source),
    };

    let kept = if opts.keep { true } else { !discard(&engine.zfs, &target).await };
    if kept {
        drop(file);
    } else {
        file.remove().await;
    }
    let (streams, chunks, bytes) = match &restored {
        Ok(r) => (r.streams, r.chunks, r.bytes),
        Err(_) => (p.steps.len(), p.total_objects(), p.total_bytes()),
    };
    let report = DrillReport {
        dataset: p.dataset.clone(),
        snapshot: p.snapshot.name.clone(),
        target,
        verdict,
        manifest_guid: p.snapshot.guid.clone(),
        received_guid: received,
        source_guid: source,
        streams,
        chunks,
        bytes,
        seconds,
        cost: tq.total,
        currency: quote.currency.clone(),
        kept,
    };
    match &report.verdict {
        DrillVerdict::Passed => {
            tracing::info!(dataset = %report.dataset, snapshot = %report.snapshot, seconds, "restore drill passed")
        }
        DrillVerdict::Failed { reason } => {
            tracing::error!(dataset = %report.dataset, snapshot = %report.snapshot, %reason, "restore drill FAILED")
        }
    }
    Ok(report)
}

/// The source's GUID of `snap`: its snapshot, else its bookmark, else gone.
async fn source_guid(engine: &RestoreEngine, ds: &DatasetName, snap: &SnapName) -> SourceGuid {
    if let Ok(Some(s)) = engine.zfs.snapshot_info(ds, snap).await {
        return SourceGuid::Snapshot(s.guid);
    }
    if let Ok(Some(b)) = engine.zfs.bookmark_info(ds, snap).await {
        return SourceGuid::Bookmark(b.guid);
    }
    SourceGuid::Gone
}

/// A drill cut short (zibd killed, the power lost) leaves its throwaway dataset and, under the
/// drill's work directory, the lock file `restore-<target>.lock` (with perhaps a record and
/// spool files), which a drill's end always removes. The daemon calls this once at start: each
/// such target that no running drill holds and whose name is a drill's
/// (`<parent>/zib-drill-<id>`) is destroyed and its files removed; nothing else is touched.
/// Returns the targets cleared.
pub async fn clear_cut_short(zfs: &Zfs, work_dir: &Path) -> Vec<DatasetName> {
    let Ok(entries) = std::fs::read_dir(work_dir) else { return Vec::new() };
    let mut left: Vec<DatasetName> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let stem = name.to_str()?.strip_prefix("restore-")?.strip_suffix(".lock")?;
            DatasetName::from_file_stem(stem)
        })
        .collect();
    left.sort();
    let mut cleared = Vec::new();
    for target in left {
        if !is_drill_target(&target) {
            tracing::warn!(%target, dir = %work_dir.display(), "a lock file in the drill work directory names no drill dataset; left alone");
            continue;
        }
        let file = match RestoreProgressFile::lock(work_dir, &target) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%target, error = %e, "not a drill cut short");
                continue;
            }
        };
        if discard(zfs, &target).await {
            file.remove().await;
            tracing::warn!(%target, "a restore drill cut short (zibd stopped mid-drill) left its dataset: destroyed");
            cleared.push(target);
        }
    }
    cleared
}

/// Removes the drill dataset and any partial receive state; true when nothing is left.
async fn discard(zfs: &Zfs, target: &DatasetName) -> bool {
    let _ = zfs.abort_partial_receive(target).await;
    match zfs.dataset_exists(target.as_str()).await {
        Ok(false) => true,
        Ok(true) => match zfs.destroy_drill_dataset(target).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(%target, error = %e, "the drill dataset could not be destroyed; destroy it by hand");
                false
            }
        },
        Err(e) => {
            tracing::error!(%target, error = %e, "cannot tell whether the drill dataset is gone");
            false
        }
    }
}

/// The report for people.
pub fn format_drill(r: &DrillReport) -> String {
    let source = match &r.source_guid {
        SourceGuid::Snapshot(g) => format!("the source snapshot's {g}"),
        SourceGuid::Bookmark(g) => format!("the source bookmark's {g}"),
        SourceGuid::Gone => {
            "no source snapshot or bookmark here: checked against the manifest only".into()
        }
    };
    let head = match &r.verdict {
        DrillVerdict::Passed => format!(
            "restore drill of {}@{} PASSED: received GUID {} = the manifest's = {source}",
            r.dataset,
            r.snapshot,
            r.received_guid.as_deref().unwrap_or("?")
        ),
        DrillVerdict::Failed { reason } => {
            format!("restore drill of {}@{} FAILED: {reason}", r.dataset, r.snapshot)
        }
    };
    format!(
        "{head}\n  {}, {}, {} in {:.1} s into {}; quoted cost {:.4} {}; {}\n",
        count(r.streams as u64, "stream", "streams"),
        count(r.chunks, "chunk", "chunks"),
        human_bytes(r.bytes),
        r.seconds,
        r.target,
        r.cost,
        r.currency,
        if r.kept {
            "the drill dataset is KEPT (destroy it by hand)"
        } else {
            "the drill dataset is destroyed"
        }
    )
}
