//! Round trip of every message, and the backward-compatibility fixtures.
//!
//! `tests/fixtures/v1/*.json` hold the JSON of protocol-v1 frames as v1 wrote them. They are kept
//! forever: a later zibd must still read every request fixture and a later zibctl every response
//! fixture (a newer daemon talks to an older zibctl and the other way round). Never edit or
//! delete one; add new fixtures for new messages. To write the fixtures of new samples run
//! `ZIB_BLESS_FIXTURES=1 cargo test -p zib-protocol --test messages` (existing files are never
//! overwritten).

use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use zib_protocol::*;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).unwrap()
}

fn progress() -> RunProgress {
    RunProgress {
        snapshot: "tank/photos@zib-20260101T030000Z".into(),
        incremental: true,
        started_at: Some(t(1_767_236_400)),
        bytes_sent: 3 * 1024 * 1024 * 1024,
        bytes_total_estimate: Some(10 * 1024 * 1024 * 1024),
        chunks_done: 3,
        chunks_total_estimate: Some(10),
        rate_bytes_per_sec: Some(50 * 1024 * 1024),
        eta_secs: Some(143),
    }
}

/// tank/photos, scheduled daily, never backed up, one backup in its chain: what the status
/// fixtures with a note or a stale_after add to.
fn scheduled_photos() -> DatasetStatus {
    DatasetStatus {
        dataset: "tank/photos".into(),
        state: JobState::Scheduled,
        paused: false,
        schedule: Some("0 3 * * *".into()),
        progress: None,
        last_success: None,
        last_error: None,
        next_run: Some(t(1_767_322_800)),
        chain_length: 1,
        missed_ticks: 0,
        last_note: None,
        stale_after_secs: None,
    }
}

fn daemon_info(jobs_running: u32) -> DaemonInfo {
    DaemonInfo {
        version: "0.1.0".into(),
        protocol_version: 1,
        started_at: t(1_767_225_600),
        uptime_secs: 10_800,
        jobs_running,
        jobs_max: Some(2),
        restores_running: 0,
        last_verify: None,
        next_verify: None,
        drills: vec![],
    }
}

/// One sample of every request variant, named as its fixture file.
fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("request-status-all", Request::Status { dataset: None }),
        ("request-status-one", Request::Status { dataset: Some("tank/photos".into()) }),
        (
            "request-trigger",
            Request::Trigger { dataset: "tank/photos".into(), wait: false, full: false },
        ),
        (
            "request-trigger-wait",
            Request::Trigger { dataset: "tank/photos".into(), wait: true, full: false },
        ),
        (
            "request-trigger-full",
            Request::Trigger { dataset: "tank/photos".into(), wait: true, full: true },
        ),
        ("request-pause-all", Request::Pause { dataset: None }),
        ("request-pause-one", Request::Pause { dataset: Some("tank/photos".into()) }),
        ("request-resume-all", Request::Resume { dataset: None }),
        ("request-resume-one", Request::Resume { dataset: Some("tank/photos".into()) }),
        ("request-cancel", Request::Cancel { dataset: "tank/photos".into() }),
        ("request-reload", Request::Reload),
        ("request-version", Request::Version),
        (
            "request-restore-start",
            Request::RestoreStart(RestoreStart {
                dataset: "tank/photos".into(),
                snapshot: Some("zib-20260101T030000Z".into()),
                to: "tank/restored".into(),
                tier: RestoreTier::Bulk,
                days: 7,
                bucket: Some("other-bucket".into()),
                prefix: Some("zib/".into()),
                mountpoint: None,
                no_mount: false,
                key_location: None,
            }),
        ),
        (
            "request-restore-start-minimal",
            Request::RestoreStart(RestoreStart {
                dataset: "tank/photos".into(),
                snapshot: None,
                to: "tank/restored".into(),
                tier: RestoreTier::Standard,
                days: 1,
                bucket: None,
                prefix: None,
                mountpoint: None,
                no_mount: false,
                key_location: None,
            }),
        ),
        (
            "request-restore-start-mount",
            Request::RestoreStart(RestoreStart {
                dataset: "tank/photos".into(),
                snapshot: None,
                to: "tank/restored".into(),
                tier: RestoreTier::Bulk,
                days: 7,
                bucket: None,
                prefix: None,
                mountpoint: Some("/srv/restored".into()),
                no_mount: true,
                key_location: Some("file:///root/photos.key".into()),
            }),
        ),
        ("request-restore-status-all", Request::RestoreStatus { id: None }),
        ("request-restore-status-one", Request::RestoreStatus { id: Some("r-1".into()) }),
        ("request-restore-cancel", Request::RestoreCancel { id: "tank/restored".into() }),
        ("request-cost-all", Request::Cost { dataset: None }),
        ("request-cost-one", Request::Cost { dataset: Some("tank/photos".into()) }),
        ("request-prune-now-all", Request::PruneNow { dataset: None, dry_run: false }),
        (
            "request-prune-now-dry-run",
            Request::PruneNow { dataset: Some("tank/photos".into()), dry_run: true },
        ),
        ("request-verify-all", Request::Verify { dataset: None, deep: false }),
        (
            "request-verify-one",
            Request::Verify { dataset: Some("tank/photos".into()), deep: false },
        ),
        (
            "request-verify-deep",
            Request::Verify { dataset: Some("tank/photos".into()), deep: true },
        ),
        (
            "request-restore-drill",
            Request::RestoreDrill {
                dataset: "tank/photos".into(),
                snapshot: None,
                yes: false,
                tier: RestoreTier::Bulk,
            },
        ),
        (
            "request-restore-drill-yes",
            Request::RestoreDrill {
                dataset: "tank/photos".into(),
                snapshot: Some("zib-20260101T030000Z".into()),
                yes: true,
                tier: RestoreTier::Standard,
            },
        ),
    ]
}

/// One sample of every response variant (and every error kind), named as its fixture file.
fn responses() -> Vec<(&'static str, Response)> {
    let mut v = vec![
        ("response-ok", Response::Ok { message: None }),
        ("response-ok-message", Response::ok("paused 2 datasets")),
        (
            "response-status",
            Response::Status {
                daemon: daemon_info(1),
                datasets: vec![
                    DatasetStatus {
                        dataset: "tank/photos".into(),
                        state: JobState::Uploading,
                        paused: false,
                        schedule: Some("0 3 * * *".into()),
                        progress: Some(progress()),
                        last_success: Some(LastSuccess {
                            at: t(1_767_150_000),
                            snapshot: Some("tank/photos@zib-20251231T030000Z".into()),
                            bytes: 123_456_789,
                        }),
                        last_error: Some(LastError {
                            at: t(1_767_000_000),
                            message: "S3 503 SlowDown".into(),
                        }),
                        next_run: Some(t(1_767_322_800)),
                        chain_length: 4,
                        missed_ticks: 1,
                        last_note: None,
                        stale_after_secs: None,
                    },
                    DatasetStatus {
                        dataset: "tank/docs".into(),
                        state: JobState::Paused,
                        paused: true,
                        schedule: None,
                        progress: None,
                        last_success: None,
                        last_error: None,
                        next_run: None,
                        chain_length: 0,
                        missed_ticks: 0,
                        last_note: None,
                        stale_after_secs: None,
                    },
                ],
            },
        ),
        (
            "response-status-note",
            Response::Status {
                daemon: daemon_info(0),
                datasets: vec![DatasetStatus {
                    last_note: Some(RunNote {
                        at: t(1_767_236_400),
                        message: "skipped (no change): 0 bytes written since tank/photos@zib-20251231T030000Z, less than min_change (65536 bytes); no snapshot taken, nothing uploaded".into(),
                    }),
                    ..scheduled_photos()
                }],
            },
        ),
        (
            "response-status-stale-after",
            Response::Status {
                daemon: daemon_info(0),
                datasets: vec![DatasetStatus {
                    last_success: Some(LastSuccess {
                        at: t(1_767_150_000),
                        snapshot: Some("tank/photos@zib-20251231T030000Z".into()),
                        bytes: 123_456_789,
                    }),
                    chain_length: 2,
                    stale_after_secs: Some(172_800),
                    ..scheduled_photos()
                }],
            },
        ),
        (
            "response-status-verify",
            Response::Status {
                daemon: DaemonInfo {
                    last_verify: Some(Box::new(VerifySummary {
                        at: t(1_767_243_600),
                        trigger: VerifyTrigger::Schedule,
                        deep: false,
                        clean: false,
                        errors: 1,
                        warnings: 0,
                        datasets: 2,
                        chunks: 40,
                        unnamed: 1,
                        requests: 45,
                        cost: 0.000018,
                        currency: "USD".into(),
                        failure: None,
                    })),
                    next_verify: Some(t(1_767_848_400)),
                    ..daemon_info(0)
                },
                datasets: vec![scheduled_photos()],
            },
        ),
        (
            "response-status-drill",
            Response::Status {
                daemon: DaemonInfo {
                    drills: vec![
                        DrillStatus {
                            dataset: "tank/photos".into(),
                            last: Some(DrillSummary {
                                at: t(1_767_243_600),
                                trigger: DrillTrigger::Schedule,
                                passed: true,
                                snapshot: Some("zib-20260101T030000Z".into()),
                                seconds: 42.5,
                                bytes: 10_737_418_240,
                                chunks: 11,
                                cost: 0.0,
                                currency: "USD".into(),
                                reason: None,
                            }),
                            next: Some(t(1_767_848_400)),
                            running: false,
                        },
                        DrillStatus {
                            dataset: "tank/docs".into(),
                            last: Some(DrillSummary {
                                at: t(1_767_240_000),
                                trigger: DrillTrigger::Request,
                                passed: false,
                                snapshot: Some("zib-20260101T030000Z".into()),
                                seconds: 3.0,
                                bytes: 65_536,
                                chunks: 2,
                                cost: 0.0,
                                currency: "USD".into(),
                                reason: Some("the restore failed: chunk s3://b/k is corrupt".into()),
                            }),
                            next: None,
                            running: true,
                        },
                    ],
                    ..daemon_info(0)
                },
                datasets: vec![scheduled_photos()],
            },
        ),
        (
            "response-report-drill",
            Response::Report {
                text: "restore drill of tank/photos@zib-20260101T030000Z PASSED: received GUID 7 = the manifest's = the source snapshot's 7\n".into(),
                json: serde_json::json!({
                    "dataset": "tank/photos",
                    "snapshot": "zib-20260101T030000Z",
                    "target": "tank/zib-drill-20260101T040000-1",
                    "result": "passed",
                    "manifest_guid": "7",
                    "received_guid": "7",
                    "source_guid": { "snapshot": "7" },
                    "streams": 1,
                    "chunks": 11,
                    "bytes": 10_737_418_240u64,
                    "seconds": 42.5,
                    "cost": 0.0,
                    "currency": "USD",
                    "kept": false,
                }),
            },
        ),
        (
            "response-version",
            Response::Version { daemon_version: "0.1.0".into(), protocol_version: 1 },
        ),
        (
            "response-progress",
            Response::Progress(ProgressUpdate {
                dataset: "tank/photos".into(),
                state: JobState::Uploading,
                progress: Some(progress()),
                message: None,
            }),
        ),
        (
            "response-progress-queued",
            Response::Progress(ProgressUpdate {
                dataset: "tank/photos".into(),
                state: JobState::Queued,
                progress: None,
                message: Some("waiting for a job slot".into()),
            }),
        ),
        (
            "response-done-ok",
            Response::Done {
                ok: true,
                message: "backed up tank/photos@zib-20260101T030000Z".into(),
                snapshot: Some("tank/photos@zib-20260101T030000Z".into()),
                bytes: Some(10_737_418_240),
            },
        ),
        (
            "response-done-failed",
            Response::Done {
                ok: false,
                message: "zfs send failed: exit 1".into(),
                snapshot: None,
                bytes: None,
            },
        ),
        ("response-restore-started", Response::RestoreStarted { id: "r-1".into() }),
        (
            "response-restore-status",
            Response::RestoreStatus {
                jobs: vec![RestoreJobStatus {
                    id: "r-1".into(),
                    dataset: "tank/photos".into(),
                    snapshot: Some("zib-20260101T030000Z".into()),
                    to: "tank/restored".into(),
                    tier: Some(RestoreTier::Bulk),
                    state: RestoreState::Thawing,
                    started_at: t(1_767_225_600),
                    objects_total: 12,
                    objects_ready: 5,
                    bytes_received: 0,
                    bytes_total: Some(10_737_418_240),
                    thaw_expected_at: Some(t(1_767_398_400)),
                    finished_at: None,
                    error: None,
                }],
            },
        ),
        (
            "response-report",
            Response::Report {
                text: "prune of tank/photos (dry run): would delete 0 objects (0 B)\n".into(),
                json: serde_json::json!({ "dataset": "tank/photos", "dry_run": true, "deleted": 0 }),
            },
        ),
    ];
    for (name, kind) in [
        ("response-error-permission-denied", ErrorKind::PermissionDenied),
        ("response-error-not-found", ErrorKind::NotFound),
        ("response-error-invalid-request", ErrorKind::InvalidRequest),
        ("response-error-unsupported", ErrorKind::Unsupported),
        ("response-error-frame-too-large", ErrorKind::FrameTooLarge),
        ("response-error-busy", ErrorKind::Busy),
        ("response-error-conflict", ErrorKind::Conflict),
        ("response-error-shutting-down", ErrorKind::ShuttingDown),
        ("response-error-internal", ErrorKind::Internal),
    ] {
        v.push((name, Response::error(kind, format!("sample {kind}"))));
    }
    v
}

#[test]
fn every_request_round_trips() {
    for (name, req) in requests() {
        let body = encode_request(&req);
        let back = decode_request(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.protocol, PROTOCOL_VERSION);
        assert_eq!(back.request, req, "{name}");
    }
}

#[test]
fn every_response_round_trips() {
    for (name, resp) in responses() {
        let body = encode_response(&resp);
        let back = decode_response(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.protocol, PROTOCOL_VERSION);
        assert_eq!(back.response, resp, "{name}");
    }
}

#[test]
fn every_variant_has_a_sample() {
    // Adding a variant without a sample (and a fixture) fails here.
    let reqs: std::collections::BTreeSet<_> =
        requests().iter().map(|(_, r)| r.type_name()).collect();
    assert_eq!(reqs.len(), Request::KNOWN_TYPES.len());
    let resps: std::collections::BTreeSet<String> = responses()
        .iter()
        .map(|(_, r)| serde_json::to_value(r).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    let expected = [
        "ok",
        "error",
        "status",
        "version",
        "progress",
        "done",
        "restore_started",
        "restore_status",
        "report",
    ];
    assert_eq!(resps, expected.iter().map(|s| s.to_string()).collect());
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn bless(name: &str, json: &serde_json::Value) {
    let path = fixture_dir().join(format!("{name}.json"));
    if std::env::var_os("ZIB_BLESS_FIXTURES").is_some() && !path.exists() {
        std::fs::create_dir_all(fixture_dir()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(json).unwrap() + "\n").unwrap();
    }
}

fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("missing fixture {} ({e}); write it with ZIB_BLESS_FIXTURES=1", path.display())
    })
}

/// Every v1 request fixture still decodes to the same request.
#[test]
fn v1_request_fixtures_still_parse() {
    for (name, req) in requests() {
        bless(
            name,
            &serde_json::to_value(RequestFrame { protocol: 1, request: req.clone() }).unwrap(),
        );
        let frame = decode_request(&read_fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame.protocol, 1, "{name}");
        assert_eq!(frame.request, req, "{name}");
    }
}

/// Every v1 response fixture still decodes to the same response.
#[test]
fn v1_response_fixtures_still_parse() {
    for (name, resp) in responses() {
        bless(
            name,
            &serde_json::to_value(ResponseFrame { protocol: 1, response: resp.clone() }).unwrap(),
        );
        let frame = decode_response(&read_fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame.protocol, 1, "{name}");
        assert_eq!(frame.response, resp, "{name}");
    }
}

/// Every fixture file on disk belongs to a sample (none was orphaned by a rename).
#[test]
fn no_orphan_fixtures() {
    let names: std::collections::BTreeSet<String> = requests()
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(responses().iter().map(|(n, _)| n.to_string()))
        .collect();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = file.strip_suffix(".json") else { continue };
        if stem.starts_with("future-") {
            continue;
        }
        assert!(names.contains(stem), "fixture {file} has no sample in tests/messages.rs");
    }
}

/// What a newer daemon might send: unknown response types, states, error kinds and fields parse
/// as `Unknown` (an unknown restore tier as `None`) / are ignored, so an older zibctl degrades instead of failing.
#[test]
fn newer_daemon_replies_still_parse() {
    let f = decode_response(&read_fixture("future-response-unknown-type")).unwrap();
    assert_eq!(f.response, Response::Unknown);
    let f = decode_response(&read_fixture("future-response-unknown-values")).unwrap();
    let Response::Status { datasets, .. } = f.response else { panic!("not a status: {f:?}") };
    assert_eq!(datasets[0].state, JobState::Unknown);
    assert_eq!(datasets[0].dataset, "tank/photos");
    let f = decode_response(&read_fixture("future-response-unknown-tier")).unwrap();
    let Response::RestoreStatus { jobs } = f.response else {
        panic!("not a restore status: {f:?}")
    };
    assert_eq!((jobs[0].tier, jobs[1].tier), (None, Some(RestoreTier::Standard)));
    let f = decode_response(&read_fixture("future-response-unknown-error-kind")).unwrap();
    assert_eq!(f.response, Response::error(ErrorKind::Unknown, "quota exceeded"));
}

/// `full` was added to `trigger` within v1: the older fixtures read as `full: false`, and a
/// trigger without it is written as before, so an older daemon reads it unchanged.
#[test]
fn trigger_full_is_additive() {
    for name in ["request-trigger", "request-trigger-wait"] {
        let f = decode_request(&read_fixture(name)).unwrap();
        assert!(matches!(f.request, Request::Trigger { full: false, .. }), "{name}: {f:?}");
    }
    let f = decode_request(&read_fixture("request-trigger-full")).unwrap();
    assert_eq!(
        f.request,
        Request::Trigger { dataset: "tank/photos".into(), wait: true, full: true }
    );
    let plain = Request::Trigger { dataset: "tank/photos".into(), wait: false, full: false };
    let written: serde_json::Value = serde_json::from_slice(&encode_request(&plain)).unwrap();
    let v1: serde_json::Value = serde_json::from_slice(&read_fixture("request-trigger")).unwrap();
    assert_eq!(written, v1, "written as v1 wrote it");
}

/// `stale_after_secs` was added to the status within v1: the older fixtures read as `None`, and
/// a status without it is written as before.
#[test]
fn status_stale_after_is_additive() {
    for name in ["response-status", "response-status-note"] {
        let f = decode_response(&read_fixture(name)).unwrap();
        let Response::Status { datasets, .. } = f.response else { panic!("{name}: {f:?}") };
        assert!(datasets.iter().all(|d| d.stale_after_secs.is_none()), "{name}");
        let written: serde_json::Value =
            serde_json::from_slice(&encode_response(&Response::Status {
                daemon: daemon_info(0),
                datasets,
            }))
            .unwrap();
        assert!(written["response"]["datasets"][0].get("stale_after_secs").is_none(), "{name}");
    }
    let f = decode_response(&read_fixture("response-status-stale-after")).unwrap();
    let Response::Status { datasets, .. } = f.response else { panic!("{f:?}") };
    assert_eq!(datasets[0].stale_after_secs, Some(172_800));
}

/// `drills` was added to the status within v1: the older fixtures read as none, and a status
/// without drills is written as before (no `drills` key), so an older zibctl reads it
/// unchanged.
#[test]
fn status_drills_are_additive() {
    for name in ["response-status", "response-status-verify"] {
        let f = decode_response(&read_fixture(name)).unwrap();
        let Response::Status { daemon, datasets } = f.response else { panic!("{name}: {f:?}") };
        assert!(daemon.drills.is_empty(), "{name}");
        let written: serde_json::Value =
            serde_json::from_slice(&encode_response(&Response::Status { daemon, datasets }))
                .unwrap();
        let v1: serde_json::Value = serde_json::from_slice(&read_fixture(name)).unwrap();
        let daemon = |v: &serde_json::Value| v["response"]["daemon"].clone();
        assert_eq!(daemon(&written), daemon(&v1), "{name}: written as v1 wrote it");
    }
    let f = decode_response(&read_fixture("response-status-drill")).unwrap();
    let Response::Status { daemon, .. } = f.response else { panic!("{f:?}") };
    assert_eq!(daemon.drills.len(), 2);
    assert!(daemon.drills[0].last.as_ref().is_some_and(|d| d.passed));
    assert!(daemon.drills[1].running);
    // A drill request without its optional fields is the minimal one.
    let f = decode_request(
        br#"{"protocol":1,"request":{"type":"restore_drill","dataset":"tank/photos"}}"#,
    )
    .unwrap();
    assert_eq!(
        f.request,
        Request::RestoreDrill {
            dataset: "tank/photos".into(),
            snapshot: None,
            yes: false,
            tier: RestoreTier::Bulk
        }
    );
}

/// What a newer zibctl might send: an unknown request type gets `unsupported`, an unknown field
/// is ignored.
#[test]
fn newer_client_requests() {
    let e = decode_request(&read_fixture("future-request-unknown-type")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    let f = decode_request(&read_fixture("future-request-extra-field")).unwrap();
    assert_eq!(
        f.request,
        Request::Trigger { dataset: "tank/photos".into(), wait: true, full: false }
    );
}

/// A status reply is read by `decode_response` straight into its fields when it starts as
/// zibd writes it. That reading must give what the derived one gives, for every status
/// fixture and for the same JSON with its keys in another order (which takes the derived
/// path), and a status the direct reading refuses gets the derived error.
#[test]
fn a_status_reads_the_same_whichever_way_it_is_read() {
    let derived = |body: &[u8]| serde_json::from_slice::<ResponseFrame>(body);
    let mut statuses = 0;
    for (name, resp) in responses() {
        if !matches!(resp, Response::Status { .. }) {
            continue;
        }
        statuses += 1;
        let written = encode_response(&resp);
        assert!(written.starts_with(br#"{"protocol":1,"response":{"type":"status","#), "{name}");
        assert_eq!(decode_response(&written).unwrap(), derived(&written).unwrap(), "{name}");
        let fixture = read_fixture(name);
        assert_eq!(decode_response(&fixture).unwrap(), derived(&fixture).unwrap(), "{name}");
        // The tag last and the frame's keys swapped: not zibd's order, the same reply.
        let v: serde_json::Value = serde_json::from_slice(&written).unwrap();
        let r = &v["response"];
        let reordered = format!(
            r#"{{"response":{{"datasets":{},"daemon":{},"type":"status"}},"protocol":1}}"#,
            r["datasets"], r["daemon"]
        );
        assert_eq!(decode_response(reordered.as_bytes()).unwrap().response, resp, "{name}");
    }
    assert!(statuses >= 3, "{statuses} status samples");
    let bad = br#"{"protocol":1,"response":{"type":"status","daemon":{},"datasets":5}}"#;
    assert_eq!(
        decode_response(bad).unwrap_err().to_string(),
        derived(bad).unwrap_err().to_string()
    );
}

/// The fields of a dataset's status at their default are left out of the JSON (a status of
/// 1,000 idle datasets is about half as long), and read back as the default, as every v1
/// reader does (all of them were `#[serde(default)]` from the first v1).
#[test]
fn a_dataset_status_leaves_its_defaults_out() {
    let idle = DatasetStatus {
        dataset: "tank/idle".into(),
        state: JobState::Idle,
        schedule: None,
        next_run: None,
        chain_length: 0,
        ..scheduled_photos()
    };
    let written = serde_json::to_value(&idle).unwrap();
    assert_eq!(written, serde_json::json!({"dataset": "tank/idle", "state": "idle"}));
    assert_eq!(serde_json::from_value::<DatasetStatus>(written).unwrap(), idle);
    let busy = DatasetStatus { paused: true, chain_length: 3, missed_ticks: 1, ..idle };
    let written = serde_json::to_value(&busy).unwrap();
    assert_eq!(
        (&written["paused"], &written["chain_length"], &written["missed_ticks"]),
        (&serde_json::json!(true), &serde_json::json!(3), &serde_json::json!(1))
    );
}
