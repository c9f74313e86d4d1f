//! What a probe may put in the daemon's log. Everything a probe says is
//! hostile: it is escaped (no newline can start a forged line, no terminal
//! escape reaches an admin's terminal), cut to a length, and rate-limited
//! per probe, with one line saying how much was suppressed.

use std::time::{Duration, Instant};

pub use crate::untrusted::{escape, FIELD_CAP};

/// A probe's log line is cut to this many bytes.
pub const LOG_LINE_CAP: usize = 4096;
/// Lines a probe may log per window.
pub const LINES_PER_WINDOW: u32 = 100;
/// Bytes a probe may log per window.
pub const BYTES_PER_WINDOW: usize = 64 * 1024;
/// The rate window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A probe's log allowance for the current window.
#[derive(Debug)]
pub struct LogGate {
    window_start: Instant,
    lines: u32,
    bytes: usize,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `suppressed` lines were dropped before it (say so first).
    Yes {
        /// Lines dropped in the window that just ended.
        suppressed: u64,
    },
    /// Drop it.
    No,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(Instant::now())
    }
}

impl LogGate {
    /// An allowance whose first window starts at `now`.
    pub fn new(now: Instant) -> LogGate {
        LogGate {
            window_start: now,
            lines: 0,
            bytes: 0,
            suppressed: 0,
        }
    }

    /// Whether a line of `len` bytes may be logged at `now`.
    pub fn admit(&mut self, now: Instant, len: usize) -> Admit {
        let mut suppressed = 0;
        if now.duration_since(self.window_start) >= WINDOW {
            suppressed = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.lines = 0;
            self.bytes = 0;
        }
        if self.lines >= LINES_PER_WINDOW || self.bytes.saturating_add(len) > BYTES_PER_WINDOW {
            self.suppressed += 1 + suppressed;
            return Admit::No;
        }
        self.lines += 1;
        self.bytes += len;
        Admit::Yes { suppressed }
    }

    /// Lines dropped in the current window so far (logged when the call ends).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_bytes_are_limited_per_window() {
        let t0 = Instant::now();
        let mut g = LogGate::new(t0);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(g.admit(t0, 10), Admit::Yes { suppressed: 0 });
        }
        assert_eq!(g.admit(t0, 10), Admit::No);
        assert_eq!(g.admit(t0, 10), Admit::No);
        assert_eq!(
            g.admit(t0 + WINDOW, 10),
            Admit::Yes { suppressed: 2 },
            "the first line of the next window reports what was dropped"
        );
        let mut g = LogGate::new(t0);
        assert_eq!(g.admit(t0, BYTES_PER_WINDOW), Admit::Yes { suppressed: 0 });
        assert_eq!(g.admit(t0, 1), Admit::No);
        assert_eq!(g.take_suppressed(), 1);
    }
}
