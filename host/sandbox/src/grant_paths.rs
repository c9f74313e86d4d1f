//! A probe's grant as one call sees it: each granted path resolved again
//! (a symlink swapped in since the load is caught), checked against the
//! daemon's own directories and, for the safe set, still inside it; the
//! directories preopened whole and the single files shown in views.

use std::path::PathBuf;

use telem_core::grants::{self, HostRules};

use crate::file_views;
use crate::probe::LoadedProbe;
use crate::probe_log::{escape, FIELD_CAP};
use crate::sandbox_options::ExtraDir;

/// The granted paths as they are now: each resolved (symlinks
/// followed) and checked again, since a path checked at load may have
/// been swapped for a link since: never into the daemon's own
/// directories, and a safe-set path never out of the safe set. Returns
/// the (host, guest) directories to preopen and the files to show.
/// `extra_read` (the host's choice: a crash's inbox entry, a `files`
/// source's directory): the daemon's own directories are shown as
/// they are; any other is resolved and checked like a grant (never
/// into the daemon's directories), whatever name it is shown under. A
/// granted path that an extra directory shows under the same name is
/// left to the extra one.
pub(crate) fn resolve(
    probe: &LoadedProbe,
    extra_read: &[ExtraDir],
    rules: &HostRules,
) -> (Vec<(PathBuf, PathBuf)>, Vec<file_views::GrantedFile>) {
    let g = &probe.grant;
    let mut dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for extra in extra_read {
        if extra.host_owned {
            if extra.host.is_dir() {
                dirs.push((extra.host.clone(), extra.guest.clone()));
            }
            continue;
        }
        let Ok(real) = extra.host.canonicalize() else {
            continue;
        };
        if let Some(why) = grants::never_grantable(&real, rules) {
            tracing::warn!(
                probe = %probe.name,
                "source directory {} left out of this call: it resolves to {}: {why}",
                escape(&extra.host.display().to_string(), FIELD_CAP),
                escape(&real.display().to_string(), FIELD_CAP)
            );
            continue;
        }
        if real.is_dir() {
            dirs.push((real, extra.guest.clone()));
        }
    }
    let mut files = Vec::new();
    for p in g
        .read_paths
        .iter()
        .filter(|p| !extra_read.iter().any(|e| e.guest == **p))
    {
        if grants::is_safe_proc_file(p) {
            files.push(file_views::GrantedFile {
                host: p.clone(),
                guest: p.clone(),
                follow: true,
            });
            continue;
        }
        let Ok(real) = p.canonicalize() else {
            tracing::debug!(probe = %probe.name, "granted path {} does not exist here; left out", p.display());
            continue;
        };
        let refusal = grants::never_grantable(&real, rules).or_else(|| {
            (!g.read_paths_by_admin && !grants::is_safe_path(&real))
                .then(|| "it now leads outside the safe set".to_owned())
        });
        if let Some(why) = refusal {
            tracing::warn!(
                probe = %probe.name,
                "granted path {} left out of this call: it resolves to {}: {why}",
                escape(&p.display().to_string(), FIELD_CAP),
                escape(&real.display().to_string(), FIELD_CAP)
            );
            continue;
        }
        if real.is_dir() {
            dirs.push((real, p.clone()));
        } else if !g.read_paths.iter().any(|d| p.parent() == Some(d.as_path())) {
            // Shown alone unless its directory is granted whole already.
            files.push(file_views::GrantedFile {
                host: real,
                guest: p.clone(),
                follow: false,
            });
        }
    }
    (dirs, files)
}
