//! What a probe may put in the daemon's log. Everything a probe says is
//! hostile: it is escaped (no newline can start a forged line, no terminal
//! escape reaches an admin's terminal), cut to a length, and rate-limited
//! per probe, with one line saying how much was suppressed.

use std::time::{Duration, Instant};

pub use telem_core::untrusted::{escape, LogLimit, FIELD_CAP};

/// A probe's log line is cut to this many bytes.
pub const LOG_LINE_CAP: usize = 4096;
/// Lines a probe may log per window.
pub const LINES_PER_WINDOW: u32 = 100;
/// Bytes a probe may log per window.
pub const BYTES_PER_WINDOW: usize = 64 * 1024;
/// The rate window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A probe's log allowance: [`LINES_PER_WINDOW`] lines or
/// [`BYTES_PER_WINDOW`] bytes per [`WINDOW`], `log()`, stdout and stderr
/// together.
pub fn probe_log_limit() -> LogLimit {
    LogLimit::new(LINES_PER_WINDOW, BYTES_PER_WINDOW, WINDOW, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_bytes_are_limited_per_window() {
        let t0 = Instant::now();
        let mut g = LogLimit::new(LINES_PER_WINDOW, BYTES_PER_WINDOW, WINDOW, t0);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(g.admit(t0, 10), Some(0));
        }
        assert_eq!(g.admit(t0, 10), None);
        assert_eq!(g.admit(t0, 10), None);
        assert_eq!(
            g.admit(t0 + WINDOW, 10),
            Some(2),
            "the first line of the next window reports what was dropped"
        );
        let mut g = LogLimit::new(LINES_PER_WINDOW, BYTES_PER_WINDOW, WINDOW, t0);
        assert_eq!(g.admit(t0, BYTES_PER_WINDOW), Some(0));
        assert_eq!(g.admit(t0, 1), None);
        assert_eq!(g.take_suppressed(), 1);
    }
}
