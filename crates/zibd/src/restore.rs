//! Restore from the bucket alone: catalog, thaw, verified download, `zfs receive`.
//!
//! 1. **Catalog**: list the manifests under the prefix, GET and parse each one; no local state
//!    is used. [`load_catalog`] / [`plan`].
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

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::watch};
use tokio_util::sync::CancellationToken;
use zib_core::{
    DatasetName, Manifest, SnapName,
    catalog::{Catalog, ChainError},
    manifest::ChunkRecord,
    names::{dataset_of_manifest_key, normalize_prefix},
    pricing::RestoreTier,
    restore_plan::RestorePlan,
};

use crate::{
    failpoint,
    s3::{S3Error, S3Store, ThawState, ThawTier, thaw_state},
    state_store::write_atomic,
    zfs::{Zfs, ZfsError},
};

pub const RECORD_VERSION: u32 = 1;

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
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("restore progress file {path}: {message}")]
    Progress { path: PathBuf, message: String },
    #[error("another zib process is restoring into {target} (lock {path})")]
    Locked { target: String, path: PathBuf },
    #[error("the restore into {target} was cancelled; running it again continues where it stopped")]
    Cancelled { target: String },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io { action, path: path.to_owned(), source }
}

// ---------------------------------------------------------------------------------------------
// Catalog

/// Every dataset's catalog found under a prefix.
#[derive(Debug, Clone)]
pub struct BucketCatalog {
    pub bucket: String,
    pub prefix: String,
    pub datasets: Vec<Catalog>,
}

impl BucketCatalog {
    /// The catalog of `dataset`, or of the only dataset when None.
    pub fn select(&self, dataset: Option<&DatasetName>) -> Result<&Catalog, RestoreError> {
        let names =
            || self.datasets.iter().map(|c| c.dataset.as_str()).collect::<Vec<_>>().join(", ");
        match dataset {
            Some(d) => self.datasets.iter().find(|c| &c.dataset == d).ok_or_else(|| {
                RestoreError::DatasetChoice(format!(
                    "no backups of {d} under s3://{}/{} (found: {})",
                    self.bucket,
                    self.prefix,
                    names()
                ))
            }),
            None if self.datasets.len() == 1 => Ok(&self.datasets[0]),
            None => Err(RestoreError::DatasetChoice(format!(
                "s3://{}/{} holds backups of several datasets ({}); choose one with --dataset",
                self.bucket,
                self.prefix,
                names()
            ))),
        }
    }
}

/// Lists and reads every manifest under `prefix` (only `dataset`'s when given).
pub async fn load_catalog(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
) -> Result<BucketCatalog, RestoreError> {
    let prefix = normalize_prefix(prefix);
    let list_prefix = match dataset {
        Some(d) => zib_core::KeyLayout::new(&prefix, d).root().to_owned(),
        None => prefix.clone(),
    };
    let keys: Vec<(DatasetName, String)> = s3
        .list(&list_prefix)
        .await?
        .into_iter()
        .filter_map(|o| dataset_of_manifest_key(&prefix, &o.key).map(|d| (d, o.key)))
        .collect();
    if keys.is_empty() {
        return Err(RestoreError::NoCatalog { bucket: s3.bucket().into(), prefix: list_prefix });
    }
    let futs: Vec<_> = keys.into_iter().map(|(d, key)| read_manifest(s3, d, key)).collect();
    let manifests: Vec<(DatasetName, Manifest)> =
        futures::stream::iter(futs).buffered(8).try_collect().await?;
    let mut by_ds: std::collections::BTreeMap<DatasetName, Vec<Manifest>> = Default::default();
    for (d, m) in manifests {
        by_ds.entry(d).or_default().push(m);
    }
    Ok(BucketCatalog {
        bucket: s3.bucket().into(),
        prefix,
        datasets: by_ds.into_iter().map(|(d, ms)| Catalog::new(d, ms)).collect(),
    })
}

async fn read_manifest(
    s3: &S3Store,
    d: DatasetName,
    key: String,
) -> Result<(DatasetName, Manifest), RestoreError> {
    let bytes = s3.get_bytes(&key, 64 << 20).await?;
    let m = Manifest::from_json(&key, &bytes).map_err(|e| RestoreError::Manifest(e.to_string()))?;
    if m.dataset != d {
        return Err(RestoreError::Manifest(format!(
            "{key} describes dataset {}, not {d}",
            m.dataset
        )));
    }
    Ok((d, m))
}

/// The plan of a restore of `dataset@snapshot` from the bucket.
pub async fn plan(
    engine: &RestoreEngine,
    dataset: Option<&DatasetName>,
    snapshot: Option<&SnapName>,
) -> Result<RestorePlan, RestoreError> {
    let cat = load_catalog(&engine.s3, &engine.prefix, dataset).await?;
    let c = cat.select(dataset)?;
    Ok(RestorePlan::new(&cat.prefix, c, snapshot)?)
}

// ---------------------------------------------------------------------------------------------
// Progress: persisted (the record) and live (the watch channel)

/// Per chunk, what has happened to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkProgress {
    /// When the (last) RestoreObject for it was sent or found already sent.
    pub thaw_requested_at: Option<DateTime<Utc>>,
    /// How many RestoreObject requests zib sent for it (more than 1 only after an expiry).
    pub thaw_requests: u32,
    pub ready: bool,
    pub downloaded: bool,
    pub received: bool,
}

/// The restore's durable record, one JSON file per target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub version: u32,
    pub bucket: String,
    pub target: DatasetName,
    pub tier: RestoreTier,
    pub days: u32,
    pub mountpoint: Option<String>,
    /// Where to load the key from at the end (a location, never the key itself).
    #[serde(default)]
    pub key_location: Option<String>,
    #[serde(default)]
    pub no_mount: bool,
    pub plan: RestorePlan,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Streams whose `zfs receive` completed (a prefix of the plan's steps).
    pub steps_received: usize,
    /// Per step, per chunk.
    pub chunks: Vec<Vec<ChunkProgress>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RestoreRecord {
    fn new(bucket: &str, opts: &RestoreOptions, plan: RestorePlan) -> Self {
        let now = Utc::now();
        Self {
            version: RECORD_VERSION,
            bucket: bucket.into(),
            target: opts.target.clone(),
            tier: opts.tier,
            days: opts.days,
            mountpoint: opts.mountpoint.clone(),
            key_location: opts.key_location.clone(),
            no_mount: opts.no_mount,
            chunks: plan
                .steps
                .iter()
                .map(|s| vec![ChunkProgress::default(); s.chunks.len()])
                .collect(),
            plan,
            started_at: now,
            updated_at: now,
            steps_received: 0,
            finished_at: None,
        }
    }

    fn count(&self, f: impl Fn(&ChunkProgress) -> bool) -> u64 {
        self.chunks.iter().flatten().filter(|c| f(c)).count() as u64
    }
}

/// The locked progress file of the restore into one target dataset.
#[derive(Debug)]
pub struct RestoreProgressFile {
    _lock: Flock<File>,
    path: PathBuf,
    spool_dir: PathBuf,
    /// The record of an unfinished (or the last finished) restore, if any.
    pub record: Option<RestoreRecord>,
}

impl RestoreProgressFile {
    /// Takes the target's restore lock (without waiting) and loads its record, if any, from
    /// `<work_dir>/restore-<target>.json`. Spool files go to `<work_dir>/restore-spool/`.
    pub fn open(work_dir: &Path, target: &DatasetName) -> Result<Self, RestoreError> {
        std::fs::create_dir_all(work_dir)
            .map_err(io_err("cannot create work directory", work_dir))?;
        let stem = format!("restore-{}", target.file_stem());
        let lock_path = work_dir.join(format!("{stem}.lock"));
        let lock = crate::state_store::lock_exclusive(&lock_path).map_err(|e| match e {
            crate::state_store::LockError::Held { .. } => {
                RestoreError::Locked { target: target.to_string(), path: lock_path.clone() }
            }
            crate::state_store::LockError::Io { action, source } => {
                RestoreError::Io { action, path: lock_path.clone(), source }
            }
        })?;
        let path = work_dir.join(format!("{stem}.json"));
        let record = match std::fs::File::open(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(io_err("cannot read", &path))?;
                let r: RestoreRecord =
                    serde_json::from_slice(&bytes).map_err(|e| RestoreError::Progress {
                        path: path.clone(),
                        message: format!(
                            "not a valid restore record ({e}); remove it to start over"
                        ),
                    })?;
                if r.version != RECORD_VERSION
                    || &r.target != target
                    || r.chunks.len() != r.plan.steps.len()
                {
                    return Err(RestoreError::Progress {
                        path,
                        message: format!(
                            "version {} record for {} does not fit; remove it to start over",
                            r.version, r.target
                        ),
                    });
                }
                Some(r)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RestoreError::Io { action: "cannot read", path, source: e }),
        };
        Ok(Self { _lock: lock, path, spool_dir: work_dir.join("restore-spool"), record })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn save(&mut self) -> Result<(), RestoreError> {
        let rec = self.record.as_mut().expect("a record to save");
        rec.updated_at = Utc::now();
        let bytes = serde_json::to_vec_pretty(rec).expect("record serialises");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .expect("save task panicked")
            .map_err(|e| RestoreError::Progress { path: self.path.clone(), message: e.to_string() })
    }

    fn rec(&mut self) -> &mut RestoreRecord {
        self.record.as_mut().expect("record")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestorePhase {
    #[default]
    Planning,
    /// Sending RestoreObject requests, or waiting for thawed copies.
    Thawing,
    Receiving,
    Finishing,
    Done,
}

/// Live progress, published on a `watch` channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreProgress {
    pub phase: RestorePhase,
    pub dataset: Option<String>,
    pub snapshot: Option<String>,
    pub target: String,
    pub tier: RestoreTier,
    pub steps_total: usize,
    pub steps_received: usize,
    pub chunks_total: u64,
    /// Chunks in an archive class.
    pub thaw_needed: u64,
    pub thaw_requested: u64,
    pub thaw_ready: u64,
    pub chunks_downloaded: u64,
    pub chunks_received: u64,
    pub bytes_total: u64,
    pub bytes_received: u64,
    pub started_at: Option<DateTime<Utc>>,
    /// When the thaws should be complete, from the tier's time (pricing table).
    pub thaw_expected_at: Option<DateTime<Utc>>,
    /// Polls of thaw state made so far.
    pub polls: u64,
    pub message: Option<String>,
}

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

// ---------------------------------------------------------------------------------------------
// The run

/// Runs (or resumes) the restore described by `opts` into `opts.target`. The progress file must
/// be the one opened for `opts.target`. On error the record stays, and a new call continues.
pub async fn run(
    engine: &RestoreEngine,
    opts: &RestoreOptions,
    file: &mut RestoreProgressFile,
    progress: &watch::Sender<RestoreProgress>,
    cancel: &CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    if !(1..=365).contains(&opts.days) {
        return Err(RestoreError::DatasetChoice(format!(
            "--days must be between 1 and 365, got {}",
            opts.days
        )));
    }
    let parallel = opts.parallel.clamp(1, 16);
    progress.send_modify(|p| {
        *p = RestoreProgress {
            target: opts.target.to_string(),
            tier: opts.tier,
            started_at: Some(Utc::now()),
            ..Default::default()
        };
    });

    // Resume an unfinished record, or plan afresh.
    let resumed = match &file.record {
        Some(r) if r.finished_at.is_none() => {
            let name_differs = opts.snapshot.as_ref().is_some_and(|s| s != &r.plan.snapshot.name);
            let ds_differs = opts.dataset.as_ref().is_some_and(|d| d != &r.plan.dataset);
            if name_differs || ds_differs || r.bucket != engine.s3.bucket() {
                return Err(RestoreError::Progress {
                    path: file.path.clone(),
                    message: format!(
                        "an unfinished restore of {}@{} from s3://{} into {} is recorded here; run it with the same dataset/snapshot/bucket to continue, or remove this file (and `zfs destroy -r {}` if it exists) to start another",
                        r.plan.dataset, r.plan.snapshot.name, r.bucket, r.target, r.target
                    ),
                });
            }
            tracing::info!(target = %opts.target, streams_done = r.steps_received, "resuming the recorded restore");
            true
        }
        _ => {
            let plan = plan(engine, opts.dataset.as_ref(), opts.snapshot.as_ref()).await?;
            if engine.zfs.dataset_exists(opts.target.as_str()).await? {
                return Err(RestoreError::TargetExists { target: opts.target.to_string() });
            }
            file.record = Some(RestoreRecord::new(engine.s3.bucket(), opts, plan));
            file.save().await?;
            false
        }
    };
    let ready_ahead = AtomicU64::new(0);
    let mut run = Run {
        engine,
        opts,
        file,
        progress,
        cancel,
        parallel,
        thaw_sent: 0,
        polls: 0,
        ready_ahead: &ready_ahead,
    };
    run.publish(RestorePhase::Planning, None);
    clean_spool(&run.file.spool_dir, &opts.target).await;

    run.request_thaws().await?;
    let steps = run.file.rec().plan.steps.len();
    for i in run.file.rec().steps_received..steps {
        if let Err(e) = run.receive_step(i).await {
            // Downloads in flight were dropped with the stream; remove what they spooled.
            clean_spool(&run.file.spool_dir, &opts.target).await;
            return Err(e);
        }
    }
    run.finish(resumed).await
}

struct Run<'a> {
    engine: &'a RestoreEngine,
    opts: &'a RestoreOptions,
    file: &'a mut RestoreProgressFile,
    progress: &'a watch::Sender<RestoreProgress>,
    cancel: &'a CancellationToken,
    parallel: usize,
    thaw_sent: u64,
    polls: u64,
    /// Chunks of the current stream seen thawed by a download but not yet recorded as ready.
    ready_ahead: &'a AtomicU64,
}

fn thaw_tier(t: RestoreTier) -> ThawTier {
    match t {
        RestoreTier::Bulk => ThawTier::Bulk,
        RestoreTier::Standard => ThawTier::Standard,
    }
}

/// Everything a chunk download needs, shareable across concurrent downloads.
#[derive(Clone, Copy)]
struct FetchCtx<'a> {
    s3: &'a S3Store,
    tier: RestoreTier,
    days: u32,
    poll: PollBackoff,
    cancel: &'a CancellationToken,
    progress: &'a watch::Sender<RestoreProgress>,
    target: &'a DatasetName,
    ready_ahead: &'a std::sync::atomic::AtomicU64,
}

/// What a finished download reports back to the receiver.
struct Fetched {
    index: usize,
    path: PathBuf,
    thaw_requests: u32,
    polls: u64,
}

impl<'a> Run<'a> {
    fn publish(&self, phase: RestorePhase, message: Option<String>) {
        let rec = self.file.record.as_ref().expect("record");
        let hours = f64::from(match rec.tier {
            RestoreTier::Bulk => 48u32,
            RestoreTier::Standard => 12,
        });
        let first_request = rec.chunks.iter().flatten().filter_map(|c| c.thaw_requested_at).min();
        let received_bytes: u64 =
            rec.plan.steps[..rec.steps_received].iter().map(|s| s.stream_size).sum::<u64>()
                + rec
                    .plan
                    .steps
                    .get(rec.steps_received)
                    .map(|s| {
                        s.chunks
                            .iter()
                            .zip(&rec.chunks[rec.steps_received])
                            .filter(|(_, p)| p.received)
                            .map(|(c, _)| c.size)
                            .sum()
                    })
                    .unwrap_or(0);
        let thaw_needed = rec.plan.thaw_objects();
        let polls = self.polls;
        let ready_ahead = self.ready_ahead.load(Ordering::Relaxed);
        self.progress.send_modify(|p| {
            p.phase = phase;
            p.dataset = Some(rec.plan.dataset.to_string());
            p.snapshot = Some(rec.plan.snapshot.name.to_string());
            p.steps_total = rec.plan.steps.len();
            p.steps_received = rec.steps_received;
            p.chunks_total = rec.plan.total_objects();
            p.thaw_needed = thaw_needed;
            p.thaw_requested = rec.count(|c| c.thaw_requested_at.is_some());
            p.thaw_ready = rec.count(|c| c.ready) + ready_ahead;
            p.chunks_downloaded = rec.count(|c| c.downloaded);
            p.chunks_received = rec.count(|c| c.received);
            p.bytes_total = rec.plan.total_bytes();
            p.bytes_received = received_bytes;
            p.thaw_expected_at = first_request
                .filter(|_| thaw_needed > 0)
                .map(|t| t + chrono::Duration::seconds((hours * 3600.0) as i64));
            p.polls = p.polls.max(polls);
            if message.is_some() {
                p.message = message;
            }
        });
    }

    fn check_cancel(&self) -> Result<(), RestoreError> {
        if self.cancel.is_cancelled() {
            Err(RestoreError::Cancelled { target: self.opts.target.to_string() })
        } else {
            Ok(())
        }
    }

    fn ctx(&self) -> FetchCtx<'a> {
        let rec = self.file.record.as_ref().expect("record");
        let (engine, opts): (&'a RestoreEngine, &'a RestoreOptions) = (self.engine, self.opts);
        FetchCtx {
            s3: &engine.s3,
            tier: rec.tier,
            days: rec.days,
            poll: opts.poll,
            cancel: self.cancel,
            progress: self.progress,
            target: &opts.target,
            ready_ahead: self.ready_ahead,
        }
    }

    /// One RestoreObject per archived chunk of the streams still to receive, unless the record
    /// or the object's HEAD shows it was asked for already.
    async fn request_thaws(&mut self) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        let todo: Vec<(usize, usize, String)> = rec
            .plan
            .steps
            .iter()
            .enumerate()
            .skip(rec.steps_received)
            .filter(|(_, s)| s.needs_thaw())
            .flat_map(|(i, s)| s.chunks.iter().enumerate().map(move |(j, c)| (i, j, c.key.clone())))
            .filter(|(i, j, _)| rec.chunks[*i][*j].thaw_requested_at.is_none())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let days = self.file.rec().days;
        self.publish(
            RestorePhase::Thawing,
            Some(format!(
                "requesting the thaw of {} archived chunks ({} tier, {days} days)",
                todo.len(),
                self.opts.tier
            )),
        );
        let ctx = self.ctx();
        let (tier, days) = (ctx.tier, ctx.days);
        let s3 = &self.engine.s3;
        for (i, j, key) in todo {
            self.check_cancel()?;
            let head = head_chunk(s3, &key).await?;
            let (sent, ready) = match thaw_state(&head) {
                ThawState::NotArchived => (false, true),
                ThawState::Ready { .. } => (false, true),
                ThawState::InProgress => (false, false),
                ThawState::NotRequested => {
                    request_thaw(s3, &key, tier, days).await?;
                    (true, false)
                }
            };
            if sent {
                self.thaw_sent += 1;
            }
            let c = &mut self.file.rec().chunks[i][j];
            c.thaw_requested_at = Some(Utc::now());
            c.thaw_requests += u32::from(sent);
            c.ready = ready;
            self.file.save().await?;
            failpoint::hit("restore-after-thaw-request");
            self.publish(RestorePhase::Thawing, None);
        }
        Ok(())
    }

    /// Receives stream `i` from its first chunk into the target.
    async fn receive_step(&mut self, i: usize) -> Result<(), RestoreError> {
        let zfs = &self.engine.zfs;
        let target = self.opts.target.clone();
        let step = self.file.rec().plan.steps[i].clone();
        let needs_thaw = step.needs_thaw();

        // A receive that completed before a crash left its snapshot behind.
        if snapshot_guid(zfs, &target, &step.to.name).await?.as_deref()
            == Some(step.to.guid.as_str())
        {
            tracing::info!(%target, snapshot = %step.to.name, "stream already received (found its snapshot on the target)");
            return self.step_done(i).await;
        }
        // An interrupted `zfs receive -s` left partial state: a stored stream cannot resume at
        // the token's offset, so abort it and receive the stream again from its first chunk.
        if zfs.dataset_exists(target.as_str()).await? {
            if let Some(token) = zfs.get_property(target.as_str(), "receive_resume_token").await? {
                tracing::warn!(%target, snapshot = %step.to.name, token_len = token.len(), "aborting the interrupted partial receive (zfs receive -A); receiving that stream again from its first chunk");
                zfs.raw(&["receive", "-A", target.as_str()]).await?;
            }
        } else if !step.is_full() {
            return Err(RestoreError::Progress {
                path: self.file.path.clone(),
                message: format!(
                    "stream #{} is an incremental, but the target {target} is gone; remove this file to start over",
                    step.seq
                ),
            });
        }
        for c in &mut self.file.rec().chunks[i] {
            c.downloaded = false;
            c.received = false;
        }
        self.file.save().await?;

        let mut args: Vec<String> = vec!["-s".into(), "-u".into()];
        if let (true, Some(mp)) = (step.is_full(), &self.opts.mountpoint) {
            args.extend(["-o".into(), format!("mountpoint={mp}")]);
        }
        args.push(target.to_string());
        let n_steps = self.file.rec().plan.steps.len();
        self.publish(
            RestorePhase::Receiving,
            Some(format!(
                "receiving stream {}/{n_steps}: {} ({} chunks)",
                i + 1,
                step.to.name,
                step.chunks.len()
            )),
        );
        let mut sink = zfs.receive(&args)?;

        let spool_dir = self.file.spool_dir.clone();
        tokio::fs::create_dir_all(&spool_dir)
            .await
            .map_err(io_err("cannot create spool directory", &spool_dir))?;
        let ctx = self.ctx();
        let stem = target.file_stem();
        let was_ready: Vec<bool> = self.file.rec().chunks[i].iter().map(|c| c.ready).collect();
        self.ready_ahead.store(0, Ordering::Relaxed);
        // Futures collected first (not mapped lazily): keeps the task's future provably Send.
        let futs: Vec<_> = step
            .chunks
            .iter()
            .enumerate()
            .map(|(j, c)| {
                fetch_chunk(
                    ctx,
                    j,
                    c,
                    needs_thaw && !was_ready[j],
                    needs_thaw,
                    spool_dir.join(format!("{stem}.{i}.{j:08}.chunk")),
                )
            })
            .collect();
        let mut fetches = futures::stream::iter(futs).buffered(self.parallel);

        let mut whole = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let next = tokio::select! {
                n = fetches.next() => n,
                () = self.cancel.cancelled() => return Err(RestoreError::Cancelled { target: target.to_string() }),
            };
            let Some(fetched) = next else { break };
            let Fetched { index, path, thaw_requests, polls } = fetched?;
            self.polls += polls;
            self.thaw_sent += u64::from(thaw_requests);
            {
                let c = &mut self.file.rec().chunks[i][index];
                if needs_thaw && !c.ready {
                    c.ready = true;
                    let _ =
                        self.ready_ahead.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            n.checked_sub(1)
                        });
                }
                c.downloaded = true;
                c.thaw_requests += thaw_requests;
            }
            // Verified: now, and only now, its bytes go to zfs receive.
            let mut f = tokio::fs::File::open(&path)
                .await
                .map_err(io_err("cannot open spool file", &path))?;
            loop {
                use tokio::io::AsyncReadExt;
                let n = f.read(&mut buf).await.map_err(io_err("cannot read spool file", &path))?;
                if n == 0 {
                    break;
                }
                whole.update(&buf[..n]);
                if let Err(e) = sink.stdin().write_all(&buf[..n]).await {
                    // zfs receive stopped reading: its exit status and stderr say why.
                    let _ = tokio::fs::remove_file(&path).await;
                    drop(fetches);
                    sink.finish().await?;
                    return Err(RestoreError::Io {
                        action: "zfs receive stopped reading its input",
                        path: PathBuf::from(target.as_str()),
                        source: e,
                    });
                }
            }
            drop(f);
            let _ = tokio::fs::remove_file(&path).await;
            self.file.rec().chunks[i][index].received = true;
            self.file.save().await?;
            self.publish(RestorePhase::Receiving, None);
            failpoint::hit("restore-after-chunk");
        }
        drop(fetches);
        let sha = hex::encode(whole.finalize());
        if sha != step.stream_sha256 {
            // Every chunk matched, so the manifest contradicts itself; do not let zfs commit it.
            drop(sink);
            return Err(RestoreError::ChunkCorrupt {
                bucket: self.engine.s3.bucket().into(),
                key: step.manifest_key.clone(),
                detail: format!(
                    "the stream's SHA-256 is {sha}, the manifest says {}",
                    step.stream_sha256
                ),
            });
        }
        sink.finish().await?;
        self.step_done(i).await
    }

    async fn step_done(&mut self, i: usize) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        rec.steps_received = i + 1;
        let thawed = rec.plan.steps[i].needs_thaw();
        for c in &mut rec.chunks[i] {
            c.ready |= thawed;
            c.downloaded = true;
            c.received = true;
        }
        self.file.save().await?;
        tracing::info!(target = %self.opts.target, stream = i + 1, "stream received");
        self.publish(RestorePhase::Receiving, None);
        Ok(())
    }

    async fn finish(&mut self, resumed: bool) -> Result<RestoreReport, RestoreError> {
        self.publish(RestorePhase::Finishing, None);
        let zfs = &self.engine.zfs;
        let target = self.opts.target.clone();
        let t = target.as_str();
        let encrypted = zfs.get_property(t, "encryption").await?.is_some_and(|e| e != "off");
        let mut key_loaded = !encrypted;
        let mut next_steps = Vec::new();
        if encrypted {
            let keystatus = zfs.get_property(t, "keystatus").await?;
            if keystatus.as_deref() == Some("available") {
                key_loaded = true;
            } else if let Some(loc) = &self.opts.key_location {
                let loc = if loc.contains("://") || loc == "prompt" {
                    loc.clone()
                } else {
                    format!("file://{loc}")
                };
                zfs.raw(&["load-key", "-L", &loc, t]).await?;
                key_loaded = true;
            } else {
                next_steps.push(format!(
                    "{t} is encrypted (raw stream) and its key is not loaded: `zfs load-key -L file:///path/to/keyfile {t}` (or `-L prompt` for a passphrase), then `zfs set keylocation=file:///path/to/keyfile {t}` to keep it"
                ));
            }
        }
        let mut mounted = false;
        if key_loaded && !self.opts.no_mount {
            if self.opts.mountpoint.is_some() {
                zfs.raw(&["mount", t]).await?;
                mounted = true;
            } else {
                next_steps.push(format!("not mounted: set a mountpoint and mount it (`zfs set mountpoint=/path {t} && zfs mount {t}`)"));
            }
        } else if key_loaded {
            next_steps.push(format!("not mounted (--no-mount): `zfs mount {t}`"));
        } else {
            next_steps.push(format!(
                "after loading the key: `zfs mount {t}` (set a mountpoint first if it has none)"
            ));
        }
        let rec = self.file.rec();
        rec.finished_at = Some(Utc::now());
        let report = RestoreReport {
            dataset: rec.plan.dataset.clone(),
            snapshot: rec.plan.snapshot.name.clone(),
            target,
            streams: rec.plan.steps.len(),
            chunks: rec.plan.total_objects(),
            bytes: rec.plan.total_bytes(),
            thaw_requests_sent: self.thaw_sent,
            polls: self.polls,
            resumed,
            encrypted,
            key_loaded,
            mounted,
            next_steps,
        };
        self.file.save().await?;
        self.publish(RestorePhase::Done, Some("restore complete".into()));
        Ok(report)
    }
}

async fn clean_spool(dir: &Path, target: &DatasetName) {
    let stem = format!("{}.", target.file_stem());
    let Ok(mut d) = tokio::fs::read_dir(dir).await else { return };
    while let Ok(Some(e)) = d.next_entry().await {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&stem) && n.ends_with(".chunk") {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

/// The GUID of `target@snap`, None if the dataset or snapshot does not exist.
async fn snapshot_guid(
    zfs: &Zfs,
    target: &DatasetName,
    snap: &SnapName,
) -> Result<Option<String>, ZfsError> {
    match zfs.snapshot_info(target, snap).await {
        Ok(s) => Ok(s.map(|s| s.guid)),
        Err(ZfsError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

async fn head_chunk(s3: &S3Store, key: &str) -> Result<crate::s3::ObjectHead, RestoreError> {
    s3.head(key).await.map_err(|e| {
        if e.is_not_found() {
            RestoreError::ChunkMissing { bucket: s3.bucket().into(), key: key.into() }
        } else {
            e.into()
        }
    })
}

async fn request_thaw(
    s3: &S3Store,
    key: &str,
    tier: RestoreTier,
    days: u32,
) -> Result<(), RestoreError> {
    tracing::info!(%key, %tier, days, "requesting thaw");
    match s3.request_thaw(key, thaw_tier(tier), days as i32).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("AccessDenied") || e.status() == Some(403) => {
            Err(RestoreError::RestoreDenied {
                bucket: s3.bucket().into(),
                key: key.into(),
                message: e.to_string(),
            })
        }
        Err(e) if e.is_not_found() => {
            Err(RestoreError::ChunkMissing { bucket: s3.bucket().into(), key: key.into() })
        }
        Err(e) => Err(e.into()),
    }
}

/// How many times a thaw may expire before the chunk's download before the restore gives up.
const MAX_THAW_EXPIRIES: u32 = 3;

/// Waits until chunk `c` is readable (asking for a thaw again if an earlier one expired),
/// downloads it to `path` while hashing, and checks size and SHA-256. The file exists on Ok
/// only; nothing unverified is ever returned.
async fn fetch_chunk(
    ctx: FetchCtx<'_>,
    index: usize,
    c: &ChunkRecord,
    count_ready: bool,
    needs_thaw: bool,
    path: PathBuf,
) -> Result<Fetched, RestoreError> {
    let mut thaw_requests = 0u32;
    let mut polls = 0u64;
    let mut counted = !count_ready;
    loop {
        if needs_thaw {
            wait_ready(ctx, &c.key, &mut thaw_requests, &mut polls).await?;
            if !counted {
                counted = true;
                ctx.ready_ahead.fetch_add(1, Ordering::Relaxed);
                ctx.progress.send_modify(|p| p.thaw_ready += 1);
            }
        }
        match download(ctx, c, &path).await {
            Ok(()) => return Ok(Fetched { index, path, thaw_requests, polls }),
            Err(DownloadError::NotThawed) => {
                if thaw_requests >= MAX_THAW_EXPIRIES {
                    return Err(RestoreError::ThawExpired {
                        bucket: ctx.s3.bucket().into(),
                        key: c.key.clone(),
                        times: thaw_requests,
                    });
                }
                tracing::warn!(key = %c.key, "the thawed copy expired (or was never made) before the download; requesting the thaw again");
                ctx.progress.send_modify(|p| {
                    p.message = Some(format!(
                        "the thaw of {} expired before its download; requested again",
                        c.key
                    ))
                });
                request_thaw(ctx.s3, &c.key, ctx.tier, ctx.days).await?;
                thaw_requests += 1;
            }
            Err(DownloadError::Other(e)) => return Err(e),
        }
    }
}

/// Polls HEAD until the chunk's thaw is done, with exponential backoff.
async fn wait_ready(
    ctx: FetchCtx<'_>,
    key: &str,
    thaw_requests: &mut u32,
    polls: &mut u64,
) -> Result<(), RestoreError> {
    let mut delay = ctx.poll.initial;
    loop {
        let head = head_chunk(ctx.s3, key).await?;
        *polls += 1;
        ctx.progress.send_modify(|p| p.polls += 1);
        match thaw_state(&head) {
            ThawState::NotArchived | ThawState::Ready { .. } => {
                ctx.progress.send_modify(|p| {
                    if p.phase == RestorePhase::Thawing {
                        p.phase = RestorePhase::Receiving;
                    }
                });
                return Ok(());
            }
            ThawState::InProgress => ctx.progress.send_modify(|p| p.phase = RestorePhase::Thawing),
            ThawState::NotRequested => {
                // Asked for earlier (the record says so), so the restored copy has expired.
                if *thaw_requests >= MAX_THAW_EXPIRIES {
                    return Err(RestoreError::ThawExpired {
                        bucket: ctx.s3.bucket().into(),
                        key: key.into(),
                        times: *thaw_requests,
                    });
                }
                tracing::warn!(%key, "no thaw in progress or done for this chunk (expired before its download?); requesting it again");
                ctx.progress.send_modify(|p| {
                    p.message = Some(format!(
                        "the thaw of {key} expired before its download; requested again"
                    ))
                });
                request_thaw(ctx.s3, key, ctx.tier, ctx.days).await?;
                *thaw_requests += 1;
            }
        }
        tracing::debug!(%key, delay_ms = delay.as_millis() as u64, "thaw not done yet");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.cancel.cancelled() => return Err(RestoreError::Cancelled { target: ctx.target.to_string() }),
        }
        delay = (delay * 2).min(ctx.poll.max);
    }
}

enum DownloadError {
    NotThawed,
    Other(RestoreError),
}

impl From<RestoreError> for DownloadError {
    fn from(e: RestoreError) -> Self {
        Self::Other(e)
    }
}

/// GET into `path`, hashing; verifies size and SHA-256 against the manifest. Retries a body
/// that breaks off mid-way (the SDK retries only the request itself).
async fn download(ctx: FetchCtx<'_>, c: &ChunkRecord, path: &Path) -> Result<(), DownloadError> {
    let bucket = ctx.s3.bucket();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let body = match ctx.s3.get(&c.key).await {
            Ok(b) => b,
            Err(e) if e.code() == Some("InvalidObjectState") => {
                return Err(DownloadError::NotThawed);
            }
            Err(e) if e.is_not_found() => {
                return Err(RestoreError::ChunkMissing {
                    bucket: bucket.into(),
                    key: c.key.clone(),
                }
                .into());
            }
            Err(e) => return Err(RestoreError::from(e).into()),
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(io_err("cannot create spool file", path))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut reader = body.into_async_read();
        let mut buf = vec![0u8; 256 * 1024];
        let res: Result<(), std::io::Error> = async {
            use tokio::io::AsyncReadExt;
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                size += n as u64;
                if size > c.size {
                    return Ok(()); // too long: reported below, no need to read further
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(|e| {
                    std::io::Error::other(format!("writing {}: {e}", path.display()))
                })?;
            }
        }
        .await;
        match res {
            Ok(()) => {}
            Err(e) if attempt < 3 => {
                tracing::warn!(key = %c.key, error = %e, "download broke off; retrying");
                continue;
            }
            Err(e) => {
                return Err(RestoreError::Io {
                    action: "downloading",
                    path: PathBuf::from(&c.key),
                    source: e,
                }
                .into());
            }
        }
        file.flush().await.map_err(io_err("cannot write spool file", path))?;
        drop(file);
        let sha = hex::encode(hasher.finalize());
        let detail = if size != c.size {
            Some(format!(
                "{}{size} bytes, the manifest says {}",
                if size > c.size { "more than " } else { "" },
                c.size
            ))
        } else if sha != c.sha256 {
            Some(format!("SHA-256 {sha}, the manifest says {}", c.sha256))
        } else {
            None
        };
        if let Some(detail) = detail {
            let _ = tokio::fs::remove_file(path).await;
            tracing::error!(key = %c.key, %detail, "chunk failed verification");
            return Err(RestoreError::ChunkCorrupt {
                bucket: bucket.into(),
                key: c.key.clone(),
                detail,
            }
            .into());
        }
        ctx.progress.send_modify(|p| p.chunks_downloaded += 1);
        return Ok(());
    }
}

// ---------------------------------------------------------------------------------------------
// Restore jobs in the daemon

/// Options from a control-socket [`zib_protocol::RestoreStart`] (bucket/prefix overrides are
/// the caller's business: they choose the [`RestoreEngine`]).
pub fn options_from_request(
    req: &zib_protocol::RestoreStart,
) -> Result<RestoreOptions, RestoreError> {
    let bad = |e: zib_core::names::NameError| RestoreError::DatasetChoice(e.to_string());
    let mut o = RestoreOptions::new(DatasetName::new(&req.to).map_err(bad)?);
    o.dataset = Some(DatasetName::new(&req.dataset).map_err(bad)?);
    o.snapshot = req.snapshot.as_deref().map(SnapName::new).transpose().map_err(bad)?;
    o.tier = match req.tier {
        zib_protocol::RestoreTier::Bulk => RestoreTier::Bulk,
        zib_protocol::RestoreTier::Standard => RestoreTier::Standard,
        zib_protocol::RestoreTier::Unknown => {
            return Err(RestoreError::DatasetChoice(
                "unknown restore tier: use bulk or standard".into(),
            ));
        }
    };
    o.days = req.days;
    Ok(o)
}

#[derive(Debug)]
struct JobSlot {
    dataset: String,
    tier: RestoreTier,
    started_at: DateTime<Utc>,
    progress: watch::Receiver<RestoreProgress>,
    cancel: CancellationToken,
    /// None while running; the outcome once the task ended.
    outcome: Arc<std::sync::Mutex<Option<JobOutcome>>>,
}

/// When a job ended, and how: Ok, or (cancelled?, message).
type JobOutcome = (DateTime<Utc>, Result<(), (bool, String)>);

/// The daemon's restore jobs: one per target dataset, whose name is the job id. Each runs
/// [`run`] in its own task with its progress file under `work_dir`, so a daemon restart
/// continues it ([`RestoreJobs::resume_unfinished`]) without asking for any thaw twice.
#[derive(Debug, Clone)]
pub struct RestoreJobs {
    work_dir: PathBuf,
    shutdown: CancellationToken,
    /// Thaw polling of resumed jobs.
    poll: PollBackoff,
    jobs: Arc<std::sync::Mutex<std::collections::BTreeMap<String, JobSlot>>>,
}

use std::sync::Arc;

impl RestoreJobs {
    /// `shutdown` stops every job at its next safe point (their records stay for the restart).
    pub fn new(work_dir: PathBuf, shutdown: CancellationToken) -> Self {
        Self { work_dir, shutdown, poll: PollBackoff::default(), jobs: Default::default() }
    }

    /// How resumed jobs poll thaws (default [`PollBackoff::default`]).
    pub fn with_poll(mut self, poll: PollBackoff) -> Self {
        self.poll = poll;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, JobSlot>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or continues, if its record is unfinished) the restore into `opts.target`.
    /// A restore already running into that target, or an unreadable record, is refused here.
    pub fn start(
        &self,
        engine: RestoreEngine,
        opts: RestoreOptions,
    ) -> Result<String, RestoreError> {
        let id = opts.target.to_string();
        if self
            .lock()
            .get(&id)
            .is_some_and(|j| j.outcome.lock().unwrap_or_else(|p| p.into_inner()).is_none())
        {
            return Err(RestoreError::Locked { target: id, path: self.work_dir.clone() });
        }
        let mut file = RestoreProgressFile::open(&self.work_dir, &opts.target)?;
        let (tx, rx) = watch::channel(RestoreProgress::default());
        let cancel = self.shutdown.child_token();
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let slot = JobSlot {
            dataset: opts.dataset.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            tier: opts.tier,
            started_at: Utc::now(),
            progress: rx,
            cancel: cancel.clone(),
            outcome: outcome.clone(),
        };
        self.lock().insert(id.clone(), slot);
        let job_id = id.clone();
        tokio::spawn(async move {
            let r = run(&engine, &opts, &mut file, &tx, &cancel).await;
            let r = match r {
                Ok(rep) => {
                    tracing::info!(target = %rep.target, snapshot = %rep.snapshot, "restore job done; {}", rep.next_steps.join("; "));
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "restore job stopped");
                    Err((matches!(e, RestoreError::Cancelled { .. }), e.to_string()))
                }
            };
            *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((Utc::now(), r));
        });
        Ok(id)
    }

    /// Continues every unfinished restore recorded in the work dir (call once at daemon
    /// start). `engine_for(bucket, prefix)` builds the S3 side for a record.
    pub async fn resume_unfinished<F, Fut>(
        &self,
        engine_for: F,
    ) -> Vec<Result<String, RestoreError>>
    where
        F: Fn(String, String) -> Fut,
        Fut: std::future::Future<Output = RestoreEngine>,
    {
        let mut out = Vec::new();
        let Ok(mut dir) = tokio::fs::read_dir(&self.work_dir).await else { return out };
        while let Ok(Some(e)) = dir.next_entry().await {
            let n = e.file_name().to_string_lossy().into_owned();
            if !(n.starts_with("restore-") && n.ends_with(".json")) {
                continue;
            }
            let rec: Option<RestoreRecord> =
                std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match rec {
                Some(r) if r.finished_at.is_none() => {
                    let engine = engine_for(r.bucket.clone(), r.plan.prefix.clone()).await;
                    let opts =
                        RestoreOptions { poll: self.poll, ..RestoreOptions::from_record(&r) };
                    out.push(self.start(engine, opts));
                }
                Some(_) => {}
                None => out.push(Err(RestoreError::Progress {
                    path: e.path(),
                    message: "unreadable restore record; not resumed".into(),
                })),
            }
        }
        out
    }

    /// Asks a running job to stop at its next safe point; false if there is no such job.
    pub fn cancel(&self, id: &str) -> bool {
        self.lock().get(id).map(|j| j.cancel.cancel()).is_some()
    }

    /// Jobs still running.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|j| j.outcome.lock().unwrap_or_else(|p| p.into_inner()).is_none())
            .count()
    }

    /// Status of one job or all, in the control protocol's shape.
    pub fn status(&self, id: Option<&str>) -> Vec<zib_protocol::RestoreJobStatus> {
        use zib_protocol::RestoreState as S;
        self.lock()
            .iter()
            .filter(|(k, _)| id.is_none_or(|i| i == k.as_str()))
            .map(|(k, j)| {
                let p = j.progress.borrow().clone();
                let outcome = j.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (state, finished_at, error) = match outcome {
                    None => (
                        match p.phase {
                            RestorePhase::Planning => S::Planning,
                            RestorePhase::Thawing => S::Thawing,
                            RestorePhase::Receiving | RestorePhase::Finishing => S::Receiving,
                            RestorePhase::Done => S::Done,
                        },
                        None,
                        None,
                    ),
                    Some((at, Ok(()))) => (S::Done, Some(at), None),
                    Some((at, Err((true, m)))) => (S::Cancelled, Some(at), Some(m)),
                    Some((at, Err((false, m)))) => (S::Failed, Some(at), Some(m)),
                };
                zib_protocol::RestoreJobStatus {
                    id: k.clone(),
                    dataset: p.dataset.clone().unwrap_or_else(|| j.dataset.clone()),
                    snapshot: p.snapshot.clone(),
                    to: k.clone(),
                    tier: match j.tier {
                        RestoreTier::Bulk => zib_protocol::RestoreTier::Bulk,
                        RestoreTier::Standard => zib_protocol::RestoreTier::Standard,
                    },
                    state,
                    started_at: p.started_at.unwrap_or(j.started_at),
                    objects_total: p.thaw_needed,
                    objects_ready: p.thaw_ready,
                    bytes_received: p.bytes_received,
                    bytes_total: (p.bytes_total > 0).then_some(p.bytes_total),
                    thaw_expected_at: p.thaw_expected_at,
                    finished_at,
                    error,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Output for `zibd restore list|plan`

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

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
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

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5_000_000_000), "4.7 GiB");
    }

    #[test]
    fn a_second_restore_into_the_same_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = DatasetName::new("pool/restored").unwrap();
        let a = RestoreProgressFile::open(dir.path(), &t).unwrap();
        assert!(a.record.is_none());
        let e = RestoreProgressFile::open(dir.path(), &t).unwrap_err().to_string();
        assert!(e.contains("pool/restored"), "{e}");
        drop(a);
        std::fs::write(dir.path().join("restore-pool%2Frestored.json"), b"{garbage").unwrap();
        let e = RestoreProgressFile::open(dir.path(), &t).unwrap_err().to_string();
        assert!(e.contains("remove it to start over"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// `zibd restore list|plan|run`: foreground, needs no config file and no local state.

/// Where the bucket is: flags, else the config's `[target]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BucketArgs {
    /// Bucket holding the backups (default: the config's target.bucket).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Object prefix of the backups (default: the config's target.prefix, else "zib/").
    #[arg(long)]
    pub prefix: Option<String>,
    /// AWS region (default: the config's, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// S3-compatible endpoint URL (default: the config's, else AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RestoreCommand {
    /// List the datasets and backups in the bucket's catalog.
    List {
        #[command(flatten)]
        bucket: BucketArgs,
        /// Only this backed-up dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Print the catalog (every manifest) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show which streams and chunks a restore needs, and what each restore tier costs.
    Plan {
        #[command(flatten)]
        bucket: BucketArgs,
        /// The backed-up dataset (needed when the prefix holds several).
        #[arg(long)]
        dataset: Option<String>,
        /// Restore up to this snapshot (default: the newest).
        #[arg(long)]
        snapshot: Option<String>,
        /// Days the thawed copies stay readable (billed at STANDARD meanwhile).
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Print the plan and quote as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore into a new dataset: thaw, download, verify, zfs receive. Resumable: run the
    /// same command again after an interruption.
    Run {
        #[command(flatten)]
        bucket: BucketArgs,
        /// The dataset to create, e.g. pool/restored (must not exist).
        #[arg(long)]
        to: String,
        /// The backed-up dataset (needed when the prefix holds several).
        #[arg(long)]
        dataset: Option<String>,
        /// Restore up to this snapshot (default: the newest).
        #[arg(long)]
        snapshot: Option<String>,
        /// Thaw tier for archived chunks: bulk (within 48 h, cheapest) or standard (within 12 h).
        #[arg(long, default_value = "bulk")]
        tier: RestoreTier,
        /// Days the thawed copies stay readable.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Mountpoint of the restored dataset (`zfs receive -o mountpoint=...`); it is mounted
        /// at the end when its key is available.
        #[arg(long)]
        mountpoint: Option<String>,
        /// Do not mount the restored dataset.
        #[arg(long)]
        no_mount: bool,
        /// Key of an encrypted dataset, loaded at the end: file:///path or a path.
        #[arg(long)]
        key_location: Option<String>,
        /// Directory for the progress file and spooled chunks (default: <state_dir>/restore).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Chunks downloaded ahead of zfs receive (each spooled to disk).
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// First wait between thaw polls, in seconds (doubles up to --poll-max-secs).
        #[arg(long, default_value_t = 60.0)]
        poll_initial_secs: f64,
        /// Longest wait between thaw polls, in seconds.
        #[arg(long, default_value_t = 900.0)]
        poll_max_secs: f64,
    },
}

/// Resolves the bucket flags against an optional config.
async fn connect(
    args: &BucketArgs,
    cfg: Option<&zib_core::Config>,
) -> anyhow::Result<RestoreEngine> {
    let t = cfg.map(|c| &c.target);
    let bucket = match (&args.bucket, t) {
        (Some(b), _) => b.clone(),
        (None, Some(t)) => t.bucket.0.clone(),
        (None, None) => anyhow::bail!(
            "no bucket: give --bucket (and --prefix, --region/--endpoint), or a config file with --config"
        ),
    };
    let region = args
        .region
        .clone()
        .or_else(|| t.map(|t| t.region.clone()))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint =
        args.endpoint.clone().or_else(|| t.and_then(|t| t.endpoint.as_ref().map(|e| e.0.clone())));
    if let Some(e) = &endpoint {
        zib_core::config::Endpoint::try_from(e.clone()).map_err(anyhow::Error::msg)?;
    }
    let path_style = match (&args.endpoint, cfg) {
        (None, Some(c)) => c.force_path_style(),
        _ => endpoint.is_some(),
    };
    let prefix = args
        .prefix
        .clone()
        .or_else(|| t.map(|t| t.prefix.clone()))
        .unwrap_or_else(|| "zib/".into());
    let attempts = t.map_or(8, |t| t.max_attempts);
    let s3 = S3Store::connect(&region, endpoint.as_deref(), path_style, attempts, &bucket).await;
    Ok(RestoreEngine { zfs: Zfs::default(), s3, prefix })
}

fn parse_opt<T, E: std::fmt::Display>(
    v: Option<&str>,
    f: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<Option<T>> {
    v.map(|s| f(s).map_err(|e| anyhow::anyhow!("{e}"))).transpose()
}

/// `zibd restore ...`. `config` is loaded when it exists or when no --bucket is given.
pub fn main(cmd: RestoreCommand, config: &Path) -> std::process::ExitCode {
    let bucket_args = match &cmd {
        RestoreCommand::List { bucket, .. }
        | RestoreCommand::Plan { bucket, .. }
        | RestoreCommand::Run { bucket, .. } => bucket.clone(),
    };
    let cfg = if bucket_args.bucket.is_none() || config.exists() {
        match zib_core::Config::load(config) {
            Ok(c) => Some(c),
            Err(e) if bucket_args.bucket.is_some() => {
                tracing::warn!("ignoring the config file: {e}");
                None
            }
            Err(e) => {
                eprintln!(
                    "zibd: {e}\nzibd: give --bucket (and --prefix, --region/--endpoint) to restore without a config file"
                );
                return std::process::ExitCode::from(crate::cli::EXIT_CONFIG);
            }
        }
    } else {
        None
    };
    crate::cli::report(crate::cli::runtime().block_on(restore_cmd(cmd, cfg)))
}

async fn restore_cmd(cmd: RestoreCommand, cfg: Option<zib_core::Config>) -> anyhow::Result<()> {
    let pricing = cfg.as_ref().map(|c| c.pricing.clone()).unwrap_or_default();
    match cmd {
        RestoreCommand::List { bucket, dataset, json } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let ds = parse_opt(dataset.as_deref(), DatasetName::new)?;
            let cat = load_catalog(&engine.s3, &engine.prefix, ds.as_ref()).await?;
            if json {
                let datasets: Vec<_> = cat
                    .datasets
                    .iter()
                    .map(|c| serde_json::json!({ "dataset": c.dataset, "manifests": c.manifests }))
                    .collect();
                let v = serde_json::json!({ "bucket": cat.bucket, "prefix": cat.prefix, "datasets": datasets });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_catalog(&cat));
            }
            Ok(())
        }
        RestoreCommand::Plan { bucket, dataset, snapshot, days, json } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let ds = parse_opt(dataset.as_deref(), DatasetName::new)?;
            let snap = parse_opt(snapshot.as_deref(), SnapName::new)?;
            let p = plan(&engine, ds.as_ref(), snap.as_ref()).await?;
            let q = p.quote(&pricing, days);
            if json {
                let v = serde_json::json!({
                    "plan": p,
                    "total_bytes": p.total_bytes(),
                    "total_objects": p.total_objects(),
                    "thaw_bytes": p.thaw_bytes(),
                    "thaw_objects": p.thaw_objects(),
                    "quote": q,
                    "pricing": pricing,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_plan(&p, &q));
            }
            Ok(())
        }
        RestoreCommand::Run {
            bucket,
            to,
            dataset,
            snapshot,
            tier,
            days,
            mountpoint,
            no_mount,
            key_location,
            work_dir,
            parallel,
            poll_initial_secs,
            poll_max_secs,
        } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let mut opts = RestoreOptions::new(DatasetName::new(&to)?);
            opts.dataset = parse_opt(dataset.as_deref(), DatasetName::new)?;
            opts.snapshot = parse_opt(snapshot.as_deref(), SnapName::new)?;
            opts.tier = tier;
            opts.days = days;
            opts.mountpoint = mountpoint;
            opts.no_mount = no_mount;
            opts.key_location = key_location;
            opts.parallel = parallel;
            anyhow::ensure!(
                poll_initial_secs > 0.0 && poll_max_secs >= poll_initial_secs,
                "--poll-initial-secs must be > 0 and at most --poll-max-secs"
            );
            opts.poll = PollBackoff {
                initial: Duration::from_secs_f64(poll_initial_secs),
                max: Duration::from_secs_f64(poll_max_secs),
            };
            let work_dir = work_dir.unwrap_or_else(|| {
                cfg.as_ref()
                    .map_or_else(
                        || zib_core::config::DaemonConfig::default().state_dir,
                        |c| c.daemon.state_dir.clone(),
                    )
                    .join("restore")
            });
            let mut file = RestoreProgressFile::open(&work_dir, &opts.target)?;
            eprintln!(
                "zibd: restore progress is recorded in {} (run the same command again to continue after an interruption)",
                file.path().display()
            );
            let cancel = CancellationToken::new();
            let c2 = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::warn!("interrupted: stopping; run the same command again to continue");
                    c2.cancel();
                }
            });
            let (tx, mut rx) = watch::channel(RestoreProgress::default());
            let printer = tokio::spawn(async move {
                let mut last = String::new();
                while rx.changed().await.is_ok() {
                    let p = rx.borrow_and_update().clone();
                    let line = format!(
                        "{:?}: streams {}/{}, thaw ready {}/{}, chunks received {}/{}{}",
                        p.phase,
                        p.steps_received,
                        p.steps_total,
                        p.thaw_ready,
                        p.thaw_needed,
                        p.chunks_received,
                        p.chunks_total,
                        p.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                    );
                    if line != last {
                        tracing::info!("{line}");
                        last = line;
                    }
                }
            });
            let r = run(&engine, &opts, &mut file, &tx, &cancel).await;
            drop(tx);
            let _ = printer.await;
            let r = r?;
            println!(
                "restored {}@{} into {}: {} streams, {} chunks, {} bytes; {} thaw requests sent, {} polls{}",
                r.dataset,
                r.snapshot,
                r.target,
                r.streams,
                r.chunks,
                r.bytes,
                r.thaw_requests_sent,
                r.polls,
                if r.resumed { " (resumed)" } else { "" }
            );
            if r.encrypted {
                println!(
                    "{} is encrypted; key {}",
                    r.target,
                    if r.key_loaded { "loaded" } else { "NOT loaded" }
                );
            }
            if r.mounted {
                println!("mounted {}", r.target);
            }
            for s in &r.next_steps {
                println!("next: {s}");
            }
            Ok(())
        }
    }
}
