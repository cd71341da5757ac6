//! Retention invariants on generated catalogs and listings.

use std::collections::{HashMap, HashSet};

use chrono::TimeDelta;
use proptest::prelude::*;

use super::retention::*;
use super::retention_cases::{layout, listing_of, manifest, t};
use crate::catalog::Catalog;
use crate::manifest::Manifest;
use crate::names::{DatasetName, SnapName};
use crate::period::Period;
use crate::pricing::Pricing;
use crate::storage_class::StorageClass;

/// One generated backup: full or incremental from an earlier seq (usually the previous one).
#[derive(Debug, Clone)]
struct Gen {
    full: bool,
    base_back: u64,
    gap_days: i64,
    class: usize,
    chunks: usize,
    lose_chunk: bool,
    abandoned: bool,
    unknown_time: bool,
}

fn gen_backup() -> impl Strategy<Value = Gen> {
    (any::<u8>(), 1u64..3, 0i64..60, 0usize..4, 1usize..3, any::<u8>(), any::<u8>(), any::<u8>())
        .prop_map(|(f, base_back, gap_days, class, chunks, lose, ab, unk)| Gen {
            full: f < 50,
            base_back,
            gap_days,
            class,
            chunks,
            lose_chunk: lose < 8,
            abandoned: ab < 40,
            unknown_time: unk < 20,
        })
}

const CLASSES: [StorageClass; 4] = [
    StorageClass::DeepArchive,
    StorageClass::Glacier,
    StorageClass::StandardIa,
    StorageClass::Standard,
];

struct World {
    manifests: Vec<Manifest>,
    listing: Vec<StoredObject>,
}

fn build(gens: &[Gen]) -> World {
    let l = layout();
    let mut at = t("2024-01-01T00:00:00Z");
    let mut ms: Vec<Manifest> = Vec::new();
    let mut extra = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let seq = i as u64 + 1;
        at += TimeDelta::days(g.gap_days) + TimeDelta::hours(1);
        let from = (!g.full && seq > 1).then(|| seq.saturating_sub(g.base_back).max(1));
        let sizes: Vec<u64> = (0..g.chunks).map(|c| 1000 + c as u64).collect();
        ms.push(manifest(seq, from, at, CLASSES[g.class], &sizes));
        if g.abandoned {
            let snap = SnapName::new(&format!("s{seq}")).unwrap();
            extra.push(StoredObject {
                key: l.chunk_key(seq, &snap, 1, 0),
                size: 7,
                storage_class: Some(CLASSES[g.class]),
                last_modified: (!g.unknown_time).then_some(at - TimeDelta::hours(1)),
            });
        }
    }
    let mut listing = listing_of(&ms);
    for (g, m) in gens.iter().zip(&ms) {
        if g.lose_chunk {
            listing.retain(|o| o.key != m.chunks[0].key);
        }
        if g.unknown_time {
            for o in listing.iter_mut().filter(|o| o.key.contains(&format!("{:06}-", m.seq))) {
                o.last_modified = None;
                o.storage_class = None;
            }
        }
    }
    listing.extend(extra);
    World { manifests: ms, listing }
}

fn catalog(ms: &[Manifest]) -> Catalog {
    Catalog::new(DatasetName::new("tank/photos").unwrap(), ms.to_vec())
}

/// Manifests whose whole chain (every manifest and chunk) is in `keys`.
fn restorable(ms: &[Manifest], keys: &HashSet<String>) -> HashSet<u64> {
    let l = layout();
    let present: Vec<Manifest> =
        ms.iter().filter(|m| keys.contains(&l.manifest_key(m.seq, &m.to.name))).cloned().collect();
    let cat = catalog(&present);
    present
        .iter()
        .filter(|m| {
            cat.chain_to(Some(&m.to.name)).is_ok_and(|chain| {
                chain.iter().all(|c| c.chunks.iter().all(|ch| keys.contains(&ch.key)))
            })
        })
        .map(|m| m.seq)
        .collect()
}

fn request<'a>(
    cat: &'a Catalog,
    l: &'a crate::names::KeyLayout,
    listing: &'a [StoredObject],
    pricing: &'a Pricing,
    policy: RetentionPolicy,
    now_days: i64,
    allow: bool,
) -> PruneRequest<'a> {
    PruneRequest {
        catalog: cat,
        layout: l,
        listing,
        policy,
        pricing,
        now: t("2024-01-01T00:00:00Z") + TimeDelta::days(now_days),
        allow_early_deletion: allow,
        in_progress: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plans_are_safe_ordered_and_resumable(
        gens in prop::collection::vec(gen_backup(), 1..25),
        keep_chains in prop::option::of(1u32..4),
        keep_within in prop::option::of(1u32..400),
        now_days in 0i64..1500,
        allow in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let w = build(&gens);
        let l = layout();
        let pricing = Pricing::default();
        let cat = catalog(&w.manifests);
        let policy = RetentionPolicy { keep_chains, keep_within: keep_within.map(Period::days) };
        let req = request(&cat, &l, &w.listing, &pricing, policy, now_days, allow);
        let plan = req.plan();
        let listed: HashMap<&str, &StoredObject> = w.listing.iter().map(|o| (o.key.as_str(), o)).collect();

        // Only listed keys, each once.
        let mut seen = HashSet::new();
        for d in &plan.deletions {
            prop_assert!(listed.contains_key(d.key.as_str()), "{} is not listed", d.key);
            prop_assert!(seen.insert(d.key.clone()), "{} twice", d.key);
        }

        // The newest complete chain is never touched.
        let all: HashSet<String> = w.listing.iter().map(|o| o.key.clone()).collect();
        let (chains, _) = cat.chains();
        let complete = |c: &crate::catalog::Chain<'_>| c.links.iter().all(|m| {
            all.contains(&l.manifest_key(m.seq, &m.to.name))
                && m.chunks.iter().all(|ch| listed.get(ch.key.as_str()).is_some_and(|o| o.size == ch.size))
        });
        if let Some(newest) = chains.iter().rev().find(|c| complete(c)) {
            for m in &newest.links {
                prop_assert!(!seen.contains(&l.manifest_key(m.seq, &m.to.name)));
                for ch in &m.chunks {
                    prop_assert!(!seen.contains(&ch.key), "newest complete chain's {} planned", ch.key);
                }
            }
        }

        // No chunk goes while its manifest stays, and the manifest goes first.
        let pos: HashMap<&str, usize> = plan.deletions.iter().enumerate().map(|(i, d)| (d.key.as_str(), i)).collect();
        for m in &w.manifests {
            let mpos = pos.get(l.manifest_key(m.seq, &m.to.name).as_str());
            for ch in &m.chunks {
                if let Some(cpos) = pos.get(ch.key.as_str()) {
                    prop_assert!(mpos.is_some_and(|mp| mp < cpos), "chunk {} before/without its manifest", ch.key);
                }
            }
        }

        // Without the allowance nothing younger than its minimum storage duration goes, and
        // nothing is charged.
        if !allow {
            for d in &plan.deletions {
                prop_assert!(d.age_days >= f64::from(pricing.min_storage_days(d.storage_class)), "{d:?}");
            }
            prop_assert_eq!(plan.early_deletion_charge, 0.0);
        }
        if !policy.is_configured() {
            prop_assert!(plan.deletions.iter().all(|d| d.kind == DeletionKind::Abandoned));
        }

        // Interrupted after any step, every manifest still listed that was restorable is
        // restorable still, and a fresh plan deletes nothing the first did not.
        let k = cut.index(plan.deletions.len() + 1);
        let gone: HashSet<&str> = plan.deletions[..k].iter().map(|d| d.key.as_str()).collect();
        let left_keys: HashSet<String> = all.iter().filter(|k| !gone.contains(k.as_str())).cloned().collect();
        let before = restorable(&w.manifests, &all);
        let after = restorable(&w.manifests, &left_keys);
        for seq in &before {
            let key = l.manifest_key(*seq, &SnapName::new(&format!("s{seq}")).unwrap());
            if left_keys.contains(&key) {
                prop_assert!(after.contains(seq), "seq {seq} listed but no longer restorable after {k} steps");
            }
        }
        let left: Vec<StoredObject> = w.listing.iter().filter(|o| !gone.contains(o.key.as_str())).cloned().collect();
        let left_manifests: Vec<Manifest> = w.manifests.iter().filter(|m| left_keys.contains(&l.manifest_key(m.seq, &m.to.name))).cloned().collect();
        let cat2 = catalog(&left_manifests);
        let again = request(&cat2, &l, &left, &pricing, policy, now_days, allow).plan();
        let planned: HashSet<&str> = plan.deletions.iter().map(|d| d.key.as_str()).collect();
        for d in &again.deletions {
            prop_assert!(planned.contains(d.key.as_str()), "resumed plan adds {}", d.key);
        }
        // Run to the end, a plan has nothing left to delete of the chains.
        if k == plan.deletions.len() {
            prop_assert!(again.deletions.iter().all(|d| d.kind == DeletionKind::Abandoned) || again.deletions.is_empty());
        }
    }
}
