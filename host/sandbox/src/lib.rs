//! The WASM probe host: loads WASI preview-2 components from the probe
//! directories and runs each, per call, in a fresh store holding only its
//! grant: read-only preopens of granted paths, no network, no environment
//! or arguments, closed stdin, captured and capped stdout/stderr, one
//! memory budget for the whole store, capped instances, tables and host
//! resources, and a wall-time deadline that holds inside host calls too
//! (the epoch stops spinning guests; a host-side timeout drops a call
//! parked in a WASI sleep or read). Records go through the same ingest path
//! as native ones.

#![warn(missing_docs)]

mod bindings;
pub mod cache;
mod call_state;
mod engine;
pub mod file_views;
mod grant_paths;
mod host;
pub mod host_pressure;
pub mod limits;
mod load_error;
mod manifest_checks;
pub mod offline;
mod probe;
pub mod probe_log;
pub mod probe_state_file;
pub mod record_budget;
mod sandbox_options;
pub mod shape;

use std::time::Duration;

pub use telem_core::control::{Captured, ProbeStats};
/// The grant rules live in the core crate (the config and `telemctl probe
/// info` need them without an engine); re-exported where they are applied.
pub use telem_core::grants;

pub use engine::Sandbox;
pub use host_pressure::HostPressure;
pub use load_error::{check_magic, LoadError, LoadFailure};
pub use sandbox_options::{ExtraDir, SandboxOptions};

/// Why the engine could not be set up (wasmtime's error, kept whole).
pub type EngineError = wasmtime::Error;
pub use host::debuginfo::{DebugKind, DebuginfoSource, DEBUGINFO_GUEST_DIR};
pub use host::records::{IntakeError, RecordIntake, Sink};
pub use probe::{CallError, LoadedProbe};

pub use self::bindings::current::telemetrics::probe::types::{
    BatchLimits, CrashReport, Event, FileNotice, FilesSource, JournalEntry, JournalSource,
    KernelLogBatch, KernelLogLine, Manifest, Source, Trigger,
};

/// Most read paths, classifications or triggers a manifest may list.
pub const MAX_MANIFEST_ITEMS: usize = 64;
/// Longest string in a manifest (a description); paths and patterns are
/// shorter still in practice.
pub const MAX_MANIFEST_STRING: usize = 1024;
/// Contract versions this host accepts, in words for errors.
pub const ACCEPTED_CONTRACT: &str = "telemetrics:probe@0.2.x and @0.1.x";
/// The contract's minor versions this host accepts (`0.N.x`).
pub const ACCEPTED_MINORS: [&str; 2] = ["0.1", "0.2"];
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
pub use telem_core::probe_policy::DEFAULT_MAX_COMPONENT_BYTES;
/// Time a call gets past its deadline to be stopped by the epoch before
/// the host-side timeout drops it (a guest parked in a host call).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(200);
