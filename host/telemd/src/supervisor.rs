//! Keeps the probe directories and the running probes in step: loads
//! components as they appear, reloads them when replaced, stops them when
//! removed, fires their triggers, and retries a failing probe with growing
//! delays until it is quarantined.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::ingest::Ingest;
use crate::sources::{BatchConsumer, CursorFile, SourceOptions};
use telem_core::control::{ProbeInfo, ProbeState, RefusedProbe};
use telem_core::grants::ProbePolicy;
use telem_core::provenance::{self, Owners, Signatures};
use telem_sandbox::{CallError, Event, ExtraDir, LoadedProbe, Sandbox, Source, Trigger};

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

/// Why a probe file was not loaded, or an admin's request about a probe
/// was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Over `max_component_bytes`, by its size on disk.
    #[error("{}: {size} bytes is over max_component_bytes ({cap}); not compiled", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The sandbox refused it.
    #[error(transparent)]
    Load(#[from] telem_sandbox::LoadError),
    /// Its ownership, digest or signature says it is not the admin's: it
    /// was neither compiled nor asked to describe itself.
    #[error("{}: refused: {refusal}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        refusal: provenance::FileRefusal,
    },
    /// Its name is not its file's: grants are keyed by name.
    #[error("{}: the component calls itself {name}, but a probe's file must be named after it ({name}.wasm); not loaded", path.display())]
    NameNotFile {
        /// The file.
        path: PathBuf,
        /// The name it claims.
        name: String,
    },
    /// `telemctl probe disable` turned it off.
    #[error("{}: probe {name} is disabled (telemctl probe enable {name} turns it back on)", path.display())]
    DisabledByAdmin {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
    },
    /// `[probes.NAME] enabled = false`.
    #[error("{}: probe {name} is disabled by [probes.{name}] enabled = false", path.display())]
    DisabledByConfig {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
    },
    /// Another file holds a probe of that name.
    #[error("{}: a probe named {name} is already loaded from {}", path.display(), other.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
        /// The file already loaded.
        other: PathBuf,
    },
    /// No loaded probe has that name.
    #[error("no probe named {0} is loaded")]
    NotLoaded(String),
    /// Enabled, but nothing by that name loaded.
    #[error("probe {0} is enabled but no component by that name loaded (see the log)")]
    EnabledNotLoaded(String),
    /// Quarantined until reload.
    #[error("probe {name} is quarantined ({why}); run `telemctl probe reload` first")]
    Quarantined {
        /// The probe.
        name: String,
        /// Why.
        why: String,
    },
    /// Its private state could not be cleared.
    #[error("cannot clear the state of probe {name}: {source}")]
    Reset {
        /// The probe.
        name: String,
        /// Why.
        #[source]
        source: telem_sandbox::state_store::StateError,
    },
    /// The disabled-probes file could not be written.
    #[error("cannot record the choice in {}: {source}", path.display())]
    RecordChoice {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A scan (compiling, say) held the probes for longer than
    /// [`FIRST_SCAN_WAIT`].
    #[error("the probes are being loaded (a scan is under way); try again")]
    Busy,
}

/// What `list` takes of a slot before it reads each probe's state.
type SlotParts = (
    Arc<LoadedProbe>,
    Arc<Mutex<ProbeState>>,
    Arc<CursorFile>,
    Option<String>,
);

/// A file's size and mtime, and a stamp of what its provenance depends on:
/// what tells a scan that it changed. The stamp covers the inode, owner,
/// mode and change time of the file and its directory, its signature
/// file's, and the trusted keys directory's: a `chmod`, a `chown`, a file
/// replaced with its old mtime kept, a signature put beside it or a key
/// added are each noticed, and the file is checked again.
type Seen = (u64, SystemTime, u64);

/// The provenance stamp of [`Seen`].
fn provenance_stamp(file: &std::fs::Metadata, path: &Path, keys_dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut meta = |m: Option<std::fs::Metadata>| match m {
        Some(m) => (
            m.dev(),
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(&mut h),
        None => 0u8.hash(&mut h),
    };
    meta(Some(file.clone()));
    meta(path.parent().and_then(|d| std::fs::metadata(d).ok()));
    meta(Signatures::signature_path(path).and_then(|s| std::fs::symlink_metadata(s).ok()));
    meta(std::fs::metadata(keys_dir).ok());
    h.finish()
}

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
    policies: BTreeMap<String, ProbePolicy>,
    slots: Mutex<HashMap<PathBuf, Slot>>,
    /// Files seen but not loaded yet (waiting to be stable) or that failed,
    /// with the (size, mtime) they had.
    pending: Mutex<HashMap<PathBuf, (Seen, bool)>>,
    /// Probes an admin disabled with `telemctl probe disable`, kept in a file
    /// (one name per line) so the choice survives restarts.
    disabled: Mutex<HashSet<String>>,
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
    /// Each probe name's cursor file, kept across reloads: a replaced
    /// probe's last save cannot then undo its successor's.
    cursor_files: Mutex<HashMap<String, Arc<CursorFile>>>,
    /// Who may install probes, and whether they must be signed.
    trust: Trust,
    /// Files found and not loaded, with why (`telemctl probe list`).
    refused: Mutex<BTreeMap<PathBuf, String>>,
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
        let disabled = std::fs::read_to_string(&disabled_file)
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Arc::new(ProbeManager {
            disabled: Mutex::new(disabled),
            disabled_file,
            sandbox: Arc::new(sandbox),
            runtime,
            ingest,
            dirs,
            policies,
            slots: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            crash_probe_loaded: tokio::sync::Notify::new(),
            first_scan: tokio::sync::watch::Sender::new(false),
            scan_lock: tokio::sync::Mutex::new(()),
            sources,
            cursor_files: Mutex::new(HashMap::new()),
            trust,
            refused: Mutex::new(BTreeMap::new()),
        })
    }

    /// Probe files found and not loaded, with why.
    pub fn refused(&self) -> Vec<RefusedProbe> {
        self.refused
            .lock()
            .expect("refused lock")
            .iter()
            .map(|(file, reason)| RefusedProbe {
                file: file.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Where the event sources are.
    pub fn source_options(&self) -> &SourceOptions {
        &self.sources
    }

    /// Lets every source batch in flight finish (records spooled, cursor
    /// saved) and starts no other, waiting at most `limit`; the daemon
    /// calls it when it stops and holds what it returns until it exits.
    pub async fn quiesce(&self, limit: Duration) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = self
            .cursor_files
            .lock()
            .expect("cursor files lock")
            .values()
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

    /// Why a probe's source directory may not be read now, if it may
    /// not: checked like a granted path, before every scan (so not even a
    /// file name is shown): never into the daemon's own directories, and,
    /// when the safe set granted it (no admin's `read_paths`), still in
    /// the safe set once resolved, relative to `sources_root`.
    pub fn source_dir_refusal(&self, probe: &LoadedProbe, dir: &Path) -> Option<String> {
        let real = dir.canonicalize().ok()?;
        if let Some(why) = telem_core::grants::never_grantable(&real, self.sandbox.host_rules()) {
            return Some(format!("it resolves to {}: {why}", real.display()));
        }
        if probe.grant.read_paths_by_admin {
            return None;
        }
        let root = self
            .sources
            .sources_root
            .canonicalize()
            .unwrap_or_else(|_| self.sources.sources_root.clone());
        let logical = real
            .strip_prefix(&root)
            .map(|rest| Path::new("/").join(rest))
            .ok();
        match logical {
            Some(l) if telem_core::grants::is_safe_path(&l) => None,
            _ => Some(format!(
                "it resolves to {}, outside the safe set it was granted from",
                real.display()
            )),
        }
    }

    /// Components compiled since start (cache misses).
    pub fn compilations(&self) -> u64 {
        self.sandbox
            .compilations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn wasm_files(&self) -> HashMap<PathBuf, Seen> {
        let mut out = HashMap::new();
        for dir in &self.dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "wasm") {
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        // A symlink is listed too, to be refused with why.
                        if m.is_file() || m.file_type().is_symlink() {
                            let stamp = provenance_stamp(&m, &p, &self.trust.trusted_keys_dir);
                            out.insert(p, (m.len(), m.modified().unwrap_or(UNIX_EPOCH), stamp));
                        }
                    }
                }
            }
        }
        out
    }

    /// One pass over the probe directories. With `settle`, a new or changed
    /// file is loaded only once it looked the same on two passes (so a
    /// half-copied file is not loaded); at start-up files load at once.
    pub async fn scan(self: &Arc<Self>, settle: bool) {
        let _one_at_a_time = self.scan_lock.lock().await;
        self.scan_locked(settle).await;
    }

    /// [`Self::scan`], its caller holding `scan_lock`: scans never overlap,
    /// so a slow compile is not started twice nor taken for a crash.
    async fn scan_locked(self: &Arc<Self>, settle: bool) {
        let files = self.wasm_files();
        // Removed files.
        let removed: Vec<PathBuf> = {
            let slots = self.slots.lock().expect("slots lock");
            slots
                .keys()
                .filter(|p| !files.contains_key(*p))
                .cloned()
                .collect()
        };
        self.refused
            .lock()
            .expect("refused lock")
            .retain(|p, _| files.contains_key(p));
        for p in removed {
            if let Some(slot) = self.slots.lock().expect("slots lock").remove(&p) {
                info!(probe = %slot.probe.name, "probe file {} removed; probe stopped", p.display());
            }
        }
        self.pending
            .lock()
            .expect("pending lock")
            .retain(|p, _| files.contains_key(p));
        let mut changed = false;
        // In a fixed order (directories as configured, then by name), so
        // which of two same-named files wins does not change from run to run.
        let mut files: Vec<(PathBuf, Seen)> = files.into_iter().collect();
        files.sort_by_key(|(p, _)| (self.dirs.iter().position(|d| p.starts_with(d)), p.clone()));
        for (path, seen) in files {
            let known = self
                .slots
                .lock()
                .expect("slots lock")
                .get(&path)
                .map(|s| s.seen);
            if known == Some(seen) {
                continue;
            }
            {
                let mut pending = self.pending.lock().expect("pending lock");
                match pending.get(&path) {
                    Some((prev, failed)) if *prev == seen && *failed => continue,
                    Some((prev, _)) if *prev == seen || !settle => {}
                    _ if !settle => {}
                    _ => {
                        pending.insert(path.clone(), (seen, false));
                        continue;
                    }
                }
            }
            changed = true;
            match self.load_file(&path, seen).await {
                Ok(()) => {
                    self.pending.lock().expect("pending lock").remove(&path);
                    self.refused.lock().expect("refused lock").remove(&path);
                }
                Err(e) => {
                    warn!("probe not loaded: {e}");
                    // A probe the admin turned off is not refused: `status`
                    // lists it as disabled.
                    let reason = match &e {
                        ProbeError::DisabledByAdmin { .. }
                        | ProbeError::DisabledByConfig { .. } => None,
                        ProbeError::Refused { refusal, .. } => Some(refusal.to_string()),
                        e => Some(e.to_string()),
                    };
                    let mut refused = self.refused.lock().expect("refused lock");
                    match reason {
                        Some(r) => refused.insert(path.clone(), r),
                        None => refused.remove(&path),
                    };
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .insert(path.clone(), (seen, true));
                }
            }
        }
        if changed {
            let in_use: HashSet<String> = self
                .slots
                .lock()
                .expect("slots lock")
                .values()
                .map(|s| s.probe.hash.clone())
                .collect();
            self.sandbox.cache().prune(&in_use);
        }
    }

    async fn load_file(self: &Arc<Self>, path: &Path, seen: Seen) -> Result<(), ProbeError> {
        let cap = self.sandbox.max_component_bytes();
        if seen.0 > cap {
            return Err(ProbeError::TooLarge {
                path: path.to_owned(),
                size: seen.0,
                cap,
            });
        }
        let read_error = |source| ProbeError::Read {
            path: path.to_owned(),
            source,
        };
        let refused = |refusal| ProbeError::Refused {
            path: path.to_owned(),
            refusal,
        };
        // Who could have put it there, checked on the file as opened (what
        // is read is what was checked) and on the directories above it.
        let (file, meta) = provenance::open_probe_file(path).map_err(read_error)?;
        let top = self
            .dirs
            .iter()
            .find(|d| path.starts_with(d))
            .map_or_else(|| path.parent().unwrap_or(path).to_owned(), Clone::clone);
        provenance::check_tree(path, &meta, &top, &self.trust.owners).map_err(refused)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut bytes)
            .map_err(read_error)?;
        let hash = telem_sandbox::cache::sha256_hex(&bytes);
        // The name a grant, a pin or a signature is for: the file's (a
        // component claiming another name is refused below).
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default();
        let pin = self.policies.get(&stem).and_then(|p| p.sha256.clone());
        provenance::check_pin(&stem, pin.as_deref(), &hash).map_err(refused)?;
        let signatures = Signatures::load(
            self.trust.require_signatures,
            &self.trust.trusted_keys_dir,
            &self.trust.owners,
        );
        for (key, why) in &signatures.skipped {
            warn!("trusted key {} not used: {why}", key.display());
        }
        let signed_by = signatures
            .check(path, &bytes, &self.trust.owners)
            .map_err(refused)?
            .map(|k| format!("{} ({})", k.name, k.key_id));
        if let Some(slot) = self.slots.lock().expect("slots lock").get_mut(path) {
            if slot.probe.hash == hash {
                slot.seen = seen;
                slot.signed_by = signed_by;
                return Ok(());
            }
        }
        let started = std::time::Instant::now();
        let compiled_before = self.compilations();
        let probe = {
            let (sandbox, policies, path) =
                (self.sandbox.clone(), self.policies.clone(), path.to_owned());
            self.on_probe_runtime(async move {
                sandbox
                    .load(&path, &bytes, |name| {
                        policies.get(name).cloned().unwrap_or_default()
                    })
                    .await
            })
            .await??
        };
        // Grants are keyed by name and the name is the probe's own claim:
        // it must match the file the admin installed, so no component can
        // take another's grant (the crash-symbolizer's, say) by its name.
        if stem != probe.name {
            return Err(ProbeError::NameNotFile {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        let how = if self.compilations() > compiled_before {
            "compiled"
        } else {
            "from cache"
        };
        if self
            .disabled
            .lock()
            .expect("disabled lock")
            .contains(&probe.name)
        {
            return Err(ProbeError::DisabledByAdmin {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        if self.policies.get(&probe.name).and_then(|p| p.enabled) == Some(false) {
            return Err(ProbeError::DisabledByConfig {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        {
            let slots = self.slots.lock().expect("slots lock");
            if let Some((other, _)) = slots
                .iter()
                .find(|(p, s)| s.probe.name == probe.name && p.as_path() != path)
            {
                return Err(ProbeError::Duplicate {
                    path: path.to_owned(),
                    name: probe.name.clone(),
                    other: other.clone(),
                });
            }
        }
        info!(
            probe = %probe.name,
            version = %telem_core::untrusted::escape(&probe.manifest.version, telem_core::untrusted::FIELD_CAP),
            "loaded {} ({how}, {} ms); grant: read {:?}, classifications {:?}, {} MiB, {} ms, {}/h, crashes {}, kernel log {}, {} files source(s), state {} KiB; {} request(s) refused{}",
            path.display(),
            started.elapsed().as_millis(),
            probe.grant.read_paths,
            probe.grant.classifications,
            probe.grant.memory_limit_mib,
            probe.grant.timeout_ms,
            probe.grant.max_records_per_hour,
            probe.grant.crashes,
            probe.grant.kernel_log,
            probe.grant.files.len(),
            probe.grant.state_quota_bytes >> 10,
            probe.grant.refused.len(),
            if probe.grant.refused.is_empty() {
                String::new()
            } else {
                format!(" (telemctl probe info {})", probe.name)
            }
        );
        let handles_crashes = probe.grant.crashes;
        let probe = Arc::new(probe);
        let state = Arc::new(Mutex::new(ProbeState::Running));
        let cursors = self
            .cursor_files
            .lock()
            .expect("cursor files lock")
            .entry(probe.name.clone())
            .or_insert_with(|| Arc::new(CursorFile::load(&self.sources.cursor_dir, &probe.name)))
            .clone();
        let task = tokio::spawn(drive(
            self.clone(),
            probe.clone(),
            state.clone(),
            cursors.clone(),
        ));
        self.slots.lock().expect("slots lock").insert(
            path.to_owned(),
            Slot {
                signed_by,
                probe,
                state,
                cursors,
                task: Some(task),
                seen,
            },
        );
        if handles_crashes {
            self.crash_probe_loaded.notify_one();
        }
        Ok(())
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

    /// The scan lock for an admin's request, waited for at most
    /// [`FIRST_SCAN_WAIT`]: a scan stuck compiling must not hang telemctl.
    async fn scan_lock_for_admin(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ProbeError> {
        tokio::time::timeout(FIRST_SCAN_WAIT, self.scan_lock.lock())
            .await
            .map_err(|_| ProbeError::Busy)
    }

    /// Loads the probes present now, then scans every `interval` until the
    /// task is dropped. The daemon runs this after its sockets are bound,
    /// so a slow or hostile probe file never delays start-up.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        self.scan(false).await;
        self.first_scan.send_replace(true);
        loop {
            tokio::time::sleep(interval).await;
            self.scan(true).await;
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
        self.slots.lock().expect("slots lock").clear();
        self.pending.lock().expect("pending lock").clear();
        self.scan_locked(false).await;
        Ok(())
    }

    /// Stops a probe and keeps it off across restarts.
    pub async fn disable(&self, name: &str) -> Result<(), ProbeError> {
        // Not while a scan may be putting this very probe back.
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        let path = {
            let slots = self.slots.lock().expect("slots lock");
            slots
                .iter()
                .find(|(_, s)| s.probe.name == name)
                .map(|(p, s)| (p.clone(), s.seen))
        };
        let Some((path, seen)) = path else {
            return Err(ProbeError::NotLoaded(name.to_owned()));
        };
        self.set_disabled(name, true)?;
        self.slots.lock().expect("slots lock").remove(&path);
        self.pending
            .lock()
            .expect("pending lock")
            .insert(path, (seen, true));
        info!(probe = name, "probe disabled by the admin");
        Ok(())
    }

    /// Lets a disabled probe load again (at once).
    pub async fn enable(self: &Arc<Self>, name: &str) -> Result<(), ProbeError> {
        let _one_at_a_time = self.scan_lock_for_admin().await?;
        self.set_disabled(name, false)?;
        self.pending.lock().expect("pending lock").clear();
        self.scan_locked(false).await;
        if self.find(name).is_none() {
            return Err(ProbeError::EnabledNotLoaded(name.to_owned()));
        }
        Ok(())
    }

    fn set_disabled(&self, name: &str, off: bool) -> Result<(), ProbeError> {
        let mut d = self.disabled.lock().expect("disabled lock");
        if off {
            d.insert(name.to_owned());
        } else {
            d.remove(name);
        }
        let mut names: Vec<&String> = d.iter().collect();
        names.sort();
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        telem_core::fsutil::write_atomic(&self.disabled_file, text.as_bytes(), 0o644).map_err(
            |source| ProbeError::RecordChoice {
                path: self.disabled_file.clone(),
                source,
            },
        )
    }

    /// Names of probes the admin disabled.
    pub fn disabled(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .disabled
            .lock()
            .expect("disabled lock")
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
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
        self.slots
            .lock()
            .expect("slots lock")
            .values()
            .find(|s| s.probe.name == name)
            .map(|s| (s.probe.clone(), s.state.clone()))
    }

    /// Runs a probe now with `args` (the manual trigger) and returns its result.
    pub async fn run_now(&self, name: &str, args: Vec<String>) -> Result<(), ProbeError> {
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
        Ok(self.call(&probe, &state, Event::Manual(args), &[]).await?)
    }

    /// Hands a crash to every running probe granted the crash trigger, each
    /// with read access to the crash's inbox entry for that call only.
    /// Returns each probe's name and result (empty when none handles
    /// crashes) and the records they sent.
    pub async fn crash(
        &self,
        report: telem_sandbox::CrashReport,
        entry: &Path,
    ) -> (
        Vec<(String, Result<(), CallError>)>,
        Vec<telem_sandbox::Captured>,
    ) {
        let copies = Arc::new(Mutex::new(Vec::new()));
        let targets: Vec<(Arc<LoadedProbe>, Arc<Mutex<ProbeState>>)> = self
            .slots
            .lock()
            .expect("slots lock")
            .values()
            .filter(|s| s.probe.grant.crashes)
            .filter(|s| *s.state.lock().expect("state lock") == ProbeState::Running)
            .map(|s| (s.probe.clone(), s.state.clone()))
            .collect();
        let mut out = Vec::new();
        for (probe, state) in targets {
            let sink = telem_sandbox::Sink::SpoolAndCopy(self.ingest.clone(), copies.clone());
            let r = self
                .call_with(
                    &probe,
                    &state,
                    Event::Crash(report.clone()),
                    &[ExtraDir::host_owned(entry)],
                    sink,
                    Quarantine::Exempt,
                )
                .await;
            out.push((probe.name.clone(), r));
        }
        let copies = std::mem::take(&mut *copies.lock().expect("copy lock"));
        (out, copies)
    }

    /// Every loaded probe.
    pub fn list(&self) -> Vec<ProbeInfo> {
        // Taken out first: a probe's state lock may be held by a commit
        // (an fsync), and the slots must not wait for it.
        let slots: Vec<SlotParts> = self
            .slots
            .lock()
            .expect("slots lock")
            .values()
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
                ProbeInfo {
                    state_bytes,
                    state_keys,
                    sources: cursors.describe(&probe),
                    name: probe.name.clone(),
                    version: probe.manifest.version.clone(),
                    description: probe.manifest.description.clone(),
                    file: probe.file.clone(),
                    state: state.lock().expect("state lock").clone(),
                    requested: probe.request.clone(),
                    granted: probe.grant.clone(),
                    stats: probe.stats.lock().expect("stats lock").clone(),
                    sha256: probe.hash.clone(),
                    pinned_sha256: self
                        .policies
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

    /// One supervised call: counts it, logs a failure with the probe's name,
    /// and quarantines the probe after [`QUARANTINE_AFTER`] failures in a row.
    async fn call(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
    ) -> Result<(), CallError> {
        let sink = telem_sandbox::Sink::Spool(self.ingest.clone());
        self.call_with(probe, state, event, extra, sink, Quarantine::Counts)
            .await
    }

    /// Hands a source batch to the probe until it takes it (true) or is
    /// quarantined (false). Its records are held until the call returns
    /// `ok`, so a failed try reports nothing and the next try starts clean.
    pub(crate) async fn deliver_batch(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
    ) -> bool {
        let mut delay = RETRY_BASE;
        // This batch's own failures: a probe whose timer calls succeed in
        // between (which reset its count) is quarantined all the same when
        // one batch keeps failing, so its source does not stall unseen.
        let mut failures = 0;
        loop {
            if matches!(
                *state.lock().expect("state lock"),
                ProbeState::Quarantined(_)
            ) {
                return false;
            }
            let held = Arc::new(Mutex::new(Vec::new()));
            let sink = telem_sandbox::Sink::Staged(self.ingest.clone(), held);
            let r = self
                .call_with(probe, state, event.clone(), extra, sink, Quarantine::Counts)
                .await;
            let Err(e) = r else { return true };
            failures += 1;
            if failures >= QUARANTINE_AFTER {
                if !matches!(
                    *state.lock().expect("state lock"),
                    ProbeState::Quarantined(_)
                ) {
                    let why = format!("the same source batch failed {failures} times, last: {e}");
                    warn!(probe = %probe.name, "probe quarantined until reload: {why}");
                    *state.lock().expect("state lock") = ProbeState::Quarantined(why);
                }
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BATCH_RETRY);
        }
    }

    async fn call_with(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
        sink: telem_sandbox::Sink,
        quarantine: Quarantine,
    ) -> Result<(), CallError> {
        let result = {
            let (sandbox, probe, extra) = (self.sandbox.clone(), probe.clone(), extra.to_vec());
            self.on_probe_runtime(async move { sandbox.run(&probe, sink, event, &extra).await })
                .await
                .unwrap_or_else(Err)
        };
        let mut st = probe.stats.lock().expect("stats lock");
        st.runs += 1;
        st.last_run = Some(unix_now());
        match &result {
            Ok(()) => st.failures_in_a_row = 0,
            Err(e) => {
                match e {
                    CallError::Timeout(_) => st.timeouts += 1,
                    CallError::Trap(_) => st.traps += 1,
                    _ => {}
                }
                st.last_error = Some(e.to_string());
                if quarantine == Quarantine::Exempt {
                    warn!(probe = %probe.name, "probe call failed on its input (not counted toward quarantine): {e}");
                    return result;
                }
                st.failures_in_a_row += 1;
                warn!(probe = %probe.name, failures_in_a_row = st.failures_in_a_row, "probe call failed: {e}");
                if st.failures_in_a_row >= QUARANTINE_AFTER {
                    let why = format!("{} failures in a row, last: {e}", st.failures_in_a_row);
                    warn!(probe = %probe.name, "probe quarantined until reload: {why}");
                    *state.lock().expect("state lock") = ProbeState::Quarantined(why);
                }
            }
        }
        result
    }
}

/// Whether a failed call counts toward quarantine. Crash calls do not: a
/// hostile core makes the probe fail through no fault of its own, the
/// daemon records that crash itself, and real crashes must not then wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quarantine {
    Counts,
    Exempt,
}

/// Runs a probe's triggers and event sources side by side until the probe
/// is stopped (its slot dropped: every part with it).
async fn drive(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
) {
    let mut parts = tokio::task::JoinSet::new();
    parts.spawn(drive_triggers(mgr.clone(), probe.clone(), state.clone()));
    for source in &probe.manifest.sources {
        match source {
            Source::KernelLog(limits) if probe.grant.kernel_log => {
                parts.spawn(crate::sources::kmsg::drive(
                    mgr.clone(),
                    probe.clone(),
                    state.clone(),
                    cursors.clone(),
                    *limits,
                ));
            }
            Source::Files(f) => {
                let granted = probe
                    .grant
                    .files
                    .iter()
                    .find(|w| w.dir == Path::new(&f.dir) && w.pattern == f.pattern);
                if let Some(w) = granted {
                    parts.spawn(crate::sources::files::drive(
                        mgr.clone(),
                        probe.clone(),
                        state.clone(),
                        cursors.clone(),
                        w.clone(),
                        f.limits,
                    ));
                }
            }
            Source::Journal(j) if probe.grant.journal.is_some() => {
                parts.spawn(crate::sources::journal::drive(
                    mgr.clone(),
                    probe.clone(),
                    state.clone(),
                    cursors.clone(),
                    j.clone(),
                ));
            }
            Source::KernelLog(_) | Source::Journal(_) => {}
        }
    }
    while parts.join_next().await.is_some() {}
}

/// Fires a probe's triggers: on start, then every interval plus a random
/// splay. A failed call is retried with doubling delays until it succeeds
/// or the probe is quarantined.
async fn drive_triggers(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
) {
    let on_start = probe
        .manifest
        .triggers
        .iter()
        .any(|t| matches!(t, Trigger::OnStart));
    let interval = probe.grant.interval_secs.map(Duration::from_secs);
    if on_start && !supervised(&mgr, &probe, &state, Event::Start).await {
        return;
    }
    let Some(every) = interval else { return };
    loop {
        let splay_cap = (every / 10).min(MAX_SPLAY);
        let splay = Duration::from_millis(rand::random_range(0..=splay_cap.as_millis() as u64));
        tokio::time::sleep(every + splay).await;
        if !supervised(&mgr, &probe, &state, Event::Timer).await {
            return;
        }
    }
}

/// Calls until success (true) or quarantine (false).
async fn supervised(
    mgr: &ProbeManager,
    probe: &Arc<LoadedProbe>,
    state: &Mutex<ProbeState>,
    event: Event,
) -> bool {
    let mut delay = RETRY_BASE;
    loop {
        if mgr.call(probe, state, event.clone(), &[]).await.is_ok() {
            return true;
        }
        if matches!(
            *state.lock().expect("state lock"),
            ProbeState::Quarantined(_)
        ) {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

impl BatchConsumer for ProbeManager {
    fn source_options(&self) -> &SourceOptions {
        ProbeManager::source_options(self)
    }

    fn source_dir_refusal(&self, probe: &LoadedProbe, dir: &Path) -> Option<String> {
        ProbeManager::source_dir_refusal(self, probe, dir)
    }

    fn deliver_batch<'a>(
        &'a self,
        probe: &'a Arc<LoadedProbe>,
        state: &'a Mutex<ProbeState>,
        event: Event,
        extra: &'a [ExtraDir],
    ) -> impl std::future::Future<Output = bool> + Send + 'a {
        ProbeManager::deliver_batch(self, probe, state, event, extra)
    }
}
