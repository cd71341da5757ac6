//! The original tool's save file: RON, `(config: (...), state: (...))`, its config and its
//! progress in one file. Read only; zib never writes it.

use serde::{Deserialize, Serialize};

use super::LegacyError;
use crate::names::{DatasetName, SnapName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveFile {
    pub config: LegacyConfig,
    pub state: LegacyState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyConfig {
    pub dataset: LegacyDataset,
    pub bucket: String,
    /// Snapshots are `<snapshot_prefix><n>`, n from 0.
    pub snapshot_prefix: String,
    /// Prepended as is to every key (the tool adds no '/').
    pub object_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyDataset {
    pub zpool: String,
    pub dataset: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyState {
    /// Streams 0..snapshots_backed_up are complete.
    pub snapshots_backed_up: u64,
    /// The run under way for stream `snapshots_backed_up`, if any.
    pub backing_up_progress: Option<Progress>,
}

/// Where a run of the original tool stopped, for stream `snapshots_backed_up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Taking the snapshot (it may exist already).
    CreatingSnapshot,
    /// `zfs send` into its temp file; nothing uploaded.
    SendingToFile,
    /// Chunk by chunk; `parts_uploaded` chunks are recorded as stored.
    Uploading(UploadProgress),
    /// Every chunk stored; only the temp file was left to delete.
    RemovingFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadProgress {
    pub parts_uploaded: u64,
    pub upload_save_data: ChunkStep,
}

/// The step of the chunk after the `parts_uploaded` recorded ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkStep {
    ReservingAmount,
    /// Its PUT was about to be sent, or sent: the chunk may be stored although not counted.
    Uploading,
    /// Its PUT succeeded (the tool saves no further count after the last chunk).
    MarkingAmountUsed,
}

impl SaveFile {
    /// Parses the save file's text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, LegacyError> {
        let err = |message: String| LegacyError::SaveFile { path: path.into(), message };
        let f: SaveFile = ron::from_str(text).map_err(|e| err(e.to_string()))?;
        f.dataset().map_err(|e| err(e.to_string()))?;
        for n in [0, f.state.snapshots_backed_up] {
            SnapName::new(&f.snapshot_name(n)).map_err(|e| err(e.to_string()))?;
        }
        Ok(f)
    }

    pub fn dataset(&self) -> Result<DatasetName, crate::names::NameError> {
        DatasetName::new(&format!("{}/{}", self.config.dataset.zpool, self.config.dataset.dataset))
    }

    /// The tool's name for snapshot `n`.
    pub fn snapshot_name(&self, n: u64) -> String {
        format!("{}{n}", self.config.snapshot_prefix)
    }

    /// The key stream `n`'s chunks share: `<key>/<i>`.
    pub fn stream_key(&self, n: u64) -> String {
        let p = &self.config.snapshot_prefix;
        match n.checked_sub(1) {
            None => format!("{}{p}0", self.config.object_prefix),
            Some(prev) => format!("{}{p}{prev}_{p}{n}", self.config.object_prefix),
        }
    }

    /// The streams the save file records as complete: 0..snapshots_backed_up.
    pub fn completed(&self) -> u64 {
        self.state.snapshots_backed_up
    }

    /// Whether the run under way had stored every chunk of stream `completed()` (it stopped
    /// while deleting its temp file): that stream is complete too.
    pub fn unfinished_is_uploaded(&self) -> bool {
        matches!(self.state.backing_up_progress, Some(Progress::RemovingFile))
    }

    /// Whether a run was under way that may have stored chunks of stream `completed()`.
    pub fn has_unfinished_upload(&self) -> bool {
        matches!(self.state.backing_up_progress, Some(Progress::Uploading(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: &str = r#"(config: (dataset: (zpool: "P", dataset: "D"), bucket: "B", snapshot_prefix: "backup", object_prefix: "photos/"), state: (snapshots_backed_up: 3, backing_up_progress: None))"#;

    #[test]
    fn parses_the_compact_form() {
        let f = SaveFile::parse("s.ron", IDLE).unwrap();
        assert_eq!(f.dataset().unwrap().as_str(), "P/D");
        assert_eq!(f.completed(), 3);
        assert_eq!(f.stream_key(0), "photos/backup0");
        assert_eq!(f.stream_key(3), "photos/backup2_backup3");
        assert_eq!(f.snapshot_name(12), "backup12");
        assert!(!f.has_unfinished_upload() && !f.unfinished_is_uploaded());
    }

    #[test]
    fn parses_every_progress_variant() {
        let cases = [
            ("Some(CreatingSnapshot)", Progress::CreatingSnapshot),
            ("Some(SendingToFile)", Progress::SendingToFile),
            ("Some(RemovingFile)", Progress::RemovingFile),
        ];
        for (text, want) in cases {
            let f = SaveFile::parse("s", &IDLE.replace("None", text)).unwrap();
            assert_eq!(f.state.backing_up_progress, Some(want));
        }
        for (step, want) in [
            ("ReservingAmount", ChunkStep::ReservingAmount),
            ("Uploading", ChunkStep::Uploading),
            ("MarkingAmountUsed", ChunkStep::MarkingAmountUsed),
        ] {
            let text = format!("Some(Uploading((parts_uploaded: 4, upload_save_data: {step})))");
            let f = SaveFile::parse("s", &IDLE.replace("None", &text)).unwrap();
            assert_eq!(
                f.state.backing_up_progress,
                Some(Progress::Uploading(UploadProgress {
                    parts_uploaded: 4,
                    upload_save_data: want
                }))
            );
            assert!(f.has_unfinished_upload());
        }
    }

    #[test]
    fn parses_the_pretty_fixture() {
        // As the tool writes it: ron::ser::to_string_pretty with the default config.
        let text = include_str!("../../tests/fixtures/legacy-save-uploading.ron");
        let f = SaveFile::parse("fixture", text).unwrap();
        assert_eq!(f.config.object_prefix, "immich/");
        assert_eq!(f.stream_key(2), "immich/backup1_backup2");
        assert!(f.has_unfinished_upload());
    }

    #[test]
    fn refuses_other_files_by_name() {
        for bad in [
            "{}",
            "(config: (), state: ())",
            &IDLE.replace("None", "Some(Paused)"),
            &IDLE.replace("\"D\"", "\"a@b\""),
            &IDLE.replace("backup_prefix", "x").replace("bucket", "bucket_name"),
        ] {
            let e = SaveFile::parse("/etc/s.ron", bad).unwrap_err().to_string();
            assert!(e.contains("/etc/s.ron"), "{e}");
        }
    }
}
