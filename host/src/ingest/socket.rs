//! The native probe socket: the legacy libtelemetry Unix stream socket
//! (`/run/telem-0`), one frame per connection, no reply.
//!
//! Unlike the legacy daemon, a client whose bytes arrive slowly is waited
//! for (up to `socket_timeout_ms` for the whole frame) instead of dropped,
//! and the number of clients served at once is capped; clients beyond the
//! cap wait in the kernel's listen backlog rather than being refused.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Ingest, IngestError};
use crate::record::wire::{check_total_size, parse_frame_body, FrameError};
use crate::record::{Header, Record};

/// Listen backlog: room for bursts of short-lived probe connections while
/// every serving slot is busy.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Records read from clients and waiting for their spool commit; bounds
/// memory (each at most one frame) when the disk is slower than the clients.
pub const MAX_PENDING_RECORDS: usize = 1024;

/// Limits applied to native clients.
#[derive(Clone, Copy, Debug)]
pub struct NativeSocketOptions {
    /// Time a client has to deliver its whole frame.
    pub timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Binds the native socket at `path` with permission bits `mode`,
/// replacing a stale socket left by a previous run (but never another kind
/// of file).
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    sock.bind(&socket2::SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    sock.listen(LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(sock),
    ))
}

/// Why a connection produced no record.
#[derive(Debug, Error)]
enum ConnError {
    #[error("connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

/// Serves native clients until `shutdown` turns true, then waits for the
/// connections in progress (each bounded by the timeout).
pub async fn serve(
    listener: UnixListener,
    ingest: Arc<Ingest>,
    opts: NativeSocketOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let pending = Arc::new(Semaphore::new(MAX_PENDING_RECORDS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match stream {
            Ok((stream, _)) => {
                let ingest = ingest.clone();
                let pending = pending.clone();
                conns.spawn(async move {
                    handle(stream, permit, &pending, &ingest, opts.timeout).await
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("native socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn handle(
    mut stream: UnixStream,
    slot: OwnedSemaphorePermit,
    pending: &Semaphore,
    ingest: &Ingest,
    timeout: Duration,
) {
    let cred = stream.peer_cred().ok();
    let uid = cred.as_ref().map(|c| c.uid());
    let pid = cred.as_ref().and_then(|c| c.pid());
    let record = match tokio::time::timeout(timeout, read_record(&mut stream)).await {
        Err(_) => {
            ingest.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            warn!(
                ?uid,
                ?pid,
                "native client sent no complete frame within {timeout:?}; dropped"
            );
            return;
        }
        Ok(Err(ConnError::Truncated { got: 0, .. })) => {
            debug!(?uid, ?pid, "native client closed without sending anything");
            return;
        }
        Ok(Err(e)) => {
            ingest.stats.invalid.fetch_add(1, Ordering::Relaxed);
            let e = crate::untrusted::escape(&e.to_string(), crate::untrusted::FIELD_CAP);
            warn!(?uid, ?pid, "native frame rejected: {e}");
            return;
        }
        Ok(Ok(r)) => r,
    };
    // The client expects no answer: free its connection slot now and let
    // the record wait for its group commit, within the pending-record bound.
    let _pending = pending.acquire().await.expect("semaphore never closed");
    drop(stream);
    drop(slot);
    let classification = crate::untrusted::escape(
        record.headers.get(Header::Classification),
        crate::untrusted::FIELD_CAP,
    );
    match ingest.submit_native(record).await {
        Ok(id) => debug!(record_id = %id, %classification, ?uid, ?pid, "native record spooled"),
        Err(e @ IngestError::NotOptedIn(_)) => {
            info!(%classification, ?uid, ?pid, "native record refused: {e}")
        }
        Err(e) => {
            let e = crate::untrusted::escape(&e.to_string(), crate::untrusted::FIELD_CAP);
            warn!(%classification, ?uid, ?pid, "native record refused: {e}")
        }
    }
}

async fn read_record(stream: &mut UnixStream) -> Result<Record, ConnError> {
    let mut size = [0u8; 4];
    read_full(stream, &mut size, 4).await?;
    let total = u32::from_ne_bytes(size);
    check_total_size(total)?;
    let mut body = vec![0u8; total as usize - 4];
    read_full(stream, &mut body, total as usize).await?;
    Ok(parse_frame_body(&body)?)
}

/// `read_exact` that reports how much of the frame arrived before EOF.
async fn read_full(
    stream: &mut UnixStream,
    buf: &mut [u8],
    frame_len: usize,
) -> Result<(), ConnError> {
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            let before = frame_len - buf.len();
            return Err(ConnError::Truncated {
                got: before + got,
                want: frame_len,
            });
        }
        got += n;
    }
    Ok(())
}
