//! What the next backup builds on, decided from the local record and the bucket's listing.
//!
//! The local state is a cache: the base it remembers is only good if its manifest is in the
//! bucket the backup goes to now. A state restored from an old copy, a changed bucket or
//! prefix, or an emptied or expired bucket would otherwise give incrementals whose base is not
//! there, and the restore would find a broken chain long after status said success.

use chrono::{DateTime, Utc};

use crate::names::{SnapName, SnapPrefix};
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

/// The snapshot a backup starting at `now` takes, or `None` if that name is the base's own or
/// one of the snapshots `taken` already (names have one-second resolution: two backups within
/// one second, or a clock that went back, would otherwise adopt a snapshot this backup did not
/// take); the caller asks again a moment later.
pub fn next_snapshot_name(
    prefix: &SnapPrefix,
    now: DateTime<Utc>,
    base: Option<&SnapName>,
    taken: &[String],
) -> Option<SnapName> {
    let name = SnapName::for_backup(prefix, now);
    let free = base != Some(&name) && !taken.iter().any(|t| t == name.as_str());
    free.then_some(name)
}

/// Which local snapshots to destroy once a backup of `newest` is committed: of `snapshots`
/// (oldest first, as `zfs list -s createtxg` gives them) the zib-made ones under `prefix` beyond
/// the newest `keep` (at least 1). Never a snapshot zib did not make, never `newest`.
pub fn snapshots_to_prune<'a>(
    snapshots: &'a [SnapName],
    prefix: &SnapPrefix,
    keep: u32,
    newest: &SnapName,
) -> Vec<&'a SnapName> {
    let ours: Vec<&SnapName> = snapshots.iter().filter(|s| s.is_zib_made(prefix)).collect();
    let keep = keep.max(1) as usize;
    let excess = ours.len().saturating_sub(keep);
    ours.into_iter().take(excess).filter(|s| *s != newest).collect()
}

/// Which bookmarks to destroy once `newest` is committed and bookmarked: of `bookmarks` (name
/// and creation txg, as `zfs list -t bookmark` gives them) the zib-made ones under `prefix`
/// older, by creation txg, than `newest`'s own. Bookmarks named like zib's but not older are
/// left alone, and none goes while `newest` has no bookmark (nothing would be left to send an
/// incremental from).
pub fn bookmarks_to_prune<'a>(
    bookmarks: &'a [(SnapName, u64)],
    prefix: &SnapPrefix,
    newest: &SnapName,
) -> Vec<&'a SnapName> {
    let Some(txg) = bookmarks.iter().find(|(b, _)| b == newest).map(|(_, txg)| *txg) else {
        return Vec::new();
    };
    bookmarks.iter().filter(|(b, t)| b.is_zib_made(prefix) && *t < txg).map(|(b, _)| b).collect()
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn the_next_snapshot_name_never_repeats_the_base() {
        let prefix = SnapPrefix::default();
        let name = next_snapshot_name(&prefix, at("2026-11-25T03:00:00Z"), None, &[]).unwrap();
        assert_eq!(name.as_str(), "zib-20261125T030000Z");
        let base = name.clone();
        // Within the same second: no name, ask again.
        let same_second = at("2026-11-25T03:00:00.900Z");
        assert_eq!(next_snapshot_name(&prefix, same_second, Some(&base), &[]), None);
        let later = at("2026-11-25T03:00:01Z");
        let next = next_snapshot_name(&prefix, later, Some(&base), &[]).unwrap();
        assert_eq!(next.as_str(), "zib-20261125T030001Z");
        // A snapshot of that name exists already (the clock went back): ask again.
        let taken = ["manual".to_owned(), "zib-20261125T030001Z".to_owned()];
        assert_eq!(next_snapshot_name(&prefix, later, Some(&base), &taken), None);
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_touches_foreign_snapshots() {
        let prefix = SnapPrefix::default();
        let snaps: Vec<SnapName> = [
            "zib-20261101T030000Z",
            "manual",
            "zib-20261102T030000Z",
            "zib-not-a-time",
            "zib-20261103T030000Z",
            "zib-20261104T030000Z",
        ]
        .iter()
        .map(|n| SnapName::new(n).unwrap())
        .collect();
        let newest = &snaps[5];
        let names = |v: Vec<&SnapName>| v.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            names(snapshots_to_prune(&snaps, &prefix, 2, newest)),
            ["zib-20261101T030000Z", "zib-20261102T030000Z"]
        );
        // keep 0 is taken as 1: the newest stays.
        assert_eq!(snapshots_to_prune(&snaps, &prefix, 0, newest).len(), 3);
        assert!(snapshots_to_prune(&snaps, &prefix, 4, newest).is_empty());
        assert!(snapshots_to_prune(&snaps, &prefix, 9, newest).is_empty());
        // A `newest` that is listed among the older ones (clock moved back) is still kept.
        let odd = &snaps[0];
        assert_eq!(names(snapshots_to_prune(&snaps, &prefix, 2, odd)), ["zib-20261102T030000Z"]);
    }

    #[test]
    fn bookmarks_older_than_the_newest_go_foreign_and_newer_ones_stay() {
        let prefix = SnapPrefix::default();
        let books: Vec<(SnapName, u64)> = [
            ("zib-20261101T030000Z", 10),
            ("manual", 11),
            ("zib-20261102T030000Z", 12),
            ("zib-20261103T030000Z", 14),
            // Named like zib's, created after the newest (a clock that went back).
            ("zib-20261001T030000Z", 15),
            ("zib-20261104T030000Z", 14),
        ]
        .iter()
        .map(|(n, t)| (SnapName::new(n).unwrap(), *t))
        .collect();
        let names = |v: Vec<&SnapName>| v.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>();
        let newest = SnapName::new("zib-20261103T030000Z").unwrap();
        assert_eq!(
            names(bookmarks_to_prune(&books, &prefix, &newest)),
            ["zib-20261101T030000Z", "zib-20261102T030000Z"],
            "older zib-made ones only: not `manual`, not the newest, not one of the same or a later txg"
        );
        // The newest has no bookmark: none goes.
        let unbookmarked = SnapName::new("zib-20261105T030000Z").unwrap();
        assert!(bookmarks_to_prune(&books, &prefix, &unbookmarked).is_empty());
        // Another prefix: zib made none of these.
        let other = SnapPrefix::new("other-").unwrap();
        assert!(bookmarks_to_prune(&books, &other, &newest).is_empty());
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
