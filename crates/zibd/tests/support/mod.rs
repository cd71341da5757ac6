//! Shared by the host test files (`mod support;`): the stand-in zfs ([`fake_zfs`]), the config
//! a test writes ([`config`]), the `zibd` binary run with both and the test credentials
//! ([`zibd`]), a catalog written straight through the S3 API ([`catalog`]), and a strict
//! Prometheus text parser ([`prom_text`]). Each test binary uses a part of it.

#![allow(dead_code, unused_imports)] // each test binary uses a part of it

pub mod catalog;
pub mod config;
pub mod fake_zfs;
pub mod prom_text;

use std::{path::Path, process::Command};

pub use config::ConfigToml;
pub use fake_zfs::FakeZfs;

/// `zibd --config <config> ARGS`: the test credentials for `endpoint`, the stand-in zfs keeping
/// its state in `root/zfs`, then `env` on top (which may name another stand-in's state).
pub fn zibd(
    config: &Path,
    root: &Path,
    endpoint: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let mut c = zibd_command(endpoint, &FakeZfs::at(root.join("zfs")));
    c.arg("--config").arg(config).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The `zibd` binary with the test credentials for `endpoint` and `zfs` as its zfs; no
/// failpoint or config path inherited from the test's environment.
pub fn zibd_command(endpoint: &str, zfs: &FakeZfs) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
    for (k, v) in zib_testkit::test_env(endpoint) {
        c.env(k, v);
    }
    for (k, v) in zfs.env() {
        c.env(k, v);
    }
    c.env_remove("ZIB_FAILPOINT").env_remove("ZIBD_CONFIG");
    c
}

/// Asserts that a `zibd` run succeeded (else shows its output); its stderr.
pub fn ok(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "zibd failed ({}):\nstdout: {}\nstderr: {err}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

/// Asserts that a `zibd` run failed (else shows its output); its stderr.
pub fn failed(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "zibd should have failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}
