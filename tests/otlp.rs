//! End-to-end: `post_format = "otlp"`. `telemd` posts its spool as OTLP/HTTP
//! protobuf log records to a loopback receiver, which decodes every request
//! with the same proto crate, and, separately, with Python's
//! `opentelemetry-proto` package from PyPI (an implementation we did not
//! write); batching bounds, a kill in flight, partial success, and the
//! OTLP specification's retry rules.

use std::collections::HashMap;
use std::io::Read;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use support::collector::{Collector, Mode, Request};
use support::*;
use telem_core::journal::{query_dir, JournalFilter, Outcome};
use telem_core::record::{Header, Record};

fn daemon(c: &Collector, records: &[Record]) -> TestDaemon {
    daemon_with(c, records, "")
}

fn daemon_with(c: &Collector, records: &[Record], extra: &str) -> TestDaemon {
    let d = TestDaemon::prepare(&format!(
        "server = \"http://127.0.0.1:{}\"\npost_format = \"otlp\"\n{extra}\n",
        c.port
    ));
    std::fs::write(d.path("opt-in"), "").unwrap();
    preload_spool(&d.path("spool"), records);
    d.spawn()
}

/// Far more records than the default rate limit lets through in a window.
const UNLIMITED: &str = "rate_limit_enabled = false";

fn records(n: usize, payload_len: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut p = format!("otlp record {i} ");
            while p.len() < payload_len {
                p.push('x');
            }
            test_record(&p)
        })
        .collect()
}

/// The request body, gunzipped and decoded.
fn decode(r: &Request) -> ExportLogsServiceRequest {
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{}", r.head);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-protobuf"),
        "{}",
        r.head
    );
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(r.body.as_slice())
        .read_to_end(&mut plain)
        .unwrap();
    ExportLogsServiceRequest::decode(plain.as_slice()).unwrap()
}

fn logs(req: &ExportLogsServiceRequest) -> Vec<&LogRecord> {
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .collect()
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

/// How many records each request the collector got held, in order.
fn request_sizes(c: &Collector) -> Vec<usize> {
    c.requests()
        .iter()
        .map(|r| logs(&decode(r)).len())
        .collect()
}

/// Event ids of the records of every request answered 2xx, with how often
/// each was accepted.
fn accepted_ids(c: &Collector) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in c.accepted() {
        for l in logs(&decode(&r)) {
            *ids.entry(
                attr(&l.attributes, "org.clearlinux.telemetry.event_id")
                    .unwrap()
                    .to_owned(),
            )
            .or_default() += 1;
        }
    }
    ids
}

/// Waits until every record left the spool (its outcome journaled).
fn wait_drained(d: &TestDaemon) {
    assert!(
        wait_until(Duration::from_secs(20), || d.spool_names().is_empty()),
        "{}",
        tail(&d.log(), 30)
    );
}

fn journal(d: &TestDaemon) -> Vec<telem_core::journal::JournalEntry> {
    query_dir(&d.path("journal"), usize::MAX, &JournalFilter::default()).unwrap()
}

#[test]
fn every_header_reaches_the_receiver_under_its_attribute() {
    let c = Collector::start(Mode::Status(200, None));
    let rs = records(3, 0);
    let d = daemon(&c, &rs);
    wait_drained(&d);
    let got = c.accepted();
    assert_eq!(got.len(), 1, "three records, one request");
    assert_eq!(got[0].request_line, "POST /v1/logs HTTP/1.1");
    let req = decode(&got[0]);
    assert_eq!(req.resource_logs.len(), 1, "one machine, one resource");
    let res = &req.resource_logs[0].resource.as_ref().unwrap().attributes;
    let h = &rs[0].headers;
    for (key, header) in [
        ("host.id", Header::MachineId),
        ("host.type", Header::HostType),
        ("host.cpu.model.name", Header::CpuModel),
        ("os.name", Header::SystemName),
        ("os.version", Header::Build),
        (
            "org.clearlinux.telemetry.kernel_version",
            Header::KernelVersion,
        ),
        ("org.clearlinux.telemetry.board_name", Header::BoardName),
        ("org.clearlinux.telemetry.bios_version", Header::BiosVersion),
    ] {
        assert_eq!(attr(res, key), Some(h.get(header)), "{key}");
    }
    assert_eq!(h.get(Header::Arch), "x86_64", "the fixture's arch");
    assert_eq!(attr(res, "host.arch"), Some("amd64"));
    assert_eq!(attr(res, "os.type"), Some("linux"));
    assert_eq!(attr(res, "service.name"), Some("telemd"));
    let mut by_id: HashMap<&str, &LogRecord> = HashMap::new();
    for l in logs(&req) {
        by_id.insert(
            attr(&l.attributes, "org.clearlinux.telemetry.event_id").unwrap(),
            l,
        );
        // The spool name: the same when the record is sent again.
        assert!(
            attr(&l.attributes, "log.record.uid")
                .unwrap()
                .starts_with("preloaded"),
            "{l:?}"
        );
    }
    for r in &rs {
        let h = &r.headers;
        let l = by_id[h.get(Header::EventId)];
        assert_eq!(
            l.body,
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(r.payload.clone()))
            })
        );
        assert_eq!(l.event_name, h.get(Header::Classification));
        let sev: i32 = h.get(Header::Severity).parse().unwrap();
        assert_eq!(l.severity_number, [9, 13, 17, 21][sev as usize - 1]);
        assert_eq!(
            l.time_unix_nano,
            h.get(Header::CreationTimestamp).parse::<u64>().unwrap() * 1_000_000_000
        );
        assert!(l.observed_time_unix_nano > 0);
        for (key, header) in [
            (
                "org.clearlinux.telemetry.classification",
                Header::Classification,
            ),
            ("org.clearlinux.telemetry.severity", Header::Severity),
            (
                "org.clearlinux.telemetry.record_format_version",
                Header::RecordFormatVersion,
            ),
            (
                "org.clearlinux.telemetry.payload_format_version",
                Header::PayloadFormatVersion,
            ),
        ] {
            assert_eq!(attr(&l.attributes, key), Some(h.get(header)), "{key}");
        }
    }
    let j = journal(&d);
    assert_eq!(j.len(), 3);
    assert!(j.iter().all(|e| e.outcome == Outcome::Delivered), "{j:?}");
}

/// Python's `opentelemetry-proto` (PyPI, the version pinned in
/// scripts/test.sh) parses the same body: the wire format is checked by
/// code this project did not write.
#[test]
fn pythons_opentelemetry_proto_reads_what_telemd_sends() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv-otlp/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh makes it (pip install opentelemetry-proto)",
        python.display()
    );
    let c = Collector::start(Mode::Status(200, None));
    let rs = records(2, 100);
    let d = daemon(&c, &rs);
    assert!(wait_until(Duration::from_secs(20), || d
        .spool_names()
        .is_empty()));
    let body = &c.accepted()[0].body;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.gz");
    std::fs::write(&file, body).unwrap();
    let script = r#"
import gzip, json, sys
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
req = ExportLogsServiceRequest()
req.ParseFromString(gzip.open(sys.argv[1]).read())
print(json.dumps(MessageToDict(req)))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rl = &v["resourceLogs"][0];
    let attrs = |kvs: &serde_json::Value| -> HashMap<String, String> {
        kvs.as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap().to_owned(),
                    kv["value"]["stringValue"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let res = attrs(&rl["resource"]["attributes"]);
    assert_eq!(res["host.id"], rs[0].headers.get(Header::MachineId));
    assert_eq!(res["host.arch"], "amd64");
    assert_eq!(res["os.version"], rs[0].headers.get(Header::Build));
    let logs = rl["scopeLogs"][0]["logRecords"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    for l in logs {
        let a = attrs(&l["attributes"]);
        let r = rs
            .iter()
            .find(|r| r.headers.get(Header::EventId) == a["org.clearlinux.telemetry.event_id"])
            .expect("a record sent");
        assert_eq!(l["body"]["stringValue"], r.payload.as_str());
        assert_eq!(l["eventName"], r.headers.get(Header::Classification));
        assert_eq!(
            a["org.clearlinux.telemetry.classification"],
            r.headers.get(Header::Classification)
        );
        let sev = ["", "INFO", "WARN", "ERROR", "FATAL"]
            [r.headers.get(Header::Severity).parse::<usize>().unwrap()];
        assert_eq!(l["severityNumber"], format!("SEVERITY_NUMBER_{sev}"));
        assert_eq!(l["severityText"], sev);
    }
}

#[test]
fn a_request_carries_at_most_1000_records_and_4_mib() {
    let c = Collector::start(Mode::Status(200, None));
    let small = records(2500, 0);
    let d = daemon_with(&c, &small, UNLIMITED);
    assert!(
        wait_until(Duration::from_secs(60), || d.spool_names().is_empty()),
        "{}",
        tail(&d.log(), 30)
    );
    let sizes: Vec<usize> = c
        .accepted()
        .iter()
        .map(|r| logs(&decode(r)).len())
        .collect();
    assert_eq!(sizes, vec![1000, 1000, 500]);
    let ids = accepted_ids(&c);
    assert_eq!(ids.len(), 2500);
    assert!(ids.values().all(|n| *n == 1));
    drop(d);

    // 8,000-byte payloads: the byte bound ends a request first.
    let c = Collector::start(Mode::Status(200, None));
    let big = records(1200, 8000);
    let d = daemon_with(&c, &big, UNLIMITED);
    assert!(
        wait_until(Duration::from_secs(60), || d.spool_names().is_empty()),
        "{}",
        tail(&d.log(), 30)
    );
    let mut counts = Vec::new();
    for r in c.accepted() {
        let req = decode(&r);
        let payload: usize = logs(&req)
            .iter()
            .map(|l| match &l.body {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => s.len(),
                _ => 0,
            })
            .sum();
        assert!(
            payload <= 4 << 20,
            "{payload} bytes of payload in a request"
        );
        counts.push(logs(&req).len());
    }
    assert_eq!(counts.iter().sum::<usize>(), 1200);
    // About 490 records of 8 KiB fill 4 MiB; every request but the last is full.
    assert!(counts.len() >= 3, "{counts:?}");
    assert!(
        counts[..counts.len() - 1].iter().all(|n| *n > 400),
        "{counts:?}"
    );
}

/// The collector takes the second request but its answer never arrives;
/// telemd is killed meanwhile. After a restart every record is there, and
/// only that request's records were sent twice.
#[test]
fn kill_9_while_a_batch_is_posted_loses_nothing_and_resends_at_most_that_batch() {
    let c = Collector::start(Mode::OkThenAnswerLost(1));
    let rs = records(2500, 0);
    let mut d = daemon_with(&c, &rs, UNLIMITED);
    assert!(
        wait_until(Duration::from_secs(30), || c.requests().len() == 2),
        "{}",
        tail(&d.log(), 30)
    );
    d.kill9();
    c.set_mode(Mode::Status(200, None));
    d.spawn_with(Command::new(TELEMD));
    assert!(
        wait_until(Duration::from_secs(60), || d.spool_names().is_empty()),
        "{}",
        tail(&d.log(), 30)
    );
    let ids = accepted_ids(&c);
    for r in &rs {
        assert!(
            ids.contains_key(r.headers.get(Header::EventId)),
            "a record was lost"
        );
    }
    let resent: usize = ids.values().map(|n| n - 1).sum();
    assert!(
        (1..=1000).contains(&resent),
        "{resent} records sent twice (the lost answer's request is)"
    );
}

#[test]
fn a_partial_success_is_journaled_with_its_count_and_not_retried() {
    let answer = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 1,
            error_message: "one record is too old".into(),
        }),
    }
    .encode_to_vec();
    let c = Collector::start(Mode::Reply(200, answer));
    let d = daemon(&c, &records(3, 0));
    wait_drained(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.requests().len(), 1, "not retried");
    let j = journal(&d);
    assert_eq!(j.len(), 3);
    for e in &j {
        assert_eq!(e.outcome, Outcome::Delivered);
        assert!(
            e.detail.contains("refused 1 of 3") && e.detail.contains("one record is too old"),
            "{}",
            e.detail
        );
    }
    assert!(d.log().contains("one record is too old"), "{}", d.log());
}

#[test]
fn a_429_waits_for_retry_after_then_the_same_records_go() {
    let c = Collector::start(Mode::Status(429, Some("2".into())));
    let d = daemon(&c, &records(3, 0));
    assert!(wait_until(Duration::from_secs(20), || !c
        .requests()
        .is_empty()));
    c.set_mode(Mode::Status(200, None));
    wait_drained(&d);
    let reqs = c.requests();
    assert_eq!(reqs.len(), 2, "one refused, one accepted");
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert_eq!(logs(&decode(&reqs[1])).len(), 3);
    assert!(journal(&d).iter().all(|e| e.outcome == Outcome::Delivered));
}

#[test]
fn a_503_is_retried_and_a_400_or_500_rejects_the_request_for_good() {
    let c = Collector::start(Mode::StatusFirst(503, 1));
    let d = daemon(&c, &records(2, 0));
    assert!(wait_until(Duration::from_secs(20), || d
        .spool_names()
        .is_empty()));
    assert_eq!(c.requests().len(), 2);
    assert!(journal(&d).iter().all(|e| e.outcome == Outcome::Delivered));
    drop(d);

    for status in [400, 500] {
        let c = Collector::start(Mode::Status(status, None));
        let d = daemon(&c, &records(2, 0));
        assert!(wait_until(Duration::from_secs(20), || d
            .spool_names()
            .is_empty()));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.requests().len(), 1, "HTTP {status} is not retried");
        let j = journal(&d);
        assert_eq!(j.len(), 2);
        for e in &j {
            assert_eq!(e.outcome, Outcome::Rejected);
            assert!(e.detail.contains(&format!("HTTP {status}")), "{}", e.detail);
        }
    }
}

/// A collector whose request limit is below a full batch answers 413:
/// the batch is halved and sent again, nothing is refused.
#[test]
fn a_413_halves_the_batch_instead_of_dropping_it() {
    let c = Collector::start(Mode::StatusFirst(413, 1));
    let rs = records(4, 0);
    let d = daemon(&c, &rs);
    wait_drained(&d);
    let sizes = request_sizes(&c);
    assert_eq!(sizes, vec![4, 2, 2]);
    assert_eq!(accepted_ids(&c).len(), 4);
    assert!(journal(&d).iter().all(|e| e.outcome == Outcome::Delivered));
}

/// The rate limit counts the records a request holds: with 5 records a
/// window, a spool of 12 sends one request of 5, the rest waits.
#[test]
fn a_request_never_carries_more_than_the_rate_limit_lets_through() {
    let c = Collector::start(Mode::Status(200, None));
    let d = daemon_with(
        &c,
        &records(12, 0),
        "record_burst_limit = 5\nrecord_window_length = 59",
    );
    assert!(
        wait_until(Duration::from_secs(20), || c.accepted_count() == 1),
        "{}",
        tail(&d.log(), 30)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.requests().len(), 1);
    assert_eq!(accepted_ids(&c).len(), 5);
    assert_eq!(d.spool_names().len(), 7);
}

/// A wrong URL (404) says nothing about the records: they stay, and go
/// once the collector answers.
#[test]
fn a_404_keeps_the_records_for_the_next_try() {
    let c = Collector::start(Mode::StatusFirst(404, 1));
    let d = daemon(&c, &records(3, 0));
    wait_drained(&d);
    assert_eq!(c.requests().len(), 2);
    assert_eq!(accepted_ids(&c).len(), 3);
    let j = journal(&d);
    assert_eq!(j.len(), 3);
    assert!(j.iter().all(|e| e.outcome == Outcome::Delivered), "{j:?}");
    assert!(d.log().contains("HTTP 404"), "{}", d.log());
}

/// A 413 to a request of one record is the setup's limit, not the
/// record's fault: kept and tried again.
#[test]
fn a_413_to_a_single_record_keeps_it() {
    let c = Collector::start(Mode::StatusFirst(413, 2));
    let d = daemon(&c, &records(2, 0));
    wait_drained(&d);
    let sizes = request_sizes(&c);
    assert_eq!(sizes, vec![2, 1, 1, 1]);
    assert_eq!(accepted_ids(&c).len(), 2);
    assert!(journal(&d).iter().all(|e| e.outcome == Outcome::Delivered));
}

/// With `rate_limit_strategy = "drop"`, a record is dropped only against
/// records the collector took: while it answers 503 to the open request,
/// nothing is dropped.
#[test]
fn the_drop_strategy_never_drops_against_an_unsent_request() {
    let c = Collector::start(Mode::Status(503, None));
    let d = daemon_with(
        &c,
        &records(12, 0),
        "rate_limit_strategy = \"drop\"\nrecord_burst_limit = 5\nrecord_window_length = 59",
    );
    assert!(
        wait_until(Duration::from_secs(20), || c.requests().len() >= 2),
        "{}",
        tail(&d.log(), 30)
    );
    let j = journal(&d);
    assert!(j.is_empty(), "{j:?}");
    assert_eq!(d.spool_names().len(), 12);
    for r in c.requests() {
        assert_eq!(logs(&decode(&r)).len(), 5);
    }
}

/// A 200 that is not an OTLP receiver's answer (a captive portal's page)
/// confirms nothing.
#[test]
fn a_2xx_html_page_confirms_nothing() {
    let c = Collector::start(Mode::Body(300));
    let d = daemon(&c, &records(2, 0));
    assert!(
        wait_until(Duration::from_secs(20), || c.requests().len() >= 2),
        "{}",
        tail(&d.log(), 30)
    );
    assert!(journal(&d).is_empty());
    assert_eq!(d.spool_names().len(), 2);
    assert!(d.log().contains("not an OTLP receiver"), "{}", d.log());
}
