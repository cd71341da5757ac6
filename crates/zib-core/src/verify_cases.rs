//! Verify on hand-made buckets: clean, and each kind of damage the issue names.

use std::collections::HashMap;

use super::*;
use crate::manifest::{ChunkRecord, SnapRef, sample};
use crate::names::SnapName;

fn ds() -> DatasetName {
    DatasetName::new("tank/photos").unwrap()
}

fn layout() -> KeyLayout {
    KeyLayout::new("zib/", &ds())
}

fn snap(n: u64) -> SnapName {
    SnapName::new(&format!("s{n}")).unwrap()
}

fn sha(seq: u64, i: u64) -> String {
    format!("{:064x}", seq * 100 + i)
}

/// Backup `seq` (snapshot `s<seq>`, guid `<seq>`), incremental from `from`, with `n` chunks
/// of 1000 bytes in DEEP_ARCHIVE.
fn manifest(seq: u64, from: Option<u64>, n: u64) -> Manifest {
    let mut m = sample();
    m.seq = seq;
    m.from = from.map(|f| SnapRef { name: snap(f), guid: f.to_string() });
    m.to = SnapRef { name: snap(seq), guid: seq.to_string() };
    m.chunks = (0..n)
        .map(|i| ChunkRecord::new(layout().chunk_key(seq, &snap(seq), 0, i), 1000, sha(seq, i)))
        .collect();
    m
}

/// A bucket as zib leaves it: seq 1 full (2 chunks), seq 2 and 3 incrementals (1 chunk each).
struct Bucket {
    manifests: Vec<Manifest>,
    listing: Vec<ListedFacts>,
    heads: HashMap<String, HeadFacts>,
    skipped: Vec<SkippedFacts>,
}

impl Bucket {
    fn new() -> Self {
        let manifests =
            vec![manifest(1, None, 2), manifest(2, Some(1), 1), manifest(3, Some(2), 1)];
        let mut listing = Vec::new();
        let mut heads = HashMap::new();
        for m in &manifests {
            listing.push(ListedFacts {
                key: layout().manifest_key(m.seq, &m.to.name),
                size: 900,
                storage_class: Some(StorageClass::Standard),
                etag: None,
            });
            for c in &m.chunks {
                listing.push(ListedFacts {
                    key: c.key.clone(),
                    size: c.size,
                    storage_class: Some(m.storage_class),
                    etag: None,
                });
                heads.insert(
                    c.key.clone(),
                    HeadFacts::Found {
                        size: c.size,
                        sha256: Some(c.sha256.clone()),
                        storage_class: Some(m.storage_class),
                    },
                );
            }
        }
        Bucket { manifests, listing, heads, skipped: Vec::new() }
    }

    fn chunk_key(&self, seq: u64, i: usize) -> String {
        self.manifests.iter().find(|m| m.seq == seq).unwrap().chunks[i].key.clone()
    }

    fn verify(&self) -> VerifyReport {
        self.verify_deep(None)
    }

    fn verify_deep(&self, deep: Option<&HashMap<String, DeepFacts>>) -> VerifyReport {
        let catalogs = [Catalog::new(ds(), self.manifests.clone())];
        VerifyRequest {
            prefix: "zib/",
            catalogs: &catalogs,
            skipped: &self.skipped,
            listing: &self.listing,
            heads: &self.heads,
            deep,
            pricing: &Pricing::default(),
        }
        .verify()
    }
}

fn kinds(r: &VerifyReport) -> Vec<(Severity, Option<u64>, Finding)> {
    r.problems.iter().map(|p| (p.severity, p.seq, p.finding.clone())).collect()
}

#[test]
fn a_clean_bucket_is_clean_and_its_requests_are_counted_and_priced() {
    let r = Bucket::new().verify();
    assert!(r.clean, "{:?}", r.problems);
    assert!(r.problems.is_empty());
    assert!(r.unnamed.is_empty());
    let d = &r.datasets[0];
    assert_eq!((d.backups, d.chains, d.chunks, d.chunks_sound, d.bytes), (3, 1, 4, 4, 4000));
    assert_eq!(d.newest_restorable.as_deref(), Some("s3"));
    assert_eq!(d.newest_error, None);
    // 7 objects: one LIST page; 3 manifest GETs; 4 chunk HEADs.
    assert_eq!((r.requests.list, r.requests.get, r.requests.head), (1, 3, 4));
    let expected = 1.0 / 1000.0 * 0.005 + 7.0 / 1000.0 * 0.0004;
    assert!((r.requests.cost - expected).abs() < 1e-15, "{}", r.requests.cost);
}

#[test]
fn listing_pages_are_counted_per_thousand_keys() {
    let p = Pricing::default();
    assert_eq!(request_bill(&p, 0, 0, 0).list, 1);
    assert_eq!(request_bill(&p, 1000, 0, 0).list, 1);
    assert_eq!(request_bill(&p, 1001, 0, 0).list, 2);
    assert_eq!(request_bill(&p, 250_000, 10, 249_990).list, 250);
}

#[test]
fn a_deleted_chunk_is_an_error_and_the_newest_restorable_snapshot_is_the_one_before() {
    let mut b = Bucket::new();
    let k = b.chunk_key(2, 0);
    b.heads.insert(k.clone(), HeadFacts::Missing);
    b.listing.retain(|o| o.key != k);
    let r = b.verify();
    assert!(!r.clean);
    assert_eq!(kinds(&r), [(Severity::Error, Some(2), Finding::MissingChunk)]);
    assert_eq!(r.problems[0].key, k);
    let d = &r.datasets[0];
    assert_eq!(d.newest_restorable.as_deref(), Some("s1"));
    assert_eq!(d.newest_error.as_deref(), Some("backup #2 of its chain has a bad chunk"));
    assert_eq!((d.chunks_sound, d.errors), (3, 1));
}

#[test]
fn a_replaced_chunk_is_found_by_its_stored_checksum() {
    let mut b = Bucket::new();
    let k = b.chunk_key(3, 0);
    let other = "f".repeat(64);
    b.heads.insert(
        k.clone(),
        HeadFacts::Found {
            size: 1000,
            sha256: Some(other.clone()),
            storage_class: Some(StorageClass::DeepArchive),
        },
    );
    let r = b.verify();
    assert_eq!(
        kinds(&r),
        [(Severity::Error, Some(3), Finding::WrongChecksum { expected: sha(3, 0), found: other })]
    );
    assert_eq!(r.datasets[0].newest_restorable.as_deref(), Some("s2"));
}

#[test]
fn a_chunk_of_another_size_is_an_error() {
    let mut b = Bucket::new();
    let k = b.chunk_key(1, 1);
    b.heads.insert(k, HeadFacts::Found { size: 999, sha256: Some(sha(1, 1)), storage_class: None });
    let r = b.verify();
    assert_eq!(
        kinds(&r),
        [
            (Severity::Error, Some(1), Finding::WrongSize { expected: 1000, found: 999 }),
            (
                Severity::Warning,
                Some(1),
                Finding::OtherStorageClass {
                    expected: StorageClass::DeepArchive,
                    found: StorageClass::Standard
                }
            ),
        ]
    );
    assert_eq!(r.datasets[0].newest_restorable, None, "the full is damaged: nothing restores");
    assert!(r.datasets[0].newest_error.is_some());
}

#[test]
fn a_missing_manifest_link_breaks_the_chain_after_it() {
    let mut b = Bucket::new();
    b.manifests.retain(|m| m.seq != 2);
    let gone = layout().manifest_key(2, &snap(2));
    b.listing.retain(|o| o.key != gone);
    let r = b.verify();
    assert_eq!(
        kinds(&r),
        [(Severity::Error, Some(3), Finding::BrokenChain { base: Some("s2".into()) })]
    );
    // seq 2's chunk is now named by no manifest.
    assert_eq!(r.unnamed.len(), 1);
    assert_eq!(r.unnamed[0].key, layout().chunk_key(2, &snap(2), 0, 0));
    assert_eq!(r.datasets[0].newest_restorable.as_deref(), Some("s1"));
}

#[test]
fn a_foreign_key_is_listed_with_its_bytes_and_the_bucket_stays_clean() {
    let mut b = Bucket::new();
    b.listing.push(ListedFacts {
        key: "zib/tank/photos/notes.txt".into(),
        size: 123,
        storage_class: None,
        etag: None,
    });
    let r = b.verify();
    assert!(r.clean);
    assert_eq!(r.unnamed, [UnnamedObject { key: "zib/tank/photos/notes.txt".into(), size: 123 }]);
    assert_eq!(r.unnamed_bytes, 123);
}

#[test]
fn an_unreadable_manifest_is_an_error_named_by_its_key() {
    let mut b = Bucket::new();
    b.skipped.push(SkippedFacts {
        key: "zib/tank/photos/000004-s4.manifest.json".into(),
        dataset: ds(),
        reason: "not valid JSON".into(),
    });
    let r = b.verify();
    assert!(!r.clean);
    assert_eq!(
        kinds(&r),
        [(Severity::Error, None, Finding::UnreadableManifest { reason: "not valid JSON".into() })]
    );
    assert_eq!(r.requests.get, 4, "the skipped manifest was read too");
}

#[test]
fn a_lifecycle_moved_chunk_and_a_chunk_without_checksum_are_warnings() {
    let mut b = Bucket::new();
    let moved = b.chunk_key(1, 0);
    b.heads.insert(
        moved,
        HeadFacts::Found {
            size: 1000,
            sha256: Some(sha(1, 0)),
            storage_class: Some(StorageClass::Glacier),
        },
    );
    let bare = b.chunk_key(2, 0);
    b.heads.insert(
        bare,
        HeadFacts::Found {
            size: 1000,
            sha256: None,
            storage_class: Some(StorageClass::DeepArchive),
        },
    );
    let r = b.verify();
    assert!(r.clean, "warnings only");
    assert_eq!(
        kinds(&r),
        [
            (
                Severity::Warning,
                Some(1),
                Finding::OtherStorageClass {
                    expected: StorageClass::DeepArchive,
                    found: StorageClass::Glacier
                }
            ),
            (Severity::Warning, Some(2), Finding::ChecksumUnavailable),
        ]
    );
    assert_eq!(r.datasets[0].newest_restorable.as_deref(), Some("s3"));
}

#[test]
fn an_adopted_chunk_is_checked_by_its_etag() {
    let mut b = Bucket::new();
    let k = b.chunk_key(1, 0);
    let md5 = "0123456789abcdef0123456789abcdef";
    b.manifests[0].chunks[0] = ChunkRecord::adopted(k.clone(), 1000, md5.into());
    b.heads.insert(
        k.clone(),
        HeadFacts::Found {
            size: 1000,
            sha256: None,
            storage_class: Some(StorageClass::DeepArchive),
        },
    );
    let entry = b.listing.iter_mut().find(|o| o.key == k).unwrap();
    entry.etag = Some(md5.to_uppercase());
    assert!(b.verify().problems.is_empty(), "the ETag matches, case aside");
    b.listing.iter_mut().find(|o| o.key == k).unwrap().etag = Some("f".repeat(32));
    assert_eq!(
        kinds(&b.verify()),
        [(
            Severity::Error,
            Some(1),
            Finding::WrongMd5 { expected: md5.into(), found: "f".repeat(32) }
        )]
    );
    // A multipart ETag is no MD5: not checkable.
    b.listing.iter_mut().find(|o| o.key == k).unwrap().etag = Some(format!("{md5}-2"));
    assert_eq!(kinds(&b.verify()), [(Severity::Warning, Some(1), Finding::ChecksumUnavailable)]);
}

#[test]
fn a_head_that_failed_is_not_checked_and_counts_as_an_error() {
    let mut b = Bucket::new();
    let k = b.chunk_key(3, 0);
    b.heads.insert(k, HeadFacts::Failed("AccessDenied".into()));
    let r = b.verify();
    assert!(!r.clean);
    assert_eq!(
        kinds(&r),
        [(Severity::Error, Some(3), Finding::NotChecked { reason: "AccessDenied".into() })]
    );
}

#[test]
fn a_deep_check_finds_bytes_that_no_stored_checksum_vouched_for() {
    let mut b = Bucket::new();
    let bad = b.chunk_key(2, 0);
    // The server holds no checksum for it: the cheap check can only warn.
    b.heads.insert(
        bad.clone(),
        HeadFacts::Found {
            size: 1000,
            sha256: None,
            storage_class: Some(StorageClass::DeepArchive),
        },
    );
    assert!(b.verify().clean, "without --deep it is only a warning");
    let mut deep: HashMap<String, DeepFacts> = b
        .manifests
        .iter()
        .flat_map(|m| &m.chunks)
        .map(|c| {
            let f = DeepFacts::Hashed { size: c.size, sha256: c.sha256.clone(), md5: None };
            (c.key.clone(), f)
        })
        .collect();
    deep.insert(bad.clone(), DeepFacts::Hashed { size: 1000, sha256: sha(9, 9), md5: None });
    let r = b.verify_deep(Some(&deep));
    assert!(!r.clean);
    let bad_content: Vec<&Problem> =
        r.problems.iter().filter(|p| matches!(p.finding, Finding::BadContent { .. })).collect();
    assert_eq!(bad_content.len(), 1, "{:?}", r.problems);
    assert_eq!((bad_content[0].key.as_str(), bad_content[0].seq), (bad.as_str(), Some(2)));
    let Finding::BadContent { detail } = &bad_content[0].finding else { unreachable!() };
    assert!(detail.contains(&sha(9, 9)) && detail.contains(&sha(2, 0)), "{detail}");
    // Backups 2 and 3 lean on it: the newest restorable snapshot is s1.
    assert_eq!(r.datasets[0].newest_restorable.as_deref(), Some("s1"));
    let d = r.deep.as_ref().unwrap();
    assert_eq!((d.hashed, d.hashed_bytes, d.archived), (4, 4000, 0));
}

#[test]
fn a_deep_check_of_archived_chunks_quotes_their_thaw_and_counts_the_asked() {
    let b = Bucket::new();
    let keys: Vec<String> =
        b.manifests.iter().flat_map(|m| &m.chunks).map(|c| c.key.clone()).collect();
    let mut deep = HashMap::new();
    deep.insert(keys[0].clone(), DeepFacts::Archived { thaw: ThawWait::NotRequested });
    deep.insert(keys[1].clone(), DeepFacts::Archived { thaw: ThawWait::NotRequested });
    deep.insert(keys[2].clone(), DeepFacts::Archived { thaw: ThawWait::Requested });
    deep.insert(keys[3].clone(), DeepFacts::Archived { thaw: ThawWait::InProgress });
    let r = b.verify_deep(Some(&deep));
    assert!(r.clean, "not downloaded is not damage: {:?}", r.problems);
    let d = r.deep.unwrap();
    assert_eq!((d.hashed, d.archived, d.archived_bytes), (0, 4, 4000));
    assert_eq!((d.thaws_requested, d.thaws_in_progress), (1, 1));
    // Only the two not asked for are quoted.
    assert_eq!(d.thaw_quote.volume.archived_objects, 2);
    assert_eq!(d.thaw_quote.volume.archived_bytes, 2000);
    assert!(d.thaw_quote.tier(crate::pricing::RestoreTier::Bulk).total > 0.0);
}

#[test]
fn a_download_that_failed_is_not_checked_and_an_error() {
    let b = Bucket::new();
    let key = b.chunk_key(3, 0);
    let deep = HashMap::from([(key.clone(), DeepFacts::Failed("connection reset".into()))]);
    let r = b.verify_deep(Some(&deep));
    assert!(!r.clean);
    assert!(r.problems.iter().any(|p| p.key == key
        && p.finding == Finding::NotChecked { reason: "download: connection reset".into() }));
}
