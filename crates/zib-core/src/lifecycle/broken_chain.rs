//! Chain safety (issue 12): what the next incremental is sent from, and what happens when its
//! base is gone from the dataset. An incremental needs its base's snapshot or bookmark, by
//! GUID; when both are gone (destroyed by hand, or replaced by others of the same name) the
//! chain cannot continue. Failing every night until someone runs `--full` loses backups, so by
//! default the next backup starts a new chain with a full stream (`on_broken_chain = "full"`);
//! `"fail"` keeps the old behaviour for those who want to look first.

use serde::{Deserialize, Serialize};

/// What a dataset's backup does when the base of its next incremental is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBrokenChain {
    /// Start a new chain with a full stream, with a log line and a status note.
    #[default]
    Full,
    /// Fail with an error saying how to start a new chain.
    Fail,
}

/// Why the base cannot be sent from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokenBase {
    /// Neither its snapshot nor its bookmark exists.
    Gone,
    /// A snapshot or bookmark of its name exists, but with another GUID: not the snapshot
    /// that was backed up, so a stream from it would not apply on the restored chain.
    OtherGuid { found: String },
}

impl std::fmt::Display for BrokenBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone => write!(f, "is gone and has no bookmark"),
            Self::OtherGuid { found } => write!(
                f,
                "exists only with another GUID ({found}): it is not the backed-up snapshot, and it has no bookmark with the backed-up GUID"
            ),
        }
    }
}

/// Where the next incremental is sent from, or what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseDecision {
    /// From the base's snapshot (it exists with the recorded GUID).
    Snapshot,
    /// From the base's bookmark (the snapshot is gone or not the same; the bookmark's GUID is
    /// the recorded one).
    Bookmark,
    /// The base is broken and the policy says: start a new chain with a full.
    NewChain(BrokenBase),
    /// The base is broken and the policy says: fail.
    Fail(BrokenBase),
}

/// Decides from the base's recorded GUID and the GUIDs of the snapshot and the bookmark of
/// its name found in the dataset (None: not there). The snapshot is preferred, then the
/// bookmark; a name with another GUID never counts.
pub fn decide_base(
    recorded_guid: &str,
    snapshot_guid: Option<&str>,
    bookmark_guid: Option<&str>,
    policy: OnBrokenChain,
) -> BaseDecision {
    if snapshot_guid == Some(recorded_guid) {
        return BaseDecision::Snapshot;
    }
    if bookmark_guid == Some(recorded_guid) {
        return BaseDecision::Bookmark;
    }
    let why = match snapshot_guid.or(bookmark_guid) {
        Some(found) => BrokenBase::OtherGuid { found: found.to_owned() },
        None => BrokenBase::Gone,
    };
    match policy {
        OnBrokenChain::Full => BaseDecision::NewChain(why),
        OnBrokenChain::Fail => BaseDecision::Fail(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BaseDecision::*;
    use OnBrokenChain::{Fail as F, Full};

    #[test]
    fn the_snapshot_then_the_bookmark_by_guid() {
        assert_eq!(decide_base("7", Some("7"), Some("7"), Full), Snapshot);
        assert_eq!(decide_base("7", Some("7"), None, F), Snapshot);
        assert_eq!(decide_base("7", None, Some("7"), F), Bookmark);
        // The snapshot was replaced by another of the same name: the bookmark still is the base.
        assert_eq!(decide_base("7", Some("8"), Some("7"), F), Bookmark);
    }

    #[test]
    fn a_broken_base_starts_a_new_chain_or_fails_as_configured() {
        assert_eq!(decide_base("7", None, None, Full), NewChain(BrokenBase::Gone));
        assert_eq!(decide_base("7", None, None, F), Fail(BrokenBase::Gone));
        let other = |g: &str| BrokenBase::OtherGuid { found: g.into() };
        assert_eq!(decide_base("7", Some("8"), None, Full), NewChain(other("8")));
        assert_eq!(decide_base("7", None, Some("9"), F), Fail(other("9")));
        assert_eq!(decide_base("7", Some("8"), Some("9"), Full), NewChain(other("8")));
        assert_eq!(OnBrokenChain::default(), Full, "the default is a new chain");
    }

    #[test]
    fn the_reasons_read_as_sentences() {
        assert_eq!(BrokenBase::Gone.to_string(), "is gone and has no bookmark");
        let s = BrokenBase::OtherGuid { found: "8".into() }.to_string();
        assert!(s.contains("another GUID (8)") && s.contains("no bookmark"), "{s}");
    }
}
