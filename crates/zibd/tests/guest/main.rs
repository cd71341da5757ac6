//! The real-ZFS end-to-end suite. It runs inside a QEMU guest with the OpenZFS module
//! loaded (the host kernel has none): `scripts/test` builds this binary on the host
//! (`cargo test --workspace --features zibd/guest-tests --test guest --no-run`), starts
//! moto and s3s-fs on the host's loopback, boots ONE guest with
//! `scripts/testbed/run-in-guest` and runs it there,
//! with `ZIB_TEST_MOTO_ENDPOINT` / `ZIB_TEST_S3SFS_ENDPOINT` set to `http://10.0.2.2:PORT`.
//! A plain `cargo test --workspace` never builds it (feature `guest-tests`).
//!
//! Adding tests: put them in a module beside this file (`backup.rs`, `restore.rs`,
//! `daemon.rs`, ...), declare it below with `mod NAME;`, and start it with
//! `use crate::common::*;`. `common.rs` has the shared helpers: [`common::TestPool`]
//! (file-backed pool on tmpfs, unique name, destroyed on drop),
//! [`common::create_encrypted_dataset`], [`common::write_files`],
//! [`common::checksum_tree`], `zfs`/`zpool` wrappers; S3 servers and clients come from
//! `zib_testkit` (`MotoServer::start()`, `S3sFsServer::start()`, `FaultProxy`). Every test
//! must work in parallel with the others (unique pool and bucket names; nothing global).
//! The daemon binary under test is `env!("CARGO_BIN_EXE_zibd")`.
//!
//! Running only some guest tests: `scripts/test --guest-only -- FILTER` (args after `--`
//! go to this test binary).

mod backup;
mod bed;
mod common;
/// The host tests' config writer (`tests/support/config.rs`), shared so the two suites write
/// configs the same way.
#[path = "../support/config.rs"]
#[allow(dead_code)]
mod config_toml;
mod crash_rounds;
mod daemon;
mod drill;
mod legacy;
mod local_faults;
/// The host tests' strict Prometheus text parser (`tests/support/prom_text.rs`).
#[path = "../support/prom_text.rs"]
#[allow(dead_code)]
mod prom_text;
mod restore;
mod tree;
