//! The WASM probe host: loads WASI preview-2 components from the probe
//! directories and runs each, per call, in a fresh store holding only its
//! grant: read-only preopens of granted paths, no network, no environment
//! or arguments, closed stdin, captured and capped stdout/stderr, a memory
//! cap and a wall-time deadline. Records go through the same ingest path as
//! native ones.

pub mod cache;
pub mod grants;
pub mod supervisor;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use self::grants::{Grant, Request};
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
use self::bindings::Probe;
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
/// A log line from a probe is cut to this.
pub const LOG_LINE_CAP: usize = 4096;

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
    component: Component,
    /// Counters.
    pub stats: Mutex<ProbeStats>,
    sends: Mutex<VecDeque<Instant>>,
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
    limits: StoreLimits,
    probe: Option<Arc<LoadedProbe>>,
    sink: Option<Sink>,
    name: String,
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
        let mut m = message;
        if m.len() > LOG_LINE_CAP {
            let mut cut = LOG_LINE_CAP;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        let probe = self.name.as_str();
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
                tracing::warn!(probe = %probe.name, "record refused: {e:?}");
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
        return Err(SendError::NotGranted(r.classification));
    }
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
            crate::record::validate_classification(&r.classification)
                .and_then(|()| crate::record::validate_payload(r.payload.as_bytes()))
                .map_err(|e| SendError::Invalid(e.to_string()))?;
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

/// The engine, linker and compiled-component cache shared by all probes.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache: cache::CompileCache,
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
    pub reason: String,
}

impl Sandbox {
    /// Builds the engine (epoch interruption on), the linker (WASI p2 and
    /// the probe contract) and the cache under `cache_dir`.
    pub fn new(cache_dir: &Path) -> wasmtime::Result<Sandbox> {
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
        let cache = cache::CompileCache::new(cache_dir, &engine);
        Ok(Sandbox {
            engine,
            linker,
            cache,
            compilations: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// Compiles (or loads from the cache) the component in `bytes`, checks
    /// its contract version, and asks it to `describe` itself in a store
    /// with no capabilities.
    pub async fn load(
        &self,
        file: &Path,
        bytes: &[u8],
        policy_of: impl Fn(&str) -> grants::ProbePolicy,
    ) -> Result<LoadedProbe, LoadError> {
        let err = |reason: String| LoadError {
            file: file.display().to_string(),
            reason,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(err("not a WebAssembly file".into()));
        }
        let (component, hash, compiled) = self
            .cache
            .get_or_compile(&self.engine, bytes)
            .map_err(|e| err(format!("{e:#}")))?;
        if compiled {
            self.compilations.fetch_add(1, Ordering::Relaxed);
        }
        check_contract(&self.engine, &component).map_err(err)?;
        let state = HostState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(DESCRIBE_MEMORY)
                .trap_on_grow_failure(true)
                .build(),
            probe: None,
            sink: None,
            name: file.display().to_string(),
        };
        let mut store = self.store(state, DESCRIBE_TIMEOUT_MS);
        let manifest = async {
            let p = Probe::instantiate_async(&mut store, &component, &self.linker).await?;
            p.call_describe(&mut store).await
        }
        .await
        .map_err(|e| {
            err(format!(
                "describe failed: {}",
                call_error(e, DESCRIBE_TIMEOUT_MS)
            ))
        })?;
        if manifest.name.is_empty()
            || !manifest
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(format!(
                "manifest name {:?} is not lowercase letters, digits and '-'",
                manifest.name
            )));
        }
        let request = Request {
            read_paths: manifest.read_paths.iter().map(PathBuf::from).collect(),
            classifications: manifest.classifications.clone(),
            max_records_per_hour: manifest.max_records_per_hour,
            crashes: manifest
                .triggers
                .iter()
                .any(|t| matches!(t, Trigger::Crash)),
        };
        let grant = Grant::effective(&request, &policy_of(&manifest.name));
        Ok(LoadedProbe {
            name: manifest.name.clone(),
            file: file.to_owned(),
            hash,
            manifest,
            request,
            grant,
            component,
            stats: Mutex::new(ProbeStats::default()),
            sends: Mutex::new(VecDeque::new()),
        })
    }

    fn store(&self, state: HostState, timeout_ms: u64) -> Store<HostState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
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

    /// Runs `handle(event)` in a fresh store holding only the probe's grant.
    /// `extra_read` adds read-only paths for this call only (a crash's
    /// inbox entry). A granted path that does not exist on this machine is
    /// left out (nothing could be read there anyway).
    pub async fn run(
        &self,
        probe: &Arc<LoadedProbe>,
        sink: Sink,
        event: Event,
        extra_read: &[PathBuf],
    ) -> Result<(), CallError> {
        let g = &probe.grant;
        let mut b = WasiCtxBuilder::new();
        for p in g.read_paths.iter().chain(extra_read) {
            if !p.is_dir() {
                tracing::debug!(probe = %probe.name, "granted path {} is not a directory here; left out", p.display());
                continue;
            }
            let guest = p.to_string_lossy();
            b.preopened_dir(p, guest.as_ref(), FsPerms::ReadOnly)
                .map_err(|e| CallError::Setup(format!("granted path {}: {e}", p.display())))?;
        }
        let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAP);
        b.stdout(stdout.clone()).stderr(stderr.clone());
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        let state = HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((g.memory_limit_mib as usize) << 20)
                .trap_on_grow_failure(true)
                .build(),
            probe: Some(probe.clone()),
            sink: Some(sink),
            name: probe.name.clone(),
        };
        let mut store = self.store(state, g.timeout_ms);
        let result = async {
            let p = Probe::instantiate_async(&mut store, &probe.component, &self.linker).await?;
            p.call_handle(&mut store, &event).await
        }
        .await;
        for (stream, pipe) in [("stdout", &stdout), ("stderr", &stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                tracing::info!(probe = %probe.name, stream, "{}{}", text.trim_end(), if bytes.len() >= OUTPUT_CAP { " [cut]" } else { "" });
            }
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(CallError::Guest(msg)),
            Err(e) => Err(call_error(e, g.timeout_ms)),
        }
    }
}

#[derive(Debug, Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

fn call_error(e: wasmtime::Error, timeout_ms: u64) -> CallError {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return CallError::Timeout(timeout_ms);
    }
    CallError::Trap(format!("{e:#}").lines().next().unwrap_or("").to_owned())
}

/// Refuses components built against a contract this host does not speak.
fn check_contract(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("telemetrics:probe/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            if !version.starts_with("0.1.") && version != "0.1" {
                return Err(format!(
                    "built against {name}; this telemd accepts {ACCEPTED_CONTRACT}.x (rebuild the probe with a matching probe-sdk)"
                ));
            }
        }
    }
    Ok(())
}
