//! The restore's progress: the durable record (one locked JSON file per target, so a restart
//! continues without asking for any thaw twice) and the live view published on a `watch`.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use zib_core::{DatasetName, pricing::RestoreTier, restore_plan::RestorePlan};

use super::{RestoreError, RestoreOptions, io_err};
use crate::state_store::write_atomic;

pub const RECORD_VERSION: u32 = 1;

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
    /// Found archived by HEAD or GET although its manifest gives a class that needs no thaw
    /// (a bucket lifecycle rule moved it): thawed like the manifest's archived chunks.
    #[serde(default)]
    pub archived: bool,
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
    /// Cancelled on request (`zibctl restore cancel`): a daemon restart does not continue it;
    /// starting the same restore again does (and clears this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl RestoreRecord {
    pub(super) fn new(bucket: &str, opts: &RestoreOptions, plan: RestorePlan) -> Self {
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
            cancelled_at: None,
        }
    }

    /// Chunks that need a thaw: in an archive class by their manifest, or found archived.
    pub(super) fn thaw_needed(&self) -> u64 {
        let found: u64 = (self.plan.steps.iter().zip(&self.chunks))
            .filter(|(s, _)| !s.needs_thaw())
            .map(|(_, cs)| cs.iter().filter(|c| c.archived).count() as u64)
            .sum();
        self.plan.thaw_objects() + found
    }

    pub(super) fn count(&self, f: impl Fn(&ChunkProgress) -> bool) -> u64 {
        self.chunks.iter().flatten().filter(|c| f(c)).count() as u64
    }
}

/// The record of a restore into `target` under `work_dir` that has not finished (running,
/// interrupted, or failed, and so to be continued), if there is one: while it is there the
/// target is half-restored and must not be snapshotted. An unreadable record counts as
/// unfinished.
pub fn unfinished_restore(work_dir: &Path, target: &DatasetName) -> Option<PathBuf> {
    let path = work_dir.join(format!("restore-{}.json", target.file_stem()));
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<RestoreRecord>(&bytes) {
        Ok(r) if r.finished_at.is_some() => None,
        _ => Some(path),
    }
}

/// The locked progress file of the restore into one target dataset.
#[derive(Debug)]
pub struct RestoreProgressFile {
    _lock: Flock<File>,
    pub(super) path: PathBuf,
    pub(super) spool: crate::spool::Spool,
    /// The record of an unfinished (or the last finished) restore, if any.
    pub record: Option<RestoreRecord>,
}

impl RestoreProgressFile {
    /// Takes the target's restore lock (without waiting) and loads its record, if any, from
    /// `<work_dir>/restore-<target>.json`. Spool files go to `<work_dir>/restore-spool/<target>/`.
    /// The work directory is private ([`crate::state_store::private_dir`]): one owned by
    /// another user, or writable by group or others, is refused (the spool too, when made).
    pub fn open(work_dir: &Path, target: &DatasetName) -> Result<Self, RestoreError> {
        let mut file = Self::lock(work_dir, target)?;
        let path = file.path.clone();
        file.record = match std::fs::File::open(&path) {
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
            Err(e) => return Err(io_err("cannot read", &path)(e).into()),
        };
        Ok(file)
    }

    /// Takes the target's restore lock (without waiting), its record not read: for
    /// [`remove`](Self::remove), which needs no record and must work on a damaged one.
    pub(super) fn lock(work_dir: &Path, target: &DatasetName) -> Result<Self, RestoreError> {
        crate::state_store::private_dir(work_dir)
            .map_err(io_err("cannot use work directory", work_dir))?;
        let stem = format!("restore-{}", target.file_stem());
        let lock_path = work_dir.join(format!("{stem}.lock"));
        let lock = crate::state_store::lock_exclusive(&lock_path).map_err(|e| match e {
            crate::state_store::LockError::Held { .. } => {
                RestoreError::Locked { target: target.to_string(), path: lock_path.clone() }
            }
            crate::state_store::LockError::Io(e) => e.into(),
        })?;
        let path = work_dir.join(format!("{stem}.json"));
        let spool = crate::spool::Spool::new(&work_dir.join("restore-spool"), target);
        Ok(Self { _lock: lock, path, spool, record: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the record, its spool and its lock file, for a restore whose target is gone
    /// (a drill's, destroyed): nothing of it is left to continue. The spool root goes too when
    /// no other restore uses it.
    pub(super) async fn remove(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
        self.spool.clean().await;
        if let Some(root) = self.spool.dir().parent() {
            let _ = tokio::fs::remove_dir(root).await; // fails while another restore's spool is there
        }
        let _ = tokio::fs::remove_file(self.path.with_extension("lock")).await;
    }

    pub(super) async fn save(&mut self) -> Result<(), RestoreError> {
        let rec = self.record.as_mut().expect("a record to save");
        rec.updated_at = Utc::now();
        let bytes = serde_json::to_vec_pretty(rec).expect("record serialises");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .expect("save task panicked")
            .map_err(|e| RestoreError::Progress { path: self.path.clone(), message: e.to_string() })
    }

    pub(super) fn rec(&mut self) -> &mut RestoreRecord {
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

#[cfg(test)]
mod tests {
    use super::*;

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
