//! Restore planning, pure: from a dataset's catalog and a target snapshot to the ordered list of
//! streams (full first, then each incremental) and chunks to read, with the totals a cost quote
//! needs and which objects must be thawed first.

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, ChainError};
use crate::manifest::{ChunkRecord, Manifest, SnapRef};
use crate::names::{DatasetName, KeyLayout, SnapName};
use crate::pricing::{Pricing, Quote, RestoreVolume};
use crate::storage_class::StorageClass;

/// One stream of the chain: a manifest and its chunks, applied with one `zfs receive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub manifest_key: String,
    pub seq: u64,
    pub from: Option<SnapRef>,
    pub to: SnapRef,
    pub snapshot_created: chrono::DateTime<chrono::Utc>,
    pub storage_class: StorageClass,
    pub stream_size: u64,
    pub stream_sha256: String,
    pub chunks: Vec<ChunkRecord>,
    /// Whether the manifest says the stream was sent raw (`-w` in its `send_args`); records
    /// written before this field read as true (zib has always sent raw).
    #[serde(default = "sent_raw")]
    pub raw: bool,
}

fn sent_raw() -> bool {
    true
}

impl PlanStep {
    pub fn is_full(&self) -> bool {
        self.from.is_none()
    }
    /// Whether the snapshot found on the restore's target under this stream's `to` name, with
    /// GUID `found` (None: no such snapshot), means the stream was received already (a crash
    /// after `zfs receive` exited, before the record was saved). The GUID must match; for an
    /// adopted snapshot that was gone at import (a placeholder GUID, never a real one) the name
    /// decides: the target was created by this restore, and a chain's snapshot names are
    /// distinct, so only this stream's receive can have made it.
    pub fn received_as(&self, found: Option<&str>) -> bool {
        match found {
            None => false,
            Some(_) if crate::legacy::adopt::is_unknown_guid(&self.to.guid) => true,
            Some(g) => g == self.to.guid,
        }
    }
    /// Whether this stream's chunks must be thawed before a GET.
    pub fn needs_thaw(&self) -> bool {
        self.storage_class.needs_thaw()
    }
}

/// Download rate assumed when planning how long thawed copies must stay readable: 10 MiB/s, a
/// modest link (a faster one only leaves more slack).
pub const PLANNED_DOWNLOAD_BYTES_PER_SEC: u64 = 10 << 20;

/// Everything a restore of `dataset@snapshot` reads, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub dataset: DatasetName,
    pub prefix: String,
    /// The snapshot the restore ends at.
    pub snapshot: SnapRef,
    pub steps: Vec<PlanStep>,
}

impl RestorePlan {
    /// The chain to `snapshot` (the latest when None) of `catalog`, whose keys live under `prefix`.
    pub fn new(
        prefix: &str,
        catalog: &Catalog,
        snapshot: Option<&SnapName>,
    ) -> Result<Self, ChainError> {
        let chain = catalog.chain_to(snapshot)?;
        let layout = KeyLayout::new(prefix, &catalog.dataset);
        let steps: Vec<PlanStep> = chain.into_iter().map(|m| step(&layout, m)).collect();
        let snapshot = steps.last().expect("a chain is never empty").to.clone();
        Ok(Self {
            dataset: catalog.dataset.clone(),
            prefix: crate::names::normalize_prefix(prefix),
            snapshot,
            steps,
        })
    }

    pub fn total_objects(&self) -> u64 {
        self.steps.iter().map(|s| s.chunks.len() as u64).sum()
    }
    pub fn total_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.stream_size).sum()
    }
    /// Chunks in an archive class: each needs a RestoreObject and a wait before its GET.
    pub fn thaw_objects(&self) -> u64 {
        self.steps.iter().filter(|s| s.needs_thaw()).map(|s| s.chunks.len() as u64).sum()
    }
    pub fn thaw_bytes(&self) -> u64 {
        self.steps.iter().filter(|s| s.needs_thaw()).map(|s| s.stream_size).sum()
    }
    /// Every chunk in restore order, with its step index and whether it needs a thaw.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, &ChunkRecord, bool)> {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.chunks.iter().map(move |c| (i, c, s.needs_thaw())))
    }

    /// Hours the downloads are expected to take at [`PLANNED_DOWNLOAD_BYTES_PER_SEC`].
    pub fn expected_download_hours(&self) -> f64 {
        self.total_bytes() as f64 / PLANNED_DOWNLOAD_BYTES_PER_SEC as f64 / 3600.0
    }

    /// Days the thawed copies must stay readable so that none expires before its download:
    /// all thaws are asked for at once and finish over up to `ready_within_hours` (the tier's),
    /// the last copy may be the first one downloaded, and the downloads take the expected time
    /// (S3 counts the days from each thaw's completion). `requested` (`--days`) may raise it,
    /// never lower it; at most 365.
    pub fn thaw_days(&self, requested: u32, ready_within_hours: u32) -> u32 {
        let hours = f64::from(ready_within_hours) + self.expected_download_hours();
        let needed = (hours / 24.0).ceil() as u32;
        requested.max(needed).min(365)
    }

    /// Bytes handed to `zfs receive` so far: every stream before `steps_received`, and of the
    /// stream after them the chunks whose flag in `received` (in chunk order) is set.
    pub fn bytes_received(
        &self,
        steps_received: usize,
        received: impl IntoIterator<Item = bool>,
    ) -> u64 {
        let done: u64 = self.steps.iter().take(steps_received).map(|s| s.stream_size).sum();
        let current = self.steps.get(steps_received).map_or(0, |s| {
            s.chunks.iter().zip(received).filter(|(_, r)| *r).map(|(c, _)| c.size).sum()
        });
        done + current
    }

    /// When the thaw should be complete: `hours` (the tier's, from the price table, see
    /// [`Pricing::thaw_hours`]) after the first RestoreObject; `None` before that, or when the
    /// plan needs no thaw.
    pub fn thaw_expected_at(
        &self,
        first_request: Option<chrono::DateTime<chrono::Utc>>,
        hours: u32,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        first_request
            .filter(|_| self.thaw_objects() > 0)
            .map(|t| t + chrono::Duration::hours(i64::from(hours)))
    }

    pub fn volume(&self) -> RestoreVolume {
        RestoreVolume {
            objects: self.total_objects(),
            bytes: self.total_bytes(),
            archived_objects: self.thaw_objects(),
            archived_bytes: self.thaw_bytes(),
        }
    }

    /// Cost and time per restore tier, keeping restored copies for `days`.
    pub fn quote(&self, pricing: &Pricing, days: u32) -> Quote {
        pricing.quote(&self.volume(), days)
    }
}

fn step(layout: &KeyLayout, m: &Manifest) -> PlanStep {
    PlanStep {
        manifest_key: layout.manifest_key(m.seq, &m.to.name),
        seq: m.seq,
        from: m.from.clone(),
        to: m.to.clone(),
        snapshot_created: m.snapshot_created,
        storage_class: m.storage_class,
        stream_size: m.stream_size,
        stream_sha256: m.stream_sha256.clone(),
        chunks: m.chunks.clone(),
        raw: m.send_args.iter().any(|a| a == "-w"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sample;
    use crate::pricing::RestoreTier;

    fn m(
        seq: u64,
        from: Option<(&str, &str)>,
        to: (&str, &str),
        class: StorageClass,
        sizes: &[u64],
    ) -> Manifest {
        let mut x = sample();
        x.seq = seq;
        x.from = from.map(|(n, g)| SnapRef { name: SnapName::new(n).unwrap(), guid: g.into() });
        x.to = SnapRef { name: SnapName::new(to.0).unwrap(), guid: to.1.into() };
        x.storage_class = class;
        x.chunk_size = 1 << 30;
        x.chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| ChunkRecord::new(format!("k{seq}/{i}"), *s, "cd".repeat(32)))
            .collect();
        x.stream_size = sizes.iter().sum();
        x
    }

    fn catalog() -> Catalog {
        let g = 1u64 << 30;
        Catalog::new(
            DatasetName::new("tank/photos").unwrap(),
            vec![
                m(2, Some(("a", "1")), ("b", "2"), StorageClass::DeepArchive, &[g, 100]),
                m(1, None, ("a", "1"), StorageClass::DeepArchive, &[g, g, 5]),
                m(3, Some(("b", "2")), ("c", "3"), StorageClass::Standard, &[7]),
            ],
        )
    }

    #[test]
    fn plans_walk_the_chain_in_order_with_totals() {
        let p = RestorePlan::new("backups", &catalog(), None).unwrap();
        assert_eq!(p.steps.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(p.snapshot.name.as_str(), "c");
        assert_eq!(p.steps[0].manifest_key, "backups/tank/photos@zib/000001-a.manifest.json");
        assert!(p.steps[0].is_full() && !p.steps[1].is_full());
        assert!(p.steps.iter().all(|s| s.raw), "the sample manifests were sent with -w");
        assert_eq!(p.total_objects(), 6);
        assert_eq!(p.total_bytes(), 3 * (1 << 30) + 5 + 100 + 7);
        assert_eq!(p.thaw_objects(), 5);
        assert_eq!(p.thaw_bytes(), 3 * (1 << 30) + 105);
        let order: Vec<_> = p.chunks().map(|(i, c, thaw)| (i, c.key.clone(), thaw)).collect();
        assert_eq!(order[0], (0, "k1/0".to_owned(), true));
        assert_eq!(order[3], (1, "k2/0".to_owned(), true));
        assert_eq!(order[5], (2, "k3/0".to_owned(), false));

        let older =
            RestorePlan::new("backups", &catalog(), Some(&SnapName::new("a").unwrap())).unwrap();
        assert_eq!(older.steps.len(), 1);
        assert_eq!((older.total_objects(), older.thaw_objects()), (3, 3));
    }

    #[test]
    fn placeholder_guids_link_the_chain_and_a_received_one_is_known_by_name() {
        use crate::legacy::adopt::unknown_guid;
        let gone = unknown_guid("a");
        let c = Catalog::new(
            DatasetName::new("tank/photos").unwrap(),
            vec![
                m(1, None, ("a", &gone), StorageClass::DeepArchive, &[5]),
                m(2, Some(("a", &gone)), ("b", "2"), StorageClass::DeepArchive, &[5]),
                m(3, Some(("b", "2")), ("c", "3"), StorageClass::Standard, &[7]),
            ],
        );
        let p = RestorePlan::new("", &c, None).unwrap();
        assert_eq!(p.steps.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        // The placeholder stands for whatever GUID the received snapshot got.
        assert!(p.steps[0].received_as(Some("987654321")));
        assert!(!p.steps[0].received_as(None));
        // A real GUID must match.
        assert!(p.steps[1].received_as(Some("2")));
        assert!(!p.steps[1].received_as(Some("987654321")));
        // Another placeholder does not link: the chain is broken, not guessed.
        let c = Catalog::new(
            DatasetName::new("tank/photos").unwrap(),
            vec![
                m(1, None, ("a", &gone), StorageClass::DeepArchive, &[5]),
                m(2, Some(("a", &unknown_guid("x"))), ("b", "2"), StorageClass::DeepArchive, &[5]),
            ],
        );
        assert!(RestorePlan::new("", &c, None).is_err());
    }

    #[test]
    fn plan_quotes_use_the_price_table() {
        let p = RestorePlan::new("", &catalog(), Some(&SnapName::new("b").unwrap())).unwrap();
        let q = p.quote(&Pricing::default(), 3);
        let bulk = q.tier(RestoreTier::Bulk);
        let gb = (3.0 * (1u64 << 30) as f64 + 105.0) / (1u64 << 30) as f64;
        assert!((bulk.retrieval - gb * 0.0025).abs() < 1e-12, "{bulk:?}");
        assert!((bulk.restore_requests - 5.0 / 1000.0 * 0.025).abs() < 1e-12);
        assert!((bulk.restored_copy - gb * 0.023 * 3.0 / 30.0).abs() < 1e-12);
        assert_eq!(bulk.egress, 0.0); // under the free 100 GB
        let st = q.tier(RestoreTier::Standard);
        assert!((st.retrieval - gb * 0.02).abs() < 1e-12);
        assert!((st.restore_requests - 5.0 / 1000.0 * 0.10).abs() < 1e-12);
        assert_eq!((bulk.ready_within_hours, st.ready_within_hours), (48, 12));
    }

    /// Issue 11 #6: thawed copies last long enough for the thaws' spread and the download.
    #[test]
    fn thaw_days_cover_the_thaws_and_the_expected_download() {
        let mut p = RestorePlan::new("", &catalog(), None).unwrap();
        // 3 GiB at 10 MiB/s: 0.085 h; after 48 h of thaws: 3 days.
        assert_eq!(p.thaw_days(1, 48), 3);
        assert_eq!(p.thaw_days(7, 48), 7, "--days may ask for more");
        assert_eq!(p.thaw_days(1, 12), 1);
        // 10 TiB at 10 MiB/s is about 12 days of downloading.
        p.steps[0].stream_size = 10 << 40;
        assert!(
            (p.expected_download_hours() - 291.27).abs() < 0.1,
            "{}",
            p.expected_download_hours()
        );
        assert_eq!(p.thaw_days(7, 48), 15);
        p.steps[0].stream_size = 1 << 60;
        assert_eq!(p.thaw_days(7, 48), 365);
    }

    #[test]
    fn bytes_received_count_whole_streams_then_received_chunks() {
        let p = RestorePlan::new("", &catalog(), None).unwrap();
        let g = 1u64 << 30;
        assert_eq!(p.bytes_received(0, []), 0);
        assert_eq!(p.bytes_received(0, [true, false, true]), g + 5);
        assert_eq!(p.bytes_received(1, [false, true]), 2 * g + 5 + 100);
        assert_eq!(p.bytes_received(3, [true]), p.total_bytes(), "all streams received");
    }

    #[test]
    fn thaw_end_uses_the_tiers_hours_from_the_price_table() {
        let p = RestorePlan::new("", &catalog(), None).unwrap();
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let pricing = Pricing { bulk_hours: 5, standard_hours: 2, ..Pricing::default() };
        let bulk = pricing.thaw_hours(RestoreTier::Bulk);
        assert_eq!(p.thaw_expected_at(Some(t0), bulk), Some(t0 + chrono::Duration::hours(5)));
        let standard = pricing.thaw_hours(RestoreTier::Standard);
        assert_eq!(p.thaw_expected_at(Some(t0), standard), Some(t0 + chrono::Duration::hours(2)));
        assert_eq!(Pricing::default().thaw_hours(RestoreTier::Bulk), 48);
        assert_eq!(p.thaw_expected_at(None, bulk), None, "nothing asked yet");
        let standard_only = RestorePlan::new("", &catalog(), None).map(|mut p| {
            p.steps.retain(|s| !s.needs_thaw());
            p
        });
        assert_eq!(standard_only.unwrap().thaw_expected_at(Some(t0), bulk), None);
    }

    #[test]
    fn plan_errors_are_chain_errors() {
        let e = RestorePlan::new("", &catalog(), Some(&SnapName::new("zz").unwrap())).unwrap_err();
        assert!(matches!(e, ChainError::NoSuchSnapshot { .. }));
        let broken = Catalog::new(
            DatasetName::new("tank/photos").unwrap(),
            vec![m(2, Some(("a", "1")), ("b", "2"), StorageClass::DeepArchive, &[1])],
        );
        assert!(matches!(RestorePlan::new("", &broken, None), Err(ChainError::Broken { .. })));
    }
}
