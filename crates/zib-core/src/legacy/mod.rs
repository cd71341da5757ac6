//! Adopting buckets made by zfs-incremental-backup, the tool zib grew out of.
//!
//! Its users have a RON save file and chunks at `<object_prefix><p>0/<i>` (the full) and
//! `<object_prefix><p>{n-1}_<p>{n}/<i>` (each incremental), one plain PUT each, no manifest.
//! Import writes zib manifests that point at those chunks as they are (nothing is uploaded,
//! copied or overwritten), after checking from the listing that each stream is whole. The
//! decisions live here, pure; `zibd import-legacy` does the listing, HEADs and PUTs.

pub mod adopt;
pub mod layout;
pub mod resume;
pub mod save_file;

pub use adopt::{AdoptInput, AdoptPlan, LocalSnapshot, plan_adoption};
pub use layout::{ChunkTags, LegacyObject, LegacyStream, streams_from_listing};
pub use resume::{Resume, ResumeDecision, ResumeTarget, plan_resume};
pub use save_file::{Progress, SaveFile};

/// The tool named in adopted manifests.
pub const TOOL: &str = "zfs-incremental-backup";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("save file {path}: not a zfs-incremental-backup save file: {message}")]
    SaveFile { path: String, message: String },
    #[error("stream {stream_key} is incomplete: {key} is missing{why}")]
    MissingChunk { stream_key: String, key: String, why: String },
    #[error("stream {stream_key} is not whole: {key} {problem}")]
    BadChunk { stream_key: String, key: String, problem: String },
    #[error("stream {stream_key}: {problem}")]
    BadStream { stream_key: String, problem: String },
    #[error("local snapshot {snapshot} does not match the save file: {problem}")]
    LocalMismatch { snapshot: String, problem: String },
}
