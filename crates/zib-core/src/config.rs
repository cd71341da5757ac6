//! The TOML configuration: serde types that refuse unknown keys, validated into a `Config`.
//!
//! Field-level checks (names, cron expressions, sizes) run inside deserialisation, so the TOML
//! parser reports them with the file's line, column and the offending key. Cross-field checks
//! run afterwards and name the dataset they concern.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::lifecycle::{OnBrokenChain, RebaselinePolicy, RetentionPolicy, rebaseline};
use crate::names::{DatasetName, KeyLayout, SnapName, SnapPrefix, normalize_prefix};
use crate::period::Period;
use crate::schedule::CronSchedule;
/// Re-exported: a config names them, but they live with the concept they belong to.
pub use crate::{schedule::TimeZone, storage_class::StorageClass};

/// Largest object a single PutObject may store: 5 GB.
pub const MAX_CHUNK_SIZE: u64 = 5_000_000_000;
/// Smallest chunk zib accepts; tiny archive objects are expensive (40 KB overhead each).
/// A backup has at most [`MAX_CHUNKS`](crate::manifest::MAX_CHUNKS) chunks, so the chunk size
/// also bounds the largest stream: `chunk_size` x 50,000.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Longest S3 object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    pub target: TargetConfig,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
    /// Optional `[pricing]` table: overrides of the restore price table (see `pricing.rs`).
    #[serde(default)]
    pub pricing: crate::pricing::Pricing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Group whose members may use mutating zibctl commands (root always may).
    pub socket_group: Option<String>,
    /// Per-dataset state files and locks.
    pub state_dir: PathBuf,
    /// Where chunks are spooled before upload (at most `max_spooled_chunks` per running job).
    pub spool_dir: PathBuf,
    /// How long a shutdown may take before running jobs are abandoned at their next await.
    pub shutdown_timeout_secs: u64,
    /// How many backup jobs may run at once across all datasets.
    pub max_concurrent_jobs: usize,
    /// Time zone for cron schedules.
    pub timezone: TimeZone,
    /// The most bytes per second all backup uploads together send ("40MiB/s"); unset: no limit.
    pub max_upload_rate: Option<ByteRate>,
    /// The most bytes per second all restore downloads together receive; unset: no limit.
    pub max_download_rate: Option<ByteRate>,
    /// Serve the Prometheus metrics over plain HTTP here (`"127.0.0.1:9813"`); off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write the metrics for node exporter's textfile collector here (atomically, after every
    /// run); off when unset.
    pub metrics_textfile: Option<PathBuf>,
    /// Run on a failed backup, a recovery and a stale dataset, with the details in `ZIB_*`
    /// environment variables (and no other environment); off when unset.
    pub notify_command: Option<Vec<String>>,
    /// How long one notify command may run before it is killed.
    pub notify_timeout_secs: u64,
    /// Verify the whole prefix on this cron schedule (`zibd verify`: one LIST per 1,000 keys
    /// and one HEAD per chunk, nothing downloaded); its result shows in `zibctl status` and the
    /// metrics. Off when unset.
    pub verify_schedule: Option<CronSchedule>,
    /// The scheduled check also downloads and hashes every chunk readable without a thaw
    /// (`--deep`; archived chunks are never thawed by it).
    pub verify_deep: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/zibd/zibd.sock"),
            socket_group: None,
            state_dir: PathBuf::from("/var/lib/zib"),
            spool_dir: PathBuf::from("/var/cache/zib"),
            shutdown_timeout_secs: 30,
            max_concurrent_jobs: 2,
            timezone: TimeZone::Utc,
            max_upload_rate: None,
            max_download_rate: None,
            metrics_listen: None,
            metrics_textfile: None,
            notify_command: None,
            notify_timeout_secs: 30,
            verify_schedule: None,
            verify_deep: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub bucket: BucketName,
    #[serde(default = "default_region")]
    pub region: String,
    /// For S3-compatible stores; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Path-style addressing; defaults to true when an endpoint is set.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Object prefix under which every dataset's backups live.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub storage_class: StorageClass,
    #[serde(default)]
    pub chunk_size: ChunkSize,
    /// Chunks spooled and in flight per job (1 = read the next chunk only after the last PUT).
    /// At least `max_parallel_puts` + 1: one chunk is read while that many are uploaded.
    #[serde(default = "default_spooled")]
    pub max_spooled_chunks: usize,
    /// Chunk PUTs of one job in flight at once (default [`DEFAULT_PARALLEL_PUTS`], or
    /// `max_spooled_chunks` - 1 when that is set lower). A dataset may override it.
    #[serde(default)]
    pub max_parallel_puts: Option<usize>,
    /// Attempts per S3 request before a job fails (throttling, 5xx, connection errors).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Seconds one attempt of an S3 request may take before it is given up (and retried, up to
    /// `max_attempts`); a chunk PUT gets one more second per 64 KiB of its size, so a slow but
    /// working link never times out. A GET body that delivers nothing for this long is retried.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_prefix() -> String {
    "zib/".into()
}
fn default_spooled() -> usize {
    DEFAULT_PARALLEL_PUTS + 1
}
/// `max_parallel_puts` when the config does not say: one connection to S3 carries about
/// 85-90 MB/s (AWS's guidelines), so 4 fill a 2.5 Gbit/s uplink.
pub const DEFAULT_PARALLEL_PUTS: usize = 4;
/// The most chunk PUTs of one job in flight at once.
pub const MAX_PARALLEL_PUTS: usize = 32;
fn default_attempts() -> u32 {
    8
}
/// `target.request_timeout_secs` when the config does not say.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;
fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: DatasetName,
    /// Cron expression: 5 fields (min hour dom mon dow), or 6/7 with seconds (and year).
    pub schedule: CronSchedule,
    #[serde(default)]
    pub snapshot_prefix: SnapPrefix,
    /// Random delay of up to this many seconds added to each scheduled run.
    #[serde(default)]
    pub jitter_secs: u64,
    /// How many zib-made snapshots to keep locally (the newest is always kept: it is the
    /// base of the next incremental). Older ones are destroyed after their backup is committed.
    #[serde(default = "default_keep")]
    pub keep_snapshots: u32,
    #[serde(default)]
    pub storage_class: Option<StorageClass>,
    #[serde(default)]
    pub chunk_size: Option<ChunkSize>,
    /// Overrides `target.max_parallel_puts` for this dataset.
    #[serde(default)]
    pub max_parallel_puts: Option<usize>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Re-baseline when the chain holds this many streams (the full included); "off" never.
    #[serde(default = "default_max_chain")]
    pub max_chain: OrOff<u32>,
    /// Re-baseline when the chain's incrementals add up to more than this fraction of its
    /// full; "off" never.
    #[serde(default = "default_ratio")]
    pub rebaseline_ratio: OrOff<f64>,
    /// Re-baseline when the chain's full is at least this old ("180d", "26w"); "off" never.
    #[serde(default = "default_full_every")]
    pub full_every: OrOff<Period>,
    /// Remote retention: keep the newest N complete chains (unset: no count rule).
    #[serde(default)]
    pub keep_chains: Option<u32>,
    /// Remote retention: keep every chain holding a backup younger than this (unset: no age
    /// rule). With neither rule set, nothing is ever deleted from the bucket.
    #[serde(default)]
    pub keep_within: Option<Period>,
    /// Skip idle days: a run finds fewer bytes than this written since zib's last snapshot of
    /// the dataset (`written@<snapshot>`) and takes no snapshot and uploads nothing. 0 never
    /// skips. `--full` never skips.
    #[serde(default = "default_min_change")]
    pub min_change: ByteSize,
    /// When the base of the next incremental is gone (its snapshot and bookmark, or both
    /// replaced by others of another GUID): "full" starts a new chain with a full backup (a log
    /// line and a status note say so), "fail" fails the backup until `--full` is asked for.
    #[serde(default)]
    pub on_broken_chain: OnBrokenChain,
    /// Notify (`daemon.notify_command`) when the last success is this old ("26h", "2d");
    /// twice the schedule's interval, at least an hour, when unset.
    #[serde(default)]
    pub stale_after: Option<crate::alerts::Span>,
    /// A restore drill of the newest backup on this cron schedule (see [`crate::drill`]): a
    /// real restore into a throwaway dataset, judged by GUID, then destroyed. Only where the
    /// chunks are readable without a thaw: a scheduled drill never thaws (checked at load).
    /// The span is the key's place in the file, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_schedule: Option<toml::Spanned<CronSchedule>>,
    /// Back up every descendant too (filesystems and volumes), each as a dataset of its own
    /// with these settings: its own chain, lock and state, never one `zfs send -R` stream (see
    /// [`crate::tree`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    /// With `recursive`: descendants left out, by glob patterns on their full names (`*` and
    /// `?` within one name component, `**` across them); a dataset left out leaves out its
    /// own descendants too. The span is the key's place in the file, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<toml::Spanned<Vec<crate::tree::ExcludePattern>>>,
}

/// `min_change` when the config does not say: 64 KiB. Far less than a day of real use, far
/// more than the metadata `zfs` itself writes to an idle dataset (atime updates and the like).
pub const DEFAULT_MIN_CHANGE: u64 = 64 * 1024;
fn default_min_change() -> ByteSize {
    ByteSize(DEFAULT_MIN_CHANGE)
}
fn default_keep() -> u32 {
    2
}
fn default_max_chain() -> OrOff<u32> {
    OrOff(Some(rebaseline::DEFAULT_MAX_CHAIN))
}
fn default_ratio() -> OrOff<f64> {
    OrOff(Some(rebaseline::DEFAULT_REBASELINE_RATIO))
}
fn default_full_every() -> OrOff<Period> {
    OrOff(Some(rebaseline::DEFAULT_FULL_EVERY))
}

impl DatasetConfig {
    pub fn rebaseline_policy(&self) -> RebaselinePolicy {
        RebaselinePolicy {
            max_chain: self.max_chain.0,
            rebaseline_ratio: self.rebaseline_ratio.0,
            full_every: self.full_every.0,
        }
    }
    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy { keep_chains: self.keep_chains, keep_within: self.keep_within }
    }
    /// The exclude patterns (none when unset).
    pub fn exclude_patterns(&self) -> &[crate::tree::ExcludePattern] {
        self.exclude.as_ref().map_or(&[], |s| s.get_ref().as_slice())
    }
}

/// " (line N)" of the key at byte offset `span.start` of the file's `text`, for a message about
/// a key a check after parsing refuses; empty when the offset is not in the text.
pub fn at_line(text: &str, span: std::ops::Range<usize>) -> String {
    match text.get(..span.start) {
        Some(t) => format!(" (line {})", t.matches('\n').count() + 1),
        None => String::new(),
    }
}

/// A setting that is a value or the word "off".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrOff<T>(pub Option<T>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OrOff<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        if v.as_str() == Some("off") {
            return Ok(Self(None));
        }
        T::deserialize(v.clone()).map(|t| Self(Some(t))).map_err(|e| {
            serde::de::Error::custom(format!("{e} (got {v}; or \"off\" to turn the rule off)"))
        })
    }
}

impl<T: Serialize> Serialize for OrOff<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(v) => v.serialize(s),
            None => s.serialize_str("off"),
        }
    }
}

/// The target settings that apply to one dataset, overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTarget {
    pub bucket: String,
    pub prefix: String,
    /// The S3-compatible endpoint; None for AWS.
    pub endpoint: Option<String>,
    pub storage_class: StorageClass,
    pub chunk_size: u64,
    pub max_spooled_chunks: usize,
    /// Chunk PUTs in flight at once; always less than `max_spooled_chunks` (or 1 when that
    /// is 1: read, then upload, one chunk at a time).
    pub max_parallel_puts: usize,
}

impl ResolvedTarget {
    /// Where the dataset's backups go: what its state and pending upload are tied to.
    pub fn destination(&self) -> crate::state::Destination {
        crate::state::Destination {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        cfg.validate()
            .and_then(|()| crate::tree::check_entries(&cfg.datasets, text))
            .and_then(|()| cfg.check_drill_schedules(text))
            .map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for (i, ds) in self.datasets.iter().enumerate() {
            if !seen.insert(&ds.name) {
                return Err(format!(
                    "dataset {} is listed twice ([[dataset]] #{})",
                    ds.name,
                    i + 1
                ));
            }
            if ds.keep_snapshots == 0 {
                return Err(format!(
                    "dataset {}: keep_snapshots must be at least 1 (the newest snapshot is the base of the next incremental)",
                    ds.name
                ));
            }
            if ds.max_chain.0 == Some(0) {
                return Err(format!(
                    "dataset {}: max_chain must be at least 1 (or \"off\")",
                    ds.name
                ));
            }
            if let Some(r) = ds.rebaseline_ratio.0
                && !(r.is_finite() && r > 0.0)
            {
                return Err(format!(
                    "dataset {}: rebaseline_ratio must be a positive number (or \"off\"), got {r}",
                    ds.name
                ));
            }
            if ds.keep_chains == Some(0) {
                return Err(format!(
                    "dataset {}: keep_chains must be at least 1 (the newest complete chain is always kept)",
                    ds.name
                ));
            }
            if ds.jitter_secs > 86_400 {
                return Err(format!("dataset {}: jitter_secs must be at most 86400", ds.name));
            }
            self.check_key_length(ds)?;
        }
        let d = &self.daemon;
        if !(1..=3600).contains(&d.shutdown_timeout_secs) {
            return Err("daemon.shutdown_timeout_secs must be between 1 and 3600".into());
        }
        if !(1..=64).contains(&d.max_concurrent_jobs) {
            return Err("daemon.max_concurrent_jobs must be between 1 and 64".into());
        }
        let textfile = d.metrics_textfile.as_ref().map(|p| ("daemon.metrics_textfile", p));
        for (key, p) in [
            ("daemon.socket", &d.socket),
            ("daemon.state_dir", &d.state_dir),
            ("daemon.spool_dir", &d.spool_dir),
        ]
        .into_iter()
        .chain(textfile)
        {
            if !p.is_absolute() {
                return Err(format!("{key} must be an absolute path, got {}", p.display()));
            }
        }
        if let Some(cmd) = &d.notify_command {
            match cmd.first() {
                None => return Err("daemon.notify_command must name a program (got [])".into()),
                Some(p) if !Path::new(p).is_absolute() => {
                    return Err(format!(
                        "daemon.notify_command: the program must be an absolute path (it runs with an empty PATH of its own), got {p:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        if !(1..=3600).contains(&d.notify_timeout_secs) {
            return Err("daemon.notify_timeout_secs must be between 1 and 3600".into());
        }
        if let Some(p) = &d.metrics_textfile
            && p.extension().is_none_or(|e| e != "prom")
        {
            return Err(format!(
                "daemon.metrics_textfile must end in .prom (node exporter reads only those), got {}",
                p.display()
            ));
        }
        let t = &self.target;
        if !(1..=MAX_PARALLEL_PUTS + 1).contains(&t.max_spooled_chunks) {
            return Err(format!(
                "target.max_spooled_chunks must be between 1 and {}",
                MAX_PARALLEL_PUTS + 1
            ));
        }
        let explicit = t.max_parallel_puts.map(|n| ("target.max_parallel_puts".to_owned(), n));
        let per_dataset = self.datasets.iter().filter_map(|d| {
            d.max_parallel_puts.map(|n| (format!("dataset {}: max_parallel_puts", d.name), n))
        });
        for (what, n) in explicit.into_iter().chain(per_dataset) {
            if !(1..=MAX_PARALLEL_PUTS).contains(&n) {
                return Err(format!("{what} must be between 1 and {MAX_PARALLEL_PUTS}, got {n}"));
            }
            if t.max_spooled_chunks < n + 1 {
                return Err(format!(
                    "{what} = {n} needs target.max_spooled_chunks of at least {} (each PUT in flight holds a spooled chunk, and one more is read meanwhile), got {}; raise max_spooled_chunks (spool space: that many x chunk_size per job) or lower max_parallel_puts",
                    n + 1,
                    t.max_spooled_chunks
                ));
            }
        }
        if !(1..=100).contains(&t.max_attempts) {
            return Err("target.max_attempts must be between 1 and 100".into());
        }
        if !(1..=86_400).contains(&t.request_timeout_secs) {
            return Err("target.request_timeout_secs must be between 1 and 86400".into());
        }
        if t.region.trim().is_empty() {
            return Err("target.region must not be empty".into());
        }
        Ok(())
    }

    /// `drill_schedule` only where the chunks are readable without a thaw: a scheduled drill
    /// never thaws (a thaw is billed and takes hours; `zibctl restore drill --yes` asks for one
    /// by hand).
    fn check_drill_schedules(&self, text: &str) -> Result<(), String> {
        for ds in &self.datasets {
            let Some(s) = &ds.drill_schedule else { continue };
            let class = self.resolve(ds).storage_class;
            if class.needs_thaw() {
                return Err(format!(
                    "dataset {}: drill_schedule{} needs chunks readable without a thaw, but the dataset's storage class is {class}: a scheduled drill never thaws (a thaw is billed and takes hours); drill it by hand with `zibctl restore drill {} --yes`, or store it in a class such as STANDARD, STANDARD_IA or GLACIER_IR",
                    ds.name,
                    at_line(text, s.span()),
                    ds.name
                ));
            }
        }
        Ok(())
    }

    /// A manifest lists every chunk's key: with keys within S3's 1024 bytes, a manifest of
    /// [`MAX_CHUNKS`](crate::manifest::MAX_CHUNKS) chunks stays within the size every reader
    /// accepts. The longest key a dataset's backups can have must fit.
    /// The prefix must also be one a manifest is accepted under ([`crate::names::prefix_problem`]).
    pub fn check_key_length(&self, ds: &DatasetConfig) -> Result<(), String> {
        let t = self.resolve(ds);
        if let Some(why) = crate::names::prefix_problem(&crate::names::normalize_prefix(&t.prefix))
        {
            return Err(format!(
                "dataset {}: prefix {:?} cannot hold zib's keys: {why}",
                ds.name, t.prefix
            ));
        }
        let snap = SnapName::for_backup(&ds.snapshot_prefix, chrono::DateTime::UNIX_EPOCH);
        let key = KeyLayout::new(&t.prefix, &ds.name).chunk_key(
            999_999,
            &snap,
            999,
            crate::manifest::MAX_CHUNKS,
        );
        if key.len() > MAX_KEY_LEN {
            return Err(format!(
                "dataset {}: its object keys would be up to {} bytes long (prefix {:?}, the dataset's name, the snapshot name), more than the {MAX_KEY_LEN} S3 allows; use a shorter prefix or snapshot_prefix",
                ds.name,
                key.len(),
                t.prefix
            ));
        }
        Ok(())
    }

    pub fn dataset(&self, name: &DatasetName) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| &d.name == name)
    }

    /// The target settings for `ds`, with its overrides applied.
    pub fn resolve(&self, ds: &DatasetConfig) -> ResolvedTarget {
        ResolvedTarget {
            bucket: self.target.bucket.0.clone(),
            prefix: normalize_prefix(ds.prefix.as_deref().unwrap_or(&self.target.prefix)),
            endpoint: self.target.endpoint.as_ref().map(|e| e.0.clone()),
            storage_class: ds.storage_class.unwrap_or(self.target.storage_class),
            chunk_size: ds.chunk_size.unwrap_or(self.target.chunk_size).0,
            max_spooled_chunks: self.target.max_spooled_chunks,
            max_parallel_puts: ds.max_parallel_puts.or(self.target.max_parallel_puts).unwrap_or(
                DEFAULT_PARALLEL_PUTS.min(self.target.max_spooled_chunks.saturating_sub(1)).max(1),
            ),
        }
    }

    pub fn force_path_style(&self) -> bool {
        self.target.force_path_style.unwrap_or(self.target.endpoint.is_some())
    }
}

/// An S3 bucket name, checked against the S3 naming rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketName(pub String);

impl TryFrom<String> for BucketName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let ok_ends = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if (3..=63).contains(&s.len()) && ok_chars && ok_ends && !s.contains("..") {
            Ok(Self(s))
        } else {
            Err(format!(
                "invalid bucket name {s:?}: 3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
            ))
        }
    }
}
impl From<BucketName> for String {
    fn from(b: BucketName) -> String {
        b.0
    }
}

/// An endpoint URL (http or https).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint(pub String);

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') && !host.contains('@') => {
                Ok(Self(s))
            }
            _ => Err(format!(
                "invalid endpoint {s:?}: expected http://host[:port] or https://host[:port] (no credentials in the URL)"
            )),
        }
    }
}
impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.0
    }
}

/// A chunk size in bytes: an integer, or a string with a unit ("64MiB", "5GB").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct ChunkSize(pub u64);

impl Default for ChunkSize {
    fn default() -> Self {
        Self(MAX_CHUNK_SIZE)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(i64),
    Text(String),
}

impl TryFrom<SizeRepr> for ChunkSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        let n = match r {
            SizeRepr::Int(i) => {
                u64::try_from(i).map_err(|_| format!("chunk size {i} is negative"))?
            }
            SizeRepr::Text(s) => parse_size(&s)?,
        };
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&n) {
            return Err(format!(
                "chunk size {n} bytes is out of range: {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} (5 GB, the largest single PutObject)"
            ));
        }
        Ok(Self(n))
    }
}
impl From<ChunkSize> for u64 {
    fn from(c: ChunkSize) -> u64 {
        c.0
    }
}

/// A number of bytes: an integer, or a string with a unit ("64KiB", "1MB"); 0 allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct ByteSize(pub u64);

impl TryFrom<SizeRepr> for ByteSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Int(i) => {
                u64::try_from(i).map(Self).map_err(|_| format!("size {i} is negative"))
            }
            SizeRepr::Text(s) => parse_size(&s).map(Self),
        }
    }
}
impl From<ByteSize> for u64 {
    fn from(c: ByteSize) -> u64 {
        c.0
    }
}

/// A rate in bytes per second: a size with "/s" ("40MiB/s", "100MB/s"), or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct ByteRate(pub u64);

/// The least rate a limit may be set to: below it a 5 GB chunk would take more than a day.
pub const MIN_RATE: u64 = 64 * 1024;

impl TryFrom<SizeRepr> for ByteRate {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        let n = match r {
            SizeRepr::Int(i) => u64::try_from(i).map_err(|_| format!("rate {i} is negative"))?,
            SizeRepr::Text(s) => {
                let size = s.trim().strip_suffix("/s").ok_or_else(|| {
                    format!("invalid rate {s:?}: expected bytes per second, e.g. \"40MiB/s\"")
                })?;
                parse_size(size)?
            }
        };
        if n < MIN_RATE {
            return Err(format!(
                "rate {n} bytes/s is below the least allowed, {MIN_RATE} (64KiB/s); leave the setting out for no limit"
            ));
        }
        Ok(Self(n))
    }
}
impl From<ByteRate> for String {
    fn from(r: ByteRate) -> String {
        format!("{}/s", r.0)
    }
}

/// Parses "123", "64KiB", "5GB", "1.5 GiB" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[target]\nbucket = \"my-backups\"\n\n[[dataset]]\nname = \"tank/photos\"\nschedule = \"0 3 * * *\"\n";

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/zib/zibd.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.target.storage_class, StorageClass::DeepArchive);
        assert_eq!(c.target.chunk_size.0, 5_000_000_000);
        assert_eq!(c.target.request_timeout_secs, 120);
        assert_eq!(c.daemon.socket, PathBuf::from("/run/zibd/zibd.sock"));
        let r = c.resolve(&c.datasets[0]);
        assert_eq!(r.prefix, "zib/");
        assert_eq!(c.datasets[0].snapshot_prefix.as_str(), "zib");
        assert!(!c.force_path_style());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../config.example.toml");
        let c = parse(text).unwrap();
        assert!(!c.datasets.is_empty());
        let home = c.dataset(&DatasetName::new("tank/home").unwrap()).unwrap();
        assert_eq!(
            home.rebaseline_policy(),
            RebaselinePolicy {
                max_chain: Some(120),
                rebaseline_ratio: None,
                ..RebaselinePolicy::default()
            }
        );
        assert_eq!(home.retention_policy().keep_chains, Some(3));
        // The per-class tables, shown commented out, are the defaults.
        let tables = text.split_once("# [pricing.storage_per_gb_month]").unwrap().1;
        let uncommented: String = std::iter::once("[storage_per_gb_month]")
            .chain(tables.lines().filter(|l| l.contains(" = ") || l.starts_with("# [")))
            .map(|l| l.trim_start_matches("# ").replace("[pricing.", "["))
            .collect::<Vec<_>>()
            .join("\n");
        let p: crate::pricing::Pricing = toml::from_str(&uncommented).unwrap();
        assert_eq!(p, crate::pricing::Pricing::default(), "{uncommented}");
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn metrics_settings_are_off_by_default_and_checked() {
        let c = parse(MIN).unwrap();
        assert_eq!((c.daemon.metrics_listen, c.daemon.metrics_textfile), (None, None));
        let with = |v: &str| format!("[daemon]\n{v}\n{MIN}");
        let c = parse(&with(
            "metrics_listen = \"127.0.0.1:9813\"\nmetrics_textfile = \"/var/lib/node_exporter/zib.prom\"",
        ))
        .unwrap();
        assert_eq!(c.daemon.metrics_listen, Some("127.0.0.1:9813".parse().unwrap()));
        assert_eq!(
            c.daemon.metrics_textfile.as_deref(),
            Some(Path::new("/var/lib/node_exporter/zib.prom"))
        );
        let e = err(&with("metrics_listen = \"localhost\""));
        assert!(e.contains("metrics_listen") && e.contains("line 2"), "{e}");
        let e = err(&with("metrics_textfile = \"zib.prom\""));
        assert!(e.contains("daemon.metrics_textfile must be an absolute path"), "{e}");
        let e = err(&with("metrics_textfile = \"/var/lib/node_exporter/zib.txt\""));
        assert!(e.contains("daemon.metrics_textfile must end in .prom"), "{e}");
    }

    #[test]
    fn notify_settings_are_checked() {
        let c = parse(MIN).unwrap();
        assert_eq!((c.daemon.notify_command, c.daemon.notify_timeout_secs), (None, 30));
        assert_eq!(c.datasets[0].stale_after, None);
        let with = |v: &str| format!("[daemon]\n{v}\n{MIN}");
        let c = parse(&format!(
            "{}stale_after = \"26h\"\n",
            with("notify_command = [\"/usr/local/bin/notify\", \"--to\", \"me\"]")
        ))
        .unwrap();
        assert_eq!(
            c.daemon.notify_command,
            Some(vec!["/usr/local/bin/notify".into(), "--to".into(), "me".into()])
        );
        assert_eq!(c.datasets[0].stale_after.unwrap().0.as_secs(), 26 * 3600);
        let e = err(&with("notify_command = []"));
        assert!(e.contains("daemon.notify_command must name a program"), "{e}");
        let e = err(&with("notify_command = [\"notify\"]"));
        assert!(e.contains("must be an absolute path"), "{e}");
        let e = err(&with("notify_timeout_secs = 0"));
        assert!(e.contains("daemon.notify_timeout_secs must be between 1 and 3600"), "{e}");
        let e = err(&format!("{MIN}stale_after = \"soon\"\n"));
        assert!(e.contains("invalid duration") && e.contains("line 7"), "{e}");
    }

    #[test]
    fn request_timeout_is_bounded() {
        let with =
            |v: &str| MIN.replace("[target]", &format!("[target]\nrequest_timeout_secs = {v}"));
        assert_eq!(parse(&with("5")).unwrap().target.request_timeout_secs, 5);
        for bad in ["0", "86401"] {
            let e = err(&with(bad));
            assert!(e.contains("target.request_timeout_secs must be between 1 and 86400"), "{e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err(&MIN.replace("schedule = \"0 3 * * *\"", "schedule = \"61 3 * * *\""));
        assert!(
            e.contains("/etc/zib/zibd.toml") && e.contains("line 6") && e.contains("schedule"),
            "{e}"
        );
        let e = err(&format!("{MIN}colour = 3\n"));
        assert!(e.contains("unknown field `colour`") && e.contains("line 7"), "{e}");
        let e = err(&MIN.replace("tank/photos", "tank/pho@tos"));
        assert!(e.contains("line 5") && e.contains("tank/pho@tos"), "{e}");
        let e = err(&MIN.replace("[target]", "[target]\nchunk_size = \"6GB\""));
        assert!(e.contains("out of range") && e.contains("line 2"), "{e}");
        let e = err(&MIN.replace("[target]", "[target]\nstorage_class = \"DEEP\""));
        assert!(e.contains("unknown storage class") && e.contains("DEEP_ARCHIVE"), "{e}");
        let e = err(&MIN.replace("my-backups", "My_Backups"));
        assert!(e.contains("invalid bucket name"), "{e}");
        let e = err(&format!("{MIN}[[dataset]]\nname = \"tank/photos\"\nschedule = \"@daily\"\n"));
        assert!(e.contains("listed twice"), "{e}");
        let e = err("[target]\n");
        assert!(e.contains("missing field `bucket`"), "{e}");
        let e = err(&MIN.replace("[target]", "[target]\nendpoint = \"ftp://x\""));
        assert!(e.contains("invalid endpoint"), "{e}");
        let e = err(&format!("[daemon]\nstate_dir = \"relative\"\n{MIN}"));
        assert!(e.contains("daemon.state_dir must be an absolute path"), "{e}");
    }

    #[test]
    fn a_drill_schedule_needs_chunks_readable_without_a_thaw() {
        let c = parse(MIN).unwrap();
        assert!(c.datasets[0].drill_schedule.is_none());
        let standard = MIN.replace("[target]", "[target]\nstorage_class = \"STANDARD\"");
        let c = parse(&format!("{standard}drill_schedule = \"0 5 * * SUN\"\n")).unwrap();
        let s = c.datasets[0].drill_schedule.as_ref().unwrap().get_ref();
        assert_eq!(s.as_str(), "0 5 * * SUN");
        // A dataset's own class counts: STANDARD_IA under a DEEP_ARCHIVE target is fine...
        let own = "storage_class = \"STANDARD_IA\"\ndrill_schedule = \"@weekly\"\n";
        assert!(parse(&format!("{MIN}{own}")).is_ok());
        // ...the target's DEEP_ARCHIVE is not: the file, the line and the key are named.
        let e = err(&format!("{MIN}drill_schedule = \"0 5 * * SUN\"\n"));
        assert!(
            e.contains("/etc/zib/zibd.toml")
                && e.contains("dataset tank/photos: drill_schedule (line 7)")
                && e.contains("storage class is DEEP_ARCHIVE")
                && e.contains("zibctl restore drill tank/photos --yes"),
            "{e}"
        );
        let glacier = MIN.replace("[target]", "[target]\nstorage_class = \"GLACIER\"");
        let e = err(&format!("{glacier}keep_snapshots = 3\ndrill_schedule = \"@daily\"\n"));
        assert!(e.contains("drill_schedule (line 9)") && e.contains("is GLACIER"), "{e}");
        // A bad cron expression is the parser's error, with its line.
        let e = err(&format!("{standard}drill_schedule = \"61 5 * * *\"\n"));
        assert!(e.contains("line 8") && e.contains("drill_schedule"), "{e}");
    }

    #[test]
    fn lifecycle_keys_default_and_turn_off() {
        let c = parse(MIN).unwrap();
        let ds = &c.datasets[0];
        assert_eq!(ds.rebaseline_policy(), RebaselinePolicy::default());
        assert!(!ds.retention_policy().is_configured());
        let c = parse(&format!(
            "{MIN}max_chain = \"off\"\nrebaseline_ratio = 0.5\nfull_every = \"26w\"\nkeep_chains = 2\nkeep_within = \"400d\"\n"
        ))
        .unwrap();
        let ds = &c.datasets[0];
        assert_eq!(
            ds.rebaseline_policy(),
            RebaselinePolicy {
                max_chain: None,
                rebaseline_ratio: Some(0.5),
                full_every: Some(Period::days(182))
            }
        );
        assert_eq!(
            ds.retention_policy(),
            RetentionPolicy { keep_chains: Some(2), keep_within: Some(Period::days(400)) }
        );
        let c = parse(&format!(
            "{MIN}rebaseline_ratio = \"off\"\nfull_every = \"off\"\nmax_chain = 30\n"
        ))
        .unwrap();
        assert_eq!(
            c.datasets[0].rebaseline_policy(),
            RebaselinePolicy { max_chain: Some(30), ..RebaselinePolicy::OFF }
        );
    }

    #[test]
    fn on_broken_chain_is_full_by_default_or_fail() {
        assert_eq!(parse(MIN).unwrap().datasets[0].on_broken_chain, OnBrokenChain::Full);
        let c = parse(&format!("{MIN}on_broken_chain = \"fail\"\n")).unwrap();
        assert_eq!(c.datasets[0].on_broken_chain, OnBrokenChain::Fail);
        let c = parse(&format!("{MIN}on_broken_chain = \"full\"\n")).unwrap();
        assert_eq!(c.datasets[0].on_broken_chain, OnBrokenChain::Full);
        let e = err(&format!("{MIN}on_broken_chain = \"ignore\"\n"));
        assert!(e.contains("line 7") && e.contains("on_broken_chain") && e.contains("fail"), "{e}");
    }

    #[test]
    fn min_change_has_a_default_takes_units_and_zero() {
        assert_eq!(parse(MIN).unwrap().datasets[0].min_change.0, 64 * 1024);
        let c = parse(&format!("{MIN}min_change = \"1MiB\"\n")).unwrap();
        assert_eq!(c.datasets[0].min_change.0, 1 << 20);
        let c = parse(&format!("{MIN}min_change = 0\n")).unwrap();
        assert_eq!(c.datasets[0].min_change.0, 0);
        let e = err(&format!("{MIN}min_change = \"lots\"\n"));
        assert!(e.contains("line 7") && e.contains("min_change"), "{e}");
    }

    #[test]
    fn lifecycle_keys_refuse_bad_values_with_their_line() {
        let e = err(&format!("{MIN}full_every = \"6m\"\n"));
        assert!(e.contains("line 7") && e.contains("full_every") && e.contains("\"off\""), "{e}");
        let e = err(&format!("{MIN}max_chain = \"never\"\n"));
        assert!(e.contains("line 7") && e.contains("max_chain"), "{e}");
        let e = err(&format!("{MIN}max_chain = 0\n"));
        assert!(e.contains("tank/photos") && e.contains("max_chain must be at least 1"), "{e}");
        let e = err(&format!("{MIN}rebaseline_ratio = -1.0\n"));
        assert!(e.contains("rebaseline_ratio must be a positive number"), "{e}");
        let e = err(&format!("{MIN}keep_chains = 0\n"));
        assert!(e.contains("keep_chains must be at least 1"), "{e}");
        let e = err(&format!("{MIN}keep_within = \"off\"\n"));
        assert!(e.contains("keep_within") && e.contains("invalid period"), "{e}");
        let e = err(&format!("{MIN}keep_chain = 2\n"));
        assert!(e.contains("unknown field `keep_chain`"), "{e}");
    }

    #[test]
    fn parallel_puts_default_to_four_and_need_a_spooled_chunk_more() {
        let c = parse(MIN).unwrap();
        let r = c.resolve(&c.datasets[0]);
        assert_eq!((r.max_parallel_puts, r.max_spooled_chunks), (4, 5));
        // An older config that set the spool bound lower: as many PUTs as it leaves room for.
        for (spooled, puts) in [(1, 1), (2, 1), (3, 2), (8, 4)] {
            let t = MIN.replace("[target]", &format!("[target]\nmax_spooled_chunks = {spooled}"));
            let c = parse(&t).unwrap();
            assert_eq!(c.resolve(&c.datasets[0]).max_parallel_puts, puts, "{spooled}");
        }
        let t = MIN.replace("[target]", "[target]\nmax_parallel_puts = 8\nmax_spooled_chunks = 9");
        let c = parse(&format!("{t}max_parallel_puts = 2\n")).unwrap();
        assert_eq!(c.resolve(&c.datasets[0]).max_parallel_puts, 2, "the dataset's override");
        let e = err(&MIN.replace("[target]", "[target]\nmax_parallel_puts = 8"));
        assert!(
            e.contains(
                "target.max_parallel_puts = 8 needs target.max_spooled_chunks of at least 9"
            ) && e.contains("got 5"),
            "{e}"
        );
        let e = err(&format!("{MIN}max_parallel_puts = 6\n"));
        assert!(
            e.contains("dataset tank/photos: max_parallel_puts = 6 needs")
                && e.contains("at least 7"),
            "{e}"
        );
        let e = err(&MIN.replace("[target]", "[target]\nmax_parallel_puts = 0"));
        assert!(e.contains("target.max_parallel_puts must be between 1 and 32, got 0"), "{e}");
    }

    #[test]
    fn rates_take_units_per_second_and_refuse_nonsense() {
        let c = parse(MIN).unwrap();
        assert_eq!((c.daemon.max_upload_rate, c.daemon.max_download_rate), (None, None));
        let c = parse(&format!(
            "[daemon]\nmax_upload_rate = \"40MiB/s\"\nmax_download_rate = 1000000\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.daemon.max_upload_rate, Some(ByteRate(40 << 20)));
        assert_eq!(c.daemon.max_download_rate, Some(ByteRate(1_000_000)));
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.daemon.max_upload_rate, Some(ByteRate(40 << 20)));
        let e = err(&format!("[daemon]\nmax_upload_rate = \"40MiB\"\n{MIN}"));
        assert!(e.contains("line 2") && e.contains("expected bytes per second"), "{e}");
        let e = err(&format!("[daemon]\nmax_download_rate = \"1KiB/s\"\n{MIN}"));
        assert!(e.contains("below the least allowed"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert!(parse_size("5 parsecs").is_err());
        let c = parse(&MIN.replace("[target]", "[target]\nchunk_size = 1048576")).unwrap();
        assert_eq!(c.target.chunk_size.0, 1 << 20);
    }

    #[test]
    fn keys_too_long_for_s3_are_refused_when_the_config_is_read() {
        // Issue 11 #2: the manifest of a backup lists every chunk key; keys within S3's limit
        // keep the largest manifest within what readers accept.
        let long = "p".repeat(MAX_KEY_LEN - 50);
        let e = err(&format!("{MIN}prefix = \"{long}\"\n"));
        assert!(
            e.contains("dataset tank/photos") && e.contains("more than the 1024 S3 allows"),
            "{e}"
        );
        parse(&format!("{MIN}prefix = \"{}\"\n", "p".repeat(MAX_KEY_LEN - 200))).unwrap();
        for bad in ["a/../b", "./x", "..", "tank/photos@zib/x", "x@zib"] {
            let e = err(&format!("{MIN}prefix = \"{bad}\"\n"));
            assert!(e.contains("cannot hold zib's keys"), "{bad}: {e}");
        }
        parse(&format!("{MIN}prefix = \"a.b/..c/zib\"\n")).unwrap();
    }

    #[test]
    fn dataset_overrides_apply() {
        let t = format!(
            "{MIN}storage_class = \"STANDARD\"\nchunk_size = \"1MiB\"\nprefix = \"other\"\n"
        );
        let c = parse(&t).unwrap();
        let r = c.resolve(&c.datasets[0]);
        assert_eq!(
            (r.storage_class, r.chunk_size, r.prefix.as_str()),
            (StorageClass::Standard, 1 << 20, "other/")
        );
    }
}
