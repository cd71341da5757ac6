//! Shared by the backup host tests: the `[daemon]` and `[target]` tables of a config (state,
//! spool and socket under `root`, the bucket at `endpoint`; `[target]` comes last, so a caller
//! may append target keys before its `[[dataset]]` tables), and the `zibd` command run with
//! that config, the test credentials and the stand-in zfs keeping its state in `root/zfs`.

use std::{path::Path, process::Command};

pub const FAKE_ZFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake_zfs.sh");

/// `zibd --config <config> ARGS` with `env` on top of the test environment.
pub fn zibd(
    config: &Path,
    root: &Path,
    endpoint: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
    c.arg("--config").arg(config).args(args);
    for (k, v) in zib_testkit::test_env(endpoint) {
        c.env(k, v);
    }
    c.env("ZIB_ZFS_BIN", FAKE_ZFS).env("FAKE_ZFS_DIR", root.join("zfs"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn daemon_and_target(
    root: &Path,
    bucket: &str,
    endpoint: &str,
    class: &str,
    chunk_size: u64,
) -> String {
    format!(
        r#"
[daemon]
state_dir = "{root}/state"
spool_dir = "{root}/spool"
socket = "{root}/zibd.sock"

[target]
bucket = "{bucket}"
endpoint = "{endpoint}"
prefix = "backups"
storage_class = "{class}"
chunk_size = {chunk_size}
"#,
        root = root.display()
    )
}
