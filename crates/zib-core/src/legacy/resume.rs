//! Finishing the upload the original tool left unfinished, as a zib pending backup.
//!
//! The tool dies for good when it is killed between a chunk's PUT and the save of
//! `parts_uploaded`: its next run PUTs that chunk again with `If-None-Match: *`, gets 412 and
//! panics. zib never PUTs to the tool's keys: the chunks already in the bucket (recorded or
//! not) become the first chunks of a pending backup, known by size and MD5, to be checked
//! against a fresh `zfs send -w -i` of the same snapshots; the rest go under zib's keys. If the
//! send does not reproduce them, the backup's machinery uploads the stream again as a new
//! attempt under zib's layout and the tool's chunks stay where they are.

use chrono::{DateTime, Utc};

use super::TOOL;
use super::adopt::{AdoptPlan, LocalSnapshot};
use super::layout::{ChunkTags, LegacyStream};
use super::save_file::{Progress, SaveFile};
use crate::manifest::{ChunkRecord, LegacyOrigin};
use crate::names::SnapName;
use crate::state::{Destination, Pending};
use crate::storage_class::StorageClass;

/// Where zib's own chunks of the finished stream would go, from the dataset's config.
#[derive(Debug, Clone)]
pub struct ResumeTarget {
    pub chunk_size: u64,
    pub storage_class: StorageClass,
    pub destination: Destination,
}

/// What becomes of the unfinished upload.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumeDecision {
    /// Finished as zib's pending backup.
    Resume(Box<Resume>),
    /// Left as it is (its chunks stay), for this reason; zib goes on from the last complete
    /// stream with its own snapshots.
    Leave(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The pending backup: `chunks` start with the tool's, to be verified by the send.
    pub pending: Pending,
    /// How many of the tool's chunks the pending backup starts with.
    pub adopted: usize,
    /// What the save file recorded as uploaded (the bucket may hold one chunk more).
    pub parts_uploaded: u64,
    /// The tool's chunks of this stream the pending backup does not start with (a gap before
    /// them, or not verifiable): left in the bucket, reported.
    pub left: Vec<String>,
}

/// Decides how the unfinished stream `stream` (number `save.completed()`, with the tags of one
/// of its chunks) is finished after `plan` adopted the complete ones.
pub fn plan_resume(
    save: &SaveFile,
    plan: &AdoptPlan,
    stream: &LegacyStream,
    tags: Option<&ChunkTags>,
    local: &[LocalSnapshot],
    target: &ResumeTarget,
    now: DateTime<Utc>,
) -> ResumeDecision {
    let parts_uploaded = match &save.state.backing_up_progress {
        Some(Progress::Uploading(u)) => u.parts_uploaded,
        _ => return ResumeDecision::Leave("the save file records no upload under way".into()),
    };
    let (_, last) = plan.last();
    let name = save.snapshot_name(stream.n);
    let Ok(to) = SnapName::new(&name) else {
        return ResumeDecision::Leave(format!("{name} is not a snapshot name zib accepts"));
    };
    let Some(snap) = local.iter().find(|s| s.name == name) else {
        return ResumeDecision::Leave(format!(
            "{}@{name} is gone, so its stream cannot be sent again",
            plan.dataset
        ));
    };
    let base = local.iter().find(|s| s.name == last.to.name.as_str());
    if base.is_none_or(|b| b.createtxg >= snap.createtxg) {
        return ResumeDecision::Leave(format!(
            "{}@{name} is not newer than {}@{} (createtxg): not the snapshot the tool was uploading",
            plan.dataset, plan.dataset, last.to.name
        ));
    }
    // The tool's chunks from 0 on, as long as each can be checked (an MD5 ETag) and fits the
    // split (every chunk the chunk size; a shorter one only at the end).
    let chunk_size = tags
        .and_then(|t| t.chunk_size)
        .or_else(|| stream.chunks.get(&0).map(|o| o.size))
        .filter(|&s| s > 0)
        .unwrap_or(target.chunk_size);
    let mut chunks = Vec::new();
    for i in 0u64.. {
        let Some(o) = stream.chunks.get(&i) else { break };
        let Some(md5) = o.md5() else { break };
        if o.size == 0 || o.size > chunk_size {
            break;
        }
        chunks.push(ChunkRecord::adopted(o.key.clone(), o.size, md5));
        if o.size < chunk_size {
            break;
        }
    }
    let left = stream
        .chunks
        .iter()
        .filter(|&(&i, _)| i >= chunks.len() as u64)
        .map(|(_, o)| o.key.clone())
        .collect();
    let classes = stream.chunks.range(..chunks.len() as u64).map(|(_, o)| {
        o.storage_class.as_deref().unwrap_or("STANDARD").parse::<StorageClass>().ok()
    });
    // The manifest has one class: the tool's, when its chunks are used.
    let storage_class = classes.collect::<Option<Vec<_>>>().and_then(|c| c.into_iter().max());
    let adopted = if storage_class.is_some() { chunks.len() } else { 0 };
    if adopted == 0 {
        chunks.clear();
    }
    let pending = Pending {
        seq: last.seq + 1,
        from: Some(last.to.clone()),
        to,
        to_guid: Some(snap.guid.clone()),
        attempt: 0,
        chunk_size: if adopted > 0 { chunk_size } else { target.chunk_size },
        storage_class: storage_class.unwrap_or(target.storage_class),
        started_at: now,
        chunks,
        stored_ahead: Default::default(),
        destination: Some(target.destination.clone()),
        legacy: (adopted > 0)
            .then(|| LegacyOrigin { tool: TOOL.into(), stream_key: stream.stream_key.clone() }),
    };
    ResumeDecision::Resume(Box::new(Resume { pending, adopted, parts_uploaded, left }))
}

#[cfg(test)]
mod tests {
    use super::super::adopt::tests::local;
    use super::super::adopt::{AdoptInput, plan_adoption};
    use super::super::layout::{LegacyObject, streams_from_listing};
    use super::*;

    const SAVE: &str = r#"(config: (dataset: (zpool: "tank", dataset: "photos"), bucket: "B", snapshot_prefix: "backup", object_prefix: "old/"), state: (snapshots_backed_up: 2, backing_up_progress: Some(Uploading((parts_uploaded: 4, upload_save_data: MarkingAmountUsed)))))"#;

    fn obj(key: String, size: u64, tag: u64) -> LegacyObject {
        LegacyObject {
            key,
            size,
            etag: Some(format!("\"{tag:032x}\"")),
            storage_class: Some("DEEP_ARCHIVE".into()),
            last_modified: None,
        }
    }

    /// Streams 0 and 1 whole (3 chunks of 8, 8, 4), stream 2 with chunks `unfinished`.
    fn listing(save: &SaveFile, unfinished: &[u64]) -> Vec<LegacyObject> {
        let mut v = Vec::new();
        for n in 0..2 {
            for i in 0..3 {
                v.push(obj(format!("{}/{i}", save.stream_key(n)), if i == 2 { 4 } else { 8 }, i));
            }
        }
        for &i in unfinished {
            v.push(obj(format!("{}/{i}", save.stream_key(2)), 8, 50 + i));
        }
        v
    }

    fn target() -> ResumeTarget {
        ResumeTarget {
            chunk_size: 65536,
            storage_class: StorageClass::Glacier,
            destination: Destination { bucket: "B".into(), prefix: "zib/".into(), endpoint: None },
        }
    }

    fn decide(save: &SaveFile, unfinished: &[u64], snaps: &[LocalSnapshot]) -> ResumeDecision {
        let l = listing(save, unfinished);
        let streams = streams_from_listing(save, 2, &l);
        let stream = streams[2].clone();
        let plan = plan_adoption(AdoptInput {
            save,
            streams: streams.into_iter().map(|s| (s, None)).collect(),
            local: snaps,
            prefix: "zib",
            now: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            zib_version: "test",
        })
        .unwrap();
        assert!(plan.unfinished.is_some());
        let tags = ChunkTags { chunk_size: Some(8), ..Default::default() };
        plan_resume(save, &plan, &stream, Some(&tags), snaps, &target(), plan.last().1.committed_at)
    }

    #[test]
    fn the_chunks_in_the_bucket_start_the_pending_backup_the_unrecorded_one_too() {
        let s = SaveFile::parse("s", SAVE).unwrap();
        let ResumeDecision::Resume(r) = decide(&s, &[0, 1, 2, 3, 4], &local(3)) else {
            panic!("not resumed")
        };
        assert_eq!((r.adopted, r.parts_uploaded), (5, 4));
        assert!(r.left.is_empty());
        let p = &r.pending;
        assert_eq!(p.seq, 3);
        assert_eq!(p.from.as_ref().unwrap().guid, "1001");
        assert_eq!((p.to.as_str(), p.to_guid.as_deref()), ("backup2", Some("1002")));
        assert_eq!(p.chunk_size, 8);
        assert_eq!(p.storage_class, StorageClass::DeepArchive);
        assert_eq!(p.chunks[4].key, "old/backup1_backup2/4");
        assert_eq!(p.chunks[4].md5.as_deref(), Some(format!("{:032x}", 54).as_str()));
        assert!(p.chunks.iter().all(|c| c.sha256.is_empty()));
        assert_eq!(p.legacy.as_ref().unwrap().stream_key, "old/backup1_backup2");
        // Without the unrecorded chunk: the four recorded ones.
        let ResumeDecision::Resume(r) = decide(&s, &[0, 1, 2, 3], &local(3)) else { panic!() };
        assert_eq!(r.adopted, 4);
    }

    #[test]
    fn chunks_after_a_gap_are_left_and_nothing_in_the_bucket_is_a_plain_zib_upload() {
        let s = SaveFile::parse("s", SAVE).unwrap();
        let ResumeDecision::Resume(r) = decide(&s, &[0, 1, 3], &local(3)) else { panic!() };
        assert_eq!(r.adopted, 2);
        assert_eq!(r.left, ["old/backup1_backup2/3"]);
        let ResumeDecision::Resume(r) = decide(&s, &[], &local(3)) else { panic!() };
        assert_eq!(r.adopted, 0);
        assert!(r.pending.legacy.is_none() && r.pending.chunks.is_empty());
        assert_eq!(r.pending.chunk_size, 65536);
        assert_eq!(r.pending.storage_class, StorageClass::Glacier);
    }

    #[test]
    fn a_gone_or_older_snapshot_leaves_the_upload() {
        let s = SaveFile::parse("s", SAVE).unwrap();
        let ResumeDecision::Leave(why) = decide(&s, &[0, 1], &local(2)) else { panic!() };
        assert!(why.contains("tank/photos@backup2 is gone"), "{why}");
        let mut snaps = local(3);
        snaps[2].createtxg = 5;
        let ResumeDecision::Leave(why) = decide(&s, &[0, 1], &snaps) else { panic!() };
        assert!(why.contains("not newer"), "{why}");
    }
}
