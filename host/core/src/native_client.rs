//! The client side of the native socket, as libtelemetry does it: build a
//! complete record with this machine's metadata, frame it, send it in one
//! connection. `telem-record-gen` and the tests use it; frames it sends are
//! accepted by the legacy daemon too.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::metadata::HostMetadata;
use crate::record::wire::encode_frame;
use crate::record::{random_id, Header, Headers, Record, RECORD_FORMAT_VERSION};

/// How long a client may take to hand a record over, connecting and
/// writing together: libtelemetry's one-second socket timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a probe chooses about its record; the rest comes from the machine.
#[derive(Clone, Debug)]
pub struct NewRecord<'a> {
    /// `DOMAIN/PROBE/REST`.
    pub classification: &'a str,
    /// 1..4.
    pub severity: u8,
    /// Version of the payload's own format.
    pub payload_version: u32,
    /// The payload.
    pub payload: &'a str,
    /// A chosen event id, else a random one.
    pub event_id: Option<&'a str>,
    /// `CFG:` path to send along.
    pub config: Option<&'a str>,
}

/// Fills in a complete record as libtelemetry would: machine metadata,
/// current time, and `machine_id` (a placeholder the daemon replaces).
pub fn build_record(r: &NewRecord<'_>, metadata: &HostMetadata, machine_id: &str) -> Record {
    let mut h = Headers::default();
    h.set(Header::RecordFormatVersion, RECORD_FORMAT_VERSION);
    h.set(Header::Classification, r.classification);
    h.set(Header::Severity, r.severity.to_string());
    h.set(Header::MachineId, machine_id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    h.set(Header::CreationTimestamp, now.to_string());
    metadata.apply(&mut h);
    h.set(Header::PayloadFormatVersion, r.payload_version.to_string());
    h.set(
        Header::EventId,
        r.event_id.map_or_else(random_id, str::to_owned),
    );
    Record {
        config: r.config.map(str::to_owned),
        headers: h,
        payload: r.payload.to_owned(),
    }
}

/// Why a frame could not be handed to the daemon.
#[derive(Debug, Error)]
pub enum SendError {
    /// Nothing listens at the socket path.
    #[error("cannot connect to {path} (is telemd running?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon stopped reading.
    #[error("cannot send to {path}")]
    Send {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon took the connection but did not read the whole frame in
    /// time: a client never waits longer than its timeout for a busy or
    /// stuck daemon.
    #[error("cannot send to {path}: the daemon did not take the record within {timeout:?}")]
    TimedOut {
        /// The socket path.
        path: String,
        /// The whole allowance.
        timeout: Duration,
    },
}

/// [`build_record`] with this machine's metadata and machine id as
/// `config` locates them (the placeholder id when there is none yet): what
/// a native client on this machine sends.
pub fn build_local_record(r: &NewRecord<'_>, config: &crate::config::Config) -> Record {
    let metadata = HostMetadata::collect(&config.host.metadata_root);
    let machine_id = crate::machine_id::MachineIdStore::new(
        &config.host.state_dir,
        &config.host.static_machine_id_file,
    )
    .peek()
    .unwrap_or_else(|| "FFFFFFFF".into());
    build_record(r, &metadata, &machine_id)
}

/// Sends one record over the native socket at `socket`.
pub fn send_record(socket: &Path, record: &Record, timeout: Duration) -> Result<(), SendError> {
    send_frame(socket, &encode_frame(record), timeout)
}

/// Sends raw frame bytes in one connection, connecting and writing within
/// `timeout` in all (connect waits for a backlog slot at most that long,
/// and a daemon that reads slowly cannot stretch it write by write).
/// Writes never raise `SIGPIPE`: the C library runs this inside programs
/// that keep the signal's default action, which would kill them.
pub fn send_frame(socket: &Path, frame: &[u8], timeout: Duration) -> Result<(), SendError> {
    let deadline = Instant::now() + timeout;
    let path = socket.display().to_string();
    let connect = || -> io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        // SO_SNDTIMEO also bounds how long connect() waits on a full backlog.
        s.set_write_timeout(Some(timeout))?;
        s.connect(&socket2::SockAddr::unix(socket)?)?;
        Ok(s)
    };
    let s = connect().map_err(|source| SendError::Connect {
        path: path.clone(),
        source,
    })?;
    let timed_out = || SendError::TimedOut {
        path: path.clone(),
        timeout,
    };
    let mut sent = 0;
    while sent < frame.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        // Below a millisecond the timeout could round to zero, which the
        // kernel reads as no timeout at all.
        if left < Duration::from_millis(1) {
            return Err(timed_out());
        }
        let result = s
            .set_write_timeout(Some(left))
            .and_then(|()| s.send_with_flags(&frame[sent..], libc::MSG_NOSIGNAL));
        match result {
            Ok(0) => {
                return Err(SendError::Send {
                    path,
                    source: io::ErrorKind::WriteZero.into(),
                })
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(source) => return Err(SendError::Send { path, source }),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_daemon_that_accepts_and_never_reads_cannot_hold_a_sender_past_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telem-0");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts, then holds the connection without reading: only a frame
        // bigger than the socket buffers makes the sender wait. Each write
        // that makes progress must not restart the allowance.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = wait.recv();
            drop(s);
        });
        let frame = vec![b'x'; 64 << 20];
        let start = Instant::now();
        let err = send_frame(&path, &frame, Duration::from_millis(300)).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, SendError::TimedOut { .. }), "{err:?}");
        // 300 ms allowed; 10x leaves room for a loaded machine.
        assert!(took < Duration::from_secs(3), "took {took:?}");
        done.send(()).unwrap();
        holder.join().unwrap();
    }

    /// Runs `f` with `SIGPIPE` blocked in this thread and says whether it
    /// raised one (a blocked signal stays pending even though the test
    /// harness ignores it), consuming it.
    fn raises_sigpipe<T>(f: impl FnOnce() -> T) -> (T, bool) {
        // SAFETY: plain signal-mask calls on zero-initialised sigset_t
        // values, restored before returning; only this thread's mask changes.
        unsafe {
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
            let r = f();
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            let raised = libc::sigismember(&pending, libc::SIGPIPE) == 1;
            if raised {
                let now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&pipe, std::ptr::null_mut(), &now);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            (r, raised)
        }
    }

    #[test]
    fn a_daemon_that_closes_early_is_an_error_not_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telem-0");
        let listener = UnixListener::bind(&path).unwrap();
        let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
        // Bigger than the socket buffers, so the write meets the closed end.
        let frame = vec![b'x'; 64 << 20];
        let (result, raised) =
            raises_sigpipe(|| send_frame(&path, &frame, Duration::from_secs(10)));
        closer.join().unwrap();
        // The C library runs this in programs that keep SIGPIPE's default
        // action: it would kill them.
        assert!(!raised, "the send raised SIGPIPE");
        let err = result.unwrap_err();
        match err {
            SendError::Send { source, .. } => {
                assert!(
                    matches!(source.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
                    "{source:?}"
                )
            }
            e => panic!("{e:?}"),
        }
    }
}
