//! A token bucket shared by every client of one manager, so that a restart with thousands of
//! addresses (or a flapping server) never turns into a storm of DHCP traffic toward the server.
//!
//! Two priorities: a transmission for an address that already holds a lease (renewal, rebind,
//! INIT-REBOOT after a restart, release) is [`Priority::Held`], everything else (a new address's
//! DISCOVER and REQUEST) is [`Priority::New`]. New exchanges may never take the last
//! [`TokenBucket::reserve`] tokens, and a waiting held transmission is due as soon as one token is
//! there, while a new one waits until one more than the reserve is: a burst of new addresses can
//! therefore delay a renewal by at most one token's time, and never make a held lease expire.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Which class a transmission belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// For an address that holds a lease: renewals, rebinds, INIT-REBOOT, release.
    Held,
    /// For an address still looking for its first lease.
    New,
}

/// The pure bucket: how many tokens are there at a given instant, and how long until the next.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    reserve: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; a quarter of the burst (rounded down) is kept for held leases.
    pub fn new(rate_per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate_per_second: rate_per_second.max(0.001),
            burst: f64::from(burst),
            reserve: f64::from(burst / 4),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Tokens that only [`Priority::Held`] transmissions may take.
    pub fn reserve(&self) -> u32 {
        self.reserve as u32
    }

    /// Takes one token for `priority` if there is one it may take; otherwise says how long until
    /// there will be (if nobody else takes one meanwhile).
    pub fn try_take(&mut self, now: Instant, priority: Priority) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_second).min(self.burst);
        self.last = now;
        let needed = match priority {
            Priority::Held => 1.0,
            Priority::New => 1.0 + self.reserve,
        };
        if self.tokens >= needed {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - self.tokens) / self.rate_per_second,
            ))
        }
    }
}

/// The async edge around [`TokenBucket`].
///
/// Waiters queue per priority behind a fair (FIFO) lock and only the head of each queue sleeps
/// until the bucket has its token: with thousands of addresses waiting (a restart, a burst of new
/// ones) each token wakes one task, not all of them.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: std::sync::Mutex<TokenBucket>,
    held_queue: Mutex<()>,
    new_queue: Mutex<()>,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        RateLimiter {
            bucket: std::sync::Mutex::new(TokenBucket::new(rate_per_second, burst, Instant::now())),
            held_queue: Mutex::new(()),
            new_queue: Mutex::new(()),
        }
    }

    /// Waits until a transmission of `priority` may go out.
    pub async fn acquire(&self, priority: Priority) {
        let queue = match priority {
            Priority::Held => &self.held_queue,
            Priority::New => &self.new_queue,
        };
        let _head = queue.lock().await;
        loop {
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .try_take(Instant::now(), priority);
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{Held, New};

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        // burst 3: no reserve (3 / 4 = 0), so both classes see the same bucket.
        let mut bucket = TokenBucket::new(10.0, 3, start);
        assert_eq!(bucket.reserve(), 0);
        assert!(bucket.try_take(start, New).is_ok());
        assert!(bucket.try_take(start, New).is_ok());
        assert!(bucket.try_take(start, Held).is_ok());
        let wait = bucket.try_take(start, New).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 100 ms later exactly one more token has accrued.
        let later = start + Duration::from_millis(100);
        assert!(bucket.try_take(later, New).is_ok());
        assert!(bucket.try_take(later, New).is_err());
    }

    #[test]
    fn never_exceeds_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 2, start);
        let much_later = start + Duration::from_secs(60);
        assert!(bucket.try_take(much_later, Held).is_ok());
        assert!(bucket.try_take(much_later, Held).is_ok());
        assert!(bucket.try_take(much_later, Held).is_err());
    }

    #[test]
    fn new_exchanges_leave_the_reserve_to_held_leases() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 8, start);
        assert_eq!(bucket.reserve(), 2);
        for _ in 0..6 {
            assert!(bucket.try_take(start, New).is_ok());
        }
        // Two tokens left: new exchanges wait for a third, renewals take them at once.
        let new_wait = bucket.try_take(start, New).unwrap_err();
        assert!((new_wait.as_secs_f64() - 0.01).abs() < 1e-6, "{new_wait:?}");
        assert!(bucket.try_take(start, Held).is_ok());
        assert!(bucket.try_take(start, Held).is_ok());
        let held_wait = bucket.try_take(start, Held).unwrap_err();
        let new_wait = bucket.try_take(start, New).unwrap_err();
        assert!(
            (held_wait.as_secs_f64() - 0.01).abs() < 1e-6,
            "{held_wait:?}"
        );
        assert!((new_wait.as_secs_f64() - 0.03).abs() < 1e-6, "{new_wait:?}");
        assert!(held_wait < new_wait, "a waiting renewal is due first");
    }

    #[test]
    fn a_flood_of_new_exchanges_never_delays_a_renewal_by_more_than_one_token() {
        // 1,000 new addresses keep asking as fast as they may; a renewal that arrives at any
        // moment finds a token at once or within one token's time (10 ms at 100/s).
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 20, start);
        let mut now = start;
        let mut new_sent = 0;
        for step in 0..1_000u32 {
            match bucket.try_take(now, New) {
                Ok(()) => new_sent += 1,
                Err(wait) => now += wait,
            }
            if step.is_multiple_of(37) {
                let mut probe = bucket.clone();
                match probe.try_take(now, Held) {
                    Ok(()) => {}
                    Err(wait) => assert!(wait <= Duration::from_millis(10), "{wait:?}"),
                }
            }
        }
        assert!(new_sent > 0, "new exchanges still make progress");
        // They never took the reserve.
        assert!(bucket.tokens >= f64::from(bucket.reserve()) - 1e-9);
    }

    #[test]
    fn rate_is_shared_by_both_classes() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 4, start);
        let mut now = start;
        let mut sent = 0;
        // Alternate the classes for 10 simulated seconds: at most burst + 10 s * rate tokens.
        let end = start + Duration::from_secs(10);
        let mut turn = 0u32;
        while now < end {
            let priority = if turn.is_multiple_of(2) { Held } else { New };
            match bucket.try_take(now, priority) {
                Ok(()) => {
                    sent += 1;
                    turn += 1;
                }
                Err(wait) => now += wait,
            }
        }
        assert!(sent <= 4 + 100 + 1, "{sent}");
        assert!(sent >= 100, "{sent}");
    }

    #[tokio::test]
    async fn many_waiters_go_one_token_at_a_time_held_ones_first() {
        // 20 new and 5 held waiters on a bucket of burst 4 (reserve 1) at 100/s: the held ones
        // finish before the new ones that were waiting with them, and all within the rate.
        let limiter = std::sync::Arc::new(RateLimiter::new(100.0, 4));
        let start = Instant::now();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..25 {
            let (limiter, order) = (limiter.clone(), order.clone());
            let priority = if i >= 20 { Held } else { New };
            tasks.push(tokio::spawn(async move {
                limiter.acquire(priority).await;
                order.lock().unwrap().push((priority, Instant::now()));
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 25);
        let last_held = order.iter().rposition(|(p, _)| *p == Held).unwrap();
        let news_after_last_held = order[last_held..].iter().filter(|(p, _)| *p == New).count();
        assert!(
            news_after_last_held >= 10,
            "held ones went first: {order:?}"
        );
        // 25 tokens from a burst of 4 at 100/s take at least 0.21 s.
        let elapsed = order.last().unwrap().1 - start;
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    }
}
