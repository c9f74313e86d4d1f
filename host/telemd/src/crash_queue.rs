//! The daemon side of the crash inbox: a single worker takes entries left
//! at start and ones the handler announces over the control socket, hands
//! each to every probe granted the crash trigger, and removes the entry
//! afterwards.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use telem_core::crash_history::{signature_in, CrashEntry, CrashHistory, SentRecord};
use telem_core::crash_inbox::{
    pending, remove_abandoned, valid_id, CrashMeta, CORE_FILE, META_FILE,
};
use telem_core::error_text::Chain;
use telem_core::record::{Header, Record};
use telem_sandbox::{CallError, Captured, CrashReport};

use crate::crash_exe::ExeView;
use crate::crash_repeats::{HeldBack, RecentSignatures, RepeatFilter};
use crate::ingest::Ingest;
use crate::supervisor::ProbeManager;

/// A queued crash and, when someone waits for it, where its records go.
type Job = (String, Option<oneshot::Sender<Vec<Captured>>>);

/// Hands crashes to the probes, one at a time.
#[derive(Clone, Debug)]
pub struct CrashQueue {
    tx: mpsc::UnboundedSender<Job>,
    counts: Arc<CrashCounts>,
}

/// What became of the crashes the probes handled since start (the
/// metrics); each counts once, in one of these.
#[derive(Debug, Default)]
pub struct CrashCounts {
    /// Reported: records sent.
    pub reported: AtomicU64,
    /// A repeat within `crash_repeat_window_secs`, or a crash whose record
    /// the host's limits held back (the crash probe's hourly budget, a
    /// full spool): kept in the crash history, not sent.
    pub held_back: AtomicU64,
    /// Every crash probe failed: an error record sent in their place.
    pub failed: AtomicU64,
}

impl CrashQueue {
    /// Starts the worker; entries already in the inbox are queued first.
    /// A crash whose signature was sent within `repeat_window_secs` is a
    /// repeat (see [`crate::crash_repeats`]).
    pub fn start(
        inbox: PathBuf,
        history: CrashHistory,
        options: CrashOptions,
        probes: Arc<ProbeManager>,
        ingest: Arc<Ingest>,
    ) -> CrashQueue {
        let repeat_window_secs = options.repeat_window_secs;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let recent = match history.list() {
            Ok(listing) => RecentSignatures::from_history(&listing, repeat_window_secs),
            Err(e) => {
                warn!(
                    "the crash history cannot be read: repeats are counted from now: {}",
                    Chain(&e)
                );
                RecentSignatures::from_history(&Default::default(), repeat_window_secs)
            }
        };
        let counts = Arc::new(CrashCounts::default());
        let crashes = Crashes {
            counts: counts.clone(),
            inbox: inbox.clone(),
            options,
            history,
            recent: Arc::new(Mutex::new(recent)),
            probes: probes.clone(),
            ingest,
        };
        let _ = std::fs::create_dir_all(&inbox);
        remove_abandoned(&inbox);
        for id in pending(&inbox) {
            let _ = tx.send((id, None));
        }
        tokio::spawn(async move {
            let mut done = Recent::default();
            loop {
                tokio::select! {
                    job = rx.recv() => {
                        let Some((id, reply)) = job else { break };
                        // Handed over already by a rescan: answer with
                        // what that made.
                        let records = match done.get(&id) {
                            Some(r) if !inbox.join(&id).exists() => r,
                            _ => crashes.process(&id).await,
                        };
                        done.put(&id, &records);
                        if let Some(r) = reply {
                            let _ = r.send(records);
                        }
                    }
                    () = probes.crash_probe_loaded() => {
                        // Crashes that waited for a crash probe (none was
                        // loaded, or it was quarantined) go to it now.
                        for id in pending(&inbox) {
                            let records = crashes.process(&id).await;
                            done.put(&id, &records);
                        }
                    }
                }
            }
        });
        CrashQueue { tx, counts }
    }

    /// What became of the crashes handled so far.
    pub fn counts(&self) -> &CrashCounts {
        &self.counts
    }

    /// Queues an entry the handler announced; the receiver, when asked
    /// for, gets the records made from it.
    pub fn announce(
        &self,
        id: &str,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Vec<Captured>>>, AnnounceError> {
        if !valid_id(id) {
            return Err(AnnounceError::BadId(telem_core::untrusted::escape(id, 128)));
        }
        let (reply, rx) = if wait {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.tx
            .send((id.to_owned(), reply))
            .map_err(|_| AnnounceError::Stopped)?;
        Ok(rx)
    }
}

/// Why an announced crash was not queued.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// Not an id the handler makes (letters, digits, `-`).
    #[error("bad crash id {0:?}")]
    BadId(String),
    /// The daemon is shutting down.
    #[error("the crash worker stopped")]
    Stopped,
}

/// The records of the last few crashes handled, so an announcement that
/// arrives after a rescan already handled its entry still gets them.
#[derive(Default)]
struct Recent(std::collections::VecDeque<(String, Vec<Captured>)>);

impl Recent {
    const KEEP: usize = 16;

    fn get(&self, id: &str) -> Option<Vec<Captured>> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, r)| r.clone())
    }

    fn put(&mut self, id: &str, records: &[Captured]) {
        self.0.retain(|(i, _)| i != id);
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back((id.to_owned(), records.to_vec()));
    }
}

/// The crash queue's settings.
#[derive(Clone, Debug)]
pub struct CrashOptions {
    /// `crash_repeat_window_secs`.
    pub repeat_window_secs: u64,
    /// Where views of crashed programs are made for a call
    /// (`StateLayout::probe_views`).
    pub views_dir: PathBuf,
}

impl CrashOptions {
    /// The daemon's, from its config.
    pub fn for_config(config: &telem_core::config::Config) -> CrashOptions {
        CrashOptions {
            repeat_window_secs: config.crash.crash_repeat_window_secs.get(),
            views_dir: telem_core::state_layout::StateLayout::new(&config.host.state_dir)
                .probe_views(),
        }
    }
}

/// What the worker hands each crash to.
struct Crashes {
    counts: Arc<CrashCounts>,
    inbox: PathBuf,
    options: CrashOptions,
    history: CrashHistory,
    recent: Arc<Mutex<RecentSignatures>>,
    probes: Arc<ProbeManager>,
    ingest: Arc<Ingest>,
}

impl Crashes {
    async fn process(&self, id: &str) -> Vec<Captured> {
        let (inbox, probes, ingest, history) =
            (&self.inbox, &self.probes, &self.ingest, &self.history);
        // At start-up the probes load after the sockets are bound; a crash that
        // waited while the daemon was down goes to them once they are loaded.
        probes
            .first_scan_done(crate::supervisor::FIRST_SCAN_WAIT)
            .await;
        let entry = inbox.join(id);
        let meta: CrashMeta = match std::fs::read(entry.join(META_FILE))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                // Announced twice, or broken: nothing to hand over.
                if entry.exists() {
                    warn!("crash entry {id}: unreadable {META_FILE} ({e}); removed");
                    let _ = std::fs::remove_dir_all(&entry);
                }
                return Vec::new();
            }
        };
        let report = CrashReport {
            core_path: entry.join(CORE_FILE).to_string_lossy().into_owned(),
            process_name: meta.process_name.clone(),
            process_path: meta.process_path.clone(),
            pid: meta.pid,
            signal: meta.signal,
        };
        let filter = Arc::new(RepeatFilter::new(
            ingest.clone(),
            self.recent.clone(),
            id,
            meta.time,
            meta.uid,
            &program_of(&meta),
        ));
        let exe = self.program_view(&entry, &meta).await;
        let (results, mut records) = probes
            .crash(report, &entry, exe.as_ref(), filter.clone())
            .await;
        drop(exe);
        let held = filter.held_back();
        if let Some(h) = held.first() {
            info!(
            "crash {id}: a repeat of crash {} within crash_repeat_window_secs; its record is kept in the crash history, not sent",
            h.repeat_of
        );
        }
        if results.is_empty() {
            warn!(
            "crash of {} (pid {}) waits in the inbox until a probe that handles crashes is loaded",
            telem_core::untrusted::escape(
                meta.process_path.as_deref().unwrap_or(&meta.process_name),
                telem_core::untrusted::FIELD_CAP
            ),
            meta.pid
        );
            return records;
        }
        let failures: Vec<String> = results
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {}", Chain(e))))
            .collect();
        let all_failed = failures.len() == results.len();
        // Every probe failed only because the host did not take its record
        // (the crash probe's hourly budget, a full spool): the ceiling
        // holds for crashes too, so telemd sends no record of its own.
        let over_limits = all_failed
            && results
                .iter()
                .all(|(_, r)| r.as_ref().err().is_some_and(CallError::after_host_refusal));
        if over_limits {
            warn!(
                "crash {id}: not reported, the host's limits held its record back ({}); kept in the crash history",
                failures.join("; ")
            );
        } else if all_failed {
            // No probe produced a record: keep the crash's facts at least.
            let mut payload = format!("Error: crash symbolizer failed: {}\n", failures.join("; "));
            payload.push_str(&format!(
                "Process: {}\nPID: {}\n",
                meta.process_path.as_deref().unwrap_or(&meta.process_name),
                meta.pid
            ));
            if let Some(s) = meta.signal {
                payload.push_str(&format!("Signal: {s}\n"));
            }
            let payload: String = payload
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' || c == '\n' {
                        c
                    } else {
                        '?'
                    }
                })
                .take(8192)
                .collect();
            let rec = Record::from_probe("org.clearlinux/crash/error", 4, 1, payload.clone(), None);
            let event_id = rec.headers.get(Header::EventId).to_owned();
            match ingest.submit_probe(rec).await {
                Ok(rid) => {
                    info!("crash {id}: every probe failed; error record {rid} kept");
                    records.push(Captured {
                        classification: "org.clearlinux/crash/error".into(),
                        severity: 4,
                        payload,
                        payload_version: 1,
                        event_id,
                    });
                }
                Err(e) => warn!(
                    "crash {id}: every probe failed and the error record was refused: {}",
                    Chain(&e)
                ),
            }
        }
        let outcome = if over_limits {
            &self.counts.held_back
        } else if all_failed {
            &self.counts.failed
        } else if !held.is_empty() {
            &self.counts.held_back
        } else {
            &self.counts.reported
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        remember(history, id, &meta, &records, &held).await;
        if let Err(e) = std::fs::remove_dir_all(&entry) {
            warn!("crash entry {}: cannot remove: {e}", entry.display());
        }
        records
    }
}

impl Crashes {
    /// The crashed program for the calls, when the handler kept it (it
    /// lay outside `/usr`) and a crash probe's grant does not reach its
    /// path; a program that cannot be shown costs its frames' names, never
    /// the crash (the reason is logged).
    async fn program_view(&self, entry: &std::path::Path, meta: &CrashMeta) -> Option<ExeView> {
        if !meta.program_kept {
            return None;
        }
        let path = PathBuf::from(meta.process_path.as_deref()?);
        if self.probes.crash_grants_reach(&path) {
            return None;
        }
        let (views, kept) = (
            self.options.views_dir.clone(),
            entry.join(telem_core::crash_inbox::PROGRAM_FILE),
        );
        let shown = path.clone();
        let built =
            tokio::task::spawn_blocking(move || ExeView::build(&views, &kept, &shown)).await;
        match built {
            Ok(Ok(view)) => Some(view),
            Ok(Err(e)) => {
                info!(
                    "crashed program {} not shown to the crash probe: {}",
                    telem_core::untrusted::escape(
                        &path.to_string_lossy(),
                        telem_core::untrusted::FIELD_CAP
                    ),
                    Chain(&e)
                );
                None
            }
            Err(e) => {
                warn!("crashed program view: {e}");
                None
            }
        }
    }
}

/// Keeps the crash and what was sent for it in the local history
/// (`telemctl crash list`); a history that cannot be written costs the
/// history entry, never the crash's records.
async fn remember(
    history: &CrashHistory,
    id: &str,
    meta: &CrashMeta,
    records: &[Captured],
    held: &[HeldBack],
) {
    let entry = CrashEntry {
        id: id.to_owned(),
        time: meta.time,
        program: program_of(meta),
        pid: meta.pid,
        signal: meta.signal,
        uid: meta.uid,
        signature: records
            .iter()
            .find_map(|c| signature_in(&c.payload))
            .map(str::to_owned),
        repeat_of: held.first().map(|h| h.repeat_of.clone()),
        records: records
            .iter()
            .map(|c| SentRecord {
                classification: c.classification.clone(),
                severity: c.severity,
                event_id: c.event_id.clone(),
                payload: c.payload.clone(),
                sent: !held.iter().any(|h| h.event_id == c.event_id),
            })
            .collect(),
    };
    let history = history.clone();
    let written = tokio::task::spawn_blocking(move || history.add(&entry)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("crash {id}: not kept in the crash history: {}", Chain(&e)),
        Err(e) => warn!("crash {id}: not kept in the crash history: {e}"),
    }
}

/// The crashed program as the history names it: its path when the kernel
/// gave one, else its name.
fn program_of(meta: &CrashMeta) -> String {
    meta.process_path
        .clone()
        .unwrap_or_else(|| meta.process_name.clone())
}
