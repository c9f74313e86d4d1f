//! The engine and the per-call sandbox: compiling and loading a
//! component, building each call's store from the probe's grant, and
//! running a call under its deadline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use telem_core::error_text::Chain;
use telem_core::grants::{Grant, HostRules, Request};
use thiserror::Error;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{current, event_v0_1, v0_1, ProbePre};
use crate::call_state::CallState;
use crate::file_views::FileViews;
use crate::grant_paths;
use crate::host::records::Sink;
use crate::host_pressure::MadeWay;
use crate::load_error::{LoadError, LoadFailure};
use crate::manifest_checks::{check_contract, check_manifest_size};
use crate::probe::{CallError, LoadedProbe};
use crate::probe_log::{escape, probe_log_limit, FIELD_CAP};
use crate::probe_state_file::ProbeStateFile;
use crate::record_budget::RecordBudget;
use crate::sandbox_options::{ExtraDir, SandboxOptions};
use crate::{cache, grants, shape};
use crate::{
    Event, Manifest, ProbeStats, Source, Trigger, COMPILE_TIMEOUT, DEADLINE_GRACE, DESCRIBE_MEMORY,
    DESCRIBE_TIMEOUT_MS, EPOCH_TICK, OUTPUT_CAP,
};

/// What one probe name keeps across loads of its component.
#[derive(Clone)]
struct PerName {
    state: Arc<Mutex<ProbeStateFile>>,
    call_lock: Arc<tokio::sync::Mutex<()>>,
    budget: Arc<Mutex<RecordBudget>>,
}

/// The engine, linker and compiled-component cache shared by all probes.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<CallState>,
    cache: cache::CompileCache,
    options: SandboxOptions,
    /// Components compiled (not loaded from the cache) since start.
    pub compilations: AtomicU64,
    /// Per probe name, its state and its call lock, kept across reloads.
    per_name: Mutex<HashMap<String, PerName>>,
    _ticker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// Runs `fut` under a host-side timeout of `limit` plus
/// [`DEADLINE_GRACE`]. The epoch deadline stops a guest that spins; this
/// stops one parked in a host call (a WASI sleep, a blocking read), whose
/// future, and with it the store, is dropped.
async fn under_deadline<T>(
    limit: Duration,
    made_way: &MadeWay,
    fut: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let start = Instant::now();
    let mut fut = std::pin::pin!(fut);
    loop {
        // Time spent making way for the host is added as it accrues.
        let deadline = start + limit + DEADLINE_GRACE + made_way.total();
        match tokio::time::timeout_at(deadline.into(), &mut fut).await {
            Ok(r) => return r,
            Err(_) if start + limit + DEADLINE_GRACE + made_way.total() > Instant::now() => {}
            Err(_) => return Err(wasmtime::Error::new(DeadlineExceeded)),
        }
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
        current::Probe::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)?;
        v0_1::Probe::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)?;
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
            per_name: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }

    /// The compile cache (pruned and cleared by the supervisor).
    pub fn cache(&self) -> &cache::CompileCache {
        &self.cache
    }

    /// The host's rules (the daemon's own directories, never shown to a
    /// probe: the event sources check their directories against them).
    pub fn host_rules(&self) -> &HostRules {
        &self.options.rules
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
        // What the file is, first: an ELF file named `.wasm` is told so,
        // not that it is too large.
        crate::load_error::check_magic(&bytes[..bytes.len().min(8)]).map_err(err)?;
        if bytes.len() as u64 > self.options.max_component_bytes {
            return Err(err(LoadFailure::TooLarge {
                size: bytes.len() as u64,
                cap: self.options.max_component_bytes,
            }));
        }
        shape::check(bytes, self.options.max_function_bytes as usize)
            .map_err(|e| err(LoadFailure::Shape(e)))?;
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
        let state = CallState::new(
            file.display().to_string(),
            WasiCtxBuilder::new().build(),
            DESCRIBE_MEMORY,
            None,
        );
        let link_error =
            |e: wasmtime::Error| err(LoadFailure::Link(escape(&format!("{e:#}"), FIELD_CAP)));
        let linked = self
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        // The export types say which contract it was built against.
        let pre = match current::ProbePre::new(linked.clone()) {
            Ok(p) => ProbePre::Current(p),
            Err(e) => match v0_1::ProbePre::new(linked) {
                Ok(p) => ProbePre::V0_1(p),
                Err(_) => return Err(link_error(e)),
            },
        };
        let made_way = MadeWay::default();
        let mut store = self.store(state, DESCRIBE_TIMEOUT_MS, &made_way);
        let manifest = under_deadline(
            Duration::from_millis(DESCRIBE_TIMEOUT_MS),
            &made_way,
            async {
                match &pre {
                    ProbePre::Current(pre) => {
                        let p = pre.instantiate_async(&mut store).await?;
                        p.call_describe(&mut store).await
                    }
                    ProbePre::V0_1(pre) => {
                        let p = pre.instantiate_async(&mut store).await?;
                        p.call_describe(&mut store).await.map(Manifest::from)
                    }
                }
            },
        )
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
        let files: Vec<grants::FilesWatch> = manifest
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Files(f) => Some(grants::FilesWatch {
                    dir: PathBuf::from(&f.dir),
                    pattern: f.pattern.clone(),
                }),
                Source::KernelLog(_) | Source::Journal(_) => None,
            })
            .collect();
        let mut read_paths: Vec<PathBuf> = manifest.read_paths.iter().map(PathBuf::from).collect();
        for w in &files {
            if !read_paths.contains(&w.dir) {
                read_paths.push(w.dir.clone());
            }
        }
        let request = Request {
            read_paths,
            kernel_log: manifest
                .sources
                .iter()
                .any(|s| matches!(s, Source::KernelLog(_))),
            files,
            journal: manifest.sources.iter().find_map(|s| match s {
                Source::Journal(j) => Some(j.fields.clone()),
                _ => None,
            }),
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
        let shared = self
            .per_name
            .lock()
            .expect("per-name lock")
            .entry(manifest.name.clone())
            .or_insert_with(|| PerName {
                state: Arc::new(Mutex::new(ProbeStateFile::new(
                    &self.options.state_dir,
                    &manifest.name,
                ))),
                call_lock: Arc::new(tokio::sync::Mutex::new(())),
                budget: Arc::new(Mutex::new(RecordBudget::load(
                    &self.options.state_dir,
                    &manifest.name,
                    SystemTime::now(),
                ))),
            })
            .clone();
        Ok(LoadedProbe {
            state: shared.state,
            call_lock: shared.call_lock,
            name: manifest.name.clone(),
            file: file.to_owned(),
            hash,
            manifest,
            request,
            grant,
            pre,
            stats: Mutex::new(ProbeStats::default()),
            budget: shared.budget,
            log_gate: Mutex::new(probe_log_limit()),
        })
    }

    fn store(&self, state: CallState, timeout_ms: u64, made_way: &MadeWay) -> Store<CallState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        let start = Instant::now();
        let limit = Duration::from_millis(timeout_ms);
        let pressure = self.options.pressure.clone();
        let made_way = made_way.clone();
        store.set_epoch_deadline(1);
        // Yield to the runtime every tick so a spinning probe does not hold
        // a worker thread; while the host is busy, wait for a turn after
        // each tick (not counted against the call); stop it once its own
        // wall time is spent.
        store.epoch_deadline_callback(move |_| {
            if pressure.busy() {
                let (made_way, pressure) = (made_way.clone(), pressure.clone());
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        made_way.begin();
                        pressure.take_turn().await;
                        made_way.end();
                    }),
                ));
            }
            if start.elapsed().saturating_sub(made_way.total()) >= limit {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
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
        extra_read: &[ExtraDir],
    ) -> Result<(), CallError> {
        let _one_call_at_a_time = probe.call_lock.lock().await;
        let g = &probe.grant;
        // While the host is busy, a call waits before it starts (at most
        // its own timeout), not counted against it.
        self.options
            .pressure
            .make_way(Duration::from_millis(g.timeout_ms))
            .await;
        let made_way = MadeWay::default();
        let mut b = WasiCtxBuilder::new();
        let (dirs, files) = grant_paths::resolve(probe, extra_read, &self.options.rules);
        for (host, guest) in &dirs {
            b.preopened_dir(host, guest.to_string_lossy().as_ref(), FsPerms::ReadOnly)
                .map_err(|source| CallError::Setup {
                    what: format!("granted path {}", guest.display()),
                    source,
                })?;
        }
        let views =
            FileViews::build(&self.options.scratch_dir, &probe.name, &files).map_err(|e| {
                CallError::Setup {
                    what: "file grants".into(),
                    source: e.into(),
                }
            })?;
        for (dir, guest) in &views.preopens {
            b.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(|source| CallError::Setup {
                    what: format!("file grant view of {guest}"),
                    source,
                })?;
        }
        // A crash call of a probe granted crashes may ask for debug files:
        // they are shown in a directory of its own, for this call only.
        let debuginfo = match (&self.options.debuginfo, &event) {
            (Some(source), Event::Crash(_)) if g.crashes => {
                let view = crate::host::debuginfo::DebuginfoView::create(
                    &self.options.scratch_dir,
                    &probe.name,
                )
                .map_err(|e| CallError::Setup {
                    what: "the debuginfo view".into(),
                    source: e.into(),
                })?;
                b.preopened_dir(&view.0, crate::DEBUGINFO_GUEST_DIR, FsPerms::ReadOnly)
                    .map_err(|source| CallError::Setup {
                        what: "the debuginfo view".into(),
                        source,
                    })?;
                let within = source.budget().min(Duration::from_millis(g.timeout_ms) / 2);
                let call = crate::host::debuginfo::DebuginfoCall::new(
                    source.clone(),
                    &view.0,
                    Instant::now() + within,
                );
                Some((view, call))
            }
            _ => None,
        };
        let stdout = MemoryOutputPipe::new(OUTPUT_CAP);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAP);
        b.stdout(stdout.clone()).stderr(stderr.clone());
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        let staged = match &sink {
            Sink::Staged(intake, held) => Some((intake.clone(), held.clone())),
            _ => None,
        };
        let mut state = CallState::new(
            probe.name.clone(),
            b.build(),
            (g.memory_limit_mib as usize).saturating_mul(1 << 20),
            Some((probe.clone(), sink)),
        );
        let (debuginfo_view, debuginfo_call) = debuginfo.unzip();
        state.debuginfo = debuginfo_call;
        let mut store = self.store(state, g.timeout_ms, &made_way);
        let result = under_deadline(Duration::from_millis(g.timeout_ms), &made_way, async {
            match &probe.pre {
                ProbePre::Current(pre) => {
                    let p = pre.instantiate_async(&mut store).await?;
                    p.call_handle(&mut store, &event).await
                }
                ProbePre::V0_1(pre) => {
                    let Some(event) = event_v0_1(&event) else {
                        return Ok(Err("this event is not in contract 0.1".to_owned()));
                    };
                    let p = pre.instantiate_async(&mut store).await?;
                    p.call_handle(&mut store, &event).await
                }
            }
        })
        .await;
        let state_writes = store.data_mut().state.take();
        let host_refusal = store.data_mut().host_refusal.take();
        drop(store);
        drop(views);
        drop(debuginfo_view);
        // What the call spent of the hourly budget was appended to its file
        // at each send; it is made durable once per call, not per record,
        // on a blocking thread.
        let budget = probe.budget.clone();
        let _ =
            tokio::task::spawn_blocking(move || budget.lock().expect("budget lock").sync()).await;
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
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(msg)) => Some(match host_refusal {
                Some(refusal) => CallError::AfterHostRefusal {
                    refusal,
                    error: escape(&msg, FIELD_CAP),
                },
                None => CallError::Guest(escape(&msg, FIELD_CAP)),
            }),
            Err(e) => Some(call_error(e, g.timeout_ms)),
        };
        if let Some(e) = failure {
            // The batch's held records are dropped with it: they give back
            // what they took of the hourly budget, so the batch handed
            // again is not refused for its own earlier tries.
            if let Some((_, held)) = staged {
                let n = held.lock().expect("staged lock").len();
                probe.budget.lock().expect("budget lock").give_back(n);
            }
            return Err(e);
        }
        // Records first, then state: a crash in between reports a
        // batch twice rather than not at all.
        if let Some((intake, held)) = staged {
            let held = std::mem::take(&mut *held.lock().expect("staged lock"));
            crate::host::records::store_staged(probe, &*intake, held).await;
        }
        if let Some(txn) = state_writes {
            // Written and fsynced on a blocking thread, not a runtime
            // worker.
            let (p, quota) = (probe.clone(), g.state_quota_bytes);
            let committed = tokio::task::spawn_blocking(move || {
                p.state
                    .lock()
                    .expect("state lock")
                    .commit(txn.changes, quota)
            })
            .await;
            match committed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(probe = %probe.name, "probe state not saved: {}", Chain(&e))
                }
                Err(e) => {
                    tracing::error!(probe = %probe.name, "probe state not saved: {}", Chain(&e))
                }
            }
        }
        Ok(())
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
/// What linking a probe once at load saves each call: `n` new stores and
/// instantiations of `wasm` linked at every call (as before `InstancePre`)
/// and `n` from its pre-linked form (as calls are now), interleaved so
/// both see the same machine. Built only with the `bench` feature (the
/// probes benchmark).
#[cfg(feature = "bench")]
impl Sandbox {
    #[doc(hidden)]
    pub async fn instantiation_costs(
        &self,
        wasm: &[u8],
        n: usize,
    ) -> wasmtime::Result<(Vec<Duration>, Vec<Duration>)> {
        let component = wasmtime::component::Component::new(&self.engine, wasm)?;
        let pre = self.linker.instantiate_pre(&component)?;
        let (mut linked, mut prelinked) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..2 * n {
            let t = Instant::now();
            let state = CallState::new(
                "bench".into(),
                WasiCtxBuilder::new().build(),
                64 << 20,
                None,
            );
            let mut store = self.store(state, 10_000, &MadeWay::default());
            if i % 2 == 0 {
                self.linker
                    .instantiate_async(&mut store, &component)
                    .await?;
                linked.push(t.elapsed());
            } else {
                pre.instantiate_async(&mut store).await?;
                prelinked.push(t.elapsed());
            }
        }
        Ok((linked, prelinked))
    }
}

#[cfg(test)]
mod tests;
