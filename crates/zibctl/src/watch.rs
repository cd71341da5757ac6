//! `zibctl status --watch`: a live view of every dataset, redrawn until Ctrl-C (as `zrepl
//! status`). [`screen`] renders one frame from a status reply: pure, with `now`, the time zone
//! and colour as parameters, and one golden file per job state (`tests/golden/`). [`run`] asks
//! zibd every interval and redraws in place on a terminal, in colour unless `NO_COLOR` is set;
//! when stdout is not a terminal it prints one plain frame after the other (with `--json`, one
//! status reply a line).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use zib_protocol::{DaemonInfo, DatasetStatus, JobState, Request, Response, RunProgress};

use crate::client::{CliError, Client, exit, unexpected};
use crate::format::{
    DASH, current_error, daemon_line, dataset_notes, drill_notes, human_bytes, human_duration,
    human_rate, relative_time, state_label, verify_note,
};

/// Cells of a progress bar between its brackets.
const BAR: usize = 10;

/// The few colours the view uses (SGR codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Bold,
    Red,
    Green,
    Yellow,
    Cyan,
}

impl Colour {
    fn sgr(self) -> &'static str {
        match self {
            Colour::Bold => "1",
            Colour::Red => "31",
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Cyan => "36",
        }
    }
}

/// `text` in `colour` when colouring is on.
fn paint(text: &str, colour: Option<Colour>, on: bool) -> String {
    match colour {
        Some(c) if on && !text.is_empty() => format!("\x1b[{}m{text}\x1b[0m", c.sgr()),
        _ => text.to_owned(),
    }
}

type Cell = (String, Option<Colour>);

/// The bar of a running backup: `[###-------]  30% 3.0 GiB / 10.0 GiB`, or the bytes
/// sent alone while there is no estimate.
pub fn progress_bar(p: &RunProgress) -> String {
    match p.bytes_total_estimate {
        Some(total) => format!(
            "{} {} / {}",
            zib_core::human::bar(p.bytes_sent, total, BAR),
            human_bytes(p.bytes_sent),
            human_bytes(total)
        ),
        None => format!("{} sent", human_bytes(p.bytes_sent)),
    }
}

/// Whether the dataset has had no success for its `stale_after` (as zibd's alerts count it:
/// from its last success or, never backed up, from the daemon's start). Never without a
/// `stale_after` (an older daemon, or no next run).
pub fn is_stale(d: &DatasetStatus, daemon: &DaemonInfo, now: DateTime<Utc>) -> bool {
    let Some(secs) = d.stale_after_secs else { return false };
    let since = d.last_success.as_ref().map_or(daemon.started_at, |s| s.at);
    let age = (now - since).num_seconds();
    age >= 0 && age.unsigned_abs() >= secs
}

/// How the last run ended: `ok 1d ago`, `failed 5m ago`, `skipped (no change) 1h ago`.
fn last_run(d: &DatasetStatus, now: DateTime<Utc>) -> Cell {
    let mut runs: Vec<(DateTime<Utc>, &str, Colour)> = Vec::new();
    if let Some(s) = &d.last_success {
        runs.push((s.at, "ok", Colour::Green));
    }
    if let Some(e) = current_error(d) {
        runs.push((e.at, "failed", Colour::Red));
    }
    if let Some(n) = &d.last_note
        && n.message.starts_with("skipped (no change)")
    {
        runs.push((n.at, "skipped (no change)", Colour::Green));
    }
    match runs.into_iter().max_by_key(|(at, ..)| *at) {
        Some((at, what, colour)) => (format!("{what} {}", relative_time(at, now)), Some(colour)),
        None => ("never run".into(), None),
    }
}

fn state_colour(state: JobState, paused: bool) -> Option<Colour> {
    match state {
        JobState::Failed => Some(Colour::Red),
        JobState::Snapshotting | JobState::Uploading | JobState::Finishing => {
            Some(if paused { Colour::Yellow } else { Colour::Cyan })
        }
        JobState::Paused | JobState::Cancelling => Some(Colour::Yellow),
        _ if paused => Some(Colour::Yellow),
        _ => None,
    }
}

/// One dataset's row; narrower than `zibctl status`'s (no sizes of the last success, the next
/// run relative only) so that a running backup's line fits 120 columns.
fn row(d: &DatasetStatus, daemon: &DaemonInfo, now: DateTime<Utc>) -> Vec<Cell> {
    let dash = || (DASH.to_owned(), None);
    let (progress, rate, eta) = match &d.progress {
        Some(p) => (
            (progress_bar(p), Some(Colour::Cyan)),
            p.rate_bytes_per_sec.map_or_else(dash, |r| (human_rate(r), None)),
            p.eta_secs.map_or_else(dash, |e| (human_duration(e), None)),
        ),
        None => (dash(), dash(), dash()),
    };
    let stale = is_stale(d, daemon, now);
    let success = match (&d.last_success, stale) {
        (Some(s), false) => (relative_time(s.at, now), None),
        (Some(s), true) => (format!("{} (stale)", relative_time(s.at, now)), Some(Colour::Red)),
        (None, false) => ("never".to_owned(), Some(Colour::Yellow)),
        (None, true) => ("never (stale)".to_owned(), Some(Colour::Red)),
    };
    let next = match (d.next_run, d.paused) {
        (_, true) => ("paused".to_owned(), Some(Colour::Yellow)),
        (Some(t), false) => (relative_time(t, now), None),
        (None, false) => dash(),
    };
    vec![
        (d.dataset.clone(), None),
        (state_label(d.state, d.paused), state_colour(d.state, d.paused)),
        progress,
        rate,
        eta,
        last_run(d, now),
        success,
        next,
    ]
}

/// Lays out coloured cells under a header: widths from the text alone, colour around it.
fn table(header: &[&str], rows: &[Vec<Cell>], colour: bool) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, (text, _)) in widths.iter_mut().zip(r) {
            *w = (*w).max(text.chars().count());
        }
    }
    let line = |cells: Vec<Cell>| {
        let last = cells.len() - 1;
        let mut l = String::new();
        for (i, (text, c)) in cells.into_iter().enumerate() {
            l.push_str(&paint(&text, c, colour));
            if i < last {
                l.extend(std::iter::repeat_n(' ', widths[i] - text.chars().count() + 2));
            }
        }
        l.trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| (h.to_string(), Some(Colour::Bold))).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out
}

/// One frame of the live view, a line per dataset, then the notes (an error in red).
pub fn screen<Tz: chrono::TimeZone>(
    daemon: &DaemonInfo,
    datasets: &[DatasetStatus],
    now: DateTime<Utc>,
    tz: &Tz,
    colour: bool,
) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let mut lines = vec![format!(
        "{}; updated {}",
        daemon_line(daemon),
        now.with_timezone(tz).format("%H:%M:%S")
    )];
    lines.push(String::new());
    if datasets.is_empty() {
        lines.push("no datasets configured".into());
    } else {
        let header =
            ["DATASET", "STATE", "PROGRESS", "RATE", "ETA", "LAST RUN", "LAST SUCCESS", "NEXT RUN"];
        let rows: Vec<Vec<Cell>> = datasets.iter().map(|d| row(d, daemon, now)).collect();
        lines.extend(table(&header, &rows, colour));
        let notes: Vec<String> = verify_note(daemon, now)
            .into_iter()
            .chain(drill_notes(daemon, now))
            .chain(datasets.iter().flat_map(|d| dataset_notes(d, now)))
            .map(|n| paint(&n.text, n.error.then_some(Colour::Red), colour))
            .collect();
        if !notes.is_empty() {
            lines.push(String::new());
            lines.extend(notes);
        }
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// How the frames go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Redrawn in place, in colour or not.
    Terminal { colour: bool },
    /// One frame after the other, plain.
    Plain,
    /// One status reply a line.
    Json,
}

impl Output {
    /// Colour and redrawing only on a terminal; `NO_COLOR` turns the colour off.
    pub fn detect(json: bool) -> Output {
        Output::choose(json, std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR"))
    }

    /// The choice of [`Output::detect`]: `NO_COLOR` set to anything but the empty string means
    /// no colour (no-color.org).
    fn choose(json: bool, terminal: bool, no_color: Option<std::ffi::OsString>) -> Output {
        match (json, terminal) {
            (true, _) => Output::Json,
            (false, true) => Output::Terminal { colour: no_color.is_none_or(|v| v.is_empty()) },
            (false, false) => Output::Plain,
        }
    }
}

/// Clears the screen from the cursor to its end; `ESC[K` at each line's end clears the rest of
/// a longer line of the previous frame.
const CLEAR_BELOW: &str = "\x1b[J";
const HOME: &str = "\x1b[H";
const CLEAR_SCREEN: &str = "\x1b[2J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// The terminal's columns and rows, when stdout is one that knows its size.
fn terminal_size() -> Option<(usize, usize)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((usize::from(w.ws_col), usize::from(w.ws_row)))
}

/// `line` cut after `width` visible characters; its SGR sequences are kept (a colour's reset
/// after the cut too).
fn clip(line: &str, width: usize) -> String {
    let mut out = String::with_capacity(line.len());
    let mut shown = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            for c in chars.by_ref() {
                out.push(c);
                if c == 'm' {
                    break;
                }
            }
        } else if shown < width {
            out.push(c);
            shown += 1;
        }
    }
    out
}

/// A frame drawn over the last one on a terminal of `size` (columns, rows; `None`: unknown):
/// from the top left, each line cut to the width (a wrapped line would push the frame off
/// the screen) and cleared to its end, as many lines as fit above the footer (then how many
/// more there are), and the rest of the screen cleared. Nothing is written after the footer,
/// so the screen never scrolls.
pub fn fit(frame: &str, footer: &str, size: Option<(usize, usize)>) -> String {
    let (cols, rows) = size.unwrap_or((usize::MAX, usize::MAX));
    // The last column stays empty: a character there leaves the cursor waiting to wrap.
    let width = cols.saturating_sub(1);
    let mut lines: Vec<&str> = frame.lines().collect();
    // Room for the blank line and the footer below.
    let room = rows.saturating_sub(2);
    let mut more = None;
    if lines.len() > room {
        let keep = room.saturating_sub(1);
        more = Some(format!("({} more lines: a taller terminal shows them)", lines.len() - keep));
        lines.truncate(keep);
    }
    let mut out = String::from(HOME);
    for l in lines.into_iter().chain(more.as_deref()) {
        out.push_str(&clip(l, width));
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[K\n");
    out.push_str(&clip(footer, width));
    out.push_str("\x1b[K");
    out.push_str(CLEAR_BELOW);
    out
}

/// Asks for the status every `every` and shows it until Ctrl-C (exit 0). A lost daemon is
/// shown in the frame and asked again at the next tick; a refusal (permission, protocol) ends
/// the view with its exit code.
pub async fn run(
    client: Client,
    socket: &std::path::Path,
    dataset: Option<String>,
    every: Duration,
    output: Output,
) -> Result<u8, CliError> {
    // Taken before the first frame: from here on Ctrl-C ends the loop (and shows the cursor
    // again) instead of killing the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot watch for Ctrl-C: {e}")))?;
    let mut stdout = std::io::stdout();
    if let Output::Terminal { .. } = output {
        let _ = write!(stdout, "{HIDE_CURSOR}{CLEAR_SCREEN}");
    }
    let mut client = Some(client);
    let request = Request::Status { dataset };
    let code = loop {
        let ask = async {
            let c = match client.take() {
                Some(c) => c,
                None => Client::connect(socket).await?,
            };
            let c = client.insert(c);
            c.call(&request).await
        };
        let reply = tokio::select! {
            _ = interrupt.recv() => break Ok(exit::OK),
            r = ask => r,
        };
        let frame = match reply {
            Ok(Response::Status { daemon, datasets }) => {
                let now = Utc::now();
                match output {
                    Output::Json => {
                        let r = Response::Status { daemon, datasets };
                        serde_json::to_string(&r).map_err(|e| CliError::Failed(e.to_string()))?
                            + "\n"
                    }
                    Output::Terminal { colour } => {
                        screen(&daemon, &datasets, now, &chrono::Local, colour)
                    }
                    Output::Plain => screen(&daemon, &datasets, now, &chrono::Local, false),
                }
            }
            Ok(other) => break Err(unexpected(&request, &other)),
            Err(CliError::Unreachable(m)) => {
                client = None;
                if output == Output::Json {
                    eprintln!("zibctl: {m}; trying again");
                    String::new()
                } else {
                    format!("zibd is not reachable: {m}\n")
                }
            }
            Err(e) => break Err(e),
        };
        let shown = match output {
            Output::Terminal { .. } => {
                let footer = format!("every {}; Ctrl-C to quit", human_duration(every.as_secs()));
                fit(&frame, &footer, terminal_size())
            }
            Output::Plain => format!("{frame}\n"),
            Output::Json => frame,
        };
        if stdout.write_all(shown.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            // stdout closed (e.g. `| head`): nothing more to show.
            break Ok(exit::OK);
        }
        tokio::select! {
            _ = interrupt.recv() => break Ok(exit::OK),
            () = tokio::time::sleep(every) => {}
        }
    };
    if let Output::Terminal { .. } = output {
        // The shell's prompt goes below the footer.
        let _ = write!(stdout, "\n{SHOW_CURSOR}");
        let _ = stdout.flush();
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{NOW, daemon, idle, run as running, t};
    use zib_protocol::{LastError, LastSuccess, RunNote};

    const DAY: i64 = 86_400;

    /// A daily dataset backed up 20 hours ago, next run in 23 hours, stale after 2 days.
    fn dataset(name: &str) -> DatasetStatus {
        DatasetStatus {
            last_success: Some(LastSuccess {
                at: t(NOW - 20 * 3600),
                snapshot: Some(format!("{name}@zib-20251231T080000Z")),
                bytes: 123 * 1024 * 1024,
            }),
            next_run: Some(t(NOW + 23 * 3600)),
            chain_length: 3,
            stale_after_secs: Some(2 * DAY as u64),
            ..idle(name)
        }
    }

    /// One sample per job state, named as its golden file.
    fn states() -> Vec<(&'static str, DatasetStatus)> {
        vec![
            (
                "running",
                DatasetStatus {
                    state: JobState::Uploading,
                    progress: Some(running()),
                    ..dataset("tank/photos")
                },
            ),
            ("queued", DatasetStatus { state: JobState::Queued, ..dataset("tank/photos") }),
            (
                "paused",
                DatasetStatus {
                    state: JobState::Paused,
                    paused: true,
                    next_run: None,
                    ..dataset("tank/photos")
                },
            ),
            (
                "failed",
                DatasetStatus {
                    state: JobState::Failed,
                    last_error: Some(LastError {
                        at: t(NOW - 300),
                        message: "S3 503 SlowDown after 8 attempts".into(),
                    }),
                    ..dataset("tank/photos")
                },
            ),
            (
                "skipped",
                DatasetStatus {
                    last_note: Some(RunNote {
                        at: t(NOW - 3600),
                        message: "skipped (no change): 0 bytes written since tank/photos@zib-20251231T080000Z, less than min_change (65536 bytes); no snapshot taken, nothing uploaded".into(),
                    }),
                    // An error before the skip is over.
                    last_error: Some(LastError { at: t(NOW - 7200), message: "old".into() }),
                    ..dataset("tank/photos")
                },
            ),
            (
                "never-run",
                DatasetStatus {
                    last_success: None,
                    chain_length: 0,
                    next_run: Some(t(NOW + 3600)),
                    ..dataset("tank/new")
                },
            ),
            (
                "stale",
                DatasetStatus {
                    state: JobState::Failed,
                    last_success: Some(LastSuccess {
                        at: t(NOW - 3 * DAY),
                        snapshot: None,
                        bytes: 4096,
                    }),
                    last_error: Some(LastError {
                        at: t(NOW - 3600),
                        message: "zfs send failed: exit 1".into(),
                    }),
                    missed_ticks: 1,
                    ..dataset("tank/photos")
                },
            ),
        ]
    }

    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    /// Compares `actual` with the golden file `name`; `ZIB_BLESS_GOLDEN=1` writes it first.
    fn golden(name: &str, actual: &str) {
        let path = golden_dir().join(name);
        if std::env::var_os("ZIB_BLESS_GOLDEN").is_some() {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("missing golden file {} ({e}); write it with ZIB_BLESS_GOLDEN=1", path.display())
        });
        assert_eq!(actual, expected, "{name} differs from its golden file:\n{actual}");
    }

    fn strip_sgr(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("\x1b[") {
            out.push_str(&rest[..i]);
            let tail = &rest[i + 2..];
            let end = tail.find('m').expect("an SGR sequence ends with m");
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn each_job_state_renders_as_its_golden_file() {
        let cet = chrono::FixedOffset::east_opt(3600).unwrap();
        for (name, d) in states() {
            let plain = screen(&daemon(), std::slice::from_ref(&d), t(NOW), &cet, false);
            assert!(!plain.contains('\x1b'), "{name}: no escape codes without colour");
            golden(&format!("watch-{name}.txt"), &plain);
            let coloured = screen(&daemon(), &[d], t(NOW), &cet, true);
            golden(&format!("watch-{name}.color.txt"), &coloured);
            assert_eq!(strip_sgr(&coloured), plain, "{name}: colour changes nothing but colour");
        }
    }

    #[test]
    fn every_golden_file_has_a_sample() {
        let names: Vec<String> = states()
            .iter()
            .flat_map(|(n, _)| [format!("watch-{n}.txt"), format!("watch-{n}.color.txt")])
            .collect();
        for e in std::fs::read_dir(golden_dir()).unwrap() {
            let f = e.unwrap().file_name().into_string().unwrap();
            assert!(names.contains(&f), "golden file {f} has no sample");
        }
    }

    #[test]
    fn the_states_are_told_apart() {
        let cet = chrono::FixedOffset::east_opt(3600).unwrap();
        let frame = |d: DatasetStatus, colour| screen(&daemon(), &[d], t(NOW), &cet, colour);
        let all: std::collections::BTreeMap<_, _> = states()
            .into_iter()
            .map(|(n, d)| (n, (frame(d.clone(), false), frame(d, true))))
            .collect();
        let row = |name: &str| all[name].0.lines().nth(3).unwrap().to_owned();
        assert!(
            row("running").contains("[###-------]  30% 3.0 GiB / 10.0 GiB"),
            "{}",
            row("running")
        );
        assert!(row("running").contains("50.0 MiB/s") && row("running").contains("2m 23s"));
        assert!(row("queued").contains("queued"));
        assert!(row("paused").contains("paused") && !row("paused").contains("in 23h"));
        assert!(row("failed").contains("failed 5m ago"), "{}", row("failed"));
        assert!(all["failed"].0.contains("tank/photos: failed 5m ago: S3 503 SlowDown"));
        assert!(row("skipped").contains("skipped (no change) 1h ago"), "{}", row("skipped"));
        assert!(!all["skipped"].0.contains("old"), "the error before the skip is over");
        assert!(row("never-run").contains("never run"), "{}", row("never-run"));
        assert!(!row("never-run").contains("stale"), "up 3h, stale after 2d: {}", row("never-run"));
        assert!(row("stale").contains("3d ago (stale)"), "{}", row("stale"));
        // Stale in red; a fresh success is not.
        assert!(all["stale"].1.contains("\x1b[31m3d ago (stale)\x1b[0m"), "{:?}", all["stale"].1);
        assert!(
            all["running"].1.contains("20h ago") && !all["running"].1.contains("\x1b[31m20h ago")
        );
        assert!(all["failed"].1.contains("\x1b[31mtank/photos: failed 5m ago"));
        // Never backed up is stale too once the daemon ran for its stale_after (up 3h here).
        let mut d = states().remove(5).1;
        d.stale_after_secs = Some(3600);
        assert!(frame(d.clone(), false).contains("never (stale)"));
        d.stale_after_secs = None;
        assert!(
            !frame(d, false).contains("stale"),
            "no stale_after (an older daemon): never stale"
        );
    }

    #[test]
    fn a_dataset_line_fits_120_columns() {
        let cet = chrono::FixedOffset::east_opt(3600).unwrap();
        for (name, d) in states() {
            let frame = screen(&daemon(), &[d], t(NOW), &cet, false);
            let line = frame.lines().nth(3).unwrap();
            assert!(line.chars().count() < 120, "{name}: {line}");
        }
    }

    #[test]
    fn bars_fill_by_the_estimate_and_stop_at_full() {
        let mut p = running();
        p.bytes_sent = 0;
        assert!(progress_bar(&p).starts_with("[----------]   0%"), "{}", progress_bar(&p));
        p.bytes_sent = 11 * 1024 * 1024 * 1024;
        assert!(progress_bar(&p).starts_with("[##########] 100%"), "{}", progress_bar(&p));
        p.bytes_total_estimate = None;
        assert_eq!(progress_bar(&p), "11.0 GiB sent");
    }

    #[test]
    fn a_frame_fits_the_terminal() {
        let frame = "\x1b[1mDATASET\x1b[0m  STATE\nabcdefghij\nthird\nfourth\n";
        // Wide and tall enough: every line, cleared to its end, the footer last.
        assert_eq!(
            fit(frame, "every 2s", Some((80, 24))),
            "\x1b[H\x1b[1mDATASET\x1b[0m  STATE\x1b[K\nabcdefghij\x1b[K\nthird\x1b[K\nfourth\x1b[K\n\x1b[K\nevery 2s\x1b[K\x1b[J"
        );
        assert_eq!(fit(frame, "f", None), fit(frame, "f", Some((usize::MAX, usize::MAX))));
        // 6 columns: 5 characters a line, the colour's reset kept.
        let narrow = fit(frame, "every 2s", Some((6, 24)));
        assert!(narrow.starts_with("\x1b[H\x1b[1mDATAS\x1b[0m\x1b[K\nabcde\x1b[K\n"), "{narrow:?}");
        assert!(narrow.ends_with("\nevery\x1b[K\x1b[J"), "{narrow:?}");
        // 5 rows: 2 lines, the count of the others, the blank line, the footer.
        let short = fit(frame, "f", Some((80, 5)));
        assert_eq!(short.matches('\n').count(), 4, "{short:?}");
        assert!(short.contains("abcdefghij\x1b[K\n(2 more lines: a taller terminal shows them)"));
        assert!(!short.contains("third"));
    }

    #[test]
    fn clipping_counts_visible_characters_only() {
        assert_eq!(clip("\x1b[31mred\x1b[0m and more", 5), "\x1b[31mred\x1b[0m a");
        assert_eq!(clip("ab", 5), "ab");
        assert_eq!(clip("abc", 0), "");
    }

    #[test]
    fn colour_only_on_a_terminal_and_not_with_no_color() {
        let set = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(Output::choose(false, true, None), Output::Terminal { colour: true });
        assert_eq!(Output::choose(false, true, set("1")), Output::Terminal { colour: false });
        assert_eq!(Output::choose(false, true, set("")), Output::Terminal { colour: true });
        assert_eq!(Output::choose(false, false, None), Output::Plain);
        assert_eq!(Output::choose(true, true, None), Output::Json);
        assert_eq!(Output::choose(true, false, set("1")), Output::Json);
    }

    #[test]
    fn no_datasets() {
        let out = screen(&daemon(), &[], t(NOW), &Utc, true);
        assert!(out.ends_with("\n\nno datasets configured\n"), "{out}");
    }
}
