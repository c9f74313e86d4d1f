//! The libtelemetry socket frame (`docs/legacy-protocol.md` §1), byte for byte:
//!
//! ```text
//! u32 total_size            counts every byte of the frame, itself included
//! [ "CFG:" path NUL ]       optional
//! u32 header_size
//! header block              15 "name: value\n" lines
//! payload
//! NUL
//! ```
//!
//! Integers are host-endian, as the C library wrote them.

use thiserror::Error;

use super::{
    validate_payload, Headers, Record, RecordError, CFG_PREFIX, MAX_PAYLOAD_LEN, NUM_HEADERS,
};

/// `PATH_MAX` on Linux: the longest `CFG:` path the legacy library sent.
pub const PATH_MAX: usize = 4096;
/// Header budget the legacy daemon allowed: 15 lines of 80 bytes.
pub const MAX_HEADER_BLOCK: usize = NUM_HEADERS * 80;
/// Largest `total_size` the legacy daemon accepted.
pub const MAX_FRAME_SIZE: u32 = (8 + 4 + PATH_MAX + MAX_PAYLOAD_LEN + MAX_HEADER_BLOCK) as u32;
/// Smallest `total_size` that can be a frame; the legacy daemon rejected
/// anything at or below 4 (a frame holding only its own size).
pub const MIN_FRAME_SIZE: u32 = 5;

/// Why a frame was refused. Messages name the field at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum FrameError {
    #[error("frame size {0} is too small (must be more than 4)")]
    TooSmall(u32),
    #[error("frame size {0} exceeds the limit of {MAX_FRAME_SIZE} bytes")]
    TooLarge(u32),
    #[error("CFG: prefix is not terminated by a NUL")]
    CfgUnterminated,
    #[error("CFG: path is empty, not absolute, not UTF-8 or longer than PATH_MAX")]
    CfgInvalid,
    #[error("frame ends before its header size field")]
    NoHeaderSize,
    #[error("header size {header_size} does not fit the {available} bytes left in the frame")]
    HeaderSizeMismatch { header_size: u32, available: usize },
    #[error("frame does not end with a NUL byte")]
    NoTerminator,
    #[error("invalid record")]
    Record(#[from] RecordError),
}

/// Checks the leading `total_size` field before the rest is read, so an
/// absurd size costs no allocation.
pub fn check_total_size(total: u32) -> Result<(), FrameError> {
    if total < MIN_FRAME_SIZE {
        Err(FrameError::TooSmall(total))
    } else if total > MAX_FRAME_SIZE {
        Err(FrameError::TooLarge(total))
    } else {
        Ok(())
    }
}

/// Parses everything after the `total_size` field into a record whose
/// structure is sound (15 headers in order, NUL-terminated, payload of
/// printable bytes). Header values are checked later by
/// [`Record::validate`], after the daemon replaced what it owns.
pub fn parse_frame_body(body: &[u8]) -> Result<Record, FrameError> {
    let mut rest = body;
    let mut config = None;
    if rest.starts_with(CFG_PREFIX.as_bytes()) {
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FrameError::CfgUnterminated)?;
        let path = &rest[CFG_PREFIX.len()..nul];
        if path.is_empty() || path.len() > PATH_MAX || path[0] != b'/' {
            return Err(FrameError::CfgInvalid);
        }
        let path = std::str::from_utf8(path).map_err(|_| FrameError::CfgInvalid)?;
        if path.bytes().any(|b| b == b'\n' || b.is_ascii_control()) {
            return Err(FrameError::CfgInvalid);
        }
        config = Some(path.to_owned());
        rest = &rest[nul + 1..];
    }
    if rest.len() < 4 {
        return Err(FrameError::NoHeaderSize);
    }
    let header_size = u32::from_ne_bytes(rest[..4].try_into().expect("4 bytes"));
    rest = &rest[4..];
    // header block + payload + NUL must be exactly what is left.
    if header_size as usize >= rest.len() {
        return Err(FrameError::HeaderSizeMismatch {
            header_size,
            available: rest.len(),
        });
    }
    let (block, tail) = rest.split_at(header_size as usize);
    let (payload, nul) = tail.split_at(tail.len() - 1);
    if nul != [0] {
        return Err(FrameError::NoTerminator);
    }
    let headers = Headers::parse_block(block)?;
    validate_payload(payload)?;
    let payload = String::from_utf8(payload.to_vec()).expect("validated ASCII");
    Ok(Record {
        config,
        headers,
        payload,
    })
}

/// Parses a whole frame (`total_size` included), as the daemon receives it.
pub fn parse_frame(frame: &[u8]) -> Result<Record, FrameError> {
    if frame.len() < 4 {
        return Err(FrameError::TooSmall(frame.len() as u32));
    }
    let total = u32::from_ne_bytes(frame[..4].try_into().expect("4 bytes"));
    check_total_size(total)?;
    if total as usize != frame.len() {
        return Err(FrameError::HeaderSizeMismatch {
            header_size: total,
            available: frame.len(),
        });
    }
    parse_frame_body(&frame[4..])
}

/// Encodes a record as libtelemetry does, so our client is understood by
/// both this daemon and the legacy one.
pub fn encode_frame(record: &Record) -> Vec<u8> {
    let block = record.headers.to_block();
    let cfg_len = record
        .config
        .as_ref()
        .map_or(0, |c| CFG_PREFIX.len() + c.len() + 1);
    let total = 4 + cfg_len + 4 + block.len() + record.payload.len() + 1;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_ne_bytes());
    if let Some(c) = &record.config {
        out.extend_from_slice(CFG_PREFIX.as_bytes());
        out.extend_from_slice(c.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(&(block.len() as u32).to_ne_bytes());
    out.extend_from_slice(block.as_bytes());
    out.extend_from_slice(record.payload.as_bytes());
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{sample, Header};

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/../../tests/fixtures/legacy/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn legacy_frames_parse_and_reencode_byte_for_byte() {
        for name in [
            "frame-record-gen.bin",
            "frame-hprobe-cfg.bin",
            "frame-record-gen-multiline.bin",
            "frame-record-gen-8192.bin",
        ] {
            let bytes = fixture(name);
            let rec = parse_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(encode_frame(&rec), bytes, "{name} re-encodes differently");
        }
    }

    #[test]
    fn legacy_frame_contents() {
        let rec = parse_frame(&fixture("frame-hprobe-cfg.bin")).unwrap();
        assert_eq!(rec.config.as_deref(), Some("/etc/telemetrics/custom.conf"));
        assert_eq!(
            rec.headers.get(Header::Classification),
            "org.clearlinux/hello/world"
        );
        assert_eq!(rec.headers.get(Header::CpuModel), "AMD EPYC");
        assert_eq!(rec.payload, "hello\n");

        let rec = parse_frame(&fixture("frame-record-gen-multiline.bin")).unwrap();
        assert_eq!(rec.payload, "multi\nline\tpayload\n");
        assert_eq!(rec.headers.get(Header::PayloadFormatVersion), "2");

        let rec = parse_frame(&fixture("frame-record-gen-8192.bin")).unwrap();
        // The capture holds 8191 bytes: the legacy tool cut at its 8192-byte
        // buffer, NUL included. The spec allows 8192; both are accepted.
        assert_eq!(rec.payload.len(), 8191);
    }

    #[test]
    fn size_limits() {
        assert_eq!(check_total_size(0), Err(FrameError::TooSmall(0)));
        assert_eq!(check_total_size(4), Err(FrameError::TooSmall(4)));
        assert!(check_total_size(5).is_ok());
        assert!(check_total_size(MAX_FRAME_SIZE).is_ok());
        assert_eq!(
            check_total_size(u32::MAX),
            Err(FrameError::TooLarge(u32::MAX))
        );
    }

    #[test]
    fn malformed_bodies() {
        let good = encode_frame(&sample());
        // truncated: drop the NUL and last payload byte
        let mut t = good.clone();
        t.truncate(t.len() - 2);
        let n = t.len() as u32;
        t[..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(parse_frame(&t), Err(FrameError::NoTerminator));

        let mut nul_payload = sample();
        nul_payload.payload = "ab".into();
        let mut f = encode_frame(&nul_payload);
        let n = f.len();
        f[n - 2] = 0;
        assert!(matches!(
            parse_frame(&f),
            Err(FrameError::Record(RecordError::PayloadByte { byte: 0, .. }))
        ));
        f[n - 2] = 0xe9;
        assert!(matches!(
            parse_frame(&f),
            Err(FrameError::Record(RecordError::PayloadByte {
                byte: 0xe9,
                ..
            }))
        ));

        // header size pointing past the end
        let mut f = good.clone();
        f[4..8].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(matches!(
            parse_frame(&f),
            Err(FrameError::HeaderSizeMismatch { .. })
        ));

        // CFG without NUL
        let mut body = b"CFG:/etc/x.conf".to_vec();
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse_frame_body(&body), Err(FrameError::CfgUnterminated));
        assert_eq!(
            parse_frame_body(b"CFG:relative\0xxxx"),
            Err(FrameError::CfgInvalid)
        );
        assert_eq!(parse_frame_body(b"ab"), Err(FrameError::NoHeaderSize));
    }

    // Found by scripts/mutants.sh (docs/mutants.md).

    #[test]
    fn the_legacy_size_limits_are_exact() {
        assert_eq!(MAX_HEADER_BLOCK, 15 * 80);
        // 2·4 + 4 + PATH_MAX + 8192 + 15·80, the legacy daemon's bound.
        assert_eq!(MAX_FRAME_SIZE, 13_500);
        assert_eq!(check_total_size(13_501), Err(FrameError::TooLarge(13_501)));
    }

    #[test]
    fn cfg_paths_are_absolute_bounded_and_plain() {
        let body = |cfg: &[u8]| {
            let mut b = b"CFG:".to_vec();
            b.extend_from_slice(cfg);
            b.push(0);
            b.extend_from_slice(&encode_frame(&sample())[4..]);
            parse_frame_body(&b)
        };
        assert_eq!(body(b"").unwrap_err(), FrameError::CfgInvalid);
        assert_eq!(body(b"etc/x.conf").unwrap_err(), FrameError::CfgInvalid);
        assert_eq!(body(b"/etc/a\x01b").unwrap_err(), FrameError::CfgInvalid);
        let longest = format!("/{}", "x".repeat(PATH_MAX - 1));
        assert_eq!(
            body(longest.as_bytes()).unwrap().config.as_deref(),
            Some(longest.as_str())
        );
        let over = format!("/{}", "x".repeat(PATH_MAX));
        assert_eq!(body(over.as_bytes()).unwrap_err(), FrameError::CfgInvalid);
    }

    #[test]
    fn the_shortest_frames_fail_with_their_own_errors() {
        assert_eq!(parse_frame(&[1, 2, 3]), Err(FrameError::TooSmall(3)));
        assert!(matches!(
            parse_frame(&5u32.to_ne_bytes()),
            Err(FrameError::HeaderSizeMismatch { .. })
        ));
        assert!(matches!(
            parse_frame_body(&[0, 0, 0, 0]),
            Err(FrameError::HeaderSizeMismatch { .. })
        ));
        assert_eq!(parse_frame_body(&[0, 0, 0]), Err(FrameError::NoHeaderSize));
    }
}
