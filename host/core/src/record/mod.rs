//! The telemetry record: the 15 metadata headers of record format 4 and a
//! payload, with the validation rules the legacy client and the collector
//! agree on (`docs/legacy-protocol.md` §2).
//!
//! The same model is used for every source (native socket, WASM probes,
//! legacy spool files), so a rule is enforced in exactly one place.

pub mod spool_file;
pub mod wire;

use std::fmt;

use thiserror::Error;

/// Number of metadata headers in record format 4.
pub const NUM_HEADERS: usize = 15;

/// Header names, in the one order the legacy daemon and collector accept.
pub const HEADER_NAMES: [&str; NUM_HEADERS] = [
    "record_format_version",
    "classification",
    "severity",
    "machine_id",
    "creation_timestamp",
    "arch",
    "host_type",
    "build",
    "kernel_version",
    "payload_format_version",
    "system_name",
    "board_name",
    "cpu_model",
    "bios_version",
    "event_id",
];

/// The record format this client speaks; the header set above is format 4's.
pub const RECORD_FORMAT_VERSION: &str = "4";
/// Marks the config path a probe was told to use, on the wire (followed by a
/// NUL) and in spool files (followed by a newline).
pub const CFG_PREFIX: &str = "CFG:";
/// Largest payload the legacy library and collector take.
pub const MAX_PAYLOAD_LEN: usize = 8192;
/// Longest classification (whole string), as in libtelemetry.
pub const MAX_CLASSIFICATION_LEN: usize = 122;
/// Longest part between the slashes of a classification.
pub const MAX_CLASSIFICATION_PART_LEN: usize = 40;
/// Length of an event id and of a machine id.
pub const ID_LEN: usize = 32;
/// `system_name` is cut to this many characters, as the legacy library did.
pub const MAX_SYSTEM_NAME_LEN: usize = 80;
/// Longest header value accepted from a probe; far above any real value, it
/// only stops a client from filling the spool with one giant header line.
pub const MAX_HEADER_VALUE_LEN: usize = 512;

/// One of the 15 headers, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Header {
    RecordFormatVersion = 0,
    Classification,
    Severity,
    MachineId,
    CreationTimestamp,
    Arch,
    HostType,
    Build,
    KernelVersion,
    PayloadFormatVersion,
    SystemName,
    BoardName,
    CpuModel,
    BiosVersion,
    EventId,
}

impl Header {
    /// All headers in wire order.
    pub const ALL: [Header; NUM_HEADERS] = [
        Header::RecordFormatVersion,
        Header::Classification,
        Header::Severity,
        Header::MachineId,
        Header::CreationTimestamp,
        Header::Arch,
        Header::HostType,
        Header::Build,
        Header::KernelVersion,
        Header::PayloadFormatVersion,
        Header::SystemName,
        Header::BoardName,
        Header::CpuModel,
        Header::BiosVersion,
        Header::EventId,
    ];

    /// The header's name as written on the wire, in spool files and as the
    /// HTTP header name.
    pub fn name(self) -> &'static str {
        HEADER_NAMES[self as usize]
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The 15 header values of a record, always all present and in order, so
/// writers never have to think about a missing one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers([String; NUM_HEADERS]);

impl Headers {
    /// Builds headers from values in wire order.
    pub fn from_values(values: [String; NUM_HEADERS]) -> Self {
        Headers(values)
    }

    /// The value of one header.
    pub fn get(&self, h: Header) -> &str {
        &self.0[h as usize]
    }

    /// Replaces the value of one header.
    pub fn set(&mut self, h: Header, value: impl Into<String>) {
        self.0[h as usize] = value.into();
    }

    /// `(name, value)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        HEADER_NAMES
            .iter()
            .copied()
            .zip(self.0.iter().map(String::as_str))
    }

    /// Parses a header block: exactly 15 `name: value\n` lines with the
    /// names in order. Values are not checked here (see [`Record::validate`]).
    pub fn parse_block(block: &[u8]) -> Result<Headers, RecordError> {
        let mut values: [String; NUM_HEADERS] = Default::default();
        let mut rest = block;
        for (i, expected) in HEADER_NAMES.iter().enumerate() {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return Err(if rest.is_empty() {
                    RecordError::MissingHeader { expected, index: i }
                } else {
                    RecordError::UnterminatedHeader { index: i }
                });
            };
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(RecordError::MalformedHeaderLine {
                    index: i,
                    line: lossy(line),
                });
            };
            let name = &line[..colon];
            if name != expected.as_bytes() {
                return Err(RecordError::UnexpectedHeader {
                    expected,
                    index: i,
                    found: lossy(name),
                });
            }
            // The legacy library writes "name: value"; tolerate a missing space.
            let mut value = &line[colon + 1..];
            if let Some(stripped) = value.strip_prefix(b" ") {
                value = stripped;
            }
            values[i] =
                String::from_utf8(value.to_vec()).map_err(|_| RecordError::HeaderValue {
                    header: Header::ALL[i],
                    reason: "is not ASCII".into(),
                })?;
        }
        if !rest.is_empty() {
            return Err(RecordError::TrailingHeaderData { bytes: rest.len() });
        }
        Ok(Headers(values))
    }

    /// The header block as written on the wire and in spool files.
    pub fn to_block(&self) -> String {
        let mut out = String::with_capacity(512);
        for (name, value) in self.iter() {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
        out
    }
}

/// A complete record: what a probe hands over and what the spool keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The config file the sending probe was told to use (`CFG:` prefix of
    /// the legacy protocol); delivery posts with that config's server.
    pub config: Option<String>,
    /// The 15 headers.
    pub headers: Headers,
    /// Printable ASCII or whitespace, at most [`MAX_PAYLOAD_LEN`] bytes.
    pub payload: String,
}

impl Record {
    /// A record as a sandboxed probe makes it (or the daemon on a crash
    /// probe's behalf): only what a probe may choose is set, with a random
    /// event id when none is given; ingest fills every host header.
    pub fn from_probe(
        classification: impl Into<String>,
        severity: u8,
        payload_version: u32,
        payload: String,
        event_id: Option<String>,
    ) -> Record {
        let mut h = Headers::default();
        h.set(Header::Classification, classification);
        h.set(Header::Severity, severity.to_string());
        h.set(Header::PayloadFormatVersion, payload_version.to_string());
        h.set(Header::EventId, event_id.unwrap_or_else(random_id));
        Record {
            config: None,
            headers: h,
            payload,
        }
    }

    /// Checks every rule of the record model and returns the first broken
    /// one. `machine_id` is not checked: the daemon always replaces it.
    pub fn validate(&self) -> Result<(), RecordError> {
        let h = &self.headers;
        if h.get(Header::RecordFormatVersion) != RECORD_FORMAT_VERSION {
            return Err(RecordError::HeaderValue {
                header: Header::RecordFormatVersion,
                reason: format!(
                    "is {:?}; this client speaks format {RECORD_FORMAT_VERSION} only",
                    h.get(Header::RecordFormatVersion)
                ),
            });
        }
        validate_classification(h.get(Header::Classification))?;
        validate_severity_str(h.get(Header::Severity))?;
        number::<u64>(h, Header::CreationTimestamp)?;
        number::<u32>(h, Header::PayloadFormatVersion)?;
        validate_event_id(h.get(Header::EventId))?;
        for header in Header::ALL {
            if header == Header::MachineId {
                continue;
            }
            validate_header_value(header, h.get(header))?;
        }
        validate_payload(self.payload.as_bytes())
    }

    /// The record's size as the rate limiter and spool cap count it: what
    /// its spool file holds.
    pub fn byte_len(&self) -> usize {
        spool_file::encoded_len(self)
    }
}

fn number<T: std::str::FromStr>(h: &Headers, header: Header) -> Result<T, RecordError> {
    let v = h.get(header);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RecordError::HeaderValue {
            header,
            reason: format!("{v:?} is not an unsigned decimal number"),
        });
    }
    v.parse::<T>().map_err(|_| RecordError::HeaderValue {
        header,
        reason: format!("{v:?} is out of range"),
    })
}

/// Checks the `DOMAIN/PROBE/REST` shape: exactly two slashes, non-empty
/// parts of at most 40 bytes, at most 122 bytes, printable ASCII without
/// spaces (it becomes an HTTP header value and a file line).
pub fn validate_classification(c: &str) -> Result<(), RecordError> {
    let err = |reason: String| RecordError::Classification {
        value: c.chars().take(160).collect(),
        reason,
    };
    if c.is_empty() {
        return Err(err("is empty".into()));
    }
    if c.len() > MAX_CLASSIFICATION_LEN {
        return Err(err(format!(
            "is {} bytes long; at most {MAX_CLASSIFICATION_LEN} are allowed",
            c.len()
        )));
    }
    if let Some(b) = c.bytes().find(|b| !b.is_ascii_graphic()) {
        return Err(err(format!(
            "contains byte 0x{b:02x}; only printable ASCII without spaces is allowed"
        )));
    }
    let parts: Vec<&str> = c.split('/').collect();
    if parts.len() != 3 {
        return Err(err(format!(
            "has {} '/'; the shape is DOMAIN/PROBE/REST with exactly 2",
            parts.len() - 1
        )));
    }
    for p in parts {
        if p.is_empty() {
            return Err(err(
                "has an empty part; the shape is DOMAIN/PROBE/REST".into()
            ));
        }
        if p.len() > MAX_CLASSIFICATION_PART_LEN {
            return Err(err(format!(
                "part {p:?} is {} bytes long; at most {MAX_CLASSIFICATION_PART_LEN} are allowed",
                p.len()
            )));
        }
    }
    Ok(())
}

/// Checks a severity given as text: an integer in 1..=4.
pub fn validate_severity_str(s: &str) -> Result<u8, RecordError> {
    match s.parse::<u8>() {
        Ok(v @ 1..=4) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(RecordError::Severity {
            value: s.chars().take(40).collect(),
        }),
    }
}

/// Checks an event id: 32 characters of `[0-9a-f]`.
pub fn validate_event_id(e: &str) -> Result<(), RecordError> {
    if e.len() != ID_LEN {
        return Err(RecordError::EventId {
            value: e.chars().take(80).collect(),
            reason: format!("is {} characters long; it must be {ID_LEN}", e.len()),
        });
    }
    if let Some((i, c)) = e
        .char_indices()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(RecordError::EventId {
            value: e.into(),
            reason: format!("has {c:?} at position {i}; only 0-9 and a-f are allowed"),
        });
    }
    Ok(())
}

/// Checks a header value: printable ASCII (spaces allowed), bounded length.
pub fn validate_header_value(header: Header, v: &str) -> Result<(), RecordError> {
    if v.len() > MAX_HEADER_VALUE_LEN {
        return Err(RecordError::HeaderValue {
            header,
            reason: format!(
                "is {} bytes long; at most {MAX_HEADER_VALUE_LEN} are allowed",
                v.len()
            ),
        });
    }
    if let Some(b) = v.bytes().find(|&b| !(b == b' ' || b.is_ascii_graphic())) {
        return Err(RecordError::HeaderValue {
            header,
            reason: format!("contains byte 0x{b:02x}; only printable ASCII is allowed"),
        });
    }
    Ok(())
}

/// Checks a payload: at most 8192 bytes, each printable ASCII or whitespace.
pub fn validate_payload(p: &[u8]) -> Result<(), RecordError> {
    if p.len() > MAX_PAYLOAD_LEN {
        return Err(RecordError::PayloadTooLong { len: p.len() });
    }
    if let Some(offset) = p.iter().position(|&b| !is_payload_byte(b)) {
        return Err(RecordError::PayloadByte {
            offset,
            byte: p[offset],
        });
    }
    Ok(())
}

/// Printable ASCII or ASCII whitespace (space, tab, newline, CR, VT, FF), as
/// C's `isprint() || isspace()` in the legacy library.
pub fn is_payload_byte(b: u8) -> bool {
    matches!(b, 0x20..=0x7e | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A fresh random id of 32 lowercase hex digits (event ids, machine ids).
/// Taken from the OS each time, as the seed read `/dev/urandom`: a
/// user-space generator is copied by `fork`, and libtelemetry runs in
/// programs that fork, whose children would then repeat their parent's
/// ids.
pub fn random_id() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        // No getrandom(2) and no /dev/urandom: the thread's generator
        // (seeded from the OS when the thread first used it).
        bytes = rand::random();
    }
    format!("{:032x}", u128::from_ne_bytes(bytes))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned()
}

/// Everything that can be wrong with a record. Each message names the
/// header or byte at fault so a probe author can fix it from a log line.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum RecordError {
    #[error("header block ends before header {index} ({expected})")]
    MissingHeader {
        expected: &'static str,
        index: usize,
    },
    #[error("header line {index} is not terminated by a newline")]
    UnterminatedHeader { index: usize },
    #[error("header line {index} has no ':' ({line:?})")]
    MalformedHeaderLine { index: usize, line: String },
    #[error(
        "header {index} is {found:?}; expected {expected:?} (the 15 headers must come in order)"
    )]
    UnexpectedHeader {
        expected: &'static str,
        index: usize,
        found: String,
    },
    #[error("{bytes} bytes follow the 15th header in the header block")]
    TrailingHeaderData { bytes: usize },
    #[error("header {header} {reason}")]
    HeaderValue { header: Header, reason: String },
    #[error("classification {value:?} {reason}")]
    Classification { value: String, reason: String },
    #[error("severity {value:?} is not in 1..4")]
    Severity { value: String },
    #[error("event_id {value:?} {reason}")]
    EventId { value: String, reason: String },
    #[error("payload is {len} bytes; at most {MAX_PAYLOAD_LEN} are allowed")]
    PayloadTooLong { len: usize },
    #[error(
        "payload byte {offset} is 0x{byte:02x}; only printable ASCII and whitespace are allowed"
    )]
    PayloadByte { offset: usize, byte: u8 },
}

/// A complete, valid record with every header filled, as the legacy
/// client would have sent it: a starting point for tests of code that
/// handles records (not part of the API programs use).
#[doc(hidden)]
pub fn sample() -> Record {
    let values = [
        "4",
        "org.example/test/vec",
        "3",
        "568c84593fcc686275ddd752886476ed",
        "1795630177",
        "x86_64",
        "no_sv_file|no_pn_file|no_pvr_file",
        "\"12\"",
        "6.18.44-fc-v782",
        "1",
        "debian",
        "no_bn_file|no_bv_file",
        "AMD EPYC",
        "no_bv_file",
        "5de9de8d5f3c6a7d445d75ba01cc3322",
    ]
    .map(String::from);
    Record {
        config: None,
        headers: Headers::from_values(values),
        payload: "hello world payload".into(),
    }
}

#[cfg(test)]
mod tests;
