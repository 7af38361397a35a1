//! A token bucket shared by every client of one manager, so that a restart with hundreds of
//! addresses (or a flapping server) never turns into a storm of DHCP traffic toward the server.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The pure bucket: how many tokens are there at a given instant, and how long until the next.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_second: rate_per_second.max(0.001),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one; otherwise says how long until there will be.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.rate_per_second,
            ))
        }
    }
}

/// The async edge around [`TokenBucket`].
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        RateLimiter {
            bucket: Mutex::new(TokenBucket::new(rate_per_second, burst, Instant::now())),
        }
    }

    /// Waits until a transmission may go out.
    pub async fn acquire(&self) {
        loop {
            let wait = match self.bucket.lock().await.try_take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, start);
        assert!(bucket.try_take(start).is_ok());
        assert!(bucket.try_take(start).is_ok());
        assert!(bucket.try_take(start).is_ok());
        let wait = bucket.try_take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 100 ms later exactly one more token has accrued.
        let later = start + Duration::from_millis(100);
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn never_exceeds_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 2, start);
        let much_later = start + Duration::from_secs(60);
        assert!(bucket.try_take(much_later).is_ok());
        assert!(bucket.try_take(much_later).is_ok());
        assert!(bucket.try_take(much_later).is_err());
    }
}
