//! Rate limits as the legacy keys define them: at most
//! `record_burst_limit` records per `record_window_length` minutes and at
//! most `byte_burst_limit` bytes per `byte_window_length` minutes, each
//! off at -1. Counts are kept per wall-clock minute; a window of N minutes
//! covers the current minute and the N before it (0: the current minute
//! only), as the legacy poster's per-minute buckets did. Unlike the legacy
//! poster, a record counts its real size against the byte limit.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use telem_core::config::DeliveryConfig;

/// Whether a record may be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within both limits.
    Allowed,
    /// Over a limit; it may pass again from this minute (unix minutes).
    Exceeded {
        /// First minute at which the window has room again.
        retry_at_minute: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Limit {
    max: u64,
    window: u64,
}

/// Sliding per-minute counters for the two limits.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    records: Option<Limit>,
    bytes: Option<Limit>,
    /// (minute, records, bytes), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
}

fn minute(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

impl RateLimiter {
    /// The limits of `config` (none at all when `rate_limit_enabled` is false).
    pub fn from_config(c: &DeliveryConfig) -> Self {
        let limit = |max: telem_core::config::values::Limit, window: u64| {
            max.get()
                .filter(|_| c.rate_limit_enabled)
                .map(|max| Limit { max, window })
        };
        RateLimiter {
            records: limit(c.record_burst_limit, c.record_window_length.get()),
            bytes: limit(c.byte_burst_limit, c.byte_window_length.get()),
            buckets: VecDeque::new(),
        }
    }

    /// The limits of a reloaded `config`, over what was already counted.
    pub fn reconfigured(&self, c: &DeliveryConfig) -> Self {
        let mut r = RateLimiter::from_config(c);
        r.buckets = self.buckets.clone();
        r
    }

    /// Whether a record of `size` bytes may go at `now`.
    pub fn check(&self, now: SystemTime, size: u64) -> Verdict {
        let m = minute(now);
        let mut retry = None::<u64>;
        if let Some(l) = self.records {
            if self.sum(m, l.window, |b| b.1) + 1 > l.max {
                retry = Some(self.free_at(m, l, 1, |b| b.1));
            }
        }
        if let Some(l) = self.bytes {
            if self.sum(m, l.window, |b| b.2) + size > l.max {
                let r = self.free_at(m, l, size, |b| b.2);
                retry = Some(retry.map_or(r, |x| x.max(r)));
            }
        }
        match retry {
            None => Verdict::Allowed,
            Some(retry_at_minute) => Verdict::Exceeded { retry_at_minute },
        }
    }

    /// Counts a record of `size` bytes sent at `now`.
    pub fn record(&mut self, now: SystemTime, size: u64) {
        let m = minute(now);
        match self.buckets.back_mut() {
            Some(b) if b.0 == m => {
                b.1 += 1;
                b.2 += size;
            }
            _ => self.buckets.push_back((m, 1, size)),
        }
        // Nothing older than the longest window (<= 59 minutes) matters.
        while self.buckets.front().is_some_and(|b| b.0 + 60 < m) {
            self.buckets.pop_front();
        }
    }

    fn sum(&self, m: u64, window: u64, f: impl Fn(&(u64, u64, u64)) -> u64) -> u64 {
        self.buckets
            .iter()
            .filter(|b| b.0 + window >= m && b.0 <= m)
            .map(f)
            .sum()
    }

    /// First minute from which `need` more fits under `l`.
    fn free_at(&self, m: u64, l: Limit, need: u64, f: impl Fn(&(u64, u64, u64)) -> u64) -> u64 {
        if need > l.max {
            // Never fits (a single record above the byte limit): try next minute,
            // the caller decides what to do with it.
            return m + 1;
        }
        let mut later = m + 1;
        loop {
            if self.sum(later, l.window, &f) + need <= l.max {
                return later;
            }
            later += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use telem_core::config::values::{Bounded, Limit};

    fn cfg(records: i64, rwin: u64, bytes: i64, bwin: u64) -> DeliveryConfig {
        let limit = |n: i64| u64::try_from(n).map_or(Limit::OFF, Limit::at);
        DeliveryConfig {
            record_burst_limit: limit(records),
            record_window_length: Bounded::new(rwin),
            byte_burst_limit: limit(bytes),
            byte_window_length: Bounded::new(bwin),
            ..DeliveryConfig::default()
        }
    }

    fn at(min: u64, sec: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60 + min * 60 + sec)
    }

    #[test]
    fn record_burst_over_a_window() {
        let mut rl = RateLimiter::from_config(&cfg(3, 2, -1, 0));
        for s in 0..3 {
            assert_eq!(rl.check(at(0, s), 10), Verdict::Allowed);
            rl.record(at(0, s), 10);
        }
        let base = minute(at(0, 0));
        assert_eq!(
            rl.check(at(0, 30), 10),
            Verdict::Exceeded {
                retry_at_minute: base + 3
            }
        );
        // Window of 2 minutes: minutes 0..=2 still count the three.
        assert!(matches!(rl.check(at(2, 59), 10), Verdict::Exceeded { .. }));
        assert_eq!(rl.check(at(3, 0), 10), Verdict::Allowed);
    }

    #[test]
    fn byte_burst_counts_real_sizes() {
        let mut rl = RateLimiter::from_config(&cfg(-1, 0, 1000, 0));
        rl.record(at(0, 0), 600);
        assert_eq!(rl.check(at(0, 1), 400), Verdict::Allowed);
        assert!(matches!(rl.check(at(0, 1), 401), Verdict::Exceeded { .. }));
        // Window 0: the next minute starts empty.
        assert_eq!(rl.check(at(1, 0), 1000), Verdict::Allowed);
        assert!(matches!(rl.check(at(1, 0), 1001), Verdict::Exceeded { .. }));
    }

    #[test]
    fn disabled_limits() {
        let rl = RateLimiter::from_config(&cfg(-1, 15, -1, 20));
        assert_eq!(rl.check(at(0, 0), u64::MAX / 2), Verdict::Allowed);
        let mut c = cfg(0, 15, 0, 20);
        c.rate_limit_enabled = false;
        assert_eq!(
            RateLimiter::from_config(&c).check(at(0, 0), 1),
            Verdict::Allowed
        );
        // A burst limit of 0 lets nothing through.
        assert!(matches!(
            RateLimiter::from_config(&cfg(0, 15, -1, 0)).check(at(0, 0), 1),
            Verdict::Exceeded { .. }
        ));
    }

    #[test]
    fn old_buckets_are_forgotten() {
        let mut rl = RateLimiter::from_config(&cfg(1000, 59, -1, 0));
        for m in 0..200 {
            rl.record(at(m, 0), 1);
        }
        assert!(rl.buckets.len() <= 61);
    }

    // Found by scripts/mutants.sh (docs/mutants.md).

    #[test]
    fn one_bucket_per_minute_and_nothing_older_than_an_hour_is_kept() {
        let mut rl = RateLimiter::from_config(&cfg(1000, 15, -1, 0));
        for s in 0..3 {
            rl.record(at(0, s), 10);
        }
        assert_eq!(rl.buckets.len(), 1, "records of one minute share a bucket");
        rl.record(at(200, 0), 10);
        assert_eq!(rl.buckets.len(), 1, "a bucket 200 minutes old is gone");
    }

    #[test]
    fn a_record_as_large_as_the_byte_limit_waits_for_the_window_to_empty() {
        // 100 bytes per 5 minutes; 1 byte already sent in minute 0.
        let mut rl = RateLimiter::from_config(&cfg(-1, 0, 100, 5));
        rl.record(at(0, 0), 1);
        match rl.check(at(0, 30), 100) {
            Verdict::Exceeded { retry_at_minute } => {
                assert_eq!(retry_at_minute, minute(at(0, 0)) + 6)
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_record_larger_than_the_byte_limit_is_retried_the_next_minute() {
        let rl = RateLimiter::from_config(&cfg(-1, 0, 100, 5));
        match rl.check(at(7, 10), 101) {
            Verdict::Exceeded { retry_at_minute } => {
                assert_eq!(retry_at_minute, minute(at(7, 0)) + 1)
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_clock_stepped_back_still_sees_the_whole_window() {
        // One record per 59 minutes. Records at minutes 0 and 60, then the
        // wall clock steps back to minute 59: minute 0 is inside its window.
        let mut rl = RateLimiter::from_config(&cfg(1, 59, -1, 0));
        rl.record(at(0, 0), 1);
        rl.record(at(60, 0), 1);
        assert!(matches!(rl.check(at(59, 0), 1), Verdict::Exceeded { .. }));
    }
}
