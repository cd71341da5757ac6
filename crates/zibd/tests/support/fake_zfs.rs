//! The one stand-in `zfs` of the host tests: `fake_zfs.sh` beside this file (its header lists
//! what it does and its knobs), keeping its state in a directory of its own. A test hands it to
//! an in-process engine as a [`zibd::zfs::Zfs`] ([`FakeZfs::zfs`]) or to the `zibd` binary as
//! environment variables ([`FakeZfs::env`]); nothing sets the test process's environment.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

/// The script; named through `../zibd` so that zibctl's tests, which include this file, find
/// it too.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../zibd/tests/support/fake_zfs.sh");

pub struct FakeZfs {
    _temp: Option<tempfile::TempDir>,
    /// Its state: snapshots, bookmarks, streams, holds, received streams (`recv.N`), and
    /// `calls`, every command line it ran.
    pub dir: PathBuf,
    knobs: Vec<(&'static str, String)>,
}

impl Default for FakeZfs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeZfs {
    /// A stand-in with a fresh state of its own (removed on drop).
    pub fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        FakeZfs { _temp: Some(temp), dir, knobs: Vec::new() }
    }

    /// A stand-in whose state is `dir` (kept).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        FakeZfs { _temp: None, dir: dir.into(), knobs: Vec::new() }
    }

    /// The same, with one of the script's knobs (`FAKE_ZFS_SIZE`, ...) set for every command.
    pub fn knob(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.knobs.push((key, value.into()));
        self
    }

    /// Its environment for a `zibd` process: `ZIB_ZFS_BIN`, its state, its log, its knobs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("ZIB_ZFS_BIN", SCRIPT.to_owned()),
            ("FAKE_ZFS_DIR", self.dir.display().to_string()),
            ("FAKE_ZFS_LOG", self.log().display().to_string()),
        ];
        v.extend(self.knobs.iter().cloned());
        v
    }

    /// It as the zfs of an in-process engine.
    pub fn zfs(&self) -> zibd::zfs::Zfs {
        self.env()
            .into_iter()
            .filter(|(k, _)| *k != "ZIB_ZFS_BIN")
            .fold(zibd::zfs::Zfs::with_bin(SCRIPT), |z, (k, v)| z.env(k, v))
    }

    /// Runs `zfs ARGS` on its state, as an admin would (the tests' own changes).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = std::process::Command::new(SCRIPT);
        c.args(args);
        for (k, v) in self.env() {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// The same, which must succeed.
    pub fn run_ok(&self, args: &[&str]) {
        let o = self.run(args);
        assert!(o.status.success(), "zfs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn log(&self) -> PathBuf {
        self.dir.join("calls")
    }

    /// Every command line it ran, one a line.
    pub fn calls(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// What each `zfs receive` got, in order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        (1..)
            .map(|n| self.dir.join(format!("recv.{n}")))
            .take_while(|p| p.exists())
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    /// While on, `send` of `ds`'s snapshots streams slowly (16 KiB every 0.2 s).
    pub fn slow(&self, ds: &str, on: bool) {
        let f = self.dir.join("slow").join(encode(ds));
        if on {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    /// While on, a `receive` reads nothing (it waits before its `cat`).
    pub fn pause_receive(&self, on: bool) {
        let f = self.dir.join("paused-receive");
        if on {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The file of `name` (`ds@snap`, `ds#book`, `ds`) in its state directory `kind`
    /// (`snap`, `book`, `data`, `hold`, `written`, ...).
    pub fn file(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(encode(name))
    }

    /// Creates filesystem `ds` (for `list -r`); a destroyed one comes back.
    pub fn create(&self, ds: &str) {
        std::fs::create_dir_all(self.dir.join("fs")).unwrap();
        std::fs::write(self.file("fs", ds), b"").unwrap();
        let _ = std::fs::remove_file(self.file("gone", ds));
    }

    /// Destroys filesystem `ds` with its snapshots and bookmarks (`zfs destroy -r` of a
    /// dataset without children): gone from `list -r`, and `snapshot` of it fails.
    pub fn destroy(&self, ds: &str) {
        let _ = std::fs::remove_file(self.file("fs", ds));
        std::fs::create_dir_all(self.dir.join("gone")).unwrap();
        std::fs::write(self.file("gone", ds), b"").unwrap();
        let stem = encode(ds);
        for kind in ["snap", "book", "data", "hold", "full"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(kind)) else { continue };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{stem}@")) || n.starts_with(&format!("{stem}#")) {
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A name as the script's file names have it (`/` as `%2F`).
pub fn encode(name: &str) -> String {
    name.replace('/', "%2F")
}
