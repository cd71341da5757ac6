//! Dev-only test helpers for zib (never a dependency of the product).
//!
//! - [`MotoServer`] and [`S3sFsServer`]: local S3 servers on a free loopback port, killed on
//!   drop, or an already-running one named by `ZIB_TEST_MOTO_ENDPOINT` /
//!   `ZIB_TEST_S3SFS_ENDPOINT` (how the guest suite reaches the host's servers at 10.0.2.2).
//!   Moto has the cold-storage semantics (DEEP_ARCHIVE, RestoreObject, If-None-Match);
//!   s3s-fs validates checksums and stores large objects cheaply.
//! - [`s3_client`] / [`s3_config`]: an aws-sdk-s3 client set up for a local endpoint with
//!   the fixed test credentials, and [`create_bucket`] with a unique name.
//! - [`FaultProxy`]: a counting, fault-injecting HTTP/1.1 loopback proxy (503 SlowDown,
//!   500, dropped connections, delays on the Nth matching request).
//! - [`Tmux`]: a private tmux server and pane, for tests of what a command draws on a terminal.
//!
//! The server binaries come from `scripts/testbed/setup` (in `/opt/zib-testbed/bin`, or
//! `$ZIB_TESTBED_PREFIX/bin`); a missing binary is a loud panic, never a skip.

mod client;
mod proxy;
mod servers;
mod tmux;

pub use client::{
    TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY, create_bucket, get_bytes,
    legacy_upload, list_all, put_bytes, s3_client, s3_config, test_credentials, test_env,
    unique_bucket_name,
};
pub use proxy::{Fault, FaultAction, FaultProxy, Matcher, Outcome, RecordedRequest};
pub use servers::{MotoServer, S3sFsServer, testbed_bin};
pub use tmux::Tmux;
