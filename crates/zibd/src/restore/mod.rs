//! Restore from the bucket alone: catalog, thaw, verified download, `zfs receive`.
//!
//! 1. **Catalog**: list the manifests under the prefix, GET and parse each one; no local state
//!    is used; one that cannot be read or is not a manifest this zib understands is skipped with
//!    a warning naming its key. [`load_catalog`] / [`plan`].
//! 2. **Thaw**: every chunk in an archive class gets one RestoreObject (tier Bulk by default).
//!    A HEAD first tells whether a thaw was already asked for or is done (`x-amz-restore`), and
//!    each request is recorded in the progress file before the next one, so a restart never
//!    asks twice; "already in progress" counts as asked.
//! 3. **Receive**: the streams are applied in chain order (full, then each incremental), each
//!    with one `zfs receive -s -u`. Chunks are downloaded in order, at most `parallel` ahead,
//!    each to a spool file (so memory stays bounded whatever the chunk size) while hashing; a
//!    chunk's bytes reach `zfs receive` only after its size and SHA-256 matched the manifest.
//!    A mismatch or a missing object stops the restore with the object's name. Before a chunk's
//!    GET its thaw state is polled with HEAD, backing off exponentially from
//!    `poll.initial` to `poll.max`; a thaw that expired before the download (HEAD shows no
//!    restore, or GET says InvalidObjectState) is requested again.
//! 4. **Resume**: the progress file (JSON, written atomically under the work dir) records per
//!    chunk: thaw requested / ready / downloaded / received, and per stream: received. A
//!    restart continues with the first stream not fully received. A stored `zfs send` stream
//!    cannot be resumed at the byte offset of a `receive_resume_token` (only `zfs send -t` on
//!    the sending side can produce a resumed stream, and the source is gone), so a stream whose
//!    receive was interrupted is aborted with `zfs receive -A` and received again from its
//!    first chunk; thaws are not requested again (the restored copies last `days` days). A
//!    stream whose receive completed but was not recorded is recognised by its snapshot (name
//!    and GUID) on the target.
//! 5. **Keys**: raw encrypted streams arrive encrypted with `keylocation=prompt`. With a key
//!    location the key is loaded (`zfs load-key -L`), and the dataset mounted when a
//!    mountpoint was given; otherwise the report says how to do it.
//!
//! Entry points: `zibd restore list|plan|run` ([`main`], foreground, no config or local state
//! needed), and [`RestoreJobs`] for the daemon (`zibctl restore start|status`), which keeps one
//! job per target and continues unfinished ones after a restart. Both use
//! `<state_dir>/restore/restore-<target>.json` by default, so one lock guards a target. Thaw
//! polling: `--poll-initial-secs/--poll-max-secs`, or `ZIB_RESTORE_POLL=INITIAL,MAX` for the
//! daemon. Test hook: `ZIB_FAILPOINT=restore-after-chunk:N` (and `restore-after-thaw-request`).

mod catalog;
mod drill;
mod fetch;
mod jobs;
mod receive;
mod record;
mod report;
mod run;
mod thaw;

use std::{path::PathBuf, time::Duration};

use zib_core::{
    DatasetName, SnapName,
    catalog::ChainError,
    pricing::{Pricing, RestoreTier},
};

pub use catalog::{BucketCatalog, SkippedManifest, load_catalog, load_catalog_and_listing, plan};
pub use drill::{DrillError, DrillOptions, DrillReport, clear_cut_short, drill, format_drill};
pub use jobs::{RestoreJobs, options_from_request};
pub use record::{
    ChunkProgress, RECORD_VERSION, RestorePhase, RestoreProgress, RestoreProgressFile,
    RestoreRecord, unfinished_restore,
};
pub use report::{RestoreReport, format_catalog, format_plan};
pub use run::run;
pub use thaw::ManifestThaw;

use crate::{
    path_error::{PathError, io_err},
    s3::S3Error,
    s3::S3Store,
    zfs::{Zfs, ZfsError},
};

/// The outside systems a restore talks to.
#[derive(Debug, Clone)]
pub struct RestoreEngine {
    pub zfs: Zfs,
    pub s3: S3Store,
    /// Object prefix the catalog lives under (as in the config's `target.prefix`).
    pub prefix: String,
}

/// How often to look whether a thaw is done: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollBackoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for PollBackoff {
    /// Thaws take hours (Standard, up to 12) to days (Bulk, up to 48): a HEAD per chunk every
    /// 15 minutes at most costs nothing worth counting. `ZIB_RESTORE_POLL=INITIAL,MAX`
    /// (seconds) overrides it, e.g. for tests against a local server whose thaws take seconds.
    fn default() -> Self {
        let env = std::env::var("ZIB_RESTORE_POLL").ok().and_then(|v| Self::parse(&v));
        env.unwrap_or(Self { initial: Duration::from_secs(60), max: Duration::from_secs(15 * 60) })
    }
}

impl PollBackoff {
    /// "INITIAL,MAX" in seconds (fractions allowed), INITIAL > 0 and MAX >= INITIAL.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once(',')?;
        let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0.0 && b >= a && b.is_finite())
            .then(|| Self { initial: Duration::from_secs_f64(a), max: Duration::from_secs_f64(b) })
    }
}

/// What to restore, where, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backed-up dataset; may be omitted when the prefix holds only one.
    pub dataset: Option<DatasetName>,
    /// The snapshot to restore up to; the newest when None.
    pub snapshot: Option<SnapName>,
    /// The dataset to create (must not exist).
    pub target: DatasetName,
    pub tier: RestoreTier,
    /// Days the thawed copies stay readable (each day billed at STANDARD).
    pub days: u32,
    /// `zfs receive -o mountpoint=...` for the restored dataset.
    pub mountpoint: Option<String>,
    /// Do not mount at the end.
    pub no_mount: bool,
    /// Load the key from here at the end (`file:///path` or a path).
    pub key_location: Option<String>,
    /// Chunks downloaded ahead of `zfs receive` (each spooled to disk: at most
    /// `parallel + 1` chunk files exist at once).
    pub parallel: usize,
    pub poll: PollBackoff,
    /// The price table; its thaw hours per tier say when a thaw should be complete.
    pub pricing: Pricing,
}

impl RestoreOptions {
    pub fn new(target: DatasetName) -> Self {
        Self {
            dataset: None,
            snapshot: None,
            target,
            tier: RestoreTier::Bulk,
            days: 7,
            mountpoint: None,
            no_mount: false,
            key_location: None,
            parallel: 2,
            poll: PollBackoff::default(),
            pricing: Pricing::default(),
        }
    }
}

impl RestoreOptions {
    /// The options an unfinished record was started with (to resume it after a daemon restart).
    pub fn from_record(r: &RestoreRecord) -> Self {
        Self {
            dataset: Some(r.plan.dataset.clone()),
            snapshot: Some(r.plan.snapshot.name.clone()),
            tier: r.tier,
            days: r.days,
            mountpoint: r.mountpoint.clone(),
            no_mount: r.no_mount,
            key_location: r.key_location.clone(),
            ..Self::new(r.target.clone())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "no zib catalog under s3://{bucket}/{prefix}: no *.manifest.json objects there (check --bucket, --prefix and the region/endpoint)"
    )]
    NoCatalog { bucket: String, prefix: String },
    #[error("{0}")]
    DatasetChoice(String),
    #[error("the catalog cannot restore this: {0}")]
    Chain(#[from] ChainError),
    /// A chain error while manifests of the dataset were skipped (the message lists them).
    #[error("the catalog cannot restore this: {0}")]
    ChainSkipped(String),
    #[error("unreadable catalog entry: {0}")]
    Manifest(String),
    #[error(
        "the target dataset {target} already exists; restore into a new dataset (zib never overwrites one)"
    )]
    TargetExists { target: String },
    #[error(
        "the credentials may not thaw archived objects: RestoreObject on s3://{bucket}/{key} was denied ({message}); grant s3:RestoreObject on the bucket's objects to these credentials"
    )]
    RestoreDenied { bucket: String, key: String, message: String },
    #[error(
        "chunk s3://{bucket}/{key} is corrupt: {detail}; nothing of it was passed to zfs receive. The restore stopped"
    )]
    ChunkCorrupt { bucket: String, key: String, detail: String },
    #[error(
        "the stream of s3://{bucket}/{key} is not the one this manifest describes: {detail}; nothing of it was passed to zfs receive. The restore stopped"
    )]
    ForeignStream { bucket: String, key: String, detail: String },
    #[error("chunk s3://{bucket}/{key} is missing from the bucket; the restore stopped")]
    ChunkMissing { bucket: String, key: String },
    #[error(
        "the thaw of s3://{bucket}/{key} expired before it was downloaded, {times} times; the restore stopped (run it again, with more --days)"
    )]
    ThawExpired { bucket: String, key: String, times: u32 },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("restore progress file {path}: {message}")]
    Progress { path: PathBuf, message: String },
    #[error("another zib process is restoring into {target} (lock {path})")]
    Locked { target: String, path: PathBuf },
    #[error("the restore into {target} was cancelled; running it again continues where it stopped")]
    Cancelled { target: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_backoff_parses() {
        assert_eq!(
            PollBackoff::parse("0.5, 2"),
            Some(PollBackoff { initial: Duration::from_millis(500), max: Duration::from_secs(2) })
        );
        for bad in ["", "1", "0,1", "2,1", "a,b", "1,inf"] {
            assert_eq!(PollBackoff::parse(bad), None, "{bad}");
        }
    }
}
