//! Process-level pieces every command shares: exit codes, the tokio runtime, tracing (and the
//! stderr it shares with a foreground command's live line), and Ctrl-C as a cancellation. A
//! leaf: it uses no other module of zibd, so any of them may use it.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// sysexits.h EX_CONFIG: systemd and scripts can tell a bad config from a crash.
pub const EXIT_CONFIG: u8 = 78;

/// Raises the soft limit of open files to the hard one (as Go programs do since 1.19): the
/// daemon holds one state lock a dataset, and systemd gives services a soft limit of 1,024
/// (hard 524,288), which a tree of 1,000 datasets would exceed at start. Returns the limit
/// in force; on an error the old one stays (and is what the caller sees fail, if anything).
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    // An unlimited hard limit still stops at the kernel's nr_open (1,048,576 by default).
    let want = hard.min(1 << 20);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return Some(want);
    }
    Some(soft)
}

/// Logs to stderr, filtered by `ZIB_LOG` (default: info, the AWS SDK at warn; see
/// [`log_filter`]); one JSON object a line with `ZIB_LOG_FORMAT=json` (for log shippers), text
/// otherwise.
pub fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_new(log_filter(std::env::var("ZIB_LOG").ok().as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let builder = fmt().with_env_filter(filter).with_writer(|| LogStderr).with_target(false);
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

/// Whether a live line ([`draw_live_line`]) is on the terminal now, under stderr's users' lock.
static LIVE_LINE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

fn live_line_shown() -> std::sync::MutexGuard<'static, bool> {
    LIVE_LINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// "Carriage return, erase the line": where a live line was, the terminal's row is empty.
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// Stderr for log lines: a live line on the terminal is cleared first, so a log line never
/// starts in the middle of it (the live line is drawn again below it at its next redraw).
struct LogStderr;

impl std::io::Write for LogStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut shown = live_line_shown();
        let mut err = std::io::stderr().lock();
        if *shown {
            err.write_all(CLEAR_LINE)?;
            *shown = false;
        }
        err.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Draws `line` in place of the live line (a terminal only: callers check [`stderr_is_live`]).
pub fn draw_live_line(line: &str) {
    use std::io::Write;
    let mut shown = live_line_shown();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(CLEAR_LINE);
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
    *shown = true;
}

/// Leaves the live line as it was last drawn and moves below it.
pub fn end_live_line() {
    use std::io::Write;
    let mut shown = live_line_shown();
    if *shown {
        let _ = writeln!(std::io::stderr().lock());
        *shown = false;
    }
}

/// Whether a live line may be drawn: stderr is a terminal that is not `TERM=dumb`.
pub fn stderr_is_live() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
}

/// The AWS SDK's lines below warn print the access key ID (aws-config's info lines on the
/// profile it loaded, the resolved identity, the endpoint parameters, the request being
/// signed), so a `ZIB_LOG` that does not name an SDK crate (`info`, `debug`, `zibd=trace`)
/// leaves the SDK at warn, as the default does.
const SDK_AT_WARN: &str = "aws_config=warn,aws_runtime=warn,aws_sigv4=warn,aws_smithy_runtime=warn";

/// The filter directives for a `ZIB_LOG` value: info (the SDK at warn) when unset or empty;
/// the value itself when it names an SDK crate (`aws_...`: asking for those lines, key ID and
/// all); otherwise the value with [`SDK_AT_WARN`] after it (a named target beats a bare level).
pub fn log_filter(zib_log: Option<&str>) -> String {
    match zib_log.map(str::trim) {
        None | Some("") => format!("info,{SDK_AT_WARN}"),
        Some(v) if v.contains("aws_") => v.to_owned(),
        Some(v) => format!("{v},{SDK_AT_WARN}"),
    }
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

/// Runs a foreground command's future to its end as a task on the runtime's workers, not on
/// the calling thread: `block_on` polls its future on the caller's thread, so every socket
/// event of the downloads or uploads inside it had to wake that thread from a worker (25 s of
/// a capped restore made 296,765 futex calls that way, 21,363 as a task). A panic in the task
/// is resumed here.
pub fn run_to_end<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime();
    match rt.block_on(rt.spawn(fut)) {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("the command's task was cancelled: {e}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_stays_at_warn_unless_named() {
        assert_eq!(log_filter(None), format!("info,{SDK_AT_WARN}"));
        assert_eq!(log_filter(Some(" ")), log_filter(None));
        assert_eq!(log_filter(Some("debug")), format!("debug,{SDK_AT_WARN}"));
        assert_eq!(log_filter(Some("aws_smithy_runtime=trace")), "aws_smithy_runtime=trace");
        // What the filter then lets through: a named target beats the bare level.
        use tracing::level_filters::LevelFilter;
        let f = tracing_subscriber::EnvFilter::try_new(log_filter(Some("trace"))).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::TRACE));
        let s = format!("{f}");
        assert!(s.contains("aws_config=warn") && s.contains("aws_smithy_runtime=warn"), "{s}");
    }
}
