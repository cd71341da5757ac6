//! The receive of one stream: one `zfs receive -s -u` (an interrupted one aborted first), its
//! chunks fetched ahead (at most `parallel`, see `fetch`, downloading on while one is fed) and
//! passed to it in order only after their size and SHA-256 matched the manifest; the stream's
//! begin record checked before its first byte, its last chunk held back until the whole
//! stream's SHA-256 matched.

use std::{collections::VecDeque, path::Path, sync::atomic::Ordering};

use futures::{StreamExt, stream::FuturesOrdered};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use zib_core::{DatasetName, SnapName, restore_plan::PlanStep};

use super::{
    PathError, RestoreError, RestorePhase,
    fetch::{Fetched, fetch_chunk},
    io_err,
    run::Run,
};
use crate::{
    failpoint,
    zfs::{ReceiveOptions, ReceiveSink, StreamHeader, Zfs, ZfsError},
};

impl Run<'_> {
    /// Receives stream `i` from its first chunk into the target.
    pub(super) async fn receive_step(&mut self, i: usize) -> Result<(), RestoreError> {
        let zfs = &self.engine.zfs;
        let target = self.opts.target.clone();
        let step = self.file.rec().plan.steps[i].clone();

        // A receive that completed before a crash left its snapshot behind.
        if step.received_as(snapshot_guid(zfs, &target, &step.to.name).await?.as_deref()) {
            tracing::info!(%target, snapshot = %step.to.name, "stream already received (found its snapshot on the target)");
            return self.step_done(i).await;
        }
        // An interrupted `zfs receive -s` left partial state: a stored stream cannot resume at
        // the token's offset, so abort it and receive the stream again from its first chunk.
        if zfs.dataset_exists(target.as_str()).await? {
            if let Some(token) = zfs.get_property(target.as_str(), "receive_resume_token").await? {
                tracing::warn!(%target, snapshot = %step.to.name, token_len = token.len(), "aborting the interrupted partial receive (zfs receive -A); receiving that stream again from its first chunk");
                zfs.abort_partial_receive(&target).await?;
            }
        } else if !step.is_full() {
            return Err(RestoreError::Progress {
                path: self.file.path.clone(),
                message: format!(
                    "stream #{} is an incremental, but the target {target} is gone; remove this file to start over",
                    step.seq
                ),
            });
        }
        for c in &mut self.file.rec().chunks[i] {
            c.downloaded = false;
            c.received = false;
        }
        self.file.save().await?;

        // The stream's type comes from its begin record: the receive starts at its first chunk.
        let receive = ReceiveOptions {
            target: target.clone(),
            mountpoint: self.opts.mountpoint.clone(),
            full: step.is_full(),
            volume: false,
        };
        let n_steps = self.file.rec().plan.steps.len();
        self.publish(
            RestorePhase::Receiving,
            Some(format!(
                "receiving stream {}/{n_steps}: {} ({} chunks)",
                i + 1,
                step.to.name,
                step.chunks.len()
            )),
        );
        let mut sink = None;
        let fed = self.feed(i, &step, &receive, &mut sink).await;
        match (fed, sink) {
            (Ok(()), sink) => {
                // A stream of no chunks started no receive: it gets one with nothing to read.
                let sink = match sink {
                    Some(s) => s,
                    None => zfs.receive(&receive)?,
                };
                sink.finish().await?;
                self.step_done(i).await
            }
            (Err(Feed::ReceiveStopped(source)), sink) => {
                // zfs receive stopped reading: its exit status and stderr say why.
                if let Some(sink) = sink {
                    sink.finish().await?;
                }
                let target = Path::new(target.as_str());
                Err(io_err("zfs receive stopped reading its input", target)(source).into())
            }
            (Err(Feed::Failed(e)), sink) => {
                // Nothing unverified was written and the stream's last chunk was held back, so
                // this receive cannot commit; it has exited when the error is reported.
                if let Some(sink) = sink {
                    sink.abort().await;
                }
                Err(e)
            }
        }
    }

    /// Downloads step `i`'s chunks (at most `parallel` ahead) and writes each to the receive
    /// once it is verified, in order. The receive (`receive`, for a volume if the begin record
    /// says so) starts into `sink` when the first chunk has passed the header check. The last
    /// chunk is written only after the SHA-256 over the whole stream matched the manifest:
    /// until then the stream lacks its end, so a receive that is stopped can never have
    /// committed a stream the manifest does not describe.
    async fn feed(
        &mut self,
        i: usize,
        step: &PlanStep,
        receive: &ReceiveOptions,
        sink: &mut Option<ReceiveSink>,
    ) -> Result<(), Feed> {
        let spool = self.file.spool.clone();
        spool.create().await.map_err(io_err("cannot create spool directory", spool.dir()))?;
        let remaining: Vec<String> = self.file.rec().plan.steps[i..]
            .iter()
            .flat_map(|s| s.chunks.iter().map(|c| c.key.clone()))
            .collect();
        self.rethaw.remaining(remaining).await;
        let ctx = self.ctx();
        let run = i.to_string();
        let was_ready: Vec<bool> = self.file.rec().chunks[i].iter().map(|c| c.ready).collect();
        // Per chunk: the manifest's class, or the object's own as HEAD found it.
        let thaw_needed: Vec<bool> =
            self.file.rec().chunks[i].iter().map(|c| step.needs_thaw() || c.archived).collect();
        self.ready_ahead.store(0, Ordering::Relaxed);
        // Futures collected first (not mapped lazily): keeps the task's future provably Send.
        let futs: Vec<_> = step
            .chunks
            .iter()
            .enumerate()
            .map(|(j, c)| {
                fetch_chunk(
                    ctx,
                    j,
                    c,
                    thaw_needed[j] && !was_ready[j],
                    thaw_needed[j],
                    spool.chunk_path(&run, j as u64),
                )
            })
            .collect();
        // At most `parallel` chunks downloading or downloaded and waiting, plus the one being
        // written to the receive: `parallel + 1` spool files. Downloads go on while a chunk is
        // written (`alongside`), so the link is never idle while the receive is fed.
        let mut queued = futs.into_iter();
        let mut fetches = FuturesOrdered::new();
        let mut waiting = VecDeque::new();
        let parallel = self.parallel;
        let mut refill = |fetches: &mut FuturesOrdered<_>, waiting: &VecDeque<_>| {
            while fetches.len() + waiting.len() < parallel {
                let Some(f) = queued.next() else { break };
                fetches.push_back(f);
            }
        };

        let last = step.chunks.len().checked_sub(1);
        let mut whole = Sha256::new();
        loop {
            refill(&mut fetches, &waiting);
            let next = match waiting.pop_front() {
                Some(f) => Some(f),
                None => tokio::select! {
                    n = fetches.next() => n,
                    () = self.cancel.cancelled() => return Err(RestoreError::Cancelled { target: self.opts.target.to_string() }.into()),
                },
            };
            let Some(fetched) = next else { break };
            refill(&mut fetches, &waiting);
            let Fetched { index, file, thaw, archived } = fetched?;
            let path = file.path();
            self.polls += thaw.polls;
            self.thaw_sent +=
                u64::from(thaw.requests) + self.rethaw.sent.swap(0, Ordering::Relaxed);
            {
                let c = &mut self.file.rec().chunks[i][index];
                c.archived |= archived;
                if (thaw_needed[index] || archived) && !c.ready {
                    c.ready = true;
                    let _ =
                        self.ready_ahead.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            n.checked_sub(1)
                        });
                }
                c.downloaded = true;
                c.thaw_requests += thaw.requests;
            }
            if index == 0 {
                let header = self.check_stream_header(step, path).await?;
                let opts = ReceiveOptions { volume: header.volume, ..receive.clone() };
                *sink = Some(self.engine.zfs.receive(&opts).map_err(RestoreError::from)?);
            }
            let Some(sink) = sink.as_mut() else {
                unreachable!("the receive starts at the first chunk, which comes first")
            };
            let copy = async {
                if Some(index) == last {
                    // Hash first, write after: the stream's end goes out only if it all matches.
                    copy_spool(path, None, Some(&mut whole)).await?;
                    let hashed = std::mem::take(&mut whole);
                    self.check_stream_hash(step, hashed)?;
                    copy_spool(path, Some(&mut *sink), None).await
                } else {
                    // Verified: now, and only now, its bytes go to zfs receive.
                    copy_spool(path, Some(&mut *sink), Some(&mut whole)).await
                }
            };
            let written = alongside(copy, &mut fetches, &mut waiting).await;
            drop(file);
            written?;
            self.file.rec().chunks[i][index].received = true;
            alongside(self.file.save(), &mut fetches, &mut waiting).await?;
            self.publish(RestorePhase::Receiving, None);
            failpoint::hit("restore-after-chunk");
        }
        if last.is_none() {
            // A stream of no chunks: nothing to hold back, still nothing unverified.
            self.check_stream_hash(step, whole)?;
        }
        Ok(())
    }

    /// The stream must be the one its manifest describes before any of it reaches `zfs
    /// receive`: its begin record (at the start of its first chunk) names the manifest's
    /// snapshots, is one dataset's stream (not a `zfs send -R`/`-p` package, which carries
    /// properties), and was sent raw when the manifest says `-w`.
    async fn check_stream_header(
        &self,
        step: &PlanStep,
        first: &Path,
    ) -> Result<StreamHeader, Feed> {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::with_capacity(StreamHeader::LEN);
        let f =
            tokio::fs::File::open(first).await.map_err(io_err("cannot open spool file", first))?;
        f.take(StreamHeader::LEN as u64)
            .read_to_end(&mut head)
            .await
            .map_err(io_err("cannot read spool file", first))?;
        let from = step.from.as_ref().map(|f| f.guid.as_str());
        let header = StreamHeader::parse(&head);
        header.and_then(|h| h.check(&step.to.guid, from, step.raw).map(|()| h)).map_err(
            |detail| {
                tracing::error!(manifest = %step.manifest_key, %detail, "the stream is not the one its manifest describes");
                Feed::Failed(RestoreError::ForeignStream {
                    bucket: self.engine.s3.bucket().into(),
                    key: step.manifest_key.clone(),
                    detail,
                })
            },
        )
    }

    /// Every chunk matched its own SHA-256; a whole-stream mismatch means the manifest
    /// contradicts itself.
    fn check_stream_hash(&self, step: &PlanStep, hashed: Sha256) -> Result<(), RestoreError> {
        let sha = hex::encode(hashed.finalize());
        // An adopted stream has no stream SHA-256: each of its chunks matched its MD5 (another
        // tool's) or its SHA-256 (zib's, for an unfinished upload zib finished) and its size.
        let adopted = step.stream_sha256.is_empty() && step.chunks.iter().any(|c| c.md5.is_some());
        if sha == step.stream_sha256 || adopted {
            return Ok(());
        }
        Err(RestoreError::ChunkCorrupt {
            bucket: self.engine.s3.bucket().into(),
            key: step.manifest_key.clone(),
            detail: format!(
                "the stream's SHA-256 is {sha}, the manifest says {}",
                step.stream_sha256
            ),
        })
    }

    pub(super) async fn step_done(&mut self, i: usize) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        rec.steps_received = i + 1;
        let thawed = rec.plan.steps[i].needs_thaw();
        for c in &mut rec.chunks[i] {
            c.ready |= thawed;
            c.downloaded = true;
            c.received = true;
        }
        self.file.save().await?;
        tracing::info!(target = %self.opts.target, stream = i + 1, "stream received");
        self.publish(RestorePhase::Receiving, None);
        Ok(())
    }
}

/// Why feeding a stream to `zfs receive` stopped.
enum Feed {
    /// Writing to its stdin failed: the receive's own exit status says why.
    ReceiveStopped(std::io::Error),
    /// Anything else (a chunk that failed verification, a cancel, local I/O): the receive
    /// must be stopped without committing.
    Failed(RestoreError),
}

impl From<RestoreError> for Feed {
    fn from(e: RestoreError) -> Self {
        Self::Failed(e)
    }
}

impl From<PathError> for Feed {
    fn from(e: PathError) -> Self {
        Self::Failed(e.into())
    }
}

/// Runs `work` while the downloads in `fetches` go on, keeping each that finishes (in order)
/// in `waiting`.
async fn alongside<T, F: Future>(
    work: impl Future<Output = T>,
    fetches: &mut FuturesOrdered<F>,
    waiting: &mut VecDeque<F::Output>,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            t = &mut work => return t,
            Some(f) = fetches.next(), if !fetches.is_empty() => waiting.push_back(f),
        }
    }
}

/// Bytes read from a spool file at once.
const READ_PIECE: usize = 1 << 20;

/// Reads spool file `path` into `hash` and/or `sink`: a blocking thread reads and hashes it in
/// pieces of [`READ_PIECE`] bytes (two of them, passed back and forth), this task writes each
/// to the receive, so that reading and hashing overlap the receive's work.
async fn copy_spool(
    path: &Path,
    mut sink: Option<&mut ReceiveSink>,
    hash: Option<&mut Sha256>,
) -> Result<(), Feed> {
    let (full, mut filled) = mpsc::channel::<Vec<u8>>(2);
    let (empty, emptied) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..2 {
        let _ = empty.send(vec![0; READ_PIECE]);
    }
    let mut hasher = hash.as_deref().cloned();
    let file = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Sha256>> {
        use std::io::Read;
        let mut f = std::fs::File::open(&file)?;
        while let Ok(mut buf) = emptied.recv() {
            buf.resize(READ_PIECE, 0);
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if let Some(h) = hasher.as_mut() {
                h.update(&buf);
            }
            if full.blocking_send(buf).is_err() {
                break; // the writer stopped: its error is reported
            }
        }
        Ok(hasher)
    });
    while let Some(buf) = filled.recv().await {
        if let Some(s) = sink.as_deref_mut() {
            s.stdin().write_all(&buf).await.map_err(Feed::ReceiveStopped)?;
        }
        let _ = empty.send(buf);
    }
    drop(empty);
    let hashed = reader
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io_err("cannot read spool file", path))?;
    if let (Some(to), Some(h)) = (hash, hashed) {
        *to = h;
    }
    Ok(())
}

/// The GUID of `target@snap`, None if the dataset or snapshot does not exist.
async fn snapshot_guid(
    zfs: &Zfs,
    target: &DatasetName,
    snap: &SnapName,
) -> Result<Option<String>, ZfsError> {
    match zfs.snapshot_info(target, snap).await {
        Ok(s) => Ok(s.map(|s| s.guid)),
        Err(ZfsError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
