//! Kernel reports (the legacy oops parser's job), as a plain library that
//! builds for `wasm32-wasip2` (the kernel-oops and pstore probes) and
//! natively (its tests): reports assembled from kernel log lines
//! ([`assemble`]), what starts one ([`patterns`]), their records
//! ([`payload`]), the counting of repeats ([`repeats`]) and the decoding
//! of `/dev/kmsg`'s escapes ([`kmsg`]). Nothing here opens a file.
#![warn(missing_docs)]

pub mod assemble;
pub mod kmsg;
pub mod patterns;
pub mod payload;
pub mod repeats;
pub mod signature;

/// A record to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Classification.
    pub classification: String,
    /// Severity, 1 to 4.
    pub severity: u8,
    /// Payload (legacy layout).
    pub payload: String,
}

/// Turns finished reports into records, counting repeats of one already
/// sent within [`repeats::WINDOW_SECS`] instead of sending them again.
pub fn records_of(
    reports: Vec<assemble::Report>,
    seen: &mut repeats::Repeats,
    now_secs: u64,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for r in reports {
        let p = r.pattern;
        let sig = signature::signature(&r);
        if seen.count(p.classification, &sig, &r.lines[0].1, now_secs) {
            continue;
        }
        out.push(Outgoing {
            classification: p.classification.to_owned(),
            severity: p.severity,
            payload: payload::payload(&r),
        });
    }
    out
}
