//! systemd's watchdog (`WatchdogSec=` in the unit): `WATCHDOG=1` is sent
//! every quarter of the period only while the daemon's loops make
//! progress, so a wedged one gets the daemon restarted instead of leaving
//! it up and deaf.
//!
//! Each check, every quarter of the period:
//! - the runtimes of the probes and of delivery run a task in time (a
//!   thread stuck in a call that never returns, or a loop that never
//!   yields, keeps them from it);
//! - the native socket's loop answers a poke at the point it waits (for
//!   a connection, for room in the spool, for the open budget): waiting
//!   is progress, being stuck between two waits is not;
//! - the main runtime, where this task runs, runs it.
//!
//! A spool on a disk that hangs shows as the socket loop waiting for room
//! (clients wait in the backlog), not as a wedge: that is backpressure,
//! and restarting would not make the disk answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// What a watched loop holds: it answers the watchdog's pokes.
#[derive(Clone, Debug)]
pub struct Beat {
    pokes: watch::Receiver<u64>,
    answered: Arc<AtomicU64>,
}

impl Beat {
    /// Resolves when the watchdog pokes (never, without a watchdog); the
    /// loop then calls [`Beat::answer`].
    pub async fn poked(&mut self) {
        if self.pokes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Answers the latest poke.
    pub fn answer(&self) {
        self.answered.store(*self.pokes.borrow(), Ordering::Release);
    }
}

/// The watchdog's side: it pokes and reads the answers.
#[derive(Debug)]
pub struct Watchdog {
    pokes: watch::Sender<u64>,
    answered: Arc<AtomicU64>,
}

impl Watchdog {
    /// A watchdog and the beat of the loop it pokes.
    pub fn new() -> (Watchdog, Beat) {
        let (tx, rx) = watch::channel(0);
        let answered = Arc::new(AtomicU64::new(0));
        (
            Watchdog {
                pokes: tx,
                answered: answered.clone(),
            },
            Beat {
                pokes: rx,
                answered,
            },
        )
    }

    /// Checks every quarter of `period` and calls `ping` after each check
    /// that found everything making progress; runs until dropped.
    pub async fn run(
        self,
        period: Duration,
        runtimes: Vec<(&'static str, tokio::runtime::Handle)>,
        mut ping: impl FnMut(),
    ) {
        let every = (period / 4).max(Duration::from_millis(10));
        let mut generation = 0u64;
        let mut next = Instant::now();
        loop {
            let deadline = next + every;
            generation += 1;
            self.pokes.send_replace(generation);
            let mut stuck = Vec::new();
            for (name, handle) in &runtimes {
                let ran = tokio::time::timeout_at(deadline, handle.spawn(async {})).await;
                if !matches!(ran, Ok(Ok(()))) {
                    stuck.push(*name);
                }
            }
            while self.answered.load(Ordering::Acquire) < generation {
                if Instant::now() >= deadline {
                    stuck.push("native socket");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if stuck.is_empty() {
                ping();
            } else {
                warn!(
                    "watchdog: no progress in {}; systemd is not told the daemon is alive",
                    stuck.join(", ")
                );
            }
            tokio::time::sleep_until(deadline).await;
            next = deadline;
        }
    }
}
