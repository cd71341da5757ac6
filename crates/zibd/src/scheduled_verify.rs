//! `daemon.verify_schedule`: the daemon verifies the whole prefix on its own (the same check as
//! `zibctl verify`: one LIST per 1,000 keys, one HEAD per chunk, nothing thawed), because a
//! check nobody remembers to run finds nothing. The last result of a whole-prefix check,
//! scheduled or asked for, is kept in `<state_dir>/verify.json` so `zibctl status` and the
//! metrics still show a failed check after a restart, until a clean one replaces it.

use std::{path::Path, sync::Arc};

use chrono::{DateTime, Utc};
use zib_core::verify_summary::{VerifySummary, VerifyTrigger};

use crate::daemon::DaemonCore;

/// The file of the last result, under the state directory.
pub const RECORD_FILE: &str = "verify.json";

/// The kept result, if any. A damaged file is reported and treated as none: the next check
/// writes a good one.
pub fn load(state_dir: &Path) -> Option<VerifySummary> {
    crate::state_store::load_json(&state_dir.join(RECORD_FILE), "the last verify result")
}

/// Keeps `s` as the last result (atomically replaced).
pub fn save(state_dir: &Path, s: &VerifySummary) {
    crate::state_store::save_json(&state_dir.join(RECORD_FILE), s, "the verify result");
}

/// The next tick of the schedule in force after `now`, if one is configured.
pub fn next_tick(core: &DaemonCore, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cfg = core.config();
    cfg.daemon.verify_schedule.as_ref()?.next_after(now, cfg.daemon.timezone)
}

/// Starts the task on the daemon's tracker ([`crate::job::clock::spawn_looks`]); it runs
/// whether or not a schedule is configured now, since a reload may set one; a check that
/// outlasts its interval skips the ticks it overran.
pub fn spawn(core: Arc<DaemonCore>) {
    let ctx = core.job_context().clone();
    let c = core.clone();
    let next = move |since| {
        let due = next_tick(&c, since);
        c.set_next_verify(due);
        due.map(|t| ((), t)).into_iter().collect()
    };
    crate::job::clock::spawn_looks(&ctx, next, move |_| {
        let core = core.clone();
        async move {
            let deep = core.config().daemon.verify_deep;
            tracing::info!(deep, "scheduled verify of the bucket starting");
            let _ = core.verify_prefix(VerifyTrigger::Schedule, deep).await;
        }
    });
}
