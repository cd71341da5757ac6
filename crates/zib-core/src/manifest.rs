//! The remote catalog: one small JSON manifest per backup, stored in STANDARD next to its chunks.
//!
//! The manifest is the commit point of a backup. It is written only after every chunk it lists
//! is stored and verified; chunks without a manifest do not exist for restore. A manifest alone
//! (plus the chunks it names) is enough to restore, so the catalog is the bucket's listing of
//! manifests: no local state is needed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{DatasetName, KeyLayout, SnapName};
use crate::storage_class::StorageClass;

pub const FORMAT: &str = "zib-manifest";
/// The version of manifests whose chunks all carry a SHA-256 (everything zib uploads itself).
pub const VERSION: u32 = 1;
/// The version of manifests that adopt chunks of another tool ([`Manifest::legacy`]): their
/// chunks carry an MD5 instead of a SHA-256. Only these are written as version 2, so a zib
/// that predates them refuses them by name instead of misreading them.
pub const VERSION_LEGACY: u32 = 2;
/// The newest version this zib reads.
pub const NEWEST_VERSION: u32 = VERSION_LEGACY;

/// The largest manifest zib writes or reads back: 64 MiB. Every reader of a manifest uses this
/// limit, and a backup whose manifest would exceed it is not committed.
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// The most chunks one backup's stream may have. A chunk record takes at most about 1.2 KB
/// (S3 keys are at most 1024 bytes), so a manifest of this many chunks stays below
/// [`MAX_MANIFEST_BYTES`]. The largest stream is therefore `chunk_size` times this: 3.2 GB at
/// the smallest chunk size (64 KiB), 250 TB at the default (5 GB).
pub const MAX_CHUNKS: u64 = 50_000;

/// The largest stream a backup with chunks of `chunk_size` bytes may send.
pub fn max_stream_size(chunk_size: u64) -> u64 {
    chunk_size.saturating_mul(MAX_CHUNKS)
}

/// A snapshot as recorded in a manifest: its short name and ZFS GUID (the identity that
/// `zfs receive` checks when applying an incremental).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapRef {
    pub name: SnapName,
    /// ZFS guid, as a decimal string (u64 in ZFS; strings survive JSON tools that use f64).
    pub guid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRecord {
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the chunk's bytes; empty (and absent from the JSON) for a chunk
    /// adopted from another tool, which has only `md5`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Lowercase hex MD5 of the chunk's bytes (its ETag, a single-part PUT's), for an adopted
    /// chunk only; restore checks it and the size before any byte reaches `zfs receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl ChunkRecord {
    /// A chunk zib uploaded itself.
    pub fn new(key: String, size: u64, sha256: String) -> Self {
        Self { key, size, sha256, md5: None }
    }
    /// A chunk adopted from another tool: known by its size and MD5 only.
    pub fn adopted(key: String, size: u64, md5: String) -> Self {
        Self { key, size, sha256: String::new(), md5: Some(md5) }
    }
}

/// Where an adopted stream came from: the chunks of another tool's upload, left where they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyOrigin {
    /// The tool that uploaded the chunks, e.g. "zfs-incremental-backup".
    pub tool: String,
    /// The key the tool's chunks share (`<stream_key>/<i>`).
    pub stream_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub dataset: DatasetName,
    /// Position in the chain, from 1 (the first full).
    pub seq: u64,
    /// None for a full stream; the base snapshot for an incremental.
    pub from: Option<SnapRef>,
    pub to: SnapRef,
    /// Creation time of the `to` snapshot.
    pub snapshot_created: DateTime<Utc>,
    /// When the backup was committed.
    pub committed_at: DateTime<Utc>,
    /// The `zfs send` arguments, e.g. ["-w"] or ["-w", "-i", "#zib-..."].
    pub send_args: Vec<String>,
    /// Which upload attempt's chunks are the committed ones.
    pub attempt: u32,
    pub storage_class: StorageClass,
    pub chunk_size: u64,
    pub stream_size: u64,
    /// SHA-256 of the whole stream (hex); empty (and absent) for an adopted stream, whose
    /// chunks are checked by MD5 one by one instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream_sha256: String,
    pub chunks: Vec<ChunkRecord>,
    pub zib_version: String,
    /// Set when the chunks were uploaded by another tool and adopted (version 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyOrigin>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {key}: not valid JSON for a zib manifest: {source}")]
    Json { key: String, source: serde_json::Error },
    #[error("manifest {key}: {message}")]
    Invalid { key: String, message: String },
}

/// An object a manifest names: the one thing verify, the cost ledger and pruning mean by
/// "named" (every other object under the prefix is unnamed: an abandoned attempt or a file of
/// another tool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedObject {
    pub key: String,
    /// None for the manifest itself (the catalog does not record its own size).
    pub size: Option<u64>,
    /// The class it was written in: STANDARD for the manifest, the manifest's for its chunks.
    pub storage_class: StorageClass,
}

impl Manifest {
    pub fn is_full(&self) -> bool {
        self.from.is_none()
    }

    /// The manifest's own key (in `layout`) and its chunks' keys, in that order.
    pub fn named_objects(&self, layout: &KeyLayout) -> Vec<NamedObject> {
        let own = NamedObject {
            key: layout.manifest_key(self.seq, &self.to.name),
            size: None,
            storage_class: StorageClass::Standard,
        };
        let chunks = self.chunks.iter().map(|c| NamedObject {
            key: c.key.clone(),
            size: Some(c.size),
            storage_class: self.storage_class,
        });
        std::iter::once(own).chain(chunks).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// The manifest as committed: checked, and no larger than [`MAX_MANIFEST_BYTES`] (so that
    /// every reader can read it back).
    pub fn to_json_for_commit(&self) -> Result<Vec<u8>, String> {
        self.check()?;
        let v = self.to_json();
        if v.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest takes {} bytes, more than the {MAX_MANIFEST_BYTES} zib reads back",
                v.len()
            ));
        }
        Ok(v)
    }

    /// Parses and checks a manifest read from `key`.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        // Check the format/version first, so a newer format gets a clear message rather than an
        // "unknown field" one.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Json { key: key.into(), source })?;
        let invalid = |message: String| ManifestError::Invalid { key: key.into(), message };
        if head.format.as_deref() != Some(FORMAT) {
            return Err(invalid(format!("format is {:?}, expected {FORMAT:?}", head.format)));
        }
        match head.version {
            Some(VERSION | VERSION_LEGACY) => {}
            Some(v) if v > NEWEST_VERSION => {
                return Err(invalid(format!(
                    "format version {v} is newer than this zib understands ({NEWEST_VERSION}); upgrade zib"
                )));
            }
            v => return Err(invalid(format!("unsupported format version {v:?}"))),
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Json { key: key.into(), source })?;
        m.check().map_err(invalid)?;
        Ok(m)
    }

    /// Whether this manifest is zib's manifest stored under `key`, as read from a bucket: zib
    /// writes it at `<prefix><dataset>@zib/<seq>-<snapshot>.manifest.json`, its own chunks
    /// under `<prefix><dataset>@zib/<seq>-<snapshot>/a<attempt>/<index>`, and an adopted chunk
    /// keeps the other tool's key `<stream_key>/<i>`, never one of zib's (`@zib/`). A manifest
    /// anywhere else (copied, renamed, or written by someone else), or one naming objects of
    /// another backup as its chunks, is not acted upon: a restore would read, and a prune
    /// delete, objects it has no claim to, and a copy would pass for a newer backup than the
    /// newest.
    pub fn check_key(&self, key: &str) -> Result<(), ManifestError> {
        let invalid = |message: String| ManifestError::Invalid { key: key.into(), message };
        let own = KeyLayout::new("", &self.dataset).manifest_key(self.seq, &self.to.name);
        let prefix = key
            .strip_suffix(&own)
            .filter(|p| {
                crate::names::normalize_prefix(p) == *p && crate::names::prefix_problem(p).is_none()
            })
            .ok_or_else(|| {
                invalid(format!(
                    "it describes backup {} of {}@{}, which zib stores under .../{own}: not this key",
                    self.seq, self.dataset, self.to.name
                ))
            })?;
        let layout = KeyLayout::new(prefix, &self.dataset);
        for c in &self.chunks {
            let fits = match (&c.md5, &self.legacy) {
                (Some(_), Some(origin)) => {
                    !origin.stream_key.contains("@zib/")
                        && c.key
                            .strip_prefix(&origin.stream_key)
                            .is_some_and(|r| r.starts_with('/'))
                }
                _ => layout
                    .parse_chunk_key(&c.key)
                    .is_some_and(|k| k.seq == self.seq && k.snapshot == self.to.name),
            };
            if !fits {
                return Err(invalid(format!(
                    "it names {} as a chunk of backup {} of {}@{}, where no chunk of it is stored",
                    c.key, self.seq, self.dataset, self.to.name
                )));
            }
        }
        Ok(())
    }

    /// Internal consistency: sizes add up, hashes look like hashes, chunk sizes fit the split.
    pub fn check(&self) -> Result<(), String> {
        let total: u64 = self.chunks.iter().map(|c| c.size).sum();
        if total != self.stream_size {
            return Err(format!(
                "chunk sizes add up to {total}, but stream_size is {}",
                self.stream_size
            ));
        }
        if self.chunks.is_empty() {
            return Err("lists no chunks".into());
        }
        if self.chunks.len() as u64 > MAX_CHUNKS {
            return Err(format!(
                "lists {} chunks, more than the {MAX_CHUNKS} a backup may have",
                self.chunks.len()
            ));
        }
        if self.seq == 0 {
            return Err("seq must start at 1".into());
        }
        let legacy = self.legacy.is_some();
        let want = if legacy { VERSION_LEGACY } else { VERSION };
        if self.version != want {
            return Err(format!(
                "version {} with{} adopted chunks (expected version {want})",
                self.version,
                if legacy { "" } else { "out" }
            ));
        }
        let last = self.chunks.len() - 1;
        for (i, c) in self.chunks.iter().enumerate() {
            match (&c.md5, legacy) {
                (None, _) if !is_sha256_hex(&c.sha256) => {
                    return Err(format!("chunk {} has a malformed sha256 {:?}", c.key, c.sha256));
                }
                (None, _) => {}
                (Some(md5), true) if c.sha256.is_empty() && is_md5_hex(md5) => {}
                (Some(md5), true) => {
                    return Err(format!(
                        "adopted chunk {} needs an MD5 and no SHA-256 (md5 {md5:?})",
                        c.key
                    ));
                }
                (Some(_), false) => {
                    return Err(format!(
                        "chunk {} has an MD5 but the stream is not adopted",
                        c.key
                    ));
                }
            }
            let bad_size = if i < last {
                c.size != self.chunk_size
            } else {
                c.size == 0 || c.size > self.chunk_size
            };
            if bad_size {
                return Err(format!(
                    "chunk {} has size {} that does not fit chunk_size {}",
                    c.key, c.size, self.chunk_size
                ));
            }
        }
        if legacy {
            if !self.stream_sha256.is_empty() {
                return Err("an adopted stream has no stream_sha256".into());
            }
        } else if !is_sha256_hex(&self.stream_sha256) {
            return Err("malformed stream_sha256".into());
        }
        Ok(())
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    is_lower_hex(s, 64)
}

pub fn is_md5_hex(s: &str) -> bool {
    is_lower_hex(s, 32)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
pub(crate) fn sample() -> Manifest {
    let h = "ab".repeat(32);
    Manifest {
        format: FORMAT.into(),
        version: VERSION,
        dataset: DatasetName::new("tank/photos").unwrap(),
        seq: 2,
        from: Some(SnapRef {
            name: SnapName::new("zib-20261125T000000Z").unwrap(),
            guid: "123".into(),
        }),
        to: SnapRef {
            name: SnapName::new("zib-20261126T000000Z").unwrap(),
            guid: "18446744073709551615".into(),
        },
        snapshot_created: DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().to_utc(),
        committed_at: DateTime::parse_from_rfc3339("2026-11-26T00:10:00Z").unwrap().to_utc(),
        send_args: vec!["-w".into(), "-i".into(), "#zib-20261125T000000Z".into()],
        attempt: 0,
        storage_class: StorageClass::DeepArchive,
        chunk_size: 10,
        stream_size: 25,
        stream_sha256: h.clone(),
        chunks: vec![
            ChunkRecord::new("k/0".into(), 10, h.clone()),
            ChunkRecord::new("k/1".into(), 10, h.clone()),
            ChunkRecord::new("k/2".into(), 5, h),
        ],
        zib_version: "0.1.0".into(),
        legacy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = sample();
        let back = Manifest::from_json("k", &m.to_json()).unwrap();
        assert_eq!(m, back);
    }

    #[test]
    fn the_largest_manifest_fits_the_limit_and_one_chunk_more_is_refused() {
        // MAX_CHUNKS records with keys as long as S3 allows (1024 bytes) and the largest
        // chunks: still readable.
        let h = "ab".repeat(32);
        let key = "k".repeat(1024 - 8);
        let mut m = sample();
        m.chunk_size = crate::config::MAX_CHUNK_SIZE;
        m.chunks = (0..MAX_CHUNKS)
            .map(|i| ChunkRecord::new(format!("{key}{i:08}"), m.chunk_size, h.clone()))
            .collect();
        m.stream_size = m.chunk_size * MAX_CHUNKS;
        let bytes = m.to_json_for_commit().unwrap();
        assert!(bytes.len() <= MAX_MANIFEST_BYTES, "{} bytes", bytes.len());
        m.chunks.push(m.chunks[0].clone());
        m.stream_size += m.chunk_size;
        let e = m.to_json_for_commit().unwrap_err();
        assert!(e.contains("50001 chunks, more than the 50000"), "{e}");
        assert!(Manifest::from_json("k", &m.to_json()).unwrap_err().to_string().contains("50000"));
        assert_eq!(max_stream_size(64 * 1024), 3_276_800_000);
    }

    #[test]
    fn v1_fixture_still_parses() {
        // Manifests written by released versions must stay readable: keep fixtures, never edit them.
        let m =
            Manifest::from_json("fixture", include_bytes!("../tests/fixtures/manifest-v1.json"))
                .unwrap();
        assert_eq!(m.seq, 1);
        assert!(m.is_full());
        assert_eq!(m.chunks.len(), 2);
    }

    /// Released manifests pass at the keys zib stores them under; a copy at any other key, or
    /// one naming another backup's objects as its chunks, does not.
    #[test]
    fn a_manifest_is_zib_s_only_at_its_own_key_with_its_own_chunks() {
        let v1 =
            Manifest::from_json("f", include_bytes!("../tests/fixtures/manifest-v1.json")).unwrap();
        let key = "zib/tank/photos@zib/000001-zib-20261126T070000Z.manifest.json";
        v1.check_key(key).unwrap();
        let adopted =
            Manifest::from_json("f", include_bytes!("../tests/fixtures/manifest-v2-adopted.json"))
                .unwrap();
        let layout = KeyLayout::new("zib", &adopted.dataset);
        adopted.check_key(&layout.manifest_key(2, &adopted.to.name)).unwrap();
        // No prefix at all is a prefix too.
        let mut bare = v1.clone();
        for c in &mut bare.chunks {
            c.key = c.key.strip_prefix("zib/").unwrap().into();
        }
        bare.check_key("tank/photos@zib/000001-zib-20261126T070000Z.manifest.json").unwrap();

        let refused = |m: &Manifest, key: &str, what: &str| {
            let e = m.check_key(key).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(key), "{key}: {e}");
        };
        for other in [
            "zib/tank/photos@zib/000009-zib-20261126T070000Z.manifest.json",
            "zib/tank/photos@zib/000001-zib-20261127T070000Z.manifest.json",
            "zib/tank/home@zib/000001-zib-20261126T070000Z.manifest.json",
            "zib/tank/photos@zib/../tank/photos@zib/000001-zib-20261126T070000Z.manifest.json",
            "zibtank/photos@zib/000001-zib-20261126T070000Z.manifest.json",
            "/zib/tank/photos@zib/000001-zib-20261126T070000Z.manifest.json",
        ] {
            refused(&v1, other, "which zib stores under");
        }
        for chunk in [
            "zib/tank/home@zib/000001-zib-20261126T070000Z/a00/00000000",
            "zib/tank/photos@zib/000002-zib-20261126T070000Z/a00/00000000",
            "zib/tank/photos@zib/000001-zib-20261125T070000Z/a00/00000000",
            "other/photos.tar",
            "zib/tank/photos@zib/000001-zib-20261126T070000Z/../../x",
        ] {
            let mut m = v1.clone();
            m.chunks[0].key = chunk.into();
            refused(&m, key, chunk);
        }
        let akey = layout.manifest_key(2, &adopted.to.name);
        let mut m = adopted.clone();
        m.chunks[1].key = "immich/other_stream/1".into();
        refused(&m, &akey, "immich/other_stream/1");
        let mut m = adopted.clone();
        m.legacy.as_mut().unwrap().stream_key = "zib/tank/home@zib/000001-x/a00".into();
        for c in &mut m.chunks {
            c.key = c.key.replace("immich/backup0_backup1", "zib/tank/home@zib/000001-x/a00");
        }
        refused(&m, &akey, "zib/tank/home@zib/");
    }

    fn adopted_sample() -> Manifest {
        let mut m = sample();
        m.version = VERSION_LEGACY;
        m.stream_sha256 = String::new();
        m.legacy = Some(LegacyOrigin {
            tool: "zfs-incremental-backup".into(),
            stream_key: "photos/backup1_backup2".into(),
        });
        for c in &mut m.chunks {
            *c = ChunkRecord::adopted(c.key.clone(), c.size, "0f".repeat(16));
        }
        m
    }

    #[test]
    fn adopted_manifest_round_trips_as_version_2_without_sha256() {
        let m = adopted_sample();
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(!json.contains("sha256"), "{json}");
        assert!(json.contains("\"version\": 2"), "{json}");
        assert_eq!(Manifest::from_json("k", json.as_bytes()).unwrap(), m);
        // A zib-made manifest stays version 1 and gains no field.
        let plain = String::from_utf8(sample().to_json()).unwrap();
        assert!(!plain.contains("md5") && !plain.contains("legacy"), "{plain}");
    }

    #[test]
    fn adopted_manifest_fixture_parses() {
        let m = Manifest::from_json(
            "fixture",
            include_bytes!("../tests/fixtures/manifest-v2-adopted.json"),
        )
        .unwrap();
        assert!(m.legacy.is_some());
        assert!(m.chunks.iter().all(|c| c.md5.is_some() && c.sha256.is_empty()));
    }

    #[test]
    fn rejects_mixed_up_adopted_manifests() {
        let bad = |m: &Manifest, what: &str| {
            let e = Manifest::from_json("k", &m.to_json()).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        let mut m = adopted_sample();
        m.version = VERSION;
        bad(&m, "expected version 2");
        let mut m = adopted_sample();
        m.chunks[1].md5 = Some("nothex".into());
        bad(&m, "needs an MD5");
        let mut m = adopted_sample();
        m.chunks[1].md5 = None;
        bad(&m, "malformed sha256");
        let mut m = sample();
        m.chunks[0].md5 = Some("0f".repeat(16));
        bad(&m, "not adopted");
        let mut m = sample();
        m.version = VERSION_LEGACY;
        bad(&m, "expected version 1");
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        let mut m = sample();
        m.stream_size = 26;
        assert!(Manifest::from_json("k", &m.to_json()).unwrap_err().to_string().contains("add up"));
        let mut m = sample();
        m.chunks[0].size = 9;
        m.stream_size = 24;
        assert!(
            Manifest::from_json("k", &m.to_json())
                .unwrap_err()
                .to_string()
                .contains("does not fit")
        );
        let mut m = sample();
        m.chunks[1].sha256 = "xyz".into();
        assert!(
            Manifest::from_json("k", &m.to_json())
                .unwrap_err()
                .to_string()
                .contains("malformed sha256")
        );
        let mut m = sample();
        m.version = 7;
        let e = Manifest::from_json("the/key", &m.to_json()).unwrap_err().to_string();
        assert!(e.contains("the/key") && e.contains("newer"), "{e}");
        assert!(Manifest::from_json("k", b"{not json").is_err());
        assert!(
            Manifest::from_json("k", b"{\"format\":\"other\"}")
                .unwrap_err()
                .to_string()
                .contains("format")
        );
    }
}
