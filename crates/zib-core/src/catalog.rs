//! Chain reconstruction from the bucket's manifests alone.
//!
//! A dataset's catalog is its list of manifests. A restore of snapshot X needs the manifest
//! whose `to` is X, then the one whose `to` is its `from` (matched by GUID, as `zfs receive`
//! does), and so on back to a full stream.

use crate::manifest::Manifest;
use crate::names::{DatasetName, SnapName};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("no backup of {dataset} in the catalog")]
    Empty { dataset: DatasetName },
    #[error("no backup of {dataset}@{snapshot} in the catalog (known: {known})")]
    NoSuchSnapshot { dataset: DatasetName, snapshot: String, known: String },
    #[error(
        "broken chain for {dataset}: backup #{seq} ({snapshot}) is an incremental from {base} (guid {guid}), but no manifest for that snapshot exists"
    )]
    Broken { dataset: DatasetName, seq: u64, snapshot: SnapName, base: SnapName, guid: String },
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub dataset: DatasetName,
    /// Sorted by seq, then commit time.
    pub manifests: Vec<Manifest>,
}

impl Catalog {
    pub fn new(dataset: DatasetName, mut manifests: Vec<Manifest>) -> Self {
        manifests.retain(|m| m.dataset == dataset);
        manifests.sort_by_key(|m| (m.seq, m.committed_at));
        Self { dataset, manifests }
    }

    pub fn latest(&self) -> Option<&Manifest> {
        self.manifests.last()
    }

    /// The manifests to apply, full first, to restore `snapshot` (the latest when None).
    pub fn chain_to(&self, snapshot: Option<&SnapName>) -> Result<Vec<&Manifest>, ChainError> {
        let target = match snapshot {
            None => {
                self.latest().ok_or_else(|| ChainError::Empty { dataset: self.dataset.clone() })?
            }
            Some(s) => self.manifests.iter().rev().find(|m| &m.to.name == s).ok_or_else(|| {
                ChainError::NoSuchSnapshot {
                    dataset: self.dataset.clone(),
                    snapshot: s.to_string(),
                    known: self
                        .manifests
                        .iter()
                        .map(|m| m.to.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?,
        };
        let mut chain = vec![target];
        let mut cur = target;
        while let Some(base) = &cur.from {
            let prev = self.base_of(cur).ok_or_else(|| ChainError::Broken {
                dataset: self.dataset.clone(),
                seq: cur.seq,
                snapshot: cur.to.name.clone(),
                base: base.name.clone(),
                guid: base.guid.clone(),
            })?;
            chain.push(prev);
            cur = prev;
        }
        chain.reverse();
        Ok(chain)
    }

    /// The manifest an incremental applies on: the newest earlier one whose `to` has the
    /// incremental's base GUID. None for a full or when the base is missing.
    fn base_of(&self, m: &Manifest) -> Option<&Manifest> {
        let base = m.from.as_ref()?;
        self.manifests.iter().rev().find(|b| b.seq < m.seq && b.to.guid == base.guid)
    }

    /// The catalog grouped into chains: each full with every incremental that builds on it
    /// (branches included), oldest full first; and, apart, the manifests that lead back to no
    /// full (a broken chain).
    pub fn chains(&self) -> (Vec<Chain<'_>>, Vec<&Manifest>) {
        // Manifests are sorted by seq and a base always has a lower seq than what builds on it,
        // so one pass in seq order knows each base's chain before it meets the incremental.
        let mut by_guid: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        let mut chain_of: Vec<Option<usize>> = Vec::with_capacity(self.manifests.len());
        let mut chains: Vec<Chain<'_>> = Vec::new();
        let mut broken = Vec::new();
        for (i, m) in self.manifests.iter().enumerate() {
            let chain = match &m.from {
                None => {
                    chains.push(Chain { links: Vec::new() });
                    Some(chains.len() - 1)
                }
                // The newest earlier manifest with the base's GUID, as `base_of` finds it.
                Some(base) => by_guid
                    .get(base.guid.as_str())
                    .and_then(|ix| ix.iter().rev().find(|&&j| self.manifests[j].seq < m.seq))
                    .and_then(|&j| chain_of[j]),
            };
            match chain {
                Some(c) => chains[c].links.push(m),
                None => broken.push(m),
            }
            chain_of.push(chain);
            by_guid.entry(m.to.guid.as_str()).or_default().push(i);
        }
        (chains, broken)
    }
}

/// One chain: a full stream and every incremental that builds on it, in seq order.
#[derive(Debug, Clone)]
pub struct Chain<'a> {
    /// Full first.
    pub links: Vec<&'a Manifest>,
}

impl<'a> Chain<'a> {
    pub fn full(&self) -> &'a Manifest {
        self.links[0]
    }
    /// The newest link (highest seq).
    pub fn newest(&self) -> &'a Manifest {
        self.links.last().expect("a chain is never empty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{SnapRef, sample};

    fn m(seq: u64, from: Option<(&str, &str)>, to: (&str, &str)) -> Manifest {
        let mut x = sample();
        x.seq = seq;
        x.from = from.map(|(n, g)| SnapRef { name: SnapName::new(n).unwrap(), guid: g.into() });
        x.to = SnapRef { name: SnapName::new(to.0).unwrap(), guid: to.1.into() };
        x
    }

    #[test]
    fn chains_walk_back_to_a_full() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let c = Catalog::new(
            ds,
            vec![
                m(3, Some(("b", "2")), ("c", "3")),
                m(1, None, ("a", "1")),
                m(2, Some(("a", "1")), ("b", "2")),
                m(4, None, ("d", "4")),
                m(5, Some(("d", "4")), ("e", "5")),
            ],
        );
        let seqs = |v: Vec<&Manifest>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(c.chain_to(None).unwrap()), vec![4, 5]);
        assert_eq!(seqs(c.chain_to(Some(&SnapName::new("c").unwrap())).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(c.chain_to(Some(&SnapName::new("a").unwrap())).unwrap()), vec![1]);
        let e = c.chain_to(Some(&SnapName::new("zz").unwrap())).unwrap_err().to_string();
        assert!(e.contains("zz") && e.contains("known: a, b, c, d, e"), "{e}");
    }

    #[test]
    fn chains_group_fulls_with_their_incrementals() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let c = Catalog::new(
            ds,
            vec![
                m(1, None, ("a", "1")),
                m(2, Some(("a", "1")), ("b", "2")),
                m(3, None, ("c", "3")),
                m(4, Some(("b", "2")), ("d", "4")),
                m(5, Some(("c", "3")), ("e", "5")),
                m(6, Some(("x", "99")), ("f", "6")),
                m(7, Some(("f", "6")), ("g", "7")),
            ],
        );
        let (chains, broken) = c.chains();
        let seqs: Vec<Vec<u64>> =
            chains.iter().map(|c| c.links.iter().map(|m| m.seq).collect()).collect();
        assert_eq!(seqs, vec![vec![1, 2, 4], vec![3, 5]]);
        assert_eq!(broken.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!((chains[0].full().seq, chains[0].newest().seq), (1, 4));
    }

    #[test]
    fn a_missing_link_is_reported() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let c = Catalog::new(ds, vec![m(1, None, ("a", "1")), m(3, Some(("b", "2")), ("c", "3"))]);
        let e = c.chain_to(None).unwrap_err().to_string();
        assert!(e.contains("#3") && e.contains("from b"), "{e}");
        let empty = Catalog::new(DatasetName::new("x").unwrap(), vec![]);
        assert!(matches!(empty.chain_to(None), Err(ChainError::Empty { .. })));
    }
}
