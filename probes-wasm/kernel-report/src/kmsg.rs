//! `/dev/kmsg` hands each message with its unprintable bytes and its
//! backslashes escaped as `\xHH` (`Documentation/ABI/testing/dev-kmsg`);
//! `dmesg` and the legacy client's `klogctl` text show them decoded. The
//! kernel-oops probe decodes them before a line is read, so a report
//! reads the same from either, and a record stays printable: the line
//! breaks and tabs a message may carry become spaces, and what remains
//! unprintable becomes `?` when the payload is written.

/// The message with its `\xHH` escapes decoded (bytes that are not UTF-8
/// become U+FFFD), and line breaks and tabs made spaces. A `\` not
/// followed by two hex digits stays as it is.
pub fn unescape(text: &str) -> String {
    if !text.contains("\\x") {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            let hex = bytes
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out)
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_line_breaks_become_spaces() {
        // A real message with an embedded line break, as /dev/kmsg hands
        // it (https://github.com/troglobit/sysklogd/pull/51).
        assert_eq!(
            unescape("Kernel parameter elevator= does not have any effect anymore.\\x0aPlease use sysfs to set IO scheduler for individual devices."),
            "Kernel parameter elevator= does not have any effect anymore. Please use sysfs to set IO scheduler for individual devices."
        );
        // A backslash is escaped too; a byte that is not UTF-8 is replaced.
        assert_eq!(unescape("C:\\x5cdir"), "C:\\dir");
        assert_eq!(unescape("caf\\xc3\\xa9 \\xff"), "caf\u{e9} \u{fffd}");
        // What is not an escape stays.
        assert_eq!(unescape("a\\xZZ b\\x4"), "a\\xZZ b\\x4");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn the_payload_of_a_decoded_line_stays_printable() {
        let line = unescape("WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2 comm \\x1b[31m\\x07");
        let report = crate::assemble::Report {
            pattern: crate::patterns::start_of(&line).unwrap(),
            lines: vec![(crate::assemble::Kind::Other, line)],
        };
        let payload = crate::payload::payload(&report);
        assert!(
            payload
                .bytes()
                .all(|b| b == b'\n' || (b' '..=b'~').contains(&b)),
            "{payload:?}"
        );
        assert!(payload.contains("comm ?[31m?"), "{payload:?}");
    }
}
