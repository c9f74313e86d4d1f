//! End-to-end: the self-metrics. `metrics_listen` serves OpenMetrics text
//! on a unix socket or a loopback port, `telemctl metrics` prints the same,
//! Prometheus's own `promtool check metrics` accepts it, and a client that
//! holds connections open costs scrapes at most the header timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A request's whole answer (the server closes after one).
fn http(mut s: impl Read + Write, request: &str) -> String {
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// What Prometheus sends.
const OPENMETRICS: &str = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n";

/// The value of the sample line `name` (with its labels), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A collector that is down (nothing listens on the port) and three native
/// records: the scrape shows them spooled and the failed posts.
#[test]
fn a_scrape_shows_records_spooled_while_the_collector_is_down() {
    let d = TestDaemon::prepare(&format!(
        "server = \"http://127.0.0.1:9/\"\nmetrics_listen = \"{}\"\n",
        "METRICS"
    ));
    let sock = d.path("metrics.sock");
    let config = std::fs::read_to_string(&d.config_path)
        .unwrap()
        .replace("METRICS", &sock.display().to_string());
    std::fs::write(&d.config_path, config).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    let d = d.spawn();
    for i in 0..3 {
        send_raw(
            &d.socket(),
            &telem_core::record::wire::encode_frame(&test_record(&format!("metrics {i}"))),
        );
    }
    assert_eq!(d.wait_spool(3).len(), 3);
    assert!(
        wait_until(Duration::from_secs(20), || status(&d)
            .delivery
            .failed_attempts
            >= 1),
        "{}",
        tail(&d.log(), 20)
    );
    let answer = http(UnixStream::connect(&sock).unwrap(), OPENMETRICS);
    let (head, text) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert_eq!(
        sample(
            text,
            "telemd_records_ingested_total{source=\"native\",outcome=\"accepted\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(text, "telemd_spool_records"), Some(3.0), "{text}");
    assert!(sample(text, "telemd_spool_bytes").unwrap() > 0.0);
    assert!(sample(text, "telemd_delivery_failed_attempts_total").unwrap() >= 1.0);
    assert!(sample(text, "telemd_delivery_failures_in_a_row").unwrap() >= 1.0);
    assert_eq!(
        sample(text, "telemd_delivery_records_total{outcome=\"delivered\"}"),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Without an Accept naming OpenMetrics: the Prometheus text format,
    // which Prometheus's own checker (Debian's prometheus package) lints.
    let plain = http(UnixStream::connect(&sock).unwrap(), &get("/metrics"));
    let (head, plain) = plain.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(sample(plain, "telemd_spool_records"), Some(3.0), "{plain}");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(plain.as_bytes());
    assert!(
        check.status.success(),
        "promtool: {}{}",
        text_of(&check.stdout),
        text_of(&check.stderr)
    );

    // telemctl prints the same metrics.
    let out = telemctl(&d, &["metrics"]);
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    let printed = text_of(&out.stdout);
    assert_eq!(
        sample(&printed, "telemd_spool_records"),
        Some(3.0),
        "{printed}"
    );
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(names(&printed), names(plain));
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; the test command installs it)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_loopback_port_serves_metrics_and_nothing_else() {
    let port = free_port();
    let d = TestDaemon::start(&format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    let connect = || {
        let mut s = None;
        assert!(wait_until(Duration::from_secs(10), || {
            s = TcpStream::connect(("127.0.0.1", port)).ok();
            s.is_some()
        }));
        s.unwrap()
    };
    let ok = http(connect(), &get("/metrics"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("telemd_build_info{version="), "{ok}");
    let other = http(connect(), &get("/"));
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(
        connect(),
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    drop(d);
}

#[test]
fn an_address_other_machines_reach_is_refused_with_the_key_named() {
    for listen in ["0.0.0.0:9464", "192.0.2.1:9464", "metrics.sock"] {
        let d = TestDaemon::prepare(&format!("metrics_listen = \"{listen}\"\n"));
        let mut child = KillOnDrop(
            Command::new(TELEMD)
                .arg("-f")
                .arg(&d.config_path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert!(
            wait_until(Duration::from_secs(10), || child
                .0
                .try_wait()
                .unwrap()
                .is_some()),
            "{listen} accepted: telemd started"
        );
        let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        assert!(!out.status.success(), "{listen} accepted");
        let err = text_of(&out.stderr);
        assert!(err.contains("metrics_listen"), "{listen}: {err}");
        assert!(err.contains("loopback"), "{listen}: {err}");
    }
}

/// Connections that never send a request hold every scrape slot; the
/// header timeout frees them, so a scrape gets through within it.
#[test]
fn idle_connections_hold_scrapes_off_for_at_most_the_header_timeout() {
    let port = free_port();
    let d = TestDaemon::start(&format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        ("127.0.0.1", port)
    )
    .is_ok()));
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let start = Instant::now();
    let mut answered = false;
    while start.elapsed() < Duration::from_secs(12) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(get("/metrics").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answered,
        "no scrape answered in 12 s\n{}",
        tail(&d.log(), 20)
    );
    // Held off by the idle connections, then served once they were cut.
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "answered after {:?}: the idle connections held no slot",
        start.elapsed()
    );
    drop(idle);
}

/// `metrics_listen` naming the control socket: the live socket is never
/// taken over; telemd refuses to start and says why.
#[test]
fn a_live_socket_at_the_metrics_path_is_never_replaced() {
    let d = TestDaemon::prepare("metrics_listen = \"CONTROL\"\n");
    let config = std::fs::read_to_string(&d.config_path)
        .unwrap()
        .replace("CONTROL", &d.path("control.sock").display().to_string());
    std::fs::write(&d.config_path, config).unwrap();
    let out = Command::new(TELEMD)
        .arg("-f")
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text_of(&out.stderr);
    assert!(
        err.contains("cannot serve the metrics") && err.contains("listens on this socket"),
        "{err}"
    );
}
