//! The only place that talks to S3: chunk PUTs, manifests, listings, HEAD, thaw, GET, delete.
//!
//! Every chunk is one plain PutObject (never multipart) with `If-None-Match: *`, so nothing
//! already stored is ever overwritten, and with `x-amz-checksum-sha256`, so the server refuses
//! bytes that were damaged on the way. Transient failures (throttling, 5xx, dropped
//! connections, an attempt that took longer than `target.request_timeout_secs`, a 409
//! `ConditionalRequestConflict` on a conditional PUT) are retried by
//! the SDK's standard retry strategy with exponential backoff, a bounded number of times: a
//! hung connection never holds a job forever.

use std::{path::Path, time::Duration};

pub mod listing_groups;
pub mod request_count;

use crate::{bandwidth::Bandwidth, outside::S3Credentials};
use aws_sdk_s3::{
    Client,
    config::{
        Region, RequestChecksumCalculation, ResponseChecksumValidation,
        interceptors::InterceptorContext,
        retry::{ClassifyRetry, RetryAction, RetryConfig},
        timeout::TimeoutConfig,
    },
    error::{ProvideErrorMetadata, SdkError},
    operation::put_object::PutObjectError,
    primitives::ByteStream,
    types::{ChecksumAlgorithm, ChecksumMode, GlacierJobParameters, RestoreRequest, Tier},
};
use base64::Engine as _;
use bytes::Bytes;
use zib_core::{
    StorageClass,
    config::Config,
    manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError},
    pricing::RestoreTier,
};

/// User metadata key carrying the chunk's SHA-256 (hex), readable by HEAD even on archived
/// objects and on servers that do not keep additional checksums.
pub const META_SHA256: &str = "zib-sha256";

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {op} s3://{bucket}/{key}: {message}")]
    Request {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
        code: Option<String>,
        status: Option<u16>,
    },
    #[error("reading {path}: {source}")]
    Local { path: String, source: std::io::Error },
    #[error(
        "s3://{bucket}/{key} already exists with different content ({detail}); zib never overwrites stored data"
    )]
    Conflict { bucket: String, key: String, detail: String },
    #[error("s3://{bucket}/{key} is larger than the {limit} bytes zib reads of such an object")]
    TooLarge { bucket: String, key: String, limit: usize },
}

impl S3Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Request { code, .. } => code.as_deref(),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Request { status, .. } => *status,
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.kind() == S3ErrorKind::NotFound
    }
    /// What went wrong, from the S3 error code (or the HTTP status when there is none): the
    /// only place that reads S3's codes.
    pub fn kind(&self) -> S3ErrorKind {
        match self {
            Self::Conflict { .. } => return S3ErrorKind::Conflict,
            Self::TooLarge { .. } => return S3ErrorKind::TooLarge,
            _ => {}
        }
        classify(self.code(), self.status())
    }
}

/// What an S3 error code (or, without one, the HTTP status) means to zib.
fn classify(code: Option<&str>, status: Option<u16>) -> S3ErrorKind {
    let by_code = match code {
        Some("NoSuchKey" | "NotFound") => S3ErrorKind::NotFound,
        Some("AccessDenied") => S3ErrorKind::AccessDenied,
        Some("InvalidObjectState") => S3ErrorKind::NotThawed,
        Some("PreconditionFailed") => S3ErrorKind::Conflict,
        Some("ConditionalRequestConflict" | "OperationAborted") => S3ErrorKind::ConcurrentWrite,
        Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded") => {
            S3ErrorKind::Throttled
        }
        _ => S3ErrorKind::Other,
    };
    match (by_code, status) {
        (S3ErrorKind::Other, Some(404)) => S3ErrorKind::NotFound,
        (S3ErrorKind::Other, Some(403)) => S3ErrorKind::AccessDenied,
        (S3ErrorKind::Other, Some(412)) => S3ErrorKind::Conflict,
        (S3ErrorKind::Other, Some(429 | 503)) => S3ErrorKind::Throttled,
        (k, _) => k,
    }
}

/// The kinds of S3 failure zib acts on; everything else is [`S3ErrorKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// No such key (404, `NoSuchKey`).
    NotFound,
    /// The credentials may not do this (403, `AccessDenied`).
    AccessDenied,
    /// An archived object without a readable thawed copy (`InvalidObjectState`).
    NotThawed,
    /// A conditional write lost (412), or the key holds different content.
    Conflict,
    /// Another write to the key was in progress (409 `ConditionalRequestConflict`, or
    /// `OperationAborted`): S3 says to try again, and the client does (see
    /// [`ConcurrentWriteRetry`]).
    ConcurrentWrite,
    /// The server asks to slow down (`SlowDown`, 503, 429).
    Throttled,
    /// The object is larger than the caller's limit for it.
    TooLarge,
    Other,
}

fn req_err<
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
>(
    op: &'static str,
    bucket: &str,
    key: &str,
    e: SdkError<E, R>,
) -> S3Error {
    let status = e.raw_response().map(|r| r.http_status());
    let code = e.code().map(str::to_owned);
    let message = match (&e, e.message()) {
        (SdkError::TimeoutError(_), _) => format!(
            "timed out on every attempt (target.max_attempts), each given target.request_timeout_secs (a chunk PUT more): {}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        ),
        (_, Some(m)) => format!("{} ({})", m, code.as_deref().unwrap_or("error")),
        (SdkError::ServiceError(_), None) => {
            format!("{} (HTTP {})", code.as_deref().unwrap_or("service error"), status.unwrap_or(0))
        }
        _ => format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&e)),
    };
    S3Error::Request { op, bucket: bucket.into(), key: key.into(), message, code, status }
}

/// Tells the SDK's retry strategy that a PUT which met a concurrent conditional write (409
/// `ConditionalRequestConflict`) is to be tried again, with the same backoff and the same
/// `max_attempts` as throttling; the SDK's own classifiers do not know that code.
#[derive(Debug)]
pub struct ConcurrentWriteRetry;

impl ClassifyRetry for ConcurrentWriteRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(e)) = ctx.output_or_error() else { return RetryAction::NoActionIndicated };
        let put = e.as_operation_error().and_then(|e| e.downcast_ref::<PutObjectError>());
        let status = ctx.response().map(|r| r.status().as_u16());
        match put {
            Some(p) if classify(p.code(), status) == S3ErrorKind::ConcurrentWrite => {
                RetryAction::transient_error()
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "zib: concurrent conditional write"
    }
}

/// Lets `req_err` read the HTTP status of the raw response type the SDK gives.
pub trait HttpStatus {
    fn http_status(&self) -> u16;
}
impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// What HEAD says about an object.
#[derive(Debug, Clone, Default)]
pub struct ObjectHead {
    pub size: u64,
    pub storage_class: Option<String>,
    /// Hex SHA-256, from the additional checksum or zib's metadata.
    pub sha256: Option<String>,
    /// The raw `x-amz-restore` header, if any.
    pub restore: Option<String>,
}

/// A manifest that could not be read back: the request failed (or the key is missing), or what
/// is stored there is not a manifest zib can use.
#[derive(Debug, thiserror::Error)]
pub enum ManifestGetError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

/// Result of a conditional chunk PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The key existed already with the same size and SHA-256 (a PUT that succeeded before a crash).
    AlreadyPresent,
}

#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// As S3 lists it (quoted); the MD5 of the body for a single-part PUT without SSE-KMS.
    pub etag: Option<String>,
    pub storage_class: Option<String>,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Per attempt of a request (a chunk PUT gets more, see [`put_attempt_timeout`]), and the
    /// longest a GET body may deliver nothing.
    request_timeout: Duration,
    /// `[daemon] max_upload_rate`: chunk PUT bodies are sent within it.
    upload_limit: Option<Bandwidth>,
    /// `[daemon] max_download_rate`: GET bodies are read within it.
    download_limit: Option<Bandwidth>,
    /// Trees' shared listings; every PUT and DELETE is recorded in it.
    listing_groups: std::sync::Arc<listing_groups::ListingGroups>,
}

/// How many GETs an object's body is read with when it breaks off or stalls mid-way (each
/// GET's request is retried by the SDK on its own).
pub const BODY_ATTEMPTS: u32 = 3;

/// Without the client: its config holds the credentials, whose `Debug` shows the access key ID.
impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("request_timeout", &self.request_timeout)
            .field("upload_limit", &self.upload_limit)
            .field("download_limit", &self.download_limit)
            .finish_non_exhaustive()
    }
}

/// The slowest upload rate a chunk PUT is given time for: a slow link that still moves bytes
/// never times out.
pub const MIN_PUT_RATE: u64 = 64 * 1024;

/// How long one attempt of a PUT of `size` bytes may take: the request timeout plus one second
/// per [`MIN_PUT_RATE`] bytes (a 256 MiB chunk: 120 s + 4096 s).
pub fn put_attempt_timeout(request_timeout: Duration, size: u64) -> Duration {
    request_timeout + Duration::from_secs(size.div_ceil(MIN_PUT_RATE))
}

/// How the thaw of an object stands, from HEAD's `x-amz-restore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThawState {
    /// No archive class: read directly.
    NotArchived,
    NotRequested,
    InProgress,
    /// Restored copy available (until the given expiry, as S3 wrote it).
    Ready {
        expiry: Option<String>,
    },
}

pub fn thaw_state(head: &ObjectHead) -> ThawState {
    let archived =
        head.storage_class.as_deref().is_some_and(|c| c == "GLACIER" || c == "DEEP_ARCHIVE");
    if !archived {
        return ThawState::NotArchived;
    }
    match head.restore.as_deref() {
        None => ThawState::NotRequested,
        Some(r) if r.contains("ongoing-request=\"true\"") => ThawState::InProgress,
        Some(r) => ThawState::Ready {
            expiry: r
                .split("expiry-date=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(str::to_owned),
        },
    }
}

/// Where and how to reach a bucket: the config's `[target]`, or a restore's flags over it.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Settings {
    pub region: String,
    /// A non-AWS server (or a test's) instead of the region's AWS endpoint.
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// Attempts per request, the first included (the SDK's standard retry with backoff).
    pub max_attempts: u32,
    /// Per attempt of a request (a chunk PUT gets more: [`put_attempt_timeout`]).
    pub request_timeout: Duration,
    pub bucket: String,
}

impl S3Settings {
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.target;
        Self {
            region: t.region.clone(),
            endpoint: t.endpoint.as_ref().map(|e| e.0.clone()),
            path_style: cfg.force_path_style(),
            max_attempts: t.max_attempts,
            request_timeout: Duration::from_secs(t.request_timeout_secs),
            bucket: t.bucket.0.clone(),
        }
    }
}

impl S3Store {
    /// Builds a client from the config's `[target]` with `[daemon]`'s bandwidth limits;
    /// credentials come from the standard AWS chain (environment, profile, instance role)
    /// unless given, never from the config file.
    pub async fn from_config(cfg: &Config, credentials: Option<&S3Credentials>) -> Self {
        let d = &cfg.daemon;
        Self::connect(&S3Settings::from_config(cfg), credentials).await.with_limits(
            d.max_upload_rate.map(|r| Bandwidth::new(r.0)),
            d.max_download_rate.map(|r| Bandwidth::new(r.0)),
        )
    }

    /// The same store with these bandwidth limits (shared with every clone of them).
    pub fn with_limits(self, upload: Option<Bandwidth>, download: Option<Bandwidth>) -> Self {
        Self { upload_limit: upload, download_limit: download, ..self }
    }

    /// The same client, limits and timeouts, on another bucket (a restore from a bucket that is
    /// not the configured one: same endpoint and credentials).
    pub fn with_bucket(&self, bucket: &str) -> Self {
        Self { bucket: bucket.to_owned(), listing_groups: Default::default(), ..self.clone() }
    }

    pub async fn connect(settings: &S3Settings, credentials: Option<&S3Credentials>) -> Self {
        let S3Settings { region, endpoint, path_style, max_attempts, request_timeout, bucket } =
            settings;
        let (max_attempts, request_timeout, path_style) =
            (*max_attempts, *request_timeout, *path_style);
        let retry = RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(20));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c.clone());
        }
        let sdk = loader
            .region(Region::new(region.clone()))
            .retry_config(retry)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(request_timeout)
                    .build(),
            )
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(path_style)
            .retry_classifier(ConcurrentWriteRetry)
            .interceptor(request_count::CountRequests)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = endpoint {
            b = b.endpoint_url(ep);
        }
        Self {
            client: Client::from_conf(b.build()),
            bucket: bucket.clone(),
            request_timeout,
            upload_limit: None,
            download_limit: None,
            listing_groups: Default::default(),
        }
    }

    /// Wraps a client built elsewhere (tests, or callers with their own credential setup);
    /// GET bodies get the default request timeout. Its requests are counted like every other.
    pub fn from_client(client: Client, bucket: &str) -> Self {
        let conf = client.config().to_builder().interceptor(request_count::CountRequests).build();
        Self {
            client: Client::from_conf(conf),
            bucket: bucket.to_owned(),
            request_timeout: Duration::from_secs(zib_core::config::DEFAULT_REQUEST_TIMEOUT_SECS),
            upload_limit: None,
            download_limit: None,
            listing_groups: Default::default(),
        }
    }

    /// Reads some bytes of a GET body, giving up (`TimedOut`) when nothing arrives within the
    /// request timeout: a stalled body must not hold a restore forever.
    pub async fn read_body<R: tokio::io::AsyncRead + Unpin>(
        &self,
        body: &mut R,
        buf: &mut [u8],
    ) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(self.request_timeout, body.read(buf)).await {
            Ok(Ok(n)) => {
                if let Some(limit) = &self.download_limit {
                    limit.take(n as u64).await;
                }
                Ok(n)
            }
            Ok(r) => r,
            Err(_) => Err(self.body_stalled()),
        }
    }

    /// The next piece of a GET body as the connection delivered it (None at its end), without
    /// copying it; like [`S3Store::read_body`], `TimedOut` when nothing arrives within the
    /// request timeout, and within the download limit.
    pub async fn next_body_piece(&self, body: &mut ByteStream) -> std::io::Result<Option<Bytes>> {
        match tokio::time::timeout(self.request_timeout, body.next()).await {
            Ok(Some(Ok(piece))) => {
                if let Some(limit) = &self.download_limit {
                    limit.take(piece.len() as u64).await;
                }
                Ok(Some(piece))
            }
            Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
            Ok(None) => Ok(None),
            Err(_) => Err(self.body_stalled()),
        }
    }

    fn body_stalled(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no data for {} s (target.request_timeout_secs)",
                self.request_timeout.as_secs()
            ),
        )
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One conditional PUT (`If-None-Match: *`) with the SHA-256 as additional checksum (which
    /// the server verifies) and as metadata. `Ok(false)`: the key exists already (412).
    async fn put_if_absent(
        &self,
        key: &str,
        body: ByteStream,
        size: u64,
        sha256_hex: &str,
        class: StorageClass,
        content_type: &str,
    ) -> Result<bool, S3Error> {
        self.listing_groups.wrote(key);
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .content_length(size as i64)
            .content_type(content_type)
            .storage_class(class.as_str().into())
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(hex_to_b64(sha256_hex))
            .metadata(META_SHA256, sha256_hex)
            .if_none_match("*")
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(put_attempt_timeout(self.request_timeout, size))
                        .build(),
                ),
            )
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = req_err("PutObject", &self.bucket, key, e);
                if e.code() == Some("PreconditionFailed") || e.status() == Some(412) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Stores a spooled chunk with `If-None-Match: *`. On 412 the existing object is accepted
    /// only if its size and SHA-256 match; otherwise it is a [`S3Error::Conflict`].
    pub async fn put_chunk(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        sha256_hex: &str,
        class: StorageClass,
    ) -> Result<PutOutcome, S3Error> {
        let body = match &self.upload_limit {
            Some(limit) => limit.file_body(path.to_owned()),
            None => ByteStream::from_path(path).await.map_err(|e| S3Error::Local {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })?,
        };
        if self
            .put_if_absent(key, body, size, sha256_hex, class, "application/octet-stream")
            .await?
        {
            return Ok(PutOutcome::Stored);
        }
        match self.accept_existing(key, size, sha256_hex).await {
            Ok(()) => Ok(PutOutcome::AlreadyPresent),
            Err(e) if e.is_not_found() => Err(self.refused_yet_absent(key)),
            Err(e) => Err(e),
        }
    }

    /// A conditional PUT refused because the key exists (412), yet nothing is there (deleted
    /// meanwhile, or a server that answers wrongly): nothing stored, nothing to accept.
    fn refused_yet_absent(&self, key: &str) -> S3Error {
        S3Error::Request {
            op: "PutObject",
            bucket: self.bucket.clone(),
            key: key.into(),
            message: "refused with 412 PreconditionFailed (If-None-Match: the key exists), yet no object is there; nothing was stored".into(),
            code: Some("PreconditionFailed".into()),
            status: Some(412),
        }
    }

    /// On resume, the first chunk not yet recorded may have been stored just before a crash:
    /// a HEAD (cheap) avoids sending up to 5 GB again. Falls back to [`S3Store::put_chunk`].
    pub async fn put_chunk_probing(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        sha256_hex: &str,
        class: StorageClass,
    ) -> Result<PutOutcome, S3Error> {
        match self.accept_existing(key, size, sha256_hex).await {
            Ok(()) => Ok(PutOutcome::AlreadyPresent),
            Err(e) if e.is_not_found() => self.put_chunk(key, path, size, sha256_hex, class).await,
            Err(e) => Err(e),
        }
    }

    async fn accept_existing(&self, key: &str, size: u64, sha256_hex: &str) -> Result<(), S3Error> {
        let head = self.head(key).await?;
        let conflict = |detail: String| S3Error::Conflict {
            bucket: self.bucket.clone(),
            key: key.into(),
            detail,
        };
        if head.size != size {
            return Err(conflict(format!(
                "stored size {} but this chunk is {size} bytes",
                head.size
            )));
        }
        match head.sha256.as_deref() {
            Some(h) if h == sha256_hex => Ok(()),
            Some(h) => Err(conflict(format!("stored SHA-256 {h}, this chunk's is {sha256_hex}"))),
            None => Err(conflict("the stored object has no SHA-256 to compare".into())),
        }
    }

    /// HEAD with checksum mode: size, storage class, SHA-256, restore status.
    pub async fn head(&self, key: &str) -> Result<ObjectHead, S3Error> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| req_err("HeadObject", &self.bucket, key, e))?;
        let from_checksum = out.checksum_sha256().and_then(|b| {
            // A full-object checksum is plain base64; a composite one ends in "-N" and is not ours.
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .filter(|v| v.len() == 32)
                .map(hex::encode)
        });
        let from_meta =
            out.metadata().and_then(|m| m.get(META_SHA256)).map(|s| s.to_ascii_lowercase());
        Ok(ObjectHead {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            storage_class: out.storage_class().map(|c| c.as_str().to_owned()),
            sha256: from_checksum.or(from_meta),
            restore: out.restore().map(str::to_owned),
        })
    }

    /// Writes a small object in STANDARD with `If-None-Match: *`. If the key exists with the
    /// very same bytes (a commit that succeeded before a crash) that counts as success.
    pub async fn put_small_once(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<PutOutcome, S3Error> {
        let sha = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        if self
            .put_if_absent(
                key,
                ByteStream::from(bytes.clone()),
                size,
                &sha,
                StorageClass::Standard,
                content_type,
            )
            .await?
        {
            return Ok(PutOutcome::Stored);
        }
        // Anything longer than ours differs: read no more than one byte past it.
        let stored = match self.read_at_most(key, bytes.len()).await {
            Err(e) if e.is_not_found() => return Err(self.refused_yet_absent(key)),
            r => r?,
        };
        if stored.as_ref() == Some(&bytes) {
            Ok(PutOutcome::AlreadyPresent)
        } else {
            Err(S3Error::Conflict {
                bucket: self.bucket.clone(),
                key: key.into(),
                detail: "a different object is stored under this key".into(),
            })
        }
    }

    /// Reads a whole (small) object, refusing anything larger than `limit` bytes.
    pub async fn get_bytes(&self, key: &str, limit: usize) -> Result<Vec<u8>, S3Error> {
        self.read_at_most(key, limit).await?.ok_or_else(|| S3Error::TooLarge {
            bucket: self.bucket.clone(),
            key: key.into(),
            limit,
        })
    }

    /// Reads and parses the manifest stored under `key` (at most [`MAX_MANIFEST_BYTES`]); one
    /// that is not zib's manifest of that key ([`Manifest::check_key`]) is invalid.
    pub async fn get_manifest(&self, key: &str) -> Result<Manifest, ManifestGetError> {
        let bytes = self.get_bytes(key, MAX_MANIFEST_BYTES).await?;
        let m = Manifest::from_json(key, &bytes)?;
        m.check_key(key)?;
        Ok(m)
    }

    /// A whole object of at most `limit` bytes; None if it is larger. A body that breaks off
    /// or stalls (nothing for the request timeout) is read again from a new GET, up to
    /// [`BODY_ATTEMPTS`] in all: the SDK retries a request, not its streamed body.
    async fn read_at_most(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, S3Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self.get(key).await?;
            let mut body = out.into_async_read();
            let mut buf = Vec::new();
            let mut part = vec![0u8; 64 * 1024];
            let read: std::io::Result<()> = async {
                while buf.len() <= limit {
                    let n = self.read_body(&mut body, &mut part).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&part[..n]);
                }
                Ok(())
            }
            .await;
            match read {
                Ok(()) => return Ok((buf.len() <= limit).then_some(buf)),
                Err(e) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(%key, error = %e, attempt, "reading the body broke off; retrying");
                }
                Err(e) => {
                    return Err(S3Error::Request {
                        op: "GetObject",
                        bucket: self.bucket.clone(),
                        key: key.into(),
                        message: format!("reading body ({BODY_ATTEMPTS} attempts): {e}"),
                        code: None,
                        status: None,
                    });
                }
            }
        }
    }

    /// Starts a GET; the body streams.
    pub async fn get(&self, key: &str) -> Result<ByteStream, S3Error> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| req_err("GetObject", &self.bucket, key, e))?;
        Ok(out.body)
    }

    /// Every object under a dataset's key `root`: from its tree's shared listing where that
    /// is good and saves requests ([`listing_groups`]), else [`S3Store::list`].
    pub async fn list_root(&self, root: &str) -> Result<Vec<ListedObject>, S3Error> {
        self.listing_groups.list_root(self, root).await
    }

    /// The trees' listing groups: (key prefix, members); see [`listing_groups`].
    pub fn set_listing_groups(&self, groups: Vec<(String, usize)>) {
        self.listing_groups.set(groups);
    }

    /// Every object under `prefix`, in key order (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, S3Error> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| req_err("ListObjectsV2", &self.bucket, prefix, e))?;
            for o in page.contents() {
                out.push(ListedObject {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_owned),
                    storage_class: o.storage_class().map(|c| c.as_str().to_owned()),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The object's tags (GetObjectTagging), as (key, value) pairs.
    pub async fn tags(&self, key: &str) -> Result<Vec<(String, String)>, S3Error> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| req_err("GetObjectTagging", &self.bucket, key, e))?;
        Ok(out.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect())
    }

    /// Deletes an object. Deleting a key that is already gone succeeds (S3 answers 204 either
    /// way), so a deletion that is repeated after an interruption is harmless.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.listing_groups.wrote(key);
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = req_err("DeleteObject", &self.bucket, key, e);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Asks S3 to thaw an archived object for `days`. "Already in progress" counts as asked.
    pub async fn request_thaw(
        &self,
        key: &str,
        tier: RestoreTier,
        days: i32,
    ) -> Result<(), S3Error> {
        let tier = match tier {
            RestoreTier::Bulk => Tier::Bulk,
            RestoreTier::Standard => Tier::Standard,
        };
        let params = GlacierJobParameters::builder().tier(tier).build().expect("tier is set");
        let req = RestoreRequest::builder().days(days).glacier_job_parameters(params).build();
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(key)
            .restore_request(req)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = req_err("RestoreObject", &self.bucket, key, e);
                if e.code() == Some("RestoreAlreadyInProgress") { Ok(()) } else { Err(e) }
            }
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn hex_to_b64(h: &str) -> String {
    let raw = hex::decode(h).expect("sha256 hex computed by zib");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_error(code: Option<&str>, status: Option<u16>) -> S3Error {
        S3Error::Request {
            op: "GetObject",
            bucket: "b".into(),
            key: "k".into(),
            message: "m".into(),
            code: code.map(Into::into),
            status,
        }
    }

    #[test]
    fn error_kinds_come_from_the_code_then_the_status() {
        use S3ErrorKind as K;
        for (code, status, kind) in [
            (Some("NoSuchKey"), Some(404), K::NotFound),
            (None, Some(404), K::NotFound),
            (Some("AccessDenied"), Some(403), K::AccessDenied),
            (None, Some(403), K::AccessDenied),
            (Some("InvalidObjectState"), Some(403), K::NotThawed),
            (Some("PreconditionFailed"), Some(412), K::Conflict),
            (Some("ConditionalRequestConflict"), Some(409), K::ConcurrentWrite),
            (Some("RestoreAlreadyInProgress"), Some(409), K::Other),
            (Some("SlowDown"), Some(503), K::Throttled),
            (Some("InternalError"), Some(500), K::Other),
            (None, None, K::Other),
        ] {
            assert_eq!(request_error(code, status).kind(), kind, "{code:?} {status:?}");
        }
        let e = S3Error::Conflict { bucket: "b".into(), key: "k".into(), detail: "d".into() };
        assert_eq!(e.kind(), K::Conflict);
        assert!(request_error(None, Some(404)).is_not_found());
    }

    #[test]
    fn a_chunk_put_gets_time_for_a_slow_link() {
        let base = Duration::from_secs(120);
        assert_eq!(put_attempt_timeout(base, 0), base);
        assert_eq!(put_attempt_timeout(base, 1), base + Duration::from_secs(1));
        // 256 MiB at 64 KiB/s is 4096 s.
        assert_eq!(put_attempt_timeout(base, 256 << 20), Duration::from_secs(120 + 4096));
    }

    #[test]
    fn thaw_states_from_headers() {
        let mut h = ObjectHead { storage_class: Some("DEEP_ARCHIVE".into()), ..Default::default() };
        assert_eq!(thaw_state(&h), ThawState::NotRequested);
        h.restore = Some("ongoing-request=\"true\"".into());
        assert_eq!(thaw_state(&h), ThawState::InProgress);
        h.restore =
            Some("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"".into());
        assert_eq!(
            thaw_state(&h),
            ThawState::Ready { expiry: Some("Fri, 21 Dec 2012 00:00:00 GMT".into()) }
        );
        h.storage_class = None;
        assert_eq!(thaw_state(&h), ThawState::NotArchived);
    }

    #[test]
    fn checksum_encoding() {
        let h = sha256_hex(b"abc");
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex_to_b64(&h), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }
}
