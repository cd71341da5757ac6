//! Thaws: one RestoreObject per archived chunk (recorded before the next), HEAD polling with
//! backoff until a thawed copy is readable, and asking again when one expired.

use chrono::Utc;
use zib_core::pricing::RestoreTier;

use super::{
    RestoreError, RestorePhase,
    receive::{FetchCtx, Run},
};
use crate::{
    failpoint,
    s3::{S3ErrorKind, S3Store, ThawState, ThawTier, thaw_state},
};

pub(super) fn thaw_tier(t: RestoreTier) -> ThawTier {
    match t {
        RestoreTier::Bulk => ThawTier::Bulk,
        RestoreTier::Standard => ThawTier::Standard,
    }
}

impl Run<'_> {
    /// One RestoreObject per archived chunk of the streams still to receive, unless the record
    /// or the object's HEAD shows it was asked for already.
    pub(super) async fn request_thaws(&mut self) -> Result<(), RestoreError> {
        let rec = self.file.rec();
        let todo: Vec<(usize, usize, String)> = rec
            .plan
            .steps
            .iter()
            .enumerate()
            .skip(rec.steps_received)
            .filter(|(_, s)| s.needs_thaw())
            .flat_map(|(i, s)| s.chunks.iter().enumerate().map(move |(j, c)| (i, j, c.key.clone())))
            .filter(|(i, j, _)| rec.chunks[*i][*j].thaw_requested_at.is_none())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let days = self.file.rec().days;
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
        let s3 = &self.engine.s3;
        for (i, j, key) in todo {
            self.check_cancel()?;
            let head = head_chunk(s3, &key).await?;
            let (sent, ready) = match thaw_state(&head) {
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
            self.file.save().await?;
            failpoint::hit("restore-after-thaw-request");
            self.publish(RestorePhase::Thawing, None);
        }
        Ok(())
    }
}

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
    tracing::info!(%key, %tier, days, "requesting thaw");
    match s3.request_thaw(key, thaw_tier(tier), days as i32).await {
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

/// Polls HEAD until the chunk's thaw is done, with exponential backoff.
pub(super) async fn wait_ready(
    ctx: FetchCtx<'_>,
    key: &str,
    thaw_requests: &mut u32,
    polls: &mut u64,
) -> Result<(), RestoreError> {
    let mut delay = ctx.poll.initial;
    loop {
        let head = head_chunk(ctx.s3, key).await?;
        *polls += 1;
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
            // Asked for earlier (the record says so), so the restored copy has expired.
            ThawState::NotRequested => ask_again(ctx, key, thaw_requests).await?,
        }
        tracing::debug!(%key, delay_ms = delay.as_millis() as u64, "thaw not done yet");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.cancel.cancelled() => return Err(RestoreError::Cancelled { target: ctx.target.to_string() }),
        }
        delay = (delay * 2).min(ctx.poll.max);
    }
}

/// A thaw asked for earlier is gone (HEAD shows none, or GET says InvalidObjectState): the
/// restored copy expired before the download, so ask again, at most [`MAX_THAW_EXPIRIES`] times.
pub(super) async fn ask_again(
    ctx: FetchCtx<'_>,
    key: &str,
    thaw_requests: &mut u32,
) -> Result<(), RestoreError> {
    if *thaw_requests >= MAX_THAW_EXPIRIES {
        return Err(RestoreError::ThawExpired {
            bucket: ctx.s3.bucket().into(),
            key: key.into(),
            times: *thaw_requests,
        });
    }
    tracing::warn!(%key, "the thawed copy expired (or was never made) before the download; requesting the thaw again");
    ctx.progress.send_modify(|p| {
        p.message = Some(format!("the thaw of {key} expired before its download; requested again"))
    });
    request_thaw(ctx.s3, key, ctx.tier, ctx.days).await?;
    *thaw_requests += 1;
    Ok(())
}
