//! The daemon's metrics in the Prometheus text exposition format (0.0.4), the same text for
//! the `metrics_listen` endpoint and the node exporter's textfile collector. A pure function
//! of a snapshot the daemon takes, so every name, label and value is unit-tested here.
//!
//! Names follow the Prometheus conventions: `zib_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` only on counters, `_timestamp_seconds` for points in time (Unix seconds), and one
//! series per possible value with 1 on the current one for states (`zib_dataset_state`).

use std::fmt::Write;

use chrono::{DateTime, Utc};

/// What a dataset's job is doing, as far as metrics tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetActivity {
    /// No run, no schedule (no next tick).
    Idle,
    /// Waiting for its next tick.
    Scheduled,
    /// Waiting for a job slot.
    Queued,
    /// A backup is running (or stopping at its next safe point).
    Running,
    Paused,
    /// Idle, and its last run failed.
    Failed,
}

impl DatasetActivity {
    pub const ALL: [DatasetActivity; 6] = [
        DatasetActivity::Idle,
        DatasetActivity::Scheduled,
        DatasetActivity::Queued,
        DatasetActivity::Running,
        DatasetActivity::Paused,
        DatasetActivity::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetActivity::Idle => "idle",
            DatasetActivity::Scheduled => "scheduled",
            DatasetActivity::Queued => "queued",
            DatasetActivity::Running => "running",
            DatasetActivity::Paused => "paused",
            DatasetActivity::Failed => "failed",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// Committed a backup.
    Success,
    /// Found too little change and took no snapshot (a success: the data is as safe as before).
    Skipped,
    Failure,
}

/// One dataset at the time of the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetMetrics {
    pub dataset: String,
    pub activity: DatasetActivity,
    pub last_success_at: Option<DateTime<Utc>>,
    /// The end of the last run that was not stopped on request, and how it ended.
    pub last_attempt: Option<(DateTime<Utc>, AttemptResult)>,
    /// Stream bytes of the last committed backup.
    pub last_backup_bytes: Option<u64>,
    /// Objects of the last committed backup (chunks and its manifest), when known (a backup
    /// committed by this daemon run).
    pub last_backup_objects: Option<u64>,
    /// Backups in the current chain, its full included (0 before the first).
    pub chain_length: u32,
    /// Since the daemon started: bytes and objects PUT (chunks and manifests), failed runs.
    pub uploaded_bytes: u64,
    pub puts: u64,
    pub failures: u64,
    /// The next scheduled run (none while paused).
    pub next_run: Option<DateTime<Utc>>,
}

/// One restore job the daemon knows.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreMetrics {
    pub id: String,
    /// `planning`, `thawing`, `receiving`, `done`, `failed`, `cancelled`.
    pub state: &'static str,
    pub objects_total: u64,
    pub objects_ready: u64,
    pub bytes_received: u64,
    pub bytes_total: Option<u64>,
}

/// The restore states, each with its `zib_restore_jobs` series.
pub const RESTORE_STATES: [&str; 6] =
    ["planning", "thawing", "receiving", "done", "failed", "cancelled"];

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub now: DateTime<Utc>,
    pub version: String,
    pub protocol_version: u32,
    pub started_at: DateTime<Utc>,
    pub jobs_running: u32,
    pub jobs_max: u32,
    pub datasets: Vec<DatasetMetrics>,
    pub restores: Vec<RestoreMetrics>,
    /// The last whole-prefix verification, if any.
    pub verify: Option<crate::verify_summary::VerifySummary>,
    /// The last restore drill of each dataset that had one, by dataset name.
    pub drills: Vec<(String, crate::drill_summary::DrillSummary)>,
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition text of `m`: every family with its HELP and TYPE, families in a fixed order,
/// series sorted as given (datasets in config order). A series with no value (a dataset never
/// backed up has no last success) is left out rather than shown as 0.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = Out::default();
    out.family("zib_daemon_info", "gauge", "The running zibd: its version and protocol version.");
    out.series(
        "zib_daemon_info",
        &[("version", &m.version), ("protocol_version", &m.protocol_version.to_string())],
        1.0,
    );
    out.single(
        "zib_daemon_start_time_seconds",
        "gauge",
        "When zibd started, in Unix seconds.",
        secs(m.started_at),
    );
    out.single("zib_jobs_running", "gauge", "Backups running now.", m.jobs_running as f64);
    out.single(
        "zib_jobs_max",
        "gauge",
        "Backups that may run at once (daemon.max_concurrent_jobs).",
        m.jobs_max as f64,
    );

    let per_dataset = |out: &mut Out,
                       name: &str,
                       kind: &str,
                       help: &str,
                       value: &dyn Fn(&DatasetMetrics) -> Option<f64>| {
        out.family(name, kind, help);
        for d in &m.datasets {
            if let Some(v) = value(d) {
                out.series(name, &[("dataset", &d.dataset)], v);
            }
        }
    };
    per_dataset(
        &mut out,
        "zib_dataset_last_success_timestamp_seconds",
        "gauge",
        "When the dataset's last backup was committed (or a run found nothing to back up), in Unix seconds.",
        &|d| d.last_success_at.map(secs),
    );
    per_dataset(
        &mut out,
        "zib_dataset_last_attempt_timestamp_seconds",
        "gauge",
        "When the dataset's last run ended, in Unix seconds (runs stopped on request do not count).",
        &|d| d.last_attempt.map(|(t, _)| secs(t)),
    );
    per_dataset(
        &mut out,
        "zib_dataset_last_attempt_success",
        "gauge",
        "1 if the dataset's last run succeeded (or skipped an idle day), 0 if it failed.",
        &|d| d.last_attempt.map(|(_, r)| if r == AttemptResult::Failure { 0.0 } else { 1.0 }),
    );
    per_dataset(
        &mut out,
        "zib_dataset_last_backup_bytes",
        "gauge",
        "Stream size of the dataset's last committed backup.",
        &|d| d.last_backup_bytes.map(|b| b as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_last_backup_objects",
        "gauge",
        "Objects (chunks and manifest) of the last backup committed since zibd started.",
        &|d| d.last_backup_objects.map(|b| b as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_chain_length",
        "gauge",
        "Backups in the dataset's current chain, its full included.",
        &|d| Some(d.chain_length as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_uploaded_bytes_total",
        "counter",
        "Bytes uploaded for the dataset (chunks and manifests) since zibd started.",
        &|d| Some(d.uploaded_bytes as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_puts_total",
        "counter",
        "Objects PUT for the dataset (chunks and manifests) since zibd started.",
        &|d| Some(d.puts as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_failures_total",
        "counter",
        "Failed backup runs of the dataset since zibd started.",
        &|d| Some(d.failures as f64),
    );
    per_dataset(
        &mut out,
        "zib_dataset_next_run_seconds",
        "gauge",
        "Seconds until the dataset's next scheduled run (absent while paused).",
        &|d| d.next_run.map(|t| ((t - m.now).num_milliseconds().max(0) as f64) / 1000.0),
    );
    out.family(
        "zib_dataset_state",
        "gauge",
        "1 for what the dataset's job is doing now (idle, scheduled, queued, running, paused, failed), 0 for the others.",
    );
    for d in &m.datasets {
        for a in DatasetActivity::ALL {
            let v = if a == d.activity { 1.0 } else { 0.0 };
            out.series("zib_dataset_state", &[("dataset", &d.dataset), ("state", a.as_str())], v);
        }
    }

    out.family("zib_restore_jobs", "gauge", "Restore jobs the daemon knows, by state.");
    for state in RESTORE_STATES {
        let n = m.restores.iter().filter(|r| r.state == state).count();
        out.series("zib_restore_jobs", &[("state", state)], n as f64);
    }
    let unfinished: Vec<&RestoreMetrics> =
        m.restores.iter().filter(|r| !matches!(r.state, "done" | "failed" | "cancelled")).collect();
    let per_restore =
        |out: &mut Out, name: &str, help: &str, value: &dyn Fn(&RestoreMetrics) -> Option<u64>| {
            out.family(name, "gauge", help);
            for r in &unfinished {
                if let Some(v) = value(r) {
                    out.series(name, &[("restore", &r.id)], v as f64);
                }
            }
        };
    per_restore(
        &mut out,
        "zib_restore_thaw_objects",
        "Objects an unfinished restore needs thawed.",
        &|r| Some(r.objects_total),
    );
    per_restore(
        &mut out,
        "zib_restore_thaw_ready_objects",
        "Objects of an unfinished restore that are readable already.",
        &|r| Some(r.objects_ready),
    );
    per_restore(
        &mut out,
        "zib_restore_received_bytes",
        "Bytes an unfinished restore has fed to zfs receive.",
        &|r| Some(r.bytes_received),
    );
    per_restore(
        &mut out,
        "zib_restore_size_bytes",
        "Bytes an unfinished restore receives in all.",
        &|r| r.bytes_total,
    );

    let v = m.verify.as_ref();
    let per_verify = |out: &mut Out, name: &str, help: &str, value: Option<f64>| {
        out.family(name, "gauge", help);
        if let Some(value) = value {
            out.series(name, &[], value);
        }
    };
    per_verify(
        &mut out,
        "zib_verify_last_timestamp_seconds",
        "When the last verification of the bucket (scheduled or zibctl verify) ended, in Unix seconds.",
        v.map(|v| secs(v.at)),
    );
    per_verify(
        &mut out,
        "zib_verify_last_clean",
        "1 if the last verification of the bucket found nothing a restore would miss, 0 if it found problems or did not finish.",
        v.map(|v| if v.clean { 1.0 } else { 0.0 }),
    );
    per_verify(
        &mut out,
        "zib_verify_last_errors",
        "Errors the last verification found (missing or changed chunks, broken chains).",
        v.map(|v| v.errors as f64),
    );
    per_verify(
        &mut out,
        "zib_verify_last_warnings",
        "Warnings the last verification found.",
        v.map(|v| v.warnings as f64),
    );
    per_verify(
        &mut out,
        "zib_verify_last_unnamed_objects",
        "Objects under the prefix that no manifest names, at the last verification.",
        v.map(|v| v.unnamed as f64),
    );

    type Drill = crate::drill_summary::DrillSummary;
    let per_drill = |out: &mut Out, name: &str, help: &str, value: &dyn Fn(&Drill) -> f64| {
        out.family(name, "gauge", help);
        for (dataset, d) in &m.drills {
            out.series(name, &[("dataset", dataset)], value(d));
        }
    };
    per_drill(
        &mut out,
        "zib_drill_last_timestamp_seconds",
        "When the dataset's last restore drill (drill_schedule or zibctl restore drill) ended, in Unix seconds.",
        &|d| secs(d.at),
    );
    per_drill(
        &mut out,
        "zib_drill_last_passed",
        "1 if the dataset's last restore drill received the backed-up snapshot (same GUID), 0 if it failed or could not run.",
        &|d| if d.passed { 1.0 } else { 0.0 },
    );
    per_drill(
        &mut out,
        "zib_drill_last_duration_seconds",
        "How long the dataset's last restore drill took to restore.",
        &|d| d.seconds,
    );
    per_drill(
        &mut out,
        "zib_drill_last_bytes",
        "Bytes the dataset's last restore drill restored.",
        &|d| d.bytes as f64,
    );
    out.0
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

#[derive(Default)]
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.series(name, &[], v);
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", value(v));
    }
}

/// Integers without a fraction (Rust's `{}` of an f64 never uses an exponent, which keeps
/// timestamps exact to the millisecond).
fn value(v: f64) -> String {
    if v.is_nan() { "NaN".into() } else { format!("{v}") }
}

/// Label values: backslash, double quote and line feed escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// HELP text: backslash and line feed escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn dataset(name: &str) -> DatasetMetrics {
        DatasetMetrics {
            dataset: name.into(),
            activity: DatasetActivity::Scheduled,
            last_success_at: Some(t("2026-12-01T03:00:00.250Z")),
            last_attempt: Some((t("2026-12-01T03:00:00.250Z"), AttemptResult::Success)),
            last_backup_bytes: Some(1_048_576),
            last_backup_objects: Some(17),
            chain_length: 3,
            uploaded_bytes: 3 * 1_048_576 + 900,
            puts: 51,
            failures: 2,
            next_run: Some(t("2026-12-02T03:00:00Z")),
        }
    }

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            now: t("2026-12-02T02:59:30Z"),
            version: "0.1.0".into(),
            protocol_version: 1,
            started_at: t("2026-12-01T00:00:00Z"),
            jobs_running: 1,
            jobs_max: 2,
            datasets: vec![dataset("tank/home")],
            restores: vec![
                RestoreMetrics {
                    id: "tank/restored".into(),
                    state: "thawing",
                    objects_total: 9,
                    objects_ready: 4,
                    bytes_received: 0,
                    bytes_total: Some(600_000),
                },
                RestoreMetrics {
                    id: "tank/old".into(),
                    state: "done",
                    objects_total: 2,
                    objects_ready: 2,
                    bytes_received: 10,
                    bytes_total: Some(10),
                },
            ],
            verify: None,
            drills: vec![],
        }
    }

    /// The value of the one series `line_start` begins (name and labels).
    fn value_of(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map(str::to_owned)
    }

    #[test]
    fn every_dataset_value_is_rendered_under_its_name() {
        let text = render(&snapshot());
        let ds = "{dataset=\"tank/home\"}";
        for (name, want) in [
            ("zib_dataset_last_success_timestamp_seconds", "1796094000.25"),
            ("zib_dataset_last_attempt_timestamp_seconds", "1796094000.25"),
            ("zib_dataset_last_attempt_success", "1"),
            ("zib_dataset_last_backup_bytes", "1048576"),
            ("zib_dataset_last_backup_objects", "17"),
            ("zib_dataset_chain_length", "3"),
            ("zib_dataset_uploaded_bytes_total", "3146628"),
            ("zib_dataset_puts_total", "51"),
            ("zib_dataset_failures_total", "2"),
            ("zib_dataset_next_run_seconds", "30"),
        ] {
            assert_eq!(value_of(&text, &format!("{name}{ds}")).as_deref(), Some(want), "{name}");
        }
        assert_eq!(
            value_of(&text, "zib_dataset_state{dataset=\"tank/home\",state=\"scheduled\"}")
                .as_deref(),
            Some("1")
        );
        for other in ["idle", "queued", "running", "paused", "failed"] {
            let s = format!("zib_dataset_state{{dataset=\"tank/home\",state=\"{other}\"}}");
            assert_eq!(value_of(&text, &s).as_deref(), Some("0"), "{other}");
        }
    }

    #[test]
    fn the_last_verification_is_shown_and_absent_before_the_first() {
        use crate::verify_summary::{VerifySummary, VerifyTrigger};
        let text = render(&snapshot());
        assert!(text.contains("# TYPE zib_verify_last_clean gauge"));
        assert_eq!(value_of(&text, "zib_verify_last_clean"), None);
        let mut m = snapshot();
        let mut v = VerifySummary::failed(
            "x".into(),
            t("2026-12-01T05:00:00Z"),
            VerifyTrigger::Schedule,
            false,
        );
        v.failure = None;
        v.errors = 2;
        v.warnings = 1;
        v.unnamed = 3;
        m.verify = Some(v);
        let text = render(&m);
        for (name, want) in [
            ("zib_verify_last_timestamp_seconds", "1796101200"),
            ("zib_verify_last_clean", "0"),
            ("zib_verify_last_errors", "2"),
            ("zib_verify_last_warnings", "1"),
            ("zib_verify_last_unnamed_objects", "3"),
        ] {
            assert_eq!(value_of(&text, name).as_deref(), Some(want), "{name}");
        }
        m.verify.as_mut().unwrap().clean = true;
        assert_eq!(value_of(&render(&m), "zib_verify_last_clean").as_deref(), Some("1"));
    }

    #[test]
    fn the_last_drill_of_each_dataset_is_shown_under_its_name() {
        use crate::drill_summary::{DrillSummary, DrillTrigger};
        let text = render(&snapshot());
        assert!(text.contains("# TYPE zib_drill_last_passed gauge"));
        assert!(!text.contains("zib_drill_last_passed{"), "{text}");
        let mut m = snapshot();
        let mut passed =
            DrillSummary::not_run("x".into(), t("2026-12-01T05:00:00Z"), DrillTrigger::Schedule);
        (passed.passed, passed.reason, passed.seconds, passed.bytes) = (true, None, 12.5, 4096);
        let failed = DrillSummary::not_run(
            "corrupt".into(),
            t("2026-12-02T05:00:00Z"),
            DrillTrigger::Request,
        );
        m.drills = vec![("tank/home".into(), passed), ("tank/b".into(), failed)];
        let text = render(&m);
        for (name, want) in [
            ("zib_drill_last_timestamp_seconds{dataset=\"tank/home\"}", "1796101200"),
            ("zib_drill_last_passed{dataset=\"tank/home\"}", "1"),
            ("zib_drill_last_duration_seconds{dataset=\"tank/home\"}", "12.5"),
            ("zib_drill_last_bytes{dataset=\"tank/home\"}", "4096"),
            ("zib_drill_last_timestamp_seconds{dataset=\"tank/b\"}", "1796187600"),
            ("zib_drill_last_passed{dataset=\"tank/b\"}", "0"),
        ] {
            assert_eq!(value_of(&text, name).as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn daemon_values_and_version_label() {
        let text = render(&snapshot());
        assert_eq!(
            value_of(&text, "zib_daemon_info{version=\"0.1.0\",protocol_version=\"1\"}").as_deref(),
            Some("1")
        );
        assert_eq!(value_of(&text, "zib_daemon_start_time_seconds").as_deref(), Some("1796083200"));
        assert_eq!(value_of(&text, "zib_jobs_running").as_deref(), Some("1"));
        assert_eq!(value_of(&text, "zib_jobs_max").as_deref(), Some("2"));
    }

    #[test]
    fn restores_are_counted_by_state_and_only_unfinished_ones_get_progress_series() {
        let text = render(&snapshot());
        assert_eq!(value_of(&text, "zib_restore_jobs{state=\"thawing\"}").as_deref(), Some("1"));
        assert_eq!(value_of(&text, "zib_restore_jobs{state=\"done\"}").as_deref(), Some("1"));
        assert_eq!(value_of(&text, "zib_restore_jobs{state=\"failed\"}").as_deref(), Some("0"));
        let r = "{restore=\"tank/restored\"}";
        assert_eq!(value_of(&text, &format!("zib_restore_thaw_objects{r}")).as_deref(), Some("9"));
        assert_eq!(
            value_of(&text, &format!("zib_restore_thaw_ready_objects{r}")).as_deref(),
            Some("4")
        );
        assert_eq!(
            value_of(&text, &format!("zib_restore_size_bytes{r}")).as_deref(),
            Some("600000")
        );
        assert!(!text.contains("restore=\"tank/old\""), "{text}");
    }

    #[test]
    fn a_dataset_never_backed_up_has_no_last_success_series_and_a_failure_shows_0() {
        let mut m = snapshot();
        let d = &mut m.datasets[0];
        d.last_success_at = None;
        d.last_backup_bytes = None;
        d.last_backup_objects = None;
        d.last_attempt = Some((t("2026-12-02T00:00:00Z"), AttemptResult::Failure));
        d.activity = DatasetActivity::Failed;
        d.next_run = None;
        let text = render(&m);
        assert!(!text.contains("zib_dataset_last_success_timestamp_seconds{"), "{text}");
        assert!(!text.contains("zib_dataset_last_backup_bytes{"), "{text}");
        assert!(!text.contains("zib_dataset_next_run_seconds{"), "{text}");
        // The family is still declared, so a scraper knows the name.
        assert!(text.contains("# TYPE zib_dataset_last_success_timestamp_seconds gauge"));
        assert_eq!(
            value_of(&text, "zib_dataset_last_attempt_success{dataset=\"tank/home\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            value_of(&text, "zib_dataset_state{dataset=\"tank/home\",state=\"failed\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn a_skipped_run_counts_as_a_successful_attempt() {
        let mut m = snapshot();
        m.datasets[0].last_attempt = Some((m.now, AttemptResult::Skipped));
        let text = render(&m);
        assert_eq!(
            value_of(&text, "zib_dataset_last_attempt_success{dataset=\"tank/home\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = snapshot();
        m.datasets[0].dataset = "a\"b\\c\nd".into();
        let text = render(&m);
        assert!(text.contains(r#"zib_dataset_chain_length{dataset="a\"b\\c\nd"} 3"#), "{text}");
    }

    #[test]
    fn each_family_is_declared_once_with_help_and_type_before_its_series() {
        let text = render(&snapshot());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name.to_owned()), "{name} declared twice");
                declared.push(name.to_owned());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
            }
        }
        for name in &declared {
            assert!(name.starts_with("zib_"), "{name}");
            let counter = text.contains(&format!("# TYPE {name} counter"));
            assert_eq!(counter, name.ends_with("_total"), "{name}: _total is for counters only");
        }
        assert!(text.ends_with('\n'));
    }
}
