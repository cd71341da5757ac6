//! `zibd restore list|plan|run|drill`: foreground, needs no config file and no local state.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::watch;
use zib_core::{DatasetName, SnapName, pricing::RestoreTier};

use crate::{
    bandwidth::Bandwidth,
    outside::Outside,
    process::{EXIT_CONFIG, cancel_on_ctrl_c, report, run_to_end},
    restore::{
        DrillOptions, PollBackoff, RestoreEngine, RestoreOptions, RestoreProgress,
        RestoreProgressFile, drill, format_catalog, format_drill, format_plan, load_catalog, plan,
        run,
    },
    s3::{S3Settings, S3Store},
};

/// Where the bucket is: flags, else the config's `[target]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BucketArgs {
    /// Bucket holding the backups (default: the config's target.bucket).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Object prefix of the backups (default: the config's target.prefix, else "zib/").
    #[arg(long)]
    pub prefix: Option<String>,
    /// AWS region (default: the config's, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// S3-compatible endpoint URL (default: the config's, else AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
}

/// What to restore, for `plan` and `run`: which backed-up dataset, up to which snapshot, and
/// how long thawed copies stay readable.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backed-up dataset (needed when the prefix holds several).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Restore up to this snapshot (default: the newest).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Days the thawed copies stay readable (billed at STANDARD meanwhile).
    #[arg(long, default_value_t = 7)]
    pub days: u32,
}

impl RestoreArgs {
    /// The dataset and snapshot, checked as names.
    fn names(&self) -> anyhow::Result<(Option<DatasetName>, Option<SnapName>)> {
        Ok((
            parse_opt(self.dataset.as_deref(), DatasetName::new)?,
            parse_opt(self.snapshot.as_deref(), SnapName::new)?,
        ))
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RestoreCommand {
    /// List the datasets and backups in the bucket's catalog.
    List {
        #[command(flatten)]
        bucket: BucketArgs,
        /// Only this backed-up dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Print the catalog (every manifest) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show which streams and chunks a restore needs, and what each restore tier costs.
    Plan {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        what: RestoreArgs,
        /// Print the plan and quote as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore into a new dataset: thaw, download, verify, zfs receive. Resumable: run the
    /// same command again after an interruption.
    Run {
        #[command(flatten)]
        bucket: BucketArgs,
        /// The dataset to create, e.g. pool/restored (must not exist).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        what: RestoreArgs,
        #[command(flatten)]
        how: HowArgs,
        /// Mountpoint of the restored dataset (`zfs receive -o mountpoint=...`); it is mounted
        /// at the end when its key is available.
        #[arg(long)]
        mountpoint: Option<String>,
        /// Do not mount the restored dataset.
        #[arg(long)]
        no_mount: bool,
        /// Key of an encrypted dataset, loaded at the end: file:///path or a path.
        #[arg(long)]
        key_location: Option<String>,
    },
    /// Restore drill: restore the newest (or --snapshot) backup of --dataset into a throwaway
    /// <pool>/zib-drill-<id> (never mounted, key never loaded), check the received snapshot's
    /// GUID against the manifest and the source, report time and cost, destroy it. Exits 1
    /// when the drill fails. Archived chunks are thawed (and paid for) only with --yes.
    Drill {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        what: RestoreArgs,
        #[command(flatten)]
        how: HowArgs,
        /// Where the throwaway dataset goes (a pool or a dataset; default: the source's pool).
        #[arg(long)]
        parent: Option<String>,
        /// Thaw archived chunks and pay for it (the drill shows the quote without it).
        #[arg(long)]
        yes: bool,
        /// Keep the drill dataset afterwards, to look at it by hand.
        #[arg(long)]
        keep: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How a restore runs, for `run` and `drill`: the thaw tier, the work directory, the
/// downloads ahead and the thaw polling.
#[derive(Debug, Clone, clap::Args)]
pub struct HowArgs {
    /// Thaw tier for archived chunks: bulk (within 48 h, cheapest) or standard (within 12 h).
    #[arg(long, default_value = "bulk")]
    pub tier: RestoreTier,
    /// Directory for the progress file and spooled chunks (default: <state_dir>/restore).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Chunks downloaded ahead of zfs receive (each spooled to disk).
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// First wait between thaw polls, in seconds (doubles up to --poll-max-secs).
    #[arg(long, default_value_t = 60.0)]
    pub poll_initial_secs: f64,
    /// Longest wait between thaw polls, in seconds.
    #[arg(long, default_value_t = 900.0)]
    pub poll_max_secs: f64,
}

impl HowArgs {
    /// Sets `opts`'s tier, parallelism and polling; returns the work directory.
    fn apply(
        &self,
        opts: &mut RestoreOptions,
        cfg: Option<&zib_core::Config>,
    ) -> anyhow::Result<PathBuf> {
        opts.tier = self.tier;
        opts.parallel = self.parallel;
        anyhow::ensure!(
            self.poll_initial_secs > 0.0 && self.poll_max_secs >= self.poll_initial_secs,
            "--poll-initial-secs must be > 0 and at most --poll-max-secs"
        );
        opts.poll = PollBackoff {
            initial: Duration::from_secs_f64(self.poll_initial_secs),
            max: Duration::from_secs_f64(self.poll_max_secs),
        };
        Ok(self.work_dir.clone().unwrap_or_else(|| {
            cfg.map_or_else(
                || zib_core::config::DaemonConfig::default().state_dir,
                |c| c.daemon.state_dir.clone(),
            )
            .join("restore")
        }))
    }
}

/// Resolves the bucket flags against an optional config.
pub(super) async fn connect(
    args: &BucketArgs,
    cfg: Option<&zib_core::Config>,
) -> anyhow::Result<RestoreEngine> {
    let t = cfg.map(|c| &c.target);
    let bucket = match (&args.bucket, t) {
        (Some(b), _) => b.clone(),
        (None, Some(t)) => t.bucket.0.clone(),
        (None, None) => anyhow::bail!(
            "no bucket: give --bucket (and --prefix, --region/--endpoint), or a config file with --config"
        ),
    };
    let endpoint =
        args.endpoint.clone().or_else(|| t.and_then(|t| t.endpoint.as_ref().map(|e| e.0.clone())));
    if let Some(e) = &endpoint {
        zib_core::config::Endpoint::try_from(e.clone()).map_err(anyhow::Error::msg)?;
    }
    let settings = S3Settings {
        region: args
            .region
            .clone()
            .or_else(|| t.map(|t| t.region.clone()))
            .unwrap_or_else(|| "us-east-1".into()),
        path_style: match (&args.endpoint, cfg) {
            (None, Some(c)) => c.force_path_style(),
            _ => endpoint.is_some(),
        },
        endpoint,
        max_attempts: t.map_or(8, |t| t.max_attempts),
        request_timeout: std::time::Duration::from_secs(
            t.map_or(zib_core::config::DEFAULT_REQUEST_TIMEOUT_SECS, |t| t.request_timeout_secs),
        ),
        bucket,
    };
    let prefix = args
        .prefix
        .clone()
        .or_else(|| t.map(|t| t.prefix.clone()))
        .unwrap_or_else(|| "zib/".into());
    let outside = Outside::from_env();
    // A config's `max_download_rate` holds for a restore run by hand too.
    let download_limit = cfg.and_then(|c| c.daemon.max_download_rate).map(|r| Bandwidth::new(r.0));
    let s3 = S3Store::connect(&settings, outside.s3_credentials.as_ref())
        .await
        .with_limits(None, download_limit);
    Ok(RestoreEngine { zfs: outside.zfs, s3, prefix })
}

pub(super) fn parse_opt<T, E: std::fmt::Display>(
    v: Option<&str>,
    f: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<Option<T>> {
    v.map(|s| f(s).map_err(|e| anyhow::anyhow!("{e}"))).transpose()
}

/// `zibd restore ...`. `config` is loaded when it exists or when no --bucket is given.
pub fn main(cmd: RestoreCommand, config: &Path) -> std::process::ExitCode {
    let bucket_args = match &cmd {
        RestoreCommand::List { bucket, .. }
        | RestoreCommand::Plan { bucket, .. }
        | RestoreCommand::Run { bucket, .. }
        | RestoreCommand::Drill { bucket, .. } => bucket.clone(),
    };
    let cfg = match optional_config(&bucket_args, config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = cfg.as_ref().map(|c| c.daemon.state_dir.clone());
    let r = run_to_end(restore_cmd(cmd, cfg));
    super::record_requests(dir.as_deref());
    report(r)
}

/// The config, loaded when it exists or when no --bucket is given (then it must load).
pub(super) fn optional_config(
    bucket_args: &BucketArgs,
    config: &Path,
) -> Result<Option<zib_core::Config>, std::process::ExitCode> {
    if bucket_args.bucket.is_none() || config.exists() {
        match zib_core::Config::load(config) {
            Ok(c) => Ok(Some(c)),
            Err(e) if bucket_args.bucket.is_some() => {
                tracing::warn!("ignoring the config file: {e}");
                Ok(None)
            }
            Err(e) => {
                eprintln!(
                    "zibd: {e}\nzibd: give --bucket (and --prefix, --region/--endpoint) to work without a config file"
                );
                Err(std::process::ExitCode::from(EXIT_CONFIG))
            }
        }
    } else {
        Ok(None)
    }
}

async fn restore_cmd(cmd: RestoreCommand, cfg: Option<zib_core::Config>) -> anyhow::Result<()> {
    let pricing = cfg.as_ref().map(|c| c.pricing.clone()).unwrap_or_default();
    match cmd {
        RestoreCommand::List { bucket, dataset, json } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let ds = parse_opt(dataset.as_deref(), DatasetName::new)?;
            let cat = load_catalog(&engine.s3, &engine.prefix, ds.as_ref(), None).await?;
            if json {
                let datasets: Vec<_> = cat
                    .datasets
                    .iter()
                    .map(|c| serde_json::json!({ "dataset": c.dataset, "manifests": c.manifests }))
                    .collect();
                let v = serde_json::json!({ "bucket": cat.bucket, "prefix": cat.prefix, "datasets": datasets, "skipped": cat.skipped });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_catalog(&cat));
            }
            Ok(())
        }
        RestoreCommand::Plan { bucket, what, json } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let (ds, snap) = what.names()?;
            let p = plan(&engine, ds.as_ref(), snap.as_ref(), None).await?;
            // Thawed copies must outlast the thaws and the download (the slower tier's thaws).
            let days = p.thaw_days(what.days, pricing.tier_prices(RestoreTier::Bulk).2);
            let q = p.quote(&pricing, days);
            if json {
                let v = serde_json::json!({
                    "plan": p,
                    "total_bytes": p.total_bytes(),
                    "total_objects": p.total_objects(),
                    "thaw_bytes": p.thaw_bytes(),
                    "thaw_objects": p.thaw_objects(),
                    "quote": q,
                    "days": days,
                    "expected_download_hours": p.expected_download_hours(),
                    "pricing": pricing,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_plan(&p, &q));
            }
            Ok(())
        }
        RestoreCommand::Drill { bucket, what, how, parent, yes, keep, json } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let (dataset, snapshot) = what.names()?;
            let dataset = dataset.ok_or_else(|| anyhow::anyhow!("a drill needs --dataset"))?;
            let mut restore = RestoreOptions::new(dataset.clone());
            restore.days = what.days;
            restore.pricing = pricing;
            let work_dir = how.apply(&mut restore, cfg.as_ref())?;
            let opts = DrillOptions {
                dataset,
                snapshot,
                parent,
                id: format!(
                    "{}-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S"),
                    std::process::id()
                ),
                yes,
                keep,
                work_dir,
                restore,
            };
            let cancel =
                cancel_on_ctrl_c("interrupted: stopping the drill and destroying its dataset");
            let r = drill(&engine, &opts, &cancel).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", format_drill(&r));
            }
            anyhow::ensure!(r.passed(), "the restore drill of {}@{} failed", r.dataset, r.snapshot);
            Ok(())
        }
        RestoreCommand::Run { bucket, to, what, how, mountpoint, no_mount, key_location } => {
            let engine = connect(&bucket, cfg.as_ref()).await?;
            let mut opts = RestoreOptions::new(DatasetName::new(&to)?);
            (opts.dataset, opts.snapshot) = what.names()?;
            opts.days = what.days;
            opts.pricing = pricing;
            opts.mountpoint = mountpoint;
            opts.no_mount = no_mount;
            opts.key_location = key_location;
            let work_dir = how.apply(&mut opts, cfg.as_ref())?;
            let mut file = RestoreProgressFile::open(&work_dir, &opts.target)?;
            eprintln!(
                "zibd: restore progress is recorded in {} (run the same command again to continue after an interruption)",
                file.path().display()
            );
            let cancel =
                cancel_on_ctrl_c("interrupted: stopping; run the same command again to continue");
            let (tx, rx) = watch::channel(RestoreProgress::default());
            // On a terminal one live line; else a log line each time the summary changes.
            let printer = match crate::live_line::spawn(rx.clone(), crate::live_line::restore) {
                Some(live) => live,
                None => tokio::spawn(log_restore_progress(rx)),
            };
            let r = run(&engine, &opts, &mut file, &tx, &cancel).await;
            drop(tx);
            let _ = printer.await;
            let r = r?;
            println!(
                "restored {}@{} into {}: {} streams, {} chunks, {} bytes; {} thaw requests sent, {} polls{}",
                r.dataset,
                r.snapshot,
                r.target,
                r.streams,
                r.chunks,
                r.bytes,
                r.thaw_requests_sent,
                r.polls,
                if r.resumed { " (resumed)" } else { "" }
            );
            if r.encrypted {
                println!(
                    "{} is encrypted; key {}",
                    r.target,
                    if r.key_loaded { "loaded" } else { "NOT loaded" }
                );
            }
            if r.mounted {
                println!("mounted {}", r.target);
            }
            for s in &r.next_steps {
                println!("next: {s}");
            }
            Ok(())
        }
    }
}

/// The foreground restore's progress as log lines (stderr not a terminal): one each time the
/// summary changes.
async fn log_restore_progress(mut rx: watch::Receiver<RestoreProgress>) {
    let mut last = String::new();
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let line = format!(
            "{:?}: streams {}/{}, thaw ready {}/{}, chunks received {}/{}{}",
            p.phase,
            p.steps_received,
            p.steps_total,
            p.thaw_ready,
            p.thaw_needed,
            p.chunks_received,
            p.chunks_total,
            p.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        );
        if line != last {
            tracing::info!("{line}");
            last = line;
        }
    }
}
