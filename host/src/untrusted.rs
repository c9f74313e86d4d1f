//! Text from outside (probes, native clients, cores, config files named by
//! clients) quoted in the daemon's log or printed on an admin's terminal:
//! control characters are escaped, so an embedded newline cannot start a
//! forged log line and an escape sequence cannot drive a terminal, and the
//! text is cut to a length.

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

#[cfg(test)]
mod tests {
    use super::*;

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
