//! The time a backup, a prune or a cost report acts on. The wall clock, except in tests that
//! simulate months of daily runs in minutes: `ZIB_TEST_NOW=<Unix seconds>` fixes it for the
//! process (the snapshot's name, the manifest's time, the re-baseline and retention rules).
//! Unset in production; an unparsable value is ignored with a warning, never fatal.

use chrono::{DateTime, Utc};

/// Env var fixing [`utc`] for one process (tests only).
pub const TEST_NOW_ENV: &str = "ZIB_TEST_NOW";

/// Now, or the instant `ZIB_TEST_NOW` names.
pub fn utc() -> DateTime<Utc> {
    let Some(v) = std::env::var_os(TEST_NOW_ENV) else { return Utc::now() };
    match v
        .to_str()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| DateTime::from_timestamp(s, 0))
    {
        Some(t) => t,
        None => {
            tracing::warn!("{TEST_NOW_ENV}={v:?} is not a time in Unix seconds; using the clock");
            Utc::now()
        }
    }
}
