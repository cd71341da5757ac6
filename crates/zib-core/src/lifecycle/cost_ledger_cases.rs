//! The cost ledger on hand-computed cases.

use super::cost_ledger::*;
use super::retention::StoredObject;
use super::retention_cases::{layout, listing_of, manifest, t};
use crate::catalog::Catalog;
use crate::names::{DatasetName, SnapName};
use crate::pricing::{Pricing, RestoreTier};
use crate::storage_class::StorageClass;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// KiB as a fraction of a billed GB.
const KIB_GB: f64 = 1.0 / 1048576.0;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-15 + 1e-9 * b.abs()
}

/// Chain 1: seq 1 full [1 GiB] 2025-01-01, seq 2 incremental [0.5 GiB] 2025-01-02, both
/// DEEP_ARCHIVE; chain 2: seq 3 full [1 GiB, 1 GiB] GLACIER 2025-09-01. Manifests are 1000
/// bytes in STANDARD. Unnamed: an abandoned 1 MiB DEEP_ARCHIVE attempt of seq 2 and a
/// 100-byte STANDARD note.
fn seeded() -> (Vec<Catalog>, Vec<StoredObject>) {
    let da = StorageClass::DeepArchive;
    let ms = vec![
        manifest(1, None, t("2025-01-01T00:00:00Z"), da, &[GIB]),
        manifest(2, Some(1), t("2025-01-02T00:00:00Z"), da, &[GIB / 2]),
        manifest(3, None, t("2025-09-01T00:00:00Z"), StorageClass::Glacier, &[GIB, GIB]),
    ];
    let mut listing = listing_of(&ms);
    listing.push(StoredObject {
        key: layout().chunk_key(2, &SnapName::new("s2").unwrap(), 1, 0),
        size: MIB,
        storage_class: Some(da),
        last_modified: Some(t("2025-01-02T00:00:00Z")),
    });
    listing.push(StoredObject {
        key: "zib/notes.txt".into(),
        size: 100,
        storage_class: Some(StorageClass::Standard),
        last_modified: None,
    });
    (vec![Catalog::new(DatasetName::new("tank/photos").unwrap(), ms)], listing)
}

fn ledger(catalogs: &[Catalog], listing: &[StoredObject]) -> CostLedger {
    LedgerRequest {
        prefix: "zib/",
        catalogs,
        listing,
        pricing: &Pricing::default(),
        now: t("2025-10-01T00:00:00Z"),
        restore_days: 7,
    }
    .ledger()
}

#[test]
fn stored_bytes_overheads_and_monthly_cost_per_class() {
    let (cats, listing) = seeded();
    let l = ledger(&cats, &listing);
    let c: Vec<_> = l.classes.iter().map(|c| (c.storage_class, c.objects, c.bytes)).collect();
    assert_eq!(
        c,
        [
            (StorageClass::Standard, 3, 3000),
            (StorageClass::Glacier, 2, 2 * GIB),
            (StorageClass::DeepArchive, 2, GIB + GIB / 2),
        ]
    );
    let std = &l.classes[0];
    assert_eq!((std.overhead_standard_bytes, std.overhead_archive_bytes), (0, 0));
    assert!(close(std.monthly, 3000.0 / GIB as f64 * 0.023));
    // GLACIER: 2 objects, each 8 KiB at $0.023 and 32 KiB at $0.0036 of index.
    let gl = &l.classes[1];
    assert_eq!((gl.overhead_standard_bytes, gl.overhead_archive_bytes), (16 << 10, 64 << 10));
    let gl_overhead = 16.0 * KIB_GB * 0.023 + 64.0 * KIB_GB * 0.0036;
    assert!(close(gl.overhead_monthly, gl_overhead), "{gl:?}");
    assert!(close(gl.monthly, 2.0 * 0.0036 + gl_overhead), "{gl:?}");
    let da = &l.classes[2];
    let da_overhead = 16.0 * KIB_GB * 0.023 + 64.0 * KIB_GB * 0.00099;
    assert!(close(da.overhead_monthly, da_overhead));
    assert!(close(da.monthly, 1.5 * 0.00099 + da_overhead), "{da:?}");
    let named =
        3000.0 / GIB as f64 * 0.023 + 2.0 * 0.0036 + gl_overhead + 1.5 * 0.00099 + da_overhead;
    assert!(close(l.monthly, named), "{}", l.monthly);
    // $0.0072 + $0.001485, plus about $0.000001 of index overhead and manifests:
    assert!((l.monthly - 0.008686).abs() < 1e-6, "{}", l.monthly);
    assert!(l.missing.is_empty(), "{:?}", l.missing);
}

#[test]
fn objects_no_manifest_names_are_counted_apart() {
    let (cats, listing) = seeded();
    let l = ledger(&cats, &listing);
    let keys: Vec<_> = l.unnamed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["zib/tank/photos@zib/000002-s2/a01/00000000", "zib/notes.txt"]);
    let abandoned = (1.0 / 1024.0 + 32.0 * KIB_GB) * 0.00099 + 8.0 * KIB_GB * 0.023;
    let note = 100.0 / GIB as f64 * 0.023;
    assert!(close(l.unnamed_monthly, abandoned + note), "{}", l.unnamed_monthly);
    assert_eq!(l.unnamed_classes.len(), 2);
    assert!(close(l.monthly_total, l.monthly + abandoned + note));
    // The dataset's own totals leave them out.
    let d = &l.datasets[0];
    assert_eq!((d.objects, d.bytes), (7, 3000 + 3 * GIB + GIB / 2));
    assert!(close(d.monthly, l.monthly));
}

#[test]
fn each_chain_may_go_free_of_charge_after_its_youngest_objects_minimum_duration() {
    let (cats, listing) = seeded();
    let l = ledger(&cats, &listing);
    let chains: Vec<_> = l.datasets[0]
        .chains
        .iter()
        .map(|c| (c.full_seq, c.newest_seq, c.backups, c.objects, c.deletable_from))
        .collect();
    assert_eq!(
        chains,
        [
            // 2025-01-02 + 180 days (DEEP_ARCHIVE) = 2025-07-01.
            (1, 2, 2, 4, t("2025-07-01T00:00:00Z")),
            // 2025-09-01 + 90 days (GLACIER) = 2025-11-30.
            (3, 3, 1, 3, t("2025-11-30T00:00:00Z")),
        ]
    );
}

#[test]
fn a_full_restore_of_the_newest_snapshot_is_quoted_as_restore_plan_does() {
    let (cats, listing) = seeded();
    let l = ledger(&cats, &listing);
    let r = l.datasets[0].restore.as_ref().expect("quoted");
    assert_eq!((r.snapshot.as_str(), r.streams), ("s3", 1));
    // The newest snapshot is seq 3's full: 2 GLACIER chunks, 2 GiB, restored copy 7 days.
    let b = r.quote.tier(RestoreTier::Bulk);
    assert!(close(b.retrieval, 2.0 * 0.0025));
    assert!(close(b.restore_requests, 2.0 / 1000.0 * 0.025));
    assert!(close(b.restored_copy, 2.0 * 0.023 * 7.0 / 30.0));
    assert!(close(b.get_requests, 2.0 / 1000.0 * 0.0004));
    assert_eq!(b.egress, 0.0); // 2 GB is inside the 100 GB free allowance
    assert!(close(b.total, 0.005 + 0.00005 + 0.046 * 7.0 / 30.0 + 0.0000008));
    let s = r.quote.tier(RestoreTier::Standard);
    assert!(close(s.total, 0.04 + 0.0002 + 0.046 * 7.0 / 30.0 + 0.0000008));
}

#[test]
fn a_chunk_the_listing_lacks_or_shows_resized_is_missing_and_not_counted() {
    let (cats, mut listing) = seeded();
    let gone = cats[0].manifests[0].chunks[0].key.clone();
    listing.retain(|o| o.key != gone);
    let resized = cats[0].manifests[1].chunks[0].key.clone();
    listing.iter_mut().find(|o| o.key == resized).unwrap().size = 5;
    let l = ledger(&cats, &listing);
    assert_eq!(l.missing, [gone, resized.clone()]);
    let da = l.classes.iter().find(|c| c.storage_class == StorageClass::DeepArchive);
    assert!(da.is_none(), "{da:?}");
    // The resized object is still billed, as an unnamed one.
    assert!(l.unnamed.iter().any(|o| o.key == resized && o.size == 5));
    assert_eq!(l.datasets[0].chains[0].objects, 2);
}

#[test]
fn a_broken_chain_is_costed_but_has_no_deletion_date_and_no_quote_when_newest() {
    let da = StorageClass::DeepArchive;
    // seq 2 is an incremental from seq 1, whose manifest is not in the catalog.
    let ms = vec![manifest(2, Some(1), t("2025-01-02T00:00:00Z"), da, &[GIB])];
    let listing = listing_of(&ms);
    let cats = vec![Catalog::new(DatasetName::new("tank/photos").unwrap(), ms)];
    let l = ledger(&cats, &listing);
    let d = &l.datasets[0];
    assert_eq!((d.chains.len(), d.broken_seqs.as_slice(), d.objects), (0, &[2][..], 2));
    assert!(d.restore.is_none());
    assert!(d.restore_error.as_deref().unwrap().contains("broken chain"), "{d:?}");
    assert!(close(
        l.monthly,
        1000.0 / GIB as f64 * 0.023 + (1.0 + 32.0 * KIB_GB) * 0.00099 + 8.0 * KIB_GB * 0.023
    ));
}
