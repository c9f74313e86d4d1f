//! Finding the probe files and telling which changed: sizes, mtimes and
//! provenance stamps, the settle rule for half-written files, one scan at
//! a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tracing::{info, warn};

use telem_core::error_text::Chain;
use telem_core::provenance::Signatures;

use super::registry::Step;
use super::*;

/// The provenance stamp of [`Seen`].
pub(super) fn provenance_stamp(file: &std::fs::Metadata, path: &Path, keys_dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut meta = |m: Option<std::fs::Metadata>| match m {
        Some(m) => (
            m.dev(),
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
            .hash(&mut h),
        None => 0u8.hash(&mut h),
    };
    meta(Some(file.clone()));
    meta(path.parent().and_then(|d| std::fs::metadata(d).ok()));
    meta(Signatures::signature_path(path).and_then(|s| std::fs::symlink_metadata(s).ok()));
    meta(std::fs::metadata(keys_dir).ok());
    h.finish()
}

impl ProbeManager {
    pub(super) fn wasm_files(&self) -> HashMap<PathBuf, Seen> {
        let mut out = HashMap::new();
        for dir in &self.dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "wasm") {
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        // A symlink is listed too, to be refused with why.
                        if m.is_file() || m.file_type().is_symlink() {
                            let stamp = provenance_stamp(&m, &p, &self.trust().trusted_keys_dir);
                            out.insert(p, (m.len(), m.modified().unwrap_or(UNIX_EPOCH), stamp));
                        }
                    }
                }
            }
        }
        out
    }

    /// One pass over the probe directories. With `settle`, a new or changed
    /// file is loaded only once it looked the same on two passes (so a
    /// half-copied file is not loaded); at start-up files load at once.
    pub async fn scan(self: &Arc<Self>, settle: bool) {
        let _one_at_a_time = self.scan_lock.lock().await;
        self.scan_locked(settle).await;
    }

    /// [`Self::scan`], its caller holding `scan_lock`: scans never overlap,
    /// so a slow compile is not started twice nor taken for a crash.
    pub(super) async fn scan_locked(self: &Arc<Self>, settle: bool) {
        let files = self.wasm_files();
        let stopped = self.registry().forget_missing(&files);
        for slot in stopped {
            info!(probe = %slot.probe.name, "probe file {} removed; probe stopped", slot.probe.file.display());
        }
        let mut changed = false;
        // In a fixed order (directories as configured, then by name), so
        // which of two same-named files wins does not change from run to run.
        let mut files: Vec<(PathBuf, Seen)> = files.into_iter().collect();
        files.sort_by_key(|(p, _)| (self.dirs.iter().position(|d| p.starts_with(d)), p.clone()));
        for (path, seen) in files {
            if self.registry().next_step(&path, seen, settle) != Step::Load {
                continue;
            }
            changed = true;
            if let Err(e) = self.load_file(&path, seen).await {
                // The file named once: a refusal that names it itself
                // goes without the prefix.
                let text = Chain(&e).to_string();
                let file = path.display().to_string();
                let line = match text.strip_prefix(&format!("{file}: ")) {
                    Some(rest) if rest.contains(&file) => rest,
                    _ => &text,
                };
                warn!("probe not loaded: {line}");
                // A probe the admin turned off is not refused: `status`
                // lists it as disabled.
                let reason = match &e {
                    ProbeError::DisabledByAdmin { .. } | ProbeError::DisabledByConfig { .. } => {
                        None
                    }
                    ProbeError::Refused { refusal, .. } => Some(refusal.to_string()),
                    // `probe list` shows the file beside the reason: the
                    // reason does not say it again.
                    _ => Some(
                        text.strip_prefix(&format!("{file}: "))
                            .unwrap_or(&text)
                            .to_owned(),
                    ),
                };
                self.registry().failed(&path, seen, reason);
            }
        }
        if changed {
            let in_use = self.registry().hashes_in_use();
            self.sandbox.cache().prune(&in_use);
        }
    }

    /// The scan lock for an admin's request, waited for at most
    /// [`FIRST_SCAN_WAIT`]: a scan stuck compiling must not hang telemctl.
    pub(super) async fn scan_lock_for_admin(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ProbeError> {
        tokio::time::timeout(FIRST_SCAN_WAIT, self.scan_lock.lock())
            .await
            .map_err(|_| ProbeError::Busy)
    }
}
