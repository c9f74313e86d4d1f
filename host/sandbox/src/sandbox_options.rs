//! How the daemon (or a tool) sets up a sandbox: where its files go, the
//! host's rules and size caps, and the directories a single call may see
//! beyond a probe's grant.

use std::path::{Path, PathBuf};

use telem_core::grants::HostRules;

use crate::host_pressure::HostPressure;
use crate::{shape, DEFAULT_MAX_COMPONENT_BYTES};

/// Where a sandbox keeps its files and which host rules it applies.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Compiled components.
    pub cache_dir: PathBuf,
    /// Per-call private directories (file grants).
    pub scratch_dir: PathBuf,
    /// Probes' private state, one file per probe.
    pub state_dir: PathBuf,
    /// Ceilings and never-grantable directories.
    pub rules: HostRules,
    /// Larger component files are refused before they are compiled.
    pub max_component_bytes: u64,
    /// Components with a larger function are refused before they are
    /// compiled (Cranelift's memory grows with the largest function).
    pub max_function_bytes: u64,
    /// When calls make way for the host (`host_pressure.rs`).
    pub pressure: HostPressure,
    /// Where crash calls' `debuginfo.find` looks (the daemon's debuginfod
    /// client); none: it finds nothing.
    pub debuginfo: Option<std::sync::Arc<dyn crate::DebuginfoSource>>,
}

impl SandboxOptions {
    /// The daemon's options, from its config: the directories under
    /// `state_dir`, the host rules (the daemon's own directories never
    /// readable by a probe) and the size caps.
    pub fn for_config(
        config: &telem_core::config::Config,
        pressure: HostPressure,
    ) -> SandboxOptions {
        let layout = telem_core::state_layout::StateLayout::new(&config.host.state_dir);
        SandboxOptions {
            scratch_dir: layout.probe_views(),
            state_dir: layout.probe_state(),
            cache_dir: layout.probe_cache(),
            rules: HostRules::for_config(config),
            max_component_bytes: config.probes.max_component_bytes.get(),
            max_function_bytes: config.probes.max_function_bytes.get(),
            pressure,
            debuginfo: None,
        }
    }

    /// Options with the cache in `cache_dir`, the scratch directory beside
    /// it, permissive host rules and the default size cap.
    pub fn new(cache_dir: &Path) -> SandboxOptions {
        SandboxOptions {
            cache_dir: cache_dir.to_owned(),
            scratch_dir: cache_dir.with_file_name(telem_core::state_layout::PROBE_VIEWS),
            state_dir: cache_dir.with_file_name(telem_core::state_layout::PROBE_STATE),
            rules: HostRules::permissive(),
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            max_function_bytes: shape::MAX_FUNCTION_BODY as u64,
            pressure: HostPressure::new(),
            debuginfo: None,
        }
    }
}

/// A directory shown to one call beyond the probe's grant.
#[derive(Clone, Debug)]
pub struct ExtraDir {
    /// Where it is on this host.
    pub host: PathBuf,
    /// Where the probe sees it.
    pub guest: PathBuf,
    /// The daemon's own directory (a crash's inbox entry, inside its
    /// protected state), shown as it is. Anything else (a `files`
    /// source's directory) is resolved and checked like a grant at every
    /// call.
    pub host_owned: bool,
}

impl ExtraDir {
    /// The daemon's own directory, at its own path.
    pub fn host_owned(dir: &Path) -> ExtraDir {
        ExtraDir {
            host: dir.to_owned(),
            guest: dir.to_owned(),
            host_owned: true,
        }
    }

    /// The same directory, shown to the probe at `guest`.
    pub fn shown_at(self, guest: &Path) -> ExtraDir {
        ExtraDir {
            guest: guest.to_owned(),
            ..self
        }
    }
}
