//! The native probe socket: the legacy libtelemetry Unix stream socket
//! (`/run/telem-0`), one frame per connection, no reply.
//!
//! Unlike the legacy daemon, a client whose bytes arrive slowly is waited
//! for (up to `socket_timeout_ms` for the whole frame) instead of dropped,
//! and the work done at once is capped. Any local user can connect, so the
//! caps are shared out by the peer's uid (`SO_PEERCRED`), and one user
//! holding connections open cannot keep the others out:
//!
//! - The accept loop never waits on one uid. A connection is accepted
//!   first, then admitted or closed: once half the open-connection budget
//!   ([`OpenCaps`]) is taken, a uid over its quarter has its new
//!   connections closed at once (logged at most once per
//!   [`REFUSAL_LOG_INTERVAL`]); until then one uid's burst is admitted, so
//!   a well-behaved burst is not cut short. One uid thus holds at most
//!   about half the budget. Only when the whole budget is taken (several
//!   uids) does the loop stop accepting, and clients wait in the kernel's
//!   backlog as they always did.
//! - A connection takes a serving slot only when its first bytes arrive, so
//!   idle connections hold none. Of the `max_connections` slots a uid holds
//!   at most its share ([`NativeSocketOptions::per_uid_slots`]); its other
//!   connections wait for one of its own slots, holding no global one. A
//!   burst of well-behaved clients of one uid is served in turn, not
//!   refused.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Ingest, IngestError};
use telem_core::record::wire::{check_total_size, parse_frame_body, FrameError};
use telem_core::record::{Header, Record};
use telem_core::untrusted::LogLimit;

/// Listen backlog: room for bursts of short-lived probe connections while
/// the daemon is not accepting (every open-connection place taken).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Records read from clients and waiting for their spool commit; bounds
/// memory (each at most one frame) when the disk is slower than the clients.
pub const MAX_PENDING_RECORDS: usize = 1024;

/// At most one line per this long says how many connections were refused
/// because their uid had its share open: a flood must not flood the log.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// "No complete frame" lines logged per [`TIMEOUT_LOG_INTERVAL`]; the rest
/// are counted into the next line. As many as the old daemon could write
/// (one per slot per timeout), although far more connections may now wait.
pub const TIMEOUT_LOG_BURST: u32 = 64;

/// The window of [`TIMEOUT_LOG_BURST`].
pub const TIMEOUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Limits applied to native clients.
#[derive(Clone, Copy, Debug)]
pub struct NativeSocketOptions {
    /// Time a client has to deliver its whole frame (time spent waiting
    /// for a serving slot excluded).
    pub timeout: Duration,
    /// Connections served (frames being read) at once.
    pub max_connections: usize,
}

impl NativeSocketOptions {
    /// Serving slots one uid may hold at once: a quarter of
    /// `max_connections` (at least one), so that it takes four users acting
    /// together to fill them.
    pub fn per_uid_slots(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

/// How many accepted connections the daemon keeps open at once: each holds
/// a descriptor even while it waits, so these bound descriptors, not work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenCaps {
    /// All uids together; at this many the accept loop waits and new
    /// clients wait in the kernel's backlog.
    pub total: usize,
    /// One uid's share. Beyond it, its new connections are closed at once
    /// once half the budget is taken ([`OpenCaps::contended`]); before
    /// that, a burst of one uid's clients is served in turn (a refused
    /// client that wrote its frame before the close never learns of it).
    pub per_uid: usize,
}

impl OpenCaps {
    /// `max_connections` served plus four backlogs' worth waiting, but
    /// never more than half of `fd_limit` (the daemon's other work needs
    /// descriptors too: a spool write failing for want of one would lose
    /// records); a uid's share is a quarter of it.
    pub fn new(max_connections: usize, fd_limit: Option<u64>) -> OpenCaps {
        let mut total = max_connections.saturating_add(4 * LISTEN_BACKLOG as usize);
        if let Some(limit) = fd_limit {
            total = total.min(usize::try_from(limit / 2).unwrap_or(usize::MAX));
        }
        let total = total.max(4);
        OpenCaps {
            total,
            per_uid: total / 4,
        }
    }
}

impl OpenCaps {
    /// Whether the open budget is contended: `available` places are left,
    /// fewer than half of it. Only then is a uid held to its share.
    pub fn contended(&self, available: usize) -> bool {
        available < self.total / 2
    }
}

/// The soft `RLIMIT_NOFILE` of this process, if it has a finite one.
fn fd_limit() -> Option<u64> {
    // `None` is RLIM_INFINITY.
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
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

/// A uid's connections: how many are open and the slots they share.
struct UidConns {
    open: usize,
    slots: Arc<Semaphore>,
}

/// What every connection task of one listener shares.
struct Shared {
    ingest: Arc<Ingest>,
    timeout: Duration,
    caps: OpenCaps,
    per_uid_slots: usize,
    /// Serving slots over all uids (`max_connections`).
    slots: Semaphore,
    pending: Semaphore,
    /// Keyed by uid (`None`: the peer's credentials could not be read).
    uids: Mutex<HashMap<Option<u32>, UidConns>>,
    refusals: Mutex<LogLimit>,
    timeouts: Mutex<LogLimit>,
}

/// A connection's place among the open ones; given back when dropped.
struct Admission {
    shared: Arc<Shared>,
    uid: Option<u32>,
    uid_slots: Arc<Semaphore>,
    _open: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut uids = self.shared.uids.lock().expect("uid table lock");
        if let Some(u) = uids.get_mut(&self.uid) {
            u.open -= 1;
            if u.open == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

/// The two slots a connection is read under: its uid's and a global one.
struct Slots<'a> {
    _uid: OwnedSemaphorePermit,
    _global: SemaphorePermit<'a>,
}

impl Shared {
    /// Admits a connection of `uid`, unless the uid has its share open
    /// and the budget is contended (`available` places left).
    fn admit(
        self: &Arc<Self>,
        uid: Option<u32>,
        open: OwnedSemaphorePermit,
        available: usize,
    ) -> Option<Admission> {
        let mut uids = self.uids.lock().expect("uid table lock");
        let u = uids.entry(uid).or_insert_with(|| UidConns {
            open: 0,
            slots: Arc::new(Semaphore::new(self.per_uid_slots)),
        });
        if u.open >= self.caps.per_uid && self.caps.contended(available) {
            return None;
        }
        u.open += 1;
        Some(Admission {
            shared: self.clone(),
            uid,
            uid_slots: u.slots.clone(),
            _open: open,
        })
    }

    /// Waits for a slot of the connection's uid, then for a global one:
    /// in this order, so a uid's waiting connections never hold global
    /// slots, and the global semaphore queues at most one connection per
    /// free slot of each uid.
    async fn slots(&self, admission: &Admission) -> Slots<'_> {
        let uid = admission
            .uid_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let global = self.slots.acquire().await.expect("semaphore never closed");
        Slots {
            _uid: uid,
            _global: global,
        }
    }

    fn log_refusal(&self, uid: Option<u32>, pid: Option<i32>) {
        let Some(earlier) = self
            .refusals
            .lock()
            .expect("log budget lock")
            .admit(Instant::now(), 0)
        else {
            return;
        };
        let per_uid = self.caps.per_uid;
        let since = if earlier == 0 {
            String::new()
        } else {
            format!("; {earlier} more refused since the last such line")
        };
        warn!(
            ?uid,
            ?pid,
            "native connection closed at once: its uid already has {per_uid} connections open, \
             its share (one such line per {REFUSAL_LOG_INTERVAL:?} at most){since}"
        );
    }

    fn log_timeout(&self, uid: Option<u32>, pid: Option<i32>) {
        self.ingest.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = self
            .timeouts
            .lock()
            .expect("log budget lock")
            .admit(Instant::now(), 0)
        else {
            return;
        };
        let timeout = self.timeout;
        if earlier == 0 {
            warn!(
                ?uid,
                ?pid,
                "native client sent no complete frame within {timeout:?}; dropped"
            );
        } else {
            warn!(
                ?uid,
                ?pid,
                "native client sent no complete frame within {timeout:?}; dropped \
                 ({earlier} more dropped so without a line)"
            );
        }
    }
}

/// Serves native clients until `shutdown` turns true, then waits for the
/// connections being read (each bounded by the timeout); connections still
/// waiting for data or a slot are closed, as the backlog's would be.
pub async fn serve(
    listener: UnixListener,
    ingest: Arc<Ingest>,
    opts: NativeSocketOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let caps = OpenCaps::new(opts.max_connections, fd_limit());
    debug!(
        max_connections = opts.max_connections,
        per_uid_slots = opts.per_uid_slots(),
        open = caps.total,
        open_per_uid = caps.per_uid,
        "native socket limits"
    );
    let shared = Arc::new(Shared {
        ingest,
        timeout: opts.timeout,
        caps,
        per_uid_slots: opts.per_uid_slots(),
        slots: Semaphore::new(opts.max_connections),
        pending: Semaphore::new(MAX_PENDING_RECORDS),
        uids: Mutex::new(HashMap::new()),
        refusals: Mutex::new(LogLimit::new(
            1,
            usize::MAX,
            REFUSAL_LOG_INTERVAL,
            Instant::now(),
        )),
        timeouts: Mutex::new(LogLimit::new(
            TIMEOUT_LOG_BURST,
            usize::MAX,
            TIMEOUT_LOG_INTERVAL,
            Instant::now(),
        )),
    });
    let open = Arc::new(Semaphore::new(caps.total));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        // Only the whole budget, which one uid cannot take, stops accepting.
        let place = tokio::select! {
            p = open.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match stream {
            Ok((stream, _)) => {
                let cred = stream.peer_cred().ok();
                let uid = cred.as_ref().map(|c| c.uid());
                let pid = cred.as_ref().and_then(|c| c.pid());
                match shared.admit(uid, place, open.available_permits()) {
                    Some(admission) => {
                        let shutdown = shutdown.clone();
                        conns.spawn(handle(stream, admission, pid, shutdown));
                    }
                    None => {
                        // Closed before anything is read. A client that had
                        // written its whole frame into the socket buffer
                        // never learns of it: this happens only to a uid
                        // holding over its share while the budget is
                        // contended, which no well-behaved probe does.
                        drop(stream);
                        shared.log_refusal(uid, pid);
                    }
                }
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
    admission: Admission,
    pid: Option<i32>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = admission.shared.clone();
    let uid = admission.uid;
    let timeout = shared.timeout;
    let accepted = Instant::now();
    // An idle connection holds no slot: wait for its first bytes (the
    // start of the size field; readiness alone can be spurious).
    let mut size = [0u8; 4];
    let first = tokio::select! {
        r = tokio::time::timeout(timeout, stream.read(&mut size)) => r,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let have = match first {
        Err(_) => {
            shared.log_timeout(uid, pid);
            return;
        }
        Ok(Ok(0)) => {
            debug!(?uid, ?pid, "native client closed without sending anything");
            return;
        }
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            shared.ingest.stats.invalid.fetch_add(1, Ordering::Relaxed);
            warn!(?uid, ?pid, "native frame rejected: {}", ConnError::Io(e));
            return;
        }
    };
    let waiting = Instant::now();
    let slots = tokio::select! {
        s = shared.slots(&admission) => s,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    // The time spent waiting for a slot is the daemon's, not the client's.
    let deadline = accepted + timeout + waiting.elapsed();
    let record = match tokio::time::timeout_at(
        deadline.into(),
        read_record(&mut stream, size, have),
    )
    .await
    {
        Err(_) => {
            shared.log_timeout(uid, pid);
            return;
        }
        Ok(Err(e)) => {
            shared.ingest.stats.invalid.fetch_add(1, Ordering::Relaxed);
            let e = telem_core::untrusted::escape(&e.to_string(), telem_core::untrusted::FIELD_CAP);
            warn!(?uid, ?pid, "native frame rejected: {e}");
            return;
        }
        Ok(Ok(r)) => r,
    };
    // The client expects no answer: free its slots and its place now and
    // let the record wait for its group commit, within the pending bound.
    let _pending = shared
        .pending
        .acquire()
        .await
        .expect("semaphore never closed");
    drop(stream);
    drop(slots);
    drop(admission);
    let classification = telem_core::untrusted::escape(
        record.headers.get(Header::Classification),
        telem_core::untrusted::FIELD_CAP,
    );
    match shared.ingest.submit_native(record).await {
        Ok(id) => debug!(record_id = %id, %classification, ?uid, ?pid, "native record spooled"),
        Err(e @ IngestError::NotOptedIn(_)) => {
            info!(%classification, ?uid, ?pid, "native record refused: {e}")
        }
        Err(e) => {
            let e = telem_core::untrusted::escape(&e.to_string(), telem_core::untrusted::FIELD_CAP);
            warn!(%classification, ?uid, ?pid, "native record refused: {e}")
        }
    }
}

/// Reads the rest of a frame whose first `have` bytes are in `size`.
async fn read_record(
    stream: &mut UnixStream,
    mut size: [u8; 4],
    have: usize,
) -> Result<Record, ConnError> {
    read_full(stream, &mut size[have..], 4).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_gets_a_quarter_of_the_slots_and_of_the_open_budget() {
        let o = |max_connections| NativeSocketOptions {
            timeout: Duration::from_secs(1),
            max_connections,
        };
        assert_eq!(o(64).per_uid_slots(), 16);
        assert_eq!(o(8).per_uid_slots(), 2);
        assert_eq!(o(3).per_uid_slots(), 1);
        assert_eq!(o(1).per_uid_slots(), 1);
        assert_eq!(
            OpenCaps::new(64, Some(16384)),
            OpenCaps {
                total: 4160,
                per_uid: 1040
            }
        );
        assert!(!OpenCaps::new(64, None).contended(2080));
        assert!(OpenCaps::new(64, None).contended(2079));
        // A low descriptor limit wins: half of it for native clients.
        assert_eq!(
            OpenCaps::new(64, Some(1024)),
            OpenCaps {
                total: 512,
                per_uid: 128
            }
        );
        assert_eq!(OpenCaps::new(1, Some(2)).per_uid, 1);
    }
}
