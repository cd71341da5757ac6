//! aws-sdk-s3 clients and buckets for tests.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

/// Fixed test credentials: both local servers are started with them.
pub const TEST_ACCESS_KEY_ID: &str = "zibtest";
pub const TEST_SECRET_ACCESS_KEY: &str = "zibtestsecret";
pub const TEST_REGION: &str = "us-east-1";

/// The static test credentials as an SDK credentials value.
pub fn test_credentials() -> Credentials {
    Credentials::new(TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, None, None, "zib-testkit")
}

/// Environment for a child process (e.g. the daemon) that should talk to `endpoint` with the
/// test credentials through the normal AWS credential chain.
pub fn test_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY.to_string()),
        ("AWS_REGION", TEST_REGION.to_string()),
        ("AWS_DEFAULT_REGION", TEST_REGION.to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// An S3 config builder for a local endpoint: region, behavior version, path-style
/// addressing, static test credentials, checksums only when required. Tests may adjust it
/// (retry config, timeouts) before `build()`.
pub fn s3_config(endpoint: &str) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(TEST_REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(test_credentials())
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
}

/// An S3 client for a local endpoint (see [`s3_config`]).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(s3_config(endpoint).build())
}

/// A bucket name that is unique across tests, processes and runs against a shared server:
/// `zib-<prefix>-<pid>-<n>-<random>`, lowercase, at most 63 characters.
pub fn unique_bucket_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let rand: String = (0..6).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    format!("zib-{clean}-{}-{n}-{rand}", std::process::id())
}

/// Creates a uniquely named bucket (see [`unique_bucket_name`]) and returns its name.
/// Panics on failure.
pub async fn create_bucket(client: &aws_sdk_s3::Client, prefix: &str) -> String {
    let name = unique_bucket_name(prefix);
    if let Err(e) = client.create_bucket().bucket(&name).send().await {
        panic!("create_bucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
    }
    name
}

/// PUTs `data` as `bucket/key`; panics on failure.
pub async fn put_bytes(client: &aws_sdk_s3::Client, bucket: &str, key: &str, data: Vec<u8>) {
    if let Err(e) = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(data))
        .send()
        .await
    {
        panic!("PUT {bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
    }
}

/// Uploads `stream` as zfs-incremental-backup does: cut into chunks of `chunk_size`, each one
/// plain PUT of `<key>/<i>` (i from 0, decimal) as DEEP_ARCHIVE with `If-None-Match: *` and the
/// tool's tags; only the first `chunks` of them (a run the tool did not finish). Panics on
/// failure.
pub async fn legacy_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    stream: &[u8],
    chunk_size: usize,
    chunks: usize,
) {
    let count = stream.len().div_ceil(chunk_size);
    for (i, part) in stream.chunks(chunk_size).enumerate().take(chunks) {
        if let Err(e) = client
            .put_object()
            .bucket(bucket)
            .key(format!("{key}/{i}"))
            .storage_class(aws_sdk_s3::types::StorageClass::DeepArchive)
            .body(aws_sdk_s3::primitives::ByteStream::from(part.to_vec()))
            .tagging(format!(
                "file={key}&total_len={}&chunks_count={count}&chunk_size={chunk_size}&chunk_number={i}",
                stream.len()
            ))
            .if_none_match("*")
            .send()
            .await
        {
            panic!("PUT {bucket}/{key}/{i}: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
        }
    }
}

/// Every object in `bucket`, all pages of the listing, in key order; panics on failure.
pub async fn list_all(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<aws_sdk_s3::types::Object> {
    let mut objects = Vec::new();
    let mut token = None;
    loop {
        let out = match client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => panic!("LIST {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
        };
        objects.extend(out.contents().iter().cloned());
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return objects;
        }
    }
}

/// GETs `bucket/key` whole; panics on failure.
pub async fn get_bytes(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) => panic!("GET {bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
    };
    match out.body.collect().await {
        Ok(b) => b.into_bytes().to_vec(),
        Err(e) => panic!("GET {bucket}/{key}: reading the body: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_valid_and_unique() {
        let a = unique_bucket_name("Backup_Test with a very long prefix indeed");
        let b = unique_bucket_name("Backup_Test with a very long prefix indeed");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() >= 3 && n.len() <= 63, "{n}");
            assert!(
                n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.ends_with('-'));
        }
    }
}
