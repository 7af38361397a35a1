//! The client's clock arithmetic: retransmission backoff, T1/T2 with fuzz, renew/rebind retries.
//! Pure functions of (now, timing, rng); every returned wait is already divided by `Timing::scale`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use rand::rngs::StdRng;

use super::config::Timing;

/// Largest T1/T2 fuzz in real seconds. RFC 2131 4.4.5 asks for "some random fuzz" to keep clients
/// that were bound together from renewing together; ±min(2 % of the lease, 2 s) spreads a batch of
/// simultaneous leases over up to 4 s while never moving T1/T2 by a noticeable share of the lease.
const MAX_FUZZ_SECONDS: f64 = 2.0;
const FUZZ_SHARE_OF_LEASE: f64 = 0.02;
/// RFC 2131 4.1: retransmissions are randomised by ±1 s.
const RETRANSMIT_JITTER_SECONDS: f64 = 1.0;

/// A wait of `seconds` real seconds as this client perceives it.
pub fn scaled_seconds(seconds: f64, timing: &Timing) -> TimeDelta {
    let scale = if timing.scale.is_finite() && timing.scale > 0.0 {
        timing.scale
    } else {
        1.0
    };
    // Clamped so absurd leases or scales saturate instead of overflowing the i64 microseconds.
    let micros = (seconds * 1e6 / scale).clamp(0.0, 1e17);
    TimeDelta::microseconds(micros as i64)
}

pub fn scaled(duration: Duration, timing: &Timing) -> TimeDelta {
    scaled_seconds(duration.as_secs_f64(), timing)
}

/// `now + delta`, saturating at the end of representable time (infinite leases).
pub fn after(now: DateTime<Utc>, delta: TimeDelta) -> DateTime<Utc> {
    now.checked_add_signed(delta)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Delay before retransmission number `sent` (1 = after the first send): base doubling up to max,
/// ±1 s (limited to a quarter of the nominal delay so small test bases never go negative).
pub fn retransmit_delay(sent: u32, timing: &Timing, rng: &mut StdRng) -> TimeDelta {
    let nominal = backoff_nominal(sent, timing);
    let jitter_bound = RETRANSMIT_JITTER_SECONDS.min(nominal / 4.0);
    let jitter = if jitter_bound > 0.0 {
        rng.random_range(-jitter_bound..=jitter_bound)
    } else {
        0.0
    };
    scaled_seconds(nominal + jitter, timing)
}

/// Wait before restarting after the `count`-th consecutive NAK: uniformly random up to the
/// backoff of that count, so a server that NAKs everything is not hammered in a tight loop.
pub fn restart_delay(count: u32, timing: &Timing, rng: &mut StdRng) -> TimeDelta {
    let ceiling = backoff_nominal(count, timing);
    scaled_seconds(rng.random_range(0.0..=ceiling), timing)
}

fn backoff_nominal(sent: u32, timing: &Timing) -> f64 {
    let base = timing.retransmit_base.as_secs_f64();
    let max = timing.retransmit_max.as_secs_f64().max(base);
    let doublings = sent.saturating_sub(1).min(30) as i32;
    (base * 2f64.powi(doublings)).min(max)
}

/// The three deadlines of a lease, in the client's perceived time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    pub renew_at: DateTime<Utc>,
    pub rebind_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// T1/T2/expiry counted from `requested_at` (when the REQUEST was sent, RFC 2131 4.4.1).
/// T1 = option 58 else 0.5 × lease, T2 = option 59 else 0.875 × lease; server values that break
/// T1 < T2 < lease fall back to the defaults; then each gets fuzz and the order is enforced again.
pub fn lease_times(
    requested_at: DateTime<Utc>,
    lease_seconds: u32,
    server_t1: Option<u32>,
    server_t2: Option<u32>,
    timing: &Timing,
    rng: &mut StdRng,
) -> LeaseTimes {
    let lease = f64::from(lease_seconds);
    let t2 = server_t2
        .map(f64::from)
        .filter(|&t2| t2 > 0.0 && t2 < lease)
        .unwrap_or(0.875 * lease);
    let t1 = server_t1
        .map(f64::from)
        .filter(|&t1| t1 > 0.0 && t1 < t2)
        .unwrap_or(0.5 * lease)
        .min(t2);
    let fuzz_bound = (lease * FUZZ_SHARE_OF_LEASE).min(MAX_FUZZ_SECONDS);
    let mut fuzz = || {
        if fuzz_bound > 0.0 {
            rng.random_range(-fuzz_bound..=fuzz_bound)
        } else {
            0.0
        }
    };
    // A millisecond of separation keeps the states distinct even for tiny leases.
    let gap = 0.001_f64.min(lease / 4.0);
    let t2 = (t2 + fuzz()).clamp(gap, lease - gap);
    let t1 = (t1 + fuzz()).clamp(0.0, t2 - gap);
    LeaseTimes {
        renew_at: after(requested_at, scaled_seconds(t1, timing)),
        rebind_at: after(requested_at, scaled_seconds(t2, timing)),
        expires_at: after(requested_at, scaled_seconds(lease, timing)),
    }
}

/// Next retransmission in RENEWING (limit = T2) or REBINDING (limit = expiry): half the remaining
/// time, at least `renew_retry_min`, never past the limit (RFC 2131 4.4.5).
pub fn renew_retry_at(now: DateTime<Utc>, limit: DateTime<Utc>, timing: &Timing) -> DateTime<Utc> {
    let remaining = limit - now;
    let wait = (remaining / 2).max(scaled(timing.renew_retry_min, timing));
    after(now, wait).min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn secs(delta: TimeDelta) -> f64 {
        delta.num_microseconds().unwrap() as f64 / 1e6
    }

    #[test]
    fn retransmissions_double_from_4_to_64_seconds_with_one_second_jitter() {
        let timing = Timing::default();
        let mut rng = StdRng::seed_from_u64(7);
        for (sent, nominal) in [
            (1, 4.0),
            (2, 8.0),
            (3, 16.0),
            (4, 32.0),
            (5, 64.0),
            (6, 64.0),
            (40, 64.0),
        ] {
            for _ in 0..200 {
                let delay = secs(retransmit_delay(sent, &timing, &mut rng));
                assert!(
                    (nominal - 1.0..=nominal + 1.0).contains(&delay),
                    "{sent}: {delay}"
                );
            }
        }
    }

    #[test]
    fn scale_divides_every_wait() {
        let timing = Timing {
            scale: 1000.0,
            ..Timing::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let delay = secs(retransmit_delay(1, &timing, &mut rng));
        assert!((0.003..=0.005).contains(&delay), "{delay}");
        assert_eq!(
            scaled(Duration::from_secs(60), &timing),
            TimeDelta::milliseconds(60)
        );
        let broken = Timing {
            scale: 0.0,
            ..Timing::default()
        };
        assert_eq!(
            scaled(Duration::from_secs(3), &broken),
            TimeDelta::seconds(3)
        );
    }

    #[test]
    fn defaults_are_half_and_seven_eighths_within_fuzz() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let times = lease_times(t0(), 3600, None, None, &Timing::default(), &mut rng);
            assert!((secs(times.renew_at - t0()) - 1800.0).abs() <= 2.0);
            assert!((secs(times.rebind_at - t0()) - 3150.0).abs() <= 2.0);
            assert_eq!(times.expires_at - t0(), TimeDelta::seconds(3600));
        }
    }

    #[test]
    fn server_t1_t2_win_when_consistent() {
        let mut rng = StdRng::seed_from_u64(4);
        let times = lease_times(
            t0(),
            600,
            Some(100),
            Some(400),
            &Timing::default(),
            &mut rng,
        );
        assert!((secs(times.renew_at - t0()) - 100.0).abs() <= 2.0);
        assert!((secs(times.rebind_at - t0()) - 400.0).abs() <= 2.0);
        // T2 >= lease is ignored (0.875 x lease), and so is a T1 not below the resulting T2.
        let times = lease_times(
            t0(),
            600,
            Some(550),
            Some(700),
            &Timing::default(),
            &mut rng,
        );
        assert!((secs(times.renew_at - t0()) - 300.0).abs() <= 2.0);
        assert!((secs(times.rebind_at - t0()) - 525.0).abs() <= 2.0);
    }

    #[test]
    fn order_t1_t2_expiry_holds_even_for_tiny_leases() {
        let mut rng = StdRng::seed_from_u64(5);
        for lease in [1, 2, 3, 10, 120, u32::MAX] {
            for _ in 0..100 {
                let t = lease_times(
                    t0(),
                    lease,
                    Some(lease),
                    Some(lease),
                    &Timing::default(),
                    &mut rng,
                );
                assert!(
                    t0() <= t.renew_at && t.renew_at < t.rebind_at && t.rebind_at < t.expires_at
                );
            }
        }
    }

    #[test]
    fn renew_retries_halve_the_remaining_time_down_to_the_minimum() {
        let timing = Timing::default();
        let limit = t0() + TimeDelta::seconds(1000);
        assert_eq!(
            renew_retry_at(t0(), limit, &timing),
            t0() + TimeDelta::seconds(500)
        );
        let late = limit - TimeDelta::seconds(100);
        assert_eq!(
            renew_retry_at(late, limit, &timing),
            late + TimeDelta::seconds(60)
        );
        let later = limit - TimeDelta::seconds(30);
        assert_eq!(renew_retry_at(later, limit, &timing), limit);
    }

    #[test]
    fn restart_delay_grows_with_consecutive_failures() {
        let timing = Timing::default();
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..100 {
            assert!(secs(restart_delay(1, &timing, &mut rng)) <= 4.0);
            assert!(secs(restart_delay(10, &timing, &mut rng)) <= 64.0);
        }
    }
}
