//! Retry delays after a failed post: exponential backoff with full jitter
//! (a random delay between zero and the exponential cap), so a fleet that
//! lost its collector does not come back in lock-step, and never shorter
//! than what the collector asked for with `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cap of the first retry's delay.
pub const INITIAL_DELAY: Duration = Duration::from_secs(1);
/// Largest cap, reached after about nine failures in a row.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A `Retry-After` longer than this is treated as this (a misconfigured
/// collector must not park records for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Backoff state of the delivery worker.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff drawing its jitter from `seed` (tests pass a fixed one).
    pub fn new(seed: u64) -> Self {
        Backoff {
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The current exponential cap: `INITIAL_DELAY * 2^failures`, at most `MAX_DELAY`.
    pub fn cap(&self) -> Duration {
        let factor = 1u64 << self.failures.min(20);
        INITIAL_DELAY.saturating_mul(factor as u32).min(MAX_DELAY)
    }

    /// Delay before the next try after one more failure.
    pub fn fail(&mut self, retry_after: Option<Duration>) -> Duration {
        let cap = self.cap();
        self.failures = self.failures.saturating_add(1);
        let jittered = Duration::from_millis(self.rng.random_range(0..=cap.as_millis() as u64));
        match retry_after {
            Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_cap() {
        let mut b = Backoff::new(7);
        let mut caps = Vec::new();
        for _ in 0..12 {
            let cap = b.cap();
            let d = b.fail(None);
            assert!(d <= cap, "{d:?} > {cap:?}");
            caps.push(cap.as_secs());
        }
        assert_eq!(&caps[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        b.reset();
        assert_eq!(b.cap(), INITIAL_DELAY);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(1);
        for _ in 0..8 {
            b.fail(None);
        }
        let ds: std::collections::HashSet<_> = (0..20).map(|_| b.fail(None)).collect();
        assert!(ds.len() > 10);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(3);
        assert!(b.fail(Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        assert_eq!(b.fail(Some(Duration::from_secs(100_000))), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    // Found by scripts/mutants.sh (docs/mutants.md).
    #[test]
    fn failures_are_counted_until_a_success() {
        let mut b = Backoff::new(1);
        assert_eq!(b.failures(), 0);
        for n in 1..=3 {
            b.fail(None);
            assert_eq!(b.failures(), n);
        }
        b.reset();
        assert_eq!(b.failures(), 0);
    }
}
