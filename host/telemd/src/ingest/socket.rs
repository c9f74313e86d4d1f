//! The native probe socket: the legacy libtelemetry Unix stream socket
//! (`/run/telem-0`), one frame per connection, no reply. A client gets no
//! answer, so it never learns that its record was dropped: a frame the
//! daemon has taken must land.
//!
//! - **Back-pressure goes to the kernel.** The accept loop takes a
//!   connection only with room for one more record waiting for its spool
//!   commit ([`MAX_PENDING_RECORDS`]). When the disk is behind, clients
//!   wait in the listen backlog, and then in `connect`, as they did with
//!   the legacy daemon; a client whose `connect` times out is told by
//!   libtelemetry.
//! - **A whole frame is read at once.** Probes connect, write one frame
//!   and close, so by the time the daemon accepts, the frame is usually
//!   in the socket buffer: it is read there and then, without waiting,
//!   whatever the peer's uid holds, and the descriptor is closed.
//! - **Only a frame that is not whole needs a share** (`shares.rs`). Such
//!   a connection is admitted within its uid's share of open descriptors,
//!   waits for its bytes holding no serving slot, and is read under one of
//!   its uid's slots, within `socket_timeout_ms` (time waiting for a slot
//!   excluded). A uid over its share while the budget is contended gets a
//!   short probation instead: its frame may still arrive (a client
//!   between `connect` and `write`), else it is closed, counted as
//!   refused and said in the log at most once per ten seconds.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener as StdUnixListener;

use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::frame_reader::{peer, read_frame, read_ready, read_some, ConnError, FrameBuf, Ready};
use super::shares::{Admission, Shares};
pub use super::shares::{NativeSocketOptions, OpenCaps, LISTEN_BACKLOG};
use super::Ingest;
use telem_core::record::wire::MAX_FRAME_SIZE;
use telem_core::record::{Header, Record};

/// Records read from clients and waiting for their spool commit; bounds
/// memory (each at most one frame) when the disk is slower than the
/// clients. At this many, the accept loop waits.
pub const MAX_PENDING_RECORDS: usize = 1024;

/// The soft `RLIMIT_NOFILE` of this process, if it has a finite one.
fn fd_limit() -> Option<u64> {
    // `None` is RLIM_INFINITY.
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Binds the native socket at `path` with permission bits `mode`,
/// replacing a stale socket left by a previous run (but never another kind
/// of file).
pub fn bind(path: &Path, mode: u32) -> io::Result<StdUnixListener> {
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
    Ok(StdUnixListener::from(std::os::fd::OwnedFd::from(sock)))
}

/// The native socket, watched by the runtime's reactor for connections
/// only (never the connections themselves, until one needs waiting for).
pub struct NativeListener(AsyncFd<StdUnixListener>);

impl NativeListener {
    /// Registers a bound, listening socket (from [`bind`] or systemd).
    /// Needs the runtime.
    pub fn new(listener: StdUnixListener) -> io::Result<NativeListener> {
        listener.set_nonblocking(true)?;
        // SAFETY: the listener owns its descriptor, and nothing closes or
        // replaces it while the AsyncFd holds it (it is never taken back
        // out).
        let fd =
            unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)? };
        Ok(NativeListener(fd))
    }
}

/// Accepts one connection without waiting, non-blocking and
/// close-on-exec; `None` when the backlog is empty.
fn accept_ready(listener: &NativeListener) -> Option<io::Result<OwnedFd>> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    loop {
        return match acceptfrom_with(
            listener.0.get_ref(),
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        ) {
            Ok((fd, _)) => Some(Ok(fd)),
            Err(rustix::io::Errno::AGAIN) => None,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => Some(Err(e.into())),
        };
    }
}

/// Serves native clients until `shutdown` turns true, then waits for the
/// connections being read (each bounded by the timeout) and the records
/// read to be spooled; connections still waiting for data or a slot are
/// closed, as the backlog's would be.
///
/// A connection is accepted with a plain `accept4` and its frame read
/// with `recv(MSG_DONTWAIT)`; only one whose frame is not whole yet is
/// handed to the runtime's reactor: most connections cost no epoll
/// registration. Each batch of records marks `pressure`: probe calls make
/// way while records come in.
pub async fn serve(
    listener: NativeListener,
    ingest: Arc<Ingest>,
    opts: NativeSocketOptions,
    pressure: telem_sandbox::HostPressure,
    mut shutdown: watch::Receiver<bool>,
    mut beat: crate::watchdog::Beat,
) {
    let caps = OpenCaps::new(opts.max_connections, fd_limit());
    debug!(
        max_connections = opts.max_connections,
        per_uid_slots = opts.per_uid_slots(),
        open = caps.total,
        open_per_uid = caps.per_uid,
        pending = MAX_PENDING_RECORDS,
        "native socket limits"
    );
    let shares = Arc::new(Shares::new(ingest, opts, caps));
    let pending = Arc::new(Semaphore::new(MAX_PENDING_RECORDS));
    let open = Arc::new(Semaphore::new(caps.total));
    let mut scratch = vec![0u8; MAX_FRAME_SIZE as usize];
    let mut conns = JoinSet::new();
    let ctx = Listening {
        shares,
        pending: pending.clone(),
        open: open.clone(),
        shutdown: shutdown.clone(),
    };
    // Records read since the last hand-over to the spool, with their room.
    let mut batch = Vec::new();
    'serving: loop {
        // Each turn is progress; so is each wait below, which answers the
        // watchdog's pokes (`watchdog.rs`).
        beat.answer();
        while let Some(done) = conns.try_join_next() {
            said_if_panicked(done);
        }
        // Room for the record first: while the spool is behind, clients
        // wait in the backlog rather than in the daemon.
        let intake = loop {
            tokio::select! {
                p = pending.clone().acquire_owned() => break p.expect("semaphore never closed"),
                () = beat.poked() => beat.answer(),
                _ = shutdown.wait_for(|s| *s) => break 'serving,
            }
        };
        // Only the whole open budget, which one uid cannot take, stops
        // accepting too.
        let place = loop {
            tokio::select! {
                p = open.clone().acquire_owned() => break p.expect("semaphore never closed"),
                () = beat.poked() => beat.answer(),
                _ = shutdown.wait_for(|s| *s) => break 'serving,
            }
        };
        let mut ready = loop {
            let mut ready = tokio::select! {
                () = beat.poked() => {
                    beat.answer();
                    continue;
                }
                r = listener.0.readable() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Only if the reactor itself is gone.
                        warn!("native socket: cannot wait for connections: {e}");
                        break 'serving;
                    }
                },
                _ = shutdown.wait_for(|s| *s) => break 'serving,
            };
            match accept_ready(&listener) {
                Some(Ok(fd)) => {
                    take(
                        fd,
                        intake,
                        place,
                        &mut batch,
                        &mut scratch,
                        &ctx,
                        &mut conns,
                    );
                    break ready;
                }
                Some(Err(e)) => {
                    // EMFILE and friends: back off instead of spinning.
                    ctx.shares.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => ready.clear_ready(),
            }
        };
        // Whatever else is waiting in the backlog, without waiting, while
        // there is room: the records go to the spool in one hand-over.
        while batch.len() < MAX_BATCH {
            let (Ok(intake), Ok(place)) = (
                pending.clone().try_acquire_owned(),
                open.clone().try_acquire_owned(),
            ) else {
                break;
            };
            match accept_ready(&listener) {
                Some(Ok(fd)) => take(
                    fd,
                    intake,
                    place,
                    &mut batch,
                    &mut scratch,
                    &ctx,
                    &mut conns,
                ),
                Some(Err(e)) => {
                    ctx.shares.accept_failed(&e);
                    break;
                }
                None => {
                    ready.clear_ready();
                    break;
                }
            }
        }
        if !batch.is_empty() {
            // Probe calls make way while records come in.
            pressure.mark(batch.len() as u64);
            conns.spawn(submit(ctx.shares.clone(), std::mem::take(&mut batch)));
        }
    }
    while let Some(done) = conns.join_next().await {
        said_if_panicked(done);
    }
}

/// A connection's task that panicked (a bug) is said in the log: its
/// records, up to a batch, were neither counted nor stored.
fn said_if_panicked(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("a native connection's task panicked; its records are lost: {e}");
        }
    }
}

/// Most records handed to the spool at once by the accept loop.
const MAX_BATCH: usize = 64;

/// A whole record read from a client, waiting for its hand-over to the
/// spool: its room among the pending records, and who sent it.
struct Taken {
    record: Record,
    uid: Option<u32>,
    pid: Option<i32>,
    intake: OwnedSemaphorePermit,
}

/// What the accept loop hands to each connection it takes.
struct Listening {
    shares: Arc<Shares>,
    pending: Arc<Semaphore>,
    open: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// Takes an accepted connection: its frame read at once if whole (into
/// `batch`), else handed to a task that waits for it within its uid's
/// share (or on probation), else closed and counted.
fn take(
    fd: OwnedFd,
    intake: OwnedSemaphorePermit,
    place: OwnedSemaphorePermit,
    batch: &mut Vec<Taken>,
    scratch: &mut [u8],
    ctx: &Listening,
    conns: &mut JoinSet<()>,
) {
    let shares = &ctx.shares;
    let mut frame = FrameBuf::default();
    let ready = read_ready(&fd, &mut frame, scratch);
    let (uid, pid) = peer(&fd);
    match ready {
        Ready::Record(record) => {
            drop(fd);
            drop(place);
            batch.push(Taken {
                record: *record,
                uid,
                pid,
                intake,
            });
        }
        Ready::Closed => {
            debug!(peer_uid = %crate::logging::or_unknown(uid), peer_pid = %crate::logging::or_unknown(pid), "native client closed without sending anything")
        }
        Ready::Failed(e) => shares.rejected(uid, pid, &e),
        Ready::Partial => {
            drop(intake);
            let started = Instant::now();
            let stream = match UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)) {
                Ok(s) => s,
                Err(e) => {
                    // The reactor is out of room: said, and counted as
                    // unread, as a connection of a full backlog would be.
                    warn!("cannot watch a native connection: {e}");
                    shares.refused(uid, pid);
                    return;
                }
            };
            if let Some(admission) = shares.admit(uid, place, ctx.open.available_permits()) {
                conns.spawn(read_slowly(
                    stream,
                    frame,
                    admission,
                    pid,
                    ctx.pending.clone(),
                    ctx.shutdown.clone(),
                ));
            } else if let Some(probation) = shares.probation() {
                conns.spawn(on_probation(
                    stream,
                    frame,
                    (uid, pid),
                    started,
                    probation,
                    shares.clone(),
                    ctx.pending.clone(),
                ));
            } else {
                // Nothing whole was sent, so nothing is lost: a client
                // still about to write gets EPIPE.
                drop(stream);
                shares.refused(uid, pid);
            }
        }
    }
}

/// A connection of a uid within its share whose frame was not whole when
/// accepted: waits for bytes holding no slot, then reads the rest under
/// its uid's slot and a global one.
async fn read_slowly(
    mut stream: UnixStream,
    mut frame: FrameBuf,
    admission: Admission,
    pid: Option<i32>,
    pending: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shares = admission.shares();
    let uid = admission.uid();
    let timeout = shares.opts.timeout;
    let accepted = Instant::now();
    // An idle connection holds no slot: wait for its first bytes (readiness
    // alone can be spurious).
    if frame.is_empty() {
        let first = tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, read_some(&mut stream, &mut frame)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match first {
            Err(_) => return shares.timed_out(uid, pid, timeout),
            Ok(Ok(())) => {}
            Ok(Err(e)) if frame.is_empty() && matches!(e, ConnError::Truncated { .. }) => {
                return debug!(peer_uid = %crate::logging::or_unknown(uid), peer_pid = %crate::logging::or_unknown(pid), "native client closed without sending anything")
            }
            Ok(Err(e)) => return shares.rejected(uid, pid, &e),
        }
    }
    // Most frames are whole by now (the client wrote between its connect
    // and this read): no slot is needed for them.
    let record = if frame.is_complete() {
        drop(stream);
        match frame.parse() {
            Ok(r) => r,
            Err(e) => return shares.rejected(uid, pid, &ConnError::Frame(e)),
        }
    } else {
        let (slots, global_wait) = tokio::select! {
            biased;
            s = shares.slots(&admission) => s,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // Waiting behind its own uid's connections is the client's time;
        // waiting for a global slot, which other uids hold, the daemon's.
        let deadline = accepted + timeout + global_wait;
        let read =
            tokio::time::timeout_at(deadline.into(), read_frame(&mut stream, &mut frame)).await;
        drop(slots);
        drop(stream);
        match read {
            Err(_) => return shares.timed_out(uid, pid, timeout),
            Ok(Err(e)) => return shares.rejected(uid, pid, &e),
            Ok(Ok(r)) => r,
        }
    };
    // The record waits for room with its uid's place held, so what waits
    // here stays within the open budget.
    let intake = pending
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    drop(admission);
    let taken = Taken {
        record,
        uid,
        pid,
        intake,
    };
    submit(shares, vec![taken]).await
}

/// A connection of a uid over its share (the budget contended) whose frame
/// was not whole when accepted: it has [`NativeSocketOptions::probation`]
/// from `accepted` to complete it, holding no slot, else it is refused.
async fn on_probation(
    mut stream: UnixStream,
    mut frame: FrameBuf,
    (uid, pid): (Option<u32>, Option<i32>),
    accepted: Instant,
    place: OwnedSemaphorePermit,
    shares: Arc<Shares>,
    pending: Arc<Semaphore>,
) {
    let deadline = accepted + shares.opts.probation();
    let read = tokio::time::timeout_at(deadline.into(), read_frame(&mut stream, &mut frame)).await;
    drop(stream);
    // The probation place is for reading only, not for waiting for room.
    drop(place);
    match read {
        Err(_) => shares.refused(uid, pid),
        Ok(Err(e)) if frame.is_empty() => {
            debug!(
                ?uid,
                ?pid,
                "native client closed without sending anything: {}",
                telem_core::error_text::Chain(&e)
            )
        }
        Ok(Err(e)) => shares.rejected(uid, pid, &e),
        Ok(Ok(record)) => {
            let intake = pending
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let taken = Taken {
                record,
                uid,
                pid,
                intake,
            };
            submit(shares, vec![taken]).await
        }
    }
}

/// Hands records read from clients to the ingest path in one go; each
/// one's room among the pending records is given back once it is stored
/// or refused.
async fn submit(shares: Arc<Shares>, batch: Vec<Taken>) {
    let (records, senders): (Vec<Record>, Vec<_>) = batch
        .into_iter()
        .map(|t| (t.record, (t.uid, t.pid, t.intake)))
        .unzip();
    let classifications: Vec<String> = records
        .iter()
        .map(|r| {
            telem_core::untrusted::escape(
                r.headers.get(Header::Classification),
                telem_core::untrusted::FIELD_CAP,
            )
        })
        .collect();
    let results = shares.ingest.submit_natives(records).await;
    for ((result, (uid, pid, _intake)), classification) in
        results.into_iter().zip(senders).zip(classifications)
    {
        match result {
            Ok(id) => {
                debug!(record_id = %id, %classification, peer_uid = %crate::logging::or_unknown(uid), peer_pid = %crate::logging::or_unknown(pid), "native record spooled")
            }
            Err(e) => shares.record_refused(uid, pid, &classification, &e),
        }
    }
}
