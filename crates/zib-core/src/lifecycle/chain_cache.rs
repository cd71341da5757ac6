//! The current chain as the re-baseline decision needs it, kept in the local state (issue 12):
//! without it every backup reads each link's manifest back from the bucket (one GET per link,
//! up to `max_chain` a night). The cache is only trusted while it ends with the newest
//! committed backup and every link's manifest is still listed; otherwise the chain is read
//! from the bucket again, as before.

use serde::{Deserialize, Serialize};

use crate::lifecycle::ChainSummary;
use crate::manifest::Manifest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCache {
    /// The manifest keys of the chain's links, full first.
    pub keys: Vec<String>,
    pub summary: ChainSummary,
}

impl ChainCache {
    /// The summary, if this is the chain of the newest backup (`newest_key`) and each of its
    /// manifests is in the bucket (`listed`).
    pub fn summary_if_listed(
        &self,
        newest_key: &str,
        listed: impl Fn(&str) -> bool,
    ) -> Option<&ChainSummary> {
        let current = self.keys.last().is_some_and(|k| k == newest_key);
        (current && self.keys.iter().all(|k| listed(k))).then_some(&self.summary)
    }

    /// The cache after committing `m` under `key`: a full starts a new chain; an incremental
    /// extends `prev` if `prev` ends with `prev_last_key`, the backup it was sent from (else
    /// the chain is unknown: None, read from the bucket next time).
    pub fn after_commit(
        prev: Option<ChainCache>,
        prev_last_key: Option<&str>,
        key: &str,
        m: &Manifest,
    ) -> Option<ChainCache> {
        if m.is_full() {
            let summary = ChainSummary::from_chain(&[m]).expect("a full");
            return Some(ChainCache { keys: vec![key.to_owned()], summary });
        }
        let mut c = prev?;
        if c.keys.last().map(String::as_str) != prev_last_key || prev_last_key.is_none() {
            return None;
        }
        c.keys.push(key.to_owned());
        c.summary.incremental_sizes.push(m.stream_size);
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatasetName, SnapName, SnapRef, StorageClass};

    fn manifest(seq: u64, full: bool, size: u64) -> Manifest {
        let snap = |n: u64| SnapRef {
            name: SnapName::new(&format!("zib-{n}")).unwrap(),
            guid: n.to_string(),
        };
        Manifest {
            format: crate::manifest::FORMAT.into(),
            version: crate::manifest::VERSION,
            dataset: DatasetName::new("tank/a").unwrap(),
            seq,
            from: (!full).then(|| snap(seq - 1)),
            to: snap(seq),
            snapshot_created: chrono::DateTime::UNIX_EPOCH,
            committed_at: chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::days(seq as i64),
            send_args: vec![],
            attempt: 0,
            storage_class: StorageClass::DeepArchive,
            chunk_size: 1 << 20,
            stream_size: size,
            stream_sha256: String::new(),
            chunks: vec![],
            zib_version: String::new(),
            legacy: None,
        }
    }

    #[test]
    fn a_full_starts_it_and_incrementals_from_its_end_extend_it() {
        let c = ChainCache::after_commit(None, None, "m1", &manifest(1, true, 100)).unwrap();
        let c = ChainCache::after_commit(Some(c), Some("m1"), "m2", &manifest(2, false, 7));
        let c = ChainCache::after_commit(c, Some("m2"), "m3", &manifest(3, false, 8)).unwrap();
        assert_eq!(c.keys, ["m1", "m2", "m3"]);
        let s = &c.summary;
        assert_eq!((s.full_seq, s.full_size, s.incremental_sizes.clone()), (1, 100, vec![7, 8]));
        assert_eq!(s.full_committed_at, manifest(1, true, 0).committed_at);
        // An incremental from something else than the cache's end: unknown.
        assert_eq!(
            ChainCache::after_commit(Some(c.clone()), Some("m9"), "m4", &manifest(4, false, 1)),
            None
        );
        assert_eq!(ChainCache::after_commit(None, Some("m3"), "m4", &manifest(4, false, 1)), None);
        assert_eq!(
            ChainCache::after_commit(Some(c.clone()), None, "m4", &manifest(4, false, 1)),
            None
        );
        // A full replaces whatever was there.
        let f =
            ChainCache::after_commit(Some(c), Some("m3"), "m4", &manifest(4, true, 50)).unwrap();
        assert_eq!((f.keys.len(), f.summary.full_seq), (1, 4));
    }

    #[test]
    fn it_is_trusted_only_for_the_newest_backup_with_every_link_listed() {
        let c = ChainCache::after_commit(None, None, "m1", &manifest(1, true, 100));
        let c = ChainCache::after_commit(c, Some("m1"), "m2", &manifest(2, false, 7)).unwrap();
        let all = |_: &str| true;
        assert_eq!(c.summary_if_listed("m2", all), Some(&c.summary));
        assert_eq!(c.summary_if_listed("m3", all), None, "not the newest backup's chain");
        assert_eq!(c.summary_if_listed("m2", |k| k != "m1"), None, "a link left the bucket");
    }
}
