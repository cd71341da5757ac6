//! The daemon's side of restore: [`zibd::restore::RestoreJobs`] runs a restore as a job whose
//! status shows the thaw, stops at shutdown, and continues after a "daemon restart" (a new
//! `RestoreJobs` over the same work dir) without asking for any thaw twice. The stand-in zfs
//! and the test credentials are given to the engine, not set in the process environment.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zib_core::{DatasetName, StorageClass, pricing::Pricing};
use zib_protocol::RestoreState;
use zib_testkit::{FaultProxy, Matcher, MotoServer, test_credentials};
use zibd::{
    restore::{PollBackoff, RestoreEngine, RestoreJobs, RestoreOptions},
    s3::{S3Settings, S3Store},
    zfs::Zfs,
};

mod support;
use support::{FakeZfs, catalog::*};

async fn engine(endpoint: &str, bucket: &str, zfs: &Zfs) -> RestoreEngine {
    RestoreEngine {
        zfs: zfs.clone(),
        s3: S3Store::connect(
            &S3Settings {
                region: "us-east-1".into(),
                endpoint: Some(endpoint.into()),
                path_style: true,
                max_attempts: 3,
                request_timeout: Duration::from_secs(120),
                bucket: bucket.into(),
            },
            Some(&test_credentials()),
        )
        .await,
        prefix: PREFIX.into(),
    }
}

async fn wait_for(
    jobs: &RestoreJobs,
    what: &str,
    f: impl Fn(&zib_protocol::RestoreJobStatus) -> bool,
) -> zib_protocol::RestoreJobStatus {
    for _ in 0..400 {
        if let Some(s) = jobs.status(Some("pool/restored")).into_iter().next()
            && f(&s)
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", jobs.status(None));
}

#[test]
fn a_restore_job_survives_a_daemon_restart_without_asking_twice() {
    let zfs = FakeZfs::new();
    let z = zfs.zfs();
    let moto = MotoServer::spawn();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = moto.client();
        let bucket = moto.create_bucket("rjobs").await;
        let chain = chain3();
        seed(&client, &bucket, "tank/photos", &chain, StorageClass::DeepArchive).await;
        // moto's manual transition: a key's restore shows "in progress" from its 3rd request on,
        // for 3 more requests. The first daemon polls once, then waits 30 s: stopped meanwhile.
        moto.set_restore_transition_manual(3);
        let proxy = FaultProxy::start(moto.endpoint()).await;
        let ep = proxy.endpoint();
        let work = tempfile::tempdir().unwrap();
        let mut opts = RestoreOptions::new(DatasetName::new("pool/restored").unwrap());
        opts.poll = PollBackoff { initial: Duration::from_secs(30), max: Duration::from_secs(60) };

        let shutdown = CancellationToken::new();
        let jobs = RestoreJobs::new(work.path().to_owned(), shutdown.clone());
        let id = jobs.start(engine(&ep, &bucket, &z).await, opts.clone()).unwrap();
        assert_eq!(id, "pool/restored");
        let s = wait_for(&jobs, "thawing, after a poll", |s| {
            s.state == RestoreState::Thawing
                && s.objects_total == 7
                && proxy.count(&Matcher::head()) >= 8
        })
        .await;
        assert_eq!(
            (s.objects_ready, s.dataset.as_str(), s.bytes_total),
            (0, "tank/photos", Some(5400))
        );
        assert!(
            s.thaw_expected_at.is_some_and(|t| t > s.started_at + chrono::Duration::hours(47)),
            "{s:?}"
        );
        // The same target twice is refused while it runs.
        assert!(jobs.start(engine(&ep, &bucket, &z).await, opts.clone()).is_err());
        assert_eq!(proxy.count(&Matcher::post().query_contains("restore")), 7);
        assert_eq!(jobs.running(), 1);

        // Shutdown: the job stops at its next await; its record stays.
        shutdown.cancel();
        let s = wait_for(&jobs, "cancelled", |s| s.state == RestoreState::Cancelled).await;
        assert!(s.error.unwrap().contains("cancelled"));
        // zfs receive was started for the full stream, but got no byte before the stop.
        assert!(
            zfs.received().iter().all(|r| r.is_empty()),
            "{:?}",
            zfs.received().iter().map(Vec::len).collect::<Vec<_>>()
        );

        // "Restart": a new daemon continues the recorded restore.
        let fast =
            PollBackoff { initial: Duration::from_millis(50), max: Duration::from_millis(100) };
        // Its price table says bulk thaws take 5 h: the expected end follows it.
        let pricing = Pricing { bulk_hours: 5, ..Pricing::default() };
        let jobs = RestoreJobs::new(work.path().to_owned(), CancellationToken::new())
            .with_poll(fast)
            .with_pricing(pricing);
        let b = bucket.clone();
        let ep2 = ep.clone();
        let resumed = jobs
            .resume_unfinished(|bucket, prefix| {
                assert_eq!((bucket.as_str(), prefix.as_str()), (b.as_str(), "backups/"));
                let (ep2, z) = (ep2.clone(), z.clone());
                async move { engine(&ep2, &bucket, &z).await }
            })
            .await;
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].as_ref().unwrap(), "pool/restored");
        let s = wait_for(&jobs, "done", |s| {
            s.state != RestoreState::Thawing && s.finished_at.is_some()
        })
        .await;
        assert_eq!(s.state, RestoreState::Done, "{s:?}");
        assert_eq!(s.bytes_received, 5400);
        let hours = |h| s.started_at + chrono::Duration::hours(h);
        assert!(
            s.thaw_expected_at.is_some_and(|t| t > hours(4) && t < hours(6)),
            "the price table's bulk_hours (5 h), not a fixed 48 h: {s:?}"
        );
        let got: Vec<Vec<u8>> = zfs.received().into_iter().filter(|r| !r.is_empty()).collect();
        assert_eq!(got.len(), 3);
        for (g, b) in got.iter().zip(&chain) {
            assert!(g == &b.data, "stream {} differs", b.snap);
        }
        assert_eq!(
            proxy.count(&Matcher::post().query_contains("restore")),
            7,
            "no thaw asked twice"
        );
        // Nothing left to resume.
        let again = RestoreJobs::new(work.path().to_owned(), CancellationToken::new());
        assert!(again.resume_unfinished(|_, _| async { unreachable!() }).await.is_empty());
    });
}
