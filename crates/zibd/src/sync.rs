//! Leaf: a `std::sync::Mutex` lock that ignores poisoning. The daemon's mutexes guard small
//! in-memory tables (jobs, status, restore slots) that every writer leaves whole between two
//! statements; a task that panicked while holding one must not take the daemon down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a holder panicked.
pub fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *locked(&m) += 1;
        assert_eq!(*locked(&m), 2);
    }
}
