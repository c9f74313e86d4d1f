//! The delivery engine: the half of `telemd` that gets records off the
//! machine. It reads only the spool, oldest record first, and removes a
//! record only after its outcome is final and journaled: confirmed by the
//! collector, refused for good, expired, or dropped by the rate limit's
//! `drop` strategy. In the legacy formats records are posted one at a
//! time, so a crash between the collector's confirmation and the journal
//! entry resends that one record (at-least-once) and nothing else; with
//! OTLP a request of up to 1000 is the unit, and such a crash resends that
//! request.
//!
//! The journal entry is the commit point: the spool file is unlinked
//! afterwards by a helper thread (an unlink costs more than a local post on
//! ext4), and at start-up records the journal already calls final are
//! removed without being sent again.

pub mod backoff;
pub mod client_config;
pub mod otlp;
pub mod post;
pub mod ratelimit;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use self::backoff::Backoff;
use self::otlp::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use self::post::{PostOutcome, Poster, PosterError, Target};
use self::ratelimit::{RateLimiter, Verdict};
use crate::spool::{Spool, SpoolEntry, SpoolReadError};
use telem_core::clock::Clock;
use telem_core::config::{DeliveryConfig, PostFormat, RateLimitStrategy};
pub use telem_core::control::DeliveryStatus;
use telem_core::error_text::Chain;
use telem_core::journal::{Journal, JournalEntry, Outcome};
use telem_core::record::{Header, Record};

/// Named configs remembered (their target, or the refusal, which is then
/// logged once); past this the memory is cleared, so a client naming many
/// paths cannot grow it.
const NAMED_CONFIGS_KEPT: usize = 256;

/// Finished records whose unlink may lag behind the journal, one record
/// at a time; far below the journal's [`telem_core::journal::MIN_KEPT`],
/// so a restart always finds them journaled.
const REMOVAL_QUEUE: usize = 32;

/// Requests that must go in a row, after a 413 made them smaller, before
/// they may carry twice as many records again.
const REGROW_AFTER: u32 = 16;

// A restart finds every record whose unlink trailed its journal entry
// still in the journal (one request, or REMOVAL_QUEUE single records).
const _: () = assert!(
    MAX_BATCH_RECORDS <= telem_core::journal::MIN_KEPT
        && REMOVAL_QUEUE <= telem_core::journal::MIN_KEPT
);

/// Removals in one group from which a second thread helps unlink them.
const PARALLEL_UNLINKS_FROM: usize = 64;

/// Names of finished records not yet unlinked, with a condition the
/// remover signals as it unlinks them.
#[derive(Default)]
struct Pending {
    names: Mutex<HashSet<String>>,
    shrunk: Condvar,
}

/// Longest wait for the remover before delivery goes on regardless (it
/// unlinks a request's records in well under a second; a remover that
/// stopped must not stop delivery with it).
const REMOVER_PATIENCE: Duration = Duration::from_secs(30);

impl Pending {
    /// Waits until fewer than `n` are pending, or [`REMOVER_PATIENCE`].
    fn wait_below(&self, n: usize) {
        let mut names = self.names.lock().expect("pending lock");
        let deadline = std::time::Instant::now() + REMOVER_PATIENCE;
        while names.len() >= n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                warn!(
                    "{} finished records still wait to leave the spool after {REMOVER_PATIENCE:?}; going on",
                    names.len()
                );
                return;
            }
            names = self
                .shrunk
                .wait_timeout(names, left)
                .expect("pending lock")
                .0;
        }
    }
}

/// Unlinks finished records off the posting path, after syncing the
/// journal entries that made them final: one `fdatasync` of the journal
/// per group of removals rather than one per record on the posting path.
/// One record at a time, the unlinks trail the journal by at most
/// [`REMOVAL_QUEUE`] records; an OTLP request's records are handed over
/// together, once the previous request's are gone, so they trail by at
/// most one request (the duplicates a kill can cause).
struct Remover {
    tx: Option<mpsc::Sender<SpoolEntry>>,
    pending: Arc<Pending>,
    thread: Option<JoinHandle<()>>,
    /// For unlinking in place when the thread is gone.
    spool: Spool,
    journal: Arc<Journal>,
}

impl Remover {
    fn start(spool: Spool, journal: Arc<Journal>) -> Remover {
        let (tx, rx) = mpsc::channel::<SpoolEntry>();
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        let (thread_spool, thread_journal) = (spool.clone(), journal.clone());
        let thread = std::thread::Builder::new()
            .name("spool-remover".into())
            .spawn(move || {
                let (spool, journal) = (thread_spool, thread_journal);
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_BATCH_RECORDS {
                        match rx.try_recv() {
                            Ok(e) => group.push(e),
                            Err(_) => break,
                        }
                    }
                    // The commit point: every entry of the group is on disk
                    // before its record leaves the spool, so a power cut
                    // can resend a delivered record but never lose one.
                    if let Err(e) = journal.sync() {
                        warn!(
                            "cannot sync the journal ({e}); removing the finished records anyway"
                        );
                    }
                    let unlink = |entries: &[SpoolEntry]| {
                        for entry in entries {
                            if let Err(e) = spool.remove(entry) {
                                warn!(record_id = %entry.name, "cannot remove the spool file: {e}");
                            }
                            p.names.lock().expect("pending lock").remove(&entry.name);
                            p.shrunk.notify_all();
                        }
                    };
                    // An unlink spends most of its time outside the
                    // directory's lock: a request's records go twice as
                    // fast from two threads.
                    if group.len() >= PARALLEL_UNLINKS_FROM {
                        let (a, b) = group.split_at(group.len() / 2);
                        std::thread::scope(|s| {
                            // No second thread to be had: this one does both.
                            if std::thread::Builder::new()
                                .spawn_scoped(s, || unlink(a))
                                .is_err()
                            {
                                unlink(a);
                            }
                            unlink(b);
                        });
                    } else {
                        unlink(&group);
                    }
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                warn!("no thread for removing finished records ({e}); they are removed in line");
                None
            }
        };
        Remover {
            tx: thread.as_ref().map(|_| tx),
            pending,
            thread,
            spool,
            journal,
        }
    }

    /// Hands one finished record over; waits while [`REMOVAL_QUEUE`] are
    /// pending, so the remover never falls far behind.
    fn remove(&self, entry: &SpoolEntry) {
        self.pending.wait_below(REMOVAL_QUEUE);
        self.hand_over(entry);
    }

    fn hand_over(&self, entry: &SpoolEntry) {
        self.pending
            .names
            .lock()
            .expect("pending lock")
            .insert(entry.name.clone());
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(entry.clone()).is_ok());
        if !sent {
            // The thread is gone: what it would have done, here.
            if let Err(e) = self.journal.sync() {
                warn!("cannot sync the journal ({e}); removing the finished record anyway");
            }
            if let Err(e) = self.spool.remove(entry) {
                warn!(record_id = %entry.name, "cannot remove the spool file: {e}");
            }
            self.pending
                .names
                .lock()
                .expect("pending lock")
                .remove(&entry.name);
        }
    }

    /// Hands a request's finished records over at once (the caller waited
    /// for [`Remover::wait_idle`] before journaling them).
    fn remove_all<'a>(&self, entries: impl Iterator<Item = &'a SpoolEntry>) {
        for e in entries {
            self.hand_over(e);
        }
    }

    /// Waits until every record handed over is unlinked.
    fn wait_idle(&self) {
        self.pending.wait_below(1);
    }

    fn is_pending(&self, name: &str) -> bool {
        self.pending
            .names
            .lock()
            .expect("pending lock")
            .contains(name)
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

/// What the checks before a post decided about one spool entry.
enum Admission {
    /// Its outcome is final (expired, kept local, dropped, unreadable), or
    /// it is gone.
    Settled,
    /// The run stops here (the rate limit, `spool` strategy).
    Stop,
    /// It may be posted.
    Post(Box<Record>),
    /// Over the rate limit only with the open request's records counted:
    /// that request goes first, then this record is looked at again.
    AfterOpenRequest,
}

/// Records gathered for one OTLP request: one target, at most
/// [`MAX_BATCH_RECORDS`] (or fewer after a 413) and [`MAX_BATCH_BYTES`].
#[derive(Default)]
struct Batch {
    target: Option<Target>,
    entries: Vec<(SpoolEntry, Record)>,
    bytes: u64,
}

impl Batch {
    /// Whether a record of `size` bytes for `target` must wait for the
    /// next request.
    fn must_close_before(&self, target: &Target, size: u64, cap: usize) -> bool {
        !self.entries.is_empty()
            && (self.target.as_ref() != Some(target)
                || self.entries.len() >= cap
                || self.bytes.saturating_add(size) > MAX_BATCH_BYTES)
    }

    fn push(&mut self, target: Target, entry: SpoolEntry, record: Record) {
        self.bytes = self.bytes.saturating_add(entry.size);
        self.target = Some(target);
        self.entries.push((entry, record));
    }
}

/// The delivery part of a config reload, checked before it is handed to
/// the worker (its HTTP client built: a bad key or proxy refuses the
/// reload, the worker never sees it).
pub struct NewDelivery {
    config: DeliveryConfig,
    poster: Poster,
}

impl NewDelivery {
    /// Checks `config` by building its client.
    pub fn check(config: DeliveryConfig) -> Result<NewDelivery, PosterError> {
        Ok(NewDelivery {
            poster: Poster::new(&config)?,
            config,
        })
    }
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
    /// Records in one OTLP request at most: [`MAX_BATCH_RECORDS`], halved
    /// by each 413 the collector answers, doubled again after
    /// [`REGROW_AFTER`] requests in a row went.
    batch_cap: usize,
    /// Requests that went since the cap last changed.
    accepted_at_cap: u32,
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
            batch_cap: MAX_BATCH_RECORDS,
            accepted_at_cap: 0,
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
        self.remover.wait_idle();
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
        if self.config.post_format == PostFormat::Otlp {
            self.deliver_batches(entries, stop, &mut report).await;
        } else {
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
        let record = match self.admit(entry, report, None) {
            // (Only a request can be open.)
            Admission::Settled | Admission::AfterOpenRequest => return true,
            Admission::Stop => return false,
            Admission::Post(r) => *r,
        };
        let now = self.clock.now();
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
            // As for a request of one record: the setup's limit, not the
            // record's fault (the legacy formats' 413 is a rejection).
            PostOutcome::TooLarge => self.retry_later(
                now,
                "HTTP 413 to one record: the collector or a proxy in between takes no request this large; records kept",
                None,
                Some(&entry.name),
                report,
            ),
            PostOutcome::Retry {
                reason,
                retry_after,
            } => self.retry_later(now, &reason, retry_after, Some(&entry.name), report),
        };
        self.note_attempt(now, result);
        keep_going
    }

    /// The spool run of `post_format = "otlp"`: records admitted as for
    /// one post, gathered into requests of one target, each request one
    /// commit (its records all leave the spool once it is answered 2xx,
    /// or all stay).
    async fn deliver_batches(
        &mut self,
        entries: Vec<SpoolEntry>,
        stop: Option<&watch::Receiver<bool>>,
        report: &mut RunReport,
    ) {
        let mut batch = Batch::default();
        // The rate limit counts what the open request already holds.
        let mut held = self.limiter.clone();
        'entries: for entry in entries {
            if stop.is_some_and(|s| *s.borrow()) {
                break;
            }
            if self.remover.is_pending(&entry.name) {
                continue;
            }
            let record = loop {
                // Only records already sent count against a record that
                // would be dropped or kept back: never the open request's.
                let limiter = (!batch.entries.is_empty()).then_some(&held);
                match self.admit(&entry, report, limiter) {
                    Admission::Settled => continue 'entries,
                    Admission::Stop => break 'entries,
                    Admission::Post(r) => break *r,
                    Admission::AfterOpenRequest => {
                        if !self.post_batch(std::mem::take(&mut batch), report).await {
                            return;
                        }
                        held = self.limiter.clone();
                    }
                }
            };
            let target = self.target_for(&record);
            if batch.must_close_before(&target, entry.size, self.batch_cap) {
                if !self.post_batch(std::mem::take(&mut batch), report).await {
                    return;
                }
                held = self.limiter.clone();
            }
            held.record(self.clock.now(), entry.size);
            batch.push(target, entry, record);
        }
        if !batch.entries.is_empty() {
            self.post_batch(batch, report).await;
        }
    }

    /// Posts one OTLP request and settles its records; false stops the run.
    async fn post_batch(&mut self, batch: Batch, report: &mut RunReport) -> bool {
        let Some(target) = &batch.target else {
            return true;
        };
        let n = batch.entries.len();
        let now = self.clock.now();
        let items: Vec<otlp::Outgoing> = batch
            .entries
            .iter()
            .map(|(e, r)| otlp::Outgoing {
                record: r,
                spooled: e.mtime,
                id: &e.name,
            })
            .collect();
        let (outcome, partial) = self.poster.post_batch(target, &items, now).await;
        drop(items);
        let (keep_going, result) = match outcome {
            PostOutcome::Delivered(code) => {
                let mut detail = format!("HTTP {code}, in a request of {n}");
                if let Some(p) = &partial {
                    warn!(
                        "the collector accepted a request of {n} records but refused {} of them ({}); not retried",
                        p.rejected, p.message
                    );
                    detail = format!(
                        "{detail}; the collector refused {} of {n}: {}",
                        p.rejected, p.message
                    );
                }
                self.backoff.reset();
                for (entry, _) in &batch.entries {
                    self.limiter.record(now, entry.size);
                }
                self.finish_all(&batch.entries, Outcome::Delivered, &detail);
                report.delivered += n;
                // A 413 may have come from a passing limit: after a run of
                // requests that went, try larger ones again.
                if self.batch_cap < MAX_BATCH_RECORDS {
                    self.accepted_at_cap += 1;
                    if self.accepted_at_cap >= REGROW_AFTER {
                        self.batch_cap = (self.batch_cap * 2).min(MAX_BATCH_RECORDS);
                        self.accepted_at_cap = 0;
                    }
                }
                (true, format!("delivered (HTTP {code}, {n} records)"))
            }
            PostOutcome::TooLarge if n > 1 => {
                self.batch_cap = (n / 2).max(1);
                self.accepted_at_cap = 0;
                warn!(
                    "the collector refused a request of {n} records for its size (HTTP 413); requests now carry at most {}",
                    self.batch_cap
                );
                // At once: nothing failed but the size.
                report.blocked_for = Some(Duration::ZERO);
                (
                    false,
                    format!(
                        "too large (HTTP 413); now at most {} a request",
                        self.batch_cap
                    ),
                )
            }
            PostOutcome::Rejected(why) => {
                warn!("the collector rejected a request of {n} records for good ({why}); removed");
                self.backoff.reset();
                self.finish_all(&batch.entries, Outcome::Rejected, &why);
                report.rejected += n;
                (true, format!("rejected ({why})"))
            }
            outcome @ (PostOutcome::Retry { .. } | PostOutcome::TooLarge) => {
                // One record too large for what sits in front of the
                // collector is that setup's fault, not the record's.
                let (reason, retry_after) = match outcome {
                    PostOutcome::Retry {
                        reason,
                        retry_after,
                    } => (reason, retry_after),
                    _ => (
                        "HTTP 413 to a request of one record: the collector or a proxy in between takes no request this large; records kept".to_owned(),
                        None,
                    ),
                };
                self.retry_later(now, &reason, retry_after, None, report)
            }
        };
        self.note_attempt(now, result);
        keep_going
    }

    /// A post that failed: its records stay, the next try waits for the
    /// backoff (never sooner than the collector's `Retry-After`). Returns
    /// what a post arm returns: stop the run, and the result in words.
    fn retry_later(
        &mut self,
        now: SystemTime,
        reason: &str,
        retry_after: Option<Duration>,
        record_id: Option<&str>,
        report: &mut RunReport,
    ) -> (bool, String) {
        let delay = self.backoff.fail(retry_after);
        self.status.lock().expect("status lock").failed_attempts += 1;
        let secs = delay.as_secs_f64();
        match record_id {
            Some(id) => warn!(
                record_id = id,
                "delivery failed ({reason}); records kept, next try in {secs:.1} s"
            ),
            None => warn!(
                "delivery failed ({reason}); the request's records kept, next try in {secs:.1} s"
            ),
        }
        self.not_before = Some(now + delay);
        report.blocked_for = Some(delay);
        (false, format!("failed ({reason})"))
    }

    /// Shows the last attempt in `telemctl status`.
    fn note_attempt(&self, now: SystemTime, result: String) {
        let mut st = self.status.lock().expect("status lock");
        st.last_attempt = Some(unix(now));
        st.last_result = Some(result);
        st.failures_in_a_row = self.backoff.failures();
    }

    /// The checks before a post: readable, not expired, delivery enabled,
    /// within the rate limit (`limiter`, or the worker's own).
    fn admit(
        &mut self,
        entry: &SpoolEntry,
        report: &mut RunReport,
        limiter: Option<&RateLimiter>,
    ) -> Admission {
        if let Some(p) = &self.pressure {
            p.mark(1);
        }
        let now = self.clock.now();
        let record = match self.spool.read(&entry.name) {
            Ok(r) => r,
            Err(SpoolReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Admission::Settled
            }
            Err(e) => {
                self.quarantine(entry, &Chain(&e).to_string());
                report.rejected += 1;
                return Admission::Settled;
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
                return Admission::Settled;
            }
        }
        if !self.config.record_server_delivery_enabled {
            self.finish(entry, &record, Outcome::Local, String::new());
            report.kept_local += 1;
            return Admission::Settled;
        }
        let verdict = limiter.unwrap_or(&self.limiter).check(now, entry.size);
        if let Verdict::Exceeded { retry_at_minute } = verdict {
            if limiter.is_some() && matches!(self.limiter.check(now, entry.size), Verdict::Allowed)
            {
                return Admission::AfterOpenRequest;
            }
            match self.config.rate_limit_strategy {
                RateLimitStrategy::Drop => {
                    self.finish(
                        entry,
                        &record,
                        Outcome::Dropped,
                        "over the rate limit".into(),
                    );
                    report.dropped += 1;
                    return Admission::Settled;
                }
                RateLimitStrategy::Spool => {
                    let until = UNIX_EPOCH + Duration::from_secs(retry_at_minute * 60);
                    debug!(
                        "rate limit reached; spooled records wait until {}",
                        unix(until)
                    );
                    self.not_before = Some(until);
                    report.blocked_for = Some(until.duration_since(now).unwrap_or_default());
                    return Admission::Stop;
                }
            }
        }
        Admission::Post(Box::new(record))
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
        self.journal_outcome(entry, record, outcome, detail);
        self.remover.remove(entry);
    }

    /// Journals the final outcome of every record of a request, then hands
    /// them to the remover together (it makes the journal durable once for
    /// all of them before the first unlink, while the next request is
    /// gathered).
    fn finish_all(&self, entries: &[(SpoolEntry, Record)], outcome: Outcome, detail: &str) {
        // The previous request's records are gone first: the unlinks trail
        // the journal by at most one request.
        self.remover.wait_idle();
        for (entry, record) in entries {
            self.journal_outcome(entry, record, outcome, detail.to_owned());
        }
        self.remover.remove_all(entries.iter().map(|(e, _)| e));
    }

    fn journal_outcome(
        &self,
        entry: &SpoolEntry,
        record: &Record,
        outcome: Outcome,
        detail: String,
    ) {
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

    /// Takes a reloaded config between two spool runs: the new server,
    /// format, TLS and proxy (its client), limits (over what was already
    /// counted), and a fresh start for the backoff, so the next record goes
    /// to the new server at once. Spooled records stay where they are.
    pub fn reconfigure(&mut self, new: NewDelivery) {
        self.poster = new.poster;
        self.default_target = Target::from_config(&new.config);
        self.limiter = self.limiter.reconfigured(&new.config);
        self.targets.clear();
        self.batch_cap = MAX_BATCH_RECORDS;
        self.accepted_at_cap = 0;
        self.backoff.reset();
        self.not_before = None;
        self.config = new.config;
        {
            let mut st = self.status.lock().expect("status lock");
            st.failures_in_a_row = 0;
            st.next_try = None;
        }
        info!(server = %self.config.server, "delivery reconfigured");
    }

    /// Runs spool passes until `shutdown`: right after a record is spooled
    /// (unless blocked), every `spool_process_time`, when a backoff or rate
    /// window ends, and on `flush`; takes a reloaded config from `reload`
    /// between passes.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        flush: Arc<Notify>,
        mut reload: tokio::sync::mpsc::UnboundedReceiver<NewDelivery>,
    ) {
        let spool = self.spool.clone();
        loop {
            let report = self.run_once(Some(&shutdown)).await;
            if *shutdown.borrow() {
                break;
            }
            let period = Duration::from_secs(self.config.spool_process_time.get());
            let blocked = report.blocked_for.is_some();
            let wait = report
                .blocked_for
                .map_or(period, |d| d.min(period).max(Duration::from_millis(10)));
            tokio::select! {
                // A reload first: records stored meanwhile go to the new
                // server.
                biased;
                Some(new) = reload.recv() => self.reconfigure(new),
                _ = shutdown.wait_for(|s| *s) => break,
                _ = flush.notified() => self.clear_backoff(),
                _ = spool.stored(), if !blocked => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
