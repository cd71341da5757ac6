//! Per-dataset state files: one writer per file, enforced by the kernel (flock), and atomic
//! saves (temp file in the same directory, fsync, rename, fsync the directory). Each stored
//! chunk is recorded by appending one line to the dataset's chunk journal (`<dataset>.chunks`,
//! see `zib_core::chunk_journal`) instead of rewriting the whole state file.
//!
//! Work directories (spool, restore) are private: [`private_dir`] creates them 0700 and refuses
//! one another user owns or could write to, and work files are created new, 0600, never
//! through a symlink ([`new_private_file`]). Spooled chunks of an unencrypted dataset are
//! plaintext, and root writing through a symlink planted in a shared directory overwrites any
//! file on the host.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use zib_core::{ChunkRecord, DatasetName, DatasetState, chunk_journal::JournalEntry};

use crate::path_error::{PathError, io_err};

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("state for {dataset} is locked by another zib process (pid {pid}); lock file {path}")]
    Locked { dataset: DatasetName, pid: String, path: PathBuf },
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Corrupt(#[from] zib_core::state::StateError),
}

/// The directory holding `<dataset>.json` state files, `<dataset>.chunks` chunk journals and
/// `<dataset>.lock` lock files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// An exclusively locked dataset state. The lock is released when this is dropped.
#[derive(Debug)]
pub struct LockedState {
    _lock: Flock<File>,
    path: PathBuf,
    journal: PathBuf,
    pub state: DatasetState,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self, ds: &DatasetName) -> PathBuf {
        self.dir.join(format!("{}.json", ds.file_stem()))
    }

    pub fn journal_path(&self, ds: &DatasetName) -> PathBuf {
        self.dir.join(format!("{}.chunks", ds.file_stem()))
    }

    /// The datasets that have a state file here (none when the directory does not exist).
    pub fn datasets(&self) -> Vec<DatasetName> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".json")?;
                DatasetName::from_file_stem(stem)
            })
            .collect()
    }

    /// The dataset's state as on disk (its journal folded in), without taking the lock: for
    /// reading only, e.g. while the daemon holds it.
    pub fn read(&self, ds: &DatasetName) -> Result<DatasetState, StateStoreError> {
        Ok(self.load(ds)?.0)
    }

    /// The state file (a fresh state if none) with the journal folded in, and whether there
    /// was a journal.
    fn load(&self, ds: &DatasetName) -> Result<(DatasetState, bool), StateStoreError> {
        let path = self.state_path(ds);
        let mut state = match read_if_exists(&path, "cannot read state file")? {
            Some(bytes) => DatasetState::from_json(&path.display().to_string(), &bytes, ds)?,
            None => DatasetState::new(ds.clone()),
        };
        let journal = self.journal_path(ds);
        let had_journal = match read_if_exists(&journal, "cannot read chunk journal")? {
            Some(bytes) => {
                state.fold_journal(&bytes);
                true
            }
            None => false,
        };
        Ok((state, had_journal))
    }

    /// Takes the dataset's lock (without waiting) and loads its state (a fresh one if none).
    pub fn lock(&self, ds: &DatasetName) -> Result<LockedState, StateStoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err("cannot create state directory", &self.dir))?;
        let lock_path = self.dir.join(format!("{}.lock", ds.file_stem()));
        let lock = lock_exclusive(&lock_path).map_err(|e| match e {
            LockError::Held { pid } => {
                StateStoreError::Locked { dataset: ds.clone(), pid, path: lock_path.clone() }
            }
            LockError::Io(e) => e.into(),
        })?;
        let (state, had_journal) = self.load(ds)?;
        let locked = LockedState {
            _lock: lock,
            path: self.state_path(ds),
            journal: self.journal_path(ds),
            state,
        };
        // Fold the journal into the state file now, so that later lines never follow a line a
        // crash tore.
        if had_journal {
            locked.save()?;
        }
        Ok(locked)
    }
}

fn read_if_exists(path: &Path, action: &'static str) -> Result<Option<Vec<u8>>, StateStoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(action, path)(e).into()),
    }
}

/// Mode of a work directory: only its owner may enter it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of a work file.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Makes `dir` a private work directory: created (with missing parents) mode 0700; an existing
/// one must be owned by this process's user and not writable by group or others (then its mode
/// is tightened to 0700). Otherwise a `PermissionDenied` error saying why: another user could
/// read what is spooled there or plant files and symlinks in it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{why}; another user could read the work files or plant files and symlinks there: use a directory of this user's with mode 0700"
            ),
        ))
    };
    if !meta.is_dir() {
        return refuse("not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!("owned by uid {}, not by this process's uid {me}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("writable by its group or by others (mode {mode:04o})"));
    }
    if mode & 0o777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Options that create a work file: write-only, new (an existing file or symlink at the path is
/// an error, never followed: `O_EXCL`, `O_NOFOLLOW`), mode 0600. Remove a stale one first.
/// `tokio::fs::OpenOptions::from` turns these into async ones.
pub fn new_private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    o
}

/// Removes `path` if it exists (a symlink is removed itself, never its target).
pub fn remove_stale(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Why [`lock_exclusive`] failed.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid as it wrote it (or "unknown").
    Held {
        pid: String,
    },
    Io(PathError),
}

impl From<PathError> for LockError {
    fn from(e: PathError) -> Self {
        LockError::Io(e)
    }
}

/// Takes an exclusive flock on `lock_path` without waiting and writes our pid into it, so the
/// next process to try can say who holds it. The lock lives as long as the returned value.
pub fn lock_exclusive(lock_path: &Path) -> Result<Flock<File>, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(lock_path)
        .map_err(io_err("cannot open lock file", lock_path))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = if pid.trim().is_empty() { "unknown".into() } else { pid.trim().to_owned() };
            return Err(LockError::Held { pid });
        }
        Err((_, e)) => return Err(io_err("cannot lock", lock_path)(e.into()).into()),
    };
    lock.set_len(0).map_err(io_err("cannot write lock file", lock_path))?;
    lock.rewind().map_err(io_err("cannot write lock file", lock_path))?;
    writeln!(lock, "{}", std::process::id())
        .map_err(io_err("cannot write lock file", lock_path))?;
    Ok(lock)
}

impl LockedState {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state atomically (temp file, fsync, rename over, fsync the directory), then
    /// drops the journal, whose chunks the state file now lists. Blocking; call from
    /// `spawn_blocking` or via [`LockedState::save_async`].
    pub fn save(&self) -> Result<(), StateStoreError> {
        save_whole(&self.path, &self.journal, &self.state.to_json())
    }

    /// [`LockedState::save`] off the async runtime's worker threads.
    pub async fn save_async(&self) -> Result<(), StateStoreError> {
        let (path, journal) = (self.path.clone(), self.journal.clone());
        let bytes = self.state.to_json();
        tokio::task::spawn_blocking(move || save_whole(&path, &journal, &bytes))
            .await
            .expect("save task panicked")
    }

    /// Records `chunk` as stored chunk `index` of the pending backup (parallel PUTs finish in
    /// any order): one line appended to the journal and fsynced, whatever the number of
    /// chunks already recorded.
    pub async fn record_chunk(
        &mut self,
        index: u64,
        chunk: ChunkRecord,
    ) -> Result<(), StateStoreError> {
        let p = self.state.pending.as_mut().expect("a pending backup records chunks");
        let line = JournalEntry::at(p, index, chunk.clone()).to_line();
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || append_synced(&journal, &line))
            .await
            .expect("journal task panicked")?;
        p.record(index, chunk);
        Ok(())
    }
}

fn save_whole(path: &Path, journal: &Path, bytes: &[u8]) -> Result<(), StateStoreError> {
    write_atomic(path, bytes)?;
    match std::fs::remove_file(journal) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove chunk journal", journal)(e).into()),
    }
}

/// Appends `line` to `path` and fsyncs it (and the directory, when the file is new).
fn append_synced(path: &Path, line: &[u8]) -> Result<(), StateStoreError> {
    let open =
        |new| OpenOptions::new().append(true).create_new(new).mode(PRIVATE_FILE_MODE).open(path);
    let (mut f, new) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            (open(false).map_err(io_err("cannot open", path))?, false)
        }
        Err(e) => return Err(io_err("cannot create", path)(e).into()),
    };
    f.write_all(line).map_err(io_err("cannot append to", path))?;
    f.sync_data().map_err(io_err("cannot fsync", path))?;
    if new {
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot fsync directory", dir))?;
    }
    Ok(())
}

/// Atomic replace of `path` with `bytes` (mode 0600). A stale temp file from a crash is
/// removed first; the temp file is created new, never through a symlink.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    remove_stale(&tmp).map_err(io_err("cannot remove stale", &tmp))?;
    let mut f = new_private_file().open(&tmp).map_err(io_err("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
    f.sync_all().map_err(io_err("cannot fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("cannot fsync directory", dir))?;
    Ok(())
}

/// A record the daemon keeps for status (the last verify, the last drills), `what` naming it
/// in the log: None when missing; a damaged or unreadable one is reported and treated as
/// none (the next result writes a good one).
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read {what}");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "{what} is damaged; ignored");
            None
        }
    }
}

/// Keeps `value` at `path` (atomically replaced) for [`load_json`]; a failure is logged.
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T, what: &str) {
    let r = serde_json::to_vec_pretty(value)
        .map_err(|e| e.to_string())
        .and_then(|b| write_atomic(path, &b).map_err(|e| e.to_string()));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_save_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        let ds = DatasetName::new("tank/photos").unwrap();
        let mut s = store.lock(&ds).unwrap();
        assert!(s.state.last.is_none());
        // A second holder is refused with the first one's pid.
        let e = store.lock(&ds).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("tank/photos"),
            "{e}"
        );
        s.state.stats.backups_committed = 7;
        // A stale temp file from a crash does not block saving.
        std::fs::write(s.path().with_extension("json.tmp"), b"junk").unwrap();
        s.save().unwrap();
        drop(s);
        let s = store.lock(&ds).unwrap();
        assert_eq!(s.state.stats.backups_committed, 7);
        assert!(s.path().ends_with("tank%2Fphotos.json"));
    }

    fn chunk(i: u64) -> ChunkRecord {
        ChunkRecord::new(
            format!("zib/tank/photos@zib/000001-zib-20261126T030000Z/a00/{i:08}"),
            65536,
            "ab".repeat(32),
        )
    }

    fn pending(chunks: u64) -> zib_core::state::Pending {
        zib_core::state::Pending {
            seq: 1,
            from: None,
            to: zib_core::SnapName::new("zib-20261126T030000Z").unwrap(),
            to_guid: Some("42".into()),
            attempt: 0,
            chunk_size: 65536,
            storage_class: zib_core::StorageClass::DeepArchive,
            started_at: chrono::Utc::now(),
            chunks: (0..chunks).map(chunk).collect(),
            stored_ahead: Default::default(),
            destination: None,
            legacy: None,
        }
    }

    /// Bytes that recording chunk `n` writes to the state directory: what the journal grew
    /// by, plus the whole state file if it was written again (a new inode: saves rename).
    async fn bytes_to_record_chunk(store: &StateStore, ds: &DatasetName, n: u64) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut s = store.lock(ds).unwrap();
        s.state.pending = Some(pending(n - 1));
        s.save().unwrap();
        let journal_len = || std::fs::metadata(store.journal_path(ds)).map_or(0, |m| m.len());
        let (inode, journal) = (std::fs::metadata(s.path()).unwrap().ino(), journal_len());
        s.record_chunk(n - 1, chunk(n - 1)).await.unwrap();
        let state = std::fs::metadata(s.path()).unwrap();
        let rewritten = if state.ino() == inode { 0 } else { state.len() };
        let written = journal_len() - journal + rewritten;
        drop(s);
        // Recorded durably: a new holder of the lock sees it.
        let s = store.lock(ds).unwrap();
        assert_eq!(s.state.pending.as_ref().unwrap().chunks.len() as u64, n);
        assert_eq!(s.state.pending.as_ref().unwrap().chunks.last(), Some(&chunk(n - 1)));
        written
    }

    #[tokio::test]
    async fn recording_chunk_10000_writes_no_more_than_recording_chunk_1() {
        // Issue 11 #2: the whole state file (every chunk record in it) used to be rewritten
        // and fsynced per chunk, quadratic over a backup.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let ds = DatasetName::new("tank/photos").unwrap();
        let first = bytes_to_record_chunk(&store, &ds, 1).await;
        let later = bytes_to_record_chunk(&store, &ds, 10_000).await;
        eprintln!("state bytes written to record chunk 1: {first}, chunk 10000: {later}");
        // Only the index's digits may differ.
        assert!(later <= first + 4, "chunk 1: {first} bytes, chunk 10000: {later} bytes");
    }

    #[test]
    fn a_journal_is_folded_into_the_state_file_when_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let ds = DatasetName::new("tank/photos").unwrap();
        let mut s = store.lock(&ds).unwrap();
        s.state.pending = Some(pending(1));
        s.save().unwrap();
        drop(s);
        // Two chunks journaled, the second line torn by a crash.
        let mut p = pending(1);
        let mut j = JournalEntry::at(&p, 1, chunk(1)).to_line();
        p.chunks.push(chunk(1));
        j.extend(&JournalEntry::at(&p, 2, chunk(2)).to_line()[..40]);
        std::fs::write(store.journal_path(&ds), j).unwrap();
        assert_eq!(store.read(&ds).unwrap().pending.unwrap().chunks.len(), 2);
        let s = store.lock(&ds).unwrap();
        assert_eq!(s.state.pending.as_ref().unwrap().chunks.len(), 2);
        assert!(!store.journal_path(&ds).exists(), "folded into the state file");
        let on_disk: DatasetState =
            serde_json::from_slice(&std::fs::read(s.path()).unwrap()).unwrap();
        assert_eq!(on_disk, s.state);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let ds = DatasetName::new("tank/photos").unwrap();
        std::fs::write(store.state_path(&ds), b"{\"version\":1, trunc").unwrap();
        let e = store.lock(&ds).unwrap_err().to_string();
        assert!(e.contains("tank%2Fphotos.json") && e.contains("not valid JSON"), "{e}");
    }
}
