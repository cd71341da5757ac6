//! `zibd import-legacy`: adopts a bucket of zfs-incremental-backup (zib-core's `legacy`
//! decides): lists its keys, reads one chunk's tags per stream, the dataset's snapshots from
//! `zfs list`, then writes the adopted manifests with `If-None-Match: *` and sets the local
//! state so the next backup is an incremental from the last legacy snapshot. Nothing the tool
//! uploaded is re-uploaded, copied, overwritten or deleted.
//!
//! An upload the tool left unfinished is finished here as zib's pending backup (zib-core's
//! `legacy::resume` decides): the backup's own resume machinery checks the tool's chunks against
//! a fresh send by size and MD5, uploads the rest under zib's keys and commits; if the send does
//! not reproduce them it uploads the stream again under zib's layout, and the tool's chunks are
//! reported as left in the bucket.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use zib_core::legacy::{
    self, AdoptInput, AdoptPlan, ChunkTags, LegacyObject, LocalSnapshot, Resume, ResumeDecision,
    ResumeTarget, SaveFile,
};
use zib_core::state::Committed;
use zib_core::{Config, KeyLayout, StorageClass};

use crate::backup::{self, BackupOptions, BackupReport, Engine};
use crate::s3::{PutOutcome, S3ErrorKind};
use crate::state_store::StateStore;

#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Check and print only; write nothing.
    pub dry_run: bool,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug)]
pub struct ImportReport {
    pub plan: AdoptPlan,
    /// Manifest keys written now; the others were already there, the same.
    pub written: Vec<String>,
    /// Storage per class, bytes, of the adopted chunks.
    pub bytes_by_class: Vec<(StorageClass, u64)>,
    pub monthly_cost: f64,
    pub currency: String,
    pub dry_run: bool,
    /// What became of an upload the tool left unfinished, if any.
    pub unfinished: Option<UnfinishedOutcome>,
}

/// The fate of the tool's unfinished upload.
#[derive(Debug)]
pub enum UnfinishedOutcome {
    /// Not finished (the reason); its chunks stay in the bucket.
    Left(String),
    /// A dry run: it would be finished so.
    WouldFinish(Resume),
    /// Finished and committed: `legacy_used` of the tool's chunks are in the manifest; `left`
    /// are the tool's chunks of that stream it does not name (still in the bucket).
    Finished { resume: Resume, backup: BackupReport, legacy_used: usize, left: Vec<String> },
    /// An earlier import finished it: its manifest.
    AlreadyFinished(String),
}

/// Reads the save file at `path` and adopts its bucket for the dataset it names, which must
/// be in `cfg` with the same bucket.
pub async fn import(
    cfg: &Config,
    engine: &Engine,
    save_path: &std::path::Path,
    opts: ImportOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<ImportReport> {
    let (s3, zfs) = (&engine.s3, &engine.zfs);
    let text = std::fs::read_to_string(save_path)
        .with_context(|| format!("cannot read {}", save_path.display()))?;
    let save = SaveFile::parse(&save_path.display().to_string(), &text)?;
    let name = save.dataset()?;
    let ds = cfg.dataset(&name).with_context(|| {
        format!("dataset {name} (from {}) is not in the config: add it first", save_path.display())
    })?;
    let target = cfg.resolve(ds);
    if target.bucket != save.config.bucket || s3.bucket() != save.config.bucket {
        bail!(
            "the save file's bucket is {}, but {name} backs up to {}: zib's manifests must live in the bucket that holds the chunks",
            save.config.bucket,
            target.bucket
        );
    }
    let store = StateStore::new(&cfg.daemon.state_dir);
    let mut locked = store.lock(&name)?;

    let listing: Vec<LegacyObject> = s3
        .list(&save.config.object_prefix)
        .await?
        .into_iter()
        .map(|o| LegacyObject {
            key: o.key,
            size: o.size,
            etag: o.etag,
            storage_class: o.storage_class,
            last_modified: o.last_modified,
        })
        .collect();
    let mut streams = Vec::new();
    for s in legacy::streams_from_listing(&save, save.completed(), &listing) {
        // The tool writes the same stream-wide tags on every chunk: read the last one's.
        let tags = match s.chunks.last_key_value() {
            Some((_, o)) => match s3.tags(&o.key).await {
                Ok(pairs) => Some(
                    ChunkTags::from_pairs(
                        &o.key,
                        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    )
                    .map_err(anyhow::Error::msg)?,
                ),
                // Denied, or refused for an archived object (as some S3 servers do).
                Err(e)
                    if matches!(e.kind(), S3ErrorKind::AccessDenied | S3ErrorKind::NotThawed) =>
                {
                    tracing::warn!(
                        "cannot read the tags of {}: checking {} from the listing alone ({e})",
                        o.key,
                        s.stream_key
                    );
                    None
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        streams.push((s, tags));
    }
    let local: Vec<LocalSnapshot> = zfs
        .list(&name, "snapshot")
        .await?
        .into_iter()
        .map(|s| LocalSnapshot {
            name: s.name,
            guid: s.guid,
            createtxg: s.createtxg,
            created: DateTime::from_timestamp(s.creation, 0).unwrap_or_default(),
        })
        .collect();
    let unfinished = streams.iter().find(|(s, _)| s.n == save.completed()).cloned();
    let now = Utc::now();
    let plan = legacy::plan_adoption(AdoptInput {
        save: &save,
        streams,
        local: &local,
        prefix: &target.prefix,
        now,
        zib_version: env!("CARGO_PKG_VERSION"),
    })?;
    let layout = KeyLayout::new(&target.prefix, &name);
    let resume = match (&plan.unfinished, unfinished) {
        (Some(_), Some((stream, tags))) => Some(legacy::plan_resume(
            &save,
            &plan,
            &stream,
            tags.as_ref(),
            &local,
            &ResumeTarget {
                chunk_size: target.chunk_size,
                storage_class: target.storage_class,
                destination: target.destination(),
            },
            now,
        )),
        _ => None,
    };
    // The manifest that finishing the unfinished upload commits (perhaps by an earlier import).
    let finished_key = match &resume {
        Some(ResumeDecision::Resume(r)) => Some(layout.manifest_key(r.pending.seq, &r.pending.to)),
        _ => None,
    };
    let is_finished_key = |k: &str| finished_key.as_deref() == Some(k);

    if let Some(last) = &locked.state.last
        && !plan.manifests.iter().any(|(k, _)| k == &last.manifest_key)
        && !is_finished_key(&last.manifest_key)
    {
        bail!(
            "{name} already has zib backups (the last: {}); import adopts a legacy bucket only before zib backs the dataset up",
            last.manifest_key
        );
    }
    // The catalog must hold nothing but what this import writes (or wrote before).
    let existing: Vec<String> = s3
        .list(layout.root())
        .await?
        .into_iter()
        .filter(|o| layout.parse_manifest_key(&o.key).is_some())
        .map(|o| o.key)
        .collect();
    let mut written = Vec::new();
    let mut todo = Vec::new();
    for key in existing.iter().filter(|k| !is_finished_key(k)) {
        let Some((_, planned)) = plan.manifests.iter().find(|(k, _)| k == key) else {
            bail!(
                "the catalog of {name} already holds {key}, which this import would not write: import only into an empty catalog"
            );
        };
        let stored = s3.get_manifest(key).await?;
        if stored.chunks != planned.chunks || stored.to != planned.to || stored.from != planned.from
        {
            bail!(
                "{key} exists and adopts other chunks or snapshots than this import would: nothing written"
            );
        }
    }
    for (key, m) in &plan.manifests {
        if !existing.contains(key) {
            todo.push((key.clone(), m.clone()));
        }
    }
    if !opts.dry_run {
        for (key, m) in &todo {
            match s3.put_small_once(key, m.to_json(), "application/json").await? {
                PutOutcome::Stored => written.push(key.clone()),
                PutOutcome::AlreadyPresent => {}
            }
        }
        let (key, m) = plan.last();
        let st = &mut locked.state;
        let already_finished = st.last.as_ref().is_some_and(|c| is_finished_key(&c.manifest_key));
        if !already_finished {
            st.last = Some(Committed {
                seq: m.seq,
                snapshot: m.to.clone(),
                manifest_key: key.clone(),
                committed_at: m.committed_at,
                stream_size: m.stream_size,
                chain_full_seq: Some(1),
            });
            st.destination = Some(target.destination());
            // The unfinished upload becomes the pending backup, unless an earlier import made it
            // so and its run stored more of it since.
            st.pending = match &resume {
                Some(ResumeDecision::Resume(r)) => Some(match st.pending.take() {
                    Some(p) if p.seq == r.pending.seq && p.to == r.pending.to => p,
                    _ => r.pending.clone(),
                }),
                _ => None,
            };
        }
        locked.save_async().await?;
    } else {
        written = todo.into_iter().map(|(k, _)| k).collect();
    }

    let mut by_class: std::collections::BTreeMap<StorageClass, u64> = Default::default();
    let mut monthly = 0.0;
    for (_, m) in &plan.manifests {
        *by_class.entry(m.storage_class).or_default() += m.stream_size;
        for c in &m.chunks {
            monthly += cfg.pricing.monthly_storage(c.size, m.storage_class);
        }
        monthly += cfg.pricing.monthly_storage(m.to_json().len() as u64, StorageClass::Standard);
    }
    let unfinished = match resume {
        None => None,
        Some(ResumeDecision::Leave(why)) => Some(UnfinishedOutcome::Left(why)),
        Some(ResumeDecision::Resume(r)) if opts.dry_run => Some(UnfinishedOutcome::WouldFinish(*r)),
        Some(ResumeDecision::Resume(r)) => {
            let key = finished_key.clone().expect("a resume has its manifest key");
            if locked.state.last.as_ref().is_some_and(|c| c.manifest_key == key) {
                Some(UnfinishedOutcome::AlreadyFinished(key))
            } else {
                Some(finish(engine, cfg, ds, &mut locked, *r, cancel).await?)
            }
        }
    };
    Ok(ImportReport {
        plan,
        written,
        bytes_by_class: by_class.into_iter().collect(),
        monthly_cost: monthly,
        currency: cfg.pricing.currency.clone(),
        dry_run: opts.dry_run,
        unfinished,
    })
}

/// Runs the pending backup the unfinished upload became, and tells which of the tool's chunks
/// its manifest names.
async fn finish(
    engine: &Engine,
    cfg: &Config,
    ds: &zib_core::DatasetConfig,
    locked: &mut crate::state_store::LockedState,
    resume: Resume,
    cancel: &CancellationToken,
) -> anyhow::Result<UnfinishedOutcome> {
    let (progress, _rx) = tokio::sync::watch::channel(backup::Progress::default());
    let stream_key = resume.pending.legacy.as_ref().map(|l| format!("{}/", l.stream_key));
    let outcome = backup::run(engine, cfg, ds, locked, BackupOptions::default(), &progress, cancel)
        .await
        .with_context(|| {
            format!(
                "the unfinished upload of {}@{} is now zib's pending backup #{}, but it could not be finished now; `zibd backup {}` (or the daemon) goes on with it",
                ds.name, resume.pending.to, resume.pending.seq, ds.name
            )
        })?;
    let backup = match outcome {
        backup::Outcome::Committed(r) => r,
        backup::Outcome::Skipped(_) => bail!("a resumed backup is never skipped"),
    };
    let m = engine.s3.get_manifest(&backup.manifest_key).await?;
    let used = |k: &str| stream_key.as_deref().is_some_and(|p| k.starts_with(p));
    let legacy_used = m.chunks.iter().filter(|c| used(&c.key)).count();
    let listed = match &stream_key {
        Some(p) => engine.s3.list(p).await?.into_iter().map(|o| o.key).collect(),
        None => resume.left.clone(),
    };
    let left =
        listed.into_iter().filter(|k| !m.chunks.iter().any(|c| &c.key == k)).collect::<Vec<_>>();
    Ok(UnfinishedOutcome::Finished { resume, backup, legacy_used, left })
}

/// The report as text: each adopted stream, what was written, the cost to keep, what was left.
pub fn format_report(r: &ImportReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let verb = if r.dry_run { "would adopt" } else { "adopted" };
    let _ = writeln!(
        s,
        "{verb} {} streams of {} (nothing uploaded, copied or overwritten):",
        r.plan.manifests.len(),
        r.plan.dataset
    );
    for (key, m) in &r.plan.manifests {
        let _ = writeln!(
            s,
            "  #{} {}@{} ({}): {} bytes in {} chunks under {}/, {} -> {key}",
            m.seq,
            m.dataset,
            m.to.name,
            if m.is_full() { "full" } else { "incremental" },
            m.stream_size,
            m.chunks.len(),
            m.legacy.as_ref().map_or("", |l| l.stream_key.as_str()),
            m.storage_class,
        );
    }
    let w = if r.dry_run { "would write" } else { "wrote" };
    let _ = writeln!(
        s,
        "{w} {} manifests ({} already there)",
        r.written.len(),
        r.plan.manifests.len() - r.written.len()
    );
    for (class, bytes) in &r.bytes_by_class {
        let _ = writeln!(s, "stored: {bytes} bytes in {class}");
    }
    let _ = writeln!(
        s,
        "to keep: {} a month (storage, manifests included; list prices, see [pricing])",
        zib_core::pricing::format_money(r.monthly_cost, &r.currency)
    );
    let never = "zib never deletes them without being asked";
    match (&r.plan.unfinished, &r.unfinished) {
        (Some(u), Some(UnfinishedOutcome::Left(_)) | None) => {
            let _ = writeln!(
                s,
                "left alone: the unfinished upload {} of @{} ({} chunks in the bucket, not adopted; {never}): {}; the next zib backup is an incremental from @{}",
                u.stream_key,
                u.snapshot,
                u.chunk_keys.len(),
                match &r.unfinished {
                    Some(UnfinishedOutcome::Left(why)) => why.as_str(),
                    _ => "not resumable",
                },
                r.plan.last().1.to.name
            );
        }
        (Some(u), Some(UnfinishedOutcome::WouldFinish(res))) => {
            let _ = writeln!(
                s,
                "would finish the unfinished upload {} of @{} as zib backup #{}: its first {} chunks in the bucket (the save file records {}) checked against a fresh zfs send (size and MD5), the rest uploaded under zib's keys; nothing of the tool's is written",
                u.stream_key, u.snapshot, res.pending.seq, res.adopted, res.parts_uploaded
            );
        }
        (Some(u), Some(UnfinishedOutcome::Finished { resume, backup, legacy_used, left })) => {
            if *legacy_used > 0 {
                let _ = writeln!(
                    s,
                    "finished the unfinished upload {} of @{} (the save file records {} chunks): {legacy_used} of its chunks matched a fresh zfs send (size and MD5) and are kept where they are, {} uploaded under zib's keys; committed as backup #{}: {}",
                    u.stream_key,
                    u.snapshot,
                    resume.parts_uploaded,
                    backup.chunks_uploaded,
                    backup.seq,
                    backup.manifest_key
                );
            } else {
                let _ = writeln!(
                    s,
                    "finished the unfinished upload {} of @{} under zib's layout ({} chunks uploaded): {}; committed as backup #{}: {}",
                    u.stream_key,
                    u.snapshot,
                    backup.chunks_uploaded,
                    if resume.adopted > 0 {
                        "zfs send did not reproduce the tool's chunks (openzfs#13778), so the stream was uploaded again"
                    } else {
                        "none of the tool's chunks could be used"
                    },
                    backup.seq,
                    backup.manifest_key
                );
            }
            if !left.is_empty() {
                let _ = writeln!(s, "left in the bucket, unused ({never}): {}", left.join(", "));
            }
            let _ = writeln!(s, "the next zib backup is an incremental from @{}", backup.snapshot);
        }
        (_, Some(UnfinishedOutcome::AlreadyFinished(key))) => {
            let _ = writeln!(s, "the unfinished upload was finished by an earlier import: {key}");
        }
        (None, _) if !r.dry_run => {
            let _ = writeln!(
                s,
                "the next zib backup is an incremental from @{}",
                r.plan.last().1.to.name
            );
        }
        (None, _) => {}
    }
    s
}
