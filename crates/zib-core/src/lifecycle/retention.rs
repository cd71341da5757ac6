//! Remote retention: which whole chains, and which abandoned upload attempts, may leave the
//! bucket, in which order, and what that frees and costs.
//!
//! Rules, in the order they protect:
//! - only whole chains go (a full and every incremental built on it), never a piece of one;
//! - the newest complete chain is always kept, then the newest `keep_chains` complete chains,
//!   then every chain holding a backup younger than `keep_within`;
//! - a chain with a missing manifest chunk (damaged) or leading back to no full (broken) is
//!   left alone and reported: what is left of it may still be worth a partial restore;
//! - no object younger than its class's minimum storage duration goes (its chain waits, as a
//!   whole) unless early deletion is allowed; then the charge is counted;
//! - abandoned attempts (chunks no manifest names) go under the same age rule; the attempt an
//!   unfinished backup is uploading never; and a chunk whose seq is above every committed one
//!   (it could belong to an upload still running elsewhere) only once `ABANDONED_GRACE` old.
//!   Below that, no upload can be running (the next backup always takes a higher seq): these
//!   are lost attempts, or the chunks an interrupted prune left after their manifest;
//! - the plan is ordered so that whatever prefix of it has run, every manifest still in the
//!   bucket is restorable: links newest first, each manifest before its chunks. Run again on
//!   a fresh listing, it plans what is left (an interrupted prune resumes).
//!
//! Every key in a plan is one of the listing's: nothing outside the dataset's root is named.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Chain};
use crate::manifest::Manifest;
use crate::names::KeyLayout;
use crate::period::Period;
use crate::pricing::Pricing;
use crate::storage_class::StorageClass;

/// Abandoned chunks above the newest committed seq and younger than this are never deleted,
/// whatever their class: another run (another host, a daemon without the lock) may still be
/// uploading them.
pub const ABANDONED_GRACE: Period = Period::days(7);

/// What to keep; both `None` means retention is not configured and no chain is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the newest N complete chains.
    pub keep_chains: Option<u32>,
    /// Keep every chain that holds a backup committed within this period.
    pub keep_within: Option<Period>,
}

impl RetentionPolicy {
    pub fn is_configured(&self) -> bool {
        self.keep_chains.is_some() || self.keep_within.is_some()
    }
}

/// One object of the bucket listing under the dataset's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    /// None when the listing did not say (then the manifest's class is assumed, or for an
    /// abandoned chunk the strictest, DEEP_ARCHIVE).
    pub storage_class: Option<StorageClass>,
    /// None when the listing did not say (then the manifest's commit time is assumed, which
    /// is never earlier than its chunks' upload; an abandoned chunk with no time is kept).
    pub last_modified: Option<DateTime<Utc>>,
}

/// Everything a prune decision looks at.
#[derive(Debug, Clone)]
pub struct PruneRequest<'a> {
    pub catalog: &'a Catalog,
    pub layout: &'a KeyLayout,
    pub listing: &'a [StoredObject],
    pub policy: RetentionPolicy,
    pub pricing: &'a Pricing,
    pub now: DateTime<Utc>,
    /// Delete objects younger than their minimum storage duration too, paying the charge.
    pub allow_early_deletion: bool,
    /// Key prefix of the attempt an unfinished backup is uploading: never touched.
    pub in_progress: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionKind {
    Manifest,
    Chunk,
    /// A chunk no manifest names.
    Abandoned,
}

/// One DeleteObject of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deletion {
    pub key: String,
    pub kind: DeletionKind,
    /// The chain position the object belongs to.
    pub seq: u64,
    pub size: u64,
    pub storage_class: StorageClass,
    pub age_days: f64,
    pub monthly_saving: f64,
    pub early_deletion_charge: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KeepReason {
    /// No `keep_chains` or `keep_within` is configured.
    NoRetention,
    NewestComplete,
    /// Among the newest `keep_chains` complete chains (rank 1 is the newest).
    KeepChains {
        rank: u32,
        keep_chains: u32,
    },
    KeepWithin {
        keep_within: Period,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum ChainFate {
    Keep(KeepReason),
    Delete,
    /// Would be deleted, but some of its objects are younger than their minimum storage
    /// duration; deletable free of charge from `deletable_from`, or now for the charge.
    Held {
        deletable_from: DateTime<Utc>,
        early_deletion_charge: f64,
    },
    /// An object of it is missing from the listing: left alone.
    Damaged {
        missing: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainVerdict {
    pub full_seq: u64,
    pub seqs: Vec<u64>,
    pub newest_committed_at: DateTime<Utc>,
    pub objects: u64,
    pub bytes: u64,
    pub fate: ChainFate,
}

/// An abandoned chunk kept for now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldObject {
    pub key: String,
    pub size: u64,
    /// None when its age is unknown (kept until a listing shows it).
    pub deletable_from: Option<DateTime<Utc>>,
}

/// The outcome: deletions in the order to run them, and why each chain stays or goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunePlan {
    pub deletions: Vec<Deletion>,
    pub chains: Vec<ChainVerdict>,
    /// Manifests that lead back to no full: left alone.
    pub broken_seqs: Vec<u64>,
    pub held_abandoned: Vec<HeldObject>,
    pub objects: u64,
    pub bytes: u64,
    pub monthly_saving: f64,
    pub early_deletion_charge: f64,
    pub currency: String,
}

/// An object of a chain, with what the age rule needs.
struct Candidate<'a> {
    obj: &'a StoredObject,
    kind: DeletionKind,
    seq: u64,
    class: StorageClass,
    since: DateTime<Utc>,
}

impl PruneRequest<'_> {
    pub fn plan(&self) -> PrunePlan {
        let by_key: HashMap<&str, &StoredObject> =
            self.listing.iter().map(|o| (o.key.as_str(), o)).collect();
        let (chains, broken) = self.catalog.chains();
        let gathered: Vec<(Vec<Candidate<'_>>, Vec<String>)> =
            chains.iter().map(|c| self.gather(c, &by_key)).collect();
        let newest_complete = gathered.iter().rposition(|(_, missing)| missing.is_empty());

        let mut deletions = Vec::new();
        let mut verdicts = Vec::new();
        let mut rank = 0u32;
        for (i, (chain, (objects, missing))) in chains.iter().zip(gathered).enumerate().rev() {
            let complete = missing.is_empty();
            if complete {
                rank += 1;
            }
            let fate = self.fate(chain, complete, missing, Some(i) == newest_complete, rank);
            let fate = match fate {
                Some(keep) => keep,
                None => self.age_rule(objects, &mut deletions),
            };
            verdicts.push(ChainVerdict {
                full_seq: chain.full().seq,
                seqs: chain.links.iter().map(|m| m.seq).collect(),
                newest_committed_at: chain.newest().committed_at,
                objects: chain.links.iter().map(|m| 1 + m.chunks.len() as u64).sum(),
                bytes: chain.links.iter().map(|m| m.stream_size).sum(),
                fate,
            });
        }
        verdicts.reverse();
        // Chains were visited newest first; run the oldest chain's deletions first.
        let mut ordered: Vec<Deletion> = Vec::with_capacity(deletions.len());
        for group in deletions.into_iter().rev() {
            ordered.extend(group);
        }
        let held_abandoned = self.abandoned(&mut ordered);
        let sum = |f: fn(&Deletion) -> f64| ordered.iter().map(f).sum::<f64>();
        PrunePlan {
            objects: ordered.len() as u64,
            bytes: ordered.iter().map(|d| d.size).sum(),
            monthly_saving: sum(|d| d.monthly_saving),
            early_deletion_charge: sum(|d| d.early_deletion_charge),
            currency: self.pricing.currency.clone(),
            chains: verdicts,
            broken_seqs: broken.iter().map(|m| m.seq).collect(),
            held_abandoned,
            deletions: ordered,
        }
    }

    /// The chain's objects in deletion order (links newest first, manifest before chunks),
    /// and the keys it names that the listing lacks.
    fn gather<'l>(
        &self,
        chain: &Chain<'_>,
        by_key: &HashMap<&str, &'l StoredObject>,
    ) -> (Vec<Candidate<'l>>, Vec<String>) {
        let mut objects = Vec::new();
        let mut missing = Vec::new();
        for m in chain.links.iter().rev() {
            let mkey = self.layout.manifest_key(m.seq, &m.to.name);
            match by_key.get(mkey.as_str()) {
                Some(o) => objects.push(self.candidate(o, DeletionKind::Manifest, m)),
                None => missing.push(mkey),
            }
            for c in &m.chunks {
                match by_key.get(c.key.as_str()) {
                    Some(o) if o.size == c.size => {
                        objects.push(self.candidate(o, DeletionKind::Chunk, m))
                    }
                    _ => missing.push(c.key.clone()),
                }
            }
        }
        (objects, missing)
    }

    fn candidate<'l>(
        &self,
        obj: &'l StoredObject,
        kind: DeletionKind,
        m: &Manifest,
    ) -> Candidate<'l> {
        let fallback =
            if kind == DeletionKind::Manifest { StorageClass::Standard } else { m.storage_class };
        Candidate {
            obj,
            kind,
            seq: m.seq,
            class: obj.storage_class.unwrap_or(fallback),
            since: obj.last_modified.unwrap_or(m.committed_at),
        }
    }

    /// Whether a chain is kept (and why); None when retention lets it go.
    fn fate(
        &self,
        chain: &Chain<'_>,
        complete: bool,
        missing: Vec<String>,
        newest_complete: bool,
        rank: u32,
    ) -> Option<ChainFate> {
        let keep = |r| Some(ChainFate::Keep(r));
        if !self.policy.is_configured() {
            return keep(KeepReason::NoRetention);
        }
        if !complete {
            return Some(ChainFate::Damaged { missing });
        }
        if newest_complete {
            return keep(KeepReason::NewestComplete);
        }
        if let Some(keep_chains) = self.policy.keep_chains
            && rank <= keep_chains
        {
            return keep(KeepReason::KeepChains { rank, keep_chains });
        }
        if let Some(keep_within) = self.policy.keep_within
            && !keep_within.has_passed_since(chain.newest().committed_at, self.now)
        {
            return keep(KeepReason::KeepWithin { keep_within });
        }
        None
    }

    fn age_days(&self, since: DateTime<Utc>) -> f64 {
        (self.now - since).num_seconds() as f64 / 86_400.0
    }

    /// The date from which an object may go free of charge.
    fn free_from(&self, since: DateTime<Utc>, class: StorageClass) -> DateTime<Utc> {
        self.pricing.free_deletion_from(since, class)
    }

    fn deletion(&self, c: &Candidate<'_>) -> Deletion {
        let age_days = self.age_days(c.since);
        Deletion {
            key: c.obj.key.clone(),
            kind: c.kind,
            seq: c.seq,
            size: c.obj.size,
            storage_class: c.class,
            age_days,
            monthly_saving: self.pricing.monthly_storage(c.obj.size, c.class),
            early_deletion_charge: self
                .pricing
                .early_deletion_charge(c.obj.size, c.class, age_days),
        }
    }

    /// A chain retention lets go: deleted as a whole if every object is old enough (or early
    /// deletion is allowed), else held as a whole.
    fn age_rule(&self, objects: Vec<Candidate<'_>>, out: &mut Vec<Vec<Deletion>>) -> ChainFate {
        let planned: Vec<Deletion> = objects.iter().map(|c| self.deletion(c)).collect();
        let deletable_from = objects.iter().map(|c| self.free_from(c.since, c.class)).max();
        let charge: f64 = planned.iter().map(|d| d.early_deletion_charge).sum();
        match deletable_from {
            Some(from) if from > self.now && !self.allow_early_deletion => {
                ChainFate::Held { deletable_from: from, early_deletion_charge: charge }
            }
            _ => {
                out.push(planned);
                ChainFate::Delete
            }
        }
    }

    /// Appends the abandoned chunks that may go to `out`; returns those held.
    fn abandoned(&self, out: &mut Vec<Deletion>) -> Vec<HeldObject> {
        let named: HashSet<String> = self
            .catalog
            .manifests
            .iter()
            .flat_map(|m| m.named_objects(self.layout))
            .map(|o| o.key)
            .collect();
        let newest_seq = self.catalog.manifests.iter().map(|m| m.seq).max().unwrap_or(0);
        let mut held = Vec::new();
        for obj in self.listing {
            let Some(ck) = self.layout.parse_chunk_key(&obj.key) else { continue };
            if named.contains(obj.key.as_str())
                || self.in_progress.as_deref().is_some_and(|p| obj.key.starts_with(p))
            {
                continue;
            }
            let class = obj.storage_class.unwrap_or(StorageClass::DeepArchive);
            let Some(since) = obj.last_modified else {
                held.push(HeldObject {
                    key: obj.key.clone(),
                    size: obj.size,
                    deletable_from: None,
                });
                continue;
            };
            let grace_ends =
                if ck.seq > newest_seq { since + ABANDONED_GRACE.as_duration() } else { since };
            let free_from = self.free_from(since, class);
            let may_go =
                grace_ends <= self.now && (free_from <= self.now || self.allow_early_deletion);
            if may_go {
                let c = Candidate { obj, kind: DeletionKind::Abandoned, seq: ck.seq, class, since };
                out.push(self.deletion(&c));
            } else {
                let from =
                    if self.allow_early_deletion { grace_ends } else { grace_ends.max(free_from) };
                held.push(HeldObject {
                    key: obj.key.clone(),
                    size: obj.size,
                    deletable_from: Some(from),
                });
            }
        }
        held
    }
}
