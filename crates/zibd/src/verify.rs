//! `zibd verify` and `zibctl verify`: one listing, the manifests and one HEAD per chunk handed
//! to `zib_core::verify`, which decides what is sound; here only the gathering and the text.
//! Nothing is downloaded or thawed, so a DEEP_ARCHIVE bucket can be checked every week for a
//! few cents.

use std::collections::HashMap;
use std::fmt::Write as _;

use futures::StreamExt as _;
use zib_core::{
    DatasetName,
    human::{count, human_bytes},
    pricing::{Pricing, format_money},
    verify::{
        Finding, HeadFacts, ListedFacts, RequestBill, Severity, SkippedFacts, VerifyReport,
        VerifyRequest, finding_counts, request_bill,
    },
};

use crate::restore::{RestoreError, load_catalog_and_listing};
use crate::s3::{S3ErrorKind, S3Store};

/// HEADs in flight at once.
pub const HEADS_AT_ONCE: usize = 16;

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
    let heads: HashMap<String, HeadFacts> = futures::stream::iter(keys)
        .map(|key| async move {
            let facts = match s3.head(&key).await {
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
        .buffer_unordered(HEADS_AT_ONCE)
        .collect()
        .await;
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
        "requests: {} LIST, {} GET, {} HEAD: {} (nothing downloaded or thawed)",
        q.list,
        q.get,
        q.head,
        format_money(q.cost, &q.currency)
    );
    s
}
