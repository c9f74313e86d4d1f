//! Text from outside (probes, native clients, cores, config files named by
//! clients) quoted in the daemon's log or printed on an admin's terminal:
//! control characters are escaped, so an embedded newline cannot start a
//! forged log line and an escape sequence cannot drive a terminal, and the
//! text is cut to a length. And since outsiders decide how often such
//! lines happen, they go through a [`LogLimit`].

use std::time::{Duration, Instant};

/// Fields such as classifications, paths or error strings quoted in the
/// daemon's own lines are cut to about this many bytes.
pub const FIELD_CAP: usize = 256;

/// `s` with control characters (newlines, escapes, DEL, C1) written as
/// `\n`, `\u{1b}` and the like, and cut to about `cap` bytes with a note
/// of how much was cut.
pub fn escape(s: &str, cap: usize) -> String {
    let mut out = String::with_capacity(s.len().min(cap) + 16);
    for (i, c) in s.char_indices() {
        if out.len() >= cap {
            out.push_str(&format!("…[{} bytes cut]", s.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines (and bytes) allowed per window for log lines that outsiders can
/// cause; the rest are counted and the next line written says how many.
#[derive(Debug)]
pub struct LogLimit {
    lines: u32,
    bytes: usize,
    window: Duration,
    window_start: Instant,
    used_lines: u32,
    used_bytes: usize,
    suppressed: u64,
}

impl LogLimit {
    /// `lines` lines and `bytes` bytes per `window`, the first window
    /// starting at `now`.
    pub fn new(lines: u32, bytes: usize, window: Duration, now: Instant) -> LogLimit {
        LogLimit {
            lines,
            bytes,
            window,
            window_start: now,
            used_lines: 0,
            used_bytes: 0,
            suppressed: 0,
        }
    }

    /// Whether a line of `len` bytes may be written at `now`: if so, how
    /// many were held back since the last one written (for it to say).
    pub fn admit(&mut self, now: Instant, len: usize) -> Option<u64> {
        if now.duration_since(self.window_start) >= self.window {
            self.window_start = now;
            self.used_lines = 0;
            self.used_bytes = 0;
        }
        if self.used_lines >= self.lines || self.used_bytes.saturating_add(len) > self.bytes {
            self.suppressed += 1;
            return None;
        }
        self.used_lines += 1;
        self.used_bytes += len;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines held back since the last one written (to say so at the end of
    /// something, a probe call).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_counts_what_it_holds_back() {
        let t = Instant::now();
        let mut b = LogLimit::new(2, usize::MAX, Duration::from_secs(10), t);
        assert_eq!(b.admit(t, 0), Some(0));
        assert_eq!(b.admit(t, 0), Some(0));
        assert_eq!(b.admit(t, 0), None);
        assert_eq!(b.admit(t + Duration::from_secs(9), 0), None);
        // A new window: the first line says how many were held back.
        assert_eq!(b.admit(t + Duration::from_secs(10), 0), Some(2));
        assert_eq!(b.admit(t + Duration::from_secs(10), 0), Some(0));
        // Bytes count too.
        let mut b = LogLimit::new(100, 10, Duration::from_secs(10), t);
        assert_eq!(b.admit(t, 10), Some(0));
        assert_eq!(b.admit(t, 1), None);
        assert_eq!(b.take_suppressed(), 1);
    }

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(
            escape("a\nINFO forged\x1b[31m\u{7f}", 100),
            "a\\nINFO forged\\u{1b}[31m\\u{7f}"
        );
        let cut = escape(&"x".repeat(10_000), 100);
        assert!(cut.starts_with(&"x".repeat(100)));
        assert!(cut.ends_with("…[9900 bytes cut]"), "{cut}");
        assert_eq!(escape("é", 1), "é");
    }
}
