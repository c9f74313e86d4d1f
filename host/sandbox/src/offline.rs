//! `telemctl crash symbolize`: the crash probe run on an admin's core,
//! outside the daemon, in the same sandbox and under the same limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use telem_core::config::ProbesConfig;

use crate::{CallError, Captured, Event, LoadError, Sandbox, Sink};

/// Why a symbolize run did not produce records.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A named file could not be found or read.
    #[error("{}: {source}", path.display())]
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
    #[error("{probe}: {source}")]
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
    // The compiled component is cached per user: a shared cache writable by
    // someone else would let them plant native code this process loads.
    let cache = match std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    {
        Some(d) => d.join("telemctl/probe-cache"),
        None => return Err(OfflineError::NoCacheDir),
    };
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
