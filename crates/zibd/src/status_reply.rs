//! The all-datasets status reply, encoded once and shared by the requests that come at about
//! the same time.
//!
//! A status reply grows with the datasets (about 250 bytes and a few microseconds each): with
//! 1,000 datasets, 50 `zibctl status` at once built and encoded it 50 times over, and the
//! slowest waited 150 ms. Now one request builds it and the others take the same bytes while it
//! is younger than [`REUSE`], unless something changed that a client could have caused or
//! waited for since it was built: a mutating request (after it was carried out), a reload, or
//! a run's end. So a client always sees its own pause, trigger or waited-for run in the next
//! status; what it may see up to [`REUSE`] late is what nobody asked for (a cron tick starting
//! a run, bytes uploaded). Replies for one dataset are not shared (they are small).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a built reply is shared. A quarter of `zibctl status --watch`'s refresh.
pub const REUSE: Duration = Duration::from_millis(250);

/// See the module docs.
#[derive(Debug, Default)]
pub struct StatusReplyCache {
    /// One builder at a time: the requests that arrive while it builds wait and share.
    slot: tokio::sync::Mutex<Option<Built>>,
    /// Bumped by [`StatusReplyCache::invalidate`].
    generation: AtomicU64,
}

#[derive(Debug)]
struct Built {
    made: Instant,
    /// The generation and the caller's epoch (runs ended) it was built at.
    key: (u64, u64),
    body: Arc<[u8]>,
}

impl StatusReplyCache {
    /// Something a client could have asked for changed: the next request builds anew.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The encoded reply: the shared one if it is still good for `epoch` (a counter the caller
    /// bumps on changes it does not report through [`StatusReplyCache::invalidate`]), else a
    /// new one from `build`.
    pub async fn get_or_build(&self, epoch: u64, build: impl FnOnce() -> Vec<u8>) -> Arc<[u8]> {
        let mut slot = self.slot.lock().await;
        // Read after taking the slot, and before building: a change made while the reply is
        // built leaves it with the old key, so the next request builds again.
        let key = (self.generation.load(Ordering::SeqCst), epoch);
        if let Some(b) = &*slot
            && b.key == key
            && b.made.elapsed() < REUSE
        {
            return b.body.clone();
        }
        let body: Arc<[u8]> = build().into();
        *slot = Some(Built { made: Instant::now(), key, body: body.clone() });
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn shares_a_young_reply_and_builds_again_after_a_change_or_reuse() {
        let cache = StatusReplyCache::default();
        let builds = AtomicUsize::new(0);
        let build = |n: u8| {
            builds.fetch_add(1, Ordering::SeqCst);
            vec![n]
        };
        assert_eq!(&*cache.get_or_build(0, || build(1)).await, &[1]);
        assert_eq!(&*cache.get_or_build(0, || build(2)).await, &[1], "shared");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        cache.invalidate();
        assert_eq!(&*cache.get_or_build(0, || build(3)).await, &[3], "after invalidate");
        assert_eq!(&*cache.get_or_build(1, || build(4)).await, &[4], "after a new epoch");
        assert_eq!(&*cache.get_or_build(1, || build(5)).await, &[4]);
        std::thread::sleep(REUSE + Duration::from_millis(10));
        assert_eq!(&*cache.get_or_build(1, || build(6)).await, &[6], "after REUSE");
        assert_eq!(builds.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_build() {
        let cache = Arc::new(StatusReplyCache::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, builds) = (cache.clone(), builds.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_build(7, || {
                        builds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        b"reply".to_vec()
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(&*t.await.unwrap(), b"reply");
        }
        // At most one build per REUSE window (however slow the machine), not one a request.
        let n = builds.load(Ordering::SeqCst);
        let windows = started.elapsed().as_millis() / REUSE.as_millis() + 1;
        assert!(n as u128 <= windows, "{n} builds for 50 requests in {windows} windows");
    }
}
