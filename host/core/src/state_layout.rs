//! What lives under `state_dir`, named once. The daemon, the crash
//! handler, `telemctl` and the sandbox all reach these paths; a name
//! spelled in each of them could drift apart, and a reader looking for
//! "what is in /var/lib/telemetry" finds it here.

use std::path::{Path, PathBuf};

/// The daemon's lock (a second daemon on the same state directory
/// refuses to start).
pub const LOCK_FILE: &str = "telemd.lock";
/// Crashes waiting for a crash probe (written by the root-run handler).
pub const CRASH_INBOX: &str = "crash-inbox";
/// The crashes handled and what was sent for each (`telemctl crash list`).
pub const CRASH_HISTORY: &str = "crash-history";
/// Debug files fetched from debuginfod servers, by build id.
pub const DEBUGINFOD_CACHE: &str = "debuginfod-cache";
/// Compiled probe components and their MACs.
pub const PROBE_CACHE: &str = "probe-cache";
/// Each probe's own directory views (what its grants let it see).
pub const PROBE_VIEWS: &str = "probe-views";
/// Each probe's kept state, source cursors and spent record budget.
pub const PROBE_STATE: &str = "probe-state";
/// Names of probes the admin disabled (kept across restarts).
pub const DISABLED_PROBES: &str = "disabled-probes";
/// The machine id generated when no override file names one.
pub const MACHINE_ID: &str = "machine_id";

/// The paths under one `state_dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    /// The layout under `state_dir`.
    pub fn new(state_dir: &Path) -> StateLayout {
        StateLayout {
            root: state_dir.to_owned(),
        }
    }

    /// `state_dir` itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// See [`LOCK_FILE`].
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// See [`CRASH_INBOX`].
    pub fn crash_inbox(&self) -> PathBuf {
        self.root.join(CRASH_INBOX)
    }

    /// See [`CRASH_HISTORY`].
    pub fn crash_history(&self) -> PathBuf {
        self.root.join(CRASH_HISTORY)
    }

    /// See [`DEBUGINFOD_CACHE`].
    pub fn debuginfod_cache(&self) -> PathBuf {
        self.root.join(DEBUGINFOD_CACHE)
    }

    /// See [`PROBE_CACHE`].
    pub fn probe_cache(&self) -> PathBuf {
        self.root.join(PROBE_CACHE)
    }

    /// See [`PROBE_VIEWS`].
    pub fn probe_views(&self) -> PathBuf {
        self.root.join(PROBE_VIEWS)
    }

    /// See [`PROBE_STATE`].
    pub fn probe_state(&self) -> PathBuf {
        self.root.join(PROBE_STATE)
    }

    /// See [`MACHINE_ID`].
    pub fn machine_id(&self) -> PathBuf {
        self.root.join(MACHINE_ID)
    }

    /// See [`DISABLED_PROBES`].
    pub fn disabled_probes(&self) -> PathBuf {
        self.root.join(DISABLED_PROBES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are on disk in installed systems: renaming one would
    /// orphan what an earlier version left (a disabled probe would come
    /// back, a spent budget renew).
    #[test]
    fn the_names_on_disk_stay_what_installed_systems_have() {
        let l = StateLayout::new(Path::new("/var/lib/telemetry"));
        let under = |p: PathBuf| p.strip_prefix(l.root()).unwrap().display().to_string();
        assert_eq!(under(l.lock_file()), "telemd.lock");
        assert_eq!(under(l.crash_inbox()), "crash-inbox");
        assert_eq!(under(l.probe_cache()), "probe-cache");
        assert_eq!(under(l.probe_views()), "probe-views");
        assert_eq!(under(l.probe_state()), "probe-state");
        assert_eq!(under(l.disabled_probes()), "disabled-probes");
        assert_eq!(under(l.machine_id()), "machine_id");
    }
}
