//! A hostile collector (or anything answering in its place) sends a 200
//! and then a body that never ends: the daemon must not hold it in memory
//! nor wait for it, must count the record as delivered (the status is the
//! confirmation), and must keep delivering.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telem_core::journal::{query_dir, JournalFilter, Outcome};
use telem_core::record::wire::encode_frame;
use telem_core::record::Header;

use support::*;

/// The most one response streams: enough to show in the daemon's RSS if it
/// is kept, small enough not to hurt the machine when it is.
const MAX_STREAMED: u64 = 512 << 20;

/// Streaming stops after this long whatever happens.
const MAX_STREAM_TIME: Duration = Duration::from_secs(30);

/// The daemon's RSS must stay under this (it is some tens of MiB).
const RSS_LIMIT_KIB: u64 = 150 << 10;

/// How the endless body is sent.
#[derive(Clone, Copy)]
enum Body {
    /// `Transfer-Encoding: chunked`, 64 KiB chunks as fast as they go.
    ChunkedFlood,
    /// `Content-Length: 10000000000`, one byte per 100 ms.
    Trickle,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    /// Body bytes written to the current or last response.
    streamed: AtomicU64,
    /// Responses whose reader went away before the body ended.
    hung_up: AtomicUsize,
}

/// An HTTP server on 127.0.0.1 answering every POST with `200 OK` and an
/// endless body, one thread per connection.
struct EndlessCollector {
    port: u16,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl EndlessCollector {
    fn start(body: Body) -> EndlessCollector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sn, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let (sn, st) = (sn.clone(), st.clone());
                        std::thread::spawn(move || answer(s, body, &sn, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EndlessCollector { port, seen, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v2/collector", self.port)
    }
}

impl Drop for EndlessCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request (head and `Content-Length` body), answers 200 and
/// streams until the reader goes away, the test ends, or the bounds.
fn answer(stream: TcpStream, body: Body, seen: &Seen, stop: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap();
            }
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut request_body = vec![0; len];
    if reader.read_exact(&mut request_body).is_err() {
        return;
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.streamed.store(0, Ordering::SeqCst);
    let mut out = stream;
    let (head, piece, pause): (&str, Vec<u8>, Duration) = match body {
        Body::ChunkedFlood => {
            let mut chunk = format!("{:x}\r\n", 64 << 10).into_bytes();
            chunk.extend(std::iter::repeat_n(b'x', 64 << 10));
            chunk.extend_from_slice(b"\r\n");
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                chunk,
                Duration::ZERO,
            )
        }
        Body::Trickle => (
            "HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n",
            b"x".to_vec(),
            Duration::from_millis(100),
        ),
    };
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < MAX_STREAM_TIME
        && seen.streamed.load(Ordering::SeqCst) < MAX_STREAMED
    {
        if out.write_all(&piece).and_then(|()| out.flush()).is_err() {
            seen.hung_up.fetch_add(1, Ordering::SeqCst);
            return;
        }
        seen.streamed
            .fetch_add(piece.len() as u64, Ordering::SeqCst);
        std::thread::sleep(pause);
    }
    // Bound reached: hold the connection, the body still unfinished.
    while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_STREAM_TIME {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a record over the native socket; returns its event id.
fn send(d: &TestDaemon, payload: &str) -> String {
    let r = test_record(payload);
    send_raw(&d.socket(), &encode_frame(&r));
    r.headers.get(Header::EventId).to_owned()
}

/// The journal's outcome for `event_id`, if any yet.
fn outcome(d: &TestDaemon, event_id: &str) -> Option<(Outcome, String)> {
    query_dir(&d.path("journal"), usize::MAX, &JournalFilter::default())
        .unwrap()
        .into_iter()
        .find(|e| e.event_id == event_id)
        .map(|e| (e.outcome, e.detail))
}

/// Waits up to `limit` for `event_id` to be journaled and asserts it was
/// delivered on the 200.
fn assert_delivered_within(d: &TestDaemon, event_id: &str, limit: Duration) {
    let sent = Instant::now();
    assert!(
        wait_until(limit, || outcome(d, event_id).is_some()),
        "not journaled within {limit:?} (RSS {} KiB); log:\n{}",
        rss_kib(d.pid()),
        d.log()
    );
    assert_eq!(
        outcome(d, event_id),
        Some((Outcome::Delivered, "HTTP 200".into())),
        "journaled after {:?}",
        sent.elapsed()
    );
}

#[test]
fn an_endless_response_body_does_not_grow_memory() {
    let c = EndlessCollector::start(Body::ChunkedFlood);
    let d = TestDaemon::start(&format!("server = \"{}\"\n", c.url()));
    let first = send(&d, "first");
    // Either the daemon hangs up, or it keeps reading until the server's
    // bound: wait for whichever comes first, then look at its memory.
    assert!(
        wait_until(Duration::from_secs(20), || {
            c.seen.hung_up.load(Ordering::SeqCst) > 0
                || c.seen.streamed.load(Ordering::SeqCst) >= MAX_STREAMED
        }),
        "the response was neither read to the server's bound nor dropped; log:\n{}",
        d.log()
    );
    let rss = rss_kib(d.pid());
    assert!(
        rss < RSS_LIMIT_KIB,
        "telemd's RSS is {rss} KiB after {} MiB of response body",
        c.seen.streamed.load(Ordering::SeqCst) >> 20
    );
    // The daemon hung up long before the bound: what the server got into
    // the socket buffers before noticing is all it sent.
    assert_eq!(c.seen.hung_up.load(Ordering::SeqCst), 1);
    assert!(c.seen.streamed.load(Ordering::SeqCst) < 64 << 20);
    // The 200 confirmed the record; the cut body does not change that.
    assert_delivered_within(&d, &first, Duration::from_secs(5));
    // And the daemon keeps delivering, on a new connection.
    let second = send(&d, "second");
    assert_delivered_within(&d, &second, Duration::from_secs(5));
    assert_eq!(c.seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(c.seen.hung_up.load(Ordering::SeqCst), 2);
    let rss = rss_kib(d.pid());
    assert!(rss < RSS_LIMIT_KIB, "telemd's RSS is {rss} KiB");
}

#[test]
fn a_body_that_never_ends_does_not_hold_delivery_up() {
    let c = EndlessCollector::start(Body::Trickle);
    let d = TestDaemon::start(&format!("server = \"{}\"\n", c.url()));
    let sent = Instant::now();
    let first = send(&d, "first");
    // The body gets 2 s after the head, not the request's 10 s.
    assert_delivered_within(&d, &first, Duration::from_secs(6));
    assert!(
        wait_until(Duration::from_secs(2), || c
            .seen
            .hung_up
            .load(Ordering::SeqCst)
            == 1),
        "the daemon did not close the connection of the unfinished body"
    );
    eprintln!("delivered and hung up after {:?}", sent.elapsed());
    let second = send(&d, "second");
    assert_delivered_within(&d, &second, Duration::from_secs(6));
    assert_eq!(c.seen.requests.load(Ordering::SeqCst), 2);
}
