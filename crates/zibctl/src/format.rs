//! Pure rendering of replies for people: sizes, durations, relative times, tables. No I/O; `now`
//! is always a parameter so everything here is unit-tested.

use chrono::{DateTime, Utc};
pub use zib_core::human::{human_bytes, human_duration, human_rate, percent};
use zib_protocol::{
    DaemonInfo, DatasetStatus, DrillTrigger, JobState, LastError, ProgressUpdate, RestoreJobStatus,
    RunProgress, VerifyTrigger,
};

/// `t` relative to `now`, coarsely: `in 3h`, `5m ago`, `in 30s`, `now` (seconds are shown only
/// under a minute, minutes only under a day).
pub fn relative_time(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    // Round to the nearest second so that "5 minutes ago" measured a moment later is not 4m 59s.
    let ms = t.signed_duration_since(now).num_milliseconds();
    let secs = (ms.unsigned_abs() + 500) / 1000;
    let coarse = if (60..3600).contains(&secs) { secs / 60 * 60 } else { secs };
    match secs {
        0 => "now".to_owned(),
        _ if ms > 0 => format!("in {}", human_duration(coarse)),
        _ => format!("{} ago", human_duration(coarse)),
    }
}

/// The next run for people: relative and in the local time `tz`, e.g. `in 17h (Thu 03:00)`;
/// the date instead of the weekday from 6 days on.
pub fn next_run_label<Tz: chrono::TimeZone>(t: DateTime<Utc>, now: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let local = t.with_timezone(tz);
    let when = if (t - now).num_days().abs() < 6 {
        local.format("%a %H:%M")
    } else {
        local.format("%Y-%m-%d %H:%M")
    };
    format!("{} ({when})", relative_time(t, now))
}

/// `3.0 GiB / 10.0 GiB (30%), chunk 4/10` (or `3.0 GiB sent, chunk 4` without estimates).
pub fn progress_summary(p: &RunProgress) -> String {
    let mut s = match p.bytes_total_estimate {
        Some(total) => format!(
            "{} / {} ({}%)",
            human_bytes(p.bytes_sent),
            human_bytes(total),
            percent(p.bytes_sent, total)
        ),
        None => format!("{} sent", human_bytes(p.bytes_sent)),
    };
    let current = p.chunks_done + 1;
    match p.chunks_total_estimate {
        Some(total) => s.push_str(&format!(", chunk {}/{}", current.min(total.max(1)), total)),
        None => s.push_str(&format!(", chunk {current}")),
    }
    s
}

/// The state as shown: `uploading`, or `uploading (pausing)` when a pause waits for a safe point.
pub fn state_label(state: JobState, paused: bool) -> String {
    if paused
        && state != JobState::Paused
        && state != JobState::Idle
        && state != JobState::Scheduled
    {
        format!("{state} (pausing)")
    } else if paused {
        JobState::Paused.to_string()
    } else {
        state.to_string()
    }
}

/// Lays out rows under a header, columns separated by two spaces, the last column not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).take(cols).collect());
    }
    out
}

pub const DASH: &str = "-";

/// The daemon line above the status table.
pub fn daemon_line(d: &DaemonInfo) -> String {
    let jobs = match d.jobs_max {
        Some(max) => format!("{} of {max} jobs running", d.jobs_running),
        None => format!("{} jobs running", d.jobs_running),
    };
    let mut s = format!(
        "zibd {} (protocol {}), up {}, {jobs}",
        d.version,
        d.protocol_version,
        human_duration(d.uptime_secs)
    );
    if d.restores_running > 0 {
        s.push_str(&format!(", {} restores running", d.restores_running));
    }
    s
}

/// The line of the daemon's last verification of the bucket (`daemon.verify_schedule` or
/// `zibctl verify`), and of the next one when scheduled; an error when it was not clean.
pub fn verify_note(d: &DaemonInfo, now: DateTime<Utc>) -> Option<Note> {
    let next = d.next_verify.map(|t| format!("next {}", relative_time(t, now)));
    let Some(v) = &d.last_verify else {
        return next.map(|n| Note { text: format!("verify: never run; {n}"), error: false });
    };
    let how = match v.trigger {
        VerifyTrigger::Schedule => "scheduled",
        VerifyTrigger::Request => "asked for",
    };
    let mut text = format!("verify: {} ({how}, {})", v.line(), relative_time(v.at, now));
    if let Some(n) = next {
        text.push_str(&format!("; {n}"));
    }
    if !v.clean {
        text.push_str("; see `zibctl verify`");
    }
    Some(Note { text, error: !v.clean })
}

/// A line per dataset with a restore drill: the last (red when it failed), the next scheduled
/// one, or that one is running.
pub fn drill_notes(d: &DaemonInfo, now: DateTime<Utc>) -> Vec<Note> {
    d.drills
        .iter()
        .map(|s| {
            let mut text = match &s.last {
                Some(l) => {
                    let how = match l.trigger {
                        DrillTrigger::Schedule => "scheduled",
                        DrillTrigger::Request => "asked for",
                    };
                    format!(
                        "{}: drill {} ({how}, {})",
                        s.dataset,
                        l.line(),
                        relative_time(l.at, now)
                    )
                }
                None => format!("{}: drill: never run", s.dataset),
            };
            if s.running {
                text.push_str("; a drill is running");
            }
            if let Some(t) = s.next {
                text.push_str(&format!("; next {}", relative_time(t, now)));
            }
            let failed = s.last.as_ref().is_some_and(|l| !l.passed);
            if failed {
                text.push_str(&format!("; see `zibctl restore drill {}`", s.dataset));
            }
            Note { text, error: failed }
        })
        .collect()
}

/// The last error of a dataset while it still holds: no later run succeeded or was skipped
/// (the daemon keeps the error in its reply; a later success or note says it is over).
pub fn current_error(d: &DatasetStatus) -> Option<&LastError> {
    let e = d.last_error.as_ref()?;
    let later_success = d.last_success.as_ref().is_some_and(|s| s.at > e.at);
    let later_run = d.last_note.as_ref().is_some_and(|n| n.at > e.at);
    (!later_success && !later_run).then_some(e)
}

/// The `zibctl status` table, then one note line per dataset with an error, a note or missed
/// ticks; next runs are shown in the time zone `tz` too.
pub fn status_table<Tz: chrono::TimeZone>(
    daemon: &DaemonInfo,
    datasets: &[DatasetStatus],
    now: DateTime<Utc>,
    tz: &Tz,
) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let header =
        ["DATASET", "STATE", "PROGRESS", "RATE", "ETA", "LAST SUCCESS", "NEXT RUN", "CHAIN"];
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            let (progress, rate, eta) = match &d.progress {
                Some(p) => (
                    progress_summary(p),
                    p.rate_bytes_per_sec.map(human_rate).unwrap_or_else(|| DASH.into()),
                    p.eta_secs.map(human_duration).unwrap_or_else(|| DASH.into()),
                ),
                None => (DASH.into(), DASH.into(), DASH.into()),
            };
            let last = match &d.last_success {
                Some(s) => format!("{} ({})", relative_time(s.at, now), human_bytes(s.bytes)),
                None => "never".into(),
            };
            let next = match (d.next_run, d.paused) {
                (_, true) => "paused".into(),
                (Some(t), false) => next_run_label(t, now, tz),
                (None, false) => DASH.into(),
            };
            vec![
                d.dataset.clone(),
                state_label(d.state, d.paused),
                progress,
                rate,
                eta,
                last,
                next,
                d.chain_length.to_string(),
            ]
        })
        .collect();
    let mut out = daemon_line(daemon);
    out.push('\n');
    for n in verify_note(daemon, now).into_iter().chain(drill_notes(daemon, now)) {
        out.push_str(&n.text);
        out.push('\n');
    }
    if datasets.is_empty() {
        out.push_str("no datasets configured\n");
        return out;
    }
    out.push('\n');
    out.push_str(&render_table(&header, &rows));
    let notes: String = datasets
        .iter()
        .flat_map(|d| dataset_notes(d, now))
        .map(|n| format!("{}\n", n.text))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}

/// A line under the status table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    /// The dataset's current error (the live view shows it in red).
    pub error: bool,
}

/// The note lines of one dataset: its current error, the note of its last run unless a
/// failure came after it, and the scheduled runs it missed.
pub fn dataset_notes(d: &DatasetStatus, now: DateTime<Utc>) -> Vec<Note> {
    let mut notes = Vec::new();
    if let Some(e) = current_error(d) {
        let text = format!("{}: failed {}: {}", d.dataset, relative_time(e.at, now), e.message);
        notes.push(Note { text, error: true });
    }
    if let Some(n) = &d.last_note {
        let newer_error = d.last_error.as_ref().is_some_and(|e| e.at > n.at);
        if !newer_error {
            let text = format!("{}: {} ({})", d.dataset, n.message, relative_time(n.at, now));
            notes.push(Note { text, error: false });
        }
    }
    if d.missed_ticks > 0 {
        let s = if d.missed_ticks == 1 { "" } else { "s" };
        let text = format!(
            "{}: {} scheduled run{s} skipped while a run was still going",
            d.dataset, d.missed_ticks
        );
        notes.push(Note { text, error: false });
    }
    notes
}

/// One line per progress frame of `trigger --wait`.
pub fn progress_line(u: &ProgressUpdate) -> String {
    let mut s = format!("{}: {}", u.dataset, u.state);
    if let Some(p) = &u.progress {
        if !p.snapshot.is_empty() {
            s.push_str(&format!(" {}", p.snapshot));
        }
        s.push_str(&format!(", {}", progress_summary(p)));
        if let Some(rate) = p.rate_bytes_per_sec {
            s.push_str(&format!(", {}", human_rate(rate)));
        }
        if let Some(eta) = p.eta_secs {
            s.push_str(&format!(", ETA {}", human_duration(eta)));
        }
    }
    if let Some(m) = &u.message {
        s.push_str(&format!(" ({m})"));
    }
    s
}

/// The `zibctl restore status` table.
pub fn restore_table(jobs: &[RestoreJobStatus], now: DateTime<Utc>) -> String {
    if jobs.is_empty() {
        return "no restore jobs\n".into();
    }
    let header = ["ID", "DATASET", "TO", "STATE", "THAWED", "RECEIVED", "STARTED", "NOTE"];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let thawed = if j.objects_total == 0 {
                DASH.into()
            } else {
                format!("{}/{}", j.objects_ready, j.objects_total)
            };
            let received = match j.bytes_total {
                Some(total) if total > 0 => format!(
                    "{} / {} ({}%)",
                    human_bytes(j.bytes_received),
                    human_bytes(total),
                    percent(j.bytes_received, total)
                ),
                _ => human_bytes(j.bytes_received),
            };
            let note = if let Some(e) = &j.error {
                e.clone()
            } else if let Some(f) = j.finished_at {
                format!("finished {}", relative_time(f, now))
            } else if let Some(t) = j.thaw_expected_at {
                format!("ready {}", expected(t, now))
            } else {
                String::new()
            };
            vec![
                j.id.clone(),
                match &j.snapshot {
                    Some(s) => format!("{}@{}", j.dataset, s.rsplit('@').next().unwrap_or(s)),
                    None => j.dataset.clone(),
                },
                j.to.clone(),
                j.state.as_str().into(),
                thawed,
                received,
                relative_time(j.started_at, now),
                note,
            ]
        })
        .collect();
    render_table(&header, &rows)
}

/// `in 3h` for a future expectation, `expected 2h ago` once it is overdue.
fn expected(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t >= now { relative_time(t, now) } else { format!("expected {}", relative_time(t, now)) }
}

/// The samples here are also those of `watch`'s tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use zib_protocol::{LastSuccess, RestoreState, RestoreTier, RunNote};

    pub(crate) fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    /// Thursday 2026-01-01 04:00 UTC.
    pub(crate) const NOW: i64 = 1_767_240_000;

    #[test]
    fn rates() {
        assert_eq!(human_rate(50 * 1024 * 1024), "50.0 MiB/s");
    }

    #[test]
    fn the_drill_lines_say_when_and_what_and_are_red_when_failed() {
        use zib_protocol::{DrillStatus, DrillSummary};
        let mut d = daemon();
        assert!(drill_notes(&d, t(NOW)).is_empty());
        let passed = DrillSummary {
            passed: true,
            snapshot: Some("zib-1".into()),
            seconds: 4.2,
            bytes: 1024 * 1024,
            chunks: 3,
            reason: None,
            ..DrillSummary::not_run(String::new(), t(NOW - 7200), DrillTrigger::Schedule)
        };
        let failed = DrillSummary {
            passed: false,
            reason: Some("the restore failed: chunk k is corrupt".into()),
            trigger: DrillTrigger::Request,
            ..passed.clone()
        };
        d.drills = vec![
            DrillStatus {
                dataset: "tank/a".into(),
                last: Some(passed),
                next: Some(t(NOW + 3 * 3600)),
                running: false,
            },
            DrillStatus { dataset: "tank/b".into(), last: Some(failed), next: None, running: true },
            DrillStatus {
                dataset: "tank/c".into(),
                last: None,
                next: Some(t(NOW + 60)),
                running: false,
            },
        ];
        let n = drill_notes(&d, t(NOW));
        assert_eq!(
            n[0],
            Note {
                text: "tank/a: drill passed@zib-1: 1.0 MiB, 3 chunks in 4.2 s (scheduled, 2h ago); next in 3h".into(),
                error: false
            }
        );
        assert_eq!(
            n[1].text,
            "tank/b: drill FAILED@zib-1: the restore failed: chunk k is corrupt (asked for, 2h ago); a drill is running; see `zibctl restore drill tank/b`"
        );
        assert!(n[1].error);
        assert_eq!(
            n[2],
            Note { text: "tank/c: drill: never run; next in 1m".into(), error: false }
        );
        // They follow the verify line above the table.
        let table = status_table(&d, &[], t(NOW), &chrono::Utc);
        assert!(table.contains("\ntank/a: drill passed@zib-1"), "{table}");
    }

    #[test]
    fn the_verify_line_says_when_and_what_and_is_red_when_not_clean() {
        use zib_protocol::VerifySummary;
        let mut d = daemon();
        assert_eq!(verify_note(&d, t(NOW)), None);
        d.next_verify = Some(t(NOW + 3 * 3600));
        assert_eq!(verify_note(&d, t(NOW)).unwrap().text, "verify: never run; next in 3h");
        let mut v =
            VerifySummary::failed("x".into(), t(NOW - 7200), VerifyTrigger::Schedule, false);
        v.failure = None;
        v.clean = true;
        v.datasets = 2;
        v.chunks = 40;
        d.last_verify = Some(Box::new(v.clone()));
        let n = verify_note(&d, t(NOW)).unwrap();
        assert_eq!(n.text, "verify: clean: 2 datasets, 40 chunks (scheduled, 2h ago); next in 3h");
        assert!(!n.error);
        v.clean = false;
        v.errors = 1;
        d.last_verify = Some(Box::new(v));
        let n = verify_note(&d, t(NOW)).unwrap();
        assert!(n.error);
        assert!(n.text.starts_with("verify: 1 error: 2 datasets"), "{}", n.text);
        assert!(n.text.ends_with("see `zibctl verify`"), "{}", n.text);
    }

    #[test]
    fn relative_times() {
        let now = t(NOW);
        assert_eq!(relative_time(t(NOW + 3 * 3600), now), "in 3h");
        assert_eq!(relative_time(t(NOW - 300), now), "5m ago");
        assert_eq!(relative_time(now, now), "now");
        assert_eq!(relative_time(t(NOW - 3 * 86_400), now), "3d ago");
        assert_eq!(relative_time(t(NOW + 30), now), "in 30s");
        assert_eq!(relative_time(t(NOW - 299), now), "4m ago");
        assert_eq!(relative_time(now - chrono::Duration::milliseconds(299_700), now), "5m ago");
        assert_eq!(relative_time(now + chrono::Duration::milliseconds(400), now), "now");
        assert_eq!(relative_time(t(NOW + 3 * 3600 + 20 * 60 + 5), now), "in 3h 20m");
    }

    pub(crate) fn run() -> RunProgress {
        RunProgress {
            snapshot: "tank/photos@zib-20260101T030000Z".into(),
            incremental: true,
            started_at: Some(t(NOW - 600)),
            bytes_sent: 3 * 1024 * 1024 * 1024,
            bytes_total_estimate: Some(10 * 1024 * 1024 * 1024),
            chunks_done: 3,
            chunks_total_estimate: Some(10),
            rate_bytes_per_sec: Some(50 * 1024 * 1024),
            eta_secs: Some(143),
        }
    }

    #[test]
    fn progress_summaries() {
        assert_eq!(progress_summary(&run()), "3.0 GiB / 10.0 GiB (30%), chunk 4/10");
        let mut p = run();
        p.bytes_total_estimate = None;
        p.chunks_total_estimate = None;
        assert_eq!(progress_summary(&p), "3.0 GiB sent, chunk 4");
        // Estimates can be exceeded: never over 100% or past the last chunk.
        let mut p = run();
        p.bytes_sent = 11 * 1024 * 1024 * 1024;
        p.chunks_done = 10;
        assert_eq!(progress_summary(&p), "11.0 GiB / 10.0 GiB (100%), chunk 10/10");
    }

    #[test]
    fn table_layout() {
        let t = render_table(
            &["A", "LONG HEADER", "C"],
            &[vec!["xxxx".into(), "y".into(), "z".into()], vec!["".into(), "".into(), "".into()]],
        );
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y            z\n\n");
    }

    /// Up 3 hours, one of two jobs running.
    pub(crate) fn daemon() -> DaemonInfo {
        DaemonInfo {
            version: "0.1.0".into(),
            protocol_version: 1,
            started_at: t(NOW - 10_800),
            uptime_secs: 10_800,
            jobs_running: 1,
            jobs_max: Some(2),
            restores_running: 0,
            last_verify: None,
            next_verify: None,
            drills: vec![],
        }
    }

    /// Never backed up, next run in 3 hours.
    pub(crate) fn idle(name: &str) -> DatasetStatus {
        DatasetStatus {
            dataset: name.into(),
            state: JobState::Scheduled,
            paused: false,
            schedule: Some("0 3 * * *".into()),
            progress: None,
            last_success: None,
            last_error: None,
            next_run: Some(t(NOW + 3 * 3600)),
            chain_length: 0,
            missed_ticks: 0,
            last_note: None,
            stale_after_secs: None,
        }
    }

    #[test]
    fn status_table_rendering() {
        let uploading = DatasetStatus {
            state: JobState::Uploading,
            progress: Some(run()),
            last_success: Some(LastSuccess {
                at: t(NOW - 86_400),
                snapshot: None,
                bytes: 123 * 1024 * 1024,
            }),
            last_error: Some(LastError {
                at: t(NOW - 300),
                message: "S3 503 SlowDown after 8 attempts".into(),
            }),
            next_run: Some(t(NOW + 17 * 3600)),
            chain_length: 4,
            missed_ticks: 2,
            ..idle("tank/photos")
        };
        let paused = DatasetStatus {
            state: JobState::Paused,
            paused: true,
            next_run: None,
            ..idle("tank/docs")
        };
        let fixed_error = DatasetStatus {
            last_success: Some(LastSuccess { at: t(NOW - 60), snapshot: None, bytes: 0 }),
            last_error: Some(LastError { at: t(NOW - 7200), message: "old".into() }),
            ..idle("tank/vm")
        };
        let skipped_after_error = DatasetStatus {
            last_success: Some(LastSuccess { at: t(NOW - 86_400), snapshot: None, bytes: 0 }),
            last_error: Some(LastError { at: t(NOW - 7200), message: "old".into() }),
            last_note: Some(RunNote { at: t(NOW - 3600), message: "skipped (no change)".into() }),
            chain_length: 2,
            ..idle("tank/idle")
        };
        let out = status_table(
            &daemon(),
            &[uploading, paused, fixed_error, skipped_after_error],
            t(NOW),
            &Utc,
        );
        let expected = "\
zibd 0.1.0 (protocol 1), up 3h, 1 of 2 jobs running

DATASET      STATE      PROGRESS                              RATE        ETA     LAST SUCCESS        NEXT RUN            CHAIN
tank/photos  uploading  3.0 GiB / 10.0 GiB (30%), chunk 4/10  50.0 MiB/s  2m 23s  1d ago (123.0 MiB)  in 17h (Thu 21:00)  4
tank/docs    paused     -                                     -           -       never               paused              0
tank/vm      scheduled  -                                     -           -       1m ago (0 B)        in 3h (Thu 07:00)   0
tank/idle    scheduled  -                                     -           -       1d ago (0 B)        in 3h (Thu 07:00)   2

tank/photos: failed 5m ago: S3 503 SlowDown after 8 attempts
tank/photos: 2 scheduled runs skipped while a run was still going
tank/idle: skipped (no change) (1h ago)
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn next_runs_show_local_time_too() {
        let now = t(NOW); // Thursday 2026-01-01 04:00 UTC
        assert_eq!(next_run_label(t(NOW + 3600), now, &Utc), "in 1h (Thu 05:00)");
        let cet = chrono::FixedOffset::east_opt(3600).unwrap();
        assert_eq!(next_run_label(t(NOW + 23 * 3600), now, &cet), "in 23h (Fri 04:00)");
        assert_eq!(next_run_label(t(NOW + 10 * 86_400), now, &cet), "in 10d (2026-01-11 05:00)");
    }

    #[test]
    fn status_table_empty_and_pausing() {
        assert_eq!(
            status_table(&daemon(), &[], t(NOW), &Utc),
            "zibd 0.1.0 (protocol 1), up 3h, 1 of 2 jobs running\nno datasets configured\n"
        );
        assert_eq!(state_label(JobState::Uploading, true), "uploading (pausing)");
        assert_eq!(state_label(JobState::Scheduled, true), "paused");
        assert_eq!(state_label(JobState::Failed, false), "failed");
        assert_eq!(state_label(JobState::Unknown, false), "unknown");
    }

    #[test]
    fn progress_lines() {
        let u = ProgressUpdate {
            dataset: "tank/photos".into(),
            state: JobState::Uploading,
            progress: Some(run()),
            message: None,
        };
        assert_eq!(
            progress_line(&u),
            "tank/photos: uploading tank/photos@zib-20260101T030000Z, 3.0 GiB / 10.0 GiB (30%), chunk 4/10, 50.0 MiB/s, ETA 2m 23s"
        );
        let mut early = u.clone();
        early.progress.as_mut().unwrap().snapshot = String::new();
        assert!(
            progress_line(&early).starts_with("tank/photos: uploading, 3.0 GiB"),
            "{}",
            progress_line(&early)
        );
        let q = ProgressUpdate {
            dataset: "tank/photos".into(),
            state: JobState::Queued,
            progress: None,
            message: Some("waiting for a job slot".into()),
        };
        assert_eq!(progress_line(&q), "tank/photos: queued (waiting for a job slot)");
    }

    #[test]
    fn restore_table_rendering() {
        let job = RestoreJobStatus {
            id: "r-1".into(),
            dataset: "tank/photos".into(),
            snapshot: Some("zib-20260101T030000Z".into()),
            to: "tank/restored".into(),
            tier: Some(RestoreTier::Bulk),
            state: RestoreState::Thawing,
            started_at: t(NOW - 3600),
            objects_total: 12,
            objects_ready: 5,
            bytes_received: 0,
            bytes_total: Some(10 * 1024 * 1024 * 1024),
            thaw_expected_at: Some(t(NOW + 47 * 3600)),
            finished_at: None,
            error: None,
        };
        let failed = RestoreJobStatus {
            id: "r-2".into(),
            snapshot: None,
            state: RestoreState::Failed,
            objects_total: 0,
            bytes_total: None,
            error: Some("zfs receive failed".into()),
            ..job.clone()
        };
        let out = restore_table(&[job, failed], t(NOW));
        let expected = "\
ID   DATASET                           TO             STATE    THAWED  RECEIVED             STARTED  NOTE
r-1  tank/photos@zib-20260101T030000Z  tank/restored  thawing  5/12    0 B / 10.0 GiB (0%)  1h ago   ready in 1d 23h
r-2  tank/photos                       tank/restored  failed   -       0 B                  1h ago   zfs receive failed
";
        assert_eq!(out, expected, "\n{out}");
        assert_eq!(restore_table(&[], t(NOW)), "no restore jobs\n");
    }
}
