//! zibctl: the command-line client of zibd's control socket.

mod client;
mod format;
mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use client::{CliError, Client, exit, unexpected};
use zib_protocol::{
    DEFAULT_SOCKET_PATH, PROTOCOL_VERSION, Request, Response, RestoreStart, RestoreTier,
};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  zibd refused the request or the operation failed (trigger --wait: the run failed)
  2  bad command line
  3  zibd is not reachable (not running, stale socket, no answer in time, shutting down)
  4  permission denied (mutating commands need root or the socket group)
  5  zibd's reply was not understood (zibctl and zibd of different releases?)

Anyone who can open the socket may use status, version and restore status; the other commands
need root or membership in zibd's daemon.socket_group.";

/// Control zibd, the ZFS-to-S3 backup daemon.
#[derive(Debug, Parser)]
#[command(name = "zibctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// The control socket of zibd.
    #[arg(long, global = true, env = "ZIBCTL_SOCKET", default_value = DEFAULT_SOCKET_PATH, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show each dataset's state, progress, last success and next run.
    Status {
        /// Only this dataset.
        dataset: Option<String>,
        /// Print the status as JSON (the protocol's `status` reply) for scripts; with --watch,
        /// one reply a line.
        #[arg(long)]
        json: bool,
        /// A live view until Ctrl-C: a line per dataset, a progress bar per running backup
        /// (bytes, rate, ETA), the time since the last success in red once it is stale (the
        /// dataset's stale_after). Colour only on a terminal, and not with NO_COLOR set.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between two refreshes of --watch.
        #[arg(long, default_value_t = 2, value_name = "SECS", requires = "watch",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Start a backup of a dataset now.
    Trigger {
        dataset: String,
        /// Show progress until the run ends; exit 1 if it fails. Ctrl-C stops watching, not the run.
        #[arg(long)]
        wait: bool,
        /// Start a new chain with a full backup, abandoning an unfinished backup (the way out
        /// when the base of the next incremental is gone).
        #[arg(long)]
        full: bool,
    },
    /// Pause a dataset (or all): its schedule is skipped and a running job stops at a safe point.
    Pause {
        /// The dataset; all datasets when omitted.
        dataset: Option<String>,
    },
    /// Undo pause for a dataset (or all).
    Resume {
        /// The dataset; all datasets when omitted.
        dataset: Option<String>,
    },
    /// Stop a dataset's running job at its next safe point.
    Cancel { dataset: String },
    /// Make zibd re-read its configuration file (like SIGHUP).
    Reload,
    /// Show the versions of zibctl and zibd and their protocol.
    Version,
    /// Restore jobs run by zibd.
    /// The cost ledger (as `zibd cost`): stored bytes and objects per storage class, archive
    /// index overhead, estimated monthly cost, when each chain may be deleted free of charge,
    /// and what a full restore of each dataset's newest snapshot would cost today. Without
    /// DATASET: every backup under the configured prefix.
    Cost {
        dataset: Option<String>,
        /// Print the ledger as JSON (as `zibd cost --json`).
        #[arg(long)]
        json: bool,
    },
    /// Check the backups in the bucket without downloading or thawing anything (as `zibd
    /// verify`, run by zibd): every chunk there with its size and checksum, every backup linked
    /// back to a full, objects no manifest names. Exits 1 when something is wrong. Without
    /// DATASET: every backup under the configured prefix.
    Verify {
        dataset: Option<String>,
        /// Also download and hash every chunk readable without a thaw (as `zibd verify
        /// --deep`; archived chunks are quoted, never thawed: use `zibd verify --deep
        /// --allow-thaw` for that).
        #[arg(long)]
        deep: bool,
        /// Print the report as JSON (as `zibd verify --json`).
        #[arg(long)]
        json: bool,
    },
    /// Apply remote retention now (as `zibd prune`, run by zibd under the dataset's lock;
    /// refused while its backup runs). Without DATASET: every configured dataset.
    Prune {
        dataset: Option<String>,
        /// Show what would be deleted, the bytes freed, the monthly saving and any charge.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON (as `zibd prune --json`).
        #[arg(long)]
        json: bool,
    },
    Restore {
        #[command(subcommand)]
        command: RestoreCommand,
    },
    /// Print a shell completion script (e.g. `zibctl completions bash > /etc/bash_completion.d/zibctl`).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (zibctl.1 and one per subcommand) into DIR (for packagers).
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Start restoring a backed-up dataset into a new local dataset.
    Start(StartArgs),
    /// Stop a restore job at its next safe point. A restart of zibd does not continue it;
    /// `zibctl restore start` with the same target does, from where it stopped.
    Cancel {
        /// The job (its target dataset, as `restore status` lists it).
        id: String,
    },
    /// Show restore jobs.
    Status {
        /// Only this job.
        id: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Restore drill, run by zibd under the dataset's lock (as `zibd restore drill`; refused
    /// while its backup runs): restore the newest (or --snapshot) backup of DATASET into a
    /// throwaway <pool>/zib-drill-<id> (never mounted), check the received snapshot's GUID
    /// against the manifest and the source, report time and cost, destroy it. Waits for the
    /// end; exits 1 when the drill fails. Archived chunks are thawed (and paid for) only with
    /// --yes: without it the drill shows the quote and restores nothing. The result shows in
    /// `zibctl status`.
    Drill {
        /// The configured dataset to drill.
        dataset: String,
        /// Drill this snapshot (default: the newest backed up).
        #[arg(long)]
        snapshot: Option<String>,
        /// Thaw archived chunks and pay for it.
        #[arg(long)]
        yes: bool,
        /// Thaw tier for archived chunks: bulk (cheapest; up to 48 h from Deep Archive) or
        /// standard (up to 12 h).
        #[arg(long, default_value = "bulk")]
        tier: RestoreTier,
        /// Print the report as JSON (as `zibd restore drill --json`).
        #[arg(long)]
        json: bool,
    },
}

/// `zibctl restore start`'s arguments: the request's fields, one for one.
#[derive(Debug, Args)]
struct StartArgs {
    /// The backed-up dataset (as named in the backup catalog).
    dataset: String,
    /// The local dataset to receive into.
    #[arg(long)]
    to: String,
    /// Restore up to this snapshot (default: the newest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Retrieval tier for objects in cold storage: bulk (cheapest; up to 48 h from Deep
    /// Archive) or standard (up to 12 h).
    #[arg(long, default_value = "bulk")]
    tier: RestoreTier,
    /// Days the thawed copies stay readable.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Read from this bucket instead of the configured one (root only: the daemon would
    /// receive a stream its configuration does not vouch for).
    #[arg(long)]
    bucket: Option<String>,
    /// Read under this key prefix instead of the configured one (root only).
    #[arg(long)]
    prefix: Option<String>,
    /// Mountpoint of the restored dataset (root only: the daemon mounts as root).
    #[arg(long)]
    mountpoint: Option<String>,
    /// Leave the restored dataset unmounted.
    #[arg(long)]
    no_mount: bool,
    /// Key of an encrypted dataset, loaded at the end: file:///path or a path (root only:
    /// the daemon reads it as root).
    #[arg(long)]
    key_location: Option<String>,
}

impl From<StartArgs> for RestoreStart {
    fn from(a: StartArgs) -> Self {
        RestoreStart {
            dataset: a.dataset,
            snapshot: a.snapshot,
            to: a.to,
            tier: a.tier,
            days: a.days,
            bucket: a.bucket,
            prefix: a.prefix,
            mountpoint: a.mountpoint,
            no_mount: a.no_mount,
            key_location: a.key_location,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "zibctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Command::Man { dir } = &cli.command {
        return match std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zibctl: cannot write the man pages to {}: {e}", dir.display());
                ExitCode::from(exit::FAILED)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zibctl: cannot start: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("zibctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn print_json(value: &Response) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn ok_message(response: Response, request: &Request, default: String) -> Result<u8, CliError> {
    match response {
        Response::Ok { message } => {
            println!("{}", message.unwrap_or(default));
            Ok(exit::OK)
        }
        other => Err(unexpected(request, &other)),
    }
}

/// A request answered with a [`Response::Report`]: its text, or its JSON. No reply timeout: a
/// large bucket takes a while to list, a prune to delete.
async fn report(client: &mut Client, request: Request, json: bool) -> Result<u8, CliError> {
    report_with(client, request, json, |_| true).await?;
    Ok(exit::OK)
}

/// [`report`], and what `judge` says of the report's JSON.
async fn report_with(
    client: &mut Client,
    request: Request,
    json: bool,
    judge: impl FnOnce(&serde_json::Value) -> bool,
) -> Result<bool, CliError> {
    match client.call_unbounded(&request).await? {
        Response::Report { text, json: value } => {
            if json {
                let text = serde_json::to_string_pretty(&value)
                    .map_err(|e| CliError::Failed(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{text}");
            }
            Ok(judge(&value))
        }
        other => Err(unexpected(&request, &other)),
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    let now = chrono::Utc::now();
    if let Command::Version = cli.command {
        println!("zibctl {} (protocol {PROTOCOL_VERSION})", env!("CARGO_PKG_VERSION"));
    }
    let mut client = Client::connect(&cli.socket).await?;
    match cli.command {
        Command::Status { dataset, json, watch: true, interval } => {
            let every = std::time::Duration::from_secs(interval);
            watch::run(client, &cli.socket, dataset, every, watch::Output::detect(json)).await
        }
        Command::Status { dataset, json, watch: false, .. } => {
            let request = Request::Status { dataset };
            let response = client.call(&request).await?;
            if json {
                print_json(&response)?;
                return Ok(exit::OK);
            }
            match response {
                Response::Status { daemon, datasets } => {
                    print!("{}", format::status_table(&daemon, &datasets, now, &chrono::Local))
                }
                other => return Err(unexpected(&request, &other)),
            }
            Ok(exit::OK)
        }
        Command::Trigger { dataset, wait: false, full } => {
            let request = Request::Trigger { dataset: dataset.clone(), wait: false, full };
            let response = client.call(&request).await?;
            let kind = if full { "a full backup" } else { "a backup" };
            ok_message(response, &request, format!("triggered {kind} of {dataset}"))
        }
        Command::Trigger { dataset, wait: true, full } => {
            let request = Request::Trigger { dataset: dataset.clone(), wait: true, full };
            let mut stdout = std::io::stdout();
            let last = client
                .stream(&request, |update| {
                    let _ = writeln!(stdout, "{}", format::progress_line(update));
                    let _ = stdout.flush();
                })
                .await?;
            match last {
                Response::Done { ok: true, message, .. } => {
                    println!("{dataset}: done: {message}");
                    Ok(exit::OK)
                }
                Response::Done { ok: false, message, .. } => {
                    Err(CliError::Failed(format!("backup of {dataset} failed: {message}")))
                }
                Response::Ok { message } => {
                    println!(
                        "{}",
                        message.unwrap_or_else(|| format!("triggered a backup of {dataset}"))
                    );
                    Ok(exit::OK)
                }
                other => Err(unexpected(&request, &other)),
            }
        }
        Command::Pause { dataset } => {
            let default = format!("paused {}", dataset.as_deref().unwrap_or("all datasets"));
            let request = Request::Pause { dataset };
            let response = client.call(&request).await?;
            ok_message(response, &request, default)
        }
        Command::Resume { dataset } => {
            let default = format!("resumed {}", dataset.as_deref().unwrap_or("all datasets"));
            let request = Request::Resume { dataset };
            let response = client.call(&request).await?;
            ok_message(response, &request, default)
        }
        Command::Cancel { dataset } => {
            let default = format!("cancelling the run of {dataset}");
            let request = Request::Cancel { dataset };
            let response = client.call(&request).await?;
            ok_message(response, &request, default)
        }
        Command::Reload => {
            let response = client.call(&Request::Reload).await?;
            ok_message(response, &Request::Reload, "configuration reloaded".into())
        }
        Command::Cost { dataset, json } => {
            report(&mut client, Request::Cost { dataset }, json).await
        }
        Command::Verify { dataset, deep, json } => {
            let clean = report_with(&mut client, Request::Verify { dataset, deep }, json, |v| {
                v["report"]["clean"].as_bool() == Some(true)
            })
            .await?;
            Ok(if clean { exit::OK } else { exit::FAILED })
        }
        Command::Prune { dataset, dry_run, json } => {
            report(&mut client, Request::PruneNow { dataset, dry_run }, json).await
        }
        Command::Version => match client.call(&Request::Version).await? {
            Response::Version { daemon_version, protocol_version } => {
                println!("zibd {daemon_version} (protocol {protocol_version})");
                Ok(exit::OK)
            }
            other => Err(unexpected(&Request::Version, &other)),
        },
        Command::Restore { command: RestoreCommand::Start(args) } => {
            let request = Request::RestoreStart(args.into());
            match client.call(&request).await? {
                Response::RestoreStarted { id } => {
                    println!(
                        "restore job {id} started; follow it with: zibctl restore status {id}"
                    );
                    Ok(exit::OK)
                }
                other => Err(unexpected(&request, &other)),
            }
        }
        Command::Restore { command: RestoreCommand::Cancel { id } } => {
            let default = format!("cancelling restore job {id}");
            let request = Request::RestoreCancel { id };
            let response = client.call(&request).await?;
            ok_message(response, &request, default)
        }
        Command::Restore {
            command: RestoreCommand::Drill { dataset, snapshot, yes, tier, json },
        } => {
            let request = Request::RestoreDrill { dataset, snapshot, yes, tier };
            let passed =
                report_with(&mut client, request, json, |v| v["result"] == "passed").await?;
            Ok(if passed { exit::OK } else { exit::FAILED })
        }
        Command::Restore { command: RestoreCommand::Status { id, json } } => {
            let request = Request::RestoreStatus { id };
            let response = client.call(&request).await?;
            if json {
                print_json(&response)?;
                return Ok(exit::OK);
            }
            match response {
                Response::RestoreStatus { jobs } => print!("{}", format::restore_table(&jobs, now)),
                other => return Err(unexpected(&request, &other)),
            }
            Ok(exit::OK)
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands_and_socket() {
        let cli = Cli::try_parse_from([
            "zibctl",
            "--socket",
            "/tmp/x.sock",
            "trigger",
            "tank/a",
            "--wait",
        ])
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        assert!(
            matches!(cli.command, Command::Trigger { ref dataset, wait: true, full: false } if dataset == "tank/a")
        );
        let cli = Cli::try_parse_from(["zibctl", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status { dataset: None, json: true, watch: false, interval: 2 }
        ));
        let cli = Cli::try_parse_from(["zibctl", "status", "-w", "--interval", "5"]).unwrap();
        assert!(matches!(cli.command, Command::Status { watch: true, interval: 5, .. }));
        assert!(Cli::try_parse_from(["zibctl", "status", "--interval", "5"]).is_err());
        assert!(Cli::try_parse_from(["zibctl", "status", "-w", "--interval", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "zibctl", "restore", "start", "tank/a", "--to", "tank/r", "--tier", "standard",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Restore {
                command: RestoreCommand::Start(StartArgs {
                    tier: RestoreTier::Standard,
                    days: 7,
                    ..
                })
            }
        ));
        let e = Cli::try_parse_from([
            "zibctl",
            "restore",
            "start",
            "tank/a",
            "--to",
            "tank/r",
            "--tier",
            "expedited",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("Expedited tier does not exist"), "{e}");
        assert!(Cli::try_parse_from(["zibctl", "cancel"]).is_err());
        let cli = Cli::try_parse_from(["zibctl", "restore", "drill", "tank/a", "--yes"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Restore {
                command: RestoreCommand::Drill {
                    ref dataset,
                    snapshot: None,
                    yes: true,
                    tier: RestoreTier::Bulk,
                    json: false
                }
            } if dataset == "tank/a"
        ));
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Exit codes:") && help.contains("3  zibd is not reachable"),
            "{help}"
        );
    }
}
