//! The request ledger of a state directory: `<state_dir>/requests.json`, the S3 requests every
//! zib process using that directory has made (counted by `s3::request_count`), so that
//! `zibd cost` / `zibctl cost` can say what was spent on requests, not only what is stored.
//!
//! The daemon adds its counts once a minute and at shutdown; a foreground command adds its own
//! when it ends. Writers take `<state_dir>/requests.lock` (waiting for each other: it is held
//! for one small read and write), and the file is replaced atomically, so a crash loses at most
//! the counts not yet added, never the ledger.

use std::{fs::File, os::unix::fs::OpenOptionsExt, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;
use zib_core::request_ledger::RequestLedger;

use crate::path_error::{PathError, io_err};
use crate::s3::request_count;
use crate::state_store::{StateStoreError, private_dir, write_atomic};

pub const LEDGER_FILE: &str = "requests.json";
const LOCK_FILE: &str = "requests.lock";
/// How often the daemon adds its counts.
pub const RECORD_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RequestLedgerError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Write(#[from] StateStoreError),
    #[error("{0}")]
    Corrupt(String),
}

/// Reads the ledger of `state_dir`; `None` when nothing was recorded yet.
pub fn load(state_dir: &Path) -> Result<Option<RequestLedger>, RequestLedgerError> {
    let path = state_dir.join(LEDGER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            RequestLedger::from_json(&path.display().to_string(), &bytes)
                .map_err(RequestLedgerError::Corrupt)?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read request ledger", &path)(e).into()),
    }
}

/// Adds the requests counted since the last call to the ledger of `state_dir` and returns it.
/// On failure the counts stay in the counter, for the next call.
pub fn record(state_dir: &Path, now: DateTime<Utc>) -> Result<RequestLedger, RequestLedgerError> {
    let counts = request_count::take();
    let r = (|| {
        private_dir(state_dir).map_err(io_err("cannot create state directory", state_dir))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&lock_path)
            .map_err(io_err("cannot open lock file", &lock_path))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("cannot lock", &lock_path)(e.into()))?;
        let mut ledger = load(state_dir)?.unwrap_or_else(|| RequestLedger::new(now));
        if !counts.is_empty() {
            ledger.record(&counts, now);
            let json = serde_json::to_vec_pretty(&ledger).expect("a ledger serializes");
            write_atomic(&state_dir.join(LEDGER_FILE), &json)?;
        }
        Ok(ledger)
    })();
    if r.is_err() {
        request_count::give_back(&counts);
    }
    r
}

/// [`record`] off the async threads.
pub async fn record_async(
    state_dir: &Path,
    now: DateTime<Utc>,
) -> Result<RequestLedger, RequestLedgerError> {
    let dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || record(&dir, now))
        .await
        .unwrap_or_else(|e| Err(RequestLedgerError::Corrupt(format!("request ledger task: {e}"))))
}

/// [`record`] at the end of a foreground command: a failure is a warning, not the command's.
pub fn record_best_effort(state_dir: &Path) {
    if let Err(e) = record(state_dir, Utc::now()) {
        tracing::warn!(error = %e, "the requests of this run were not added to the request ledger");
    }
}

/// The daemon's loop: adds the counts every [`RECORD_EVERY`] until `shutdown` (the daemon adds
/// the last ones after its jobs have stopped).
pub async fn keep(state_dir: &Path, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RECORD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        if let Err(e) = record_async(state_dir, Utc::now()).await {
            tracing::warn!(error = %e, "cannot add the requests made to the request ledger");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zib_core::{StorageClass, request_ledger::RequestKind};

    #[test]
    fn counts_are_added_and_a_corrupt_ledger_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t0: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        // Other tests of this binary may count requests too: only our own are asserted, as
        // a difference.
        let before = load(dir.path()).unwrap();
        assert!(before.is_none());
        let mut c = zib_core::request_ledger::RequestCounts::default();
        c.add(RequestKind::Put(StorageClass::DeepArchive), 5);
        request_count::give_back(&c);
        let l = record(dir.path(), t0).unwrap();
        assert!(l.counts.put[&StorageClass::DeepArchive] >= 5);
        assert_eq!(l.since, t0);
        let first = l.counts.put[&StorageClass::DeepArchive];
        request_count::give_back(&c);
        let l = record(dir.path(), t0 + chrono::Duration::hours(1)).unwrap();
        assert!(l.counts.put[&StorageClass::DeepArchive] >= first + 5);
        assert_eq!(load(dir.path()).unwrap().unwrap(), l);

        std::fs::write(dir.path().join(LEDGER_FILE), b"{not json").unwrap();
        request_count::give_back(&c);
        let e = record(dir.path(), t0).unwrap_err().to_string();
        assert!(e.contains("requests.json: not a zib request ledger"), "{e}");
        // Nothing was overwritten, and the counts wait for the next record.
        assert_eq!(std::fs::read(dir.path().join(LEDGER_FILE)).unwrap(), b"{not json");
        assert!(request_count::take().put[&StorageClass::DeepArchive] >= 5);
    }
}
