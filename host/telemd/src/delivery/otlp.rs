//! OTLP/HTTP (`post_format = "otlp"`): records as OpenTelemetry log
//! records, many to a request, so a fleet can feed an OpenTelemetry
//! Collector and whatever it exports to. The message types are the official
//! protos' (`opentelemetry-proto`); this module only maps a record's
//! headers onto them and reads the collector's answer by the OTLP
//! specification's rules.
//!
//! The mapping (README, "OTLP"):
//! - body: the payload, as a string;
//! - severity 1..4: INFO (9), WARN (13), ERROR (17), FATAL (21);
//! - `time_unix_nano`: `creation_timestamp`; `observed_time_unix_nano`:
//!   when the record was spooled;
//! - `event_name`: the classification;
//! - log attributes: `log.record.uid` (the record's spool name, the same
//!   on a resend), and under `org.clearlinux.telemetry.`: `event_id`,
//!   `classification`, `severity`, `record_format_version`,
//!   `payload_format_version`;
//! - resource attributes, semantic-convention names where one exists:
//!   `host.id` (machine id), `host.arch`, `host.type`, `host.cpu.model.name`,
//!   `os.type`, `os.name` (system name), `os.version` (build), and under
//!   `org.clearlinux.telemetry.`: `kernel_version`, `board_name`,
//!   `bios_version`; `service.name` and `service.version` name telemd.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use telem_core::record::{Header, Record};

/// Records in one request at most: a request is one commit (all its
/// records leave the spool together, or none do), and a kill in flight
/// resends at most this many.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Bytes of records (as spooled) in one request at most, well under the
/// OpenTelemetry Collector's default 20 MiB request limit before gzip.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;
/// The path of logs under an OTLP/HTTP endpoint's base URL.
pub const LOGS_PATH: &str = "/v1/logs";
/// Prefix of the attributes that have no semantic-convention name.
pub const ATTRIBUTE_PREFIX: &str = "org.clearlinux.telemetry.";

/// The URL to post logs to: `server` itself when it names a path (a
/// signal-specific endpoint, as `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` is),
/// else `server` with [`LOGS_PATH`] (a base endpoint, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is).
pub fn logs_url(server: &str) -> String {
    match reqwest::Url::parse(server) {
        Ok(mut u) if u.path() == "/" || u.path().is_empty() => {
            u.set_path(LOGS_PATH);
            u.to_string()
        }
        _ => server.to_owned(),
    }
}

/// OTLP's severity of a record's 1..4, and its text.
pub fn severity(record_severity: &str) -> (SeverityNumber, &'static str) {
    match record_severity.trim() {
        "1" => (SeverityNumber::Info, "INFO"),
        "2" => (SeverityNumber::Warn, "WARN"),
        "3" => (SeverityNumber::Error, "ERROR"),
        "4" => (SeverityNumber::Fatal, "FATAL"),
        _ => (SeverityNumber::Unspecified, ""),
    }
}

/// The semantic conventions' `host.arch` for a kernel's machine name
/// (`uname -m`), which is what records carry; a name with no
/// convention passes as it is.
pub fn host_arch(machine: &str) -> &str {
    match machine {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        m if m.starts_with("armv") || m == "arm" => "arm32",
        "ppc64" | "ppc64le" => "ppc64",
        "ppc" | "ppcle" => "ppc32",
        "ia64" => "ia64",
        "s390x" => "s390x",
        m => m,
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// The headers that describe the machine rather than the event, in the
/// order their attributes are written.
const RESOURCE_HEADERS: [(Header, &str); 9] = [
    (Header::MachineId, "host.id"),
    (Header::Arch, "host.arch"),
    (Header::HostType, "host.type"),
    (Header::CpuModel, "host.cpu.model.name"),
    (Header::SystemName, "os.name"),
    (Header::Build, "os.version"),
    (Header::KernelVersion, "kernel_version"),
    (Header::BoardName, "board_name"),
    (Header::BiosVersion, "bios_version"),
];

fn resource_of(key: &[String; 9]) -> Resource {
    let mut attributes = vec![
        kv("service.name", "telemd"),
        kv("service.version", env!("CARGO_PKG_VERSION")),
        kv("os.type", "linux"),
    ];
    for ((header, name), value) in RESOURCE_HEADERS.iter().zip(key) {
        let value = if *header == Header::Arch {
            host_arch(value)
        } else {
            value
        };
        if name.contains('.') {
            attributes.push(kv(name, value));
        } else {
            attributes.push(kv(&format!("{ATTRIBUTE_PREFIX}{name}"), value));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One record of a request.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The record.
    pub record: &'a Record,
    /// When it was spooled.
    pub spooled: SystemTime,
    /// Its name in the spool: the same on every resend of it and unique on
    /// the machine (a probe chooses its event id, so that may repeat).
    pub id: &'a str,
}

fn log_record(out: &Outgoing) -> LogRecord {
    let (record, observed) = (out.record, out.spooled);
    let h = &record.headers;
    let (severity_number, severity_text) = severity(h.get(Header::Severity));
    let created = h
        .get(Header::CreationTimestamp)
        .trim()
        .parse::<u64>()
        .map_or(0, |s| s.saturating_mul(1_000_000_000));
    let attr = |name: &str, header: Header| kv(&format!("{ATTRIBUTE_PREFIX}{name}"), h.get(header));
    LogRecord {
        time_unix_nano: created,
        observed_time_unix_nano: nanos(observed),
        severity_number: severity_number as i32,
        severity_text: severity_text.to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(record.payload.clone())),
        }),
        attributes: vec![
            kv("log.record.uid", out.id),
            attr("event_id", Header::EventId),
            attr("classification", Header::Classification),
            attr("severity", Header::Severity),
            attr("record_format_version", Header::RecordFormatVersion),
            attr("payload_format_version", Header::PayloadFormatVersion),
        ],
        event_name: h.get(Header::Classification).to_owned(),
        ..Default::default()
    }
}

/// The request carrying `records`: one resource per distinct set of
/// machine headers, in a stable order.
pub fn request(records: &[Outgoing]) -> ExportLogsServiceRequest {
    let mut by_resource: BTreeMap<[String; 9], Vec<LogRecord>> = BTreeMap::new();
    for out in records {
        let key = RESOURCE_HEADERS.map(|(h, _)| out.record.headers.get(h).to_owned());
        by_resource.entry(key).or_default().push(log_record(out));
    }
    let scope = InstrumentationScope {
        name: "telemd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: by_resource
            .into_iter()
            .map(|(key, log_records)| ResourceLogs {
                resource: Some(resource_of(&key)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The gzip-compressed protobuf body of `request`.
pub fn gzip_body(request: &ExportLogsServiceRequest) -> Vec<u8> {
    let plain = request.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&plain);
    gz.finish().unwrap_or_default()
}

/// What a collector said it refused of an accepted request: a count and a
/// message, never which records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialSuccess {
    /// Log records the collector refused.
    pub rejected: i64,
    /// Its message (may be empty), cut and made printable.
    pub message: String,
}

/// The partial success in a 2xx response body to a request of `sent`
/// records, if any (a body that is not an `ExportLogsServiceResponse` says
/// nothing); the count is held to `0..=sent` whatever the collector says.
pub fn partial_success(body: &[u8], sent: usize) -> Option<PartialSuccess> {
    let resp = ExportLogsServiceResponse::decode(body).ok()?;
    let p = resp.partial_success?;
    if p.rejected_log_records == 0 && p.error_message.is_empty() {
        return None;
    }
    Some(PartialSuccess {
        rejected: p
            .rejected_log_records
            .clamp(0, i64::try_from(sent).unwrap_or(i64::MAX)),
        message: telem_core::untrusted::escape(&p.error_message, 200),
    })
}

/// Whether OTLP says to retry after this status: only 429, 502, 503 and
/// 504 (the OTLP/HTTP specification's retryable codes); every other 4xx or
/// 5xx MUST NOT be retried.
pub fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Statuses that say nothing about the records and everything about the
/// setup: a wrong URL (404, 405, 421), missing or refused credentials
/// (401, 403), a proxy that wants its own (407), an endpoint that does not
/// take OTLP protobuf (415), and redirects (not followed). OTLP says not to
/// retry them; dropping every record until an admin notices would turn a
/// typo into data loss, so the records are kept and tried again with the
/// backoff (README, "OTLP").
pub fn is_setup_fault(status: u16) -> bool {
    matches!(status, 300..=399 | 401 | 403 | 404 | 405 | 407 | 415 | 421)
}

/// Whether a 2xx answer's `Content-Type` is an OTLP receiver's (protobuf,
/// or JSON for a receiver that answers in its own encoding).
pub fn is_otlp_answer(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case("application/x-protobuf")
            || t.eq_ignore_ascii_case("application/json")
    })
}

/// The whole-request timeout for a body of `len` bytes: `base`, plus a
/// second per 64 KiB, so a full request over a slow link is not cut at
/// the same point on every try.
pub fn request_timeout(base: std::time::Duration, len: usize) -> std::time::Duration {
    base + std::time::Duration::from_secs((len / (64 << 10)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sev: &str, arch: &str) -> Record {
        let mut r = Record {
            config: None,
            headers: telem_core::record::Headers::default(),
            payload: String::new(),
        };
        for (i, h) in Header::ALL.iter().enumerate() {
            r.headers.set(*h, format!("{}-{i}", h.name()));
        }
        r.headers.set(Header::Severity, sev.to_owned());
        r.headers.set(Header::Arch, arch.to_owned());
        r.headers
            .set(Header::CreationTimestamp, "1700000000".to_owned());
        r.payload = "the payload\nline 2".into();
        r
    }

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        kvs.iter()
            .find(|k| k.key == key)
            .and_then(|k| match &k.value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => Some(s.as_str()),
                _ => None,
            })
    }

    #[test]
    fn every_header_lands_in_its_attribute() {
        let r = record("3", "x86_64");
        let observed = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_001_500);
        let req = request(&[Outgoing {
            record: &r,
            spooled: observed,
            id: "0123abcd",
        }]);
        let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.resource_logs.len(), 1);
        let res = &back.resource_logs[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attr(res, "host.id"), Some("machine_id-3"));
        assert_eq!(attr(res, "host.arch"), Some("amd64"));
        assert_eq!(attr(res, "host.type"), Some("host_type-6"));
        assert_eq!(attr(res, "host.cpu.model.name"), Some("cpu_model-12"));
        assert_eq!(attr(res, "os.type"), Some("linux"));
        assert_eq!(attr(res, "os.name"), Some("system_name-10"));
        assert_eq!(attr(res, "os.version"), Some("build-7"));
        assert_eq!(
            attr(res, "org.clearlinux.telemetry.kernel_version"),
            Some("kernel_version-8")
        );
        assert_eq!(
            attr(res, "org.clearlinux.telemetry.board_name"),
            Some("board_name-11")
        );
        assert_eq!(
            attr(res, "org.clearlinux.telemetry.bios_version"),
            Some("bios_version-13")
        );
        assert_eq!(attr(res, "service.name"), Some("telemd"));
        let scope = &back.resource_logs[0].scope_logs[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "telemd");
        let log = &scope.log_records[0];
        assert_eq!(log.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(log.observed_time_unix_nano, 1_700_000_001_500_000_000);
        assert_eq!(log.severity_number, SeverityNumber::Error as i32);
        assert_eq!(log.severity_text, "ERROR");
        assert_eq!(log.event_name, "classification-1");
        assert_eq!(
            log.body,
            Some(AnyValue {
                value: Some(any_value::Value::StringValue("the payload\nline 2".into()))
            })
        );
        let a = &log.attributes;
        assert_eq!(attr(a, "log.record.uid"), Some("0123abcd"));
        assert_eq!(
            attr(a, "org.clearlinux.telemetry.event_id"),
            Some("event_id-14")
        );
        assert_eq!(
            attr(a, "org.clearlinux.telemetry.classification"),
            Some("classification-1")
        );
        assert_eq!(attr(a, "org.clearlinux.telemetry.severity"), Some("3"));
        assert_eq!(
            attr(a, "org.clearlinux.telemetry.record_format_version"),
            Some("record_format_version-0")
        );
        assert_eq!(
            attr(a, "org.clearlinux.telemetry.payload_format_version"),
            Some("payload_format_version-9")
        );
    }

    #[test]
    fn records_of_one_machine_share_one_resource() {
        let (a, b, c) = (
            record("1", "x86_64"),
            record("2", "x86_64"),
            record("4", "aarch64"),
        );
        let out = |record| Outgoing {
            record,
            spooled: UNIX_EPOCH,
            id: "x",
        };
        let req = request(&[out(&a), out(&b), out(&c)]);
        let mut counts: Vec<usize> = req
            .resource_logs
            .iter()
            .map(|r| r.scope_logs[0].log_records.len())
            .collect();
        counts.sort();
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn severities_map_onto_the_log_data_models_ranges() {
        assert_eq!(severity("1"), (SeverityNumber::Info, "INFO"));
        assert_eq!(severity("2"), (SeverityNumber::Warn, "WARN"));
        assert_eq!(severity("3"), (SeverityNumber::Error, "ERROR"));
        assert_eq!(severity("4"), (SeverityNumber::Fatal, "FATAL"));
        assert_eq!(severity("9").0, SeverityNumber::Unspecified);
    }

    #[test]
    fn a_base_endpoint_gets_the_logs_path_and_a_full_one_is_kept() {
        assert_eq!(logs_url("http://otel:4318"), "http://otel:4318/v1/logs");
        assert_eq!(logs_url("http://otel:4318/"), "http://otel:4318/v1/logs");
        assert_eq!(
            logs_url("https://otel.example/custom/logs"),
            "https://otel.example/custom/logs"
        );
    }

    #[test]
    fn only_the_specifications_codes_are_retried() {
        for s in [429, 502, 503, 504] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 500, 501] {
            assert!(!retryable(s), "{s}");
        }
        for s in [301, 401, 403, 404, 407, 415] {
            assert!(is_setup_fault(s), "{s}");
        }
        for s in [400, 413, 422, 500, 501] {
            assert!(!is_setup_fault(s), "{s}");
        }
    }

    #[test]
    fn a_partial_success_is_read_and_anything_else_says_nothing() {
        let body = ExportLogsServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: 2,
                    error_message: "too old\n\x1b[31m".into(),
                },
            ),
        }
        .encode_to_vec();
        let p = partial_success(&body, 3).unwrap();
        assert_eq!(p.rejected, 2);
        assert!(
            !p.message.contains('\x1b') && !p.message.contains('\n'),
            "{:?}",
            p.message
        );
        assert_eq!(partial_success(b"", 3), None);
        assert_eq!(partial_success(b"{\"not\": \"protobuf\"}", 3), None);
        assert_eq!(
            partial_success(&ExportLogsServiceResponse::default().encode_to_vec(), 3),
            None
        );
        // A hostile count is held to what was sent.
        for (claimed, held) in [(-5, 0), (1_000_000, 3)] {
            let body = ExportLogsServiceResponse {
                partial_success: Some(
                    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                        rejected_log_records: claimed,
                        error_message: String::new(),
                    },
                ),
            }
            .encode_to_vec();
            assert_eq!(partial_success(&body, 3).unwrap().rejected, held);
        }
    }

    #[test]
    fn the_body_is_gzip_of_the_protobuf() {
        let r = record("2", "x86_64");
        let req = request(&[Outgoing {
            record: &r,
            spooled: UNIX_EPOCH,
            id: "x",
        }]);
        let gz = gzip_body(&req);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut plain)
            .unwrap();
        assert_eq!(
            ExportLogsServiceRequest::decode(plain.as_slice()).unwrap(),
            req
        );
    }
}
