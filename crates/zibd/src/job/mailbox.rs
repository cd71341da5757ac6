//! A job task's commands: a queue under a lock and a [`Notify`].
//!
//! Every configured dataset has one, and it is empty nearly always. A tokio unbounded channel
//! takes 1.5 KB before its first message (a 32-slot block and cache-padded ends): 1,000 idle
//! datasets kept 1.5 MiB in empty channels. This one is about 100 bytes, and its queue
//! allocates only when a command waits. It keeps what the task relies on from a channel:
//! sending fails once the receiver is closed or gone, the receiver sees the end when the last
//! strong sender is dropped, and a weak sender does not keep it open.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use tokio::sync::Notify;

struct Inner<T> {
    state: Mutex<State<T>>,
    /// One receiver: `notify_one` keeps a permit when it is not waiting, so no wake is lost.
    wake: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    closed: bool,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding it cannot leave the queue half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a mailbox.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, closed: false }),
        wake: Notify::new(),
    });
    (Sender(inner.clone()), Receiver(inner))
}

/// Sends commands; the receiver sees the end when the last one is dropped.
pub struct Sender<T>(Arc<Inner<T>>);

/// A sender that does not keep the mailbox open.
pub struct WeakSender<T>(Weak<Inner<T>>);

/// The task's end.
pub struct Receiver<T>(Arc<Inner<T>>);

impl<T> Sender<T> {
    /// Queues `value`; gives it back if the receiver is closed or gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut s = self.0.lock();
        if s.closed {
            return Err(value);
        }
        s.queue.push_back(value);
        drop(s);
        self.0.wake.notify_one();
        Ok(())
    }

    pub fn downgrade(&self) -> WeakSender<T> {
        WeakSender(Arc::downgrade(&self.0))
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mailbox::Sender")
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.senders -= 1;
        let last = s.senders == 0;
        drop(s);
        if last {
            self.0.wake.notify_one();
        }
    }
}

impl<T> WeakSender<T> {
    /// A sender, unless every strong one is gone (then the mailbox has ended).
    pub fn upgrade(&self) -> Option<Sender<T>> {
        let inner = self.0.upgrade()?;
        let mut s = inner.lock();
        if s.senders == 0 {
            return None;
        }
        s.senders += 1;
        drop(s);
        Some(Sender(inner))
    }
}

impl<T> Receiver<T> {
    /// The next command; `None` once no strong sender is left and the queue is empty.
    /// Cancel-safe: a command is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut s = self.0.lock();
                if let Some(v) = s.queue.pop_front() {
                    return Some(v);
                }
                if s.senders == 0 {
                    return None;
                }
            }
            self.0.wake.notified().await;
        }
    }

    /// Refuses further sends; what is queued can still be taken with [`Receiver::try_recv`].
    pub fn close(&mut self) {
        self.0.lock().closed = true;
    }

    pub fn try_recv(&mut self) -> Option<T> {
        self.0.lock().queue.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.closed = true;
        let left = std::mem::take(&mut s.queue);
        drop(s);
        // Dropped outside the lock: a command's drop may wake its sender (a reply channel).
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_last_strong_sender_goes() {
        let (tx, mut rx) = mailbox();
        let tx2 = tx.clone();
        let weak = tx.downgrade();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!((rx.recv().await, rx.recv().await), (Some(1), Some(2)));
        drop(tx);
        let waiting = tokio::spawn(async move { (rx.recv().await, rx) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one strong sender is left");
        let up = weak.upgrade().expect("a strong sender is left");
        drop(tx2);
        up.send(3).unwrap();
        let (got, mut rx) = waiting.await.unwrap();
        assert_eq!(got, Some(3));
        drop(up);
        let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(ended, Ok(None), "no strong sender: the end");
        assert!(weak.upgrade().is_none(), "a weak sender does not reopen it");
    }

    #[tokio::test]
    async fn a_closed_or_dropped_receiver_refuses_and_drops_what_was_queued() {
        let (tx, mut rx) = mailbox();
        tx.send("queued").unwrap();
        rx.close();
        assert_eq!(tx.send("late"), Err("late"));
        assert_eq!(rx.try_recv(), Some("queued"));
        assert_eq!(rx.try_recv(), None);
        let (tx, rx) = mailbox::<tokio::sync::oneshot::Sender<()>>();
        let (reply, answered) = tokio::sync::oneshot::channel();
        tx.send(reply).unwrap();
        drop(rx);
        assert!(answered.await.is_err(), "the queued command was dropped with the receiver");
        let (back, _) = tokio::sync::oneshot::channel();
        assert!(tx.send(back).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_between_many_senders_and_one_receiver() {
        let (tx, mut rx) = mailbox();
        let senders: Vec<_> = (0..8)
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..1000 {
                        tx.send((t, i)).unwrap();
                        if i % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0; 8];
        while let Some((t, i)) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("no lost wake")
        {
            assert_eq!(i, next[t], "in order per sender");
            next[t] += 1;
        }
        assert_eq!(next, [1000; 8]);
        for s in senders {
            s.await.unwrap();
        }
    }
}
