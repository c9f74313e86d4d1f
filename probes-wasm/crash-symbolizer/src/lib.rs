//! The logic of the crash-symbolizer probe, as a plain library that builds
//! for `wasm32-wasip2` (inside the sandbox) and natively (tests, fuzzing).
//!
//! So far: bounded, hostile-input-safe reading of ELF core files and their
//! notes. Unwinding and symbolization come next (issue 6).
#![warn(missing_docs)]

pub mod core;
pub mod notes;
