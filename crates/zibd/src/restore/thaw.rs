//! Thaws: one RestoreObject per archived chunk (recorded before the next), HEAD polling with
//! backoff until a thawed copy is readable, and asking again when one expired.

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use zib_core::pricing::RestoreTier;

use super::{RestoreError, RestorePhase, fetch::FetchCtx, run::Run};
use crate::{
    failpoint,
    s3::{S3ErrorKind, S3Store, ThawState, thaw_state},
};

impl Run<'_> {
    /// One RestoreObject per archived chunk of the streams still to receive, unless the record
    /// or the object's HEAD shows it was asked for already. Whether a chunk is archived is the
    /// object's own storage class (HEAD), not only the manifest's: a bucket lifecycle rule may
    /// have moved chunks the manifest calls STANDARD; those are thawed too, all at once, and
    /// recorded as `archived`. The HEADs run [`HEAD_AHEAD`] at a time.
    pub(super) async fn request_thaws(&mut self) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        let todo: Vec<(usize, usize, String)> = rec
            .plan
            .steps
            .iter()
            .enumerate()
            .skip(rec.steps_received)
            .flat_map(|(i, s)| s.chunks.iter().enumerate().map(move |(j, c)| (i, j, c.key.clone())))
            .filter(|(i, j, _)| rec.chunks[*i][*j].thaw_requested_at.is_none())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let s3 = &self.engine.s3;
        let heads: Vec<_> = todo.iter().map(|(_, _, key)| head_chunk(s3, key)).collect();
        let heads: Vec<_> = futures::stream::iter(heads).buffered(HEAD_AHEAD).try_collect().await?;
        // Chunks of STANDARD streams that really are STANDARD need nothing recorded.
        let rec = self.file.rec();
        let todo: Vec<_> = todo
            .into_iter()
            .zip(heads)
            .map(|((i, j, key), head)| (i, j, key, thaw_state(&head)))
            .filter(|(i, _, _, state)| {
                rec.plan.steps[*i].needs_thaw() || *state != ThawState::NotArchived
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let days = rec.days;
        self.publish(
            RestorePhase::Thawing,
            Some(format!(
                "requesting the thaw of {} archived chunks ({} tier, {days} days)",
                todo.len(),
                self.opts.tier
            )),
        );
        let ctx = self.ctx();
        let (tier, days) = (ctx.tier, ctx.days);
        for (i, j, key, state) in todo {
            self.check_cancel()?;
            let listed_archived = self.file.rec().plan.steps[i].needs_thaw();
            if !listed_archived {
                tracing::warn!(%key, "chunk is archived although its manifest says {}: a bucket lifecycle rule on the prefix? thawing it", self.file.rec().plan.steps[i].storage_class);
            }
            let (sent, ready) = match state {
                ThawState::NotArchived => (false, true),
                ThawState::Ready { .. } => (false, true),
                ThawState::InProgress => (false, false),
                ThawState::NotRequested => {
                    request_thaw(s3, &key, tier, days).await?;
                    (true, false)
                }
            };
            if sent {
                self.thaw_sent += 1;
            }
            let c = &mut self.file.rec().chunks[i][j];
            c.thaw_requested_at = Some(Utc::now());
            c.thaw_requests += u32::from(sent);
            c.ready = ready;
            c.archived |= !listed_archived;
            self.file.save().await?;
            failpoint::hit("restore-after-thaw-request");
            self.publish(RestorePhase::Thawing, None);
        }
        Ok(())
    }
}

/// HEAD requests in flight at once when checking which chunks need a thaw.
pub(super) const HEAD_AHEAD: usize = 16;

pub(super) async fn head_chunk(
    s3: &S3Store,
    key: &str,
) -> Result<crate::s3::ObjectHead, RestoreError> {
    s3.head(key).await.map_err(|e| {
        if e.is_not_found() {
            RestoreError::ChunkMissing { bucket: s3.bucket().into(), key: key.into() }
        } else {
            e.into()
        }
    })
}

pub(super) async fn request_thaw(
    s3: &S3Store,
    key: &str,
    tier: RestoreTier,
    days: u32,
) -> Result<(), RestoreError> {
    tracing::debug!(%key, %tier, days, "requesting thaw"); // per chunk: the progress line counts them
    match s3.request_thaw(key, tier, days as i32).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == S3ErrorKind::AccessDenied => Err(RestoreError::RestoreDenied {
            bucket: s3.bucket().into(),
            key: key.into(),
            message: e.to_string(),
        }),
        Err(e) if e.is_not_found() => {
            Err(RestoreError::ChunkMissing { bucket: s3.bucket().into(), key: key.into() })
        }
        Err(e) => Err(e.into()),
    }
}

/// How many times a thaw may expire before the chunk's download before the restore gives up.
pub(super) const MAX_THAW_EXPIRIES: u32 = 3;

/// What fetching one chunk did about its thaw.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ChunkThaw {
    /// RestoreObject requests sent for it.
    pub(super) requests: u32,
    /// Times its thawed copy was found gone (expired) and asked for again.
    pub(super) expiries: u32,
    /// HEAD polls of its thaw state.
    pub(super) polls: u64,
}

/// Polls HEAD until the chunk's thaw is done, with exponential backoff. A chunk that shows no
/// thaw was asked for before (the record says so), so its copy expired: asked for again.
pub(super) async fn wait_ready(
    ctx: FetchCtx<'_>,
    key: &str,
    t: &mut ChunkThaw,
) -> Result<(), RestoreError> {
    let mut delay = ctx.poll.initial;
    loop {
        let head = head_chunk(ctx.s3, key).await?;
        t.polls += 1;
        ctx.progress.send_modify(|p| p.polls += 1);
        match thaw_state(&head) {
            ThawState::NotArchived | ThawState::Ready { .. } => {
                ctx.progress.send_modify(|p| {
                    if p.phase == RestorePhase::Thawing {
                        p.phase = RestorePhase::Receiving;
                    }
                });
                return Ok(());
            }
            ThawState::InProgress => ctx.progress.send_modify(|p| p.phase = RestorePhase::Thawing),
            ThawState::NotRequested => ask_again(ctx, key, t).await?,
        }
        tracing::debug!(%key, delay_ms = delay.as_millis() as u64, "thaw not done yet");
        pause(ctx, delay).await?;
        delay = (delay * 2).min(ctx.poll.max);
    }
}

async fn pause(ctx: FetchCtx<'_>, delay: std::time::Duration) -> Result<(), RestoreError> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = ctx.cancel.cancelled() => Err(RestoreError::Cancelled { target: ctx.target.to_string() }),
    }
}

/// GET found `key` archived with no readable copy. That is a wait, not a failure; HEAD says
/// what to do first: a thaw in progress is only waited for; a chunk never asked for (the
/// manifest did not list it as archived: a bucket lifecycle rule moved it) is asked for now;
/// one asked for before lost its copy, so it is asked for again ([`ask_again`]). Returns after
/// one poll interval, for [`wait_ready`] to take over.
pub(super) async fn not_thawed(
    ctx: FetchCtx<'_>,
    key: &str,
    asked_before: bool,
    t: &mut ChunkThaw,
) -> Result<(), RestoreError> {
    match thaw_state(&head_chunk(ctx.s3, key).await?) {
        ThawState::InProgress => {}
        _ if !asked_before => {
            tracing::warn!(%key, "chunk is archived although its manifest says otherwise: a bucket lifecycle rule on the prefix? thawing it");
            request_thaw(ctx.s3, key, ctx.tier, ctx.days).await?;
            t.requests += 1;
        }
        _ => ask_again(ctx, key, t).await?,
    }
    pause(ctx, ctx.poll.initial).await
}

/// A thaw asked for earlier is gone (HEAD shows none, or GET says InvalidObjectState): the
/// restored copy expired before the download, so ask again, at most [`MAX_THAW_EXPIRIES`] times.
pub(super) async fn ask_again(
    ctx: FetchCtx<'_>,
    key: &str,
    t: &mut ChunkThaw,
) -> Result<(), RestoreError> {
    if t.expiries >= MAX_THAW_EXPIRIES {
        return Err(RestoreError::ThawExpired {
            bucket: ctx.s3.bucket().into(),
            key: key.into(),
            times: t.expiries,
        });
    }
    tracing::warn!(%key, "the thawed copy expired (or was never made) before the download; requesting the thaw again");
    ctx.progress.send_modify(|p| {
        p.message = Some(format!("the thaw of {key} expired before its download; requested again"))
    });
    request_thaw(ctx.s3, key, ctx.tier, ctx.days).await?;
    t.requests += 1;
    t.expiries += 1;
    ctx.rethaw.sweep(ctx, key).await
}

/// How [`super::load_catalog`] deals with an archived manifest: a run thaws it (`Some`), and
/// waits for it like for a chunk; `zibd restore list|plan` only report it (`None`).
#[derive(Debug, Clone, Copy)]
pub struct ManifestThaw<'a> {
    pub tier: RestoreTier,
    pub days: u32,
    pub poll: super::PollBackoff,
    pub cancel: &'a tokio_util::sync::CancellationToken,
    /// The restore's target (for the cancellation message).
    pub target: &'a zib_core::DatasetName,
}

/// Asks for the thaw of the archived object `key` unless one is under way, and polls HEAD
/// until a copy is readable.
pub(super) async fn thaw_object(
    s3: &S3Store,
    key: &str,
    thaw: ManifestThaw<'_>,
) -> Result<(), RestoreError> {
    let mut delay = thaw.poll.initial;
    let mut asked = false;
    loop {
        match thaw_state(&s3.head(key).await?) {
            ThawState::NotArchived | ThawState::Ready { .. } => return Ok(()),
            ThawState::InProgress => {}
            ThawState::NotRequested if asked => {
                return Err(RestoreError::ThawExpired {
                    bucket: s3.bucket().into(),
                    key: key.into(),
                    times: 1,
                });
            }
            ThawState::NotRequested => {
                tracing::warn!(%key, "manifest is archived (a bucket lifecycle rule on the prefix?); thawing it before planning");
                request_thaw(s3, key, thaw.tier, thaw.days).await?;
                asked = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = thaw.cancel.cancelled() => return Err(RestoreError::Cancelled { target: thaw.target.to_string() }),
        }
        delay = (delay * 2).min(thaw.poll.max);
    }
}

/// Once one thawed copy turned out to have expired, the others asked for at about the same time
/// are gone or about to go: every remaining chunk whose copy HEAD shows gone is asked for again
/// at once, rather than each one as its download comes up (with `--parallel 2` that adds a
/// whole thaw time per two chunks). One sweep per stream; the chunks' own fetches then wait.
#[derive(Debug, Default)]
pub(super) struct Rethaw {
    state: tokio::sync::Mutex<RethawState>,
    /// RestoreObject requests the sweeps sent.
    pub(super) sent: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct RethawState {
    keys: Vec<String>,
    swept: bool,
}

impl Rethaw {
    /// The chunks still to download: the current stream's and the later streams'.
    pub(super) async fn remaining(&self, keys: Vec<String>) {
        *self.state.lock().await = RethawState { keys, swept: false };
    }

    async fn sweep(&self, ctx: FetchCtx<'_>, expired: &str) -> Result<(), RestoreError> {
        // Held across the HEADs on purpose: a second expiry meanwhile waits for this sweep.
        let mut st = self.state.lock().await;
        if st.swept {
            return Ok(());
        }
        st.swept = true;
        let keys: Vec<&String> = st.keys.iter().filter(|k| k.as_str() != expired).collect();
        let heads: Vec<_> = keys.iter().map(|k| head_chunk(ctx.s3, k)).collect();
        let heads: Vec<_> = futures::stream::iter(heads).buffered(HEAD_AHEAD).try_collect().await?;
        let mut sent = 0u64;
        for (key, head) in keys.iter().zip(heads) {
            if thaw_state(&head) == ThawState::NotRequested {
                request_thaw(ctx.s3, key, ctx.tier, ctx.days).await?;
                sent += 1;
            }
        }
        if sent > 0 {
            tracing::warn!(
                sent,
                "a thawed copy expired before its download: asked again, at once, for every other remaining chunk whose copy is gone too"
            );
            ctx.progress.send_modify(|p| {
                p.message = Some(format!(
                    "thawed copies expired: {} chunks asked for again at once",
                    sent + 1
                ))
            });
        }
        self.sent.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
