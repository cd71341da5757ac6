//! The cost ledger: what the backups under a prefix cost to keep, when each chain may leave the
//! bucket free of charge, and what restoring each dataset's newest snapshot would cost today.
//!
//! Figures come from the catalog (the manifests name every chunk, its size and class), checked
//! against a listing of the prefix: a named object the listing lacks (or shows with another
//! size) is reported as missing and not counted; an object under the prefix that no manifest
//! names (an abandoned attempt, an unreadable manifest, anything else) is counted apart. Prices,
//! overheads and minimum storage durations are the one table of [`crate::pricing`], the same
//! `restore plan` quotes with.
//!
//! Class of an object: the listing's when it says, else its manifest's (chunks) or STANDARD
//! (manifests, and unnamed objects: the dearest assumption). Age: the listing's last-modified
//! time, else the manifest's commit time.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::retention::StoredObject;
use crate::catalog::Catalog;
use crate::manifest::NamedObject;
use crate::names::{DatasetName, KeyLayout};
use crate::pricing::{
    ARCHIVE_OVERHEAD_ARCHIVE_BYTES, ARCHIVE_OVERHEAD_STANDARD_BYTES, GB, Pricing, Quote,
};
use crate::restore_plan::RestorePlan;
use crate::storage_class::StorageClass;

/// Everything the ledger looks at.
#[derive(Debug, Clone)]
pub struct LedgerRequest<'a> {
    /// The object prefix the catalogs' keys live under.
    pub prefix: &'a str,
    /// One catalog per dataset.
    pub catalogs: &'a [Catalog],
    /// Every object under the listed prefix.
    pub listing: &'a [StoredObject],
    pub pricing: &'a Pricing,
    pub now: DateTime<Utc>,
    /// Days the thawed copies of the restore quote stay readable.
    pub restore_days: u32,
}

/// Stored objects of one storage class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLine {
    pub storage_class: StorageClass,
    pub objects: u64,
    pub bytes: u64,
    /// Index overhead billed at the STANDARD price: 8 KiB per GLACIER / DEEP_ARCHIVE object.
    pub overhead_standard_bytes: u64,
    /// Index overhead billed at the class's own price: 32 KiB per GLACIER / DEEP_ARCHIVE object.
    pub overhead_archive_bytes: u64,
    /// The monthly cost of that overhead (included in `monthly`).
    pub overhead_monthly: f64,
    /// Estimated monthly storage cost, overheads and minimum billable sizes included.
    pub monthly: f64,
}

/// One chain of a dataset and the date it may be deleted without an early-deletion charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLine {
    pub full_seq: u64,
    pub newest_seq: u64,
    pub backups: u64,
    /// Objects of the chain present in the listing (manifests and chunks).
    pub objects: u64,
    pub bytes: u64,
    pub monthly: f64,
    /// The latest, over its objects, of stored-since plus the class's minimum storage days.
    pub deletable_from: DateTime<Utc>,
}

/// A full restore of a dataset's newest snapshot, quoted as `restore plan` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreLine {
    pub snapshot: String,
    pub streams: u64,
    pub quote: Quote,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetLine {
    pub dataset: DatasetName,
    pub objects: u64,
    pub bytes: u64,
    pub monthly: f64,
    pub chains: Vec<ChainLine>,
    /// Manifests leading back to no full (not in any chain).
    pub broken_seqs: Vec<u64>,
    /// None when `restore_error` says why there is no quote.
    pub restore: Option<RestoreLine>,
    pub restore_error: Option<String>,
}

/// An object under the prefix that no manifest names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnnamedObject {
    pub key: String,
    pub size: u64,
    pub storage_class: StorageClass,
    pub monthly: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostLedger {
    pub currency: String,
    pub at: DateTime<Utc>,
    /// Objects the catalog names and the listing holds, per class.
    pub classes: Vec<ClassLine>,
    pub monthly: f64,
    pub datasets: Vec<DatasetLine>,
    /// Objects no manifest names, per class, and each of them.
    pub unnamed_classes: Vec<ClassLine>,
    pub unnamed: Vec<UnnamedObject>,
    pub unnamed_monthly: f64,
    /// Keys the catalog names that the listing lacks or shows with another size.
    pub missing: Vec<String>,
    /// `monthly + unnamed_monthly`.
    pub monthly_total: f64,
}

/// Sums per class.
#[derive(Default)]
struct ByClass(BTreeMap<StorageClass, ClassLine>);

impl ByClass {
    fn add(&mut self, pricing: &Pricing, size: u64, class: StorageClass) -> f64 {
        let monthly = pricing.monthly_storage(size, class);
        let line = self.0.entry(class).or_insert_with(|| ClassLine {
            storage_class: class,
            objects: 0,
            bytes: 0,
            overhead_standard_bytes: 0,
            overhead_archive_bytes: 0,
            overhead_monthly: 0.0,
            monthly: 0.0,
        });
        line.objects += 1;
        line.bytes += size;
        line.monthly += monthly;
        if class.needs_thaw() {
            line.overhead_standard_bytes += ARCHIVE_OVERHEAD_STANDARD_BYTES;
            line.overhead_archive_bytes += ARCHIVE_OVERHEAD_ARCHIVE_BYTES;
            line.overhead_monthly += ARCHIVE_OVERHEAD_STANDARD_BYTES as f64 / GB
                * pricing.storage_price(StorageClass::Standard)
                + ARCHIVE_OVERHEAD_ARCHIVE_BYTES as f64 / GB * pricing.storage_price(class);
        }
        monthly
    }
    fn lines(self) -> Vec<ClassLine> {
        self.0.into_values().collect()
    }
}

impl LedgerRequest<'_> {
    pub fn ledger(&self) -> CostLedger {
        let by_key: HashMap<&str, &StoredObject> =
            self.listing.iter().map(|o| (o.key.as_str(), o)).collect();
        let mut named: std::collections::HashSet<&str> = Default::default();
        let mut classes = ByClass::default();
        let mut missing = Vec::new();
        let mut datasets = Vec::new();
        for cat in self.catalogs {
            let layout = KeyLayout::new(self.prefix, &cat.dataset);
            let (chains, broken) = cat.chains();
            let mut line = DatasetLine {
                dataset: cat.dataset.clone(),
                objects: 0,
                bytes: 0,
                monthly: 0.0,
                chains: Vec::new(),
                broken_seqs: broken.iter().map(|m| m.seq).collect(),
                restore: None,
                restore_error: None,
            };
            let in_chains = chains.iter().map(|c| (c.links.clone(), true));
            let apart = broken.iter().map(|m| (vec![*m], false));
            for (links, is_chain) in in_chains.chain(apart).collect::<Vec<_>>() {
                let mut chain = ChainLine {
                    full_seq: links[0].seq,
                    newest_seq: links[links.len() - 1].seq,
                    backups: links.len() as u64,
                    objects: 0,
                    bytes: 0,
                    monthly: 0.0,
                    deletable_from: links[0].committed_at,
                };
                for m in &links {
                    for NamedObject { key, size, storage_class: fallback } in
                        m.named_objects(&layout)
                    {
                        // A key of another size is not the object the manifest names: it
                        // is missing, and what is there is counted as unnamed.
                        let Some((k, o)) = by_key
                            .get_key_value(key.as_str())
                            .filter(|(_, o)| size.is_none_or(|s| s == o.size))
                        else {
                            missing.push(key);
                            continue;
                        };
                        named.insert(*k);
                        let class = o.storage_class.unwrap_or(fallback);
                        let since = o.last_modified.unwrap_or(m.committed_at);
                        chain.objects += 1;
                        chain.bytes += o.size;
                        chain.monthly += classes.add(self.pricing, o.size, class);
                        chain.deletable_from =
                            chain.deletable_from.max(self.pricing.free_deletion_from(since, class));
                    }
                }
                line.objects += chain.objects;
                line.bytes += chain.bytes;
                line.monthly += chain.monthly;
                if is_chain {
                    line.chains.push(chain);
                }
            }
            match RestorePlan::new(self.prefix, cat, None) {
                Ok(p) => {
                    line.restore = Some(RestoreLine {
                        snapshot: p.snapshot.name.to_string(),
                        streams: p.steps.len() as u64,
                        quote: p.quote(self.pricing, self.restore_days),
                    })
                }
                Err(e) => line.restore_error = Some(e.to_string()),
            }
            datasets.push(line);
        }
        let mut unnamed_classes = ByClass::default();
        let mut unnamed = Vec::new();
        for o in self.listing.iter().filter(|o| !named.contains(o.key.as_str())) {
            let class = o.storage_class.unwrap_or(StorageClass::Standard);
            let monthly = unnamed_classes.add(self.pricing, o.size, class);
            unnamed.push(UnnamedObject {
                key: o.key.clone(),
                size: o.size,
                storage_class: class,
                monthly,
            });
        }
        let classes = classes.lines();
        let monthly = classes.iter().map(|c| c.monthly).sum::<f64>();
        let unnamed_monthly = unnamed.iter().map(|o| o.monthly).sum::<f64>();
        CostLedger {
            currency: self.pricing.currency.clone(),
            at: self.now,
            classes,
            monthly,
            datasets,
            unnamed_classes: unnamed_classes.lines(),
            unnamed,
            unnamed_monthly,
            missing,
            monthly_total: monthly + unnamed_monthly,
        }
    }
}
