//! Process-level pieces every command shares: exit codes, the tokio runtime, tracing, and
//! Ctrl-C as a cancellation. A leaf: it uses no other module of zibd, so any of them may use it.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// sysexits.h EX_CONFIG: systemd and scripts can tell a bad config from a crash.
pub const EXIT_CONFIG: u8 = 78;

/// Logs to stderr, filtered by `ZIB_LOG` (default: info, the AWS SDK at warn).
pub fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("ZIB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// The exit code of a foreground command: 0, or 1 with the error chain on stderr.
pub fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zibd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled at the first Ctrl-C (SIGINT), which logs `message` as a warning. Call it
/// inside the runtime.
pub fn cancel_on_ctrl_c(message: &'static str) -> CancellationToken {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("{message}");
            c2.cancel();
        }
    });
    cancel
}
