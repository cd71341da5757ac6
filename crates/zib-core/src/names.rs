//! Validated names: ZFS datasets and snapshots, and the S3 object keys derived from them.
//!
//! Every name that reaches a `zfs` command line or an object key passes through these newtypes
//! first, so a hostile or mistyped name is rejected with a clear message before anything runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest dataset or snapshot name ZFS accepts (ZFS_MAX_DATASET_NAME_LEN - 1).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {name:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: String,
}

fn name_err(what: &'static str, name: &str, reason: impl Into<String>) -> NameError {
    NameError { what, name: name.to_owned(), reason: reason.into() }
}

fn valid_component_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ')
}

fn check_component(what: &'static str, full: &str, comp: &str) -> Result<(), NameError> {
    if comp.is_empty() {
        return Err(name_err(what, full, "empty component"));
    }
    if comp == "." || comp == ".." {
        return Err(name_err(what, full, "'.' and '..' are not valid components"));
    }
    if let Some(c) = comp.chars().find(|c| !valid_component_char(*c)) {
        return Err(name_err(
            what,
            full,
            format!("character {c:?} is not allowed (letters, digits, _ - . : and space only)"),
        ));
    }
    Ok(())
}

/// A ZFS filesystem or volume name such as `tank/photos`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetName(String);

impl DatasetName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        const WHAT: &str = "dataset name";
        if name.len() > MAX_NAME_LEN {
            return Err(name_err(WHAT, name, format!("longer than {MAX_NAME_LEN} bytes")));
        }
        if name.contains('@') || name.contains('#') {
            return Err(name_err(
                WHAT,
                name,
                "a dataset name has no '@' or '#' (give the dataset, not a snapshot)",
            ));
        }
        let mut comps = name.split('/');
        let pool = comps.next().unwrap_or_default();
        check_component(WHAT, name, pool)?;
        if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(name_err(WHAT, name, "the pool name must start with a letter"));
        }
        for comp in comps {
            check_component(WHAT, name, comp)?;
        }
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
    /// The full name of snapshot `snap` of this dataset.
    pub fn snapshot(&self, snap: &SnapName) -> String {
        format!("{}@{}", self.0, snap.0)
    }
    /// The full name of bookmark `snap` of this dataset.
    pub fn bookmark(&self, snap: &SnapName) -> String {
        format!("{}#{}", self.0, snap.0)
    }
    /// A file-name-safe rendering (`/` becomes `%2F`), used for state and spool files.
    pub fn file_stem(&self) -> String {
        self.0.replace('%', "%25").replace('/', "%2F").replace(' ', "%20")
    }
    /// The dataset a [`file_stem`](Self::file_stem) stands for; None if it stands for none.
    pub fn from_file_stem(stem: &str) -> Option<Self> {
        let mut out = String::with_capacity(stem.len());
        let mut rest = stem;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let c = match rest.get(i..i + 3)? {
                "%25" => '%',
                "%2F" => '/',
                "%20" => ' ',
                _ => return None,
            };
            out.push(c);
            rest = &rest[i + 3..];
        }
        out.push_str(rest);
        let name = Self::new(&out).ok()?;
        (name.file_stem() == stem).then_some(name)
    }
}

impl TryFrom<String> for DatasetName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}
impl From<DatasetName> for String {
    fn from(d: DatasetName) -> String {
        d.0
    }
}
impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The short name of a snapshot (the part after `@`), e.g. `zib-20261126T070000Z`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapName(String);

impl SnapName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        const WHAT: &str = "snapshot name";
        if name.len() > 200 {
            return Err(name_err(WHAT, name, "longer than 200 bytes"));
        }
        if name.contains('/') || name.contains('@') || name.contains('#') {
            return Err(name_err(
                WHAT,
                name,
                "give the short name (after '@') with no '/', '@' or '#'",
            ));
        }
        check_component(WHAT, name, name)?;
        if name.starts_with('-') {
            return Err(name_err(WHAT, name, "must not start with '-'"));
        }
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The name zib gives the snapshot it takes at `at`: `<prefix>-YYYYMMDDTHHMMSSZ`.
    pub fn for_backup(prefix: &SnapPrefix, at: chrono::DateTime<chrono::Utc>) -> Self {
        Self(format!("{}-{}", prefix.0, at.format("%Y%m%dT%H%M%SZ")))
    }
    /// Whether zib made this snapshot under `prefix` (and so may manage it).
    pub fn is_zib_made(&self, prefix: &SnapPrefix) -> bool {
        self.0
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|ts| chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ").is_ok())
    }
}

impl TryFrom<String> for SnapName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}
impl From<SnapName> for String {
    fn from(d: SnapName) -> String {
        d.0
    }
}
impl fmt::Display for SnapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The prefix of snapshots zib takes, e.g. `zib`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapPrefix(String);

impl SnapPrefix {
    pub fn new(p: &str) -> Result<Self, NameError> {
        const WHAT: &str = "snapshot prefix";
        if p.is_empty() || p.len() > 64 {
            return Err(name_err(WHAT, p, "must be 1 to 64 characters"));
        }
        if !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            || p.starts_with('-')
        {
            return Err(name_err(WHAT, p, "letters, digits, _ - . : only, not starting with '-'"));
        }
        Ok(Self(p.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl Default for SnapPrefix {
    fn default() -> Self {
        Self("zib".into())
    }
}
impl TryFrom<String> for SnapPrefix {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}
impl From<SnapPrefix> for String {
    fn from(d: SnapPrefix) -> String {
        d.0
    }
}

/// Where a dataset's backups live in the bucket, and the keys below it.
///
/// Layout (all under the configured object prefix `P`):
/// ```text
/// P<dataset>@zib/000001-<snapshot>.manifest.json      catalog entry, STANDARD class
/// P<dataset>@zib/000001-<snapshot>/a00/00000000       chunk 0 of attempt 0, archive class
/// P<dataset>@zib/000001-<snapshot>/a00/00000001       ...
/// P<dataset>@zib/000002-<snapshot>.manifest.json      the next link of the chain (incremental)
/// ```
/// `@` cannot occur in a dataset name, so a child dataset's objects never mix with its parent's.
/// Zero-padded numbers make a plain listing sort in chain order, and `cat` of one attempt's
/// chunks in key order is the exact `zfs send` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    root: String,
}

/// Width of the chain sequence number in keys.
pub const SEQ_WIDTH: usize = 6;
/// Width of the chunk index in keys.
pub const CHUNK_WIDTH: usize = 8;
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

impl KeyLayout {
    /// `prefix` is the configured object prefix (normalised to end in `/` unless empty).
    pub fn new(prefix: &str, dataset: &DatasetName) -> Self {
        Self { root: format!("{}{}@zib/", normalize_prefix(prefix), dataset) }
    }
    /// The key prefix every object of `dataset` and of its descendants starts with (and of
    /// datasets whose names merely start with its name: filter by [`KeyLayout::root`]).
    pub fn tree_prefix(prefix: &str, dataset: &DatasetName) -> String {
        format!("{}{}", normalize_prefix(prefix), dataset)
    }
    /// The prefix under which every object of this dataset lives.
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn manifest_key(&self, seq: u64, snap: &SnapName) -> String {
        format!("{}{seq:0SEQ_WIDTH$}-{snap}{MANIFEST_SUFFIX}", self.root)
    }
    pub fn attempt_prefix(&self, seq: u64, snap: &SnapName, attempt: u32) -> String {
        format!("{}{seq:0SEQ_WIDTH$}-{snap}/a{attempt:02}/", self.root)
    }
    pub fn chunk_key(&self, seq: u64, snap: &SnapName, attempt: u32, index: u64) -> String {
        format!("{}{index:0CHUNK_WIDTH$}", self.attempt_prefix(seq, snap, attempt))
    }
    /// Parses a manifest key of this layout back into (seq, snapshot name).
    pub fn parse_manifest_key(&self, key: &str) -> Option<(u64, SnapName)> {
        let rest = key.strip_prefix(&self.root)?.strip_suffix(MANIFEST_SUFFIX)?;
        if rest.contains('/') {
            return None;
        }
        let (seq, snap) = rest.split_once('-')?;
        Some((parse_seq(seq)?, SnapName::new(snap).ok()?))
    }
}

/// A seq as keys render it: zero-padded to [`SEQ_WIDTH`] digits, and wider past 999999 (a
/// backup a minute reaches that in two years; its keys must still be found), never padded
/// more than that.
fn parse_seq(s: &str) -> Option<u64> {
    if s.len() < SEQ_WIDTH || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    (format!("{n:0SEQ_WIDTH$}") == s).then_some(n)
}

/// A chunk key of a layout, parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkKey {
    pub seq: u64,
    pub snapshot: SnapName,
    pub attempt: u32,
    pub index: u64,
}

impl KeyLayout {
    /// Parses a chunk key of this layout back into its parts; None for any other key.
    pub fn parse_chunk_key(&self, key: &str) -> Option<ChunkKey> {
        let rest = key.strip_prefix(&self.root)?;
        let mut parts = rest.split('/');
        let (link, attempt, index) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (seq, snap) = link.split_once('-')?;
        let digits = |s: &str, min: usize| s.len() >= min && s.bytes().all(|b| b.is_ascii_digit());
        let attempt = attempt.strip_prefix('a')?;
        if parse_seq(seq).is_none() || !digits(attempt, 2) {
            return None;
        }
        if index.len() != CHUNK_WIDTH || !digits(index, CHUNK_WIDTH) {
            return None;
        }
        let parsed = ChunkKey {
            seq: seq.parse().ok()?,
            snapshot: SnapName::new(snap).ok()?,
            attempt: attempt.parse().ok()?,
            index: index.parse().ok()?,
        };
        // Only the exact rendering counts (no "a007" for attempt 7).
        (self.chunk_key(parsed.seq, &parsed.snapshot, parsed.attempt, parsed.index) == key)
            .then_some(parsed)
    }
}

/// Why `prefix` cannot hold zib's keys, if it cannot: a component `.` or `..` (S3 keeps them
/// literally, but a key that seems to climb is how a foreign object passes for one of zib's),
/// or `@zib/`, which marks a dataset's own keys.
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.contains("@zib/") || prefix.ends_with("@zib") {
        return Some("it contains \"@zib/\", which marks a dataset's own keys");
    }
    if prefix.split('/').any(|c| c == ".." || c == ".") {
        return Some("it has a \".\" or \"..\" component");
    }
    None
}

/// Object prefixes are used as directories: `backups` becomes `backups/`; empty stays empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') { p.to_owned() } else { format!("{p}/") }
}

/// Splits a catalog key `P<dataset>@zib/<...>.manifest.json` into its dataset, for listing a
/// whole bucket prefix. Returns None for keys that are not manifests.
pub fn dataset_of_manifest_key(prefix: &str, key: &str) -> Option<DatasetName> {
    let rest = key.strip_prefix(&normalize_prefix(prefix))?;
    if !rest.ends_with(MANIFEST_SUFFIX) {
        return None;
    }
    let (ds, _) = rest.split_once("@zib/")?;
    let ds = DatasetName::new(ds).ok()?;
    // Only a key zib writes: `<seq>-<snapshot>.manifest.json` right under the dataset's root
    // (not `notes.manifest.json`, nor `../x.manifest.json`).
    KeyLayout::new(prefix, &ds).parse_manifest_key(key).map(|_| ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names() {
        for ok in ["tank", "tank/photos", "tank/a b/c.d:e_f-g"] {
            DatasetName::new(ok).unwrap();
        }
        for bad in [
            "",
            "/tank",
            "tank/",
            "tank//x",
            "tank@snap",
            "-tank",
            "1tank",
            "tank/$x",
            "tank/..",
            "tank#b",
        ] {
            assert!(DatasetName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DatasetName::new(&"a".repeat(256)).is_err());
        let e = DatasetName::new("tank/ph$otos").unwrap_err().to_string();
        assert!(e.contains("tank/ph$otos") && e.contains("'$'"), "{e}");
    }

    #[test]
    fn snapshot_names() {
        let p = SnapPrefix::new("zib").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-26T07:08:09Z").unwrap().to_utc();
        let s = SnapName::for_backup(&p, at);
        assert_eq!(s.as_str(), "zib-20261126T070809Z");
        assert!(s.is_zib_made(&p));
        assert!(!SnapName::new("zib-manual").unwrap().is_zib_made(&p));
        assert!(!s.is_zib_made(&SnapPrefix::new("zi").unwrap()));
        for bad in ["", "a/b", "a@b", "-x", "a#b", "x\n"] {
            assert!(SnapName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(DatasetName::new("tank/a").unwrap().snapshot(&s), "tank/a@zib-20261126T070809Z");
    }

    #[test]
    fn keys_sort_in_chain_order_and_parse_back() {
        let ds = DatasetName::new("tank/photos").unwrap();
        let l = KeyLayout::new("backups", &ds);
        assert_eq!(l.root(), "backups/tank/photos@zib/");
        let s = SnapName::new("zib-20261126T070809Z").unwrap();
        assert_eq!(
            l.manifest_key(1, &s),
            "backups/tank/photos@zib/000001-zib-20261126T070809Z.manifest.json"
        );
        assert_eq!(
            l.chunk_key(1, &s, 0, 2),
            "backups/tank/photos@zib/000001-zib-20261126T070809Z/a00/00000002"
        );
        let mut keys: Vec<String> = (0..12).map(|i| l.chunk_key(1, &s, 0, i)).collect();
        let sorted = {
            let mut k = keys.clone();
            k.sort();
            k
        };
        assert_eq!(keys, sorted);
        keys.push(l.manifest_key(10, &s));
        assert_eq!(l.parse_manifest_key(&l.manifest_key(10, &s)), Some((10, s.clone())));
        assert_eq!(l.parse_manifest_key(&l.chunk_key(1, &s, 0, 0)), None);
        let ck = l.parse_chunk_key(&l.chunk_key(7, &s, 12, 3)).unwrap();
        assert_eq!((ck.seq, ck.snapshot.as_str(), ck.attempt, ck.index), (7, s.as_str(), 12, 3));
        assert_eq!(l.parse_chunk_key(&l.chunk_key(1, &s, 100, 0)).unwrap().attempt, 100);
        for bad in [
            l.manifest_key(1, &s),
            format!("{}000001-{s}/a00/0000000", l.root()),
            format!("{}000001-{s}/a007/00000000", l.root()),
            format!("{}000001-{s}/b00/00000000", l.root()),
            format!("{}000001-{s}/a00/00000000/x", l.root()),
            format!("other/000001-{s}/a00/00000000"),
        ] {
            assert_eq!(l.parse_chunk_key(&bad), None, "{bad}");
        }
        assert_eq!(dataset_of_manifest_key("backups/", &l.manifest_key(3, &s)), Some(ds.clone()));
        // Past 999999 the seq grows a digit, and its keys are still found.
        for seq in [999_999, 1_000_000, 12_345_678_901] {
            assert_eq!(l.parse_manifest_key(&l.manifest_key(seq, &s)), Some((seq, s.clone())));
            assert_eq!(l.parse_chunk_key(&l.chunk_key(seq, &s, 0, 1)).unwrap().seq, seq);
        }
        for padded in ["0000001", "00001", "01000000"] {
            let key = format!("{}{padded}-{s}{MANIFEST_SUFFIX}", l.root());
            assert_eq!(l.parse_manifest_key(&key), None, "{key}");
        }
        // Keys zib never writes, though they end like a manifest: not taken for one.
        for foreign in [
            format!("{}notes.manifest.json", l.root()),
            format!("{}../../tank/home@zib/000001-{s}.manifest.json", l.root()),
            format!("{}000001-{s}/a00/000001-{s}.manifest.json", l.root()),
            format!("{}1-{s}.manifest.json", l.root()),
            format!("backups/tank/../photos@zib/000001-{s}.manifest.json"),
        ] {
            assert_eq!(dataset_of_manifest_key("backups/", &foreign), None, "{foreign}");
        }
        // a child dataset's keys never fall under the parent's root
        let child = KeyLayout::new("backups", &DatasetName::new("tank/photos/2024").unwrap());
        assert!(!child.root().starts_with(l.root()));
    }

    #[test]
    fn prefixes_normalise() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("a"), "a/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }

    #[test]
    fn file_stems_are_unambiguous() {
        let a = DatasetName::new("tank/a").unwrap().file_stem();
        let b = DatasetName::new("tank%2Fa");
        assert_eq!(a, "tank%2Fa");
        assert!(b.is_err()); // '%' is not a valid dataset char, so no collision either way
        for n in ["tank/a", "tank/a b/c", "p"] {
            let d = DatasetName::new(n).unwrap();
            assert_eq!(DatasetName::from_file_stem(&d.file_stem()), Some(d));
        }
        for bad in ["tank%2", "tank%41", "requests.tmp%", "tank/a", "1tank"] {
            assert_eq!(DatasetName::from_file_stem(bad), None, "{bad}");
        }
    }
}
