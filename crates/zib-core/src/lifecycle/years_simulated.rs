//! Two simulated years of daily backups of a growing photo dataset, re-baseline and retention
//! together, on a simulated clock: chains stay bounded, nothing goes before 180 days, the
//! newest chain is always restorable, and the figures (PUTs, objects, bytes, monthly cost) are
//! printed (`cargo test -p zib-core years -- --nocapture`).

use chrono::TimeDelta;

use super::rebaseline::{ChainSummary, RebaselinePolicy};
use super::retention::{PruneRequest, RetentionPolicy, StoredObject};
use super::retention_cases::{layout, manifest, t};
use crate::catalog::Catalog;
use crate::config::{MAX_CHUNK_SIZE, StorageClass};
use crate::manifest::Manifest;
use crate::names::DatasetName;
use crate::pricing::Pricing;

const GIB: u64 = 1 << 30;

struct Figures {
    puts: u64,
    fulls: Vec<u64>,
    longest_chain: u64,
    deleted_objects: u64,
    early_charge: f64,
    most_chains: usize,
}

/// Chunk sizes of a stream of `size` bytes in 5 GB chunks.
fn split(size: u64) -> Vec<u64> {
    let mut v = vec![MAX_CHUNK_SIZE; (size / MAX_CHUNK_SIZE) as usize];
    if !size.is_multiple_of(MAX_CHUNK_SIZE) {
        v.push(size % MAX_CHUNK_SIZE);
    }
    v
}

#[test]
fn two_years_of_daily_backups_stay_bounded_and_cheap() {
    let ds = DatasetName::new("tank/photos").unwrap();
    let l = layout();
    let pricing = Pricing::default();
    let rebaseline = RebaselinePolicy::default(); // 365 links, ratio 1.0, every 180 days
    let retention = RetentionPolicy { keep_chains: Some(2), keep_within: None };
    let da = StorageClass::DeepArchive;
    // 500 GiB of photos on day 0, 1 GiB more every day.
    let mut dataset_size = 500 * GIB;
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut listing: Vec<StoredObject> = Vec::new();
    let mut f = Figures {
        puts: 0,
        fulls: vec![],
        longest_chain: 0,
        deleted_objects: 0,
        early_charge: 0.0,
        most_chains: 0,
    };
    let start = t("2026-01-01T03:00:00Z");
    for day in 0..730i64 {
        let now = start + TimeDelta::days(day);
        let cat = Catalog::new(ds.clone(), manifests.clone());
        let chain = cat.chain_to(None).ok();
        let summary = chain.as_deref().and_then(ChainSummary::from_chain);
        let decision = rebaseline.decide(summary.as_ref(), now, false);
        let seq = day as u64 + 1;
        let (from, size) = if decision.is_full() {
            f.fulls.push(day as u64);
            (None, dataset_size)
        } else {
            (Some(seq - 1), GIB)
        };
        let m = manifest(seq, from, now, da, &split(size));
        f.puts += m.chunks.len() as u64 + 1;
        listing.push(StoredObject {
            key: l.manifest_key(seq, &m.to.name),
            size: 4000,
            storage_class: Some(StorageClass::Standard),
            last_modified: Some(now),
        });
        for c in &m.chunks {
            listing.push(StoredObject {
                key: c.key.clone(),
                size: c.size,
                storage_class: Some(da),
                last_modified: Some(now),
            });
        }
        manifests.push(m);
        dataset_size += GIB;

        // Retention after the backup, as the daemon does (never early deletion).
        let cat = Catalog::new(ds.clone(), manifests.clone());
        let plan = PruneRequest {
            catalog: &cat,
            layout: &l,
            listing: &listing,
            policy: retention,
            pricing: &pricing,
            now,
            allow_early_deletion: false,
            in_progress: None,
        }
        .plan();
        for d in &plan.deletions {
            assert!(d.age_days >= 180.0, "day {day}: {d:?}");
        }
        f.deleted_objects += plan.objects;
        f.early_charge += plan.early_deletion_charge;
        let gone: std::collections::HashSet<&str> =
            plan.deletions.iter().map(|d| d.key.as_str()).collect();
        listing.retain(|o| !gone.contains(o.key.as_str()));
        manifests.retain(|m| !gone.contains(l.manifest_key(m.seq, &m.to.name).as_str()));

        let cat = Catalog::new(ds.clone(), manifests.clone());
        let newest = cat.chain_to(None).expect("the newest backup is always restorable");
        f.longest_chain = f.longest_chain.max(newest.len() as u64);
        let (chains, broken) = cat.chains();
        assert!(broken.is_empty());
        f.most_chains = f.most_chains.max(chains.len());
    }
    let stored: u64 = listing.iter().map(|o| o.size).sum();
    let monthly: f64 =
        listing.iter().map(|o| pricing.monthly_storage(o.size, o.storage_class.unwrap())).sum();
    println!(
        "730 days: {} PUTs, fulls on days {:?}, longest chain {} streams, at most {} chains, {} objects deleted, \
         at the end {} objects / {:.1} GiB stored, ${monthly:.4}/month, early-deletion charges ${:.2}",
        f.puts,
        f.fulls,
        f.longest_chain,
        f.most_chains,
        f.deleted_objects,
        listing.len(),
        stored as f64 / GIB as f64,
        f.early_charge,
    );
    // Re-baselines only by full_every (180 days): the ratio needs 500+ GiB of incrementals.
    assert_eq!(f.fulls, vec![0, 180, 360, 540, 720]);
    assert_eq!(f.longest_chain, 180);
    // The full of day 180k arrives when the chain before the previous one is 181 days old.
    assert_eq!(f.most_chains, 2);
    assert_eq!(f.early_charge, 0.0);
    // Kept at the end: the chain of day 540 (180 streams) and of day 720 (10 streams).
    let days_kept: Vec<u64> = manifests.iter().map(|m| m.seq - 1).collect();
    assert_eq!(days_kept, (540..730).collect::<Vec<_>>());
    // Hand-computed bytes: full of day 540 (1040 GiB) + 179 x 1 GiB, full of day 720 (1220
    // GiB) + 9 x 1 GiB, plus 190 manifests of 4000 bytes.
    assert_eq!(stored, (1040 + 179 + 1220 + 9) * GIB + 190 * 4000);
}
