//! Spool directories: where chunks wait on local disk, between `zfs send` and their PUT
//! (backup) or between their GET and `zfs receive` (restore).
//!
//! Each dataset has a directory of its own under the spool root, so that cleaning up after
//! one dataset's crashed run can never touch the files of another dataset's running one: a
//! shared directory with `<dataset>.` file-name prefixes let `tank/vm` delete the spool of
//! `tank/vm.old` (issue 11 #10). Only the holder of the dataset's lock (state lock for a
//! backup, restore lock for a restore target) uses its directory.

use std::path::{Path, PathBuf};

use zib_core::DatasetName;

/// The spool directory of one dataset: `<root>/<dataset's file stem>/`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// The layout before per-dataset directories: `<root>/<stem>.<run>.<index>.chunk`.
    legacy: (PathBuf, String),
}

impl Spool {
    pub fn new(root: &Path, ds: &DatasetName) -> Self {
        let stem = ds.file_stem();
        Self { dir: root.join(&stem), legacy: (root.to_owned(), stem) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (and the root) if needed, both private
    /// ([`crate::state_store::private_dir`]: 0700, refused if another user owns it or may write
    /// to it): spooled chunks of an unencrypted dataset are plaintext.
    pub async fn create(&self) -> std::io::Result<()> {
        let root = &self.legacy.0;
        crate::state_store::private_dir(root)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        crate::state_store::private_dir(&self.dir)
    }

    /// The file of chunk `index` of `run` (one upload attempt, or one restored stream).
    pub fn chunk_path(&self, run: &str, index: u64) -> PathBuf {
        self.dir.join(format!("{run}.{index:08}.chunk"))
    }

    /// Removes the chunk files an earlier (crashed or failed) run of this dataset left, and
    /// the directory once empty. Best effort: a file that cannot be removed stays.
    pub async fn clean(&self) {
        remove_chunks(&self.dir, |_| true).await;
        let _ = tokio::fs::remove_dir(&self.dir).await;
        // Files of this dataset in the old shared layout: the rest of the name after the exact
        // stem must be `<run>.<index>.chunk`, with the run as the old code wrote it, so the
        // files of `tank/vm.old` never pass for those of `tank/vm`.
        let (root, stem) = &self.legacy;
        let prefix = format!("{stem}.");
        remove_chunks(root, |n| n.strip_prefix(&prefix).is_some_and(is_legacy_tail)).await;
    }
}

/// One chunk file of a run, removed when this is dropped: a chunk read ahead and then not
/// used (a failed, cancelled or diverged run; a chunk still queued for an uploader that
/// stopped; a download dropped half-way) never outlives the run that wrote it. Only a crash
/// leaves files, which [`Spool::clean`] and the next run's stale-file removal take.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
}

impl SpoolFile {
    /// Owns `path` from now on, whether or not the file exists yet.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        // Synchronous: an unlink is quick, and a Drop cannot await.
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn remove_chunks(dir: &Path, wanted: impl Fn(&str) -> bool) {
    let Ok(mut d) = tokio::fs::read_dir(dir).await else { return };
    while let Ok(Some(e)) = d.next_entry().await {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".chunk") && wanted(&n) {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

/// `<seq>.a<attempt>.<index:08>.chunk` (backup) or `<step>.<index:08>.chunk` (restore).
fn is_legacy_tail(tail: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = tail.split('.').collect();
    match parts[..] {
        [seq, attempt, index, "chunk"] => {
            digits(seq)
                && attempt.strip_prefix('a').is_some_and(digits)
                && index.len() == 8
                && digits(index)
        }
        [step, index, "chunk"] => digits(step) && index.len() == 8 && digits(index),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }

    #[test]
    fn a_spool_file_goes_with_its_owner_and_never_takes_another_path() {
        let root = tempfile::tempdir().unwrap();
        let (mine, other) = (root.path().join("1.a0.00000000.chunk"), root.path().join("x"));
        std::fs::write(&other, b"y").unwrap();
        let f = SpoolFile::new(mine.clone());
        std::fs::write(f.path(), b"x").unwrap();
        drop(f);
        assert!(!mine.exists(), "dropped, the chunk file is gone");
        assert!(other.exists());
        // Never written (a run stopped before): dropping it is harmless.
        drop(SpoolFile::new(root.path().join("never")));
        assert_eq!(files(root.path()), ["x"]);
    }

    #[tokio::test]
    async fn cleaning_one_dataset_leaves_a_similarly_named_one_alone() {
        let root = tempfile::tempdir().unwrap();
        let ds = |n| DatasetName::new(n).unwrap();
        let vm = Spool::new(root.path(), &ds("tank/vm"));
        let old = Spool::new(root.path(), &ds("tank/vm.old"));
        let other = Spool::new(root.path(), &ds("tank/vm.1"));
        for s in [&vm, &old, &other] {
            s.create().await.unwrap();
            std::fs::write(s.chunk_path("1.a0", 0), b"x").unwrap();
        }
        // Old shared layout: tank/vm's leftovers, and names of the others that start with
        // "tank%2Fvm." too.
        for n in [
            "tank%2Fvm.3.a1.00000002.chunk",
            "tank%2Fvm.0.00000004.chunk",
            "tank%2Fvm.old.1.a0.00000000.chunk",
            "tank%2Fvm.old.0.00000000.chunk",
            "tank%2Fvm.1.1.a0.00000000.chunk",
            "tank%2Fvm.1.0.00000000.chunk",
            "tank%2Fvm.notes",
        ] {
            std::fs::write(root.path().join(n), b"x").unwrap();
        }
        vm.clean().await;
        assert_eq!(
            files(root.path()),
            [
                "tank%2Fvm.1.0.00000000.chunk",
                "tank%2Fvm.1.1.a0.00000000.chunk",
                "tank%2Fvm.1/1.a0.00000000.chunk",
                "tank%2Fvm.notes",
                "tank%2Fvm.old.0.00000000.chunk",
                "tank%2Fvm.old.1.a0.00000000.chunk",
                "tank%2Fvm.old/1.a0.00000000.chunk",
            ]
        );
        assert!(!vm.dir().exists(), "the emptied directory is removed");
        old.clean().await;
        other.clean().await;
        assert_eq!(files(root.path()), ["tank%2Fvm.notes"]);
    }
}
