//! The blocking client of the control socket, for `telemctl`, the crash
//! handler and the tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Captured, Hello, ProbeList, Request, Response, RunReport, Status, MAX_REQUEST, PROTOCOL_VERSION,
};

/// Longest reply line read (a probe list with long grants stays far below).
const MAX_REPLY: u64 = 16 << 20;

/// Why a control request got no answer, or not the one asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the control socket.
    #[error("telemd is not running (nothing answers at {})", .path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// What connecting said.
        #[source]
        source: io::Error,
    },
    /// The socket exists but this user may not use it.
    #[error("permission denied on {}: the control socket is for root and the telemetry group", .path.display())]
    Denied {
        /// The socket.
        path: PathBuf,
    },
    /// The exchange broke off, or the daemon did not answer in time.
    #[error("control socket {}", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The answer was not a reply of this protocol.
    #[error("control socket {}: unreadable answer", .path.display())]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What parsing said.
        #[source]
        source: serde_json::Error,
    },
    /// The daemon speaks another version of the protocol.
    #[error("telemd speaks control protocol {theirs} ({server}) and this program {ours}: use the telemctl that came with this telemd")]
    Version {
        /// This program's version.
        ours: u32,
        /// The daemon's.
        theirs: u32,
        /// The daemon's program and version.
        server: String,
    },
    /// The daemon predates the handshake.
    #[error("telemd is older than this program and does not speak control protocol {PROTOCOL_VERSION}: use the telemctl that came with it ({message})")]
    NoHandshake {
        /// What it answered to the hello.
        message: String,
    },
    /// The daemon refused the request or it failed there.
    #[error("{0}")]
    Daemon(String),
    /// The daemon answered with a reply of another kind.
    #[error("telemd answered {got} to a {asked} request")]
    Unexpected {
        /// The request kind.
        asked: String,
        /// The reply kind.
        got: String,
    },
}

/// A connection to the daemon, after the handshake.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    server: Hello,
}

impl Client {
    /// Connects and shakes hands. `timeout` bounds each read and write (the
    /// crash handler must not hang on a stuck daemon); `None` waits.
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => ClientError::Denied {
                path: path.to_owned(),
            },
            _ => ClientError::NotRunning {
                path: path.to_owned(),
                source,
            },
        })?;
        let io_err = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        stream.set_read_timeout(timeout).map_err(io_err)?;
        stream.set_write_timeout(timeout).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        let mut client = Client {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
            server: Hello {
                version: 0,
                server: String::new(),
            },
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: program_version(),
        };
        let answer = match client.exchange(&hello) {
            // A daemon from before the handshake answers in its own shape.
            Err(ClientError::BadReply { .. }) => {
                return Err(ClientError::NoHandshake {
                    message: "it answered the hello in a shape this program does not know".into(),
                })
            }
            other => other?,
        };
        match answer {
            Response::Hello(h) if h.version == PROTOCOL_VERSION => client.server = h,
            Response::Hello(h) => {
                return Err(ClientError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: h.version,
                    server: h.server,
                })
            }
            Response::Error { message } => return Err(ClientError::NoHandshake { message }),
            other => return Err(unexpected(&hello, &other)),
        }
        Ok(client)
    }

    /// The daemon's program and version, from the handshake.
    pub fn server(&self) -> &str {
        &self.server.server
    }

    /// Sends one request and reads its reply; a [`Response::Error`] comes
    /// back as [`ClientError::Daemon`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        match self.exchange(req)? {
            Response::Error { message } => Err(ClientError::Daemon(message)),
            r => Ok(r),
        }
    }

    /// The probes and their grants.
    pub fn list(&mut self) -> Result<ProbeList, ClientError> {
        match self.call(&Request::List)? {
            Response::Probes(p) => Ok(p),
            other => Err(unexpected(&Request::List, &other)),
        }
    }

    /// The daemon's summary.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => Err(unexpected(&Request::Status, &other)),
        }
    }

    /// Reloads the daemon's config; what changed in place, and what waits
    /// for a restart.
    pub fn reload_config(&mut self) -> Result<(Vec<String>, Vec<String>), ClientError> {
        match self.call(&Request::ReloadConfig)? {
            Response::ConfigReloaded {
                changed,
                restart_needed,
            } => Ok((changed, restart_needed)),
            other => Err(unexpected(&Request::ReloadConfig, &other)),
        }
    }

    /// The self-metrics, as OpenMetrics text.
    pub fn metrics(&mut self) -> Result<String, ClientError> {
        match self.call(&Request::Metrics)? {
            Response::Metrics { text } => Ok(text),
            other => Err(unexpected(&Request::Metrics, &other)),
        }
    }

    /// Reloads the probe directories; returns how many probes are loaded.
    pub fn reload(&mut self) -> Result<usize, ClientError> {
        match self.call(&Request::Reload)? {
            Response::Reloaded { probes } => Ok(probes),
            other => Err(unexpected(&Request::Reload, &other)),
        }
    }

    /// Announces a crash entry; with `wait`, returns its records once the
    /// probes handled it.
    pub fn crash(&mut self, id: &str, wait: bool) -> Result<Vec<Captured>, ClientError> {
        let req = Request::Crash {
            id: id.to_owned(),
            wait,
        };
        match self.call(&req)? {
            Response::CrashHandled { records } => Ok(records),
            Response::Done => Ok(Vec::new()),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Runs a probe now; the records it stored and how many the host
    /// refused meanwhile, or `None` from a daemon that predates reporting
    /// them.
    pub fn run(
        &mut self,
        probe: &str,
        args: Vec<String>,
    ) -> Result<Option<RunReport>, ClientError> {
        let req = Request::Run {
            probe: probe.to_owned(),
            args,
            report: true,
        };
        match self.call(&req)? {
            Response::Ran(report) => Ok(Some(report)),
            Response::Done => Ok(None),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Sends a request whose only answer is [`Response::Done`] (enable,
    /// disable, flush; a run, from a daemon that does not report).
    pub fn act(&mut self, req: &Request) -> Result<(), ClientError> {
        match self.call(req)? {
            Response::Done => Ok(()),
            other => Err(unexpected(req, &other)),
        }
    }

    fn exchange(&mut self, req: &Request) -> Result<Response, ClientError> {
        let io_err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(req).expect("requests serialize");
        if line.len() > MAX_REQUEST {
            return Err(ClientError::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("request of {} bytes is over {MAX_REQUEST}", line.len()),
                ),
            });
        }
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(io_err)?;
        let mut out = String::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY)
            .read_line(&mut out)
            .map_err(io_err)?;
        if n == 0 {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "telemd closed the connection without answering",
            )));
        }
        if !out.ends_with('\n') {
            // Cut short: by the daemon going away, or at MAX_REPLY (then the
            // rest of the line would be read as the next reply). Either way
            // this connection is done.
            let why = if n as u64 >= MAX_REPLY {
                format!("a reply longer than {MAX_REPLY} bytes")
            } else {
                "telemd closed the connection in the middle of its reply".to_owned()
            };
            return Err(io_err(io::Error::new(io::ErrorKind::InvalidData, why)));
        }
        serde_json::from_str(&out).map_err(|source| ClientError::BadReply {
            path: self.path.clone(),
            source,
        })
    }
}

/// `NAME VERSION` of the running program, for the handshake.
fn program_version() -> String {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "client".into());
    format!("{exe} {}", env!("CARGO_PKG_VERSION"))
}

fn unexpected(req: &Request, got: &Response) -> ClientError {
    ClientError::Unexpected {
        asked: wire_tag(req, "op"),
        got: wire_tag(got, "reply"),
    }
}

/// The name a request or reply has on the wire (its serde tag), so a new
/// variant needs no list of names kept beside it.
fn wire_tag<T: serde::Serialize>(v: &T, tag: &str) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .get(tag)
            .and_then(|t| t.as_str())
            .unwrap_or("?")
            .to_owned(),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use crate::control::RefusedProbe;

    use super::*;

    /// A one-connection daemon that answers the hello with `reply`.
    fn fake_daemon(
        reply: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(reply.as_bytes()).unwrap();
            line
        });
        (dir, path, server)
    }

    #[test]
    fn a_daemon_of_another_protocol_version_is_named_in_one_line() {
        let (_dir, path, server) =
            fake_daemon("{\"reply\":\"hello\",\"version\":2,\"server\":\"telemd 9.0.0\"}\n");
        let e = Client::connect(&path, Some(Duration::from_secs(10))).unwrap_err();
        let hello: Request = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert!(
            matches!(hello, Request::Hello { version, .. } if version == PROTOCOL_VERSION),
            "{hello:?}"
        );
        assert!(matches!(e, ClientError::Version { theirs: 2, .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            !text.contains('\n') && text.contains("telemd 9.0.0"),
            "{text}"
        );
    }

    #[test]
    fn a_daemon_without_the_handshake_is_named_too() {
        let (_dir, path, _server) =
            fake_daemon("{\"ok\":false,\"error\":\"bad request: unknown variant `hello`\"}\n");
        let e = Client::connect(&path, Some(Duration::from_secs(10))).unwrap_err();
        assert!(matches!(e, ClientError::NoHandshake { .. }), "{e:?}");
        assert!(e.to_string().contains("older"), "{e}");
        let (_dir, path, _server) =
            fake_daemon("{\"reply\":\"error\",\"message\":\"unknown op\"}\n");
        let e = Client::connect(&path, Some(Duration::from_secs(10))).unwrap_err();
        assert!(matches!(e, ClientError::NoHandshake { .. }), "{e:?}");
    }

    /// A number per variant, by an exhaustive match: a new variant does not
    /// compile until it is numbered here, and the test below then fails
    /// until it lists one.
    fn request_kind(r: &Request) -> usize {
        match r {
            Request::Hello { .. } => 0,
            Request::List => 1,
            Request::Run { .. } => 2,
            Request::Reload => 3,
            Request::Enable { .. } => 4,
            Request::Disable { .. } => 5,
            Request::Reset { .. } => 6,
            Request::Status => 7,
            Request::Flush => 8,
            Request::Crash { .. } => 9,
            Request::Metrics => 10,
            Request::ReloadConfig => 11,
        }
    }
    const REQUEST_KINDS: usize = 12;

    /// As [`request_kind`], for replies.
    fn response_kind(r: &Response) -> usize {
        match r {
            Response::Hello(_) => 0,
            Response::Probes(_) => 1,
            Response::Status(_) => 2,
            Response::Reloaded { .. } => 3,
            Response::CrashHandled { .. } => 4,
            Response::Done => 5,
            Response::Error { .. } => 6,
            Response::Metrics { .. } => 7,
            Response::ConfigReloaded { .. } => 8,
            Response::Ran(_) => 9,
        }
    }
    const RESPONSE_KINDS: usize = 10;

    #[test]
    fn every_request_and_reply_survives_the_wire() {
        let reqs = [
            Request::Hello {
                version: PROTOCOL_VERSION,
                client: "t".into(),
            },
            Request::List,
            Request::Run {
                probe: "p".into(),
                args: vec!["a".into()],
                report: true,
            },
            Request::Reload,
            Request::Enable { probe: "p".into() },
            Request::Disable { probe: "p".into() },
            Request::Reset { probe: "p".into() },
            Request::Status,
            Request::Flush,
            Request::Metrics,
            Request::ReloadConfig,
            Request::Crash {
                id: "1-2-3".into(),
                wait: true,
            },
        ];
        let mut kinds: Vec<usize> = reqs.iter().map(request_kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            REQUEST_KINDS,
            "a request variant is not listed"
        );
        for r in reqs {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
        }
        let reps = [
            Response::Hello(Hello {
                version: PROTOCOL_VERSION,
                server: "telemd t".into(),
            }),
            Response::Probes(ProbeList {
                probes: vec![],
                compilations: 3,
                refused: vec![RefusedProbe {
                    file: "/p/x.wasm".into(),
                    reason: "digest mismatch".into(),
                }],
                disabled: vec!["hello".into()],
                disabled_in_config: vec!["pstore".into()],
            }),
            Response::Status(Box::new(Status {
                opted_in: true,
                spool: Default::default(),
                delivery: Default::default(),
                ingest: Default::default(),
                probes: Default::default(),
            })),
            Response::Done,
            Response::Metrics {
                text: "telemd_opted_in 1\n".into(),
            },
            Response::ConfigReloaded {
                changed: vec!["delivery".into()],
                restart_needed: vec!["spool".into()],
            },
            Response::Reloaded { probes: 3 },
            Response::Ran(RunReport {
                records: vec![],
                stored: 5,
                refused: 2,
            }),
            Response::Error {
                message: "m".into(),
            },
            Response::CrashHandled {
                records: vec![Captured {
                    classification: "a/b/c".into(),
                    severity: 2,
                    payload: "x".into(),
                    payload_version: 1,
                    event_id: "00112233445566778899aabbccddeeff".into(),
                }],
            },
        ];
        let mut kinds: Vec<usize> = reps.iter().map(response_kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), RESPONSE_KINDS, "a reply variant is not listed");
        for r in reps {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(
                serde_json::from_str::<Response>(&text).unwrap(),
                r,
                "{text}"
            );
        }
        assert_eq!(wire_tag(&Request::Status, "op"), "status");
        assert_eq!(wire_tag(&Response::Done, "reply"), "done");
    }

    #[test]
    fn a_reply_over_the_cap_ends_the_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(&s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            (&s).write_all(b"{\"reply\":\"hello\",\"version\":1,\"server\":\"t\"}\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            // One line longer than MAX_REPLY, never ended.
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..=(MAX_REPLY >> 20) {
                if (&s).write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut c = Client::connect(&path, Some(Duration::from_secs(30))).unwrap();
        let e = c.call(&Request::Status).unwrap_err();
        assert!(e.to_string().contains("control socket"), "{e}");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("longer than"), "{cause}");
        drop(c);
        server.join().unwrap();
    }
}
