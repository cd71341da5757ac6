//! The plan of an import: one zib manifest per whole legacy stream, pointing at its chunks
//! where they are, chained by the snapshots' GUIDs (from `zfs list` where the snapshots still
//! exist); and the state that makes the next zib backup an incremental from the last one.

use chrono::{DateTime, Utc};

use super::layout::{ChunkTags, LegacyStream, WholeStream};
use super::save_file::SaveFile;
use super::{LegacyError, TOOL};
use crate::manifest::{self, ChunkRecord, LegacyOrigin, Manifest, SnapRef};
use crate::names::{DatasetName, KeyLayout, SnapName};
use crate::storage_class::StorageClass;

/// A snapshot of the dataset as `zfs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSnapshot {
    pub name: String,
    pub guid: String,
    pub createtxg: u64,
    pub created: DateTime<Utc>,
}

#[derive(Debug)]
pub struct AdoptInput<'a> {
    pub save: &'a SaveFile,
    /// Streams 0..=completed() from the listing, each with the tags of one of its chunks.
    pub streams: Vec<(LegacyStream, Option<ChunkTags>)>,
    pub local: &'a [LocalSnapshot],
    /// The zib object prefix of the dataset (where its manifests go).
    pub prefix: &'a str,
    pub now: DateTime<Utc>,
    pub zib_version: &'a str,
}

/// What import writes and leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct AdoptPlan {
    pub dataset: DatasetName,
    /// In chain order, each with the key it is written at (If-None-Match).
    pub manifests: Vec<(String, Manifest)>,
    /// A stream the tool left unfinished: its chunks stay in the bucket, not adopted.
    pub unfinished: Option<Unfinished>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub stream_key: String,
    pub snapshot: String,
    pub chunk_keys: Vec<String>,
}

impl AdoptPlan {
    /// The newest adopted backup: the base of the next zib incremental.
    pub fn last(&self) -> &(String, Manifest) {
        self.manifests.last().expect("a plan adopts at least one stream")
    }
}

/// The GUID recorded for a snapshot that no longer exists locally: unique per name, so the
/// chain still links, and never a number, so it is never taken for a real GUID.
pub fn unknown_guid(snapshot: &str) -> String {
    format!("unknown-legacy-{snapshot}")
}

/// Whether `guid` is an [`unknown_guid`] (checks against a stream's header skip it).
pub fn is_unknown_guid(guid: &str) -> bool {
    guid.starts_with("unknown-legacy-")
}

/// Plans the manifests of every whole stream; refuses when one the save file calls complete
/// is not whole, or when the local snapshots contradict the save file.
pub fn plan_adoption(input: AdoptInput<'_>) -> Result<AdoptPlan, LegacyError> {
    let save = input.save;
    let dataset = save
        .dataset()
        .map_err(|e| LegacyError::SaveFile { path: "save file".into(), message: e.to_string() })?;
    let completed = save.completed();
    // The unfinished stream counts as complete when the tool had stored every chunk.
    let mut adopt = completed + u64::from(save.unfinished_is_uploaded());
    let mut unfinished = None;
    let mut wholes: Vec<WholeStream> = Vec::new();
    for (stream, tags) in &input.streams {
        if stream.n < adopt {
            wholes.push(stream.check_whole(tags.as_ref())?);
        } else if stream.n == completed && save.has_unfinished_upload() {
            // Whole by its tags (chunks_count and total_len known): the tool stopped after its
            // last PUT. Otherwise it stays unfinished, left as it is.
            let by_tags =
                tags.as_ref().is_some_and(|t| t.chunks_count.is_some() && t.total_len.is_some());
            match stream.check_whole(tags.as_ref()) {
                Ok(w) if by_tags => {
                    wholes.push(w);
                    adopt += 1;
                }
                _ => {
                    unfinished = Some(Unfinished {
                        stream_key: stream.stream_key.clone(),
                        snapshot: save.snapshot_name(stream.n),
                        chunk_keys: stream.chunks.values().map(|o| o.key.clone()).collect(),
                    })
                }
            }
        }
    }
    if adopt == 0 {
        return Err(LegacyError::BadStream {
            stream_key: save.stream_key(0),
            problem: "the save file records no completed backup: nothing to adopt".into(),
        });
    }
    if wholes.len() as u64 != adopt {
        return Err(LegacyError::MissingChunk {
            stream_key: save.stream_key(wholes.len() as u64),
            key: format!("{}/0", save.stream_key(wholes.len() as u64)),
            why: " (the stream was not listed)".into(),
        });
    }
    let refs = local_refs(save, adopt, input.local)?;
    let layout = KeyLayout::new(input.prefix, &dataset);
    let mut manifests = Vec::with_capacity(wholes.len());
    for (n, w) in wholes.into_iter().enumerate() {
        let n = n as u64;
        let (to, created) = refs[n as usize].clone();
        let first_listed = w.chunks.first().and_then(|(o, _)| o.last_modified);
        let class = w
            .chunks
            .iter()
            .map(|(o, _)| o.storage_class.as_deref().unwrap_or("STANDARD").parse::<StorageClass>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LegacyError::BadStream {
                stream_key: save.stream_key(n),
                problem: e.to_string(),
            })?
            .into_iter()
            .max()
            .unwrap_or(StorageClass::Standard);
        let from = n.checked_sub(1).map(|p| refs[p as usize].0.clone());
        let mut send_args = vec!["-w".to_owned()];
        if let Some(f) = &from {
            send_args.extend(["-i".to_owned(), format!("@{}", f.name)]);
        }
        let m = Manifest {
            format: manifest::FORMAT.into(),
            version: manifest::VERSION_LEGACY,
            dataset: dataset.clone(),
            seq: n + 1,
            from,
            to: to.clone(),
            snapshot_created: created.or(first_listed).unwrap_or(input.now),
            committed_at: input.now,
            send_args,
            attempt: 0,
            storage_class: class,
            chunk_size: w.chunk_size,
            stream_size: w.stream_size,
            stream_sha256: String::new(),
            chunks: w
                .chunks
                .into_iter()
                .map(|(o, md5)| ChunkRecord::adopted(o.key, o.size, md5))
                .collect(),
            zib_version: input.zib_version.into(),
            legacy: Some(LegacyOrigin { tool: TOOL.into(), stream_key: save.stream_key(n) }),
        };
        m.check().map_err(|problem| LegacyError::BadStream {
            stream_key: save.stream_key(n),
            problem,
        })?;
        manifests.push((layout.manifest_key(m.seq, &m.to.name), m));
    }
    Ok(AdoptPlan { dataset, manifests, unfinished })
}

/// A snapshot as a manifest records it, and its creation time when it still exists.
type LocalRef = (SnapRef, Option<DateTime<Utc>>);

/// Each adopted snapshot's ref (GUID from `zfs list`, or [`unknown_guid`]) and creation time.
/// The newest must exist (the next backup is an incremental from it), and those that exist must
/// have been created in the save file's order.
fn local_refs(
    save: &SaveFile,
    adopt: u64,
    local: &[LocalSnapshot],
) -> Result<Vec<LocalRef>, LegacyError> {
    let mut refs = Vec::new();
    let mut prev: Option<&LocalSnapshot> = None;
    for n in 0..adopt {
        let name = save.snapshot_name(n);
        let snap = SnapName::new(&name).map_err(|e| LegacyError::LocalMismatch {
            snapshot: name.clone(),
            problem: e.to_string(),
        })?;
        let found = local.iter().find(|s| s.name == name);
        if let (Some(s), Some(p)) = (found, prev)
            && s.createtxg <= p.createtxg
        {
            return Err(LegacyError::LocalMismatch {
                snapshot: format!(
                    "{}@{name}",
                    save.dataset().map(|d| d.to_string()).unwrap_or_default()
                ),
                problem: format!(
                    "it was created before {} (createtxg {} <= {}): not the snapshot the tool uploaded",
                    p.name, s.createtxg, p.createtxg
                ),
            });
        }
        if found.is_none() && n + 1 == adopt {
            return Err(LegacyError::LocalMismatch {
                snapshot: format!("{}@{name}", save.dataset().map(|d| d.to_string()).unwrap_or_default()),
                problem: "the newest backed-up snapshot is gone, so zib could not continue the chain with an incremental".into(),
            });
        }
        prev = found.or(prev);
        let guid = found.map_or_else(|| unknown_guid(&name), |s| s.guid.clone());
        refs.push((SnapRef { name: snap, guid }, found.map(|s| s.created)));
    }
    Ok(refs)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::layout::{LegacyObject, streams_from_listing};
    use super::*;

    fn save(progress: &str, done: u64) -> SaveFile {
        SaveFile::parse(
            "s",
            &format!(r#"(config: (dataset: (zpool: "tank", dataset: "photos"), bucket: "B", snapshot_prefix: "backup", object_prefix: "old/"), state: (snapshots_backed_up: {done}, backing_up_progress: {progress}))"#),
        )
        .unwrap()
    }

    fn listing(save: &SaveFile, streams: u64, chunks: u64) -> Vec<LegacyObject> {
        let mut v = Vec::new();
        for n in 0..streams {
            for i in 0..chunks {
                v.push(LegacyObject {
                    key: format!("{}/{i}", save.stream_key(n)),
                    size: if i + 1 == chunks { 4 } else { 8 },
                    etag: Some(format!("\"{:032x}\"", n * 100 + i)),
                    storage_class: Some("DEEP_ARCHIVE".into()),
                    last_modified: None,
                });
            }
        }
        v
    }

    /// Snapshots backup0..n with GUIDs 1000.. in creation order.
    pub(in crate::legacy) fn local(n: u64) -> Vec<LocalSnapshot> {
        (0..n)
            .map(|i| LocalSnapshot {
                name: format!("backup{i}"),
                guid: format!("{}", 1000 + i),
                createtxg: 10 + i,
                created: DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
            })
            .collect()
    }

    fn input<'a>(
        save: &'a SaveFile,
        l: &[LegacyObject],
        snaps: &'a [LocalSnapshot],
        tags: Option<ChunkTags>,
    ) -> AdoptInput<'a> {
        let last = save.completed();
        AdoptInput {
            save,
            streams: streams_from_listing(save, last, l)
                .into_iter()
                .map(|s| (s, tags.clone()))
                .collect(),
            local: snaps,
            prefix: "zib",
            now: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            zib_version: "test",
        }
    }

    #[test]
    fn plans_a_chain_of_adopted_manifests() {
        let s = save("None", 3);
        let l = listing(&s, 3, 12);
        let snaps = local(3);
        let p = plan_adoption(input(&s, &l, &snaps, None)).unwrap();
        assert_eq!(p.manifests.len(), 3);
        let (key, m) = p.last();
        assert_eq!(key, "zib/tank/photos@zib/000003-backup2.manifest.json");
        assert_eq!(m.from.as_ref().unwrap().guid, "1001");
        assert_eq!(m.to.guid, "1002");
        assert_eq!(m.send_args, ["-w", "-i", "@backup1"]);
        assert_eq!(m.storage_class, StorageClass::DeepArchive);
        assert_eq!(m.chunks[10].key, "old/backup1_backup2/10");
        assert_eq!(m.chunks[10].md5.as_deref(), Some(format!("{:032x}", 210).as_str()));
        assert_eq!(m.stream_size, 11 * 8 + 4);
        // Written and read back as the restore will.
        for (k, m) in &p.manifests {
            assert_eq!(&Manifest::from_json(k, &m.to_json()).unwrap(), m);
        }
        let c = crate::catalog::Catalog::new(
            p.dataset.clone(),
            p.manifests.iter().map(|(_, m)| m.clone()).collect(),
        );
        assert_eq!(c.chain_to(None).unwrap().len(), 3);
        assert!(p.unfinished.is_none());
    }

    #[test]
    fn older_snapshots_may_be_gone_but_not_the_newest() {
        let s = save("None", 3);
        let l = listing(&s, 3, 2);
        let snaps: Vec<_> = local(3).into_iter().skip(1).collect();
        let p = plan_adoption(input(&s, &l, &snaps, None)).unwrap();
        assert_eq!(p.manifests[0].1.to.guid, unknown_guid("backup0"));
        assert!(is_unknown_guid(&p.manifests[0].1.to.guid) && !is_unknown_guid("1001"));
        assert_eq!(p.manifests[1].1.from.as_ref().unwrap().guid, unknown_guid("backup0"));
        let snaps: Vec<_> = local(2);
        let e = plan_adoption(input(&s, &l, &snaps, None)).unwrap_err().to_string();
        assert!(e.contains("tank/photos@backup2") && e.contains("gone"), "{e}");
        let mut snaps = local(3);
        snaps[2].createtxg = 1;
        let e = plan_adoption(input(&s, &l, &snaps, None)).unwrap_err().to_string();
        assert!(e.contains("tank/photos@backup2") && e.contains("createtxg"), "{e}");
    }

    #[test]
    fn an_incomplete_completed_stream_is_refused_by_key() {
        let s = save("None", 2);
        let mut l = listing(&s, 2, 12);
        l.retain(|o| o.key != "old/backup0_backup1/6");
        let snaps = local(2);
        let e = plan_adoption(input(&s, &l, &snaps, None)).unwrap_err().to_string();
        assert!(e.contains("old/backup0_backup1/6 is missing"), "{e}");
    }

    #[test]
    fn an_unfinished_upload_is_left_and_reported_and_a_finished_one_adopted() {
        let s = save("Some(Uploading((parts_uploaded: 4, upload_save_data: Uploading)))", 2);
        let mut l = listing(&s, 2, 3);
        for i in 0..5 {
            l.push(LegacyObject {
                key: format!("old/backup1_backup2/{i}"),
                size: 8,
                etag: Some(format!("{:032x}", 7)),
                storage_class: None,
                last_modified: None,
            });
        }
        let snaps = local(3);
        let mut inp = input(&s, &l, &snaps, None);
        inp.streams = streams_from_listing(&s, 2, &l).into_iter().map(|st| (st, None)).collect();
        let p = plan_adoption(inp).unwrap();
        assert_eq!(p.manifests.len(), 2);
        let u = p.unfinished.unwrap();
        assert_eq!(u.stream_key, "old/backup1_backup2");
        assert_eq!(u.chunk_keys.len(), 5);
        // The tool stopped while deleting its temp file: that stream is whole and adopted.
        let s = save("Some(RemovingFile)", 2);
        let l = listing(&s, 3, 3);
        let mut inp = input(&s, &l, &snaps, None);
        inp.streams = streams_from_listing(&s, 2, &l).into_iter().map(|st| (st, None)).collect();
        let p = plan_adoption(inp).unwrap();
        assert_eq!(p.manifests.len(), 3);
        assert_eq!(p.last().1.to.name.as_str(), "backup2");
    }
}
