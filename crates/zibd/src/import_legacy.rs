//! `zibd import-legacy`: adopts a bucket of zfs-incremental-backup (zib-core's `legacy`
//! decides): lists its keys, reads one chunk's tags per stream, the dataset's snapshots from
//! `zfs list`, then writes the adopted manifests with `If-None-Match: *` and sets the local
//! state so the next backup is an incremental from the last legacy snapshot. Nothing the tool
//! uploaded is re-uploaded, copied, overwritten or deleted.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use zib_core::legacy::{
    self, AdoptInput, AdoptPlan, ChunkTags, LegacyObject, LocalSnapshot, SaveFile,
};
use zib_core::state::Committed;
use zib_core::{Config, KeyLayout, Manifest, StorageClass};

use crate::s3::{PutOutcome, S3ErrorKind, S3Store};
use crate::state_store::StateStore;
use crate::zfs::Zfs;

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
}

/// Reads the save file at `path` and adopts its bucket for the dataset it names, which must
/// be in `cfg` with the same bucket.
pub async fn import(
    cfg: &Config,
    s3: &S3Store,
    zfs: &Zfs,
    save_path: &std::path::Path,
    opts: ImportOptions,
) -> anyhow::Result<ImportReport> {
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
    let plan = legacy::plan_adoption(AdoptInput {
        save: &save,
        streams,
        local: &local,
        prefix: &target.prefix,
        now: Utc::now(),
        zib_version: env!("CARGO_PKG_VERSION"),
    })?;

    if let Some(last) = &locked.state.last
        && !plan.manifests.iter().any(|(k, _)| k == &last.manifest_key)
    {
        bail!(
            "{name} already has zib backups (the last: {}); import adopts a legacy bucket only before zib backs the dataset up",
            last.manifest_key
        );
    }
    // The catalog must hold nothing but what this import writes (or wrote before).
    let layout = KeyLayout::new(&target.prefix, &name);
    let existing: Vec<String> = s3
        .list(layout.root())
        .await?
        .into_iter()
        .filter(|o| layout.parse_manifest_key(&o.key).is_some())
        .map(|o| o.key)
        .collect();
    let mut written = Vec::new();
    let mut todo = Vec::new();
    for key in &existing {
        let Some((_, planned)) = plan.manifests.iter().find(|(k, _)| k == key) else {
            bail!(
                "the catalog of {name} already holds {key}, which this import would not write: import only into an empty catalog"
            );
        };
        let stored = Manifest::from_json(key, &s3.get_bytes(key, 64 << 20).await?)?;
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
        st.last = Some(Committed {
            seq: m.seq,
            snapshot: m.to.clone(),
            manifest_key: key.clone(),
            committed_at: m.committed_at,
            stream_size: m.stream_size,
            chain_full_seq: Some(1),
        });
        st.pending = None;
        st.destination = Some(target.destination());
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
    Ok(ImportReport {
        plan,
        written,
        bytes_by_class: by_class.into_iter().collect(),
        monthly_cost: monthly,
        currency: cfg.pricing.currency.clone(),
        dry_run: opts.dry_run,
    })
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
    if let Some(u) = &r.plan.unfinished {
        let _ = writeln!(
            s,
            "left alone: the unfinished upload {} of @{} ({} chunks in the bucket, not adopted; zib never deletes them without being asked); the next zib backup is an incremental from @{}",
            u.stream_key,
            u.snapshot,
            u.chunk_keys.len(),
            r.plan.last().1.to.name
        );
    } else if !r.dry_run {
        let _ =
            writeln!(s, "the next zib backup is an incremental from @{}", r.plan.last().1.to.name);
    }
    s
}
