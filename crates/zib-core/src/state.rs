//! The per-dataset local state record: a cache of progress, not the source of truth.
//!
//! Everything needed to restore lives in the bucket. This record lets a run resume where a
//! crash left it (which snapshot it was sending, which chunks are already stored) and remembers
//! the base of the next incremental. If it is lost, the next run rebuilds it from the catalog
//! and `zfs list`. Versioned; older versions are kept as test fixtures.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::{ChunkRecord, LegacyOrigin, SnapRef};
use crate::names::{DatasetName, SnapName};
use crate::storage_class::StorageClass;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetState {
    pub version: u32,
    pub dataset: DatasetName,
    /// The newest committed backup (its manifest exists in the bucket).
    pub last: Option<Committed>,
    /// Where `last` was committed. None in files written before zib recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// A backup that was started and not yet committed.
    pub pending: Option<Pending>,
    #[serde(default)]
    pub stats: Stats,
    /// The chain `last` ends, for the re-baseline decision (a cache of the bucket's manifests:
    /// None when unknown, e.g. in files written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<crate::lifecycle::ChainCache>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub seq: u64,
    pub snapshot: SnapRef,
    pub manifest_key: String,
    pub committed_at: DateTime<Utc>,
    pub stream_size: u64,
    /// Seq of the full stream this backup's chain starts with; None when not known (state
    /// written before it was recorded, or rebuilt from an incremental's manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_full_seq: Option<u64>,
}

impl Committed {
    /// Streams in this backup's chain (the full included), when the chain's start is known.
    pub fn chain_length(&self) -> Option<u64> {
        self.chain_full_seq.map(|f| self.seq.saturating_sub(f) + 1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub seq: u64,
    /// Base of the incremental; None for a full.
    pub from: Option<SnapRef>,
    /// The snapshot being sent. Recorded before it is taken, so a crash adopts it.
    pub to: SnapName,
    /// Its GUID, once the snapshot exists.
    pub to_guid: Option<String>,
    pub attempt: u32,
    pub chunk_size: u64,
    pub storage_class: StorageClass,
    pub started_at: DateTime<Utc>,
    /// Chunks of this attempt already stored and verified, in order: chunks 0..len.
    pub chunks: Vec<ChunkRecord>,
    /// Chunks stored beyond `chunks`, by index: parallel PUTs finish out of order, so chunk 7
    /// may be stored while chunk 6 is still on its way. Each moves into `chunks` once every
    /// chunk before it is stored. Absent in files written before parallel PUTs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored_ahead: BTreeMap<u64, ChunkRecord>,
    /// Where the chunks go. None in files written before zib recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Set when this backup finishes an upload another tool left unfinished: the first
    /// `chunks` are that tool's (known by MD5, see [`ChunkRecord::adopted`]), the manifest is
    /// an adopted one. Cleared when the stream is uploaded again as a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyOrigin>,
}

impl Pending {
    /// Starts the upload again as a new attempt under a new key prefix: nothing stored so
    /// far is used, another tool's chunks included (they stay where they are).
    pub fn new_attempt(&mut self) {
        self.attempt += 1;
        self.clear_chunks();
        self.legacy = None;
    }
}

/// Where a dataset's backups go. A base or a pending upload recorded for one destination means
/// nothing at another: its manifest and chunks are not there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub bucket: String,
    /// The dataset's normalised key prefix ("" or ending in '/').
    pub prefix: String,
    /// The S3-compatible endpoint; None for AWS.
    pub endpoint: Option<String>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(e) = &self.endpoint {
            write!(f, " at {e}")?;
        }
        Ok(())
    }
}

/// What [`DatasetState::retarget`] forgot because it was recorded for another destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Forgotten {
    /// The base of the next incremental: the next backup plans from the new destination's
    /// catalog (a full if it has none).
    Base { at: Destination, last: Committed },
    /// An upload that was under way there: its chunks stay there, without a manifest.
    Pending { at: Destination, pending: Pending },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub backups_committed: u64,
    pub bytes_committed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("state file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Pending {
    /// The record of chunk `index`, if it is stored.
    pub fn recorded(&self, index: u64) -> Option<&ChunkRecord> {
        match usize::try_from(index) {
            Ok(i) if i < self.chunks.len() => Some(&self.chunks[i]),
            _ => self.stored_ahead.get(&index),
        }
    }

    /// Records chunk `index` as stored. A chunk recorded already keeps its first record.
    pub fn record(&mut self, index: u64, chunk: ChunkRecord) {
        if self.recorded(index).is_some() {
            return;
        }
        if index == self.chunks.len() as u64 {
            self.chunks.push(chunk);
            while let Some(next) = self.stored_ahead.remove(&(self.chunks.len() as u64)) {
                self.chunks.push(next);
            }
        } else {
            self.stored_ahead.insert(index, chunk);
        }
    }

    /// One past the highest stored chunk: a stream with fewer chunks does not match.
    pub fn recorded_end(&self) -> u64 {
        self.stored_ahead.last_key_value().map_or(self.chunks.len() as u64, |(&i, _)| i + 1)
    }

    /// Every stored chunk's record, in index order.
    pub fn all_recorded(&self) -> impl Iterator<Item = &ChunkRecord> {
        self.chunks.iter().chain(self.stored_ahead.values())
    }

    /// Forgets every stored chunk (a new attempt starts under a new key prefix).
    pub fn clear_chunks(&mut self) {
        self.chunks.clear();
        self.stored_ahead.clear();
    }
}

impl DatasetState {
    pub fn new(dataset: DatasetName) -> Self {
        Self {
            version: STATE_VERSION,
            dataset,
            last: None,
            destination: None,
            pending: None,
            stats: Stats::default(),
            chain: None,
        }
    }

    /// Ties the state to `to`, the destination the config names now. A base or a pending
    /// backup recorded for another bucket, prefix or endpoint is forgotten (the backups there
    /// stay complete and restorable where they are). Records without a destination (older
    /// files) are kept: planning checks the base's manifest against the listing anyway.
    pub fn retarget(&mut self, to: &Destination) -> Vec<Forgotten> {
        let mut out = Vec::new();
        if let Some(p) = self.pending.take_if(|p| p.destination.as_ref().is_some_and(|d| d != to)) {
            let at = p.destination.clone().expect("checked");
            out.push(Forgotten::Pending { at, pending: p });
        }
        if let Some(at) = self.destination.take_if(|d| d != to)
            && let Some(last) = self.last.take()
        {
            out.push(Forgotten::Base { at, last });
        }
        self.destination = self.last.as_ref().map(|_| to.clone());
        out
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("state serialises");
        v.push(b'\n');
        v
    }

    /// Parses a state file; `path` only names it in errors. Checks it belongs to `dataset`.
    pub fn from_json(path: &str, bytes: &[u8], dataset: &DatasetName) -> Result<Self, StateError> {
        #[derive(Deserialize)]
        struct Head {
            version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|source| StateError::Json { path: path.into(), source })?;
        let invalid = |message: String| StateError::Invalid { path: path.into(), message };
        match head.version {
            Some(STATE_VERSION) => {}
            v => {
                return Err(invalid(format!(
                    "unsupported state version {v:?} (this zib writes {STATE_VERSION}); move the file aside and zib rebuilds it from the bucket"
                )));
            }
        }
        let s: DatasetState = serde_json::from_slice(bytes)
            .map_err(|source| StateError::Json { path: path.into(), source })?;
        if &s.dataset != dataset {
            return Err(invalid(format!("belongs to dataset {}, not {dataset}", s.dataset)));
        }
        Ok(s)
    }

    /// The seq the next backup gets.
    pub fn next_seq(&self) -> u64 {
        self.last.as_ref().map_or(1, |c| c.seq + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fixture() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let s = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        assert_eq!(s.next_seq(), 4);
        // Written before chain_full_seq existed: unknown, not a guess.
        assert_eq!(s.last.as_ref().unwrap().chain_length(), None);
        let mut c = s.last.clone().unwrap();
        c.chain_full_seq = Some(2);
        assert_eq!(c.chain_length(), Some(2));
        let p = s.pending.as_ref().unwrap();
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(DatasetState::from_json("x", &s.to_json(), &ds).unwrap(), s);
    }

    #[test]
    fn chunks_stored_out_of_order_are_kept_by_index_and_fixture() {
        let ds = DatasetName::new("tank/photos").unwrap();
        // Written with parallel PUTs in flight: chunks 0-1 stored, 3 and 4 too, 2 not.
        let fixture = include_bytes!("../tests/fixtures/state-v1-stored-ahead.json");
        let s = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        let mut p = s.pending.clone().unwrap();
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(p.stored_ahead.keys().copied().collect::<Vec<_>>(), [3, 4]);
        assert!(p.recorded(2).is_none() && p.recorded(3).is_some() && p.recorded(5).is_none());
        assert_eq!(p.recorded_end(), 5);
        assert_eq!(DatasetState::from_json("x", &s.to_json(), &ds).unwrap(), s);
        // Chunk 2 lands: 3 and 4 follow it into the ordered list.
        let two = ChunkRecord::new("k2".into(), 1, "2".repeat(64));
        p.record(2, two.clone());
        assert_eq!(p.chunks.len(), 5);
        assert_eq!(p.chunks[2], two);
        assert!(p.stored_ahead.is_empty());
        // A second record of a stored chunk does not replace the first.
        p.record(2, ChunkRecord::new("other".into(), 1, "9".repeat(64)));
        assert_eq!(p.chunks[2], two);
        assert_eq!(p.all_recorded().count(), 5);
        p.clear_chunks();
        assert_eq!(p.recorded_end(), 0);
        // An old file (one ordered list, no `stored_ahead`) loads with nothing ahead and is
        // written back without the new field.
        let old = include_bytes!("../tests/fixtures/state-v1.json");
        let s = DatasetState::from_json("fixture", old, &ds).unwrap();
        assert!(s.pending.as_ref().unwrap().stored_ahead.is_empty());
        assert!(!String::from_utf8(s.to_json()).unwrap().contains("stored_ahead"));
    }

    fn dest(bucket: &str, prefix: &str) -> Destination {
        Destination { bucket: bucket.into(), prefix: prefix.into(), endpoint: None }
    }

    #[test]
    fn retarget_forgets_what_lives_elsewhere() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let old = DatasetState::from_json("fixture", fixture, &ds).unwrap();
        // A file from before destinations were recorded: kept, and stamped with the current one.
        let mut s = old.clone();
        assert!(s.retarget(&dest("a", "zib/")).is_empty());
        assert_eq!(s.destination, Some(dest("a", "zib/")));
        assert!(s.last.is_some() && s.pending.is_some());
        s.pending.as_mut().unwrap().destination = Some(dest("a", "zib/"));
        // The same destination: nothing changes.
        let same = s.clone();
        assert!(s.retarget(&dest("a", "zib/")).is_empty());
        assert_eq!(s, same);
        // Another bucket, another prefix or another endpoint: base and pending are forgotten.
        for to in [
            dest("b", "zib/"),
            dest("a", "other/"),
            Destination { endpoint: Some("http://127.0.0.1:9000".into()), ..dest("a", "zib/") },
        ] {
            let mut t = s.clone();
            let gone = t.retarget(&to);
            assert_eq!(gone.len(), 2, "{to}: {gone:?}");
            assert!(matches!(&gone[0], Forgotten::Pending { at, .. } if at == &dest("a", "zib/")));
            assert!(matches!(&gone[1], Forgotten::Base { last, .. } if last.seq == 3));
            assert!(t.last.is_none() && t.pending.is_none() && t.destination.is_none());
            assert_eq!(t.stats, s.stats, "the statistics stay");
        }
    }

    #[test]
    fn refuses_foreign_or_future_state() {
        let ds = DatasetName::new("tank/other").unwrap();
        let fixture = include_bytes!("../tests/fixtures/state-v1.json");
        let e =
            DatasetState::from_json("/var/lib/zib/x.json", fixture, &ds).unwrap_err().to_string();
        assert!(
            e.contains("/var/lib/zib/x.json") && e.contains("belongs to dataset tank/photos"),
            "{e}"
        );
        let e = DatasetState::from_json("p", br#"{"version": 9}"#, &ds).unwrap_err().to_string();
        assert!(e.contains("unsupported state version"), "{e}");
        assert!(DatasetState::from_json("p", b"\0\0garbage", &ds).is_err());
    }
}
