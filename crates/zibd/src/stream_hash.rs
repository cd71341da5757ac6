//! The whole stream's SHA-256, on a blocking thread beside the reader.
//!
//! The reader of `zfs send` hashes each chunk and spools it, and the stream's SHA-256 (the
//! manifest's, checked by every restore) is a second pass over the same bytes. On the reader's
//! thread the two made it the slowest step between `zfs send` and the PUTs, and with
//! `max_spooled_chunks` = parallel PUTs + 1 each PUT slot that frees waits for the next chunk
//! to be read. Here the second pass runs on a thread of its own, at most [`QUEUED`] blocks
//! behind.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

/// Blocks (of the reader's 1 MiB buffer) handed over and not yet hashed.
const QUEUED: usize = 8;

#[derive(Debug)]
pub struct StreamHasher {
    tx: Option<mpsc::Sender<Bytes>>,
    done: JoinHandle<[u8; 32]>,
}

impl StreamHasher {
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUED);
        let done = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(b) = rx.blocking_recv() {
                h.update(&b);
            }
            h.finalize().into()
        });
        StreamHasher { tx: Some(tx), done }
    }

    /// Adds `data` (copied) to the stream; waits while [`QUEUED`] blocks are not yet hashed.
    pub async fn update(&mut self, data: &[u8]) {
        if let Some(tx) = &self.tx {
            // The thread only ends once `tx` is dropped (in `finish`), so this cannot fail.
            let _ = tx.send(Bytes::copy_from_slice(data)).await;
        }
    }

    /// The SHA-256 of everything given, in hex.
    pub async fn finish(mut self) -> String {
        drop(self.tx.take());
        hex::encode((&mut self.done).await.expect("hashing does not panic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_what_it_was_given_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = StreamHasher::start();
        for block in data.chunks(1 << 20).chain([&[][..]]) {
            h.update(block).await;
        }
        assert_eq!(h.finish().await, hex::encode(Sha256::digest(&data)));
        assert_eq!(StreamHasher::start().finish().await, hex::encode(Sha256::digest(b"")));
    }
}
