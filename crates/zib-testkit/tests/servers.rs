//! The testkit against the real local S3 servers (host): proves the helpers that the
//! backup engine's tests rely on.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, GlacierJobParameters, RestoreRequest, StorageClass, Tier,
};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer, Outcome, S3sFsServer};

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    zib_testkit::put_bytes(client, bucket, key, data.to_vec()).await;
}

#[tokio::test]
async fn moto_deep_archive_needs_restore() {
    let moto = MotoServer::spawn();
    assert!(moto.is_private());
    let client = moto.client();
    let bucket = moto.create_bucket("deep").await;
    client
        .put_object()
        .bucket(&bucket)
        .key("cold")
        .storage_class(StorageClass::DeepArchive)
        .body(ByteStream::from_static(b"frozen bytes"))
        .send()
        .await
        .expect("PUT DEEP_ARCHIVE");
    let err = client
        .get_object()
        .bucket(&bucket)
        .key("cold")
        .send()
        .await
        .expect_err("unrestored GET fails")
        .into_service_error();
    assert!(err.is_invalid_object_state(), "{err:?}");

    // Slow restores: ongoing for the next 2 requests on the key.
    moto.set_restore_transition_manual(2);
    let params = GlacierJobParameters::builder().tier(Tier::Bulk).build().expect("params");
    client
        .restore_object()
        .bucket(&bucket)
        .key("cold")
        .restore_request(RestoreRequest::builder().days(1).glacier_job_parameters(params).build())
        .send()
        .await
        .expect("RestoreObject");
    let mut ongoing = 0;
    for _ in 0..10 {
        let head = client.head_object().bucket(&bucket).key("cold").send().await.expect("HEAD");
        let r = head.restore().unwrap_or_default().to_string();
        if r.contains("ongoing-request=\"true\"") {
            ongoing += 1;
        } else {
            assert!(r.contains("ongoing-request=\"false\""), "x-amz-restore: {r}");
            break;
        }
    }
    assert!(ongoing >= 1, "the manual transition kept the restore ongoing at least once");
    moto.unset_restore_transition();
    assert_eq!(zib_testkit::get_bytes(&client, &bucket, "cold").await, b"frozen bytes");
}

#[tokio::test]
async fn moto_conditional_put() {
    let moto = MotoServer::start();
    let client = moto.client();
    let bucket = moto.create_bucket("cond").await;
    put(&client, &bucket, "k", b"one").await;
    let err = client
        .put_object()
        .bucket(&bucket)
        .key("k")
        .if_none_match("*")
        .body(ByteStream::from_static(b"two"))
        .send()
        .await
        .expect_err("If-None-Match: * on an existing key");
    assert_eq!(err.into_service_error().meta().code(), Some("PreconditionFailed"));
    assert_eq!(zib_testkit::get_bytes(&client, &bucket, "k").await, b"one");
}

#[tokio::test]
async fn s3sfs_round_trip_and_checksum_rejection() {
    let s3 = S3sFsServer::spawn();
    let client = s3.client();
    let bucket = s3.create_bucket("fs").await;
    put(&client, &bucket, "dir/a b", b"hello").await;
    assert_eq!(zib_testkit::get_bytes(&client, &bucket, "dir/a b").await, b"hello");
    // sha256("hello") is not this value: the server must refuse the object.
    let wrong = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let err = client
        .put_object()
        .bucket(&bucket)
        .key("bad")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(wrong)
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .expect_err("wrong checksum must be rejected");
    assert_eq!(err.into_service_error().meta().code(), Some("BadDigest"));
}

#[tokio::test]
async fn proxy_counts_and_injects_slowdown() {
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("proxy").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    // The 2nd PUT under the bucket gets 503 SlowDown; the SDK's standard retry goes on.
    proxy.add_fault(
        Fault::new(Matcher::put().path_prefix(&format!("/{bucket}/")), FaultAction::slow_down())
            .nth(2),
    );
    let client = zib_testkit::s3_client(&proxy.endpoint());
    put(&client, &bucket, "a", b"1").await;
    put(&client, &bucket, "b", b"2").await;
    put(&client, &bucket, "c", b"3").await;
    let puts = proxy.puts_per_key();
    assert_eq!(puts.get("a"), Some(&1));
    assert_eq!(puts.get("b"), Some(&2), "b was retried once: {puts:?}");
    assert_eq!(puts.get("c"), Some(&1));
    let injected: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.outcome == Some(Outcome::Injected(503)))
        .collect();
    assert_eq!(injected.len(), 1);
    assert_eq!(zib_testkit::get_bytes(&client, &bucket, "b").await, b"2");
    assert_eq!(proxy.count(&Matcher::get()), 1);
    proxy.reset_counts();
    assert!(proxy.requests().is_empty());
    zib_testkit::get_bytes(&client, &bucket, "c").await;
    let after = proxy.requests();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].outcome, Some(Outcome::Forwarded(200)));
}

#[tokio::test]
async fn proxy_drops_connections_and_fails_without_retries() {
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("drop").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::DropConnection));
    let client = zib_testkit::s3_client(&proxy.endpoint());
    put(&client, &bucket, "x", b"survives a dropped connection").await;
    assert_eq!(proxy.puts_per_key().get("x"), Some(&2));

    // Without retries the injected 500 reaches the caller.
    proxy.add_fault(Fault::new(Matcher::get(), FaultAction::internal_error()).always());
    let no_retry = aws_sdk_s3::Client::from_conf(
        zib_testkit::s3_config(&proxy.endpoint())
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    );
    let err = no_retry.get_object().bucket(&bucket).key("x").send().await.expect_err("500");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    proxy.clear_faults();
    assert_eq!(
        zib_testkit::get_bytes(&no_retry, &bucket, "x").await,
        b"survives a dropped connection"
    );
}

/// A client that gives up while the answer is held back (as a killed one would): the server
/// stored the object, and the proxy counts that PUT as stored all the same.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_counts_a_put_the_server_stored_after_its_client_gave_up() {
    let s3 = S3sFsServer::start();
    let bucket = s3.create_bucket("late").await;
    let proxy = FaultProxy::start(s3.endpoint()).await;
    let delay = std::time::Duration::from_secs(30);
    proxy.add_fault(Fault::new(Matcher::put(), FaultAction::DelayResponse(delay)).always());
    let client = zib_testkit::s3_client(&proxy.endpoint());
    let put = client
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(ByteStream::from_static(b"stored before the answer"))
        .send();
    let gave_up = tokio::time::timeout(std::time::Duration::from_secs(2), put).await;
    assert!(gave_up.is_err(), "the answer was held back");
    assert_eq!(proxy.successful_puts_per_key().get("k"), Some(&1), "{:?}", proxy.requests());
    let direct = s3.client();
    assert_eq!(zib_testkit::get_bytes(&direct, &bucket, "k").await, b"stored before the answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_stalls_bodies_half_way_and_pages_listings() {
    use aws_sdk_s3::config::{retry::RetryConfig, timeout::TimeoutConfig};
    use http_body_util::BodyExt;
    use std::time::Duration;
    let s3s = S3sFsServer::start();
    let bucket = s3s.create_bucket("stall").await;
    let proxy = FaultProxy::start(s3s.endpoint()).await;
    // One attempt of at most 2 s: a stalled request fails instead of hanging.
    let impatient = aws_sdk_s3::Client::from_conf(
        zib_testkit::s3_config(&proxy.endpoint())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder().operation_attempt_timeout(Duration::from_secs(2)).build(),
            )
            .build(),
    );

    // A PUT of 4 MiB whose body the proxy stops reading after 64 KiB: never forwarded.
    let big = vec![7u8; 4 << 20];
    proxy.add_fault(Fault::new(
        Matcher::put().path_contains("/big"),
        FaultAction::StallRequestBody { after: 64 * 1024 },
    ));
    let err = impatient
        .put_object()
        .bucket(&bucket)
        .key("big")
        .body(ByteStream::from(big.clone()))
        .send()
        .await
        .expect_err("a stalled PUT times out");
    assert!(matches!(err, aws_sdk_s3::error::SdkError::TimeoutError(_)), "{err:?}");
    let r = proxy.requests().into_iter().find(|r| r.key.as_deref() == Some("big")).unwrap();
    match r.outcome {
        Some(Outcome::Stalled { body_bytes }) => {
            assert!((64 * 1024..4 << 20).contains(&body_bytes), "{body_bytes} bytes read")
        }
        o => panic!("{o:?}"),
    }
    let head = s3s.client().head_object().bucket(&bucket).key("big").send().await;
    assert!(head.is_err(), "a stalled PUT reached the server");

    // A GET whose body stops after 1000 bytes: the headers arrive, then 1000 bytes, then
    // nothing (the stall is an absence: nothing more within 2 s).
    put(&s3s.client(), &bucket, "small", &big[..100_000]).await;
    proxy.add_fault(Fault::new(
        Matcher::get().path_contains("/small"),
        FaultAction::StallResponseBody { after: 1000 },
    ));
    let out = impatient.get_object().bucket(&bucket).key("small").send().await.unwrap();
    assert_eq!(out.content_length(), Some(100_000));
    let mut body = out.body.into_inner();
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len()),
            Ok(other) => panic!("the body ended: {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(got, 1000);

    // A listing of 5 keys in pages of 2: the SDK's paginator sees all 5 in 3 requests, the
    // first forwarded, the others answered from the proxy's copy.
    let list = Matcher::get().query_contains("list-type=2");
    proxy.add_fault(Fault::new(list.clone(), FaultAction::PageListing { max_keys: 2 }).always());
    for k in ["p/1", "p/2", "p/3", "p/4"] {
        put(&s3s.client(), &bucket, k, b"x").await;
    }
    let client = zib_testkit::s3_client(&proxy.endpoint());
    let mut pages = client.list_objects_v2().bucket(&bucket).into_paginator().send();
    let mut keys = Vec::new();
    while let Some(p) = pages.next().await {
        keys.extend(p.unwrap().contents().iter().map(|o| o.key().unwrap().to_owned()));
    }
    assert_eq!(keys, ["p/1", "p/2", "p/3", "p/4", "small"]);
    let outcomes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| list.matches_request(r))
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [Some(Outcome::Forwarded(200)), Some(Outcome::Injected(200)), Some(Outcome::Injected(200))]
    );
}
