//! Per-dataset state files: one writer per file, enforced by the kernel (flock), and atomic
//! saves (temp file in the same directory, fsync, rename, fsync the directory).
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
use zib_core::{DatasetName, DatasetState};

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("state for {dataset} is locked by another zib process (pid {pid}); lock file {path}")]
    Locked { dataset: DatasetName, pid: String, path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Corrupt(#[from] zib_core::state::StateError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StateStoreError + 'a {
    move |source| StateStoreError::Io { action, path: path.to_owned(), source }
}

/// The directory holding `<dataset>.json` state files and `<dataset>.lock` lock files.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// An exclusively locked dataset state. The lock is released when this is dropped.
#[derive(Debug)]
pub struct LockedState {
    _lock: Flock<File>,
    path: PathBuf,
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

    /// Takes the dataset's lock (without waiting) and loads its state (a fresh one if none).
    pub fn lock(&self, ds: &DatasetName) -> Result<LockedState, StateStoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io("cannot create state directory", &self.dir))?;
        let lock_path = self.dir.join(format!("{}.lock", ds.file_stem()));
        let lock = lock_exclusive(&lock_path).map_err(|e| match e {
            LockError::Held { pid } => {
                StateStoreError::Locked { dataset: ds.clone(), pid, path: lock_path.clone() }
            }
            LockError::Io { action, source } => {
                StateStoreError::Io { action, path: lock_path.clone(), source }
            }
        })?;
        let path = self.state_path(ds);
        let state = match std::fs::read(&path) {
            Ok(bytes) => DatasetState::from_json(&path.display().to_string(), &bytes, ds)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DatasetState::new(ds.clone()),
            Err(e) => {
                return Err(StateStoreError::Io {
                    action: "cannot read state file",
                    path,
                    source: e,
                });
            }
        };
        Ok(LockedState { _lock: lock, path, state })
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
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

/// Takes an exclusive flock on `lock_path` without waiting and writes our pid into it, so the
/// next process to try can say who holds it. The lock lives as long as the returned value.
pub fn lock_exclusive(lock_path: &Path) -> Result<Flock<File>, LockError> {
    let io = |action| move |source| LockError::Io { action, source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(lock_path)
        .map_err(io("cannot open lock file"))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = if pid.trim().is_empty() { "unknown".into() } else { pid.trim().to_owned() };
            return Err(LockError::Held { pid });
        }
        Err((_, e)) => return Err(LockError::Io { action: "cannot lock", source: e.into() }),
    };
    lock.set_len(0).map_err(io("cannot write lock file"))?;
    lock.rewind().map_err(io("cannot write lock file"))?;
    writeln!(lock, "{}", std::process::id()).map_err(io("cannot write lock file"))?;
    Ok(lock)
}

impl LockedState {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state atomically: temp file, fsync, rename over, fsync the directory.
    /// Blocking; call from `spawn_blocking` or via [`LockedState::save_async`].
    pub fn save(&self) -> Result<(), StateStoreError> {
        write_atomic(&self.path, &self.state.to_json())
    }

    /// [`LockedState::save`] off the async runtime's worker threads.
    pub async fn save_async(&self) -> Result<(), StateStoreError> {
        let path = self.path.clone();
        let bytes = self.state.to_json();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .expect("save task panicked")
    }
}

/// Atomic replace of `path` with `bytes` (mode 0600). A stale temp file from a crash is
/// removed first; the temp file is created new, never through a symlink.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    remove_stale(&tmp).map_err(io("cannot remove stale", &tmp))?;
    let mut f = new_private_file().open(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("cannot rename into place", path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot fsync directory", dir))?;
    Ok(())
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
