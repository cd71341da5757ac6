//! The daemon-wide bandwidth limits (`[daemon] max_upload_rate`, `max_download_rate`): one
//! shared token bucket per direction (zib-core `token_bucket` does the arithmetic), taken
//! from around the bytes actually sent or received, so that parallel PUTs and parallel jobs
//! together stay under the rate. zrepl#339: unthrottled backups can overload the link others
//! need.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use aws_smithy_types::{body::SdkBody, byte_stream::ByteStream};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use zib_core::token_bucket::TokenBucket;

use crate::sync::locked;

/// One direction's limit; clones share the bucket.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    bucket: Arc<Mutex<TokenBucket>>,
    origin: Instant,
}

impl Bandwidth {
    /// A limit of `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(rate, Default::default()))),
            origin: Instant::now(),
        }
    }

    /// Waits until `n` more bytes may go.
    pub async fn take(&self, n: u64) {
        let wait = locked(&self.bucket).take(self.origin.elapsed(), n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The body of a PUT of the file at `path`, read in 64 KiB pieces, each sent only when
    /// the limit allows. Retryable: each attempt reads the file again from its start.
    pub fn file_body(&self, path: PathBuf) -> ByteStream {
        let bw = self.clone();
        ByteStream::new(SdkBody::retryable(move || {
            let reading = Reading { path: path.clone(), file: None, bw: bw.clone(), failed: false };
            let frames = futures::stream::unfold(reading, Reading::next_frame);
            SdkBody::from_body_1_x(http_body_util::StreamBody::new(frames))
        }))
    }
}

/// One attempt's pass over a spooled chunk.
struct Reading {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    bw: Bandwidth,
    failed: bool,
}

type Frame = Result<http_body::Frame<Bytes>, std::io::Error>;

impl Reading {
    async fn next_frame(mut self) -> Option<(Frame, Self)> {
        if self.failed {
            return None;
        }
        match self.read().await {
            Ok(b) if b.is_empty() => None,
            Ok(b) => {
                self.bw.take(b.len() as u64).await;
                Some((Ok(http_body::Frame::data(b)), self))
            }
            Err(e) => {
                self.failed = true;
                Some((Err(e), self))
            }
        }
    }

    async fn read(&mut self) -> std::io::Result<Bytes> {
        if self.file.is_none() {
            self.file = Some(tokio::fs::File::open(&self.path).await?);
        }
        let mut buf = vec![0u8; zib_core::token_bucket::MIN_BURST as usize];
        let n = self.file.as_mut().expect("opened").read(&mut buf).await?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }
}
