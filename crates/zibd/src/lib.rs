//! zibd as a library: the daemon's I/O modules (zfs, S3, state store) and the jobs built on
//! them. `main.rs` only calls [`cli::main`].

pub mod alerts;
pub mod backup;
pub mod bandwidth;
pub mod cli;
pub mod control;
pub mod cost;
pub mod daemon;
pub mod failpoint;
pub mod import_legacy;
pub mod job;
pub mod lifecycle;
pub mod live_line;
pub mod metrics;
pub mod notify_command;
pub mod now;
pub mod outside;
pub mod path_error;
pub mod process;
pub mod request_ledger;
pub mod restore;
pub mod s3;
pub mod scheduled_drill;
pub mod scheduled_verify;
pub mod spool;
pub mod state_store;
pub mod status_reply;
pub mod stream_hash;
pub mod sync;
pub mod systemd;
pub mod tree;
pub mod verify;
pub mod zfs;
