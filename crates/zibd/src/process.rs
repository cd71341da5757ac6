//! Process-level pieces every command shares: exit codes, the tokio runtime, tracing, and
//! Ctrl-C as a cancellation. A leaf: it uses no other module of zibd, so any of them may use it.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// sysexits.h EX_CONFIG: systemd and scripts can tell a bad config from a crash.
pub const EXIT_CONFIG: u8 = 78;

/// Logs to stderr, filtered by `ZIB_LOG` (default: info, the AWS SDK at warn); one JSON object
/// a line with `ZIB_LOG_FORMAT=json` (for log shippers), text otherwise.
pub fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("ZIB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match LogFormat::from_env() {
        Ok(LogFormat::Json) => {
            builder.json().flatten_event(true).with_current_span(false).try_init()
        }
        Ok(LogFormat::Text) => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).try_init()
        }
        Err(bad) => {
            let r = builder.with_ansi(false).try_init();
            tracing::warn!("ZIB_LOG_FORMAT={bad:?} is neither \"text\" nor \"json\"; logging text");
            r
        }
    };
}

/// `ZIB_LOG_FORMAT`: `text` (the default) or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `ZIB_LOG_FORMAT`; the value it does not know as the error.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("ZIB_LOG_FORMAT") {
            Err(_) => Ok(LogFormat::Text),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(v),
            },
        }
    }
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
