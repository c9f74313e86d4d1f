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
    /// No wasm magic; what it looks like instead.
    #[error("{0}, not WebAssembly: a probe is a WebAssembly component (`cargo build --target wasm32-wasip2` makes one)")]
    NotWasm(&'static str),
    /// A core module (wasm32-unknown-unknown, wasm32-wasip1), not a
    /// component.
    #[error("a core WebAssembly module, not a component: build the probe for wasm32-wasip2 (`cargo build --target wasm32-wasip2`), which makes a component; a wasip1 module needs `wasm-tools component new` with WASI's preview-1 adapter")]
    CoreModule,
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

/// Whether a file's first bytes are a component's, and if not, what they
/// look like, so that an ELF file named `.wasm` or a core module is told
/// apart from a damaged component before its size or its compiling is
/// reported. `header`: at least the first 8 bytes of the file, if it has
/// them.
pub fn check_magic(header: &[u8]) -> Result<(), LoadFailure> {
    // The preamble: magic, then a version and a layer (1 and 0 for a core
    // module, 0x0d and 1 for a component).
    const CORE: [u8; 8] = *b"\0asm\x01\0\0\0";
    match header {
        [b'\0', b'a', b's', b'm', ..] if header.starts_with(&CORE) => Err(LoadFailure::CoreModule),
        [b'\0', b'a', b's', b'm', ..] => Ok(()),
        [0x7f, b'E', b'L', b'F', ..] => Err(LoadFailure::NotWasm(
            "an ELF file (a native program or library)",
        )),
        [b'#', b'!', ..] => Err(LoadFailure::NotWasm("a script")),
        [] => Err(LoadFailure::NotWasm("an empty file")),
        [b'P', b'K', 3, 4, ..]
        | [0x1f, 0x8b, ..]
        | [b'7', b'z', ..]
        | [0xfd, b'7', b'z', b'X', b'Z', ..] => Err(LoadFailure::NotWasm("an archive")),
        _ if header
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            Err(LoadFailure::NotWasm("a text file"))
        }
        _ => Err(LoadFailure::NotWasm("not a file of a kind telemd knows")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_say_what_a_file_is() {
        assert!(check_magic(b"\0asm\x0d\0\x01\0rest").is_ok());
        let said = |h: &[u8]| check_magic(h).unwrap_err().to_string();
        assert!(said(b"\0asm\x01\0\0\0").contains("core WebAssembly module"));
        assert!(said(b"\x7fELF\x02\x01\x01\0").starts_with("an ELF file"));
        assert!(said(b"#!/bin/sh\n").starts_with("a script"));
        assert!(said(b"").starts_with("an empty file"));
        assert!(said(b"PK\x03\x04....").starts_with("an archive"));
        assert!(said(b"hello wo").starts_with("a text file"));
        assert!(said(b"\x01\x02\x03\x04").contains("not WebAssembly"));
    }
}
