//! The crash inbox: where the crash handler leaves each crash for `telemd`,
//! one directory per crash (`state_dir/crash-inbox/<id>/`) holding the core
//! (`core`) and what the kernel said about it (`crash.json`). A directory is
//! the unit because the sandbox grants read access by directory: a probe
//! handling a crash can read that crash's entry and nothing else of the
//! inbox. `crash.json` is written last (atomically), so an entry without it
//! is still being written or was abandoned.
//!
//! The layout lives here, in the core crate, because two programs of
//! different privilege share it: the handler (root, from the kernel) writes
//! entries and `telemd` reads them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// The core inside an entry.
pub const CORE_FILE: &str = "core";
/// The metadata inside an entry.
pub const META_FILE: &str = "crash.json";
/// The crashed program, when the handler kept it (see
/// `CrashMeta::program_kept`).
pub const PROGRAM_FILE: &str = "program";
/// Largest program kept with a crash.
pub const PROGRAM_CAP: u64 = 256 << 20;
/// An entry with no metadata this old was abandoned by a handler that died.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What is known of a crash besides its core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashMeta {
    /// `%e`: the process (thread) name.
    pub process_name: String,
    /// `%E` with `!` turned back into `/`.
    pub process_path: Option<String>,
    /// `%p`: pid in the crashed process's namespace.
    pub pid: u32,
    /// `%P`: pid in the initial namespace, when given.
    pub global_pid: Option<u32>,
    /// `%s`.
    pub signal: Option<u32>,
    /// `%u`: the crashed process's uid, when given.
    pub uid: Option<u32>,
    /// Seconds since the epoch when the handler ran.
    pub time: u64,
    /// Bytes of core kept.
    pub core_bytes: u64,
    /// The core was cut at `crash_max_core_size`.
    pub core_truncated: bool,
    /// The crashed program was kept in the entry (`PROGRAM_FILE`): it
    /// lay outside `/usr`, or was deleted while it ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub program_kept: bool,
}

/// Entry ids are made by the handler: letters, digits, `-`; nothing that
/// could step out of the inbox.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Entries whose metadata is complete, oldest first.
pub fn pending(inbox: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return Vec::new();
    };
    let mut v: Vec<(SystemTime, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = std::fs::metadata(e.path().join(META_FILE)).ok()?;
            valid_id(&name).then_some((meta.modified().ok()?, name))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Bytes the inbox holds (what the handler checks against its cap).
pub fn inbox_bytes(inbox: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flatten()
        .filter_map(|f| f.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Removes entries whose handler never finished them.
pub fn remove_abandoned(inbox: &Path) {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.join(META_FILE).exists() {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old {
            warn!("removing abandoned crash entry {}", p.display());
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_inbox() {
        assert!(valid_id("1764100000-4242-ab12"));
        for bad in ["", "..", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn pending_lists_complete_entries_oldest_first() {
        let dir = std::env::temp_dir().join(format!("telem-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (id, meta) in [("b", true), ("a", true), ("half", false)] {
            std::fs::create_dir_all(dir.join(id)).unwrap();
            std::fs::write(dir.join(id).join(CORE_FILE), b"core").unwrap();
            if meta {
                std::fs::write(dir.join(id).join(META_FILE), b"{}").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(pending(&dir), ["b", "a"]);
        assert_eq!(inbox_bytes(&dir), 3 * 4 + 2 * 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
