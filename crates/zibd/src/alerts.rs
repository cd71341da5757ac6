//! Carries out zib-core's [`zib_core::alerts`] decisions: looks at every dataset (its backups
//! and its last restore drill) at start, after every run and drill and once a minute (by the daemon's clock), and runs `daemon.notify_command`
//! for each event, one at a time. A failing notify command is logged, never retried (the next
//! event gets its own run).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use zib_core::alerts::{AlertEvent, AlertMemory, Observed, decide, drill_event, stale_after};
use zib_protocol::Response;

use crate::{
    daemon::DaemonCore,
    notify_command::{self, Notification},
};

/// How often staleness is looked at between runs.
pub const LOOK_EVERY: Duration = Duration::from_secs(60);

/// Starts the watcher on the daemon's tracker. Events come due whether or not
/// `daemon.notify_command` is set (a reload may set it); without one they are only logged.
pub fn spawn(core: Arc<DaemonCore>) {
    let ctx = core.job_context().clone();
    let mut run_ended = ctx.run_ended.subscribe();
    ctx.tracker.clone().spawn(async move {
        let mut memory: BTreeMap<String, AlertMemory> = BTreeMap::new();
        let mut drills = BTreeMap::new();
        loop {
            for n in look(&core, &mut memory).into_iter().chain(look_at_drills(&core, &mut drills)) {
                let cfg = core.config();
                let Some(argv) = cfg.daemon.notify_command.as_ref() else {
                    tracing::info!(dataset = %n.dataset, event = n.event.as_str(), "{} (no daemon.notify_command)", n.message(&notify_command::host_name()));
                    continue;
                };
                let timeout = Duration::from_secs(cfg.daemon.notify_timeout_secs);
                tracing::info!(dataset = %n.dataset, event = n.event.as_str(), "running the notify command");
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return,
                    r = notify_command::run(argv, &n, timeout) => match r {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(dataset = %n.dataset, event = n.event.as_str(), error = %e, "notification not sent"),
                    },
                }
            }
            let next = ctx.clock.now() + LOOK_EVERY;
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                r = run_ended.changed() => if r.is_err() { return },
                () = ctx.clock.sleep_until(next) => {}
            }
        }
    });
}

/// When the last drill dealt with of each dataset ended (see [`drill_event`]).
type DrillMemory = BTreeMap<String, Option<Option<DateTime<Utc>>>>;

/// One look at every configured dataset's last drill: a failed drill not seen before.
fn look_at_drills(core: &DaemonCore, memory: &mut DrillMemory) -> Vec<Notification> {
    let cfg = core.config();
    let last: BTreeMap<String, zib_core::drill_summary::DrillSummary> =
        core.drills().last().into_iter().collect();
    memory.retain(|name, _| cfg.datasets.iter().any(|d| d.name.as_str() == name));
    let mut out = Vec::new();
    for ds in &cfg.datasets {
        let name = ds.name.to_string();
        let d = last.get(&name);
        let seen = memory.entry(name.clone()).or_default();
        if let (Some(event), Some(d)) = (drill_event(seen, d), d) {
            out.push(Notification {
                event,
                dataset: name,
                error: d.reason.clone(),
                last_success: None,
                last_attempt: Some(d.at),
                stale_after: None,
                age: None,
            });
        }
    }
    out
}

/// One look at every dataset: the notifications due.
fn look(core: &DaemonCore, memory: &mut BTreeMap<String, AlertMemory>) -> Vec<Notification> {
    let cfg = core.config();
    let metrics = core.metrics();
    let now = metrics.now;
    let errors: BTreeMap<String, String> = match core.status(None) {
        Response::Status { datasets, .. } => datasets
            .into_iter()
            .filter_map(|d| d.last_error.map(|e| (d.dataset, e.message)))
            .collect(),
        _ => BTreeMap::new(),
    };
    memory.retain(|name, _| metrics.datasets.iter().any(|d| &d.dataset == name));
    let mut out = Vec::new();
    for d in &metrics.datasets {
        let Some(ds) = cfg.datasets.iter().find(|c| c.name.as_str() == d.dataset) else {
            continue;
        };
        let obs = Observed { last_attempt: d.last_attempt, last_success_at: d.last_success_at };
        let mem = memory.entry(d.dataset.clone()).or_insert_with(|| AlertMemory::new(&obs, now));
        let stale_after = stale_after(ds, cfg.daemon.timezone, now);
        // No next tick: never stale.
        let events = decide(mem, &obs, stale_after.unwrap_or(Duration::MAX), now);
        for event in events {
            let since = d.last_success_at.unwrap_or(mem.watched_since());
            out.push(Notification {
                event,
                dataset: d.dataset.clone(),
                error: match event {
                    AlertEvent::Recovery => None,
                    _ if d.activity == zib_core::metrics::DatasetActivity::Failed
                        || event == AlertEvent::Failure =>
                    {
                        errors.get(&d.dataset).cloned()
                    }
                    _ => None,
                },
                last_success: d.last_success_at,
                last_attempt: d.last_attempt.map(|(t, _)| t),
                stale_after,
                age: (now - since).to_std().ok(),
            });
        }
    }
    out
}
