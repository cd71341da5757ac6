//! A zib catalog written straight through the S3 API (chunks and manifests as zib writes
//! them), and stand-in `zfs send` streams with the begin record restore checks: for the restore,
//! cost and verify host tests.

use aws_sdk_s3::{primitives::ByteStream, types::StorageClass as S3Class};
use chrono::Utc;
use sha2::{Digest, Sha256};
use zib_core::{
    ChunkRecord, DatasetName, KeyLayout, Manifest, SnapName, SnapRef, StorageClass, manifest,
};

pub const PREFIX: &str = "backups";
pub const CHUNK: u64 = 1000;

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic pseudo-random stream bytes.
pub fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// `zfs send -c` (implied by `-w`), in a begin record's feature flags.
pub const FEATURE_COMPRESSED: u64 = 1 << 22;

/// The begin record a `zfs send` stream starts with (little-endian): `hdrtype` 1 for a single
/// stream, 2 for a `-R`/`-p` package; snapshot GUID `to`, from GUID `from` (0: full).
pub fn begin_record(hdrtype: u64, features: u64, to: u64, from: u64) -> Vec<u8> {
    let mut v = volume_begin_record(hdrtype, features, to, from);
    v[32..36].copy_from_slice(&2u32.to_le_bytes()); // DMU_OST_ZFS
    v
}

/// [`begin_record`] of a volume's stream (object set type `DMU_OST_ZVOL`).
pub fn volume_begin_record(hdrtype: u64, features: u64, to: u64, from: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(0u32.to_le_bytes()); // DRR_BEGIN
    v.extend(0u32.to_le_bytes()); // payload length
    v.extend(0x2F5B_ACBAC_u64.to_le_bytes());
    v.extend((hdrtype | (features << 2)).to_le_bytes());
    v.extend(1_700_000_000u64.to_le_bytes());
    v.extend(3u32.to_le_bytes()); // DMU_OST_ZVOL
    v.extend(0u32.to_le_bytes());
    v.extend(to.to_le_bytes());
    v.extend(from.to_le_bytes());
    v.extend([0u8; 256]); // drr_toname
    v
}

/// A stand-in `zfs send -w` stream of `len` bytes: the begin record `zfs receive` (and zib,
/// before it) reads first, for snapshot GUID `to` from GUID `from` (0: a full stream), then
/// [`stream`] bytes.
pub fn send_stream(seed: u64, len: usize, to: u64, from: u64) -> Vec<u8> {
    with_header(begin_record(1, FEATURE_COMPRESSED, to, from), seed, len)
}

/// `header`, then [`stream`] bytes up to `len` in all.
pub fn with_header(mut header: Vec<u8>, seed: u64, len: usize) -> Vec<u8> {
    assert!(len >= header.len(), "a stream holds at least its begin record");
    let rest = len - header.len();
    header.extend(stream(seed, rest));
    header
}

pub struct Backup {
    pub snap: &'static str,
    pub guid: &'static str,
    pub data: Vec<u8>,
}

/// Writes a chain of backups of `ds` (full first) as zib would: chunks in `class`, manifests
/// in STANDARD. Returns the manifests.
pub async fn seed(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    ds: &str,
    chain: &[Backup],
    class: StorageClass,
) -> Vec<Manifest> {
    seed_chunked(client, bucket, ds, chain, class, CHUNK).await
}

/// [`seed`] with chunks of `chunk` bytes.
pub async fn seed_chunked(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    ds: &str,
    chain: &[Backup],
    class: StorageClass,
    chunk: u64,
) -> Vec<Manifest> {
    let ds = DatasetName::new(ds).unwrap();
    let layout = KeyLayout::new(PREFIX, &ds);
    let mut out = Vec::new();
    for (i, b) in chain.iter().enumerate() {
        let seq = i as u64 + 1;
        let to = SnapName::new(b.snap).unwrap();
        let mut chunks = Vec::new();
        for (j, part) in b.data.chunks(chunk as usize).enumerate() {
            let key = layout.chunk_key(seq, &to, 0, j as u64);
            put_chunk(client, bucket, &key, part, class).await;
            chunks.push(ChunkRecord::new(key, part.len() as u64, sha(part)));
        }
        let from = (i > 0).then(|| SnapRef {
            name: SnapName::new(chain[i - 1].snap).unwrap(),
            guid: chain[i - 1].guid.into(),
        });
        let m = Manifest {
            format: manifest::FORMAT.into(),
            version: manifest::VERSION,
            dataset: ds.clone(),
            seq,
            send_args: vec!["-w".into()],
            from,
            to: SnapRef { name: to.clone(), guid: b.guid.into() },
            snapshot_created: Utc::now(),
            committed_at: Utc::now(),
            attempt: 0,
            storage_class: class,
            chunk_size: chunk,
            stream_size: b.data.len() as u64,
            stream_sha256: sha(&b.data),
            chunks,
            zib_version: "test".into(),
            legacy: None,
        };
        m.check().unwrap();
        client
            .put_object()
            .bucket(bucket)
            .key(layout.manifest_key(seq, &to))
            .body(ByteStream::from(m.to_json()))
            .send()
            .await
            .unwrap();
        out.push(m);
    }
    out
}

/// PUTs one chunk as zib does: in `class`, with its SHA-256 as the additional checksum (which
/// the server checks and keeps) and as `zib-sha256` metadata.
pub async fn put_chunk(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    class: StorageClass,
) {
    use base64::Engine as _;
    let digest = Sha256::digest(bytes);
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .storage_class(S3Class::from(class.as_str()))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
        .metadata("zib-sha256", hex::encode(digest))
        .body(ByteStream::from(bytes.to_vec()))
        .send()
        .await
        .unwrap();
}

/// A second dataset beside [`chain3`]'s: tank/home, one 400-byte backup in STANDARD.
pub async fn seed_home(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<Manifest> {
    let home =
        [Backup { snap: "zib-20261105T000000Z", guid: "9", data: send_stream(9, 400, 9, 0) }];
    seed(client, bucket, "tank/home", &home, StorageClass::Standard).await
}

pub fn chain3() -> Vec<Backup> {
    vec![
        Backup { snap: "zib-20261101T000000Z", guid: "111", data: send_stream(1, 3500, 111, 0) },
        Backup { snap: "zib-20261102T000000Z", guid: "222", data: send_stream(2, 1200, 222, 111) },
        Backup { snap: "zib-20261103T000000Z", guid: "333", data: send_stream(3, 700, 333, 222) },
    ]
}
