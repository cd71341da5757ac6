//! Retention on hand-computed cases.

use chrono::{DateTime, Utc};

use super::retention::*;
use crate::catalog::Catalog;
use crate::manifest::{ChunkRecord, Manifest, SnapRef, sample};
use crate::names::{DatasetName, KeyLayout, SnapName};
use crate::period::Period;
use crate::pricing::{GB, Pricing};
use crate::storage_class::StorageClass;

pub(super) fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

const GIB: u64 = 1 << 30;
const MANIFEST_BYTES: u64 = 1000;

pub(super) fn layout() -> KeyLayout {
    KeyLayout::new("zib/", &DatasetName::new("tank/photos").unwrap())
}

/// A manifest of `seq` (snapshot `s<seq>`, guid `<seq>`), incremental from `from` when given,
/// committed at `at`, with chunks of `sizes` in `class`.
pub(super) fn manifest(
    seq: u64,
    from: Option<u64>,
    at: DateTime<Utc>,
    class: StorageClass,
    sizes: &[u64],
) -> Manifest {
    let l = layout();
    let snap = |n: u64| SnapName::new(&format!("s{n}")).unwrap();
    let mut m = sample();
    m.seq = seq;
    m.from = from.map(|f| SnapRef { name: snap(f), guid: f.to_string() });
    m.to = SnapRef { name: snap(seq), guid: seq.to_string() };
    m.committed_at = at;
    m.snapshot_created = at;
    m.storage_class = class;
    m.attempt = 0;
    m.chunks = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            ChunkRecord::new(l.chunk_key(seq, &snap(seq), 0, i as u64), *s, "ab".repeat(32))
        })
        .collect();
    m.stream_size = sizes.iter().sum();
    m
}

/// The listing that holds every object of `ms`, each stored at its manifest's commit time.
pub(super) fn listing_of(ms: &[Manifest]) -> Vec<StoredObject> {
    let l = layout();
    let mut v = Vec::new();
    for m in ms {
        v.push(StoredObject {
            key: l.manifest_key(m.seq, &m.to.name),
            size: MANIFEST_BYTES,
            storage_class: Some(StorageClass::Standard),
            last_modified: Some(m.committed_at),
        });
        for c in &m.chunks {
            v.push(StoredObject {
                key: c.key.clone(),
                size: c.size,
                storage_class: Some(m.storage_class),
                last_modified: Some(m.committed_at),
            });
        }
    }
    v
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12 + 1e-9 * b.abs()
}

/// Chain A (seq 1 full 1 GiB, 2025-01-01; seq 2 incremental 0.5 GiB, 2025-01-02), chain B
/// (seq 3 full 2 GiB, 2025-09-01), chain C (seq 4 full 3 GiB, 2026-01-01), all DEEP_ARCHIVE.
fn three_chains() -> Vec<Manifest> {
    let da = StorageClass::DeepArchive;
    vec![
        manifest(1, None, t("2025-01-01T00:00:00Z"), da, &[GIB]),
        manifest(2, Some(1), t("2025-01-02T00:00:00Z"), da, &[GIB / 2]),
        manifest(3, None, t("2025-09-01T00:00:00Z"), da, &[GIB, GIB]),
        manifest(4, None, t("2026-01-01T00:00:00Z"), da, &[3 * GIB]),
    ]
}

fn plan(
    ms: &[Manifest],
    listing: &[StoredObject],
    policy: RetentionPolicy,
    now: &str,
    allow: bool,
) -> PrunePlan {
    let cat = Catalog::new(DatasetName::new("tank/photos").unwrap(), ms.to_vec());
    PruneRequest {
        catalog: &cat,
        layout: &layout(),
        listing,
        policy,
        pricing: &Pricing::default(),
        now: t(now),
        allow_early_deletion: allow,
        in_progress: None,
    }
    .plan()
}

fn keys(p: &PrunePlan) -> Vec<String> {
    p.deletions.iter().map(|d| d.key.clone()).collect()
}

const FEB1: &str = "2026-02-01T00:00:00Z";

#[test]
fn keep_one_chain_deletes_the_oldest_and_holds_the_young_one() {
    let ms = three_chains();
    let l = layout();
    let p = plan(
        &ms,
        &listing_of(&ms),
        RetentionPolicy { keep_chains: Some(1), keep_within: None },
        FEB1,
        false,
    );
    // A goes: newest link first, each manifest before its chunks.
    assert_eq!(
        keys(&p),
        vec![
            l.manifest_key(2, &ms[1].to.name),
            ms[1].chunks[0].key.clone(),
            l.manifest_key(1, &ms[0].to.name),
            ms[0].chunks[0].key.clone(),
        ]
    );
    assert_eq!(p.objects, 4);
    assert_eq!(p.bytes, GIB + GIB / 2 + 2 * MANIFEST_BYTES);
    // 1.5 GiB + 2 x 32 KiB at $0.00099, 2 x 8 KiB index and 2 x 1000 bytes at $0.023.
    let saving = (1.5 * GB + 2.0 * 32768.0) / GB * 0.00099 + (2.0 * 8192.0 + 2000.0) / GB * 0.023;
    assert!(close(p.monthly_saving, saving), "{} vs {saving}", p.monthly_saving);
    assert_eq!(p.early_deletion_charge, 0.0);
    // B is 153 days old on 2026-02-01: held until 2025-09-01 + 180 d = 2026-02-28; deleting it
    // now would cost 27 days of 2 x (1 GiB + 32 KiB) at $0.00099 per 30 days.
    let charge = 27.0 * 2.0 * (GB + 32768.0) / GB * 0.00099 / 30.0;
    match &p.chains[1].fate {
        ChainFate::Held { deletable_from, early_deletion_charge } => {
            assert_eq!(*deletable_from, t("2026-02-28T00:00:00Z"));
            assert!(close(*early_deletion_charge, charge), "{early_deletion_charge} vs {charge}");
        }
        f => panic!("chain B: {f:?}"),
    }
    assert_eq!(p.chains[0].fate, ChainFate::Delete);
    assert_eq!(p.chains[0].seqs, vec![1, 2]);
    assert_eq!(p.chains[2].fate, ChainFate::Keep(KeepReason::NewestComplete));

    // With the allowance B goes too, for that charge; C never does.
    let p = plan(
        &ms,
        &listing_of(&ms),
        RetentionPolicy { keep_chains: Some(1), keep_within: None },
        FEB1,
        true,
    );
    assert_eq!(p.chains[1].fate, ChainFate::Delete);
    assert!(close(p.early_deletion_charge, charge), "{}", p.early_deletion_charge);
    assert_eq!(p.objects, 4 + 3);
    assert!(!keys(&p).iter().any(|k| k.contains("000004-")));
    // ... and on 2026-02-28 it goes free of charge without one.
    let p = plan(
        &ms,
        &listing_of(&ms),
        RetentionPolicy { keep_chains: Some(1), keep_within: None },
        "2026-02-28T00:00:00Z",
        false,
    );
    assert_eq!(
        (p.chains[1].fate.clone(), p.objects, p.early_deletion_charge),
        (ChainFate::Delete, 7, 0.0)
    );
}

#[test]
fn keep_chains_counts_complete_chains_from_the_newest() {
    let ms = three_chains();
    let p = plan(
        &ms,
        &listing_of(&ms),
        RetentionPolicy { keep_chains: Some(2), keep_within: None },
        "2027-01-01T00:00:00Z",
        false,
    );
    let fates: Vec<_> = p.chains.iter().map(|c| c.fate.clone()).collect();
    assert_eq!(
        fates,
        vec![
            ChainFate::Delete,
            ChainFate::Keep(KeepReason::KeepChains { rank: 2, keep_chains: 2 }),
            ChainFate::Keep(KeepReason::NewestComplete),
        ]
    );
}

#[test]
fn keep_within_keeps_chains_with_a_recent_backup() {
    let ms = three_chains();
    let within = |d| RetentionPolicy { keep_chains: None, keep_within: Some(Period::days(d)) };
    // A's newest backup (2025-01-02) is 395 days old on 2026-02-01.
    let p = plan(&ms, &listing_of(&ms), within(400), FEB1, false);
    assert_eq!(
        p.chains[0].fate,
        ChainFate::Keep(KeepReason::KeepWithin { keep_within: Period::days(400) })
    );
    assert_eq!(p.objects, 0);
    let p = plan(&ms, &listing_of(&ms), within(395), FEB1, false);
    assert_eq!(p.chains[0].fate, ChainFate::Delete);
    // keep_within alone still keeps the newest complete chain, however old.
    let p = plan(&ms, &listing_of(&ms), within(1), "2030-01-01T00:00:00Z", false);
    assert_eq!(p.chains[2].fate, ChainFate::Keep(KeepReason::NewestComplete));
    assert_eq!(p.objects, 7);
}

#[test]
fn without_retention_no_chain_goes() {
    let ms = three_chains();
    let p = plan(&ms, &listing_of(&ms), RetentionPolicy::default(), "2030-01-01T00:00:00Z", true);
    assert!(p.chains.iter().all(|c| c.fate == ChainFate::Keep(KeepReason::NoRetention)));
    assert_eq!(p.objects, 0);
}

#[test]
fn damaged_chains_are_left_alone_and_do_not_count() {
    let ms = three_chains();
    let mut listing = listing_of(&ms);
    // C's only chunk is missing, A's chunk has the wrong size.
    let c_chunk = ms[3].chunks[0].key.clone();
    listing.retain(|o| o.key != c_chunk);
    listing.iter_mut().find(|o| o.key == ms[0].chunks[0].key).unwrap().size = 5;
    let p = plan(
        &ms,
        &listing,
        RetentionPolicy { keep_chains: Some(1), keep_within: None },
        "2027-01-01T00:00:00Z",
        false,
    );
    assert_eq!(p.chains[2].fate, ChainFate::Damaged { missing: vec![c_chunk] });
    assert_eq!(p.chains[0].fate, ChainFate::Damaged { missing: vec![ms[0].chunks[0].key.clone()] });
    // B is now the newest complete chain.
    assert_eq!(p.chains[1].fate, ChainFate::Keep(KeepReason::NewestComplete));
    assert_eq!(p.objects, 0);
}

#[test]
fn broken_manifests_are_reported_not_deleted() {
    let da = StorageClass::DeepArchive;
    let mut ms = three_chains();
    ms.push(manifest(6, Some(5), t("2025-02-01T00:00:00Z"), da, &[10]));
    let p = plan(
        &ms,
        &listing_of(&ms),
        RetentionPolicy { keep_chains: Some(1), keep_within: None },
        "2027-01-01T00:00:00Z",
        false,
    );
    assert_eq!(p.broken_seqs, vec![6]);
    assert!(!keys(&p).iter().any(|k| k.contains("000006-")));
}

#[test]
fn abandoned_attempts_follow_the_age_rule_and_spare_the_upload_in_progress() {
    let ms = three_chains();
    let l = layout();
    let mut listing = listing_of(&ms);
    let s = |n: u64| SnapName::new(&format!("s{n}")).unwrap();
    let obj = |key: String, class, at: Option<&str>| StoredObject {
        key,
        size: 100,
        storage_class: Some(class),
        last_modified: at.map(t),
    };
    let da = StorageClass::DeepArchive;
    // seq 2's attempt a01 lost to a00... here: a01 is abandoned, 2025-01-02 (old).
    listing.push(obj(l.chunk_key(2, &s(2), 1, 0), da, Some("2025-01-02T00:00:00Z")));
    // an attempt of seq 5 that never committed, DEEP_ARCHIVE, 100 days old: held until day 180.
    listing.push(obj(l.chunk_key(5, &s(5), 0, 0), da, Some("2025-10-24T00:00:00Z")));
    // STANDARD, 3 days old: no minimum duration, but the 7-day grace holds it.
    listing.push(obj(
        l.chunk_key(5, &s(5), 1, 0),
        StorageClass::Standard,
        Some("2026-01-29T00:00:00Z"),
    ));
    // STANDARD, 8 days old: goes.
    listing.push(obj(
        l.chunk_key(5, &s(5), 2, 0),
        StorageClass::Standard,
        Some("2026-01-24T00:00:00Z"),
    ));
    // STANDARD, 1 day old, below the newest committed seq (4): no upload can be running, goes.
    listing.push(obj(
        l.chunk_key(2, &s(2), 2, 0),
        StorageClass::Standard,
        Some("2026-01-31T00:00:00Z"),
    ));
    // no time in the listing: held.
    listing.push(obj(l.chunk_key(5, &s(5), 3, 0), da, None));
    // the attempt being uploaded, old as it may be: never.
    listing.push(obj(
        l.chunk_key(7, &s(7), 0, 0),
        StorageClass::Standard,
        Some("2025-01-01T00:00:00Z"),
    ));
    // not zib's: never.
    listing.push(obj(
        format!("{}notes.txt", l.root()),
        StorageClass::Standard,
        Some("2020-01-01T00:00:00Z"),
    ));
    let cat = Catalog::new(DatasetName::new("tank/photos").unwrap(), ms.clone());
    let req = PruneRequest {
        catalog: &cat,
        layout: &l,
        listing: &listing,
        policy: RetentionPolicy::default(),
        pricing: &Pricing::default(),
        now: t(FEB1),
        allow_early_deletion: false,
        in_progress: Some(l.attempt_prefix(7, &s(7), 0)),
    };
    let p = req.plan();
    assert_eq!(
        keys(&p),
        vec![l.chunk_key(2, &s(2), 1, 0), l.chunk_key(5, &s(5), 2, 0), l.chunk_key(2, &s(2), 2, 0)]
    );
    assert!(p.deletions.iter().all(|d| d.kind == DeletionKind::Abandoned));
    let held: Vec<_> = p.held_abandoned.iter().map(|h| (h.key.clone(), h.deletable_from)).collect();
    assert_eq!(
        held,
        vec![
            (l.chunk_key(5, &s(5), 0, 0), Some(t("2026-04-22T00:00:00Z"))),
            (l.chunk_key(5, &s(5), 1, 0), Some(t("2026-02-05T00:00:00Z"))),
            (l.chunk_key(5, &s(5), 3, 0), None),
        ]
    );
    // With the allowance the 100-day-old DEEP_ARCHIVE chunk goes for 80 days of its storage.
    let p = PruneRequest { allow_early_deletion: true, ..req }.plan();
    let d = p.deletions.iter().find(|d| d.key == l.chunk_key(5, &s(5), 0, 0)).unwrap();
    let want = (100.0 + 32768.0) / GB * 0.00099 * 80.0 / 30.0;
    assert!(close(d.early_deletion_charge, want), "{} vs {want}", d.early_deletion_charge);
    assert!(close(p.early_deletion_charge, want));
}
