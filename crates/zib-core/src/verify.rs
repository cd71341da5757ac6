//! Verify: reconciles a bucket's catalog with the bucket itself, without a download or a thaw
//! (`zibd verify`, `zibctl verify`). A backup nobody checks may have lost a chunk to a lifecycle
//! rule, a hand-run `aws s3 rm` or a replaced object; this finds it while the source still
//! exists, for the price of one LIST per 1,000 keys and one HEAD per chunk.
//!
//! zibd gathers the facts (the listing, the manifests, one HEAD per chunk); this decides what
//! they mean. A chunk is sound when its HEAD shows the manifest's size, its stored SHA-256 (the
//! additional checksum S3 verified at upload, or zib's metadata) equals the manifest's, and for
//! an adopted chunk (no SHA-256) the listing's ETag equals its MD5. Every backup must link by
//! GUID back to a full. A storage class other than the manifest's (a lifecycle rule moved the
//! object) is a warning: restore thaws by what each object's HEAD says. Objects under the
//! prefix that no manifest names are listed with their bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::manifest::Manifest;
use crate::names::{DatasetName, KeyLayout};
use crate::pricing::{Pricing, Quote, RestoreVolume};
use crate::restore_plan::RestorePlan;
use crate::storage_class::StorageClass;

/// Keys per LIST page (S3's maximum, which zib asks for).
pub const KEYS_PER_LIST_PAGE: u64 = 1000;

/// One object of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFacts {
    pub key: String,
    pub size: u64,
    /// As listed; None when the listing did not say.
    pub storage_class: Option<StorageClass>,
    /// The ETag without its quotes.
    pub etag: Option<String>,
}

/// What one HEAD of a chunk said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadFacts {
    Found {
        size: u64,
        /// Hex SHA-256 the server holds for the object, if any.
        sha256: Option<String>,
        /// None: STANDARD (S3 omits the header for it).
        storage_class: Option<StorageClass>,
    },
    /// 404.
    Missing,
    /// Any other failure of the HEAD, as text.
    Failed(String),
}

/// What a deep check (`--deep`: download and hash) found for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeepFacts {
    /// Downloaded whole and hashed: what the bytes are.
    Hashed {
        size: u64,
        sha256: String,
        /// For an adopted chunk (the manifest has its MD5).
        md5: Option<String>,
    },
    /// In an archive class and not readable now: not downloaded.
    Archived { thaw: ThawWait },
    /// The download failed, as text.
    Failed(String),
}

/// Where an archived chunk's thaw stands, for a deep check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThawWait {
    /// No thaw asked for (a deep check asks only with `--allow-thaw`).
    NotRequested,
    /// Asked for by this check.
    Requested,
    /// Asked for earlier, not done yet.
    InProgress,
}

/// What a deep check did, in sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepSummary {
    /// Chunks downloaded and hashed, and their bytes.
    pub hashed: u64,
    pub hashed_bytes: u64,
    /// Archived chunks not readable now, and their bytes; of those, thaws asked for now and
    /// still running from before.
    pub archived: u64,
    pub archived_bytes: u64,
    pub thaws_requested: u64,
    pub thaws_in_progress: u64,
    /// What thawing the archived chunks not yet asked for would cost (`--allow-thaw`).
    pub thaw_quote: Quote,
}

/// A manifest the catalog left out (unreadable, foreign, misfiled), by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFacts {
    pub key: String,
    pub dataset: DatasetName,
    pub reason: String,
}

/// Everything a verification looks at.
#[derive(Debug, Clone)]
pub struct VerifyRequest<'a> {
    pub prefix: &'a str,
    pub catalogs: &'a [Catalog],
    pub skipped: &'a [SkippedFacts],
    /// Every object under the listed prefix.
    pub listing: &'a [ListedFacts],
    /// One per chunk key the catalogs name (a key missing here counts as not checked).
    pub heads: &'a HashMap<String, HeadFacts>,
    /// A deep check's downloads, per chunk key; None: no deep check.
    pub deep: Option<&'a HashMap<String, DeepFacts>>,
    pub pricing: &'a Pricing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something a restore would need is gone or wrong.
    Error,
    /// Worth knowing; a restore still works.
    Warning,
}

/// What is wrong with one object or backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A chunk the manifest names is not in the bucket.
    MissingChunk,
    /// The object under the chunk's key has another size.
    WrongSize { expected: u64, found: u64 },
    /// The stored SHA-256 differs from the manifest's: the object was replaced.
    WrongChecksum { expected: String, found: String },
    /// An adopted chunk's ETag differs from the MD5 the manifest recorded.
    WrongMd5 { expected: String, found: String },
    /// The server holds no SHA-256 for the chunk (nor an ETag that is an MD5, for an adopted
    /// one): only its size could be checked.
    ChecksumUnavailable,
    /// The chunk's HEAD failed (access denied, a network error): not checked.
    NotChecked { reason: String },
    /// Stored in another class than the manifest's (a lifecycle rule?); restore thaws by what
    /// each object's HEAD says.
    OtherStorageClass { expected: StorageClass, found: StorageClass },
    /// The backup leads back to no full: its base's manifest is missing or unreadable.
    BrokenChain { base: Option<String> },
    /// The manifest could not be read and was left out of the catalog.
    UnreadableManifest { reason: String },
    /// Downloaded and hashed (`--deep`), the bytes are not the manifest's.
    BadContent { detail: String },
}

impl Finding {
    pub fn severity(&self) -> Severity {
        match self {
            Finding::ChecksumUnavailable | Finding::OtherStorageClass { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// One finding, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub severity: Severity,
    pub dataset: DatasetName,
    /// The backup (manifest seq) it belongs to, when known.
    pub seq: Option<u64>,
    pub key: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// One dataset's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVerify {
    pub dataset: DatasetName,
    pub backups: u64,
    pub chains: u64,
    pub chunks: u64,
    /// Chunks whose size and checksum (or MD5) matched.
    pub chunks_sound: u64,
    pub bytes: u64,
    /// The newest snapshot whose whole chain is sound, if any.
    pub newest_restorable: Option<String>,
    /// Why the newest backup's snapshot is not restorable, if it is not.
    pub newest_error: Option<String>,
    pub errors: u64,
    pub warnings: u64,
}

/// An object under the prefix that no manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnnamedObject {
    pub key: String,
    pub size: u64,
}

/// Requests the verification made, and what they cost at the price table's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestBill {
    pub list: u64,
    /// GETs of manifests.
    pub get: u64,
    pub head: u64,
    pub cost: f64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// No error-severity finding.
    pub clean: bool,
    pub datasets: Vec<DatasetVerify>,
    pub problems: Vec<Problem>,
    pub unnamed: Vec<UnnamedObject>,
    pub unnamed_bytes: u64,
    pub requests: RequestBill,
    /// Present after a deep check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep: Option<DeepSummary>,
}

/// The requests a verification of `listed` objects, `manifests` manifests and `chunks` chunks
/// makes, and their cost: the quote shown before, and the bill after.
pub fn request_bill(pricing: &Pricing, listed: u64, manifests: u64, chunks: u64) -> RequestBill {
    let list = listed.div_ceil(KEYS_PER_LIST_PAGE).max(1);
    let cost = list as f64 / 1000.0 * pricing.list_requests_per_1000
        + (manifests + chunks) as f64 / 1000.0 * pricing.get_requests_per_1000;
    RequestBill { list, get: manifests, head: chunks, cost, currency: pricing.currency.clone() }
}

impl VerifyRequest<'_> {
    pub fn verify(&self) -> VerifyReport {
        let by_key: HashMap<&str, &ListedFacts> =
            self.listing.iter().map(|o| (o.key.as_str(), o)).collect();
        let mut named: HashSet<&str> = HashSet::new();
        let mut problems = Vec::new();
        let mut datasets = Vec::new();
        let mut manifests = 0u64;
        let mut chunks_total = 0u64;
        for cat in self.catalogs {
            let layout = KeyLayout::new(self.prefix, &cat.dataset);
            let (chains, broken) = cat.chains();
            let mut line = DatasetVerify {
                dataset: cat.dataset.clone(),
                backups: cat.manifests.len() as u64,
                chains: chains.len() as u64,
                chunks: 0,
                chunks_sound: 0,
                bytes: 0,
                newest_restorable: None,
                newest_error: None,
                errors: 0,
                warnings: 0,
            };
            // Backups with an unsound chunk: a chain through them does not restore.
            let mut unsound: HashSet<u64> = HashSet::new();
            for m in &cat.manifests {
                manifests += 1;
                // Named by key whatever its size: a chunk of another size is reported as
                // replaced (below), not a second time as unnamed.
                for o in m.named_objects(&layout) {
                    if let Some((k, _)) = by_key.get_key_value(o.key.as_str()) {
                        named.insert(k);
                    }
                }
                for c in &m.chunks {
                    chunks_total += 1;
                    line.chunks += 1;
                    line.bytes += c.size;
                    let findings = self.check_chunk(m, c, by_key.get(c.key.as_str()).copied());
                    let sound = findings.iter().all(|f| f.severity() == Severity::Warning);
                    if sound {
                        line.chunks_sound += 1;
                    } else {
                        unsound.insert(m.seq);
                    }
                    for f in findings {
                        problems.push(Problem {
                            severity: f.severity(),
                            dataset: cat.dataset.clone(),
                            seq: Some(m.seq),
                            key: c.key.clone(),
                            finding: f,
                        });
                    }
                }
            }
            for m in &broken {
                problems.push(Problem {
                    severity: Severity::Error,
                    dataset: cat.dataset.clone(),
                    seq: Some(m.seq),
                    key: layout.manifest_key(m.seq, &m.to.name),
                    finding: Finding::BrokenChain {
                        base: m.from.as_ref().map(|b| b.name.as_str().to_owned()),
                    },
                });
            }
            // The newest snapshot whose chain is whole and sound.
            let mut newest: Vec<&Manifest> = cat.manifests.iter().collect();
            newest.sort_by_key(|m| std::cmp::Reverse(m.seq));
            for (i, m) in newest.iter().enumerate() {
                let verdict = match RestorePlan::new(self.prefix, cat, Some(&m.to.name)) {
                    Ok(p) => {
                        let bad: Vec<String> = p
                            .steps
                            .iter()
                            .filter(|s| unsound.contains(&s.seq))
                            .map(|s| format!("#{}", s.seq))
                            .collect();
                        match bad.len() {
                            0 => Ok(()),
                            1 => Err(format!("backup {} of its chain has a bad chunk", bad[0])),
                            _ => Err(format!(
                                "backups {} of its chain have bad chunks",
                                bad.join(", ")
                            )),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match verdict {
                    Ok(()) => {
                        line.newest_restorable = Some(m.to.name.as_str().to_owned());
                        break;
                    }
                    Err(e) if i == 0 => line.newest_error = Some(e),
                    Err(_) => {}
                }
            }
            datasets.push(line);
        }
        for s in self.skipped {
            manifests += 1;
            if let Some((k, _)) = by_key.get_key_value(s.key.as_str()) {
                named.insert(k);
            }
            problems.push(Problem {
                severity: Severity::Error,
                dataset: s.dataset.clone(),
                seq: None,
                key: s.key.clone(),
                finding: Finding::UnreadableManifest { reason: s.reason.clone() },
            });
        }
        for p in &problems {
            if let Some(d) = datasets.iter_mut().find(|d| d.dataset == p.dataset) {
                match p.severity {
                    Severity::Error => d.errors += 1,
                    Severity::Warning => d.warnings += 1,
                }
            }
        }
        let unnamed: Vec<UnnamedObject> = self
            .listing
            .iter()
            .filter(|o| !named.contains(o.key.as_str()))
            .map(|o| UnnamedObject { key: o.key.clone(), size: o.size })
            .collect();
        let unnamed_bytes = unnamed.iter().map(|o| o.size).sum();
        problems.sort_by(|a, b| {
            (a.severity, &a.dataset, a.seq, &a.key).cmp(&(b.severity, &b.dataset, b.seq, &b.key))
        });
        VerifyReport {
            clean: problems.iter().all(|p| p.severity == Severity::Warning),
            datasets,
            problems,
            unnamed,
            unnamed_bytes,
            deep: self.deep_summary(),
            requests: request_bill(
                self.pricing,
                self.listing.len() as u64,
                manifests,
                chunks_total,
            ),
        }
    }

    fn check_chunk(
        &self,
        m: &Manifest,
        c: &crate::manifest::ChunkRecord,
        listed: Option<&ListedFacts>,
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        let (size, sha256, class) = match self.heads.get(&c.key) {
            Some(HeadFacts::Found { size, sha256, storage_class }) => {
                (*size, sha256.clone(), storage_class.unwrap_or(StorageClass::Standard))
            }
            Some(HeadFacts::Missing) => return vec![Finding::MissingChunk],
            Some(HeadFacts::Failed(reason)) => {
                return vec![Finding::NotChecked { reason: reason.clone() }];
            }
            None => match listed {
                // Not asked (should not happen): what the listing says, checksum unknown.
                None => return vec![Finding::MissingChunk],
                Some(l) => (l.size, None, l.storage_class.unwrap_or(StorageClass::Standard)),
            },
        };
        if size != c.size {
            out.push(Finding::WrongSize { expected: c.size, found: size });
        }
        if let Some(md5) = &c.md5 {
            match listed.and_then(|l| l.etag.as_deref()).filter(|e| !e.contains('-')) {
                Some(etag) if etag.eq_ignore_ascii_case(md5) => {}
                Some(etag) => {
                    out.push(Finding::WrongMd5 { expected: md5.clone(), found: etag.to_owned() })
                }
                None => out.push(Finding::ChecksumUnavailable),
            }
        } else {
            match sha256 {
                Some(h) if h.eq_ignore_ascii_case(&c.sha256) => {}
                Some(h) => {
                    out.push(Finding::WrongChecksum { expected: c.sha256.clone(), found: h })
                }
                None => out.push(Finding::ChecksumUnavailable),
            }
        }
        if class != m.storage_class {
            out.push(Finding::OtherStorageClass { expected: m.storage_class, found: class });
        }
        match self.deep.and_then(|d| d.get(&c.key)) {
            Some(DeepFacts::Hashed { size, sha256, md5 }) => {
                let detail = if *size != c.size {
                    Some(format!("{size} bytes downloaded, the manifest says {}", c.size))
                } else if let Some(want) = &c.md5 {
                    let got = md5.as_deref().unwrap_or("none");
                    (!got.eq_ignore_ascii_case(want))
                        .then(|| format!("the bytes' MD5 is {got}, the manifest's {want}"))
                } else {
                    (!sha256.eq_ignore_ascii_case(&c.sha256)).then(|| {
                        format!("the bytes' SHA-256 is {sha256}, the manifest's {}", c.sha256)
                    })
                };
                out.extend(detail.map(|detail| Finding::BadContent { detail }));
            }
            Some(DeepFacts::Failed(reason)) => {
                out.push(Finding::NotChecked { reason: format!("download: {reason}") })
            }
            Some(DeepFacts::Archived { .. }) | None => {}
        }
        out
    }

    /// The deep check's sums, when there was one.
    fn deep_summary(&self) -> Option<DeepSummary> {
        let deep = self.deep?;
        let sizes: HashMap<&str, u64> = self
            .catalogs
            .iter()
            .flat_map(|c| &c.manifests)
            .flat_map(|m| &m.chunks)
            .map(|c| (c.key.as_str(), c.size))
            .collect();
        let (mut hashed, mut hashed_bytes, mut archived, mut archived_bytes) = (0, 0, 0, 0);
        let (mut thaws_requested, mut thaws_in_progress) = (0, 0);
        let mut unasked = RestoreVolume::default();
        for (key, facts) in deep {
            let size = sizes.get(key.as_str()).copied().unwrap_or(0);
            match facts {
                DeepFacts::Hashed { size, .. } => {
                    hashed += 1;
                    hashed_bytes += size;
                }
                DeepFacts::Archived { thaw } => {
                    archived += 1;
                    archived_bytes += size;
                    match thaw {
                        ThawWait::Requested => thaws_requested += 1,
                        ThawWait::InProgress => thaws_in_progress += 1,
                        ThawWait::NotRequested => {
                            unasked.objects += 1;
                            unasked.bytes += size;
                            unasked.archived_objects += 1;
                            unasked.archived_bytes += size;
                        }
                    }
                }
                DeepFacts::Failed(_) => {}
            }
        }
        Some(DeepSummary {
            hashed,
            hashed_bytes,
            archived,
            archived_bytes,
            thaws_requested,
            thaws_in_progress,
            // A thawed copy is read once, right away: one day of it is billed.
            thaw_quote: self.pricing.quote(&unasked, 1),
        })
    }
}

/// Counts of findings per kind, for a summary line.
pub fn finding_counts(problems: &[Problem]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for p in problems {
        let name = match p.finding {
            Finding::MissingChunk => "missing chunk",
            Finding::WrongSize { .. } => "wrong size",
            Finding::WrongChecksum { .. } => "wrong checksum",
            Finding::WrongMd5 { .. } => "wrong MD5",
            Finding::ChecksumUnavailable => "no stored checksum",
            Finding::NotChecked { .. } => "not checked",
            Finding::OtherStorageClass { .. } => "other storage class",
            Finding::BrokenChain { .. } => "broken chain",
            Finding::UnreadableManifest { .. } => "unreadable manifest",
            Finding::BadContent { .. } => "bad content",
        };
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
#[path = "verify_cases.rs"]
mod cases;
