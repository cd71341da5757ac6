//! Restore drill decisions (issue 16): the only proof that a backup restores is restoring it.
//! A drill restores into a throwaway dataset whose name says what it is, and passes only when
//! the snapshot that arrived is the one that was backed up, by GUID: the manifest's, and the
//! source's when the source (its snapshot or bookmark) is still there. zibd carries it out.

use serde::{Deserialize, Serialize};

use crate::names::{DatasetName, NameError};

/// The prefix of every drill dataset's last component: zib destroys only datasets named so.
pub const DRILL_PREFIX: &str = "zib-drill-";

/// `<parent>/zib-drill-<id>`: where a drill restores. `parent` is a pool or a dataset.
pub fn drill_target(parent: &str, id: &str) -> Result<DatasetName, NameError> {
    DatasetName::new(&format!("{}/{DRILL_PREFIX}{id}", parent.trim_end_matches('/')))
}

/// Whether `ds` is a drill dataset (its last component starts with [`DRILL_PREFIX`], and it is
/// not a pool): the guard before any recursive destroy.
pub fn is_drill_target(ds: &DatasetName) -> bool {
    match ds.as_str().rsplit_once('/') {
        Some((_, last)) => last.starts_with(DRILL_PREFIX) && last.len() > DRILL_PREFIX.len(),
        None => false,
    }
}

/// Where the source's GUID of the drilled snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceGuid {
    Snapshot(String),
    Bookmark(String),
    /// Neither the snapshot nor a bookmark of it is on this machine (or the dataset is gone):
    /// the drill compares with the manifest only.
    Gone,
}

/// A drill's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DrillVerdict {
    Passed,
    Failed { reason: String },
}

/// Judges a drill from the GUIDs: the manifest's, the received snapshot's (None: it did not
/// arrive) and the source's.
pub fn judge(manifest_guid: &str, received: Option<&str>, source: &SourceGuid) -> DrillVerdict {
    let Some(received) = received else {
        return DrillVerdict::Failed {
            reason: "the restore ended but the snapshot is not on the drill dataset".into(),
        };
    };
    if received != manifest_guid {
        return DrillVerdict::Failed {
            reason: format!(
                "the received snapshot's GUID {received} is not the manifest's {manifest_guid}"
            ),
        };
    }
    match source {
        SourceGuid::Snapshot(g) | SourceGuid::Bookmark(g) if g != received => {
            let what =
                if matches!(source, SourceGuid::Snapshot(_)) { "snapshot" } else { "bookmark" };
            DrillVerdict::Failed {
                reason: format!(
                    "the received snapshot's GUID {received} is not the source {what}'s {g}"
                ),
            }
        }
        _ => DrillVerdict::Passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_targets_are_named_and_recognised() {
        assert_eq!(
            drill_target("tank", "20261203T0400").unwrap().as_str(),
            "tank/zib-drill-20261203T0400"
        );
        assert_eq!(
            drill_target("tank/scratch/", "x").unwrap().as_str(),
            "tank/scratch/zib-drill-x"
        );
        assert!(drill_target("tank", "a@b").is_err());
        let ds = |s: &str| DatasetName::new(s).unwrap();
        assert!(is_drill_target(&ds("tank/zib-drill-1")));
        assert!(is_drill_target(&ds("tank/a/zib-drill-1")));
        for not in [
            "tank",
            "zib-drill-1",
            "tank/zib-drill-",
            "tank/photos",
            "tank/zib-drill-1/child",
            "tank/x-zib-drill-1",
        ] {
            assert!(!is_drill_target(&ds(not)), "{not}");
        }
    }

    #[test]
    fn a_drill_passes_only_on_the_same_guid_everywhere() {
        let snap = SourceGuid::Snapshot("7".into());
        assert_eq!(judge("7", Some("7"), &snap), DrillVerdict::Passed);
        assert_eq!(judge("7", Some("7"), &SourceGuid::Bookmark("7".into())), DrillVerdict::Passed);
        assert_eq!(judge("7", Some("7"), &SourceGuid::Gone), DrillVerdict::Passed);
        let fail = |v: DrillVerdict| match v {
            DrillVerdict::Failed { reason } => reason,
            DrillVerdict::Passed => panic!("passed"),
        };
        assert!(fail(judge("7", None, &snap)).contains("not on the drill dataset"));
        assert!(fail(judge("7", Some("8"), &snap)).contains("not the manifest's 7"));
        assert!(
            fail(judge("7", Some("7"), &SourceGuid::Snapshot("9".into())))
                .contains("source snapshot's 9")
        );
        assert!(
            fail(judge("7", Some("7"), &SourceGuid::Bookmark("9".into())))
                .contains("source bookmark's 9")
        );
    }
}
