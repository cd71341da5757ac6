//! One backup of one dataset: snapshot, raw send, chunked single-PUT upload, manifest commit.
//!
//! Order of durable steps, each recorded in the locked state file before the next:
//! 1. `pending` with the snapshot name (so a crash adopts that snapshot instead of taking another;
//!    only one created after the plan and newer than the base, by createtxg);
//! 2. the snapshot's GUID once it exists;
//! 3. each chunk after its PUT succeeded, by index: up to `max_parallel_puts` PUTs are in
//!    flight and finish in any order (a crash between PUT and save is met by a HEAD, or a 412
//!    and a HEAD, that must show the same size and SHA-256);
//! 4. the manifest (the commit point), then `last`, then bookmark and pruning.
//!
//! On resume the send is re-run and the bytes of already stored chunks are re-hashed: they are
//! skipped only if they match, because `zfs send -w` need not reproduce a stream byte for byte
//! (openzfs#13778). Otherwise the upload starts again as a new attempt under a new key prefix.

use std::{path::PathBuf, sync::Arc};

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_util::sync::CancellationToken;
use zib_core::{
    ChunkRecord, DatasetConfig, DatasetName, KeyLayout, Manifest, SnapName, SnapRef, StorageClass,
    backup_plan::{self, Base},
    config::{Config, MAX_PARALLEL_PUTS, ResolvedTarget},
    lifecycle::{BaseDecision, OnBrokenChain, RebaselineDecision},
    manifest,
    state::{Committed, Forgotten, Pending},
};

use crate::{
    failpoint,
    outside::Outside,
    s3::{ManifestGetError, PutOutcome, S3Error, S3Store},
    spool::{Spool, SpoolFile},
    state_store::{LockedState, StateStoreError},
    zfs::{SendArgs, SendBase, SendStream, SnapInfo, Zfs, ZfsError},
};

/// The outside systems a backup talks to.
#[derive(Debug, Clone)]
pub struct Engine {
    pub zfs: Zfs,
    pub s3: S3Store,
    pub spool_dir: PathBuf,
}

impl Engine {
    /// The engine a config describes: `outside`'s zfs, the config's bucket (with `outside`'s
    /// credentials), its spool directory. The one place an engine is built from a config.
    pub async fn from_config(cfg: &zib_core::Config, outside: &Outside) -> Self {
        Self {
            zfs: outside.zfs.clone(),
            s3: S3Store::from_config(cfg, outside.s3_credentials.as_ref()).await,
            spool_dir: cfg.daemon.spool_dir.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Starting,
    Snapshotting,
    Uploading,
    Committing,
    Pruning,
}

/// Live progress of a running backup, published on a `watch` channel.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub phase: Phase,
    pub snapshot: Option<String>,
    pub bytes_done: u64,
    pub bytes_estimate: Option<u64>,
    pub chunks_done: u64,
    pub chunk_size: u64,
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    /// Bytes and objects PUT by this run (chunks and the manifest), for the metrics' counters.
    pub bytes_uploaded: u64,
    pub puts: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BackupOptions {
    /// The user asked for a new chain: abandon any unfinished backup (full or incremental,
    /// e.g. one that cannot go on) and send a full stream even if an incremental is possible.
    pub force_full: bool,
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub seq: u64,
    pub snapshot: SnapName,
    pub full: bool,
    pub stream_size: u64,
    pub chunks_uploaded: u64,
    /// Chunks found stored already (resumed after a crash).
    pub chunks_reused: u64,
    pub attempt: u32,
    pub manifest_key: String,
    pub pruned: Vec<String>,
    /// Something the user should know about this backup (shown in status): e.g. that it
    /// started a new chain because the base of the incremental was gone.
    pub note: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Committed(BackupReport),
    /// Idle: fewer than `min_change` bytes written since the base; no snapshot, no upload.
    Skipped(Skipped),
}

/// A run skipped as idle (issue 12).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The base the bytes were counted from (zib's last backed-up snapshot), `ds@snap`.
    pub base: String,
    pub written: u64,
    pub min_change: u64,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipped (no change): {} bytes written since {}, less than min_change ({} bytes); no snapshot taken, nothing uploaded",
            self.written, self.base, self.min_change
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("spool file {path}: {source}")]
    Spool { path: PathBuf, source: std::io::Error },
    #[error("spool directory {path}: {source}")]
    SpoolDir { path: PathBuf, source: std::io::Error },
    #[error("backup of {dataset} cancelled; it resumes from the last stored chunk on the next run")]
    Cancelled { dataset: String },
    #[error(
        "the base of the next incremental, {dataset}@{base} (guid {guid}), {why}, so the chain cannot continue; start a new chain with a full backup: `zibctl trigger --full {dataset}` while zibd runs, else `zibd backup --full {dataset}` (on_broken_chain = \"full\" does this by itself)"
    )]
    BaseMissing { dataset: String, base: String, guid: String, why: String },
    #[error(
        "a snapshot named {snapshot} exists but was not taken for this backup ({why}); zib does not adopt it"
    )]
    ForeignSnapshot { snapshot: String, why: String },
    #[error(
        "a restore into {dataset} is unfinished ({}): zib does not snapshot a dataset that is being restored; the backups of {dataset} go on once that restore has finished (run it again to continue it, or remove that file if the restore is abandoned)",
        record.display()
    )]
    RestoreInProgress { dataset: String, record: PathBuf },
    #[error("zfs send of {0} produced no data")]
    EmptyStream(String),
    #[error(
        "zfs send of {dataset} gave different bytes twice within one run (at chunk {index}); nothing was committed"
    )]
    Unstable { dataset: String, index: u64 },
    #[error("the catalog in the bucket is unreadable: {0}")]
    Catalog(String),
    #[error(
        "the stream of {dataset} is {seen}, more than a backup in chunks of {chunk_size} bytes can hold ({max} bytes: at most {} chunks, so that its manifest stays readable); {advice}. The unfinished backup was abandoned: the next run starts afresh with the configured chunk_size",
        manifest::MAX_CHUNKS
    )]
    TooLarge { dataset: String, seen: String, chunk_size: u64, max: u64, advice: String },
}

impl From<ManifestGetError> for BackupError {
    fn from(e: ManifestGetError) -> Self {
        match e {
            ManifestGetError::S3(e) => Self::S3(e),
            ManifestGetError::Invalid(e) => Self::Catalog(e.to_string()),
        }
    }
}

enum Spooled {
    /// A chunk stored by an earlier run whose bytes matched again.
    Reused {
        size: u64,
    },
    New(NewChunk),
}

/// A chunk spooled for its PUT. It holds its spool permit until its PUT is done.
struct NewChunk {
    index: u64,
    size: u64,
    sha256: String,
    class: StorageClass,
    /// Removed on drop, before the permit goes: at most `max_spooled_chunks` files exist.
    file: SpoolFile,
    _permit: OwnedSemaphorePermit,
}

/// Why a streaming attempt ended without error.
enum Streamed {
    Done {
        size: u64,
        sha256: String,
    },
    /// What is stored under this attempt's keys does not match the stream: start a new attempt.
    Diverged {
        index: u64,
        why: Divergence,
    },
}

/// Why an attempt cannot go on under its key prefix.
#[derive(Debug, Clone)]
enum Divergence {
    /// The re-run send does not reproduce the chunks recorded as stored (openzfs#13778).
    Resent,
    /// An unrecorded chunk key holds an object that differs from this chunk, or that cannot be
    /// compared (no SHA-256: a server kept the body of a PUT whose client went away).
    Stored(String),
}

/// What [`Backup::ensure_bookmark`] found.
enum Bookmarked {
    Present,
    Created,
    /// A bookmark of the name exists with this other GUID.
    WrongGuid(String),
    /// Neither the bookmark nor the snapshot (with the GUID) exists.
    NoSnapshot,
}

/// What the uploader did before it stopped.
struct Uploaded {
    uploaded: u64,
    reused: u64,
    /// It stopped at this chunk, whose key holds something else.
    conflict: Option<(u64, String)>,
}

/// Runs one backup of `ds` while holding its state lock. Failures are recorded in the state's
/// stats (best effort) before they are returned.
pub async fn run(
    engine: &Engine,
    cfg: &Config,
    ds: &DatasetConfig,
    locked: &mut LockedState,
    opts: BackupOptions,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<Outcome, BackupError> {
    // A receive in progress (by the daemon or by `zibd restore run`): snapshotting the target
    // now would back up a half-restored dataset.
    if let Some(record) =
        crate::restore::unfinished_restore(&cfg.daemon.state_dir.join("restore"), &ds.name)
    {
        return Err(BackupError::RestoreInProgress { dataset: ds.name.to_string(), record });
    }
    let res = Backup {
        engine,
        ds,
        target: cfg.resolve(ds),
        locked,
        progress,
        cancel,
        resumed: false,
        note: None,
    }
    .run(opts)
    .await;
    if let Err(e) = &res {
        if let Some(p) = &locked.state.pending {
            release_send_hold(&engine.zfs, &ds.name, &p.to).await;
        }
        if let BackupError::TooLarge { .. } = e {
            // It can never commit with this chunk size; the next run plans with the config's.
            locked.state.pending = None;
        }
        locked.state.stats.last_error = Some(e.to_string());
        locked.state.stats.last_error_at = Some(Utc::now());
        if let Err(save) = locked.save_async().await {
            tracing::error!(error = %save, "could not record the failure in the state file");
        }
    }
    res
}

struct Backup<'a> {
    engine: &'a Engine,
    ds: &'a DatasetConfig,
    target: ResolvedTarget,
    locked: &'a mut LockedState,
    progress: &'a watch::Sender<Progress>,
    cancel: &'a CancellationToken,
    /// This run continues a backup an earlier run started.
    resumed: bool,
    /// For [`BackupReport::note`].
    note: Option<String>,
}

impl Backup<'_> {
    fn layout(&self) -> KeyLayout {
        KeyLayout::new(&self.target.prefix, &self.ds.name)
    }

    fn spool(&self) -> Spool {
        Spool::new(&self.engine.spool_dir, &self.ds.name)
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }

    async fn save(&self) -> Result<(), BackupError> {
        Ok(self.locked.save_async().await?)
    }

    async fn run(mut self, opts: BackupOptions) -> Result<Outcome, BackupError> {
        let name = self.ds.name.clone();
        self.set_progress(|p| {
            *p = Progress {
                started_at: Some(Utc::now()),
                chunk_size: self.target.chunk_size,
                ..Default::default()
            }
        });
        self.spool().clean().await;
        self.retarget().await?;
        self.repair_bookmark().await;

        // A pending backup whose snapshot vanished cannot be resumed: abandon it (its chunks have
        // no manifest, so they are invisible to restore) and start afresh.
        if let Some(p) = &self.locked.state.pending
            && let Some(guid) = &p.to_guid
        {
            match self.engine.zfs.snapshot_info(&name, &p.to).await? {
                Some(info) if &info.guid == guid => {}
                _ => {
                    tracing::warn!(dataset = %name, snapshot = %p.to, "the snapshot of the interrupted backup is gone; starting a new backup");
                    self.locked.state.pending = None;
                    self.save().await?;
                }
            }
        }
        // An unfinished incremental whose base is gone since it was planned cannot be sent:
        // with on_broken_chain = "full" it is abandoned and planned again (as a new chain).
        if self.ds.on_broken_chain == OnBrokenChain::Full
            && let Some(p) = self.locked.state.pending.clone()
            && let Some(base) = &p.from
            && let BaseDecision::NewChain(why) =
                self.base_decision(base, OnBrokenChain::Full).await?
        {
            tracing::warn!(dataset = %name, seq = p.seq, snapshot = %p.to, "the base of the unfinished incremental, {}, {why}: abandoning it to start a new chain (on_broken_chain = \"full\")", name.snapshot(&base.name));
            self.locked.state.pending = None;
            self.save().await?;
        }
        // `--full` replaces an unfinished backup: an incremental whose base is gone, or any
        // backup that cannot commit. Its chunks have no manifest and stay invisible to restore.
        if opts.force_full
            && let Some(p) = self.locked.state.pending.take()
        {
            let kind = if p.from.is_some() { "incremental" } else { "full" };
            tracing::warn!(dataset = %name, seq = p.seq, snapshot = %p.to, "abandoning the unfinished {kind} backup: a full backup was asked for");
            self.save().await?;
        }
        self.resumed = self.locked.state.pending.is_some();
        self.release_stale_holds().await;
        if !self.resumed {
            if let Some(skipped) = self.plan_new(opts).await? {
                tracing::info!(dataset = %name, "{skipped}");
                // Nothing to back up is not a failure: an earlier run's error no longer holds
                // (else the next daemon would show the dataset as failed again).
                let stats = &mut self.locked.state.stats;
                if stats.last_error.is_some() || stats.last_error_at.is_some() {
                    stats.last_error = None;
                    stats.last_error_at = None;
                    self.save().await?;
                }
                return Ok(Outcome::Skipped(skipped));
            }
        } else if let Some(m) = self.already_committed().await? {
            return self.finish_commit(m, true, 0, 0).await.map(Outcome::Committed);
        } else {
            self.check_recorded_chunks().await?;
        }

        match self.ensure_snapshot().await {
            // The pending name is taken by a snapshot this backup did not make (a clock that
            // went back, or a hand-made one): nothing was uploaded yet, so plan it again under
            // a name no snapshot has.
            Err(BackupError::ForeignSnapshot { snapshot, why }) => {
                tracing::warn!(dataset = %name, %snapshot, "a snapshot under the name of this backup exists but was not taken for it ({why}); not adopting it: planning the backup again under a new name");
                self.locked.state.pending = None;
                self.save().await?;
                self.resumed = false;
                self.plan_new(opts).await?;
                self.ensure_snapshot().await?;
            }
            r => r?,
        }
        // Nothing may destroy the snapshot mid-stream; released after the commit or a failure.
        let to = self.locked.state.pending.as_ref().expect("pending").to.clone();
        self.engine.zfs.hold_for_send(&name, &to).await?;
        let mut restarted = false;
        loop {
            let args = self.send_args().await?;
            if self.progress.borrow().bytes_estimate.is_none() {
                match self.engine.zfs.send_estimate(&args).await {
                    Ok(n) => {
                        self.check_stream_size(n)?;
                        self.set_progress(|p| p.bytes_estimate = Some(n));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not estimate the stream size"),
                }
            }
            let (streamed, uploaded, reused) = self.stream(&args).await?;
            match streamed {
                Streamed::Done { size, sha256 } => {
                    let m = self.manifest(&args, size, sha256).await?;
                    return self
                        .finish_commit(m, false, uploaded, reused)
                        .await
                        .map(Outcome::Committed);
                }
                Streamed::Diverged { index, why } if !restarted => {
                    restarted = true;
                    let p = self.locked.state.pending.as_mut().expect("pending");
                    match why {
                        Divergence::Resent => tracing::warn!(
                            dataset = %name, chunk = index, old_attempt = p.attempt,
                            "zfs send did not reproduce the bytes already stored (openzfs#13778); uploading the stream again as a new attempt under a new key prefix"
                        ),
                        Divergence::Stored(detail) => tracing::warn!(
                            dataset = %name, chunk = index, old_attempt = p.attempt,
                            "an earlier run left an object this chunk cannot be matched against ({detail}); uploading the stream again as a new attempt under a new key prefix"
                        ),
                    }
                    p.new_attempt();
                    self.save().await?;
                    self.set_progress(|pr| {
                        pr.bytes_done = 0;
                        pr.chunks_done = 0;
                    });
                }
                Streamed::Diverged { index, .. } => {
                    return Err(BackupError::Unstable { dataset: name.to_string(), index });
                }
            }
        }
    }

    /// Refuses, before sending, a stream that zfs estimates at more than its chunks can hold.
    fn check_stream_size(&self, estimate: u64) -> Result<(), BackupError> {
        let chunk_size = self.locked.state.pending.as_ref().expect("pending").chunk_size;
        let max = manifest::max_stream_size(chunk_size);
        if estimate > max {
            return Err(BackupError::TooLarge {
                dataset: self.ds.name.to_string(),
                seen: format!("about {estimate} bytes (the estimate of zfs send)"),
                chunk_size,
                max,
                advice: format!(
                    "raise chunk_size for this dataset to at least {} bytes",
                    estimate.div_ceil(manifest::MAX_CHUNKS)
                ),
            });
        }
        Ok(())
    }

    /// Ties the state to the destination the config names now: a base or an unfinished upload
    /// recorded for another bucket, prefix or endpoint is forgotten, with a log line.
    async fn retarget(&mut self) -> Result<(), BackupError> {
        let here = self.target.destination();
        let before = self.locked.state.destination.clone();
        let forgotten = self.locked.state.retarget(&here);
        for f in &forgotten {
            match f {
                Forgotten::Pending { at, pending } => tracing::warn!(
                    dataset = %self.ds.name, seq = pending.seq, snapshot = %pending.to,
                    "abandoning the unfinished backup: it was being uploaded to {at}, not to {here}, which the config names now (its chunks there have no manifest)"
                ),
                Forgotten::Base { at, last } => tracing::warn!(
                    dataset = %self.ds.name, seq = last.seq,
                    "the base of the next incremental, backup #{} ({}), is in {at}, not in {here}, which the config names now: the next backup continues from what {here} holds (a full if nothing)",
                    last.seq, last.snapshot.name
                ),
            }
        }
        if !forgotten.is_empty() || before != self.locked.state.destination {
            self.save().await?;
        }
        Ok(())
    }

    /// On resume, the chunks recorded as stored must still be where the config points (a state
    /// file from before destinations were recorded, or a bucket emptied since): one listing of
    /// the attempt's prefix. If any is missing, the upload starts again as a new attempt.
    async fn check_recorded_chunks(&mut self) -> Result<(), BackupError> {
        let p = self.locked.state.pending.as_ref().expect("pending");
        if p.recorded_end() == 0 {
            return Ok(());
        }
        let prefix = self.layout().attempt_prefix(p.seq, &p.to, p.attempt);
        let mut listing = self.engine.s3.list(&prefix).await?;
        // A finished legacy upload starts with the other tool's chunks, under its keys.
        if let Some(l) = &p.legacy {
            listing.extend(self.engine.s3.list(&format!("{}/", l.stream_key)).await?);
        }
        let missing =
            p.all_recorded().find(|c| !listing.iter().any(|o| o.key == c.key && o.size == c.size));
        if let Some(c) = missing {
            let here = self.target.destination();
            tracing::warn!(
                dataset = %self.ds.name, old_attempt = p.attempt,
                "chunk {} recorded as stored is not in {here}; uploading the stream again as a new attempt under a new key prefix",
                c.key
            );
            let p = self.locked.state.pending.as_mut().expect("pending");
            p.new_attempt();
            p.destination = Some(here);
            self.save().await?;
        }
        Ok(())
    }

    /// Decides the next backup (full or incremental from the newest committed one, found in the
    /// state or, when the state is new or behind, in the bucket's catalog) and records it; or
    /// skips an idle incremental (nothing recorded, no snapshot).
    async fn plan_new(&mut self, opts: BackupOptions) -> Result<Option<Skipped>, BackupError> {
        let layout = self.layout();
        let here = self.target.destination();
        let listing = self.engine.s3.list_root(layout.root()).await?;
        let listed: Vec<(u64, &str)> = listing
            .iter()
            .filter_map(|o| layout.parse_manifest_key(&o.key).map(|(seq, _)| (seq, o.key.as_str())))
            .collect();
        // A base from the catalog is a manifest that reads as zib's at its key: an object
        // there that does not (junk, a copy, another backup's chunks named) is passed over.
        let mut bases = listed.clone();
        let base = loop {
            let base =
                backup_plan::choose_base(self.locked.state.last.as_ref(), bases.iter().copied());
            let Base::Catalog { seq, key } = base else { break (base, None) };
            match self.engine.s3.get_manifest(key).await {
                Ok(m) => break (base, Some(m)),
                Err(ManifestGetError::Invalid(e)) => {
                    tracing::warn!(dataset = %self.ds.name, seq, %key, "not a manifest of zib's, passed over: {e}");
                    bases.retain(|(_, k)| *k != key);
                }
                Err(e) => return Err(e.into()),
            }
        };
        match base {
            (Base::Catalog { seq, key }, Some(m)) => {
                tracing::info!(dataset = %self.ds.name, seq, "local state is behind the catalog; continuing from {key}");
                self.locked.state.last = Some(Committed {
                    seq,
                    snapshot: m.to.clone(),
                    manifest_key: key.to_owned(),
                    committed_at: m.committed_at,
                    stream_size: m.stream_size,
                    chain_full_seq: m.is_full().then_some(seq),
                });
                self.locked.state.destination = Some(here.clone());
            }
            (Base::NotListed, _) => {
                let last = self.locked.state.last.take().expect("a local base");
                self.locked.state.destination = None;
                tracing::warn!(
                    dataset = %self.ds.name, seq = last.seq,
                    "the base of the next incremental, {}, is not in {here} (bucket or prefix changed, or emptied): starting a new chain with a full backup",
                    last.manifest_key
                );
            }
            _ => {}
        }
        let seq = backup_plan::next_seq(self.locked.state.last.as_ref(), listed.iter().copied());
        let last_key = self.locked.state.last.as_ref().map(|c| c.manifest_key.as_str());
        let policy = self.ds.rebaseline_policy();
        let (decision, chain) = crate::lifecycle::decide_rebaseline(
            &self.engine.s3,
            &layout,
            &listing,
            last_key,
            self.locked.state.chain.as_ref(),
            &policy,
            crate::now::utc(),
            opts.force_full,
        )
        .await
        .map_err(|e| match e {
            crate::lifecycle::LifecycleError::S3(e) => BackupError::S3(e),
            crate::lifecycle::LifecycleError::Catalog(m) => BackupError::Catalog(m),
        })?;
        self.locked.state.chain = chain; // saved with the plan, or with the skip
        // A re-baseline a rule calls for waits out an idle day: its full would hold nothing
        // new, and the chain does not grow meanwhile.
        if let (Some(c), RebaselineDecision::Full(reason)) = (&self.locked.state.last, &decision)
            && reason.waits_for_change()
            && let Some(skipped) = self.idle_since(&c.snapshot.clone(), opts).await
        {
            self.save().await?;
            return Ok(Some(skipped));
        }
        let from = match (&self.locked.state.last, &decision) {
            (Some(c), RebaselineDecision::Incremental) => Some(c.snapshot.clone()),
            (_, RebaselineDecision::Full(reason)) => {
                tracing::info!(dataset = %self.ds.name, %reason, "starting a new chain with a full backup");
                None
            }
            (None, RebaselineDecision::Incremental) => None,
        };
        let from = match from {
            Some(base) => match self.base_decision(&base, self.ds.on_broken_chain).await? {
                BaseDecision::Snapshot | BaseDecision::Bookmark => Some(base),
                BaseDecision::NewChain(why) => {
                    let note = format!(
                        "the base of the next incremental, {}, {why}: started a new chain with a full backup (on_broken_chain = \"full\")",
                        self.ds.name.snapshot(&base.name)
                    );
                    tracing::warn!(dataset = %self.ds.name, "{note}");
                    self.note = Some(note);
                    None
                }
                BaseDecision::Fail(why) => return Err(self.base_missing(&base, &why)),
            },
            None => None,
        };
        if let Some(base) = &from
            && let Some(skipped) = self.idle_since(base, opts).await
        {
            self.save().await?; // what the catalog taught (Base::Catalog) is kept
            return Ok(Some(skipped));
        }
        // Snapshot names have one-second resolution: never reuse the base's name, nor that of
        // any snapshot there is (two backups within one second, or a clock that went back,
        // would otherwise adopt a snapshot this backup did not take).
        let taken: Vec<String> = match self.engine.zfs.list(&self.ds.name, "snapshot").await {
            Ok(s) => s.into_iter().map(|s| s.name).collect(),
            Err(_) => Vec::new(), // the snapshot itself will say what is wrong
        };
        let base = self.locked.state.last.as_ref().map(|c| &c.snapshot.name);
        let (now, to) = loop {
            let now = crate::now::utc();
            match backup_plan::next_snapshot_name(&self.ds.snapshot_prefix, now, base, &taken) {
                Some(to) => break (now, to),
                None => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        let pending = Pending {
            seq,
            from,
            to,
            to_guid: None,
            attempt: 0,
            chunk_size: self.target.chunk_size,
            storage_class: self.target.storage_class,
            started_at: now,
            chunks: Vec::new(),
            stored_ahead: Default::default(),
            destination: Some(here),
            legacy: None,
        };
        tracing::info!(dataset = %self.ds.name, seq = pending.seq, snapshot = %pending.to, full = pending.from.is_none(), "starting backup");
        self.locked.state.pending = Some(pending);
        self.save().await?;
        failpoint::hit("after-pending");
        Ok(None)
    }

    /// The run is idle if fewer than `min_change` bytes were written since `base`, zib's last
    /// backed-up snapshot. `written@<base>` counts from that snapshot, not from the dataset's
    /// newest one (which may be someone else's, taken after zib's): changes made before a
    /// foreign snapshot still count. Unknown (the base snapshot is gone, or zfs failed): not idle.
    async fn idle_since(&self, base: &SnapRef, opts: BackupOptions) -> Option<Skipped> {
        let min_change = self.ds.min_change.0;
        if opts.force_full || min_change == 0 {
            return None;
        }
        let (zfs, name) = (&self.engine.zfs, &self.ds.name);
        let written = match zfs.snapshot_info(name, &base.name).await {
            Ok(Some(s)) if s.guid == base.guid => match zfs.written_since(name, &base.name).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read what was written since the last backup; backing up");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not find the last backed-up snapshot; backing up");
                None
            }
        };
        backup_plan::skip_idle(min_change, written, opts.force_full).then(|| Skipped {
            base: name.snapshot(&base.name),
            written: written.unwrap_or(0),
            min_change,
        })
    }

    /// A crash after the manifest PUT but before the state save leaves a committed backup that
    /// the state still calls pending: that manifest, if it is this backup's.
    async fn already_committed(&self) -> Result<Option<Manifest>, BackupError> {
        let p = self.locked.state.pending.as_ref().expect("pending");
        let key = self.layout().manifest_key(p.seq, &p.to);
        match self.engine.s3.get_manifest(&key).await {
            Ok(m) => Ok((Some(&m.to.guid) == p.to_guid.as_ref()).then_some(m)),
            Err(ManifestGetError::S3(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the pending snapshot, or adopts it if an earlier run already took it.
    async fn ensure_snapshot(&mut self) -> Result<(), BackupError> {
        let name = self.ds.name.clone();
        let p = self.locked.state.pending.as_ref().expect("pending");
        let to = p.to.clone();
        self.set_progress(|pr| {
            pr.phase = Phase::Snapshotting;
            pr.snapshot = Some(name.snapshot(&to));
            pr.attempt = p.attempt;
        });
        if p.to_guid.is_some() {
            return Ok(());
        }
        let info = match self.engine.zfs.snapshot_info(&name, &to).await? {
            Some(info) => {
                if let Some(why) = self.not_taken_by_this_backup(&info).await? {
                    return Err(BackupError::ForeignSnapshot { snapshot: name.snapshot(&to), why });
                }
                tracing::info!(snapshot = %name.snapshot(&to), "adopting the snapshot an interrupted run took");
                info
            }
            None => {
                self.engine.zfs.snapshot(&name, &to).await?;
                failpoint::hit("after-snapshot");
                self.engine.zfs.snapshot_info(&name, &to).await?.ok_or_else(|| {
                    BackupError::Zfs(ZfsError::Parse {
                        cmd: format!("zfs list {}", name.snapshot(&to)),
                        output: "snapshot missing right after creation".into(),
                    })
                })?
            }
        };
        self.locked.state.pending.as_mut().expect("pending").to_guid = Some(info.guid);
        self.save().await
    }

    /// Why a snapshot found under the pending name (with no GUID recorded yet) cannot be the one
    /// an interrupted run took: it is older than this backup's plan, or not newer (createtxg)
    /// than the base, i.e. the snapshot the chain stands on (for a full, the last backup's).
    async fn not_taken_by_this_backup(
        &self,
        info: &SnapInfo,
    ) -> Result<Option<String>, BackupError> {
        let p = self.locked.state.pending.as_ref().expect("pending");
        if info.creation < p.started_at.timestamp() {
            let created = DateTime::from_timestamp(info.creation, 0).unwrap_or_default();
            return Ok(Some(format!(
                "created {created}, before this backup was planned at {}",
                p.started_at
            )));
        }
        let base = p.from.as_ref().or(self.locked.state.last.as_ref().map(|c| &c.snapshot));
        let Some(base) = base else { return Ok(None) };
        let zfs = &self.engine.zfs;
        let name = &self.ds.name;
        let base_txg = match zfs.snapshot_info(name, &base.name).await? {
            Some(s) if s.guid == base.guid => Some(s.createtxg),
            _ => zfs
                .bookmark_info(name, &base.name)
                .await?
                .filter(|b| b.guid == base.guid)
                .map(|b| b.createtxg),
        };
        Ok(base_txg.filter(|&t| info.createtxg <= t).map(|t| {
            format!(
                "its createtxg {} is not newer than that of the base {}, {t}",
                info.createtxg,
                name.snapshot(&base.name)
            )
        }))
    }

    /// What to send: `to`, from the base's snapshot if it still exists with the recorded GUID,
    /// else from its bookmark.
    async fn send_args(&self) -> Result<SendArgs, BackupError> {
        let name = &self.ds.name;
        let p = self.locked.state.pending.as_ref().expect("pending");
        let mut from = None;
        if let Some(base) = &p.from {
            // Planned as an incremental: whatever the policy, this stream is one (a base gone
            // since the run started fails it; the next run plans again).
            from = Some(match self.base_decision(base, OnBrokenChain::Fail).await? {
                BaseDecision::Snapshot => SendBase::Snapshot(base.name.clone()),
                BaseDecision::Bookmark => SendBase::Bookmark(base.name.clone()),
                BaseDecision::NewChain(why) | BaseDecision::Fail(why) => {
                    return Err(self.base_missing(base, &why));
                }
            });
        }
        Ok(SendArgs { dataset: name.clone(), to: p.to.clone(), from })
    }

    /// Whether `base` can still be sent from (its snapshot, else its bookmark, by GUID), and
    /// what `policy` says if not (zib-core decides).
    async fn base_decision(
        &self,
        base: &SnapRef,
        policy: OnBrokenChain,
    ) -> Result<BaseDecision, BackupError> {
        let (zfs, name) = (&self.engine.zfs, &self.ds.name);
        let snap = zfs.snapshot_info(name, &base.name).await?;
        let book = zfs.bookmark_info(name, &base.name).await?;
        Ok(zib_core::lifecycle::broken_chain::decide_base(
            &base.guid,
            snap.as_ref().map(|s| s.guid.as_str()),
            book.as_ref().map(|b| b.guid.as_str()),
            policy,
        ))
    }

    fn base_missing(&self, base: &SnapRef, why: &zib_core::lifecycle::BrokenBase) -> BackupError {
        BackupError::BaseMissing {
            dataset: self.ds.name.to_string(),
            base: base.name.to_string(),
            guid: base.guid.clone(),
            why: why.to_string(),
        }
    }

    /// One pass over the send stream: re-hash stored chunks, spool and PUT the rest.
    async fn stream(&mut self, args: &SendArgs) -> Result<(Streamed, u64, u64), BackupError> {
        let send = self.engine.zfs.send(args)?;
        let p = self.locked.state.pending.clone().expect("pending");
        self.set_progress(|pr| pr.phase = Phase::Uploading);
        let permits = Arc::new(Semaphore::new(self.target.max_spooled_chunks));
        let (tx, rx) = mpsc::unbounded_channel();
        let spool = SpoolTarget {
            spool: self.spool(),
            run: format!("{}.a{}", p.seq, p.attempt),
            dataset: self.ds.name.to_string(),
        };
        let cancel = self.cancel;
        // Set when the reader failed: the uploader finishes the PUTs in flight, records them,
        // and takes no further chunk. Dropping a PUT half-way can leave an object the next run
        // cannot verify (some servers keep the body without its checksum).
        let stop = CancellationToken::new();
        let reader = read_stream(send, &p, spool, permits, tx, cancel);
        let uploader = self.upload(rx, &p, &stop);
        tokio::pin!(reader, uploader);
        let (streamed, done) = tokio::select! {
            r = &mut reader => match r {
                Ok(streamed) => (streamed, uploader.await?),
                Err(e) => {
                    stop.cancel();
                    if let Err(up) = uploader.await {
                        tracing::warn!(error = %up, "the upload stopped too");
                    }
                    return Err(e);
                }
            },
            // The uploader ends first on an error or a conflict (dropping the reader stops
            // `zfs send`), or when the reader is done and has closed the channel.
            u = &mut uploader => {
                let done = u?;
                if done.conflict.is_some() {
                    (Streamed::Done { size: 0, sha256: String::new() }, done)
                } else {
                    (reader.await?, done)
                }
            }
        };
        let streamed = match done.conflict {
            Some((index, detail)) => Streamed::Diverged { index, why: Divergence::Stored(detail) },
            None => streamed,
        };
        Ok((streamed, done.uploaded, done.reused))
    }

    /// Takes spooled chunks from the reader and PUTs up to `max_parallel_puts` of them at once,
    /// recording each by its index as soon as its PUT succeeded (they finish in any order; the
    /// manifest lists them in stream order from the state). When one PUT fails, or the reader
    /// stops, no further chunk is taken and the PUTs in flight finish and are recorded before
    /// the error is returned: dropping a PUT half-way can leave an object the next run cannot
    /// verify (some servers keep the body without its checksum).
    async fn upload(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Spooled>,
        p: &Pending,
        stop: &CancellationToken,
    ) -> Result<Uploaded, BackupError> {
        let layout = self.layout();
        let parallel = self.target.max_parallel_puts.max(1);
        // After a crash with PUTs in flight, any of the chunks after the last recorded one may
        // be stored already: a HEAD first avoids sending them again (a 412 and a HEAD would
        // catch them too, after sending the body).
        let probe_end = p.recorded_end() + MAX_PARALLEL_PUTS as u64;
        let put = |s3: S3Store, key: String, chunk: NewChunk, probe: bool| async move {
            let r = if probe {
                let path = chunk.file.path();
                s3.put_chunk_probing(&key, path, chunk.size, &chunk.sha256, chunk.class).await
            } else {
                s3.put_chunk(&key, chunk.file.path(), chunk.size, &chunk.sha256, chunk.class).await
            };
            (key, chunk, r)
        };
        let mut in_flight = FuturesUnordered::new();
        let (mut uploaded, mut reused) = (0, 0);
        let mut taking = true;
        let mut failure: Option<BackupError> = None;
        let mut conflict = None;
        while taking || !in_flight.is_empty() {
            tokio::select! {
                biased;
                // A pause or SIGTERM must not wait for the next chunk to be read (up to 5 GB).
                () = self.cancel.cancelled() => return Err(BackupError::Cancelled { dataset: self.ds.name.to_string() }),
                Some((key, chunk, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    let NewChunk { index, size, sha256, file, .. } = chunk;
                    drop(file);
                    match outcome {
                        Ok(o) => {
                            if o == PutOutcome::AlreadyPresent {
                                tracing::info!(%key, "chunk was already stored with the same SHA-256 (a PUT before a crash)");
                            }
                            failpoint::hit("after-put");
                            uploaded += 1;
                            self.record_chunk(index, ChunkRecord::new(key, size, sha256)).await?;
                            failpoint::hit("after-save");
                            self.set_progress(|pr| {
                                pr.bytes_done += size;
                                pr.chunks_done += 1;
                                pr.bytes_uploaded += size;
                                pr.puts += 1;
                            });
                        }
                        // Not recorded, so not ours to trust: go on under a new key prefix.
                        Err(e @ S3Error::Conflict { .. }) => {
                            taking = false;
                            conflict.get_or_insert((index, e.to_string()));
                        }
                        Err(e) => {
                            taking = false;
                            failure.get_or_insert(e.into());
                        }
                    }
                }
                () = stop.cancelled(), if taking => taking = false,
                item = rx.recv(), if taking && in_flight.len() < parallel => match item {
                    None => taking = false,
                    Some(Spooled::Reused { size }) => {
                        reused += 1;
                        self.set_progress(|pr| {
                            pr.bytes_done += size;
                            pr.chunks_done += 1;
                        });
                    }
                    Some(Spooled::New(chunk)) => {
                        let key = layout.chunk_key(p.seq, &p.to, p.attempt, chunk.index);
                        let probe = self.resumed && chunk.index < probe_end;
                        in_flight.push(put(self.engine.s3.clone(), key, chunk, probe));
                    }
                },
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Uploaded { uploaded, reused, conflict })
    }
}

impl Backup<'_> {
    async fn record_chunk(&mut self, index: u64, c: ChunkRecord) -> Result<(), BackupError> {
        Ok(self.locked.record_chunk(index, c).await?)
    }

    async fn manifest(
        &self,
        args: &SendArgs,
        size: u64,
        sha256: String,
    ) -> Result<Manifest, BackupError> {
        let p = self.locked.state.pending.as_ref().expect("pending");
        if let Some(i) = (0..p.recorded_end()).find(|&i| p.recorded(i).is_none()) {
            // Every chunk was uploaded or found stored; a gap would be a manifest that lies.
            return Err(BackupError::Catalog(format!(
                "refusing to commit: chunk {i} of the stream is not recorded as stored"
            )));
        }
        let info = self.engine.zfs.snapshot_info(&self.ds.name, &p.to).await?;
        let created =
            info.and_then(|i| DateTime::from_timestamp(i.creation, 0)).unwrap_or(p.started_at);
        let m = Manifest {
            format: manifest::FORMAT.into(),
            version: manifest::VERSION,
            dataset: self.ds.name.clone(),
            seq: p.seq,
            from: p.from.clone(),
            to: SnapRef { name: p.to.clone(), guid: p.to_guid.clone().expect("snapshot taken") },
            snapshot_created: created,
            committed_at: crate::now::utc(),
            send_args: args.argv(),
            attempt: p.attempt,
            storage_class: p.storage_class,
            chunk_size: p.chunk_size,
            stream_size: size,
            stream_sha256: sha256,
            chunks: p.chunks.clone(),
            zib_version: env!("CARGO_PKG_VERSION").into(),
            legacy: None,
        };
        // Finishing another tool's upload: its chunks have an MD5, no SHA-256 (manifest v2).
        let m = match p.legacy.clone().filter(|_| p.chunks.iter().any(|c| c.md5.is_some())) {
            Some(origin) => Manifest {
                version: manifest::VERSION_LEGACY,
                stream_sha256: String::new(),
                legacy: Some(origin),
                ..m
            },
            None => m,
        };
        Ok(m)
    }

    /// Writes the manifest (the commit point), then records the commit locally, bookmarks the
    /// new snapshot and prunes old zib-made snapshots. `stored` means the manifest is already
    /// stored (found on resume).
    async fn finish_commit(
        self,
        m: Manifest,
        stored: bool,
        uploaded: u64,
        reused: u64,
    ) -> Result<BackupReport, BackupError> {
        self.set_progress(|pr| pr.phase = Phase::Committing);
        let p = self.locked.state.pending.clone().expect("pending");
        let key = self.layout().manifest_key(p.seq, &p.to);
        if !stored {
            let bytes = m.to_json_for_commit().map_err(|e| {
                BackupError::Catalog(format!("refusing to commit the manifest {key}: {e}"))
            })?;
            let len = bytes.len() as u64;
            self.engine.s3.put_small_once(&key, bytes, "application/json").await?;
            self.set_progress(|pr| {
                pr.bytes_uploaded += len;
                pr.puts += 1;
            });
        }
        let stream_size = m.stream_size;
        failpoint::hit("after-manifest");
        let to = SnapRef { name: p.to.clone(), guid: p.to_guid.clone().expect("snapshot taken") };
        let now = crate::now::utc();
        let st = &mut self.locked.state;
        let prev_key = st.last.as_ref().map(|c| c.manifest_key.as_str());
        st.chain =
            zib_core::lifecycle::ChainCache::after_commit(st.chain.take(), prev_key, &key, &m);
        // A full starts a chain; an incremental continues its base's (the previous `last`).
        let chain_full_seq = match &p.from {
            None => Some(p.seq),
            Some(_) => st.last.as_ref().and_then(|c| c.chain_full_seq),
        };
        st.last = Some(Committed {
            seq: p.seq,
            snapshot: to.clone(),
            manifest_key: key.clone(),
            committed_at: now,
            stream_size,
            chain_full_seq,
        });
        st.pending = None;
        st.destination = Some(self.target.destination());
        st.stats.backups_committed += 1;
        st.stats.bytes_committed += stream_size;
        st.stats.last_success_at = Some(now);
        st.stats.last_error = None;
        st.stats.last_error_at = None;
        self.save().await?;
        tracing::info!(dataset = %self.ds.name, seq = p.seq, snapshot = %p.to, bytes = stream_size, chunks = p.chunks.len(), "backup committed: {key}");
        release_send_hold(&self.engine.zfs, &self.ds.name, &p.to).await;

        self.set_progress(|pr| pr.phase = Phase::Pruning);
        let pruned = self.bookmark_and_prune(&to).await;
        Ok(BackupReport {
            seq: p.seq,
            snapshot: p.to,
            full: p.from.is_none(),
            stream_size,
            chunks_uploaded: uploaded,
            chunks_reused: reused,
            attempt: p.attempt,
            manifest_key: key,
            pruned,
            note: self.note.clone(),
        })
    }

    /// Bookmarks the new base (so the chain survives its snapshot being destroyed), destroys
    /// zib-made bookmarks older than it (no chain needs them: an incremental is only ever sent
    /// from the newest base), then zib-made snapshots beyond `keep_snapshots`. Never touches
    /// snapshots or bookmarks zib did not make, nor the newest snapshot. Failures here are
    /// logged, not fatal: the backup is committed.
    async fn bookmark_and_prune(&self, newest: &SnapRef) -> Vec<String> {
        let zfs = &self.engine.zfs;
        let name = &self.ds.name;
        let mut pruned = Vec::new();
        match self.ensure_bookmark(newest).await {
            Ok(Bookmarked::Present | Bookmarked::Created) => {
                pruned.extend(self.prune_bookmarks(newest).await)
            }
            Ok(Bookmarked::WrongGuid(guid)) => self.report_wrong_bookmark(newest, &guid),
            Ok(Bookmarked::NoSnapshot) => {
                tracing::warn!(
                    "{} vanished before it was bookmarked; not pruning",
                    name.snapshot(&newest.name)
                );
                return pruned;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not bookmark the new base; not pruning");
                return pruned;
            }
        }
        let newest = &newest.name;
        let snaps = match zfs.list(name, "snapshot").await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not list snapshots; not pruning");
                return Vec::new();
            }
        };
        let snaps: Vec<SnapName> =
            snaps.iter().filter_map(|s| SnapName::new(&s.name).ok()).collect();
        let prefix = &self.ds.snapshot_prefix;
        for s in backup_plan::snapshots_to_prune(&snaps, prefix, self.ds.keep_snapshots, newest) {
            match zfs.destroy_snapshot(name, s).await {
                Ok(()) => pruned.push(name.snapshot(s)),
                Err(e) => tracing::warn!(error = %e, "could not prune {}", name.snapshot(s)),
            }
        }
        pruned
    }

    /// The bookmark of `base`: made from its snapshot if missing (a crash between the state
    /// save and the bookmark leaves none); one of that name with another GUID is not `base`'s.
    async fn ensure_bookmark(&self, base: &SnapRef) -> Result<Bookmarked, ZfsError> {
        let (zfs, name) = (&self.engine.zfs, &self.ds.name);
        match zfs.bookmark_info(name, &base.name).await? {
            Some(b) if b.guid == base.guid => return Ok(Bookmarked::Present),
            Some(b) => return Ok(Bookmarked::WrongGuid(b.guid)),
            None => {}
        }
        match zfs.snapshot_info(name, &base.name).await? {
            Some(s) if s.guid == base.guid => {
                zfs.bookmark(name, &base.name).await?;
                Ok(Bookmarked::Created)
            }
            _ => Ok(Bookmarked::NoSnapshot),
        }
    }

    fn report_wrong_bookmark(&self, base: &SnapRef, guid: &str) {
        tracing::warn!(
            dataset = %self.ds.name,
            "bookmark {} has GUID {guid}, not {} of the backed-up snapshot: it is not that snapshot's bookmark and is not trusted (never sent from)",
            self.ds.name.bookmark(&base.name),
            base.guid
        );
    }

    /// At the start of a run: the base of the next incremental gets its bookmark back if a
    /// crash left it without one while its snapshot still exists, and an existing bookmark of
    /// that name is checked against the base's GUID. Best effort: failures are logged.
    async fn repair_bookmark(&self) {
        let st = &self.locked.state;
        let base = st.pending.as_ref().and_then(|p| p.from.clone());
        let Some(base) = base.or_else(|| st.last.as_ref().map(|c| c.snapshot.clone())) else {
            return;
        };
        let bookmark = self.ds.name.bookmark(&base.name);
        match self.ensure_bookmark(&base).await {
            Ok(Bookmarked::Present | Bookmarked::NoSnapshot) => {}
            Ok(Bookmarked::Created) => tracing::warn!(
                dataset = %self.ds.name,
                "the base of the next incremental had no bookmark (a crash after its commit); created {bookmark}"
            ),
            Ok(Bookmarked::WrongGuid(guid)) => self.report_wrong_bookmark(&base, &guid),
            Err(e) => tracing::warn!(error = %e, "could not check {bookmark}"),
        }
    }

    /// At the start of a run: zib's send holds that a crashed run left on zib-made snapshots,
    /// except on the snapshot of the backup this run continues (whose hold it reuses), are
    /// released, so pruning can destroy those snapshots. Holds of other tags stay. Best effort.
    async fn release_stale_holds(&self) {
        let (zfs, name) = (&self.engine.zfs, &self.ds.name);
        let keep = self.locked.state.pending.as_ref().map(|p| &p.to);
        let snaps: Vec<SnapName> = match zfs.list(name, "snapshot").await {
            Ok(s) => s.iter().filter_map(|s| SnapName::new(&s.name).ok()).collect(),
            Err(_) => return, // the run's own zfs calls say what is wrong
        };
        let zibs: Vec<SnapName> = snaps
            .into_iter()
            .filter(|s| s.is_zib_made(&self.ds.snapshot_prefix) && Some(s) != keep)
            .collect();
        match zfs.send_holds(name, &zibs).await {
            Ok(held) => {
                for s in held {
                    tracing::info!(dataset = %name, "releasing the hold a crashed run left on {}", name.snapshot(&s));
                    release_send_hold(zfs, name, &s).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list zib's holds"),
        }
    }

    /// Destroys the bookmarks zib-core's `bookmarks_to_prune` picks: zib-made ones older than
    /// `newest`'s (by creation txg).
    async fn prune_bookmarks(&self, newest: &SnapRef) -> Vec<String> {
        let (zfs, name) = (&self.engine.zfs, &self.ds.name);
        let books = match zfs.list(name, "bookmark").await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not list bookmarks; not pruning them");
                return Vec::new();
            }
        };
        let books: Vec<(SnapName, u64)> = books
            .iter()
            .filter_map(|b| SnapName::new(&b.name).ok().map(|s| (s, b.createtxg)))
            .collect();
        let mut pruned = Vec::new();
        for snap in backup_plan::bookmarks_to_prune(&books, &self.ds.snapshot_prefix, &newest.name)
        {
            match zfs.destroy_bookmark(name, snap).await {
                Ok(()) => pruned.push(name.bookmark(snap)),
                Err(e) => tracing::warn!(error = %e, "could not prune {}", name.bookmark(snap)),
            }
        }
        pruned
    }
}

/// Releases zib's send hold on `ds@snap` if it has one. Best effort: a failure is logged (the
/// next run releases a hold left behind).
async fn release_send_hold(zfs: &Zfs, ds: &DatasetName, snap: &SnapName) {
    let released = match zfs.send_holds(ds, std::slice::from_ref(snap)).await {
        Ok(held) if held.is_empty() => return,
        Ok(_) => zfs.release_send_hold(ds, snap).await,
        Err(ZfsError::NotFound { .. }) => return,
        Err(e) => Err(e),
    };
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release zib's hold on {}", ds.snapshot(snap));
    }
}

/// Where one upload attempt spools its chunks.
struct SpoolTarget {
    spool: Spool,
    /// The attempt, as part of the file names: `<seq>.a<attempt>`.
    run: String,
    /// The dataset, for messages.
    dataset: String,
}

/// Reads the send stream into chunks of `chunk_size`. Chunks already recorded are only hashed
/// and compared; new ones are written to a spool file (at most `permits` at a time) and handed
/// to the uploader. The final short chunk is handed over only after `zfs send` exited 0, so a
/// stream that died early never has its truncated tail stored.
async fn read_stream(
    send: SendStream,
    recorded: &Pending,
    spool: SpoolTarget,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Spooled>,
    cancel: &CancellationToken,
) -> Result<Streamed, BackupError> {
    let mut send = Some(send);
    let chunk_size = recorded.chunk_size;
    spool
        .spool
        .create()
        .await
        .map_err(|source| BackupError::SpoolDir { path: spool.spool.dir().to_owned(), source })?;
    let mut whole = crate::stream_hash::StreamHasher::start();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut index = 0u64;
    let mut finished = false;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = cancel.cancelled() => return Err(BackupError::Cancelled { dataset: spool.dataset.clone() }),
        };
        let reuse = recorded.recorded(index);
        let path = spool.spool.chunk_path(&spool.run, index);
        let spool_err = |source| BackupError::Spool { path: path.clone(), source };
        // The file and the guard that removes it whenever this chunk is not handed on.
        let (mut file, mut guard) = match reuse {
            Some(_) => (None, None),
            None => {
                crate::state_store::remove_stale(&path).map_err(spool_err)?;
                let guard = SpoolFile::new(path.clone());
                let new = tokio::fs::OpenOptions::from(crate::state_store::new_private_file());
                (Some(new.open(&path).await.map_err(spool_err)?), Some(guard))
            }
        };
        let mut hasher = Sha256::new();
        // Another tool's chunk is known by its MD5 (its ETag).
        let mut md5 = reuse.and_then(|r| r.md5.as_ref()).map(|_| <md5::Md5 as md5::Digest>::new());
        let mut n = 0u64;
        while n < chunk_size {
            let want = buf.len().min((chunk_size - n) as usize);
            let r = tokio::select! {
                r = send.as_mut().expect("running").stdout().read(&mut buf[..want]) => r,
                () = cancel.cancelled() => return Err(BackupError::Cancelled { dataset: spool.dataset.clone() }),
            };
            let r = r.map_err(|e| ZfsError::Spawn {
                cmd: "zfs send (reading its output)".into(),
                source: e,
            })?;
            if r == 0 {
                finished = true;
                break;
            }
            if index >= manifest::MAX_CHUNKS {
                return Err(BackupError::TooLarge {
                    dataset: spool.dataset.clone(),
                    seen: format!("longer than {} bytes", total + n),
                    chunk_size,
                    max: manifest::max_stream_size(chunk_size),
                    advice: "raise chunk_size for this dataset".into(),
                });
            }
            whole.update(&buf[..r]).await;
            hasher.update(&buf[..r]);
            if let Some(m) = md5.as_mut() {
                md5::Digest::update(m, &buf[..r]);
            }
            if let Some(f) = file.as_mut() {
                f.write_all(&buf[..r]).await.map_err(spool_err)?;
            }
            n += r as u64;
        }
        if let Some(mut f) = file {
            f.flush().await.map_err(spool_err)?;
        }
        if finished {
            // Only now is the stream known to be complete and good.
            send.take().expect("finished once").finish().await?;
            if n == 0 {
                drop(guard.take());
                if index < recorded.recorded_end() {
                    return Ok(Streamed::Diverged { index, why: Divergence::Resent });
                }
                if total == 0 {
                    return Err(BackupError::EmptyStream(spool.dataset.clone()));
                }
                break;
            }
        }
        total += n;
        let sha256 = hex::encode(hasher.finalize());
        let same = reuse.is_some_and(|rec| {
            rec.size == n
                && match (&rec.md5, md5) {
                    (Some(want), Some(m)) => &hex::encode(md5::Digest::finalize(m)) == want,
                    _ => rec.sha256 == sha256,
                }
        });
        match reuse {
            Some(_) if same => {
                let _ = tx.send(Spooled::Reused { size: n });
            }
            Some(_) => return Ok(Streamed::Diverged { index, why: Divergence::Resent }),
            None => {
                let class = recorded.storage_class;
                let file = guard.take().expect("a new chunk has its file");
                let chunk = NewChunk { index, size: n, sha256, class, file, _permit: permit };
                if tx.send(Spooled::New(chunk)).is_err() {
                    // The uploader stopped; its error is what try_join reports.
                    return Ok(Streamed::Done { size: total, sha256: String::new() });
                }
            }
        }
        index += 1;
        if finished {
            break;
        }
    }
    if index < recorded.recorded_end() {
        return Ok(Streamed::Diverged { index, why: Divergence::Resent });
    }
    drop(tx);
    Ok(Streamed::Done { size: total, sha256: whole.finish().await })
}
