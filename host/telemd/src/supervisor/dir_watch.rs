//! Changes in the probe directories, as the kernel tells them (inotify,
//! through the `notify` crate): a probe dropped in is loaded within a
//! fraction of a second instead of at the next scan. The scan goes on as
//! the fallback (a directory that appears later, a full inotify watch
//! table, a filesystem that tells nothing).

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// Watches the probe directories that exist; each change wakes the
/// receiver (changes that come while it is awake are one wake).
pub(super) struct DirWatch {
    watcher: Option<notify::RecommendedWatcher>,
    watched: Vec<PathBuf>,
}

impl DirWatch {
    /// A watcher whose changes go to `wake`; none when inotify cannot be
    /// used at all (the scan then does all the work).
    pub(super) fn new(wake: mpsc::Sender<()>) -> DirWatch {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = event.is_ok_and(|e| !e.kind.is_access() || is_close_write(&e.kind));
            if relevant {
                // Full: a wake is already pending, which covers this one.
                let _ = wake.try_send(());
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                info!("probe directories are scanned only, not watched: {e}");
                None
            }
        };
        DirWatch {
            watcher,
            watched: Vec::new(),
        }
    }

    /// Watches each of `dirs` that exists and is not watched yet (called at
    /// every scan, so a directory made later is watched from then on).
    pub(super) fn watch(&mut self, dirs: &[PathBuf]) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for d in dirs {
            if self.watched.contains(d) || !d.is_dir() {
                continue;
            }
            match w.watch(Path::new(d), RecursiveMode::NonRecursive) {
                Ok(()) => self.watched.push(d.clone()),
                Err(e) => debug!("probe directory {} not watched: {e}", d.display()),
            }
        }
    }
}

fn is_close_write(kind: &notify::EventKind) -> bool {
    matches!(
        kind,
        notify::EventKind::Access(notify::event::AccessKind::Close(
            notify::event::AccessMode::Write
        ))
    )
}
