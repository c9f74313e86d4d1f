//! Compiled components on disk, so a probe is compiled once: artefacts live
//! in `state_dir/probe-cache/` under a name keyed by the wasm's sha256 and
//! the engine's compatibility hash (a wasmtime upgrade or a different CPU
//! feature set never loads a stale artefact), written atomically.
//!
//! An artefact is native code that is mapped and run as is, so it is
//! loaded only if it is owned by this process's user, writable by no one
//! else, and carries a valid HMAC-SHA256 (kept beside it, `.mac`) under a
//! key only this cache holds (`.key`, mode 0600). Anything else is
//! recompiled from the wasm.
//!
//! Compiling runs in the daemon. A marker (`compiling-<sha256>`, holding
//! the boot id) exists while a component is being compiled; one left
//! behind in the same boot means the daemon stopped while compiling it
//! (killed out of memory, say), and that component is refused until the
//! admin clears the markers (`telemctl probe reload`), so a hostile file
//! cannot crash the daemon at every restart. A marker of an earlier boot is
//! ignored (a reboot mid-compile says nothing about the file), and a stop
//! on a signal takes back the markers of compiles it interrupts (and starts
//! no more), so a probe still compiling at `systemctl stop` loads at the
//! next start. A compile
//! still running, after its caller gave up at the timeout, is never started
//! a second time.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Unreferenced artefacts kept for a quick re-add.
const KEEP_UNUSED: usize = 8;
/// The MAC key's file name in the cache directory.
const KEY_FILE: &str = ".key";

type HmacSha256 = Hmac<Sha256>;

/// The on-disk cache of compiled components.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
    /// The compiles under way, and whether the daemon is stopping.
    compiling: std::sync::Arc<std::sync::Mutex<Compiles>>,
}

/// What the cache's lock guards: a compile's marker is written and a stop
/// is declared under it, so a stop sees every marker a compile wrote and
/// no compile starts after it.
#[derive(Debug, Default)]
struct Compiles {
    /// sha256 of the components being compiled now.
    running: HashSet<String>,
    /// Set as the daemon stops: no compile starts any more.
    stopping: bool,
}

/// Takes a component off the being-compiled set when its compile ends,
/// whichever way.
struct Compiling<'a>(&'a CompileCache, String);

impl Drop for Compiling<'_> {
    fn drop(&mut self) {
        self.0
            .compiling
            .lock()
            .expect("compiling lock")
            .running
            .remove(&self.1);
    }
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a cached artefact was not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("owned by uid {0}, not this process's")]
    Owner(u32),
    #[error("mode {0:o} lets others write it")]
    Mode(u32),
    #[error("its MAC does not match")]
    Mac,
}

/// A component whose compilation never finished before.
#[derive(Debug, thiserror::Error)]
#[error("the daemon stopped while compiling this component before (marker {0}); it is refused until `telemctl probe reload`")]
pub struct CompileCrashed(pub PathBuf);

/// A component whose earlier compile is still running (its caller gave up
/// at the timeout; the compiler cannot be stopped).
#[derive(Debug, thiserror::Error)]
#[error("an earlier compile of this component is still running")]
pub struct StillCompiling;

/// A compile asked for while the daemon stops.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is stopping; this component is compiled at the next start")]
pub struct Stopping;

impl CompileCache {
    /// A cache in `dir` for artefacts of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> CompileCache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            dir: dir.to_owned(),
            engine_hash: format!("{:016x}", h.finish()),
            compiling: Default::default(),
        }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_hash))
    }

    /// The MAC key, made on first use.
    fn key(&self) -> io::Result<Vec<u8>> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let path = self.dir.join(KEY_FILE);
        match std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(mut f) => {
                let key: [u8; 32] = rand::random();
                f.write_all(&key)?;
                f.sync_all()?;
                Ok(key.to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let f = std::fs::File::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                check_private(&f.metadata()?).map_err(io::Error::other)?;
                let mut key = Vec::new();
                f.take(64).read_to_end(&mut key)?;
                if key.len() != 32 {
                    return Err(io::Error::other(format!(
                        "{} is not a 32-byte key",
                        path.display()
                    )));
                }
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The component for `bytes`, from the cache when a verified artefact
    /// is there. Returns it, its sha256, and whether it had to be compiled.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, String, bool)> {
        let hash = sha256_hex(bytes);
        let path = self.path(&hash);
        let key = match self.key() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(
                    "compile cache {} unusable ({e}); compiling without it",
                    self.dir.display()
                );
                None
            }
        };
        if let (Some(key), true) = (&key, path.exists()) {
            match open_verified(&path, key) {
                Ok(verified) => {
                    // The descriptor the MAC was computed over is what is
                    // mapped: /proc/self/fd/N names that very file (inode),
                    // whatever the path names by now.
                    let by_fd = format!("/proc/self/fd/{}", verified.as_raw_fd());
                    // SAFETY: the file is an artefact this cache wrote:
                    // owned by this user, writable by no one else, and
                    // authenticated by a MAC under a key only this user can
                    // read, over the open file mapped here; the file name's
                    // compatibility hash pins the engine configuration.
                    // Mapped (only the code a probe runs becomes resident),
                    // it must not change while loaded: the cache never
                    // writes an artefact in place (a new one is renamed
                    // over), and only root or this user could.
                    match unsafe { Component::deserialize_file(engine, &by_fd) } {
                        Ok(c) => {
                            drop(verified);
                            let _ = filetime_touch(&path);
                            return Ok((c, hash, false));
                        }
                        Err(e) => tracing::warn!(
                            "cached artefact {} unusable ({e}); recompiling",
                            path.display()
                        ),
                    }
                }
                Err(e) => tracing::warn!(
                    "cached artefact {} not used ({e}); recompiling",
                    path.display()
                ),
            }
        }
        let marker = self.dir.join(format!("compiling-{hash}"));
        let boot = telem_core::journal::boot_id();
        // Declared before the lock is taken, so it is dropped after the
        // lock's guard whichever way this function leaves (its drop takes
        // the same lock).
        let _compiling: Compiling<'_>;
        {
            let mut compiles = self.compiling.lock().expect("compiling lock");
            if compiles.stopping {
                return Err(wasmtime::Error::new(Stopping));
            }
            if compiles.running.contains(&hash) {
                return Err(wasmtime::Error::new(StillCompiling));
            }
            // A crash marker is read before this compile counts as
            // running: a stop meanwhile takes back only the markers of
            // compiles under way, never this one.
            match std::fs::read_to_string(&marker) {
                Ok(b) if b.trim() == boot => {
                    return Err(wasmtime::Error::new(CompileCrashed(marker)));
                }
                Ok(_) => tracing::info!(
                    "compile marker {} is from an earlier boot; compiling again",
                    marker.display()
                ),
                Err(_) => {}
            }
            compiles.running.insert(hash.clone());
            _compiling = Compiling(self, hash.clone());
            let _ = std::fs::create_dir_all(&self.dir);
            // Written under the lock: a stop declared after this sees it.
            // A failure leaves no marker, or (a failed directory sync after
            // the rename) one that is removed below all the same.
            let _ = telem_core::fsutil::write_atomic(&marker, boot.as_bytes(), 0o600);
        }
        let compiled = engine.precompile_component(bytes);
        let _ = std::fs::remove_file(&marker);
        let compiled = compiled?;
        if let Some(key) = &key {
            let mac = hex(&mac_of(key, &compiled));
            let written =
                telem_core::fsutil::write_atomic(&path, &compiled, 0o600).and_then(|()| {
                    telem_core::fsutil::write_atomic(&mac_path(&path), mac.as_bytes(), 0o600)
                });
            if let Err(e) = written {
                tracing::warn!("cannot cache the compiled probe at {}: {e}", path.display());
            }
        }
        // SAFETY: these bytes were produced by `precompile_component` just above.
        let c = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((c, hash, true))
    }

    /// Forgets which compilations stopped the daemon (the admin's reload):
    /// those components are tried again.
    pub fn clear_crash_markers(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let running = self
            .compiling
            .lock()
            .expect("compiling lock")
            .running
            .clone();
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hash) = name.strip_prefix("compiling-") {
                if !running.contains(hash) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Takes back the markers of compilations still running when the
    /// daemon stops on a signal: the stop interrupts them, they did not
    /// crash it, so the components must load at the next start (a marker
    /// left behind would refuse a good probe until `telemctl probe
    /// reload`). The compile threads are not waited for: one can take
    /// seconds, longer than a stop should.
    /// No compile starts after this call.
    pub fn release_running_markers(&self) {
        let mut compiles = self.compiling.lock().expect("compiling lock");
        compiles.stopping = true;
        for hash in &compiles.running {
            let _ = std::fs::remove_file(self.dir.join(format!("compiling-{hash}")));
        }
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
                remove_artefact(&e.path());
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
            remove_artefact(&p);
        }
    }
}

fn mac_path(artefact: &Path) -> PathBuf {
    let mut p = artefact.as_os_str().to_owned();
    p.push(".mac");
    PathBuf::from(p)
}

fn remove_artefact(p: &Path) {
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_file(mac_path(p));
}

fn mac_of(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(bytes);
    m.finalize().into_bytes().to_vec()
}

/// Owned by this process's user and writable by no one else.
fn check_private(m: &std::fs::Metadata) -> Result<(), Unusable> {
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(Unusable::Owner(m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(Unusable::Mode(m.mode() & 0o7777));
    }
    Ok(())
}

/// The artefact, open, if owner, mode and MAC hold: the MAC is computed
/// over this descriptor (streamed, never the whole file in memory), and
/// the caller maps this descriptor, so what is verified is what is loaded.
fn open_verified(path: &Path, key: &[u8]) -> Result<std::fs::File, Unusable> {
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    check_private(&f.metadata()?)?;
    let stored = std::fs::read_to_string(mac_path(path))?;
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        m.update(&buf[..n]);
    }
    let want = (0..stored.trim().len())
        .step_by(2)
        .map(|i| {
            stored
                .trim()
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(Unusable::Mac)?;
    m.verify_slice(&want).map_err(|_| Unusable::Mac)?;
    Ok(f)
}

/// Marks an artefact as recently used (for pruning).
fn filetime_touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::options().append(true).open(path)?;
    f.set_modified(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_artefact_is_recompiled_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(dir.path(), &engine);
        let wasm = b"\0asm\x0d\0\x01\0"; // the empty component
        let (_, hash, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(compiled);
        let (_, _, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(!compiled, "a verified artefact is used");
        let path = cache.path(&hash);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, _, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(compiled, "a flipped byte fails the MAC");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, _, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(compiled, "a world-writable artefact is not trusted");
        std::fs::remove_file(mac_path(&path)).unwrap();
        std::fs::write(&path, b"planted").unwrap();
        let (_, _, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(compiled, "an artefact without its MAC is not trusted");
    }

    #[test]
    fn a_compilation_that_never_finished_is_not_tried_again_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(dir.path(), &engine);
        let wasm = b"\0asm\x0d\0\x01\0";
        let marker = dir.path().join(format!("compiling-{}", sha256_hex(wasm)));
        // As left by a daemon killed while compiling, in an earlier boot:
        // tried again.
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(&marker, "someotherboot").unwrap();
        let (_, _, compiled) = cache.get_or_compile(&engine, wasm).unwrap();
        assert!(compiled && !marker.exists());
        // The same component with a custom section: another file.
        let other = b"\0asm\x0d\0\x01\0\x00\x02\x01x";
        let marker = dir.path().join(format!("compiling-{}", sha256_hex(other)));
        // In this boot: refused.
        std::fs::write(&marker, telem_core::journal::boot_id()).unwrap();
        let e = cache.get_or_compile(&engine, other).unwrap_err();
        assert!(e.downcast_ref::<CompileCrashed>().is_some(), "{e}");
        // A compile still running is not started again, nor its marker
        // cleared.
        cache
            .compiling
            .lock()
            .unwrap()
            .running
            .insert(sha256_hex(other));
        let e = cache.get_or_compile(&engine, other).unwrap_err();
        assert!(e.downcast_ref::<StillCompiling>().is_some(), "{e}");
        cache.clear_crash_markers();
        assert!(marker.exists());
        // A stop on a signal takes back the marker of a compile under way
        // (and only that one): it was interrupted, it crashed nothing.
        let crashed = dir.path().join(format!("compiling-{}", sha256_hex(wasm)));
        std::fs::write(&crashed, telem_core::journal::boot_id()).unwrap();
        cache.release_running_markers();
        assert!(!marker.exists() && crashed.exists());
        // And no compile starts after the stop (its marker would outlive
        // the process).
        std::fs::remove_file(&crashed).unwrap();
        let third = b"\0asm\x0d\0\x01\0\x00\x02\x01y";
        let e = cache.get_or_compile(&engine, third).unwrap_err();
        assert!(e.downcast_ref::<Stopping>().is_some(), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("compiling-")
                })
                .count(),
            0
        );
        cache.compiling.lock().unwrap().stopping = false;
        std::fs::write(&marker, telem_core::journal::boot_id()).unwrap();
        cache.compiling.lock().unwrap().running.clear();
        cache.clear_crash_markers();
        let (_, _, compiled) = cache.get_or_compile(&engine, other).unwrap();
        assert!(compiled && !marker.exists());
    }
}
