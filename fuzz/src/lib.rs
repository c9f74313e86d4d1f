//! Checks the fuzz targets share: what a parsed config, an outgoing kernel
//! report and a line quoted in the daemon's log must satisfy whatever the
//! input was.

use std::path::Path;

use telem_core::config::{Config, ConfigError, ConfigFormat};
use telem_core::record::{validate_classification, validate_payload};

/// Where config text is said to come from in messages.
pub const CONFIG_PATH: &str = "/etc/telemetrics/telemd.toml";

/// Parses `text` as the daemon does and checks what holds for any text:
/// `Internal` (each key accepted alone, the whole refused: "a bug here")
/// never happens, messages render, and an accepted config survives
/// `to_toml` (`config migrate`, `config check`) unchanged. Returns the
/// config when it was accepted.
pub fn check_config(text: &str, path: &Path) -> Option<Config> {
    let parsed = Config::parse_str(Config::default(), text, path);
    let cfg = match parsed {
        Err(ConfigError::Internal { source }) => {
            panic!("keys accepted one by one do not fit together: {source}")
        }
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
        Ok(c) => c,
    };
    assert_eq!(cfg.source.as_deref(), Some(path));
    assert!(cfg.format.is_some());

    // What `config migrate` writes reads back as the same config.
    let toml = cfg.to_toml();
    let back = Config::parse_str(Config::default(), &toml, path)
        .unwrap_or_else(|e| panic!("to_toml output does not parse: {e}\n--- to_toml:\n{toml}"));
    assert_eq!(back.format, Some(ConfigFormat::Toml));
    let mut same = back.clone();
    same.format = cfg.format;
    same.warnings = cfg.warnings.clone();
    assert_eq!(same, cfg, "config changed through to_toml:\n{toml}");
    assert!(
        back.warnings.is_empty(),
        "to_toml output gives warnings: {:?}",
        back.warnings
    );
    assert_eq!(back.to_toml(), toml, "to_toml is not a fixed point");
    Some(cfg)
}

/// A record a kernel-report probe sends: a classification the host takes,
/// severity 1..4, a payload the record format takes (at most 8192 bytes of
/// printable ASCII and whitespace), in the legacy layout.
pub fn check_outgoing(o: &kernel_report::Outgoing) {
    validate_classification(&o.classification)
        .unwrap_or_else(|e| panic!("classification refused by the host: {e}"));
    assert!(
        (1..=4).contains(&o.severity),
        "severity {} outside 1..4",
        o.severity
    );
    validate_payload(o.payload.as_bytes())
        .unwrap_or_else(|e| panic!("payload refused by the host: {e}"));
    assert!(o.payload.len() <= kernel_report::payload::MAX_PAYLOAD);
    assert!(
        o.payload.starts_with("Crash Report:\n"),
        "{:?}",
        &o.payload[..o.payload.len().min(80)]
    );
}

/// A report the assembler finished: its start line and at most
/// [`kernel_report::assemble::MAX_LINES`] lines.
pub fn check_report(r: &kernel_report::assemble::Report) {
    assert!(!r.lines.is_empty(), "a report without its start line");
    assert!(
        r.lines.len() <= kernel_report::assemble::MAX_LINES,
        "{} lines",
        r.lines.len()
    );
}

/// [`telem_core::untrusted::escape`]: no control character left (no
/// forged log line, no terminal escape) and the length near `cap`.
pub fn check_escaped(s: &str, cap: usize) {
    let e = telem_core::untrusted::escape(s, cap);
    assert!(!e.chars().any(char::is_control), "{e:?}");
    // The last character written before the cap (an escape is at most
    // `\u{10ffff}`, 10 bytes) and the note of what was cut.
    assert!(
        e.len() <= cap + 10 + "…[18446744073709551615 bytes cut]".len(),
        "{} bytes for a cap of {cap}",
        e.len()
    );
    if s.len() <= cap && !s.chars().any(char::is_control) {
        assert_eq!(e, s);
    }
}

/// Splits `data` at `\n` the way a reader of lines does: every complete
/// line, then what follows the last newline (possibly empty).
pub fn split_lines(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let rest = lines.pop().unwrap_or(&[]);
    (lines, rest)
}

/// A reader that hands out `data` in pieces of `chunk` bytes (a pipe or a
/// device read), so line splitting across reads is exercised.
pub struct Chunked<'a> {
    /// What is left.
    pub data: &'a [u8],
    /// Bytes per read, at least 1.
    pub chunk: usize,
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(self.chunk.max(1));
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
