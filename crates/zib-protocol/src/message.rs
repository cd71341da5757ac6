//! The messages: [`Request`] (zibctl → zibd) and [`Response`] (zibd → zibctl), and the status
//! records they carry.
//!
//! JSON shape: both enums are internally tagged with `"type"` in snake_case, e.g.
//! `{"type":"trigger","dataset":"tank/photos","wait":true}`. Times are RFC 3339 strings in UTC
//! (`chrono::DateTime<Utc>`), sizes are bytes, durations are whole seconds.
//!
//! Compatibility rules (see the crate docs): new variants and new optional fields may be added
//! without a protocol bump; every enum a daemon sends has an `Unknown` catch-all so an older
//! zibctl still reads a newer daemon's reply; fields added later carry `#[serde(default)]`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A request from a client. Read-only requests ([`Request::is_mutating`] is false) may be sent by
/// anyone who can connect; the others need root or the configured socket group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Status of one dataset, or of all (`None`), plus daemon-level info.
    /// Reply: [`Response::Status`].
    Status {
        #[serde(default)]
        dataset: Option<String>,
    },
    /// Start a backup of `dataset` now. Reply without `wait`: [`Response::Ok`] (or an error);
    /// with `wait`: zero or more [`Response::Progress`] frames, then one [`Response::Done`]
    /// (or a single [`Response::Error`] if the run could not start).
    Trigger {
        dataset: String,
        #[serde(default)]
        wait: bool,
        /// Start a new chain with a full backup (`zibd backup --full`): an unfinished backup is
        /// abandoned and a full stream is sent even if an incremental is possible. Added in v1
        /// (absent = false); left out of the JSON when false.
        #[serde(default, skip_serializing_if = "is_false")]
        full: bool,
    },
    /// Pause one dataset or all (`None`): its schedule is skipped and a running job stops at its
    /// next safe point. Reply: [`Response::Ok`].
    Pause {
        #[serde(default)]
        dataset: Option<String>,
    },
    /// Undo [`Request::Pause`] for one dataset or all (`None`). Reply: [`Response::Ok`].
    Resume {
        #[serde(default)]
        dataset: Option<String>,
    },
    /// Stop the running job of `dataset` at its next safe point. Reply: [`Response::Ok`].
    Cancel { dataset: String },
    /// Re-read the configuration file (as SIGHUP). Reply: [`Response::Ok`] or an error naming
    /// what is wrong with the new file (the old configuration stays in force).
    Reload,
    /// Reply: [`Response::Version`].
    Version,
    /// Start a restore job in the daemon. Reply: [`Response::RestoreStarted`].
    RestoreStart(RestoreStart),
    /// Status of one restore job (`id`) or of all. Reply: [`Response::RestoreStatus`].
    RestoreStatus {
        #[serde(default)]
        id: Option<String>,
    },
    /// Stop restore job `id` at its next safe point; a daemon restart does not continue it
    /// (`restore start` of the same target does). Reply: [`Response::Ok`], or `not_found`.
    /// Added within v1: an older daemon answers `unsupported`.
    RestoreCancel { id: String },
    /// The cost ledger of one dataset's backups, or of every backup under the configured
    /// prefix (`None`), as `zibd cost` computes it. Reply: [`Response::Report`].
    Cost {
        #[serde(default)]
        dataset: Option<String>,
    },
    /// Remote retention of one dataset, or of every configured one (`None`), now, as `zibd
    /// prune` runs it, under the dataset's job lock (refused while its backup runs). Reply:
    /// [`Response::Report`]. (Not `"prune"`: a v1 fixture sends a future `prune` with fields
    /// this one lacks, which must stay unsupported rather than delete.)
    PruneNow {
        #[serde(default)]
        dataset: Option<String>,
        /// Report what would be deleted; delete nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// Verify one dataset's backups, or every backup under the configured prefix (`None`), as
    /// `zibd verify` does: one LIST per 1,000 keys and one HEAD per chunk, nothing downloaded
    /// or thawed. Reply: [`Response::Report`] (its JSON says `clean`).
    Verify {
        #[serde(default)]
        dataset: Option<String>,
        /// Also download and hash every chunk readable without a thaw (`zibd verify --deep`;
        /// archived chunks are quoted, never thawed through the daemon).
        #[serde(default, skip_serializing_if = "is_false")]
        deep: bool,
    },
    /// A restore drill of `dataset` (a configured one), as `zibd restore drill` runs it, as a
    /// task of the daemon under the dataset's job lock (refused while its backup runs; its
    /// backups wait for the drill): the newest backup (or `snapshot`) restored into a throwaway
    /// `<pool>/zib-drill-<id>`, never mounted, the received snapshot's GUID checked against the
    /// manifest's and the source's, the drill dataset destroyed. Archived chunks are thawed
    /// (and paid for) only with `yes`; without it nothing is restored and the reply is the
    /// quote. Reply: [`Response::Report`], its JSON's `result` one of `passed`, `failed` or
    /// `needs_consent`. Added within v1: an older daemon answers `unsupported`.
    RestoreDrill {
        dataset: String,
        /// The snapshot to drill (its name, without the dataset); the newest when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
        /// Thaw archived chunks, paying for it.
        #[serde(default, skip_serializing_if = "is_false")]
        yes: bool,
        /// The thaw tier for archived chunks.
        #[serde(default)]
        tier: RestoreTier,
    },
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    /// Every `"type"` tag this version knows, to tell an unknown request (from a newer client)
    /// from a malformed one.
    pub const KNOWN_TYPES: &'static [&'static str] = &[
        "status",
        "trigger",
        "pause",
        "resume",
        "cancel",
        "reload",
        "version",
        "restore_start",
        "restore_cancel",
        "restore_status",
        "cost",
        "prune_now",
        "verify",
        "restore_drill",
    ];

    /// Whether this request changes anything (and so needs root or the socket group).
    pub fn is_mutating(&self) -> bool {
        !matches!(self, Request::Status { .. } | Request::Version | Request::RestoreStatus { .. })
    }

    /// The `"type"` tag of this request, e.g. `"trigger"` (for messages and logs).
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Status { .. } => "status",
            Request::Trigger { .. } => "trigger",
            Request::Pause { .. } => "pause",
            Request::Resume { .. } => "resume",
            Request::Cancel { .. } => "cancel",
            Request::Reload => "reload",
            Request::Version => "version",
            Request::RestoreStart(_) => "restore_start",
            Request::RestoreStatus { .. } => "restore_status",
            Request::RestoreCancel { .. } => "restore_cancel",
            Request::Cost { .. } => "cost",
            Request::PruneNow { .. } => "prune_now",
            Request::Verify { .. } => "verify",
            Request::RestoreDrill { .. } => "restore_drill",
        }
    }
}

/// Parameters of [`Request::RestoreStart`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStart {
    /// The backed-up dataset to restore (its name in the catalog).
    pub dataset: String,
    /// Restore up to this snapshot; `None` = the newest one in the catalog.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The local dataset to receive into (must not exist, or be empty).
    pub to: String,
    /// Retrieval tier for objects in cold storage.
    #[serde(default)]
    pub tier: RestoreTier,
    /// How many days thawed copies stay readable.
    #[serde(default = "default_restore_days")]
    pub days: u32,
    /// Read from this bucket instead of the configured one (root or the daemon's user only).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Read under this key prefix instead of the configured one (root or the daemon's user only).
    #[serde(default)]
    pub prefix: Option<String>,
    /// `zfs receive -o mountpoint=...` for the restored dataset (root or the daemon's user
    /// only: the daemon mounts as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    /// Leave the restored dataset unmounted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_mount: bool,
    /// Key of an encrypted dataset, loaded at the end: `file:///path` or a path (root or the
    /// daemon's user only: the daemon reads it as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_location: Option<String>,
}

fn default_restore_days() -> u32 {
    7
}

pub use zib_core::drill_summary::{DrillSummary, DrillTrigger};
/// The retrieval tier: zib-core's one type, `"bulk"` or `"standard"` on the wire. A request with
/// another tier is refused as `invalid_request`; a status reply naming a tier this build does not
/// know reads it as `None` (see [`RestoreJobStatus::tier`]).
pub use zib_core::pricing::RestoreTier;
pub use zib_core::verify_summary::{VerifySummary, VerifyTrigger};

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The request was carried out. `message` says what happened, for people
    /// (e.g. "paused 3 datasets").
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The request failed; nothing was changed unless `message` says otherwise.
    Error { kind: ErrorKind, message: String },
    /// Reply to [`Request::Status`].
    Status { daemon: DaemonInfo, datasets: Vec<DatasetStatus> },
    /// Reply to [`Request::Version`].
    Version { daemon_version: String, protocol_version: u32 },
    /// A progress update of a run a client waits for (`trigger --wait`).
    Progress(ProgressUpdate),
    /// The final frame of a waited-for run.
    Done {
        ok: bool,
        message: String,
        /// The snapshot the run backed up, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
        /// Bytes uploaded by the run, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
    },
    /// Reply to [`Request::RestoreStart`]: the new job's id.
    RestoreStarted { id: String },
    /// Reply to [`Request::RestoreStatus`].
    RestoreStatus { jobs: Vec<RestoreJobStatus> },
    /// Reply to [`Request::Cost`], [`Request::PruneNow`], [`Request::Verify`] and
    /// [`Request::RestoreDrill`]: the report of the matching zibd
    /// foreground command, `text` as it prints it and `json` as its `--json` prints it.
    Report { text: String, json: serde_json::Value },
    /// A reply this build does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl Response {
    /// Shorthand for an [`Response::Error`].
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error { kind, message: message.into() }
    }

    /// Shorthand for an [`Response::Ok`] with a message.
    pub fn ok(message: impl Into<String>) -> Self {
        Response::Ok { message: Some(message.into()) }
    }

    /// Whether this frame ends a reply: everything except [`Response::Progress`].
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Progress(_))
    }
}

/// What went wrong, for programs (the message is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller is not root and not in the socket group.
    PermissionDenied,
    /// No such dataset (or restore job, snapshot, ...).
    NotFound,
    /// The frame was not valid JSON or not a valid request.
    InvalidRequest,
    /// The request type or protocol version is not supported by this daemon.
    Unsupported,
    /// The frame was larger than [`crate::MAX_FRAME_LEN`]; the connection is closed.
    FrameTooLarge,
    /// The dataset is busy (e.g. a run is already going), try later.
    Busy,
    /// The request conflicts with the current state (e.g. restore target exists).
    Conflict,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A bug or an unexpected failure inside the daemon.
    Internal,
    /// A kind this build does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::FrameTooLarge => "frame too large",
            ErrorKind::Busy => "busy",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ShuttingDown => "shutting down",
            ErrorKind::Internal => "internal error",
            ErrorKind::Unknown => "error",
        })
    }
}

/// Daemon-wide part of a status reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// zibd's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The protocol version zibd speaks.
    pub protocol_version: u32,
    /// When this zibd process started.
    pub started_at: DateTime<Utc>,
    /// Seconds since `started_at`.
    pub uptime_secs: u64,
    /// Backup jobs running now.
    pub jobs_running: u32,
    /// The configured limit of concurrent jobs.
    #[serde(default)]
    pub jobs_max: Option<u32>,
    /// Restore jobs not yet finished.
    #[serde(default)]
    pub restores_running: u32,
    /// The last verification of the whole prefix (scheduled or `zibctl verify`), kept across
    /// restarts; None before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<Box<VerifySummary>>,
    /// The next scheduled verification (`daemon.verify_schedule`); None when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verify: Option<DateTime<Utc>>,
    /// The restore drills of the datasets that have one scheduled (`drill_schedule`), running
    /// or kept (the last of each, kept across restarts); of the one dataset asked about, when
    /// the request named one. Added within v1: absent from older daemons, and left out of the
    /// JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<DrillStatus>,
}

/// One dataset's restore drills, in [`DaemonInfo::drills`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillStatus {
    pub dataset: String,
    /// Its last drill, scheduled or `zibctl restore drill`; None before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<DrillSummary>,
    /// Its next scheduled drill (`drill_schedule`); None when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<DateTime<Utc>>,
    /// A drill of it is running now.
    #[serde(default, skip_serializing_if = "is_false")]
    pub running: bool,
}

/// State of one dataset's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Nothing running; no next run (e.g. no schedule) or waiting.
    Idle,
    /// Waiting for its next scheduled run (see `next_run`).
    Scheduled,
    /// Waiting for a free job slot (`max_concurrent_jobs`).
    Queued,
    /// Taking the snapshot / estimating its size.
    Snapshotting,
    /// Sending chunks.
    Uploading,
    /// Writing the manifest, bookmarking and pruning snapshots.
    Finishing,
    /// Paused by `zibctl pause`; the schedule is skipped.
    Paused,
    /// A running job is stopping at its next safe point.
    Cancelling,
    /// The last run failed (see `last_error`); the next tick retries.
    Failed,
    /// A state this build does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl JobState {
    /// Lower-case name as shown by zibctl.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Idle => "idle",
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Snapshotting => "snapshotting",
            JobState::Uploading => "uploading",
            JobState::Finishing => "finishing",
            JobState::Paused => "paused",
            JobState::Cancelling => "cancelling",
            JobState::Failed => "failed",
            JobState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one configured dataset.
///
/// A field at its default (`None`, `false`, 0) is left out of the JSON, as every field but
/// `dataset` and `state` always read its absence as the default: a status of 1,000 idle
/// datasets is 140 KB instead of 250 KB. `zibctl status --json` prints it so too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatus {
    /// The dataset, e.g. `tank/photos`.
    pub dataset: String,
    /// What its task is doing.
    pub state: JobState,
    /// Whether it is paused (a paused dataset may still be finishing a chunk: then `state` says
    /// what it does and `paused` is true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// The cron schedule, as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The run in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    /// The last successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<LastSuccess>,
    /// The last failure (cleared by nothing: compare its time with `last_success` and
    /// `last_note`, the end of a later run that did not fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// When the schedule fires next (`None` when paused or unscheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// Snapshots in the current chain (full + incrementals) since the last full send.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chain_length: u32,
    /// Schedule ticks skipped because a run was still going (since the daemon started).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed_ticks: u64,
    /// What the last run that did not fail wants the operator to know, e.g. `skipped (no
    /// change): ...` or that it started a new chain because the base was gone (since the daemon
    /// started; absent from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_note: Option<RunNote>,
    /// After how many seconds without a success the dataset counts as stale (its
    /// `stale_after`, or the default from its schedule), the same span after which
    /// `notify_command` hears of it; `None` when it never does (no next run). Added within v1:
    /// absent from older daemons; left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_secs: Option<u64>,
}

/// A note on a dataset's last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNote {
    /// When the run ended.
    pub at: DateTime<Utc>,
    pub message: String,
}

/// Progress of a running backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The snapshot being sent, e.g. `tank/photos@zib-20260101T030000Z`.
    pub snapshot: String,
    /// Whether this is an incremental send (else a full one).
    #[serde(default)]
    pub incremental: bool,
    /// When the run started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Bytes of the stream uploaded so far.
    pub bytes_sent: u64,
    /// The size estimate of `zfs send -nvP`, if known.
    #[serde(default)]
    pub bytes_total_estimate: Option<u64>,
    /// Chunks uploaded so far (the chunk being sent is `chunks_done + 1`).
    pub chunks_done: u64,
    /// Estimated number of chunks, if known.
    #[serde(default)]
    pub chunks_total_estimate: Option<u64>,
    /// Recent upload rate, bytes per second.
    #[serde(default)]
    pub rate_bytes_per_sec: Option<u64>,
    /// Estimated seconds until done.
    #[serde(default)]
    pub eta_secs: Option<u64>,
}

/// The last successful backup of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSuccess {
    /// When it finished.
    pub at: DateTime<Utc>,
    /// The snapshot it backed up.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// The last failure of a dataset's backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// What went wrong.
    pub message: String,
}

/// A [`Response::Progress`] frame of a waited-for run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressUpdate {
    /// The dataset of the run.
    pub dataset: String,
    /// What the run is doing.
    pub state: JobState,
    /// Counters, once known.
    #[serde(default)]
    pub progress: Option<RunProgress>,
    /// A remark for people (e.g. "waiting for a job slot").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of a restore job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    /// Reading the catalog and planning which objects to thaw.
    Planning,
    /// Restore requests sent; waiting for cold objects to become readable.
    Thawing,
    /// Downloading chunks and feeding `zfs receive`.
    Receiving,
    /// Finished successfully.
    Done,
    /// Failed (see `error`).
    Failed,
    /// Cancelled.
    Cancelled,
    /// A state this build does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl RestoreState {
    /// Lower-case name as shown by zibctl.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestoreState::Planning => "planning",
            RestoreState::Thawing => "thawing",
            RestoreState::Receiving => "receiving",
            RestoreState::Done => "done",
            RestoreState::Failed => "failed",
            RestoreState::Cancelled => "cancelled",
            RestoreState::Unknown => "unknown",
        }
    }
}

/// Status of one restore job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreJobStatus {
    /// The job id (from [`Response::RestoreStarted`]).
    pub id: String,
    /// The backed-up dataset being restored.
    pub dataset: String,
    /// The snapshot restored up to.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The dataset received into.
    pub to: String,
    /// The retrieval tier; `None` for a tier this build does not know (from a newer daemon).
    #[serde(default, deserialize_with = "known_tier")]
    pub tier: Option<RestoreTier>,
    /// What the job is doing.
    pub state: RestoreState,
    /// When the job started.
    pub started_at: DateTime<Utc>,
    /// Objects that need a thaw, and how many are readable already.
    #[serde(default)]
    pub objects_total: u64,
    #[serde(default)]
    pub objects_ready: u64,
    /// Bytes received into `zfs receive` so far, and the total.
    #[serde(default)]
    pub bytes_received: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    /// When the thaw is expected to be complete (from the tier's typical time).
    #[serde(default)]
    pub thaw_expected_at: Option<DateTime<Utc>>,
    /// When the job finished.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A tier this build knows, else `None` (a newer daemon's status stays readable).
fn known_tier<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RestoreTier>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    Ok(name.and_then(|n| n.parse().ok()))
}
