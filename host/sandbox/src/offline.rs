//! Probes run outside the daemon, in the same sandbox and under the same
//! limits, with nothing spooled: `telemctl crash symbolize` (the crash
//! probe on an admin's core) and `telemctl probe test` (any probe, for its
//! author).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use telem_core::config::ProbesConfig;

use crate::{CallError, Captured, Event, LoadError, Sandbox, Sink};

/// Why a symbolize run did not produce records.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A named file could not be found or read.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No component was given and none is installed.
    #[error("no crash-symbolizer.wasm in {dirs:?} (give one with --probe)")]
    NoProbe {
        /// The probe directories searched.
        dirs: Vec<PathBuf>,
    },
    /// There is nowhere to keep the compiled component.
    #[error("neither XDG_CACHE_HOME nor HOME is set (needed for the compile cache)")]
    NoCacheDir,
    /// The async runtime could not start.
    #[error("cannot start a runtime")]
    Runtime(#[source] std::io::Error),
    /// The engine could not be set up.
    #[error("cannot set up the sandbox")]
    Engine(#[source] wasmtime::Error),
    /// The component did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The call failed.
    #[error("{probe}")]
    Call {
        /// The probe.
        probe: String,
        /// What failed.
        #[source]
        source: CallError,
    },
}

/// What `telemctl crash symbolize` asks for.
#[derive(Clone, Debug)]
pub struct SymbolizeRequest {
    /// The core file.
    pub core: PathBuf,
    /// The crashed program's binary, if it is not where the core says.
    pub exe: Option<PathBuf>,
    /// More debug-file trees (`DIR/.build-id/...`).
    pub debug_roots: Vec<PathBuf>,
    /// The component; default: `crash-symbolizer.wasm` in the probe dirs.
    pub probe: Option<PathBuf>,
}

/// Runs the crash-symbolizer component on an admin's core, in the same
/// sandbox and with the same limits as for a live crash, and returns the
/// records it would have sent (nothing is spooled or sent; no privacy
/// filter). It reads the core, the `--exe` binary and the debug trees
/// through read-only grants of their directories, as the invoking user.
pub fn symbolize_offline(
    config: &ProbesConfig,
    req: &SymbolizeRequest,
) -> Result<Vec<Captured>, OfflineError> {
    let abs = |p: &Path| {
        p.canonicalize().map_err(|source| OfflineError::File {
            path: p.to_owned(),
            source,
        })
    };
    let core = abs(&req.core)?;
    let exe = req.exe.as_deref().map(abs).transpose()?;
    let file = match &req.probe {
        Some(p) => p.clone(),
        None => config
            .probes_dirs
            .iter()
            .map(|d| d.join("crash-symbolizer.wasm"))
            .find(|p| p.exists())
            .ok_or_else(|| OfflineError::NoProbe {
                dirs: config.probes_dirs.clone(),
            })?,
    };
    let bytes = std::fs::read(&file).map_err(|source| OfflineError::File {
        path: file.clone(),
        source,
    })?;
    let cache = user_cache_dir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OfflineError::Runtime)?;
    rt.block_on(async {
        let sandbox = Sandbox::new(&cache).map_err(OfflineError::Engine)?;
        let probe = sandbox
            .load(&file, &bytes, |name| {
                config.probes.get(name).cloned().unwrap_or_default()
            })
            .await?;
        let probe = Arc::new(probe);
        let mut args = vec!["symbolize".to_string(), core.to_string_lossy().into_owned()];
        let mut extra = vec![core.parent().unwrap_or(Path::new("/")).to_owned()];
        if let Some(e) = &exe {
            args.extend(["--exe".into(), e.to_string_lossy().into_owned()]);
            extra.push(e.parent().unwrap_or(Path::new("/")).to_owned());
        }
        for d in &req.debug_roots {
            let d = abs(d)?;
            args.extend(["--debug-root".into(), d.to_string_lossy().into_owned()]);
            extra.push(d);
        }
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        sandbox
            .run(
                &probe,
                Sink::Capture(kept.clone()),
                Event::Manual(args),
                &extra
                    .iter()
                    .map(|d| crate::ExtraDir::host_owned(d))
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(|source| OfflineError::Call {
                probe: probe.name.clone(),
                source,
            })?;
        let out = std::mem::take(&mut *kept.lock().expect("capture lock"));
        Ok(out)
    })
}

/// The compiled components of offline runs, cached per user: a shared
/// cache writable by someone else would let them plant native code this
/// process loads.
pub fn user_cache_dir() -> Result<PathBuf, OfflineError> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("telemctl/probe-cache"))
        .ok_or(OfflineError::NoCacheDir)
}

/// What `telemctl probe test` runs.
#[derive(Clone, Debug)]
pub struct TestRequest {
    /// The component.
    pub file: PathBuf,
    /// The event `handle` is called with.
    pub event: Event,
    /// Directories shown to this call beyond the grant (a crash's core).
    pub extra_read: Vec<PathBuf>,
}

/// What a test run saw.
#[derive(Debug)]
pub struct TestReport {
    /// What `describe` returned.
    pub manifest: crate::Manifest,
    /// What it asked for.
    pub requested: telem_core::grants::Request,
    /// What it ran with (`refused` lists what it asked for and did not get).
    pub granted: telem_core::grants::Grant,
    /// The records it sent, as it sent them (checked against its grant,
    /// its hourly allowance and the record rules, then kept here).
    pub records: Vec<Captured>,
    /// Its counters after the call (records refused among them).
    pub stats: crate::ProbeStats,
    /// How `handle` ended.
    pub outcome: Result<(), CallError>,
}

/// Loads `req.file` as the daemon would, with `policy` for the admin's
/// word on it, and calls `handle` once with `req.event`: records are kept,
/// not spooled. `options` gives the host's rules and ceilings (the
/// daemon's, from the same config) and where to compile and keep state
/// (a scratch directory: the run leaves no state behind).
pub fn test_offline(
    options: crate::SandboxOptions,
    policy: &dyn Fn(&str) -> telem_core::grants::ProbePolicy,
    req: &TestRequest,
) -> Result<TestReport, OfflineError> {
    let bytes = std::fs::read(&req.file).map_err(|source| OfflineError::File {
        path: req.file.clone(),
        source,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OfflineError::Runtime)?;
    rt.block_on(async {
        let sandbox = Sandbox::with_options(options).map_err(OfflineError::Engine)?;
        let probe = Arc::new(sandbox.load(&req.file, &bytes, policy).await?);
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let extra: Vec<crate::ExtraDir> = req
            .extra_read
            .iter()
            .map(|d| crate::ExtraDir::host_owned(d))
            .collect();
        let outcome = sandbox
            .run(
                &probe,
                Sink::Capture(kept.clone()),
                req.event.clone(),
                &extra,
            )
            .await;
        let records = std::mem::take(&mut *kept.lock().expect("capture lock"));
        let stats = probe.stats.lock().expect("stats lock").clone();
        Ok(TestReport {
            manifest: probe.manifest.clone(),
            requested: probe.request.clone(),
            granted: probe.grant.clone(),
            records,
            stats,
            outcome,
        })
    })
}
