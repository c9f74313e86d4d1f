//! Why a component file could not be loaded: each cause with the
//! underlying error kept, in words an admin can act on.

use std::time::Duration;

use thiserror::Error;

use crate::probe::CallError;
use crate::shape;
use crate::{ACCEPTED_CONTRACT, MAX_MANIFEST_ITEMS, MAX_MANIFEST_STRING};

/// Why a component file could not be loaded.
#[derive(Debug, Error)]
#[error("{file}")]
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
    #[error("refused before compiling")]
    Shape(#[source] shape::ShapeError),
    /// Compiling ran past [`COMPILE_TIMEOUT`].
    #[error("not compiled within {} s", .0.as_secs())]
    CompileTimeout(Duration),
    /// The compiler's thread panicked or was cancelled.
    #[error("compiler thread failed")]
    CompilerThread(#[source] tokio::task::JoinError),
    /// Compiling (or the cache) failed.
    #[error("cannot compile")]
    Compile(#[source] wasmtime::Error),
    /// Built against a contract this host does not speak.
    #[error("built against {import}; this telemd accepts {ACCEPTED_CONTRACT} (rebuild the probe with a matching probe-sdk)")]
    Contract {
        /// The import naming the other version.
        import: String,
    },
    /// Its imports do not match what the host provides (the linker's
    /// words, escaped and cut: they quote the component's import names).
    #[error("cannot link: {0}")]
    Link(String),
    /// `describe` failed.
    #[error("describe failed")]
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
    /// Its sources are not usable: a second kernel log, a `files` source
    /// named twice, a pattern the host refuses.
    #[error("the manifest's sources: {0}")]
    ManifestSources(String),
}
