//! A real HTTP/1.1 collector for tests and benchmarks: keeps every request
//! it got (raw head, headers, body, time, the status it answered) and can be
//! told to answer a status (with `Retry-After`), stall, or drop connections.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the collector answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer this status, with an optional `Retry-After` value.
    Status(u16, Option<String>),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request, then answer nothing for this long.
    Stall(Duration),
    /// Answer 200 to the first this many requests, then stall every later
    /// one (a test can kill the client with exactly one post in flight).
    OkThenStall(usize),
    /// Answer 200 with a body of this many bytes.
    Body(usize),
    /// Answer this status with this body (`application/x-protobuf`).
    Reply(u16, Vec<u8>),
    /// Answer this status to the first this many requests, 200 after.
    StatusFirst(u16, usize),
    /// Answer 200 to the first this many requests; take every later one
    /// (counted as answered 200) but never send the answer: the collector
    /// kept the records and the client never learns it.
    OkThenAnswerLost(usize),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub head: String,
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status answered (0: none).
    pub answered: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    mode: Mode,
    requests: Vec<Request>,
}

pub struct Collector {
    pub port: u16,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    pub fn start(mode: Mode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            mode,
            requests: Vec::new(),
        }));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, conns, stp) = (state.clone(), connections.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        s.set_nonblocking(false).unwrap();
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Collector {
            port,
            state,
            connections,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v2/collector", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests were answered with 200 or 201 (no copying).
    pub fn accepted_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.answered == 200 || r.answered == 201)
            .count()
    }

    /// Records in the requests answered 200 or 201: the log records of an
    /// OTLP request (gzip protobuf), one for any other request.
    pub fn records_accepted(&self) -> usize {
        use prost::Message;
        use std::io::Read;
        let st = self.state.lock().unwrap();
        st.requests
            .iter()
            .filter(|r| r.answered == 200 || r.answered == 201)
            .map(|r| {
                if r.header("content-type") != Some("application/x-protobuf") {
                    return 1;
                }
                let mut plain = Vec::new();
                if flate2::read::GzDecoder::new(r.body.as_slice())
                    .read_to_end(&mut plain)
                    .is_err()
                {
                    return 0;
                }
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::decode(
                    plain.as_slice(),
                )
                .map_or(0, |req| {
                    req.resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len())
                        .sum()
                })
            })
            .sum()
    }

    /// Requests answered with 200 or 201.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.answered == 200 || r.answered == 201)
            .collect()
    }

    /// How many times each event id was accepted (duplicates show as > 1).
    pub fn accepted_by_event_id(&self) -> std::collections::HashMap<String, usize> {
        let mut seen = std::collections::HashMap::new();
        for r in self.accepted() {
            *seen
                .entry(r.header("event_id").unwrap_or("").to_owned())
                .or_default() += 1;
        }
        seen
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            })
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mode = {
            let st = state.lock().unwrap();
            match &st.mode {
                Mode::OkThenStall(n) if st.requests.len() < *n => Mode::Status(200, None),
                Mode::OkThenStall(_) => Mode::Stall(Duration::from_secs(600)),
                Mode::StatusFirst(code, n) if st.requests.len() < *n => Mode::Status(*code, None),
                Mode::StatusFirst(..) => Mode::Status(200, None),
                Mode::OkThenAnswerLost(n) if st.requests.len() < *n => Mode::Status(200, None),
                m @ Mode::OkThenAnswerLost(_) => m.clone(),
                m => m.clone(),
            }
        };
        let answered = match &mode {
            Mode::Status(code, _) => *code,
            Mode::Body(_) => 200,
            Mode::Reply(code, _) => *code,
            Mode::OkThenAnswerLost(_) => 200,
            _ => 0,
        };
        state.lock().unwrap().requests.push(Request {
            head,
            request_line,
            headers,
            body,
            at: Instant::now(),
            answered,
        });
        match mode {
            Mode::Status(code, retry_after) => {
                let ra = retry_after
                    .map(|v| format!("Retry-After: {v}\r\n"))
                    .unwrap_or_default();
                let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n{ra}\r\n");
                if out.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
            Mode::Body(len) => {
                let mut resp =
                    format!("HTTP/1.1 200 X\r\nContent-Length: {len}\r\n\r\n").into_bytes();
                resp.resize(resp.len() + len, b'x');
                if out.write_all(&resp).is_err() {
                    return;
                }
            }
            Mode::Reply(code, body) => {
                let mut resp = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                resp.extend_from_slice(&body);
                if out.write_all(&resp).is_err() {
                    return;
                }
            }
            Mode::Drop => return,
            Mode::Stall(d) => {
                std::thread::sleep(d);
                return;
            }
            Mode::OkThenAnswerLost(_) => {
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            Mode::OkThenStall(_) | Mode::StatusFirst(..) => unreachable!("resolved above"),
        }
    }
}
