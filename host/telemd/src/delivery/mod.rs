//! The delivery engine: the half of `telemd` that gets records off the
//! machine. It reads only the spool, oldest record first, and removes a
//! record only after its outcome is final and journaled: confirmed by the
//! collector, refused for good, expired, or dropped by the rate limit's
//! `drop` strategy. Records are posted one at a time, so a crash between the
//! collector's confirmation and the journal entry resends that one record
//! (at-least-once) and nothing else.
//!
//! The journal entry is the commit point: the spool file is unlinked
//! afterwards by a helper thread (an unlink costs more than a local post on
//! ext4), and at start-up records the journal already calls final are
//! removed without being sent again.

pub mod backoff;
pub mod client_config;
pub mod post;
pub mod ratelimit;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use self::backoff::Backoff;
use self::post::{PostOutcome, Poster, PosterError, Target};
use self::ratelimit::{RateLimiter, Verdict};
use crate::spool::{Spool, SpoolEntry, SpoolReadError};
use telem_core::clock::Clock;
use telem_core::config::{DeliveryConfig, RateLimitStrategy};
pub use telem_core::control::DeliveryStatus;
use telem_core::error_text::Chain;
use telem_core::journal::{Journal, JournalEntry, Outcome};
use telem_core::record::{Header, Record};

/// Named configs remembered (their target, or the refusal, which is then
/// logged once); past this the memory is cleared, so a client naming many
/// paths cannot grow it.
const NAMED_CONFIGS_KEPT: usize = 256;

/// Finished records whose unlink may lag behind the journal; far below the
/// journal's [`telem_core::journal::MIN_KEPT`], so a restart always finds them
/// journaled.
const REMOVAL_QUEUE: usize = 32;

/// Unlinks finished records off the posting path, after syncing the
/// journal entries that made them final: one `fdatasync` of the journal
/// per batch of removals rather than one per record on the posting path.
struct Remover {
    tx: Option<mpsc::SyncSender<SpoolEntry>>,
    pending: Arc<Mutex<HashSet<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Remover {
    fn start(spool: Spool, journal: Arc<Journal>) -> Remover {
        let (tx, rx) = mpsc::sync_channel::<SpoolEntry>(REMOVAL_QUEUE);
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("spool-remover".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < REMOVAL_QUEUE {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    // The commit point: every entry of the batch is on disk
                    // before its record leaves the spool, so a power cut
                    // can resend a delivered record but never lose one.
                    if let Err(e) = journal.sync() {
                        warn!(
                            "cannot sync the journal ({e}); removing the finished records anyway"
                        );
                    }
                    for entry in batch {
                        if let Err(e) = spool.remove(&entry) {
                            warn!(record_id = %entry.name, "cannot remove the spool file: {e}");
                        }
                        p.lock().expect("pending lock").remove(&entry.name);
                    }
                }
            })
            .ok();
        Remover {
            tx: Some(tx),
            pending,
            thread,
        }
    }

    fn remove(&self, entry: &SpoolEntry) {
        self.pending
            .lock()
            .expect("pending lock")
            .insert(entry.name.clone());
        if let Some(tx) = &self.tx {
            // Blocks when the queue is full: the remover can't fall far behind.
            let _ = tx.send(entry.clone());
        }
    }

    fn drain(&self) {
        while !self.pending.lock().expect("pending lock").is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_pending(&self, name: &str) -> bool {
        self.pending.lock().expect("pending lock").contains(name)
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where unreadable spool files are moved (hidden, so never listed as records).
pub const QUARANTINE_DIR: &str = ".unreadable";

/// What one spool run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Records whose outcome became final, by kind.
    pub delivered: usize,
    #[allow(missing_docs)]
    pub rejected: usize,
    #[allow(missing_docs)]
    pub expired: usize,
    #[allow(missing_docs)]
    pub dropped: usize,
    #[allow(missing_docs)]
    pub kept_local: usize,
    /// Set when the run stopped early (backoff or rate limit): how long
    /// until it is worth trying again.
    pub blocked_for: Option<Duration>,
}

/// The delivery worker.
pub struct Delivery {
    spool: Spool,
    journal: Arc<Journal>,
    config: DeliveryConfig,
    own_file: Option<PathBuf>,
    default_target: Target,
    poster: Poster,
    limiter: RateLimiter,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    boot_id: String,
    not_before: Option<SystemTime>,
    targets: HashMap<String, Target>,
    status: Arc<Mutex<DeliveryStatus>>,
    remover: Remover,
    /// Marked while records are delivered: probe calls make way.
    pressure: Option<telem_sandbox::HostPressure>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Delivery {
    /// A worker for `config`'s collector over `spool`. `own_file` is the
    /// daemon's config file (a record naming it goes to the daemon's own
    /// target). `seed` seeds the backoff jitter.
    pub fn new(
        config: DeliveryConfig,
        own_file: Option<PathBuf>,
        spool: Spool,
        journal: Arc<Journal>,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Result<Delivery, PosterError> {
        let finished = journal.recent_ids().unwrap_or_default();
        // What a killed daemon journaled may still be only in the page
        // cache: made durable before the records it finished go.
        if let Err(e) = journal.sync() {
            warn!("cannot sync the journal: {}", Chain(&e));
        }
        if let Ok(entries) = spool.entries() {
            for e in entries.iter().filter(|e| finished.contains(&e.name)) {
                info!(record_id = %e.name, "record was final before the restart (journaled); removing it without resending");
                let _ = spool.remove(e);
            }
        }
        Ok(Delivery {
            remover: Remover::start(spool.clone(), journal.clone()),
            poster: Poster::new(&config)?,
            default_target: Target::from_config(&config),
            limiter: RateLimiter::from_config(&config),
            backoff: Backoff::new(seed),
            boot_id: telem_core::journal::boot_id(),
            not_before: None,
            targets: HashMap::new(),
            status: Arc::new(Mutex::new(DeliveryStatus::default())),
            spool,
            journal,
            config,
            own_file,
            clock,
            pressure: None,
        })
    }

    /// Marks `pressure` busy while records are delivered, so probe calls
    /// make way for delivery as they do for native ingest.
    pub fn with_pressure(mut self, pressure: telem_sandbox::HostPressure) -> Delivery {
        self.pressure = Some(pressure);
        self
    }

    /// Shared view of the worker's status.
    pub fn status(&self) -> Arc<Mutex<DeliveryStatus>> {
        self.status.clone()
    }

    /// Waits until every finished record's spool file is gone (the unlinks
    /// trail the journal by a few records).
    pub fn wait_removals(&self) {
        self.remover.drain();
    }

    /// Forgets any backoff so the next run tries at once (`telemctl spool flush`).
    pub fn clear_backoff(&mut self) {
        self.not_before = None;
    }

    /// One pass over the spool, oldest record first, until it is empty or
    /// blocked by the backoff or the rate limit.
    pub async fn run_once(&mut self, stop: Option<&watch::Receiver<bool>>) -> RunReport {
        let mut report = RunReport::default();
        let now = self.clock.now();
        if let Some(t) = self.not_before {
            if now < t {
                report.blocked_for = Some(t.duration_since(now).unwrap_or_default());
                return report;
            }
            self.not_before = None;
        }
        let entries = match self.spool.entries() {
            Ok(e) => e,
            Err(e) => {
                warn!("cannot list the spool {}: {e}", self.spool.dir().display());
                report.blocked_for =
                    Some(Duration::from_secs(self.config.spool_process_time.get()));
                return report;
            }
        };
        for entry in entries {
            if stop.is_some_and(|s| *s.borrow()) {
                break;
            }
            if self.remover.is_pending(&entry.name) {
                continue;
            }
            if !self.deliver_one(&entry, &mut report).await {
                break;
            }
        }
        let mut st = self.status.lock().expect("status lock");
        st.delivered += report.delivered as u64;
        st.rejected += report.rejected as u64;
        st.expired += report.expired as u64;
        st.dropped += report.dropped as u64;
        st.kept_local += report.kept_local as u64;
        st.next_try = self.not_before.map(unix);
        report
    }

    /// Handles one spool entry; false stops the run.
    async fn deliver_one(&mut self, entry: &SpoolEntry, report: &mut RunReport) -> bool {
        if let Some(p) = &self.pressure {
            p.mark(1);
        }
        let now = self.clock.now();
        let record = match self.spool.read(&entry.name) {
            Ok(r) => r,
            Err(SpoolReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) => {
                self.quarantine(entry, &Chain(&e).to_string());
                report.rejected += 1;
                return true;
            }
        };
        if let Some(minutes) = self.config.record_expiry.get() {
            let age = now.duration_since(entry.mtime).unwrap_or_default();
            if age > Duration::from_secs(minutes.saturating_mul(60)) {
                self.finish(
                    entry,
                    &record,
                    Outcome::Expired,
                    format!("spooled {} min ago", age.as_secs() / 60),
                );
                report.expired += 1;
                return true;
            }
        }
        if !self.config.record_server_delivery_enabled {
            self.finish(entry, &record, Outcome::Local, String::new());
            report.kept_local += 1;
            return true;
        }
        if let Verdict::Exceeded { retry_at_minute } = self.limiter.check(now, entry.size) {
            match self.config.rate_limit_strategy {
                RateLimitStrategy::Drop => {
                    self.finish(
                        entry,
                        &record,
                        Outcome::Dropped,
                        "over the rate limit".into(),
                    );
                    report.dropped += 1;
                    return true;
                }
                RateLimitStrategy::Spool => {
                    let until = UNIX_EPOCH + Duration::from_secs(retry_at_minute * 60);
                    debug!(
                        "rate limit reached; spooled records wait until {}",
                        unix(until)
                    );
                    self.not_before = Some(until);
                    report.blocked_for = Some(until.duration_since(now).unwrap_or_default());
                    return false;
                }
            }
        }
        let target = self.target_for(&record);
        let outcome = self.poster.post(&target, &record, now).await;
        let (keep_going, result) = match outcome {
            PostOutcome::Delivered(code) => {
                self.limiter.record(now, entry.size);
                self.backoff.reset();
                self.finish(entry, &record, Outcome::Delivered, format!("HTTP {code}"));
                report.delivered += 1;
                (true, format!("delivered (HTTP {code})"))
            }
            PostOutcome::Rejected(why) => {
                warn!(record_id = %entry.name, "collector rejected the record for good ({why}); removed");
                self.backoff.reset();
                self.finish(entry, &record, Outcome::Rejected, why.clone());
                report.rejected += 1;
                (true, format!("rejected ({why})"))
            }
            PostOutcome::Retry {
                reason,
                retry_after,
            } => {
                let delay = self.backoff.fail(retry_after);
                warn!(
                    record_id = %entry.name,
                    "delivery failed ({reason}); records kept, next try in {:.1} s",
                    delay.as_secs_f64()
                );
                self.not_before = Some(now + delay);
                report.blocked_for = Some(delay);
                (false, format!("failed ({reason})"))
            }
        };
        let mut st = self.status.lock().expect("status lock");
        st.last_attempt = Some(unix(now));
        st.last_result = Some(result);
        st.failures_in_a_row = self.backoff.failures();
        keep_going
    }

    /// The target of a record: the config its probe named (`CFG:` line)
    /// when [`client_config::target_of`] allows it, else the daemon's own.
    fn target_for(&mut self, record: &Record) -> Target {
        let Some(path) = &record.config else {
            return self.default_target.clone();
        };
        if self
            .own_file
            .as_deref()
            .is_some_and(|s| s.as_os_str() == path.as_str())
        {
            return self.default_target.clone();
        }
        if let Some(t) = self.targets.get(path) {
            return t.clone();
        }
        let t = match client_config::target_of(path, &self.config.cfg_allowed_dirs) {
            Ok(t) => t,
            Err(e) => {
                warn!(
                    "record names config {} which is not used ({}); posting to the daemon's server",
                    telem_core::untrusted::escape(path, telem_core::untrusted::FIELD_CAP),
                    Chain(&e)
                );
                self.default_target.clone()
            }
        };
        if self.targets.len() >= NAMED_CONFIGS_KEPT {
            self.targets.clear();
        }
        self.targets.insert(path.clone(), t.clone());
        t
    }

    /// Journals the final outcome, then removes the record.
    fn finish(&self, entry: &SpoolEntry, record: &Record, outcome: Outcome, detail: String) {
        let je = JournalEntry {
            record_id: entry.name.clone(),
            time: unix(self.clock.now()),
            classification: record.headers.get(Header::Classification).to_owned(),
            event_id: record.headers.get(Header::EventId).to_owned(),
            boot_id: self.boot_id.clone(),
            outcome,
            detail,
        };
        if let Err(e) = self.journal.append(&je, Some(&record.payload)) {
            warn!("cannot write the journal: {}", Chain(&e));
        }
        match outcome {
            Outcome::Delivered | Outcome::Local => {
                debug!(record_id = %entry.name, classification = %je.classification, "record {}", outcome.as_str())
            }
            _ => {
                info!(record_id = %entry.name, classification = %je.classification, "record {} ({})", outcome.as_str(), je.detail)
            }
        }
        self.remover.remove(entry);
    }

    /// Moves an unreadable spool file aside (never deletes evidence) and
    /// journals it as rejected.
    fn quarantine(&self, entry: &SpoolEntry, why: &str) {
        let dir = self.spool.dir().join(QUARANTINE_DIR);
        let moved = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::rename(self.spool.dir().join(&entry.name), dir.join(&entry.name))
        });
        warn!(record_id = %entry.name, "unreadable spool file ({why}); moved to {}", dir.display());
        if let Err(e) = moved {
            warn!("cannot move it: {e}");
        }
        let je = JournalEntry {
            record_id: entry.name.clone(),
            time: unix(self.clock.now()),
            classification: "-".into(),
            event_id: "-".into(),
            boot_id: self.boot_id.clone(),
            outcome: Outcome::Rejected,
            detail: format!("unreadable: {why}"),
        };
        let _ = self.journal.append(&je, None);
    }

    /// Runs spool passes until `shutdown`: right after a record is spooled
    /// (unless blocked), every `spool_process_time`, when a backoff or rate
    /// window ends, and on `flush`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, flush: Arc<Notify>) {
        let period = Duration::from_secs(self.config.spool_process_time.get());
        let spool = self.spool.clone();
        loop {
            let report = self.run_once(Some(&shutdown)).await;
            if *shutdown.borrow() {
                break;
            }
            let blocked = report.blocked_for.is_some();
            let wait = report
                .blocked_for
                .map_or(period, |d| d.min(period).max(Duration::from_millis(10)));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = spool.stored(), if !blocked => {}
                _ = flush.notified() => self.clear_backoff(),
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }
}
