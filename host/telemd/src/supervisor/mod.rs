//! Keeps the probe directories and the running probes in step: loads
//! components as they appear, reloads them when replaced, stops them when
//! removed, fires their triggers, and retries a failing probe with growing
//! delays until it is quarantined.
//!
//! This file is the facade: the probe manager, its state and the admin's
//! verbs. `registry.rs` holds what is known of each probe file under one
//! lock, with the rules that decide between loading, waiting and leaving
//! alone; `scan.rs` finds the probe files and tells what changed (with
//! their provenance stamps), `load.rs` checks and loads one file,
//! `triggers.rs` runs the probes (triggers, source batches, retries,
//! quarantine).

mod dir_watch;
mod error;
mod load;
mod registry;
mod scan;
mod triggers;

pub use error::ProbeError;
use registry::{Loaded, Registry, Seen};
use triggers::Quarantine;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::ingest::Ingest;
use crate::sources::{CursorFile, SourceOptions};
use telem_core::control::{ProbeInfo, ProbeState, RefusedProbe, RunReport};
use telem_core::grants::ProbePolicy;
use telem_core::provenance::Owners;
use telem_sandbox::{CallError, Event, ExtraDir, LoadedProbe, Sandbox, Trigger};

/// Failures in a row after which a probe is quarantined until reload.
pub const QUARANTINE_AFTER: u32 = 5;
/// First retry delay after a failure; doubles per failure.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two tries of one source batch.
pub const MAX_BATCH_RETRY: Duration = Duration::from_secs(300);
/// Largest random delay added to an interval, so a fleet spreads out.
pub const MAX_SPLAY: Duration = Duration::from_secs(600);
/// How long a request naming a probe waits for the start-up scan.
pub const FIRST_SCAN_WAIT: Duration = Duration::from_secs(30);
/// After a change the kernel told of, how long the directories are left
/// quiet before a pass, and between the two passes that must see a new
/// file unchanged before it is loaded.
pub const QUICK_SETTLE: Duration = Duration::from_millis(200);

/// What `list` takes of a slot before it reads each probe's state.
type SlotParts = (
    Arc<LoadedProbe>,
    Arc<Mutex<ProbeState>>,
    Arc<CursorFile>,
    Option<String>,
);

/// Who may install probes, and whether they must be signed: checked on
/// every probe file before it runs (`telem_core::provenance`).
#[derive(Clone, Debug)]
pub struct Trust {
    /// Owners of probe files and the directories above them.
    pub owners: Owners,
    /// `require_signatures`.
    pub require_signatures: bool,
    /// `trusted_keys_dir`.
    pub trusted_keys_dir: PathBuf,
}

impl Trust {
    /// The daemon's trust, from its config: probe files owned by root or
    /// the service user, signatures as `require_signatures` says, keys
    /// from `trusted_keys_dir`.
    pub fn for_config(config: &telem_core::config::Config) -> Trust {
        Trust {
            owners: Owners::for_service(&config.crash.service_user),
            require_signatures: config.probes.require_signatures,
            trusted_keys_dir: config.probes.trusted_keys_dir.clone(),
        }
    }

    /// Root and this process's user may own probe files; no signature
    /// required (tests and benches).
    pub fn this_process() -> Trust {
        Trust {
            owners: Owners::of(&[0, rustix::process::geteuid().as_raw()]),
            require_signatures: false,
            trusted_keys_dir: PathBuf::new(),
        }
    }
}

struct Slot {
    /// The trusted key that signed the file, as `NAME (KEY ID)`.
    signed_by: Option<String>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    task: Option<JoinHandle<()>>,
    seen: Seen,
}

impl Loaded for Slot {
    fn name(&self) -> &str {
        &self.probe.name
    }
    fn hash(&self) -> &str {
        &self.probe.hash
    }
    fn seen(&self) -> Seen {
        self.seen
    }
    fn refresh(&mut self, seen: Seen, signed_by: Option<String>) {
        self.seen = seen;
        self.signed_by = signed_by;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A task on the probes' runtime that is stopped when whoever waits for
/// it stops waiting.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The probe manager.
pub struct ProbeManager {
    sandbox: Arc<Sandbox>,
    /// The probes' own runtime (`probe_runtime.rs`): every call and every
    /// load runs there, at a lower CPU priority (nice 10).
    runtime: tokio::runtime::Handle,
    ingest: Arc<Ingest>,
    dirs: Vec<PathBuf>,
    /// The `[probes.NAME]` grants; replaced whole by a config reload.
    policies: std::sync::RwLock<Arc<BTreeMap<String, ProbePolicy>>>,
    /// The probe files and what became of them. Never held across an
    /// await, I/O or another lock but a probe's state (taken inside it).
    registry: Mutex<Registry<Slot>>,
    /// Where the names of the probes an admin disabled with `telemctl
    /// probe disable` are kept (one per line), so the choice survives
    /// restarts.
    disabled_file: PathBuf,
    /// Signalled when a probe granted the crash trigger starts running, so
    /// crashes that waited in the inbox for one are handed over then.
    crash_probe_loaded: tokio::sync::Notify,
    /// Turns true once the first scan (the probes present at start) is done.
    first_scan: tokio::sync::watch::Sender<bool>,
    /// Held by a scan (and a reload) for its whole run.
    scan_lock: tokio::sync::Mutex<()>,
    /// Where the event sources are and their cursors are kept.
    sources: SourceOptions,
    /// Who may install probes, and whether they must be signed; replaced
    /// whole by a config reload.
    trust: std::sync::RwLock<Arc<Trust>>,
}

impl std::fmt::Debug for ProbeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeManager")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProbeManager {
    /// Runs `work` on the probes' runtime and waits for it. Dropping the
    /// wait (a probe disabled, reloaded or unloaded mid-call) stops the
    /// work too, as it did when calls ran on the caller's runtime. A task
    /// that ends without an answer (the runtime shutting down, a panic) is
    /// a [`CallError::Stopped`].
    async fn on_probe_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, CallError> {
        let mut task = AbortOnDrop(self.runtime.spawn(work));
        (&mut task.0)
            .await
            .map_err(|e| CallError::Stopped(e.to_string()))
    }

    /// A manager over `dirs` with the admin's `policies`, whose calls and
    /// loads run on `runtime`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sandbox: Sandbox,
        runtime: tokio::runtime::Handle,
        ingest: Arc<Ingest>,
        dirs: Vec<PathBuf>,
        policies: BTreeMap<String, ProbePolicy>,
        disabled_file: PathBuf,
        sources: SourceOptions,
        trust: Trust,
    ) -> Arc<Self> {
        let disabled: HashSet<String> = std::fs::read_to_string(&disabled_file)
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Arc::new(ProbeManager {
            registry: Mutex::new(Registry::new(disabled)),
            disabled_file,
            sandbox: Arc::new(sandbox),
            runtime,
            ingest,
            dirs,
            policies: std::sync::RwLock::new(Arc::new(policies)),
            crash_probe_loaded: tokio::sync::Notify::new(),
            first_scan: tokio::sync::watch::Sender::new(false),
            scan_lock: tokio::sync::Mutex::new(()),
            sources,
            trust: std::sync::RwLock::new(Arc::new(trust)),
        })
    }

    /// The grants in force.
    fn policies(&self) -> Arc<BTreeMap<String, ProbePolicy>> {
        self.policies.read().expect("policies lock").clone()
    }

    /// The trust in force.
    fn trust(&self) -> Arc<Trust> {
        self.trust.read().expect("trust lock").clone()
    }

    /// A config reload: new grants and trust, then every probe loaded
    /// again under them, so `probe info` shows what it runs with now. The
    /// swap happens under the scan lock (no load sees half of it); if the
    /// lock cannot be had, nothing changes. Unlike `telemctl probe
    /// reload`, components whose compilation once stopped the daemon stay
    /// out.
    pub async fn reconfigure(
        self: &Arc<Self>,
        policies: BTreeMap<String, ProbePolicy>,
        trust: Trust,
    ) -> Result<(), ProbeError> {
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        *self.policies.write().expect("policies lock") = Arc::new(policies);
        *self.trust.write().expect("trust lock") = Arc::new(trust);
        let stopped = self.registry().forget_all();
        drop(stopped);
        self.scan_locked(false).await;
        Ok(())
    }

    /// The registry, for a step that neither waits nor takes another lock.
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry<Slot>> {
        self.registry.lock().expect("probe registry lock")
    }

    /// Probe files found and not loaded, with why.
    pub fn refused(&self) -> Vec<RefusedProbe> {
        self.registry()
            .refused()
            .map(|(file, reason)| RefusedProbe {
                file: file.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Lets every source batch in flight finish (records spooled, cursor
    /// saved) and starts no other, waiting at most `limit`; the daemon
    /// calls it when it stops and holds what it returns until it exits.
    pub async fn quiesce(&self, limit: Duration) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = self
            .registry()
            .cursor_files()
            .map(|c| c.commit.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        let mut held = Vec::new();
        for lock in locks {
            match tokio::time::timeout_at(deadline, lock.lock_owned()).await {
                Ok(guard) => held.push(guard),
                Err(_) => {
                    warn!("a probe's source batch did not finish within {} s; stopping anyway (a restart hands it again)", limit.as_secs());
                    break;
                }
            }
        }
        held
    }

    /// Components compiled since start (cache misses).
    pub fn compilations(&self) -> u64 {
        self.sandbox
            .compilations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns once a probe granted the crash trigger has been loaded since
    /// the last time this returned (at most one waiter is meant).
    pub async fn crash_probe_loaded(&self) {
        self.crash_probe_loaded.notified().await;
    }

    /// Waits (at most `limit`) until the probes present at start have been
    /// loaded or refused, so a request naming a probe right after start
    /// does not fail only because loading is still under way. Returns
    /// whether the first scan is done.
    pub async fn first_scan_done(&self, limit: Duration) -> bool {
        let mut rx = self.first_scan.subscribe();
        let done = tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok());
        done
    }

    /// Loads the probes present now, then follows the directories until
    /// the task is dropped: at once when the kernel tells of a change
    /// (two passes [`QUICK_SETTLE`] apart, so a file still being written
    /// is not loaded half), and every `interval` whatever it tells. The
    /// daemon runs this after its sockets are bound, so a slow or hostile
    /// probe file never delays start-up.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let (wake, mut woken) = tokio::sync::mpsc::channel(1);
        let mut dirs = dir_watch::DirWatch::new(wake);
        dirs.watch(&self.dirs);
        self.scan(false).await;
        self.first_scan.send_replace(true);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {
                    self.scan(true).await;
                }
                Some(()) = woken.recv() => {
                    // Changes come in bursts (a copy writes many times):
                    // a pass once they pause, another once the file has
                    // looked the same for a while.
                    tokio::time::sleep(QUICK_SETTLE).await;
                    while woken.try_recv().is_ok() {}
                    self.scan(true).await;
                    tokio::time::sleep(QUICK_SETTLE).await;
                    self.scan(true).await;
                }
            }
            dirs.watch(&self.dirs);
        }
    }

    /// Called as the daemon stops: compilations under way are interrupted,
    /// not crashed, and must not keep their probes out at the next start.
    pub fn release_compile_markers(&self) {
        self.sandbox.cache().release_running_markers();
    }

    /// Forgets every probe and loads the directories afresh (lifts
    /// quarantines, and tries again components whose compilation once
    /// stopped the daemon).
    pub async fn reload(self: &Arc<Self>) -> Result<(), ProbeError> {
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        self.sandbox.cache().clear_crash_markers();
        let stopped = self.registry().forget_all();
        drop(stopped);
        self.scan_locked(false).await;
        Ok(())
    }

    /// Stops a probe and keeps it off across restarts.
    pub async fn disable(&self, name: &str) -> Result<(), ProbeError> {
        // Not while a scan may be putting this very probe back.
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        if self.registry().named(name).is_none() {
            return Err(ProbeError::NotLoaded(name.to_owned()));
        }
        self.set_disabled(name, true)?;
        info!(probe = name, "probe disabled by the admin");
        Ok(())
    }

    /// Lets a disabled probe load again (at once).
    pub async fn enable(self: &Arc<Self>, name: &str) -> Result<(), ProbeError> {
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        self.set_disabled(name, false)?;
        self.registry().retry_failed();
        self.scan_locked(false).await;
        if self.find(name).is_none() {
            return Err(ProbeError::EnabledNotLoaded(name.to_owned()));
        }
        Ok(())
    }

    /// Records the admin's choice in the disabled-probes file, then
    /// applies it (a disabled probe stops); the caller holds the scan
    /// lock, so neither writes nor choices cross.
    fn set_disabled(&self, name: &str, off: bool) -> Result<(), ProbeError> {
        let text = self.registry().disabled_file_text(name, off);
        self.write_disabled_file(&text)?;
        let stopped = self.registry().set_disabled(name, off);
        drop(stopped);
        Ok(())
    }

    fn write_disabled_file(&self, text: &str) -> Result<(), ProbeError> {
        telem_core::fsutil::write_atomic(&self.disabled_file, text.as_bytes(), 0o644).map_err(
            |source| ProbeError::RecordChoice {
                path: self.disabled_file.clone(),
                source,
            },
        )
    }

    /// Names of probes the admin disabled.
    pub fn disabled(&self) -> Vec<String> {
        self.registry().disabled()
    }

    /// Probes the config turns off (`[probes.NAME] enabled = false`).
    pub fn disabled_in_config(&self) -> Vec<String> {
        self.policies()
            .iter()
            .filter(|(_, p)| p.enabled == Some(false))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Clears a probe's private state (`telemctl probe reset`). Its
    /// source cursors stay: what it reported stays reported.
    pub async fn reset(&self, name: &str) -> Result<(), ProbeError> {
        self.first_scan_done(FIRST_SCAN_WAIT).await;
        let (probe, _) = self
            .find(name)
            .ok_or_else(|| ProbeError::NotLoaded(name.to_owned()))?;
        // Not under a call: its writes would land on the cleared state.
        let _no_call = probe.call_lock.lock().await;
        probe
            .state
            .lock()
            .expect("state lock")
            .clear()
            .map_err(|source| ProbeError::Reset {
                name: name.to_owned(),
                source,
            })?;
        info!(probe = name, "probe state cleared by the admin");
        Ok(())
    }

    fn find(&self, name: &str) -> Option<(Arc<LoadedProbe>, Arc<Mutex<ProbeState>>)> {
        self.registry()
            .named(name)
            .map(|s| (s.probe.clone(), s.state.clone()))
    }

    /// Runs a probe now with `args` (the manual trigger) and returns its result.
    /// With `report`, what the run stored and how many records the host
    /// refused meanwhile (`telemctl probe run` shows them).
    pub async fn run_now(
        &self,
        name: &str,
        args: Vec<String>,
        report: bool,
    ) -> Result<RunReport, ProbeError> {
        self.first_scan_done(FIRST_SCAN_WAIT).await;
        let (probe, state) = self
            .find(name)
            .ok_or_else(|| ProbeError::NotLoaded(name.to_owned()))?;
        if let ProbeState::Quarantined(why) = &*state.lock().expect("state lock") {
            return Err(ProbeError::Quarantined {
                name: name.to_owned(),
                why: why.clone(),
            });
        }
        let copies = Arc::new(Mutex::new(Vec::new()));
        let sink = if report {
            telem_sandbox::Sink::SpoolAndCopy(self.ingest.clone(), copies.clone())
        } else {
            telem_sandbox::Sink::Spool(self.ingest.clone())
        };
        let before = probe.stats.lock().expect("stats lock").clone();
        self.call_with(
            &probe,
            &state,
            Event::Manual(args),
            &[],
            sink,
            Quarantine::Counts,
        )
        .await?;
        // A probe's calls run one at a time, but another may start
        // between this one's end and this read: upper bounds.
        let after = probe.stats.lock().expect("stats lock").clone();
        let records = std::mem::take(&mut *copies.lock().expect("copy lock"));
        Ok(RunReport {
            records,
            stored: after.records_sent - before.records_sent,
            refused: after.records_refused - before.records_refused,
        })
    }

    /// Hands a crash to every running probe granted the crash trigger, each
    /// with read access to the crash's inbox entry for that call only; their
    /// records go to `intake`. Returns each probe's name and result (empty
    /// when none handles crashes) and the records they sent.
    pub async fn crash(
        &self,
        report: telem_sandbox::CrashReport,
        entry: &Path,
        exe: Option<&crate::crash_exe::ExeView>,
        intake: Arc<dyn telem_sandbox::RecordIntake>,
    ) -> (
        Vec<(String, Result<(), CallError>)>,
        Vec<telem_sandbox::Captured>,
    ) {
        let copies = Arc::new(Mutex::new(Vec::new()));
        let targets: Vec<(Arc<LoadedProbe>, Arc<Mutex<ProbeState>>)> = self
            .registry()
            .slots()
            .filter(|s| s.probe.grant.crashes)
            .filter(|s| *s.state.lock().expect("state lock") == ProbeState::Running)
            .map(|s| (s.probe.clone(), s.state.clone()))
            .collect();
        let mut out = Vec::new();
        for (probe, state) in targets {
            let sink = telem_sandbox::Sink::SpoolAndCopy(intake.clone(), copies.clone());
            let mut extra = vec![ExtraDir::host_owned(entry)];
            // The crashed program, to a probe whose grant does not reach it.
            if let (Some(view), Some(path)) = (exe, &report.process_path) {
                if !grant_reaches(&probe, Path::new(path)) {
                    extra.push(view.extra_dir());
                }
            }
            let r = self
                .call_with(
                    &probe,
                    &state,
                    Event::Crash(report.clone()),
                    &extra,
                    sink,
                    Quarantine::Exempt,
                )
                .await;
            out.push((probe.name.clone(), r));
        }
        let copies = std::mem::take(&mut *copies.lock().expect("copy lock"));
        (out, copies)
    }

    /// Whether every running crash probe's grant reaches `path` (then the
    /// crashed program need not be copied for the call).
    pub fn crash_grants_reach(&self, path: &Path) -> bool {
        self.registry()
            .slots()
            .filter(|s| s.probe.grant.crashes)
            .all(|s| grant_reaches(&s.probe, path))
    }

    /// Every loaded probe.
    pub fn list(&self) -> Vec<ProbeInfo> {
        // Taken out first: a probe's state lock may be held by a commit
        // (an fsync), and the slots must not wait for it.
        let slots: Vec<SlotParts> = self
            .registry()
            .slots()
            .map(|s| {
                (
                    s.probe.clone(),
                    s.state.clone(),
                    s.cursors.clone(),
                    s.signed_by.clone(),
                )
            })
            .collect();
        let mut v: Vec<ProbeInfo> = slots
            .into_iter()
            .map(|(probe, state, cursors, signed_by)| {
                let quota = probe.grant.state_quota_bytes;
                let (state_bytes, state_keys) = {
                    let mut st = probe.state.lock().expect("state lock");
                    (st.bytes(quota), st.len(quota))
                };
                // Each lock on its own, never two at once: a call failing
                // holds the counters and then sets the state (a
                // quarantine), and a temporary in the literal below would
                // hold the state while waiting for the counters.
                let run_state = state.lock().expect("state lock").clone();
                let stats = probe.stats.lock().expect("stats lock").clone();
                ProbeInfo {
                    triggers: probe
                        .manifest
                        .triggers
                        .iter()
                        .map(|t| match t {
                            Trigger::OnStart => "on start".to_owned(),
                            Trigger::Interval(_) => match probe.grant.interval_secs {
                                Some(s) => format!("every {s} s"),
                                None => "interval (not granted)".to_owned(),
                            },
                            Trigger::Crash if probe.grant.crashes => "crashes".to_owned(),
                            Trigger::Crash => "crashes (not granted)".to_owned(),
                            Trigger::Manual => "manual".to_owned(),
                        })
                        .collect(),
                    state_bytes,
                    state_keys,
                    sources: cursors.describe(&probe),
                    name: probe.name.clone(),
                    version: probe.manifest.version.clone(),
                    description: probe.manifest.description.clone(),
                    file: probe.file.clone(),
                    state: run_state,
                    requested: probe.request.clone(),
                    granted: probe.grant.clone(),
                    stats,
                    sha256: probe.hash.clone(),
                    pinned_sha256: self
                        .policies()
                        .get(&probe.name)
                        .and_then(|p| p.sha256.as_ref())
                        .map(|p| p.to_string()),
                    signed_by,
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Whether `probe` may read `path` through its grant's read paths.
fn grant_reaches(probe: &LoadedProbe, path: &Path) -> bool {
    probe.grant.read_paths.iter().any(|p| path.starts_with(p))
}
