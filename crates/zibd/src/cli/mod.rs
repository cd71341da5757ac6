//! Command line of `zibd`: the daemon by default, plus foreground commands. The only module
//! that calls down into the commands (`daemon`, `backup`, `restore`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use zib_core::{Config, DatasetName};

mod restore;

use crate::{
    backup::{self, BackupOptions, Engine},
    outside::Outside,
    process::{EXIT_CONFIG, cancel_on_ctrl_c, init_tracing, report, run_to_end},
    s3::S3Store,
    state_store::StateStore,
};

pub const DEFAULT_CONFIG: &str = "/etc/zib/zibd.toml";

#[derive(Debug, Parser)]
#[command(
    name = "zibd",
    version,
    about = "Back ZFS datasets up, incrementally, to S3 cold storage, and restore them."
)]
pub struct Cli {
    /// Config file.
    #[arg(long, short, global = true, env = "ZIBD_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check a config file; exit 78 if it is invalid.
    CheckConfig {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
    },
    /// Run one backup of DATASET in the foreground, then exit. For a tree (an entry with
    /// recursive = true): one backup of each of its datasets in turn.
    Backup {
        dataset: String,
        /// Start a new chain with a full stream.
        #[arg(long)]
        full: bool,
    },
    /// Delete old whole chains (as the dataset's keep_chains / keep_within allow) and abandoned
    /// upload attempts from the bucket, never before their storage class's minimum duration
    /// unless --allow-early-deletion. Run it again after an interruption: it resumes.
    Prune {
        dataset: String,
        /// Show what would be deleted, the bytes freed, the monthly saving and any charge.
        #[arg(long)]
        dry_run: bool,
        /// Also delete objects younger than their minimum storage duration, paying the
        /// early-deletion charge the dry run shows.
        #[arg(long)]
        allow_early_deletion: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adopt a bucket made by zfs-incremental-backup: check each stream it completed is whole
    /// and write zib manifests pointing at its chunks as they are (nothing re-uploaded, copied
    /// or overwritten); the next backup continues its chain incrementally.
    ImportLegacy {
        /// The tool's RON save file (its `--save-data-path`).
        #[arg(long)]
        state_file: PathBuf,
        /// Check and show what would be adopted and what it costs to keep; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The cost ledger, from the bucket alone: stored bytes and objects per storage class,
    /// archive index overhead, estimated monthly cost, when each chain may be deleted free of
    /// charge, and what a full restore of each dataset's newest snapshot would cost today.
    Cost {
        #[command(flatten)]
        bucket: restore::BucketArgs,
        /// Only this backed-up dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Days the thawed copies of the restore quote stay readable.
        #[arg(long, default_value_t = crate::cost::RESTORE_QUOTE_DAYS)]
        days: u32,
        /// Print the ledger as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the bucket without downloading or thawing anything: every chunk a manifest names
    /// is there with its size and stored SHA-256 (one HEAD each), every backup links back to a
    /// full, and objects no manifest names are listed. Exits 1 when something is wrong.
    Verify {
        #[command(flatten)]
        bucket: restore::BucketArgs,
        /// Only this backed-up dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Also download and hash every chunk readable without a thaw (GETs and transfer out
        /// are billed); archived chunks are quoted, and thawed only with --allow-thaw.
        #[arg(long)]
        deep: bool,
        /// With --deep: ask for the thaw of archived chunks (billed) and end; run again once
        /// they are ready to hash them.
        #[arg(long, requires = "deep", value_name = "TIER", num_args = 0..=1, default_missing_value = "bulk")]
        allow_thaw: Option<zib_core::pricing::RestoreTier>,
        /// Days a thawed copy stays readable.
        #[arg(long, default_value_t = 2, requires = "allow_thaw")]
        thaw_days: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore from the bucket alone: `list` the catalog, `plan` (with a cost quote), `run`.
    #[command(subcommand)]
    Restore(Box<restore::RestoreCommand>),
    /// Write the man pages (zibd.1 and one per subcommand) into DIR (for packagers).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("zibd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command.unwrap_or(Command::Run) {
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(cmd, &dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zibd: cannot write the man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => {
            let path = file.unwrap_or(cli.config);
            match load_config(&path) {
                Ok(cfg) => {
                    println!("{}: ok ({} datasets)", path.display(), cfg.datasets.len());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Backup { dataset, full } => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let dir = cfg.daemon.state_dir.clone();
            let r = run_to_end(async move {
                backup_once(cfg, &dataset, BackupOptions { force_full: full }).await
            });
            record_requests(Some(&dir));
            report(r)
        }
        Command::Prune { dataset, dry_run, allow_early_deletion, json } => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let dir = cfg.daemon.state_dir.clone();
            let opts = crate::lifecycle::PruneOptions { dry_run, allow_early_deletion };
            let r = run_to_end(async move { prune_once(cfg, &dataset, opts, json).await });
            record_requests(Some(&dir));
            report(r)
        }
        Command::ImportLegacy { state_file, dry_run } => {
            let cfg = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let dir = cfg.daemon.state_dir.clone();
            let r = run_to_end(async move { import_legacy(cfg, &state_file, dry_run).await });
            record_requests(Some(&dir));
            report(r)
        }
        Command::Cost { bucket, dataset, days, json } => {
            let cfg = match restore::optional_config(&bucket, &cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(run_to_end(cost_once(bucket, cfg, dataset, days, json)))
        }
        Command::Verify { bucket, dataset, deep, allow_thaw, thaw_days, json } => {
            let deep = deep.then_some(crate::verify::DeepOptions { allow_thaw, thaw_days });
            let cfg = match restore::optional_config(&bucket, &cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let dir = cfg.as_ref().map(|c| c.daemon.state_dir.clone());
            let r = run_to_end(verify_once(bucket, cfg, dataset, deep, json));
            record_requests(dir.as_deref());
            report(r)
        }
        Command::Restore(cmd) => restore::main(*cmd, &cli.config),
        Command::Run => crate::daemon::main(cli.config),
    }
}

/// Adds the requests this command made to the request ledger of `state_dir` (none without a
/// config: there is no state directory to keep it in).
fn record_requests(state_dir: Option<&std::path::Path>) {
    if let Some(dir) = state_dir {
        crate::request_ledger::record_best_effort(dir);
    }
}

/// The datasets `zibd backup NAME` backs up, in the config they are concrete in: NAME alone
/// when it has its own entry; every dataset of the tree when NAME is a tree's root; NAME as a
/// tree's member when a tree holds it.
async fn backup_targets(
    cfg: Config,
    name: &DatasetName,
    zfs: &crate::zfs::Zfs,
) -> anyhow::Result<(Config, Vec<DatasetName>)> {
    let entry = cfg.dataset(name);
    let root = entry.is_some_and(|d| d.recursive);
    if entry.is_some() && !root {
        return Ok((cfg, vec![name.clone()]));
    }
    if entry.is_none() && zib_core::tree::listed_root_of(&cfg, name).is_none() {
        anyhow::bail!("dataset {name} is not in the config");
    }
    let store = StateStore::new(&cfg.daemon.state_dir);
    let view =
        crate::tree::expand(&cfg, zfs, &store, &zib_core::tree::Listings::new(), [], Some(name))
            .await;
    let x = &view.expansion;
    if x.excluded.contains(name) {
        anyhow::bail!("dataset {name} is left out of its tree by an exclude pattern");
    }
    if x.gone.contains(name) {
        anyhow::bail!(
            "dataset {name} no longer exists on this host (source gone); its chains stay in the bucket"
        );
    }
    let inside = format!("{name}/");
    let names: Vec<DatasetName> = x
        .datasets
        .iter()
        .map(|d| &d.name)
        .filter(|n| *n == name || (root && n.as_str().starts_with(&inside)))
        .filter(|n| !x.gone.contains(*n))
        .cloned()
        .collect();
    if names.is_empty() {
        anyhow::bail!("dataset {name} does not exist on this host");
    }
    Ok((x.config(&cfg), names))
}

/// `zibd backup`: one backup in the foreground (of each dataset of a tree in turn), Ctrl-C
/// stops it at a safe point.
async fn backup_once(cfg: Config, dataset: &str, opts: BackupOptions) -> anyhow::Result<()> {
    let name = DatasetName::new(dataset)?;
    let outside = Outside::from_env();
    let (cfg, names) = backup_targets(cfg, &name, &outside.zfs).await?;
    let engine = Engine::from_config(&cfg, &outside).await;
    let cancel = cancel_on_ctrl_c("interrupted: stopping at the next safe point");
    if names.len() == 1 {
        return backup_one(&engine, &cfg, &names[0], opts, &cancel).await;
    }
    let mut failed = Vec::new();
    for n in &names {
        if cancel.is_cancelled() {
            break;
        }
        if let Err(e) = backup_one(&engine, &cfg, n, opts, &cancel).await {
            eprintln!("zibd: backup of {n} failed: {e:#}");
            failed.push(n.to_string());
        }
    }
    println!("tree {name}: {} datasets, {} failed", names.len(), failed.len());
    if cancel.is_cancelled() {
        anyhow::bail!("interrupted");
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "the backup of {} of the tree's datasets failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// One backup of `name` (a dataset of `cfg`) under its own lock.
async fn backup_one(
    engine: &Engine,
    cfg: &Config,
    name: &DatasetName,
    opts: BackupOptions,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let ds =
        cfg.dataset(name).with_context(|| format!("dataset {name} is not in the config"))?.clone();
    let store = StateStore::new(&cfg.daemon.state_dir);
    let mut locked = store.lock(name)?;
    let (progress, rx) = tokio::sync::watch::channel(backup::Progress::default());
    let live = crate::live_line::spawn(rx, crate::live_line::backup);
    let r = backup::run(engine, cfg, &ds, &mut locked, opts, &progress, cancel).await;
    drop(progress);
    if let Some(live) = live {
        let _ = live.await;
    }
    let r = match r? {
        backup::Outcome::Committed(r) => r,
        backup::Outcome::Skipped(s) => {
            println!("{name}: {s} (min_change = 0 backs up every run)");
            return Ok(());
        }
    };
    println!(
        "{} backup #{} of {}@{}: {} bytes, {} chunks uploaded, {} already stored (attempt {}), manifest {}",
        if r.full { "full" } else { "incremental" },
        r.seq,
        name,
        r.snapshot,
        r.stream_size,
        r.chunks_uploaded,
        r.chunks_reused,
        r.attempt,
        r.manifest_key
    );
    for p in &r.pruned {
        println!("pruned {p}");
    }
    if let Some(note) = &r.note {
        println!("note: {note}");
    }
    Ok(())
}

/// `zibd import-legacy`: adopts the bucket, prints what it adopted and the cost to keep it.
async fn import_legacy(
    cfg: Config,
    state_file: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let engine = Engine::from_config(&cfg, &Outside::from_env()).await;
    let cancel = cancel_on_ctrl_c("interrupted: stopping at the next safe point");
    let opts = crate::import_legacy::ImportOptions { dry_run };
    let r = crate::import_legacy::import(&cfg, &engine, state_file, opts, &cancel).await?;
    print!("{}", crate::import_legacy::format_report(&r));
    Ok(())
}

/// `zibd prune`: holds the dataset's lock (so no backup runs meanwhile) unless a dry run, which
/// only reads the state.
async fn prune_once(
    cfg: Config,
    dataset: &str,
    opts: crate::lifecycle::PruneOptions,
    json: bool,
) -> anyhow::Result<()> {
    let name = DatasetName::new(dataset)?;
    let ds =
        cfg.dataset(&name).with_context(|| format!("dataset {name} is not in the config"))?.clone();
    let store = StateStore::new(&cfg.daemon.state_dir);
    let (_lock, state) = if opts.dry_run {
        (None, store.read(&name)?)
    } else {
        let locked = store.lock(&name)?;
        let state = locked.state.clone();
        (Some(locked), state)
    };
    let s3 = S3Store::from_config(&cfg, None).await;
    let r = crate::lifecycle::prune(
        &s3,
        &cfg,
        &ds,
        &state,
        opts,
        crate::now::utc(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::lifecycle::format_prune(&r));
    }
    Ok(())
}

/// `zibd cost`: the ledger of the bucket prefix the flags (or the config) name.
async fn cost_once(
    bucket: restore::BucketArgs,
    cfg: Option<Config>,
    dataset: Option<String>,
    days: u32,
    json: bool,
) -> anyhow::Result<()> {
    let pricing = cfg.as_ref().map(|c| c.pricing.clone()).unwrap_or_default();
    let engine = restore::connect(&bucket, cfg.as_ref()).await?;
    let ds = restore::parse_opt(dataset.as_deref(), DatasetName::new)?;
    let r = crate::cost::cost_report(
        &engine.s3,
        &engine.prefix,
        ds.as_ref(),
        &pricing,
        crate::now::utc(),
        days,
    )
    .await?;
    // The report's own listing and reads are in the ledger it shows.
    let r = match &cfg {
        Some(c) => {
            let ledger = crate::request_ledger::record(&c.daemon.state_dir, crate::now::utc());
            r.with_requests(ledger.map_err(|e| e.to_string()), &pricing)
        }
        None => r,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::cost::format_cost(&r));
    }
    Ok(())
}

/// `zibd verify`: the report of the bucket prefix the flags (or the config) name; an error
/// (exit 1) after the report when it is not clean.
async fn verify_once(
    bucket: restore::BucketArgs,
    cfg: Option<Config>,
    dataset: Option<String>,
    deep: Option<crate::verify::DeepOptions>,
    json: bool,
) -> anyhow::Result<()> {
    let pricing = cfg.as_ref().map(|c| c.pricing.clone()).unwrap_or_default();
    let engine = restore::connect(&bucket, cfg.as_ref()).await?;
    let ds = restore::parse_opt(dataset.as_deref(), DatasetName::new)?;
    let o = crate::verify::verify(&engine.s3, &engine.prefix, ds.as_ref(), &pricing, deep).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        print!("{}", crate::verify::format_verify(&o));
    }
    if o.report.clean {
        Ok(())
    } else {
        let errors = o
            .report
            .problems
            .iter()
            .filter(|p| p.severity == zib_core::verify::Severity::Error)
            .count();
        anyhow::bail!("verify found {errors} error(s) in s3://{}/{}", o.bucket, o.prefix)
    }
}
