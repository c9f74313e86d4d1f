//! The WASM probe host: loads WASI preview-2 components from the probe
//! directories and runs each, per call, in a fresh store holding only its
//! grant: read-only preopens of granted paths, no network, no environment
//! or arguments, closed stdin, captured and capped stdout/stderr, one
//! memory budget for the whole store, capped instances, tables and host
//! resources, and a wall-time deadline that holds inside host calls too
//! (the epoch stops spinning guests; a host-side timeout drops a call
//! parked in a WASI sleep or read). Records go through the same ingest path
//! as native ones.

pub mod cache;
pub mod file_views;
pub mod grants;
pub mod limits;
pub mod probe_log;
pub mod shape;
pub mod supervisor;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use self::file_views::FileViews;
use self::grants::{Grant, HostRules, Request};
use self::limits::{StoreBudget, MAX_HOST_RESOURCES};
use self::probe_log::{escape, probe_log_limit, LogLimit, FIELD_CAP, LOG_LINE_CAP};
use crate::ingest::{Ingest, IngestError};
use crate::record::{random_id, Record};

/// Host-side bindings of `wit/probe.wit`.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "probe",
        imports: { default: async },
        exports: { default: async },
    });
}

use self::bindings::telemetrics;
use self::bindings::{Probe, ProbePre};
pub use self::telemetrics::probe::types::{CrashReport, Event, Manifest, Trigger};
use self::telemetrics::probe::types::{SendError, TelemetryRecord};

/// Contract versions this host accepts: every 0.1.x.
pub const ACCEPTED_CONTRACT: &str = "telemetrics:probe@0.1";
/// Epoch tick; deadlines are checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a call's stdout and of its stderr kept for the log.
pub const OUTPUT_CAP: usize = 16 * 1024;
/// Wall time `describe` gets: it only returns a manifest.
pub const DESCRIBE_TIMEOUT_MS: u64 = 2000;
/// Memory cap of the `describe` store.
pub const DESCRIBE_MEMORY: usize = 16 << 20;
/// Wall time compiling one component may take before its load fails.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of `max_component_bytes`: larger probe files are not compiled.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 16 << 20;
/// Time a call gets past its deadline to be stopped by the epoch before
/// the host-side timeout drops it (a guest parked in a host call).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(200);

/// Why a probe call failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// The call ran past its deadline and was stopped.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The guest trapped (including a memory grow past its cap).
    #[error("trapped: {0}")]
    Trap(String),
    /// `handle` returned an error.
    #[error("probe error: {0}")]
    Guest(String),
    /// The sandbox could not be set up (e.g. a granted path is missing).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

impl CallError {
    /// Whether the call was stopped at its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::Timeout(_))
    }
}

/// Counters and last state of one probe, for `telemctl probe list`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeStats {
    /// Calls of `handle`.
    pub runs: u64,
    /// Traps (memory cap included).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Records stored.
    pub records_sent: u64,
    /// Records refused (classification, hourly cap, invalid, host refusal).
    pub records_refused: u64,
    /// Unix time of the last run.
    pub last_run: Option<u64>,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// Failures in a row (reset by a success).
    pub failures_in_a_row: u32,
}

/// A loaded probe.
pub struct LoadedProbe {
    /// Manifest name.
    pub name: String,
    /// The component file.
    pub file: PathBuf,
    /// sha256 of the file, hex.
    pub hash: String,
    /// What `describe` returned.
    pub manifest: Manifest,
    /// What it asked for.
    pub request: Request,
    /// What it runs with.
    pub grant: Grant,
    /// The component linked once, at load: each call only instantiates it
    /// in its fresh store.
    pre: ProbePre<HostState>,
    /// Counters.
    pub stats: Mutex<ProbeStats>,
    sends: Mutex<VecDeque<Instant>>,
    log_gate: Mutex<LogLimit>,
}

impl std::fmt::Debug for LoadedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedProbe")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish()
    }
}

/// Where a probe call's records go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Validated, enriched with host metadata and spooled (the daemon).
    Spool(Arc<Ingest>),
    /// Checked against the grant and kept in memory, never sent: an admin's
    /// triage run (`telemctl crash symbolize`).
    Capture(Arc<Mutex<Vec<Captured>>>),
    /// Spooled, with a copy kept for the caller (the crash handler's `-v`
    /// prints what was recorded).
    SpoolAndCopy(Arc<Ingest>, Arc<Mutex<Vec<Captured>>>),
}

/// A record a probe sent into a [`Sink::Capture`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Captured {
    /// Classification.
    pub classification: String,
    /// Severity.
    pub severity: u8,
    /// Payload.
    pub payload: String,
}

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    budget: StoreBudget,
    probe: Option<Arc<LoadedProbe>>,
    sink: Option<Sink>,
    name: String,
    /// `describe`'s own log allowance (a loaded probe uses its shared one).
    describe_log: LogLimit,
}

impl HostState {
    fn new(
        name: String,
        wasi: WasiCtx,
        memory: usize,
        probe: Option<(Arc<LoadedProbe>, Sink)>,
    ) -> HostState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let (probe, sink) = probe.unzip();
        HostState {
            wasi,
            table,
            budget: StoreBudget::new(memory),
            probe,
            sink,
            name,
            describe_log: probe_log_limit(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl telemetrics::probe::types::Host for HostState {}

impl telemetrics::probe::log::Host for HostState {
    async fn log(&mut self, level: telemetrics::probe::log::Level, message: String) {
        use telemetrics::probe::log::Level;
        let m = escape(&message, LOG_LINE_CAP);
        let probe = self.name.as_str();
        let admit = match &self.probe {
            Some(p) => p
                .log_gate
                .lock()
                .expect("log gate lock")
                .admit(Instant::now(), m.len()),
            None => self.describe_log.admit(Instant::now(), m.len()),
        };
        match admit {
            None => return,
            Some(0) => {}
            Some(suppressed) => {
                tracing::warn!(
                    probe,
                    "{suppressed} log lines of this probe suppressed (rate limit)"
                )
            }
        }
        match level {
            Level::Debug => tracing::debug!(probe, "{m}"),
            Level::Info => tracing::info!(probe, "{m}"),
            Level::Warn => tracing::warn!(probe, "{m}"),
            Level::Error => tracing::error!(probe, "{m}"),
        }
    }
}

impl telemetrics::probe::records::Host for HostState {
    async fn send(&mut self, r: TelemetryRecord) -> Result<String, SendError> {
        let (Some(probe), Some(sink)) = (self.probe.clone(), self.sink.clone()) else {
            return Err(SendError::Refused(
                "describe runs without capabilities".into(),
            ));
        };
        let result = send_record(&probe, &sink, r).await;
        let mut st = probe.stats.lock().expect("stats lock");
        match &result {
            Ok(_) => st.records_sent += 1,
            Err(e) => {
                st.records_refused += 1;
                drop(st);
                let why = escape(&format!("{e:?}"), FIELD_CAP);
                let admit = probe
                    .log_gate
                    .lock()
                    .expect("log gate lock")
                    .admit(Instant::now(), why.len());
                if admit.is_some() {
                    tracing::warn!(probe = %probe.name, "record refused: {why}");
                }
            }
        }
        result
    }
}

async fn send_record(
    probe: &LoadedProbe,
    sink: &Sink,
    r: TelemetryRecord,
) -> Result<String, SendError> {
    if !probe.grant.allows_classification(&r.classification) {
        return Err(SendError::NotGranted(escape(&r.classification, FIELD_CAP)));
    }
    // Invalid records are refused before they count against the hourly
    // budget: a probe's mistakes must not use up its allowance.
    check_probe_record(&r).map_err(|e| SendError::Invalid(escape(&e.to_string(), FIELD_CAP)))?;
    {
        let mut sends = probe.sends.lock().expect("sends lock");
        let now = Instant::now();
        while sends
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(3600))
        {
            sends.pop_front();
        }
        if sends.len() >= probe.grant.max_records_per_hour as usize {
            return Err(SendError::RateLimited);
        }
        sends.push_back(now);
    }
    let (ingest, copy) = match sink {
        Sink::Spool(ingest) => (ingest, None),
        Sink::SpoolAndCopy(ingest, kept) => (
            ingest,
            Some((
                kept,
                Captured {
                    classification: r.classification.clone(),
                    severity: r.severity,
                    payload: r.payload.clone(),
                },
            )),
        ),
        Sink::Capture(kept) => {
            kept.lock().expect("capture lock").push(Captured {
                classification: r.classification,
                severity: r.severity,
                payload: r.payload,
            });
            return Ok(random_id());
        }
    };
    let record = Record::from_probe(
        r.classification,
        r.severity,
        r.payload_version,
        r.payload,
        r.event_id,
    );
    match ingest.submit_probe(record).await {
        Ok(id) => {
            if let Some((kept, c)) = copy {
                kept.lock().expect("copy lock").push(c);
            }
            Ok(id)
        }
        Err(IngestError::Invalid(e)) => Err(SendError::Invalid(e.to_string())),
        Err(e) => Err(SendError::Refused(e.to_string())),
    }
}

/// The rules of the record model a probe's record can break (the rest the
/// host fills in).
fn check_probe_record(r: &TelemetryRecord) -> Result<(), crate::record::RecordError> {
    crate::record::validate_classification(&r.classification)?;
    crate::record::validate_severity_str(&r.severity.to_string())?;
    if let Some(id) = &r.event_id {
        crate::record::validate_event_id(id)?;
    }
    crate::record::validate_payload(r.payload.as_bytes())
}

/// Where a sandbox keeps its files and which host rules it applies.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Compiled components.
    pub cache_dir: PathBuf,
    /// Per-call private directories (file grants).
    pub scratch_dir: PathBuf,
    /// Ceilings and never-grantable directories.
    pub rules: HostRules,
    /// Larger component files are refused before they are compiled.
    pub max_component_bytes: u64,
}

impl SandboxOptions {
    /// Options with the cache in `cache_dir`, the scratch directory beside
    /// it, permissive host rules and the default size cap.
    pub fn new(cache_dir: &Path) -> SandboxOptions {
        SandboxOptions {
            cache_dir: cache_dir.to_owned(),
            scratch_dir: cache_dir.with_file_name("probe-views"),
            rules: HostRules::permissive(),
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

/// The engine, linker and compiled-component cache shared by all probes.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache: cache::CompileCache,
    options: SandboxOptions,
    /// Components compiled (not loaded from the cache) since start.
    pub compilations: AtomicU64,
    _ticker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// Why a component file could not be loaded.
#[derive(Debug, Error)]
#[error("{file}: {reason}")]
pub struct LoadError {
    /// The file.
    pub file: String,
    /// What was wrong.
    #[source]
    pub reason: LoadFailure,
}

/// What was wrong with a component, with the underlying error kept.
#[derive(Debug, Error)]
pub enum LoadFailure {
    /// Over `max_component_bytes`.
    #[error("{size} bytes is over max_component_bytes ({cap})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// No wasm magic.
    #[error("not a WebAssembly file")]
    NotWasm,
    /// Too big to compile safely ([`shape`]).
    #[error("refused before compiling: {0}")]
    Shape(#[source] shape::ShapeError),
    /// Compiling ran past [`COMPILE_TIMEOUT`].
    #[error("not compiled within {} s", .0.as_secs())]
    CompileTimeout(Duration),
    /// The compiler's thread panicked or was cancelled.
    #[error("compiler thread failed: {0}")]
    CompilerThread(#[source] tokio::task::JoinError),
    /// Compiling (or the cache) failed.
    #[error("{0:#}")]
    Compile(#[source] wasmtime::Error),
    /// Built against a contract this host does not speak.
    #[error("built against {import}; this telemd accepts {ACCEPTED_CONTRACT}.x (rebuild the probe with a matching probe-sdk)")]
    Contract {
        /// The import naming the other version.
        import: String,
    },
    /// Its imports do not match what the host provides (the linker's
    /// words, escaped and cut: they quote the component's import names).
    #[error("cannot link: {0}")]
    Link(String),
    /// `describe` failed.
    #[error("describe failed: {0}")]
    Describe(#[source] CallError),
    /// The manifest's name is not usable (already escaped).
    #[error("manifest name {0} is not 1 to 64 lowercase letters, digits and '-'")]
    BadName(String),
    /// The manifest is larger than any real probe needs.
    #[error("the manifest lists {count} {what} (at most {MAX_MANIFEST_ITEMS})")]
    ManifestList {
        /// Which list.
        what: &'static str,
        /// How long it is.
        count: usize,
    },
    /// A manifest string is longer than any real probe needs.
    #[error("the manifest has a string of {0} bytes (at most {MAX_MANIFEST_STRING})")]
    ManifestString(usize),
}

/// Runs `fut` under a host-side timeout of `limit` plus
/// [`DEADLINE_GRACE`]. The epoch deadline stops a guest that spins; this
/// stops one parked in a host call (a WASI sleep, a blocking read), whose
/// future, and with it the store, is dropped.
async fn under_deadline<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match tokio::time::timeout(limit + DEADLINE_GRACE, fut).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
    }
}

impl Sandbox {
    /// A sandbox with its cache in `cache_dir` and permissive host rules
    /// (the admin's own triage runs and benchmarks).
    pub fn new(cache_dir: &Path) -> wasmtime::Result<Sandbox> {
        Sandbox::with_options(SandboxOptions::new(cache_dir))
    }

    /// Builds the engine (epoch interruption on), the linker (WASI p2 and
    /// the probe contract) and the cache.
    pub fn with_options(options: SandboxOptions) -> wasmtime::Result<Sandbox> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        cfg.max_wasm_stack(1 << 20);
        let engine = Engine::new(&cfg)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Probe::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let weak = engine.weak();
        let ticker = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let cache = cache::CompileCache::new(&options.cache_dir, &engine);
        // Views left by a daemon that was killed mid-call.
        let _ = std::fs::remove_dir_all(&options.scratch_dir);
        Ok(Sandbox {
            engine,
            linker,
            cache,
            options,
            compilations: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// The largest component file this sandbox compiles.
    pub fn max_component_bytes(&self) -> u64 {
        self.options.max_component_bytes
    }

    /// Compiles (or loads from the cache) the component in `bytes`, checks
    /// its contract version, and asks it to `describe` itself in a store
    /// with no capabilities. Compiling runs on a blocking thread under
    /// [`COMPILE_TIMEOUT`]; `describe` runs under its own deadline.
    pub async fn load(
        &self,
        file: &Path,
        bytes: &[u8],
        policy_of: impl Fn(&str) -> grants::ProbePolicy,
    ) -> Result<LoadedProbe, LoadError> {
        let err = |reason: LoadFailure| LoadError {
            file: file.display().to_string(),
            reason,
        };
        if bytes.len() as u64 > self.options.max_component_bytes {
            return Err(err(LoadFailure::TooLarge {
                size: bytes.len() as u64,
                cap: self.options.max_component_bytes,
            }));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(err(LoadFailure::NotWasm));
        }
        shape::check(bytes).map_err(|e| err(LoadFailure::Shape(e)))?;
        let (cache, engine, owned) = (self.cache.clone(), self.engine.clone(), bytes.to_vec());
        let compiling = tokio::task::spawn_blocking(move || cache.get_or_compile(&engine, &owned));
        let (component, hash, compiled) =
            match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
                Err(_) => return Err(err(LoadFailure::CompileTimeout(COMPILE_TIMEOUT))),
                Ok(Err(join)) => return Err(err(LoadFailure::CompilerThread(join))),
                Ok(Ok(r)) => r.map_err(|e| err(LoadFailure::Compile(e)))?,
            };
        if compiled {
            self.compilations.fetch_add(1, Ordering::Relaxed);
        }
        check_contract(&self.engine, &component).map_err(err)?;
        let state = HostState::new(
            file.display().to_string(),
            WasiCtxBuilder::new().build(),
            DESCRIBE_MEMORY,
            None,
        );
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(ProbePre::new)
            .map_err(|e| err(LoadFailure::Link(escape(&format!("{e:#}"), FIELD_CAP))))?;
        let mut store = self.store(state, DESCRIBE_TIMEOUT_MS);
        let manifest = under_deadline(Duration::from_millis(DESCRIBE_TIMEOUT_MS), async {
            let p = pre.instantiate_async(&mut store).await?;
            p.call_describe(&mut store).await
        })
        .await
        .map_err(|e| err(LoadFailure::Describe(call_error(e, DESCRIBE_TIMEOUT_MS))))?;
        drop(store);
        if manifest.name.is_empty()
            || manifest.name.len() > 64
            || !manifest
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(LoadFailure::BadName(escape(
                &format!("{:?}", manifest.name),
                FIELD_CAP,
            ))));
        }
        check_manifest_size(&manifest).map_err(err)?;
        let request = Request {
            read_paths: manifest.read_paths.iter().map(PathBuf::from).collect(),
            classifications: manifest.classifications.clone(),
            max_records_per_hour: manifest.max_records_per_hour,
            crashes: manifest
                .triggers
                .iter()
                .any(|t| matches!(t, Trigger::Crash)),
            interval_secs: manifest.triggers.iter().find_map(|t| match t {
                Trigger::Interval(s) if *s > 0 => Some(*s),
                _ => None,
            }),
        };
        let grant = Grant::effective(
            &manifest.name,
            &request,
            &policy_of(&manifest.name),
            &self.options.rules,
        );
        Ok(LoadedProbe {
            name: manifest.name.clone(),
            file: file.to_owned(),
            hash,
            manifest,
            request,
            grant,
            pre,
            stats: Mutex::new(ProbeStats::default()),
            sends: Mutex::new(VecDeque::new()),
            log_gate: Mutex::new(probe_log_limit()),
        })
    }

    fn store(&self, state: HostState, timeout_ms: u64) -> Store<HostState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        let start = Instant::now();
        let limit = Duration::from_millis(timeout_ms);
        store.set_epoch_deadline(1);
        // Yield to the runtime every tick so a spinning probe does not hold
        // a worker thread; stop it once its wall time is spent.
        store.epoch_deadline_callback(move |_| {
            if start.elapsed() >= limit {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// The granted paths as they are now: each resolved (symlinks
    /// followed) and checked again, since a path checked at load may have
    /// been swapped for a link since: never into the daemon's own
    /// directories, and a safe-set path never out of the safe set. Returns
    /// the (host, guest) directories to preopen and the files to show.
    /// `extra_read` (the host's own choice, a crash's inbox entry) is taken
    /// as it is.
    fn resolve_grant(
        &self,
        probe: &LoadedProbe,
        extra_read: &[PathBuf],
    ) -> (Vec<(PathBuf, PathBuf)>, Vec<file_views::GrantedFile>) {
        let g = &probe.grant;
        let mut dirs: Vec<(PathBuf, PathBuf)> = extra_read
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| (p.clone(), p.clone()))
            .collect();
        let mut files = Vec::new();
        for p in &g.read_paths {
            if grants::is_safe_proc_file(p) {
                files.push(file_views::GrantedFile {
                    host: p.clone(),
                    guest: p.clone(),
                    follow: true,
                });
                continue;
            }
            let Ok(real) = p.canonicalize() else {
                tracing::debug!(probe = %probe.name, "granted path {} does not exist here; left out", p.display());
                continue;
            };
            let refusal = grants::never_grantable(&real, &self.options.rules).or_else(|| {
                (!g.read_paths_by_admin && !grants::is_safe_path(&real))
                    .then(|| "it now leads outside the safe set".to_owned())
            });
            if let Some(why) = refusal {
                tracing::warn!(
                    probe = %probe.name,
                    "granted path {} left out of this call: it resolves to {}: {why}",
                    escape(&p.display().to_string(), FIELD_CAP),
                    escape(&real.display().to_string(), FIELD_CAP)
                );
                continue;
            }
            if real.is_dir() {
                dirs.push((real, p.clone()));
            } else if !g.read_paths.iter().any(|d| p.parent() == Some(d.as_path())) {
                // Shown alone unless its directory is granted whole already.
                files.push(file_views::GrantedFile {
                    host: real,
                    guest: p.clone(),
                    follow: false,
                });
            }
        }
        (dirs, files)
    }

    /// Runs `handle(event)` in a fresh store holding only the probe's grant.
    /// `extra_read` adds read-only directories for this call only (a
    /// crash's inbox entry). A granted directory is preopened whole; a
    /// granted file is shown alone in a private copy of its directory; a
    /// granted path that does not exist on this machine is left out
    /// (nothing could be read there anyway).
    pub async fn run(
        &self,
        probe: &Arc<LoadedProbe>,
        sink: Sink,
        event: Event,
        extra_read: &[PathBuf],
    ) -> Result<(), CallError> {
        let g = &probe.grant;
        let mut b = WasiCtxBuilder::new();
        let (dirs, files) = self.resolve_grant(probe, extra_read);
        for (host, guest) in &dirs {
            b.preopened_dir(host, guest.to_string_lossy().as_ref(), FsPerms::ReadOnly)
                .map_err(|e| CallError::Setup(format!("granted path {}: {e}", guest.display())))?;
        }
        let views = FileViews::build(&self.options.scratch_dir, &probe.name, &files)
            .map_err(|e| CallError::Setup(format!("file grants: {e}")))?;
        for (dir, guest) in &views.preopens {
            b.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(|e| CallError::Setup(format!("file grant view of {guest}: {e}")))?;
        }
        let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAP);
        b.stdout(stdout.clone()).stderr(stderr.clone());
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        let state = HostState::new(
            probe.name.clone(),
            b.build(),
            (g.memory_limit_mib as usize).saturating_mul(1 << 20),
            Some((probe.clone(), sink)),
        );
        let mut store = self.store(state, g.timeout_ms);
        let result = under_deadline(Duration::from_millis(g.timeout_ms), async {
            let p = probe.pre.instantiate_async(&mut store).await?;
            p.call_handle(&mut store, &event).await
        })
        .await;
        drop(store);
        drop(views);
        for (stream, pipe) in [("stdout", &stdout), ("stderr", &stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                let line = format!(
                    "{}{}",
                    escape(text.trim_end(), OUTPUT_CAP),
                    if bytes.len() >= OUTPUT_CAP {
                        " [cut at 16 KiB]"
                    } else {
                        ""
                    }
                );
                // Output counts against the same allowance as `log()`.
                let admit = probe
                    .log_gate
                    .lock()
                    .expect("log gate lock")
                    .admit(Instant::now(), line.len());
                if admit.is_some() {
                    tracing::info!(probe = %probe.name, stream, "{line}");
                }
            }
        }
        let suppressed = probe
            .log_gate
            .lock()
            .expect("log gate lock")
            .take_suppressed();
        if suppressed > 0 {
            tracing::warn!(probe = %probe.name, "{suppressed} log lines of this probe suppressed (rate limit)");
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(CallError::Guest(escape(&msg, FIELD_CAP))),
            Err(e) => Err(call_error(e, g.timeout_ms)),
        }
    }
}

#[derive(Debug, Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// The failure of a call in one line an admin can act on: the trap code or
/// the root cause, and the wasm function it happened in.
fn call_error(e: wasmtime::Error, timeout_ms: u64) -> CallError {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return CallError::Timeout(timeout_ms);
    }
    let reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("wasm trap: {trap}"),
        None => e.root_cause().to_string(),
    };
    let frame = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().first())
        .map(|f| match f.func_name() {
            Some(name) => format!(" in {name}"),
            None => format!(" in wasm function {}", f.func_index()),
        })
        .unwrap_or_default();
    CallError::Trap(escape(&format!("{reason}{frame}"), FIELD_CAP))
}
/// Most read paths, classifications or triggers a manifest may list.
pub const MAX_MANIFEST_ITEMS: usize = 64;
/// Longest string in a manifest (a description); paths and patterns are
/// shorter still in practice.
pub const MAX_MANIFEST_STRING: usize = 1024;

/// Refuses a manifest whose lists or strings are larger than any real
/// probe needs: it is kept in memory and shown in logs and `telemctl`.
fn check_manifest_size(m: &Manifest) -> Result<(), LoadFailure> {
    let lists = [
        ("read paths", m.read_paths.len()),
        ("classifications", m.classifications.len()),
        ("triggers", m.triggers.len()),
    ];
    if let Some(&(what, count)) = lists.iter().find(|(_, n)| *n > MAX_MANIFEST_ITEMS) {
        return Err(LoadFailure::ManifestList { what, count });
    }
    let longest = [&m.version, &m.description]
        .into_iter()
        .chain(&m.read_paths)
        .chain(&m.classifications)
        .map(String::len)
        .max()
        .unwrap_or(0);
    if longest > MAX_MANIFEST_STRING {
        return Err(LoadFailure::ManifestString(longest));
    }
    Ok(())
}

/// Refuses components built against a contract this host does not speak.
fn check_contract(engine: &Engine, component: &Component) -> Result<(), LoadFailure> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("telemetrics:probe/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            if !version.starts_with("0.1.") && version != "0.1" {
                return Err(LoadFailure::Contract {
                    import: name.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of `instances` core instances, each with one memory of
    /// `pages` 64 KiB pages.
    fn many_memories(instances: usize, pages: u32) -> Vec<u8> {
        let mut text = format!("(component\n (core module $m (memory {pages}))\n");
        for i in 0..instances {
            text.push_str(&format!(" (core instance $i{i} (instantiate $m))\n"));
        }
        text.push(')');
        wat::parse_str(&text).unwrap()
    }

    async fn instantiate(
        sb: &Sandbox,
        bytes: &[u8],
        budget: usize,
    ) -> (wasmtime::Result<()>, usize) {
        let component = Component::new(&sb.engine, bytes).unwrap();
        let state = HostState::new("t".into(), WasiCtxBuilder::new().build(), budget, None);
        let mut store = sb.store(state, 2000);
        let r = sb
            .linker
            .instantiate_async(&mut store, &component)
            .await
            .map(|_| ());
        (r, store.data().budget.memory_used())
    }

    #[test]
    fn manifests_larger_than_any_real_probe_needs_are_refused() {
        let ok = Manifest {
            name: "p".into(),
            version: "1".into(),
            description: "d".into(),
            classifications: vec!["a/p/*".into(); MAX_MANIFEST_ITEMS],
            triggers: vec![],
            read_paths: vec!["/usr/share".into(); MAX_MANIFEST_ITEMS],
            max_records_per_hour: 1,
        };
        check_manifest_size(&ok).unwrap();
        let mut long_list = ok.clone();
        long_list.read_paths.push("/usr/share".into());
        assert!(matches!(
            check_manifest_size(&long_list),
            Err(LoadFailure::ManifestList {
                what: "read paths",
                count: 65
            })
        ));
        let mut long_string = ok.clone();
        long_string.description = "x".repeat(MAX_MANIFEST_STRING + 1);
        assert!(matches!(
            check_manifest_size(&long_string),
            Err(LoadFailure::ManifestString(1025))
        ));
    }

    #[tokio::test]
    async fn all_memories_of_a_store_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(&dir.path().join("cache")).unwrap();
        // 60 instances of 16 MiB each under a 16 MiB budget: the second fails.
        let (r, used) = instantiate(&sb, &many_memories(60, 256), 16 << 20).await;
        let e = format!("{:#}", r.unwrap_err());
        assert!(
            e.contains("memory budget of 16777216 bytes exceeded"),
            "{e}"
        );
        assert_eq!(used, 16 << 20);
        // Small memories: the count of memories is capped too.
        let (r, used) = instantiate(&sb, &many_memories(60, 1), 16 << 20).await;
        assert!(r.is_err());
        assert_eq!(used, limits::MAX_MEMORIES * (64 << 10));
        // Within both caps it instantiates.
        let (r, _) = instantiate(&sb, &many_memories(2, 16), 16 << 20).await;
        r.unwrap();
    }
}
