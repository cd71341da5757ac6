//! What the next backup builds on, decided from the local record and the bucket's listing.
//!
//! The local state is a cache: the base it remembers is only good if its manifest is in the
//! bucket the backup goes to now. A state restored from an old copy, a changed bucket or
//! prefix, or an emptied or expired bucket would otherwise give incrementals whose base is not
//! there, and the restore would find a broken chain long after status said success.

use crate::state::Committed;

/// The base of the next backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base<'a> {
    /// Nothing committed, here or in the local record: a full.
    Nothing,
    /// The local record's base; its manifest is in the listing.
    Local,
    /// The catalog is ahead of the local record (a lost or older state file): continue from
    /// this manifest.
    Catalog { seq: u64, key: &'a str },
    /// The local record's base has no manifest in the listing: start a new chain.
    NotListed,
}

/// Chooses the base from the local `last` and the `(seq, key)` of every manifest listed.
pub fn choose_base<'a>(
    last: Option<&Committed>,
    listed: impl IntoIterator<Item = (u64, &'a str)> + Clone,
) -> Base<'a> {
    let newest = listed.clone().into_iter().max_by_key(|(seq, _)| *seq);
    let local_seq = last.map_or(0, |c| c.seq);
    match (last, newest) {
        (_, Some((seq, key))) if seq > local_seq => Base::Catalog { seq, key },
        (None, _) => Base::Nothing,
        (Some(c), _) if listed.into_iter().any(|(_, k)| k == c.manifest_key) => Base::Local,
        (Some(_), _) => Base::NotListed,
    }
}

/// Whether a run is skipped as idle (issue 12): a scheduled or triggered incremental with
/// fewer than `min_change` bytes written since its base (`written@<base>`; `None` when that is
/// unknown, e.g. the base snapshot is gone) takes no snapshot and uploads nothing. `min_change`
/// 0 never skips, and neither does a forced full: the user asked for a new chain.
pub fn skip_idle(min_change: u64, written_since_base: Option<u64>, force_full: bool) -> bool {
    !force_full && min_change > 0 && written_since_base.is_some_and(|w| w < min_change)
}

/// The seq of the next backup: after the local record's and after everything listed, so a new
/// chain never reuses a number the catalog already has.
pub fn next_seq<'a>(
    last: Option<&Committed>,
    listed: impl IntoIterator<Item = (u64, &'a str)>,
) -> u64 {
    let listed = listed.into_iter().map(|(seq, _)| seq).max().unwrap_or(0);
    last.map_or(0, |c| c.seq).max(listed) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SnapName, SnapRef};

    fn committed(seq: u64, key: &str) -> Committed {
        Committed {
            seq,
            snapshot: SnapRef {
                name: SnapName::new("zib-20261125T030000Z").unwrap(),
                guid: "1".into(),
            },
            manifest_key: key.into(),
            committed_at: chrono::DateTime::UNIX_EPOCH,
            stream_size: 1,
            chain_full_seq: None,
        }
    }

    #[test]
    fn the_local_base_must_be_listed() {
        let listed = [(1, "m1"), (2, "m2")];
        assert_eq!(choose_base(Some(&committed(2, "m2")), listed), Base::Local);
        // A base from another bucket, or an emptied one: not listed, so a new chain.
        assert_eq!(choose_base(Some(&committed(2, "elsewhere")), listed), Base::NotListed);
        assert_eq!(choose_base(Some(&committed(5, "m5")), []), Base::NotListed);
        assert_eq!(next_seq(Some(&committed(5, "m5")), listed), 6);
    }

    #[test]
    fn an_idle_run_is_skipped_unless_forced_or_unknown_or_off() {
        assert!(skip_idle(65_536, Some(0), false));
        assert!(skip_idle(65_536, Some(65_535), false));
        assert!(!skip_idle(65_536, Some(65_536), false), "at min_change a backup is taken");
        assert!(!skip_idle(65_536, Some(0), true), "--full never skips");
        assert!(!skip_idle(65_536, None, false), "unknown change: back up");
        assert!(!skip_idle(0, Some(0), false), "min_change = 0 never skips");
    }

    #[test]
    fn the_catalog_ahead_of_the_state_wins() {
        let listed = [(1, "m1"), (3, "m3"), (2, "m2")];
        assert_eq!(choose_base(None, listed), Base::Catalog { seq: 3, key: "m3" });
        assert_eq!(
            choose_base(Some(&committed(2, "m2")), listed),
            Base::Catalog { seq: 3, key: "m3" }
        );
        assert_eq!(choose_base(None, []), Base::Nothing);
        assert_eq!(next_seq(None, []), 1);
        assert_eq!(next_seq(None, listed), 4, "a new chain after what is listed");
    }
}
