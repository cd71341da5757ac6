//! `zibd verify` and `zibctl verify`: one listing, the manifests and one HEAD per chunk handed
//! to `zib_core::verify`, which decides what is sound; here only the gathering and the text.
//! Nothing is downloaded or thawed, so a DEEP_ARCHIVE bucket can be checked every week for a
//! few cents. `--deep` also downloads and hashes every chunk readable without a thaw (bounded
//! parallelism, nothing written to disk); archived chunks are quoted, and thawed only with
//! `--allow-thaw` (the thaws are asked for and the check ends: run it again once they are
//! ready, when those chunks are hashed too).

use std::collections::HashMap;
use std::fmt::Write as _;

use futures::StreamExt as _;
use zib_core::{
    DatasetName,
    human::{count, human_bytes},
    manifest::ChunkRecord,
    pricing::RestoreTier,
    pricing::{Pricing, format_money},
    verify::{
        DeepFacts, Finding, HeadFacts, ListedFacts, RequestBill, Severity, SkippedFacts, ThawWait,
        VerifyReport, VerifyRequest, finding_counts, request_bill,
    },
};

use crate::restore::{RestoreError, load_catalog_and_listing};
use crate::s3::{ObjectHead, S3Error, S3ErrorKind, S3Store, ThawState, thaw_state};

/// HEADs in flight at once.
pub const HEADS_AT_ONCE: usize = 16;
/// Chunk downloads in flight at once in a deep check (each streams through a hash, no spool).
pub const DOWNLOADS_AT_ONCE: usize = 4;

/// A deep check: download and hash what is readable; thaw archived chunks with this tier
/// (`allow_thaw`) or only quote them (None).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepOptions {
    pub allow_thaw: Option<RestoreTier>,
    /// Days a thawed copy stays readable.
    pub thaw_days: u32,
}

/// The result and where it was read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyOutcome {
    pub bucket: String,
    pub prefix: String,
    pub dataset: Option<DatasetName>,
    /// What the checks were quoted at once the listing and manifests were read (before the
    /// HEADs); `report.requests` is what was made.
    pub quote: RequestBill,
    pub report: VerifyReport,
}

/// Lists `prefix` (only `dataset`'s root when given), reads its manifests, HEADs every chunk
/// they name and reconciles.
pub async fn verify(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
    pricing: &Pricing,
    deep: Option<DeepOptions>,
) -> Result<VerifyOutcome, RestoreError> {
    let (cat, listing) = load_catalog_and_listing(s3, prefix, dataset, None).await?;
    let keys: Vec<String> = cat
        .datasets
        .iter()
        .flat_map(|c| &c.manifests)
        .flat_map(|m| &m.chunks)
        .map(|c| c.key.clone())
        .collect();
    let manifests =
        cat.datasets.iter().map(|c| c.manifests.len()).sum::<usize>() + cat.skipped.len();
    let quote = request_bill(pricing, listing.len() as u64, manifests as u64, keys.len() as u64);
    tracing::info!(
        bucket = %cat.bucket,
        prefix = %cat.prefix,
        chunks = keys.len(),
        cost = %format_money(quote.cost, &quote.currency),
        "checking every chunk with a HEAD (nothing is downloaded or thawed)"
    );
    let heads: Vec<(String, Result<ObjectHead, S3Error>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let h = s3.head(&key).await;
            (key, h)
        })
        .buffer_unordered(HEADS_AT_ONCE)
        .collect()
        .await;
    let deep_facts = match deep {
        Some(o) => Some(deep_check(s3, &cat.datasets, &heads, o).await),
        None => None,
    };
    let heads: HashMap<String, HeadFacts> = heads
        .into_iter()
        .map(|(key, h)| {
            let facts = match h {
                Ok(h) => HeadFacts::Found {
                    size: h.size,
                    sha256: h.sha256,
                    storage_class: h.storage_class.as_deref().and_then(|c| c.parse().ok()),
                },
                Err(e) if e.kind() == S3ErrorKind::NotFound => HeadFacts::Missing,
                Err(e) => HeadFacts::Failed(e.to_string()),
            };
            (key, facts)
        })
        .collect();
    let listed: Vec<ListedFacts> = listing
        .iter()
        .map(|o| ListedFacts {
            key: o.key.clone(),
            size: o.size,
            storage_class: o.storage_class.as_deref().and_then(|c| c.parse().ok()),
            etag: o.etag.as_deref().map(|e| e.trim_matches('"').to_owned()),
        })
        .collect();
    let skipped: Vec<SkippedFacts> = cat
        .skipped
        .iter()
        .map(|s| SkippedFacts {
            key: s.key.clone(),
            dataset: s.dataset.clone(),
            reason: s.reason.clone(),
        })
        .collect();
    let report = VerifyRequest {
        prefix: &cat.prefix,
        catalogs: &cat.datasets,
        skipped: &skipped,
        listing: &listed,
        heads: &heads,
        deep: deep_facts.as_ref(),
        pricing,
    }
    .verify();
    Ok(VerifyOutcome {
        bucket: cat.bucket,
        prefix: cat.prefix,
        dataset: dataset.cloned(),
        quote,
        report,
    })
}

/// Downloads and hashes every chunk whose HEAD found it readable now; archived ones are
/// thawed (`allow_thaw`) or left, as the facts say.
async fn deep_check(
    s3: &S3Store,
    catalogs: &[zib_core::catalog::Catalog],
    heads: &[(String, Result<ObjectHead, S3Error>)],
    o: DeepOptions,
) -> HashMap<String, DeepFacts> {
    let chunks: HashMap<&str, &ChunkRecord> = catalogs
        .iter()
        .flat_map(|c| &c.manifests)
        .flat_map(|m| &m.chunks)
        .map(|c| (c.key.as_str(), c))
        .collect();
    let todo: Vec<(&str, &ObjectHead, &ChunkRecord)> = heads
        .iter()
        .filter_map(|(k, h)| Some((k.as_str(), h.as_ref().ok()?, *chunks.get(k.as_str())?)))
        .collect();
    tracing::info!(chunks = todo.len(), "deep check: downloading and hashing what is readable");
    // Futures collected first (not mapped lazily): keeps the daemon's future provably Send.
    let futs: Vec<_> =
        todo.into_iter().map(|(key, head, c)| deep_one(s3, key, head, c, o)).collect();
    futures::stream::iter(futs).buffer_unordered(DOWNLOADS_AT_ONCE).collect().await
}

async fn deep_one(
    s3: &S3Store,
    key: &str,
    head: &ObjectHead,
    chunk: &ChunkRecord,
    o: DeepOptions,
) -> (String, DeepFacts) {
    let facts = match thaw_state(head) {
        ThawState::NotArchived | ThawState::Ready { .. } => hash_chunk(s3, chunk).await,
        ThawState::InProgress => DeepFacts::Archived { thaw: ThawWait::InProgress },
        ThawState::NotRequested => match o.allow_thaw {
            None => DeepFacts::Archived { thaw: ThawWait::NotRequested },
            Some(tier) => {
                let days = i32::try_from(o.thaw_days).unwrap_or(i32::MAX);
                match s3.request_thaw(key, tier, days).await {
                    Ok(()) => DeepFacts::Archived { thaw: ThawWait::Requested },
                    Err(e) => DeepFacts::Failed(format!("asking for a thaw: {e}")),
                }
            }
        },
    };
    (key.to_owned(), facts)
}

/// GETs the chunk through a SHA-256 (and an MD5 for an adopted chunk); nothing is kept.
async fn hash_chunk(s3: &S3Store, c: &ChunkRecord) -> DeepFacts {
    use sha2::Digest as _;
    let body = match s3.get(&c.key).await {
        Ok(b) => b,
        Err(e) => return DeepFacts::Failed(e.to_string()),
    };
    let mut body = body.into_async_read();
    let mut sha = sha2::Sha256::new();
    let mut md5 = c.md5.as_ref().map(|_| <md5::Md5 as md5::Digest>::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match s3.read_body(&mut body, &mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                sha.update(&buf[..n]);
                if let Some(m) = md5.as_mut() {
                    md5::Digest::update(m, &buf[..n]);
                }
                size += n as u64;
            }
            Err(e) => {
                return DeepFacts::Failed(format!("reading s3://{}/{}: {e}", s3.bucket(), c.key));
            }
        }
    }
    DeepFacts::Hashed {
        size,
        sha256: hex::encode(sha.finalize()),
        md5: md5.map(|m| hex::encode(md5::Digest::finalize(m))),
    }
}

fn describe(f: &Finding) -> String {
    match f {
        Finding::MissingChunk => "missing: the chunk is not in the bucket".into(),
        Finding::WrongSize { expected, found } => {
            format!("wrong size: {found} bytes stored, the manifest says {expected}")
        }
        Finding::WrongChecksum { expected, found } => {
            format!("replaced: stored SHA-256 {found}, the manifest's is {expected}")
        }
        Finding::WrongMd5 { expected, found } => {
            format!("replaced: ETag {found}, the adopted chunk's MD5 is {expected}")
        }
        Finding::ChecksumUnavailable => "no stored checksum: only the size could be checked".into(),
        Finding::NotChecked { reason } => format!("not checked: {reason}"),
        Finding::OtherStorageClass { expected, found } => format!(
            "stored as {}, the manifest says {} (a lifecycle rule?); restore thaws by what the object says",
            found.as_str(),
            expected.as_str()
        ),
        Finding::BrokenChain { base } => format!(
            "broken chain: no manifest of its base{} leads back to a full",
            base.as_ref().map(|b| format!(" {b}")).unwrap_or_default()
        ),
        Finding::UnreadableManifest { reason } => format!("unreadable manifest: {reason}"),
        Finding::BadContent { detail } => format!("bad content (downloaded and hashed): {detail}"),
    }
}

/// The report for people.
pub fn format_verify(o: &VerifyOutcome) -> String {
    let r = &o.report;
    let mut s = String::new();
    let verdict = if r.clean { "clean" } else { "PROBLEMS FOUND" };
    let _ = writeln!(
        s,
        "verify s3://{}/{}{}: {verdict}",
        o.bucket,
        o.prefix,
        o.dataset.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    );
    for d in &r.datasets {
        let newest = match (&d.newest_restorable, &d.newest_error) {
            (Some(n), None) => format!("newest snapshot {n} restorable"),
            (Some(n), Some(e)) => {
                format!("newest restorable snapshot {n} (the newest is not: {e})")
            }
            (None, Some(e)) => format!("NOTHING RESTORABLE: {e}"),
            (None, None) => "no backups".into(),
        };
        let _ = writeln!(
            s,
            "  {}: {} in {}, {}/{} chunks sound ({}); {newest}",
            d.dataset,
            count(d.backups, "backup", "backups"),
            count(d.chains, "chain", "chains"),
            d.chunks_sound,
            d.chunks,
            human_bytes(d.bytes),
        );
    }
    if !r.problems.is_empty() {
        let counts: Vec<String> =
            finding_counts(&r.problems).into_iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(s, "problems: {}", counts.join(", "));
        for p in &r.problems {
            let level = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let seq = p.seq.map(|q| format!(" backup #{q}")).unwrap_or_default();
            let _ =
                writeln!(s, "  {level}: {}{seq}: {}: {}", p.dataset, p.key, describe(&p.finding));
        }
    }
    if !r.unnamed.is_empty() {
        let _ = writeln!(
            s,
            "{} under the prefix no manifest names ({}; abandoned attempts or other tools' files; `zibd prune --dry-run` shows which may go):",
            count(r.unnamed.len() as u64, "object", "objects"),
            human_bytes(r.unnamed_bytes)
        );
        for u in r.unnamed.iter().take(20) {
            let _ = writeln!(s, "  {} ({})", u.key, human_bytes(u.size));
        }
        if r.unnamed.len() > 20 {
            let _ = writeln!(s, "  ... and {} more (--json lists all)", r.unnamed.len() - 20);
        }
    }
    let q = &r.requests;
    let _ = writeln!(
        s,
        "requests: {} LIST, {} GET, {} HEAD: {}{}",
        q.list,
        q.get,
        q.head,
        format_money(q.cost, &q.currency),
        if r.deep.is_some() { "" } else { " (nothing downloaded or thawed)" }
    );
    if let Some(d) = &r.deep {
        let _ = writeln!(
            s,
            "deep check: {} downloaded and hashed ({})",
            count(d.hashed, "chunk", "chunks"),
            human_bytes(d.hashed_bytes)
        );
        if d.archived > 0 {
            let _ = writeln!(
                s,
                "  {} ({}) archived and not readable now",
                count(d.archived, "chunk", "chunks"),
                human_bytes(d.archived_bytes)
            );
        }
        let unasked = d.archived - d.thaws_requested - d.thaws_in_progress;
        if unasked > 0 {
            let t = d.thaw_quote.tier(RestoreTier::Bulk);
            let _ = writeln!(
                s,
                "  thawing the {} not asked for costs {} (bulk, within {} h): `--allow-thaw` asks for it",
                count(unasked, "chunk", "chunks"),
                format_money(t.total, &d.thaw_quote.currency),
                t.ready_within_hours
            );
        }
        if d.thaws_requested + d.thaws_in_progress > 0 {
            let _ = writeln!(
                s,
                "  {} asked for now, {} still running: run `zibd verify --deep` again once they are ready",
                count(d.thaws_requested, "thaw", "thaws"),
                d.thaws_in_progress
            );
        }
    }
    s
}
