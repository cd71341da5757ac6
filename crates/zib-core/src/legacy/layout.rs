//! The original tool's keys, read back from a listing: `<stream_key>/<i>`, `i` decimal from 0
//! and not zero-padded, so a listing (text order) puts `10` before `2`. Chunks are ordered by
//! their number here, and a stream counts as whole only with no gap, every chunk the chunk size
//! but the last, and the count and length its tags give.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::LegacyError;
use super::save_file::SaveFile;
use crate::manifest::is_md5_hex;

/// One object of the bucket's listing (under the save file's object prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyObject {
    pub key: String,
    pub size: u64,
    /// As listed, quotes included or not.
    pub etag: Option<String>,
    /// S3's name; None means STANDARD (S3 omits it for STANDARD in some listings).
    pub storage_class: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

impl LegacyObject {
    /// The ETag as a lowercase MD5, when it is one (a single-part PUT without SSE-KMS).
    pub fn md5(&self) -> Option<String> {
        let e = self.etag.as_deref()?.trim_matches('"').to_ascii_lowercase();
        is_md5_hex(&e).then_some(e)
    }
}

/// The tags the tool puts on every chunk (`file`, `total_len`, `chunks_count`, `chunk_size`,
/// `chunk_number`); each is optional here, as tags may be unreadable or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkTags {
    pub file: Option<String>,
    pub total_len: Option<u64>,
    pub chunks_count: Option<u64>,
    pub chunk_size: Option<u64>,
    pub chunk_number: Option<u64>,
}

impl ChunkTags {
    /// From a GetObjectTagging answer; unknown tags are ignored, a malformed number is an error.
    pub fn from_pairs<'a>(
        key: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut t = Self::default();
        for (k, v) in pairs {
            let num =
                || v.parse::<u64>().map_err(|_| format!("{key}: tag {k}={v:?} is not a number"));
            match k {
                "file" => t.file = Some(v.to_owned()),
                "total_len" => t.total_len = Some(num()?),
                "chunks_count" => t.chunks_count = Some(num()?),
                "chunk_size" => t.chunk_size = Some(num()?),
                "chunk_number" => t.chunk_number = Some(num()?),
                _ => {}
            }
        }
        Ok(t)
    }
}

/// One stream of the tool: its chunks by number (numeric order, whatever the listing's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyStream {
    /// 0 for the full, n for `<p>{n-1}_<p>{n}`.
    pub n: u64,
    pub stream_key: String,
    pub chunks: BTreeMap<u64, LegacyObject>,
}

/// Groups the listing into streams 0..=`last` (by their exact keys), chunks in numeric order.
/// Other keys (zib's own, strays, `07`-style indexes the tool never writes) are ignored.
pub fn streams_from_listing(
    save: &SaveFile,
    last: u64,
    listing: &[LegacyObject],
) -> Vec<LegacyStream> {
    let mut by_key: BTreeMap<String, LegacyStream> = (0..=last)
        .map(|n| {
            let stream_key = save.stream_key(n);
            (stream_key.clone(), LegacyStream { n, stream_key, chunks: BTreeMap::new() })
        })
        .collect();
    for o in listing {
        let Some((stream, index)) = o.key.rsplit_once('/') else { continue };
        let Some(s) = by_key.get_mut(stream) else { continue };
        if let Some(i) = chunk_index(index) {
            s.chunks.insert(i, o.clone());
        }
    }
    let mut v: Vec<LegacyStream> = by_key.into_values().collect();
    v.sort_by_key(|s| s.n);
    v
}

/// `i` as the tool writes it: decimal, no sign, no leading zero.
fn chunk_index(s: &str) -> Option<u64> {
    let i: u64 = s.parse().ok()?;
    (i.to_string() == s).then_some(i)
}

/// What a whole stream is made of, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeStream {
    pub chunk_size: u64,
    pub stream_size: u64,
    /// In stream order, each with its MD5.
    pub chunks: Vec<(LegacyObject, String)>,
}

impl LegacyStream {
    pub fn chunk_key(&self, i: u64) -> String {
        format!("{}/{i}", self.stream_key)
    }

    /// Checks the stream is whole and every chunk can be verified at restore. `tags` are those
    /// of one of its chunks (the tool writes the same stream-wide tags on each), when readable.
    pub fn check_whole(&self, tags: Option<&ChunkTags>) -> Result<WholeStream, LegacyError> {
        let missing = |i: u64, why: &str| LegacyError::MissingChunk {
            stream_key: self.stream_key.clone(),
            key: self.chunk_key(i),
            why: why.into(),
        };
        let bad = |i: u64, problem: String| LegacyError::BadChunk {
            stream_key: self.stream_key.clone(),
            key: self.chunk_key(i),
            problem,
        };
        let Some((&last, _)) = self.chunks.last_key_value() else {
            return Err(missing(0, " (no chunk of this stream is in the bucket)"));
        };
        let count = last + 1;
        if let Some(i) = (0..count).find(|i| !self.chunks.contains_key(i)) {
            return Err(missing(i, &format!(" (chunk {last} is present)")));
        }
        let tags = tags.cloned().unwrap_or_default();
        if let Some(file) = &tags.file
            && file != &self.stream_key
        {
            return Err(LegacyError::BadStream {
                stream_key: self.stream_key.clone(),
                problem: format!("its chunks are tagged file={file}"),
            });
        }
        match tags.chunks_count {
            Some(c) if c > count => {
                return Err(missing(count, &format!(" (the tags say {c} chunks)")));
            }
            Some(c) if c < count => {
                return Err(bad(c, format!("is beyond the {c} chunks the tags give")));
            }
            _ => {}
        }
        let chunk_size = tags.chunk_size.unwrap_or(self.chunks[&0].size);
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for (&i, o) in &self.chunks {
            let ok =
                if i < last { o.size == chunk_size } else { o.size > 0 && o.size <= chunk_size };
            if !ok {
                let what = if i < last { "every chunk but the last" } else { "the last chunk" };
                return Err(bad(
                    i,
                    format!(
                        "has {} bytes, but {what} has {chunk_size}{}",
                        o.size,
                        if i < last { "" } else { " at most" }
                    ),
                ));
            }
            let md5 = o.md5().ok_or_else(|| {
                bad(
                    i,
                    format!(
                        "has ETag {:?}, not an MD5 (multipart or SSE-KMS): it could not be verified at restore",
                        o.etag
                    ),
                )
            })?;
            chunks.push((o.clone(), md5));
        }
        let stream_size = chunks.iter().map(|(o, _)| o.size).sum();
        if let Some(t) = tags.total_len
            && t != stream_size
        {
            return Err(LegacyError::BadStream {
                stream_key: self.stream_key.clone(),
                problem: format!("its chunks hold {stream_size} bytes, the tags say total_len={t}"),
            });
        }
        Ok(WholeStream { chunk_size, stream_size, chunks })
    }
}

/// The chunk keys of a stream in the order a plain listing gives them (text order): the order
/// a naive `cat` of the listing would join them in.
pub fn text_sorted_keys(stream: &LegacyStream) -> Vec<String> {
    let mut keys: Vec<String> = stream.chunks.values().map(|o| o.key.clone()).collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn save() -> SaveFile {
        SaveFile::parse(
            "s",
            r#"(config: (dataset: (zpool: "P", dataset: "D"), bucket: "B", snapshot_prefix: "backup", object_prefix: "photos/"), state: (snapshots_backed_up: 2, backing_up_progress: None))"#,
        )
        .unwrap()
    }

    fn obj(key: &str, size: u64) -> LegacyObject {
        LegacyObject {
            key: key.into(),
            size,
            etag: Some(format!("\"{}\"", "ab".repeat(16))),
            storage_class: Some("DEEP_ARCHIVE".into()),
            last_modified: None,
        }
    }

    /// The listing of one stream of `count` chunks of 10 bytes (the last of 3), in text order.
    fn listing(stream_key: &str, count: u64) -> Vec<LegacyObject> {
        let mut v: Vec<LegacyObject> = (0..count)
            .map(|i| obj(&format!("{stream_key}/{i}"), if i + 1 == count { 3 } else { 10 }))
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    #[test]
    fn groups_streams_and_orders_chunks_by_number() {
        let mut l = listing("photos/backup0", 12);
        l.extend(listing("photos/backup0_backup1", 2));
        l.push(obj("photos/backup0/07", 10)); // never written by the tool: ignored
        l.push(obj("photos/P/D@zib/000001-x.manifest.json", 10));
        l.push(obj("photos/backup1_backup3/0", 10));
        let s = streams_from_listing(&save(), 2, &l);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].chunks.keys().copied().collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
        assert_eq!(s[1].stream_key, "photos/backup0_backup1");
        assert_eq!(s[1].chunks.len(), 2);
        assert!(s[2].chunks.is_empty());
        let w = s[0].check_whole(None).unwrap();
        assert_eq!(w.chunk_size, 10);
        assert_eq!(w.stream_size, 113);
        let order: Vec<&str> = w.chunks.iter().map(|(o, _)| o.key.as_str()).collect();
        assert_eq!(order[2], "photos/backup0/2");
        assert_eq!(order[10], "photos/backup0/10");
    }

    #[test]
    fn a_missing_middle_chunk_is_named() {
        let mut l = listing("photos/backup0", 12);
        l.retain(|o| o.key != "photos/backup0/5");
        let s = streams_from_listing(&save(), 0, &l);
        let e = s[0].check_whole(None).unwrap_err().to_string();
        assert!(e.contains("photos/backup0/5 is missing"), "{e}");
    }

    #[test]
    fn missing_last_chunks_are_named_from_the_tags() {
        let mut l = listing("photos/backup0", 5);
        l.retain(|o| o.key != "photos/backup0/4");
        for o in &mut l {
            o.size = 10;
        }
        let s = streams_from_listing(&save(), 0, &l);
        let tags = ChunkTags { chunks_count: Some(5), ..Default::default() };
        let e = s[0].check_whole(Some(&tags)).unwrap_err().to_string();
        assert!(e.contains("photos/backup0/4 is missing") && e.contains("5 chunks"), "{e}");
        let tags = ChunkTags { total_len: Some(41), ..Default::default() };
        let e = s[0].check_whole(Some(&tags)).unwrap_err().to_string();
        assert!(e.contains("total_len=41"), "{e}");
    }

    #[test]
    fn bad_sizes_etags_and_tags_are_refused_by_key() {
        let s = |l: Vec<LegacyObject>| streams_from_listing(&save(), 0, &l).remove(0);
        let mut l = listing("photos/backup0", 4);
        l.iter_mut().find(|o| o.key.ends_with("/1")).unwrap().size = 9;
        let e = s(l).check_whole(None).unwrap_err().to_string();
        assert!(e.contains("photos/backup0/1 has 9 bytes"), "{e}");
        let mut l = listing("photos/backup0", 4);
        l.iter_mut().find(|o| o.key.ends_with("/2")).unwrap().etag = Some("\"ab-2\"".into());
        let e = s(l).check_whole(None).unwrap_err().to_string();
        assert!(e.contains("photos/backup0/2 has ETag"), "{e}");
        let tags = ChunkTags { file: Some("photos/other".into()), ..Default::default() };
        let e = s(listing("photos/backup0", 4)).check_whole(Some(&tags)).unwrap_err().to_string();
        assert!(e.contains("file=photos/other"), "{e}");
        let e = s(Vec::new()).check_whole(None).unwrap_err().to_string();
        assert!(e.contains("photos/backup0/0 is missing"), "{e}");
    }

    #[test]
    fn tags_parse() {
        let t = ChunkTags::from_pairs(
            "k",
            [
                ("file", "photos/backup0"),
                ("total_len", "113"),
                ("chunks_count", "12"),
                ("chunk_size", "10"),
                ("chunk_number", "3"),
                ("other", "x"),
            ],
        )
        .unwrap();
        assert_eq!(t.chunks_count, Some(12));
        assert_eq!(t.file.as_deref(), Some("photos/backup0"));
        assert!(ChunkTags::from_pairs("k/1", [("chunk_size", "ten")]).unwrap_err().contains("k/1"));
    }

    proptest! {
        /// The text order of a listing joins the stream in the right order only up to 10
        /// chunks: from 11 on, `10` sorts before `2`.
        #[test]
        fn text_order_differs_from_numeric_beyond_ten_chunks(count in 1u64..300) {
            let l = listing("photos/backup0", count);
            let s = streams_from_listing(&save(), 0, &l).remove(0);
            let numeric: Vec<String> = s.check_whole(None).unwrap().chunks.into_iter().map(|(o, _)| o.key).collect();
            let text = text_sorted_keys(&s);
            prop_assert_eq!(numeric.len() as u64, count);
            prop_assert_eq!(text == numeric, count <= 10);
            for (i, k) in numeric.iter().enumerate() {
                prop_assert_eq!(k, &format!("photos/backup0/{i}"));
            }
        }
    }
}
