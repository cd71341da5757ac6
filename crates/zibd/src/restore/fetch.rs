//! Fetching a chunk: wait until it is readable (asking for a thaw again if an earlier one
//! expired), download it to a spool file while hashing (in one pass, a blocking thread hashing
//! and writing beside the network), and check its size and SHA-256 (or an adopted chunk's MD5)
//! against the manifest. Nothing unverified is ever handed on.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use zib_core::{DatasetName, manifest::ChunkRecord, pricing::RestoreTier};

use super::{
    PathError, PollBackoff, RestoreError, RestoreProgress, io_err,
    thaw::{ChunkThaw, Rethaw, not_thawed, wait_ready},
};
use crate::{
    s3::{S3ErrorKind, S3Store},
    spool::SpoolFile,
};

/// Everything a chunk download needs, shareable across concurrent downloads.
#[derive(Clone, Copy)]
pub(super) struct FetchCtx<'a> {
    pub(super) s3: &'a S3Store,
    pub(super) tier: RestoreTier,
    pub(super) days: u32,
    pub(super) poll: PollBackoff,
    pub(super) cancel: &'a CancellationToken,
    pub(super) progress: &'a watch::Sender<RestoreProgress>,
    pub(super) target: &'a DatasetName,
    pub(super) ready_ahead: &'a std::sync::atomic::AtomicU64,
    pub(super) rethaw: &'a Rethaw,
}

/// What a finished download reports back to the receiver.
pub(super) struct Fetched {
    pub(super) index: usize,
    /// The verified chunk, removed when dropped.
    pub(super) file: SpoolFile,
    pub(super) thaw: ChunkThaw,
    /// Found archived although neither the manifest nor the record said so.
    pub(super) archived: bool,
}

/// Waits until chunk `c` is readable (asking for a thaw again if an earlier one expired),
/// downloads it to `path` while hashing, and checks size and SHA-256. The file exists on Ok
/// only (a fetch that fails or is dropped removes it); nothing unverified is ever returned.
pub(super) async fn fetch_chunk(
    ctx: FetchCtx<'_>,
    index: usize,
    c: &ChunkRecord,
    count_ready: bool,
    needs_thaw: bool,
    path: PathBuf,
) -> Result<Fetched, RestoreError> {
    let mut t = ChunkThaw::default();
    let mut counted = !count_ready;
    let mut needs_thaw = needs_thaw;
    let mut found_archived = false;
    let file = SpoolFile::new(path);
    loop {
        if needs_thaw {
            wait_ready(ctx, &c.key, &mut t).await?;
            if !counted {
                counted = true;
                ctx.ready_ahead.fetch_add(1, Ordering::Relaxed);
                ctx.progress.send_modify(|p| p.thaw_ready += 1);
            }
        }
        match download(ctx, c, file.path()).await {
            Ok(()) => return Ok(Fetched { index, file, thaw: t, archived: found_archived }),
            Err(DownloadError::NotThawed) => {
                not_thawed(ctx, &c.key, needs_thaw, &mut t).await?;
                if !needs_thaw {
                    // Archived behind the manifest's back: thawed like the others from now on.
                    found_archived = true;
                    needs_thaw = true;
                    counted = false;
                    ctx.progress.send_modify(|p| p.thaw_needed += 1);
                }
            }
            Err(DownloadError::Other(e)) => return Err(e),
        }
    }
}

enum DownloadError {
    NotThawed,
    Other(RestoreError),
}

impl From<RestoreError> for DownloadError {
    fn from(e: RestoreError) -> Self {
        Self::Other(e)
    }
}

impl From<PathError> for DownloadError {
    fn from(e: PathError) -> Self {
        Self::Other(e.into())
    }
}

/// GET into `path`, hashing; verifies size and SHA-256 against the manifest. Retries a body
/// that breaks off mid-way (the SDK retries only the request itself). This task reads the body
/// and gathers it into pieces of [`PIECE`] bytes; a blocking thread hashes each piece and
/// writes it to the spool file (one pass over the bytes, the hash beside the network), at most
/// [`PIECES_QUEUED`] pieces behind: memory stays bounded whatever the chunk size.
async fn download(ctx: FetchCtx<'_>, c: &ChunkRecord, path: &Path) -> Result<(), DownloadError> {
    let bucket = ctx.s3.bucket();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut body = match ctx.s3.get(&c.key).await {
            Ok(b) => b,
            Err(e) if e.kind() == S3ErrorKind::NotThawed => {
                return Err(DownloadError::NotThawed);
            }
            Err(e) if e.is_not_found() => {
                return Err(RestoreError::ChunkMissing {
                    bucket: bucket.into(),
                    key: c.key.clone(),
                }
                .into());
            }
            Err(e) => return Err(RestoreError::from(e).into()),
        };
        crate::state_store::remove_stale(path)
            .map_err(io_err("cannot remove stale spool file", path))?;
        let file = crate::state_store::new_private_file()
            .open(path)
            .map_err(io_err("cannot create spool file", path))?;
        let (pieces, queue) = mpsc::channel::<Bytes>(PIECES_QUEUED);
        // An adopted chunk (another tool's) is known by its MD5, checked as its SHA-256 would be.
        let with_md5 = c.md5.is_some();
        let writer = tokio::task::spawn_blocking(move || write_spool(file, queue, with_md5));
        let mut size = 0u64;
        let res: Result<(), std::io::Error> = async {
            let mut gathered = BytesMut::new();
            loop {
                let Some(piece) = ctx.s3.next_body_piece(&mut body).await? else { break };
                size += piece.len() as u64;
                if size > c.size {
                    return Ok(()); // too long: reported below, no need to read further
                }
                let full = if gathered.is_empty() && piece.len() >= PIECE {
                    piece
                } else {
                    if gathered.is_empty() {
                        gathered.reserve(PIECE);
                    }
                    gathered.extend_from_slice(&piece);
                    if gathered.len() < PIECE {
                        continue;
                    }
                    std::mem::take(&mut gathered).freeze()
                };
                if pieces.send(full).await.is_err() {
                    return Ok(()); // the writer failed: its error is reported below
                }
            }
            if !gathered.is_empty() {
                let _ = pieces.send(gathered.freeze()).await;
            }
            Ok(())
        }
        .await;
        drop(pieces);
        let written = writer.await.map_err(std::io::Error::other).and_then(|w| w);
        match res {
            Ok(()) => {}
            Err(e) if attempt < crate::s3::BODY_ATTEMPTS => {
                tracing::warn!(key = %c.key, error = %e, "download broke off; retrying");
                continue;
            }
            Err(e) => {
                return Err(io_err("downloading", Path::new(&c.key))(e).into());
            }
        }
        let (hasher, md5) = written.map_err(io_err("cannot write spool file", path))?;
        let sha = hex::encode(hasher.finalize());
        let detail = if size != c.size {
            Some(format!(
                "{}{size} bytes, the manifest says {}",
                if size > c.size { "more than " } else { "" },
                c.size
            ))
        } else if let (Some(want), Some(m)) = (&c.md5, md5) {
            let got = hex::encode(md5::Digest::finalize(m));
            (&got != want).then(|| format!("MD5 {got}, the manifest says {want}"))
        } else if sha != c.sha256 {
            Some(format!("SHA-256 {sha}, the manifest says {}", c.sha256))
        } else {
            None
        };
        if let Some(detail) = detail {
            let _ = tokio::fs::remove_file(path).await;
            tracing::error!(key = %c.key, %detail, "chunk failed verification");
            return Err(RestoreError::ChunkCorrupt {
                bucket: bucket.into(),
                key: c.key.clone(),
                detail,
            }
            .into());
        }
        ctx.progress.send_modify(|p| p.chunks_downloaded += 1);
        return Ok(());
    }
}

/// Bytes handed to the spool writer at once (a download gathers the body's pieces to this).
const PIECE: usize = 1 << 20;
/// Pieces a download may be ahead of its spool writer.
const PIECES_QUEUED: usize = 2;

/// The blocking half of a download: hashes each piece (SHA-256, and MD5 for an adopted chunk)
/// and writes it to `file`, until the download closes the queue.
fn write_spool(
    mut file: std::fs::File,
    mut queue: mpsc::Receiver<Bytes>,
    with_md5: bool,
) -> std::io::Result<(Sha256, Option<md5::Md5>)> {
    use std::io::Write;
    let mut sha = Sha256::new();
    let mut md5 = with_md5.then(<md5::Md5 as md5::Digest>::new);
    while let Some(piece) = queue.blocking_recv() {
        sha.update(&piece);
        if let Some(m) = md5.as_mut() {
            md5::Digest::update(m, &piece);
        }
        file.write_all(&piece)?;
    }
    Ok((sha, md5))
}
