//! What native clients may hold of the daemon at once, shared out by the
//! peer's uid (`SO_PEERCRED`): open descriptors ([`OpenCaps`]) and serving
//! slots ([`NativeSocketOptions::per_uid_slots`]). Only a client whose
//! frame is not whole when it is accepted needs either for longer than a
//! few system calls; `socket.rs` reads the others at once.
//!
//! Everything a client can make the daemon log goes through a
//! [`LogLimit`] here: a flood of bad or silent connections must not flood
//! the journal.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tracing::{info, warn};

use super::{Ingest, IngestError};
use telem_core::untrusted::LogLimit;

/// Listen backlog: room for bursts of short-lived probe connections while
/// the daemon does not accept (the spool is behind, or every
/// open-connection place is taken). A client beyond it waits in `connect`
/// or fails there, and libtelemetry reports the failure: the daemon never
/// drops a record it has taken.
pub const LISTEN_BACKLOG: i32 = 1024;

/// At most one line per this long says how many connections were closed
/// because their uid had its share open: a flood must not flood the log.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lines per [`CLIENT_LOG_INTERVAL`] saying that a client sent no complete
/// frame in time, and as many saying that a frame was malformed; the rest
/// are counted into the next line of their kind.
pub const CLIENT_LOG_BURST: u32 = 64;

/// The window of [`CLIENT_LOG_BURST`].
pub const CLIENT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections of a uid over its share, kept a little while in case their
/// frame is on its way (a client between `connect` and `write`), all uids
/// together. Beyond this many, such a connection is closed at once.
pub const MAX_ON_PROBATION: usize = 64;

/// The longest such a connection is kept (or the socket timeout, if
/// shorter).
pub const PROBATION: Duration = Duration::from_secs(1);

/// Limits applied to native clients.
#[derive(Clone, Copy, Debug)]
pub struct NativeSocketOptions {
    /// Time a client has to deliver its whole frame (time spent waiting
    /// for a serving slot excluded).
    pub timeout: Duration,
    /// Connections served (frames being read slowly) at once.
    pub max_connections: usize,
}

impl NativeSocketOptions {
    /// Serving slots one uid may hold at once: a quarter of
    /// `max_connections` (at least one), so that it takes four users acting
    /// together to fill them.
    pub fn per_uid_slots(&self) -> usize {
        (self.max_connections / 4).max(1)
    }

    /// How long a connection of a uid over its share may take to complete
    /// its frame.
    pub fn probation(&self) -> Duration {
        self.timeout.min(PROBATION)
    }
}

/// How many accepted connections the daemon keeps open at once: each holds
/// a descriptor even while it waits, so these bound descriptors, not work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenCaps {
    /// All uids together; at this many the accept loop waits and new
    /// clients wait in the kernel's backlog.
    pub total: usize,
    /// One uid's share. Beyond it, once half the budget is taken
    /// ([`OpenCaps::contended`]), its new connections that have not sent
    /// a whole frame are kept only on probation.
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

    /// Whether the open budget is contended: `available` places are left,
    /// fewer than half of it. Only then is a uid held to its share.
    pub fn contended(&self, available: usize) -> bool {
        available < self.total / 2
    }
}

/// A uid's connections: how many are open and the slots they share.
struct UidConns {
    open: usize,
    slots: Arc<Semaphore>,
}

/// What every connection of one listener shares.
pub(super) struct Shares {
    pub ingest: Arc<Ingest>,
    pub opts: NativeSocketOptions,
    caps: OpenCaps,
    /// Serving slots over all uids (`max_connections`).
    slots: Semaphore,
    /// Places of [`MAX_ON_PROBATION`].
    probation: Arc<Semaphore>,
    /// Keyed by uid (`None`: the peer's credentials could not be read).
    uids: Mutex<HashMap<Option<u32>, UidConns>>,
    refusals: Mutex<LogLimit>,
    timeouts: Mutex<LogLimit>,
    rejections: Mutex<LogLimit>,
    refused_records: Mutex<LogLimit>,
    accept_failures: Mutex<LogLimit>,
}

/// A connection's place among the open ones; given back when dropped.
pub(super) struct Admission {
    shares: Arc<Shares>,
    uid: Option<u32>,
    uid_slots: Arc<Semaphore>,
    _open: OwnedSemaphorePermit,
}

impl Admission {
    /// The peer's uid.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// What the listener's connections share.
    pub fn shares(&self) -> Arc<Shares> {
        self.shares.clone()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut uids = self.shares.uids.lock().expect("uid table lock");
        if let Some(u) = uids.get_mut(&self.uid) {
            u.open -= 1;
            if u.open == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

/// The two slots a connection is read under: its uid's and a global one.
pub(super) struct Slots<'a> {
    _uid: OwnedSemaphorePermit,
    _global: SemaphorePermit<'a>,
}

impl Shares {
    pub fn new(ingest: Arc<Ingest>, opts: NativeSocketOptions, caps: OpenCaps) -> Shares {
        let limit =
            |lines, window| Mutex::new(LogLimit::new(lines, usize::MAX, window, Instant::now()));
        Shares {
            ingest,
            opts,
            caps,
            slots: Semaphore::new(opts.max_connections),
            probation: Arc::new(Semaphore::new(MAX_ON_PROBATION)),
            uids: Mutex::new(HashMap::new()),
            refusals: limit(1, REFUSAL_LOG_INTERVAL),
            timeouts: limit(CLIENT_LOG_BURST, CLIENT_LOG_INTERVAL),
            rejections: limit(CLIENT_LOG_BURST, CLIENT_LOG_INTERVAL),
            refused_records: limit(CLIENT_LOG_BURST, CLIENT_LOG_INTERVAL),
            accept_failures: limit(1, REFUSAL_LOG_INTERVAL),
        }
    }

    /// Admits a connection of `uid` that has not sent its whole frame,
    /// unless the uid has its share open and the budget is contended
    /// (`available` places left).
    pub fn admit(
        self: &Arc<Self>,
        uid: Option<u32>,
        open: OwnedSemaphorePermit,
        available: usize,
    ) -> Option<Admission> {
        let mut uids = self.uids.lock().expect("uid table lock");
        let u = uids.entry(uid).or_insert_with(|| UidConns {
            open: 0,
            slots: Arc::new(Semaphore::new(self.opts.per_uid_slots())),
        });
        if u.open >= self.caps.per_uid && self.caps.contended(available) {
            return None;
        }
        u.open += 1;
        Some(Admission {
            shares: self.clone(),
            uid,
            uid_slots: u.slots.clone(),
            _open: open,
        })
    }

    /// A place on probation, if one is free.
    pub fn probation(&self) -> Option<OwnedSemaphorePermit> {
        self.probation.clone().try_acquire_owned().ok()
    }

    /// Waits for a slot of the connection's uid, then for a global one:
    /// in this order, so a uid's waiting connections never hold global
    /// slots, and the global semaphore queues at most one connection per
    /// free slot of each uid.
    /// Also returns how long the wait for the global slot took (the part
    /// other uids caused).
    pub async fn slots(&self, admission: &Admission) -> (Slots<'_>, Duration) {
        let uid = admission
            .uid_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let waiting = Instant::now();
        let global = self.slots.acquire().await.expect("semaphore never closed");
        let slots = Slots {
            _uid: uid,
            _global: global,
        };
        (slots, waiting.elapsed())
    }

    /// A connection of a uid over its share closed without a whole frame:
    /// counted, and said once per [`REFUSAL_LOG_INTERVAL`] at most.
    pub fn refused(&self, uid: Option<u32>, pid: Option<i32>) {
        self.ingest
            .stats
            .native
            .refused
            .fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = admit_line(&self.refusals) else {
            return;
        };
        let per_uid = self.caps.per_uid;
        let since = if earlier == 0 {
            String::new()
        } else {
            format!("; {earlier} more closed so since the last such line")
        };
        warn!(
            ?uid,
            ?pid,
            "native connection closed without a complete frame: its uid holds {per_uid} \
             connections open (its share) and it sent no whole frame within its probation, or \
             the daemon could not watch it (one such line per {REFUSAL_LOG_INTERVAL:?} at most){since}"
        );
    }

    /// A client sent no complete frame in time.
    pub fn timed_out(&self, uid: Option<u32>, pid: Option<i32>, within: Duration) {
        self.ingest
            .stats
            .native
            .timed_out
            .fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = admit_line(&self.timeouts) else {
            return;
        };
        warn!(
            ?uid,
            ?pid,
            "native client sent no complete frame within {within:?}; dropped{}",
            suppressed(earlier)
        );
    }

    /// A client's bytes are not a frame (or could not be read).
    pub fn rejected(
        &self,
        uid: Option<u32>,
        pid: Option<i32>,
        why: &(dyn std::error::Error + 'static),
    ) {
        self.ingest
            .stats
            .native
            .invalid
            .fetch_add(1, Ordering::Relaxed);
        let Some(earlier) = admit_line(&self.rejections) else {
            return;
        };
        let why = telem_core::untrusted::escape(
            &telem_core::error_text::Chain(why).to_string(),
            telem_core::untrusted::FIELD_CAP,
        );
        warn!(
            ?uid,
            ?pid,
            "native frame rejected: {why}{}",
            suppressed(earlier)
        );
    }
}

impl Shares {
    /// A whole record the ingest path refused (not opted in, invalid, the
    /// spool full or failing): counted there, said here within the limit.
    pub fn record_refused(
        &self,
        uid: Option<u32>,
        pid: Option<i32>,
        classification: &str,
        why: &IngestError,
    ) {
        let Some(earlier) = admit_line(&self.refused_records) else {
            return;
        };
        let more = suppressed(earlier);
        // Not opted in is the admin's choice, not a fault.
        let quiet = matches!(why, IngestError::NotOptedIn(_));
        let why = telem_core::untrusted::escape(
            &telem_core::error_text::Chain(why).to_string(),
            telem_core::untrusted::FIELD_CAP,
        );
        if quiet {
            info!(%classification, peer_uid = %crate::logging::or_unknown(uid), peer_pid = %crate::logging::or_unknown(pid), "native record refused: {why}{more}");
        } else {
            warn!(%classification, peer_uid = %crate::logging::or_unknown(uid), peer_pid = %crate::logging::or_unknown(pid), "native record refused: {why}{more}");
        }
    }
}

impl Shares {
    /// `accept` failed (out of descriptors, memory): said once per
    /// [`REFUSAL_LOG_INTERVAL`] at most, however often it is retried.
    pub fn accept_failed(&self, e: &std::io::Error) {
        if let Some(earlier) = admit_line(&self.accept_failures) {
            warn!("native socket accept failed: {e}{}", suppressed(earlier));
        }
    }
}

fn admit_line(limit: &Mutex<LogLimit>) -> Option<u64> {
    limit
        .lock()
        .expect("log budget lock")
        .admit(Instant::now(), 0)
}

fn suppressed(earlier: u64) -> String {
    if earlier == 0 {
        String::new()
    } else {
        format!(" ({earlier} more since the last such line, not logged)")
    }
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

    #[test]
    fn probation_is_the_timeout_up_to_a_second() {
        let o = |ms| NativeSocketOptions {
            timeout: Duration::from_millis(ms),
            max_connections: 64,
        };
        assert_eq!(o(300).probation(), Duration::from_millis(300));
        assert_eq!(o(30_000).probation(), PROBATION);
    }
}
