//! The logic of the crash-symbolizer probe, as a plain library that builds
//! for `wasm32-wasip2` (inside the sandbox) and natively (tests, fuzzing):
//! bounded, hostile-input-safe reading of ELF core files and their notes,
//! module discovery with build-id matching, unwinding (CFI, signal frames,
//! frame pointers, stack scan), symbolization and the legacy payload.
#![warn(missing_docs)]

pub mod blocks;
pub mod core;
pub mod dwarf;
pub mod frame_cache;
pub mod modules;
pub mod notes;
pub mod report;
pub mod signature;
pub mod unwind;

pub use report::{analyze, analyze_cached, CrashFacts, Options, Report};

#[cfg(target_family = "wasm")]
mod probe;

/// The hostile core generators, shared with the host's end-to-end tests
/// so both test the very same bytes (included here, not in `tests/`, so
/// the lib tests that also run on a 32-bit target use them).
#[cfg(test)]
#[path = "../../../tests/support/hostile_cores.rs"]
mod hostile_cores;
