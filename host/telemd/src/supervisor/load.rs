//! Loading one probe file: its provenance (owner, mode, signature), the
//! admin's policy, the compile, and the slot that runs it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::sources::CursorFile;
use telem_core::control::ProbeState;
use telem_core::provenance::{self, Signatures};

use super::triggers::drive;
use super::*;

impl ProbeManager {
    pub(super) async fn load_file(
        self: &Arc<Self>,
        path: &Path,
        seen: Seen,
    ) -> Result<(), ProbeError> {
        let cap = self.sandbox.max_component_bytes();
        let read_error = |source| ProbeError::Read {
            path: path.to_owned(),
            source,
        };
        let refused = |refusal| ProbeError::Refused {
            path: path.to_owned(),
            refusal,
        };
        // Who could have put it there, checked on the file as opened (what
        // is read is what was checked) and on the directories above it.
        let (file, meta) = provenance::open_probe_file(path).map_err(read_error)?;
        let top = self
            .dirs
            .iter()
            .find(|d| path.starts_with(d))
            .map_or_else(|| path.parent().unwrap_or(path).to_owned(), Clone::clone);
        provenance::check_tree(path, &meta, &top, &self.trust().owners).map_err(refused)?;
        // What it is before how large it is: an ELF file named `.wasm` is
        // told it is not WebAssembly.
        let mut header = [0u8; 8];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut header, 0).map_err(read_error)?;
        telem_sandbox::check_magic(&header[..n]).map_err(|reason| telem_sandbox::LoadError {
            file: path.display().to_string(),
            reason,
        })?;
        if seen.0 > cap {
            return Err(ProbeError::TooLarge {
                path: path.to_owned(),
                size: seen.0,
                cap,
            });
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut bytes)
            .map_err(read_error)?;
        let hash = telem_sandbox::cache::sha256_hex(&bytes);
        // The name a grant, a pin or a signature is for: the file's (a
        // component claiming another name is refused below).
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default();
        let pin = self.policies().get(&stem).and_then(|p| p.sha256.clone());
        provenance::check_pin(&stem, pin.as_deref(), &hash).map_err(refused)?;
        let trust = self.trust();
        let signatures = Signatures::load(
            trust.require_signatures,
            &trust.trusted_keys_dir,
            &trust.owners,
        );
        for (key, why) in &signatures.skipped {
            warn!("trusted key {} not used: {why}", key.display());
        }
        let signed_by = signatures
            .check(path, &bytes, &trust.owners)
            .map_err(refused)?
            .map(|k| format!("{} ({})", k.name, k.key_id));
        if self
            .registry()
            .refresh_if_same(path, &hash, seen, signed_by.clone())
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let compiled_before = self.compilations();
        let probe = {
            let (sandbox, policies, path) =
                (self.sandbox.clone(), self.policies(), path.to_owned());
            self.on_probe_runtime(async move {
                sandbox
                    .load(&path, &bytes, |name| {
                        policies.get(name).cloned().unwrap_or_default()
                    })
                    .await
            })
            .await??
        };
        // Grants are keyed by name and the name is the probe's own claim:
        // it must match the file the admin installed, so no component can
        // take another's grant (the crash-symbolizer's, say) by its name.
        if stem != probe.name {
            return Err(ProbeError::NameNotFile {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        let how = if self.compilations() > compiled_before {
            "compiled"
        } else {
            "from cache"
        };
        if self.registry().is_disabled(&probe.name) {
            return Err(ProbeError::DisabledByAdmin {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        if self.policies().get(&probe.name).and_then(|p| p.enabled) == Some(false) {
            return Err(ProbeError::DisabledByConfig {
                path: path.to_owned(),
                name: probe.name.clone(),
            });
        }
        let other = self.registry().other_file_named(&probe.name, path);
        if let Some(other) = other {
            return Err(ProbeError::Duplicate {
                path: path.to_owned(),
                name: probe.name.clone(),
                other,
            });
        }
        info!(
            probe = %probe.name,
            version = %telem_core::untrusted::escape(&probe.manifest.version, telem_core::untrusted::FIELD_CAP),
            "loaded {} ({how}, {} ms); grant: read {:?}, classifications {:?}, {} MiB, {} ms, {}/h, crashes {}, kernel log {}, {} files source(s), state {} KiB; {} request(s) refused{}",
            path.display(),
            started.elapsed().as_millis(),
            probe.grant.read_paths,
            probe.grant.classifications,
            probe.grant.memory_limit_mib,
            probe.grant.timeout_ms,
            probe.grant.max_records_per_hour,
            probe.grant.crashes,
            probe.grant.kernel_log,
            probe.grant.files.len(),
            probe.grant.state_quota_bytes >> 10,
            probe.grant.refused.len(),
            if probe.grant.refused.is_empty() {
                String::new()
            } else {
                format!(" (telemctl probe info {})", probe.name)
            }
        );
        let handles_crashes = probe.grant.crashes;
        let probe = Arc::new(probe);
        let state = Arc::new(Mutex::new(ProbeState::Running));
        // Read outside the registry's lock (it is a file).
        let known = self.registry().cursor_file(&probe.name);
        let cursors = match known {
            Some(c) => c,
            None => {
                let loaded = Arc::new(CursorFile::load(&self.sources.cursor_dir, &probe.name));
                self.registry().keep_cursor_file(&probe.name, loaded)
            }
        };
        let task = tokio::spawn(drive(
            self.clone(),
            probe.clone(),
            state.clone(),
            cursors.clone(),
        ));
        let replaced = self.registry().loaded(
            path,
            Slot {
                signed_by,
                probe,
                state,
                cursors,
                task: Some(task),
                seen,
            },
        );
        drop(replaced);
        if handles_crashes {
            self.crash_probe_loaded.notify_one();
        }
        Ok(())
    }
}
