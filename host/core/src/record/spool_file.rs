//! The staged record file (`docs/legacy-protocol.md` §3): optional
//! `CFG:<path>` line, the 15 header lines, the payload, one extra `\n`.
//!
//! Keeping the legacy layout means an old spool directory drains with the
//! new daemon and the old daemon can drain ours.

use super::{Headers, Record, RecordError, CFG_PREFIX};

/// Exact size of the file [`encode`] writes for `record`.
pub fn encoded_len(record: &Record) -> usize {
    let cfg = record
        .config
        .as_ref()
        .map_or(0, |c| CFG_PREFIX.len() + c.len() + 1);
    let headers: usize = record
        .headers
        .iter()
        .map(|(n, v)| n.len() + 2 + v.len() + 1)
        .sum();
    cfg + headers + record.payload.len() + 1
}

/// The file contents for a record.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(record));
    if let Some(c) = &record.config {
        out.extend_from_slice(CFG_PREFIX.as_bytes());
        out.extend_from_slice(c.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(record.headers.to_block().as_bytes());
    out.extend_from_slice(record.payload.as_bytes());
    out.push(b'\n');
    out
}

/// Parses a spool file, ours or the legacy daemon's. The structure must be
/// right (15 headers in order); values are returned as written so a legacy
/// file is delivered exactly as it was staged. The one extra trailing
/// newline the legacy daemon added is removed from the payload.
pub fn decode(bytes: &[u8]) -> Result<Record, SpoolFileError> {
    let mut rest = bytes;
    let mut config = None;
    if rest.starts_with(CFG_PREFIX.as_bytes()) {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(SpoolFileError::Truncated)?;
        let path = std::str::from_utf8(&rest[CFG_PREFIX.len()..nl])
            .map_err(|_| SpoolFileError::BadConfigLine)?;
        config = Some(path.to_owned());
        rest = &rest[nl + 1..];
    }
    // Find the end of the 15th header line.
    let mut end = 0;
    for _ in 0..super::NUM_HEADERS {
        match rest[end..].iter().position(|&b| b == b'\n') {
            Some(nl) => end += nl + 1,
            None => return Err(SpoolFileError::Truncated),
        }
    }
    let headers = Headers::parse_block(&rest[..end])?;
    let mut payload = &rest[end..];
    if let Some(p) = payload.strip_suffix(b"\n") {
        payload = p;
    }
    let payload =
        String::from_utf8(payload.to_vec()).map_err(|_| SpoolFileError::PayloadNotText)?;
    Ok(Record {
        config,
        headers,
        payload,
    })
}

/// Why a spool file could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SpoolFileError {
    #[error("file ends inside the header block")]
    Truncated,
    #[error("CFG: line is not UTF-8")]
    BadConfigLine,
    #[error("payload is not text")]
    PayloadNotText,
    #[error(transparent)]
    Record(#[from] RecordError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{sample, Header};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../tests/fixtures/legacy/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn legacy_staged_files_decode_and_reencode_identically() {
        for (name, payload) in [
            ("staged-hprobe.txt", "hello\n"),
            ("staged-record-gen.txt", "hello world payload"),
        ] {
            let bytes = fixture(name);
            let rec = decode(&bytes).unwrap();
            assert_eq!(rec.payload, payload, "{name}");
            assert_eq!(rec.config, None);
            assert_eq!(encode(&rec), bytes, "{name}");
            assert_eq!(encoded_len(&rec), bytes.len());
        }
        let rec = decode(&fixture("staged-hprobe.txt")).unwrap();
        assert_eq!(
            rec.headers.get(Header::EventId),
            "ccd004932d7fb011922e452366a7e8fe"
        );
    }

    #[test]
    fn config_line_round_trips() {
        let mut r = sample();
        r.config = Some("/etc/telemetrics/custom.conf".into());
        let bytes = encode(&r);
        assert!(bytes.starts_with(b"CFG:/etc/telemetrics/custom.conf\nrecord_format_version: 4\n"));
        assert_eq!(decode(&bytes).unwrap(), r);
        assert_eq!(encoded_len(&r), bytes.len());
    }

    #[test]
    fn truncated_file_is_an_error() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes[..100]), Err(SpoolFileError::Truncated));
        assert_eq!(decode(b""), Err(SpoolFileError::Truncated));
    }
}
