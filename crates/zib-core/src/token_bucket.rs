//! The arithmetic of a bandwidth limit (`[daemon] max_upload_rate`, `max_download_rate`): a
//! token bucket over bytes, shared by every job, so that parallel PUTs (and parallel jobs)
//! together stay under the rate. Pure: the caller passes the time and sleeps for the wait it
//! is given; zibd's `bandwidth` module does that around the bytes it sends and receives.
//!
//! Tokens refill at `rate` bytes per second up to `burst`. A caller takes the bytes it is about
//! to send; the bucket may go into debt, and the caller waits until the debt would be paid.
//! Callers that take in turn are served in turn, each waiting for the bytes before it.

use std::time::Duration;

/// The least burst: one read of the upload body (64 KiB), so a single read never waits twice.
pub const MIN_BURST: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// The most tokens saved up while idle.
    burst: f64,
    /// Tokens now (negative: bytes taken ahead of the rate).
    tokens: f64,
    /// When `tokens` was last brought up to date, from an origin the caller chooses.
    at: Duration,
}

impl TokenBucket {
    /// A bucket of `rate` bytes per second (at least 1), full at `now`, holding a tenth of a
    /// second of bytes (at least [`MIN_BURST`]).
    pub fn new(rate: u64, now: Duration) -> Self {
        let rate = rate.max(1);
        let burst = (rate / 10).max(MIN_BURST) as f64;
        Self { rate: rate as f64, burst, tokens: burst, at: now }
    }

    /// Takes `n` bytes at `now` and says how long to wait before sending them (zero when the
    /// bucket holds them). A `now` earlier than the last call counts as that call's time.
    pub fn take(&mut self, now: Duration, n: u64) -> Duration {
        let now = now.max(self.at);
        let refill = (now - self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// `senders` take `piece` bytes each in turn, each sending when its wait is over (the
    /// simulated clock is the latest of those ends); returns the bytes sent and the time taken.
    fn simulate(rate: u64, senders: usize, piece: u64, rounds: usize) -> (u64, Duration) {
        let mut b = TokenBucket::new(rate, Duration::ZERO);
        let mut ready = vec![Duration::ZERO; senders];
        let mut sent = 0;
        for _ in 0..rounds {
            for r in ready.iter_mut() {
                let wait = b.take(*r, piece);
                *r += wait;
                sent += piece;
            }
        }
        (sent, ready.into_iter().max().unwrap())
    }

    #[test]
    fn one_sender_gets_the_rate_and_no_more() {
        let (sent, took) = simulate(40 * MIB, 1, 64 * 1024, 6400);
        let rate = sent as f64 / took.as_secs_f64();
        // 400 MiB at 40 MiB/s: 10 s, less the first burst (4 MiB).
        assert!((took.as_secs_f64() - 9.9).abs() < 0.01, "{took:?}");
        assert!(rate <= 40.0 * MIB as f64 * 1.011, "{rate}");
    }

    #[test]
    fn parallel_senders_share_the_rate() {
        // 8 PUTs at once, 256 KiB pieces: together still 40 MiB/s, not 8 x 40.
        let (sent, took) = simulate(40 * MIB, 8, 256 * 1024, 200);
        let rate = sent as f64 / took.as_secs_f64();
        assert!(rate <= 40.0 * MIB as f64 * 1.011, "{rate}");
        assert!(rate >= 40.0 * MIB as f64 * 0.99, "{rate}");
    }

    #[test]
    fn idle_time_saves_up_at_most_the_burst() {
        let mut b = TokenBucket::new(10 * MIB, Duration::ZERO);
        assert_eq!(b.take(Duration::ZERO, MIB), Duration::ZERO, "full at the start");
        // An hour idle saves up one burst (1 MiB), not an hour's worth.
        let later = Duration::from_secs(3600);
        assert_eq!(b.take(later, MIB), Duration::ZERO);
        let wait = b.take(later, MIB);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // The next taker waits behind it.
        let wait = b.take(later, MIB);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn a_clock_that_goes_back_neither_panics_nor_refills() {
        let mut b = TokenBucket::new(MIB, Duration::from_secs(10));
        b.take(Duration::from_secs(10), 128 * 1024);
        let wait = b.take(Duration::from_secs(5), 128 * 1024);
        // 256 KiB taken, one burst (MiB / 10, whole bytes) held: the rest at 1 MiB/s.
        let expect = (256.0 * 1024.0 - (MIB / 10) as f64) / MIB as f64;
        assert!((wait.as_secs_f64() - expect).abs() < 1e-9, "{wait:?}");
        // A tiny rate still works: the minimum burst, then a byte per second.
        let mut b = TokenBucket::new(0, Duration::ZERO);
        assert_eq!(b.take(Duration::ZERO, MIN_BURST), Duration::ZERO);
        assert_eq!(b.take(Duration::ZERO, 2), Duration::from_secs(2));
    }
}
