//! Making way for the host. Lowering the probe threads' CPU priority is
//! not enough on a virtual machine: measured on this project's 2-vCPU VM,
//! one busy loop at `SCHED_IDLE` in another process cuts the daemon's
//! native ingest by 17% (the vCPUs share what the hypervisor gives them,
//! whatever the guest's scheduler decides). So while the daemon has work
//! that must not wait (native records coming in, to be spooled; records
//! to deliver), it marks itself busy, and probe calls make way: a call
//! about to start waits (up to its own timeout), and running ones take
//! turns: one epoch tick of one call in every [`PAUSE_TICKS`] + 1 ticks,
//! all calls together, so that however many run, probes get a tenth of
//! one core. The
//! time a call spends making way is the host's, not the probe's: it does
//! not count toward the call's deadline. A quiet host costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::EPOCH_TICK;

/// How long the host stays busy after a window that made it so: longer
/// than the gaps between a burst's batches, short enough that probes
/// resume soon after.
pub const BUSY_FOR: Duration = Duration::from_millis(250);

/// Records in one [`WINDOW`] that make the host busy (320 a second): a
/// burst or a backlog does, a probe's heartbeat or a trickle of frames
/// from one user does not.
pub const BUSY_RECORDS: u64 = 32;

/// The window [`BUSY_RECORDS`] are counted over.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Ticks a running call sleeps after each tick it runs while the host is
/// busy: it then gets a tenth of a core at most.
pub const PAUSE_TICKS: u32 = 9;

/// How often a call waiting to start looks again.
const RECHECK: Duration = Duration::from_millis(10);

/// When the host was last busy; cheap to clone and to mark.
#[derive(Clone, Debug)]
pub struct HostPressure {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    /// Milliseconds after `origin` until which the host is busy (0: never
    /// marked).
    busy_until: AtomicU64,
    /// When the next running call may take its tick while the host is
    /// busy; calls queue for it in turn.
    next_turn: tokio::sync::Mutex<Instant>,
    /// The current window (its number since `origin`) and the records
    /// counted in it.
    window: std::sync::Mutex<(u64, u64)>,
}

impl Default for HostPressure {
    fn default() -> Self {
        HostPressure::new()
    }
}

impl HostPressure {
    /// A host that has not been busy yet.
    pub fn new() -> HostPressure {
        HostPressure {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                busy_until: AtomicU64::new(0),
                next_turn: tokio::sync::Mutex::new(Instant::now()),
                window: std::sync::Mutex::new((0, 0)),
            }),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.origin).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// The host is handling `records` records now (a batch read from the
    /// native socket, a record delivered). Once [`BUSY_RECORDS`] came in
    /// one [`WINDOW`], it is busy for [`BUSY_FOR`].
    pub fn mark(&self, records: u64) {
        let now = Instant::now();
        let window = self.millis(now) / WINDOW.as_millis() as u64;
        let busy = {
            let mut w = self.inner.window.lock().expect("window lock");
            if w.0 != window {
                *w = (window, 0);
            }
            w.1 += records;
            w.1 >= BUSY_RECORDS
        };
        if busy {
            let until = self.millis(now + BUSY_FOR);
            self.inner.busy_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether probe calls should make way now.
    pub fn busy(&self) -> bool {
        self.millis(Instant::now()) < self.inner.busy_until.load(Ordering::Relaxed)
    }

    /// Waits while the host is busy, at most `limit`; returns how long.
    pub async fn make_way(&self, limit: Duration) -> Duration {
        if !self.busy() {
            return Duration::ZERO;
        }
        let start = Instant::now();
        while self.busy() && start.elapsed() < limit {
            tokio::time::sleep(RECHECK).await;
        }
        start.elapsed()
    }

    /// The pause between two ticks of probe work while the host is busy.
    pub fn pause() -> Duration {
        EPOCH_TICK * PAUSE_TICKS
    }

    /// Waits for a running call's next tick while the host is busy: one
    /// tick of one call per [`HostPressure::pause`], all calls in turn.
    pub async fn take_turn(&self) {
        let mut next = self.inner.next_turn.lock().await;
        tokio::time::sleep_until((*next).into()).await;
        *next = Instant::now() + EPOCH_TICK + Self::pause();
    }
}

/// Time a call spent making way, shared by its epoch callback and the
/// host-side deadline; a wait still in progress counts as it goes, so the
/// deadline can never fall in the middle of one.
#[derive(Clone, Debug)]
pub(crate) struct MadeWay(Arc<Waits>);

#[derive(Debug)]
struct Waits {
    origin: Instant,
    /// Nanoseconds of the waits that ended.
    ended: AtomicU64,
    /// When the current wait began, in nanoseconds after `origin`, plus
    /// one (0: none under way).
    since: AtomicU64,
}

impl Default for MadeWay {
    fn default() -> Self {
        MadeWay(Arc::new(Waits {
            origin: Instant::now(),
            ended: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }))
    }
}

impl MadeWay {
    fn nanos(&self) -> u64 {
        u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A wait begins.
    pub(crate) fn begin(&self) {
        self.0.since.store(self.nanos() + 1, Ordering::Relaxed);
    }

    /// The wait under way ends.
    pub(crate) fn end(&self) {
        let since = self.0.since.swap(0, Ordering::Relaxed);
        if since > 0 {
            let waited = self.nanos().saturating_sub(since - 1);
            self.0.ended.fetch_add(waited, Ordering::Relaxed);
        }
    }

    /// All the waits so far, the one under way included.
    pub(crate) fn total(&self) -> Duration {
        let since = self.0.since.load(Ordering::Relaxed);
        let current = if since > 0 {
            self.nanos().saturating_sub(since - 1)
        } else {
            0
        };
        Duration::from_nanos(self.0.ended.load(Ordering::Relaxed).saturating_add(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_keeps_the_host_busy_for_a_while_only_and_a_trickle_not_at_all() {
        let p = HostPressure::new();
        assert!(!p.busy(), "never marked");
        p.mark(BUSY_RECORDS - 1);
        assert!(!p.busy(), "a trickle");
        p.mark(1);
        assert!(p.busy());
        std::thread::sleep(BUSY_FOR + Duration::from_millis(20));
        assert!(!p.busy());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_calls_take_turns_all_together() {
        let p = HostPressure::new();
        let t = Instant::now();
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move {
                    for _ in 0..3 {
                        p.take_turn().await;
                    }
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        // Six turns of two calls, the first at once: five gaps, not two
        // calls' worth of turns side by side.
        let gaps = (EPOCH_TICK + HostPressure::pause()) * 5;
        assert!(t.elapsed() >= gaps, "{:?} < {gaps:?}", t.elapsed());
    }

    #[tokio::test]
    async fn making_way_waits_while_busy_and_no_longer_than_the_limit() {
        let p = HostPressure::new();
        assert_eq!(p.make_way(Duration::from_secs(5)).await, Duration::ZERO);
        p.mark(BUSY_RECORDS);
        let waited = p.make_way(Duration::from_secs(5)).await;
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Marked again and again: the wait stops at the limit.
        p.mark(BUSY_RECORDS);
        let keep = p.clone();
        let marker = tokio::spawn(async move {
            for _ in 0..100 {
                keep.mark(BUSY_RECORDS);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let waited = p.make_way(Duration::from_millis(300)).await;
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        marker.abort();
    }
}
