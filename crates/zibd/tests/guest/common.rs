//! Shared helpers for the guest suite (see main.rs). They panic with a clear message on
//! any failure: a guest test never skips.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};

/// Where pool files, key files and mountpoints go: a tmpfs mounted by the first test.
pub const GUEST_BASE: &str = "/tmp/zib-guest";

/// Panics unless this runs where the zfs module is loaded (the guest).
pub fn require_zfs() {
    assert!(
        Path::new("/dev/zfs").exists(),
        "/dev/zfs missing: the guest suite runs inside the test-bed VM; use `scripts/test` \
         (or `scripts/testbed/run-in-guest <test binary>`)"
    );
}

/// The base directory (tmpfs), created and mounted once per process.
pub fn base_dir() -> &'static Path {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        require_zfs();
        std::fs::create_dir_all(GUEST_BASE).expect("create guest base dir");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mounted = mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(GUEST_BASE));
        if !mounted {
            let size = std::env::var("ZIB_GUEST_TMPFS_SIZE").unwrap_or_else(|_| "1500m".into());
            run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", GUEST_BASE]);
        }
        for d in ["pools", "keys", "mnt", "work"] {
            std::fs::create_dir_all(Path::new(GUEST_BASE).join(d)).expect("mkdir");
        }
    });
    Path::new(GUEST_BASE)
}

/// A name unique in this process and across processes: `<prefix><pid>x<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh directory under the tmpfs for a test's scratch files.
pub fn work_dir(prefix: &str) -> PathBuf {
    let d = base_dir().join("work").join(unique_name(prefix));
    std::fs::create_dir_all(&d).expect("mkdir work dir");
    d
}

/// Runs a command, panics with its stderr unless it succeeds; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    match try_run(cmd, args) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Runs a command; Ok(stdout) on success, Err(description with stderr) otherwise.
pub fn try_run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn `{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `zfs ARGS`, panicking on failure; returns stdout.
pub fn zfs(args: &[&str]) -> String {
    run("zfs", args)
}

/// `zpool ARGS`, panicking on failure; returns stdout.
pub fn zpool(args: &[&str]) -> String {
    run("zpool", args)
}

/// `zfs get -H -p -o value PROP DATASET`.
pub fn zfs_get(dataset: &str, prop: &str) -> String {
    zfs(&["get", "-H", "-p", "-o", "value", prop, dataset]).trim().to_string()
}

/// `zfs send ARGS > out`.
pub fn zfs_send_to_file(args: &[&str], out: &Path) {
    let f = std::fs::File::create(out).expect("create send stream file");
    let st = Command::new("zfs")
        .arg("send")
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(Stdio::inherit())
        .status()
        .expect("spawn zfs send");
    assert!(st.success(), "`zfs send {}` failed: {st}", args.join(" "));
}

/// `zfs receive ARGS < input`.
pub fn zfs_receive_from_file(args: &[&str], input: &Path) {
    let f = std::fs::File::open(input).expect("open stream file");
    let st = Command::new("zfs")
        .arg("receive")
        .args(args)
        .stdin(f)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("spawn zfs receive");
    assert!(st.success(), "`zfs receive {}` < {} failed: {st}", args.join(" "), input.display());
}

/// A file-backed pool on the guest's tmpfs with a unique name; destroyed on drop.
#[derive(Debug)]
pub struct TestPool {
    name: String,
    file: PathBuf,
}

impl TestPool {
    /// A 256 MiB (sparse) pool named `<prefix><pid>x<n>`.
    pub fn create(prefix: &str) -> TestPool {
        Self::with_size(prefix, "256M")
    }

    /// A pool of the given size (`truncate -s` syntax, e.g. "1G").
    pub fn with_size(prefix: &str, size: &str) -> TestPool {
        let name = unique_name(prefix);
        let file = base_dir().join("pools").join(format!("{name}.img"));
        run("truncate", &["-s", size, file.to_str().expect("utf-8 path")]);
        zpool(&[
            "create",
            "-o",
            "cachefile=none",
            "-O",
            "mountpoint=none",
            &name,
            file.to_str().expect("utf-8 path"),
        ]);
        TestPool { name, file }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<pool>/<rel>`.
    pub fn dataset(&self, rel: &str) -> String {
        format!("{}/{rel}", self.name)
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        if let Err(e) = try_run("zpool", &["destroy", "-f", &self.name]) {
            eprintln!("warning: {e}");
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Writes a passphrase key file (mode 0600) under the tmpfs; returns its path.
pub fn key_file(passphrase: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    assert!(passphrase.len() >= 8, "zfs passphrases have at least 8 characters");
    let p = base_dir().join("keys").join(unique_name("key"));
    std::fs::write(&p, passphrase).expect("write key file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

/// A fresh, empty mountpoint directory under the tmpfs.
pub fn mountpoint(prefix: &str) -> PathBuf {
    let p = base_dir().join("mnt").join(unique_name(prefix));
    std::fs::create_dir_all(&p).expect("mkdir mountpoint");
    p
}

/// An encrypted dataset (aes-256-gcm, passphrase in a key file), mounted.
#[derive(Debug, Clone)]
pub struct EncryptedDataset {
    pub name: String,
    pub mountpoint: PathBuf,
    pub key_file: PathBuf,
}

impl EncryptedDataset {
    /// `keylocation=file://...` for this dataset's key file.
    pub fn key_location(&self) -> String {
        format!("file://{}", self.key_file.display())
    }

    /// Snapshots `<dataset>@<snap>`; returns the full snapshot name.
    pub fn snapshot(&self, snap: &str) -> String {
        let full = format!("{}@{snap}", self.name);
        zfs(&["snapshot", &full]);
        full
    }
}

/// Creates `<pool>/<rel>` encrypted with `passphrase` and mounts it on a fresh directory.
pub fn create_encrypted_dataset(pool: &TestPool, rel: &str, passphrase: &str) -> EncryptedDataset {
    let name = pool.dataset(rel);
    let key_file = key_file(passphrase);
    let mp = mountpoint("ds");
    zfs(&[
        "create",
        "-o",
        "encryption=aes-256-gcm",
        "-o",
        "keyformat=passphrase",
        "-o",
        &format!("keylocation=file://{}", key_file.display()),
        "-o",
        &format!("mountpoint={}", mp.display()),
        &name,
    ]);
    assert_eq!(zfs_get(&name, "mounted"), "yes", "{name} not mounted");
    EncryptedDataset { name, mountpoint: mp, key_file }
}

/// Writes `count` files of deterministic pseudo-random content (seeded) under `dir`,
/// spread over a few subdirectories, sizes 0..=max_size bytes. Returns the relative paths.
pub fn write_files(dir: &Path, seed: u64, count: usize, max_size: usize) -> Vec<PathBuf> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let rel = PathBuf::from(format!("d{}/f{seed}-{i}.bin", i % 4));
        let p = dir.join(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let len = rng.usize(0..=max_size);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        std::fs::write(&p, &data).expect("write test file");
        out.push(rel);
    }
    out
}

/// SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Relative path -> SHA-256 of every regular file under `dir` (directories as "dir/",
/// symlinks as "-> target"), skipping the `.zfs` control directory.
pub fn checksum_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if rel == ".zfs" {
                continue;
            }
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(root, &p, out);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.insert(rel, format!("-> {}", t.display()));
            } else {
                out.insert(rel, sha256_file(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
