//! zib-core: the pure logic of zib — configuration, names and object keys, the manifest
//! (catalog) format, chain planning and the state record. No sockets, processes or AWS here, so
//! everything is testable with plain unit tests; the daemon's I/O modules build on it.

pub mod alerts;
pub mod backup_plan;
pub mod catalog;
pub mod chunk_journal;
pub mod config;
pub mod drill;
pub mod drill_summary;
pub mod human;
pub mod legacy;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod period;
pub mod pricing;
pub mod request_ledger;
pub mod restore_plan;
pub mod schedule;
pub mod state;
pub mod storage_class;
pub mod token_bucket;
pub mod tree;
pub mod verify;
pub mod verify_summary;

pub use config::{Config, DatasetConfig};
pub use manifest::{ChunkRecord, Manifest, SnapRef};
pub use names::{DatasetName, KeyLayout, SnapName, SnapPrefix};
pub use state::DatasetState;
pub use storage_class::StorageClass;
