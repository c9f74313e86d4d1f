//! Compiled components on disk, so a probe is compiled once: artefacts live
//! in `state_dir/probe-cache/` under a name keyed by the wasm's sha256 and
//! the engine's compatibility hash (a wasmtime upgrade or a different CPU
//! feature set never loads a stale artefact), written atomically.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Unreferenced artefacts kept for a quick re-add.
const KEEP_UNUSED: usize = 8;

/// The on-disk cache of compiled components.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl CompileCache {
    /// A cache in `dir` for artefacts of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> CompileCache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir: dir.to_owned(),
            engine_hash: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_hash))
    }

    /// The component for `bytes`, from the cache when possible. Returns it,
    /// its sha256, and whether it had to be compiled.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, String, bool)> {
        let hash = sha256_hex(bytes);
        let path = self.path(&hash);
        if path.exists() {
            // SAFETY: the artefact was written by this daemon (atomically, in
            // its own state directory) from the same engine configuration,
            // which the file name's compatibility hash pins.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => {
                    let _ = filetime_touch(&path);
                    return Ok((c, hash, false));
                }
                Err(e) => tracing::warn!(
                    "cached artefact {} unusable ({e}); recompiling",
                    path.display()
                ),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = crate::fsutil::write_atomic(&path, &compiled, 0o600) {
            tracing::warn!("cannot cache the compiled probe at {}: {e}", path.display());
        }
        // SAFETY: these bytes were produced by `precompile_component` just above.
        let c = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((c, hash, true))
    }

    /// Removes artefacts of components no longer loaded (keeping the few
    /// most recently used) and those of other engine versions.
    pub fn prune(&self, in_use: &HashSet<String>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut unused = Vec::new();
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".cwasm") else {
                continue;
            };
            let Some((hash, engine)) = stem.split_once('-') else {
                continue;
            };
            if engine != self.engine_hash {
                let _ = std::fs::remove_file(e.path());
            } else if !in_use.contains(hash) {
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                unused.push((mtime, e.path()));
            }
        }
        unused.sort();
        let excess = unused.len().saturating_sub(KEEP_UNUSED);
        for (_, p) in unused.into_iter().take(excess) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Marks an artefact as recently used (for pruning).
fn filetime_touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::options().append(true).open(path)?;
    f.set_modified(std::time::SystemTime::now())
}
