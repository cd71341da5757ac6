//! Crash injection for tests: `ZIB_FAILPOINT=<name>:<n>` aborts the process the n-th time the
//! named point is reached, so tests can kill zibd at exact places (after a PUT but before the
//! state save, between chunks, ...) and prove that the next run resumes correctly. Unset in
//! production, where each check is one relaxed atomic load after the first.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if `ZIB_FAILPOINT` names this point and this is its n-th hit.
pub fn hit(name: &str) {
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("ZIB_FAILPOINT").ok()?;
        let (n, count) = v.split_once(':').unwrap_or((&v, "1"));
        Some((n.to_owned(), count.parse().unwrap_or(1)))
    });
    if let Some((n, at)) = spec
        && n == name
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *at
    {
        eprintln!("zib failpoint {name} reached: aborting");
        std::process::abort();
    }
}
