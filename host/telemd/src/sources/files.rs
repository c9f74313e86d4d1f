//! The `files` source: which files in a watched directory match the
//! probe's pattern, and which of them the probe has not been told of.
//! Symlinks are never followed and at most [`MAX_ENTRIES`] entries are
//! looked at per scan, so a hostile directory costs bounded time and
//! memory.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Most directory entries one scan looks at.
pub const MAX_ENTRIES: usize = 10_000;
/// Deepest match: `a/b/c` relative to the directory.
pub const MAX_DEPTH: usize = 3;
/// A file younger than this, and changed since the last scan, may still be
/// being written: it is noticed on a later scan.
pub const SETTLE: Duration = Duration::from_secs(2);

/// A matching file, and what tells a new file of that name from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Found {
    /// Modification time, seconds since the epoch (first: oldest first).
    pub modified: u64,
    /// Path relative to the directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Whether `name` matches `pattern`: `*` is any run of characters but
/// `/`, `?` one character but `/`, anything else itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                go(&p[1..], n) || (n.first().is_some_and(|&c| c != b'/') && go(p, &n[1..]))
            }
            (Some(b'?'), Some(&c)) if c != b'/' => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The regular files under `dir` whose relative path matches `pattern`.
pub fn scan(dir: &Path, pattern: &str) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut budget = MAX_ENTRIES;
    walk(dir, "", pattern, 1, &mut budget, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    pattern: &str,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<Found>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = format!("{prefix}{name}");
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if depth < MAX_DEPTH && pattern.matches('/').count() >= depth {
                let _ = walk(
                    &entry.path(),
                    &format!("{rel}/"),
                    pattern,
                    depth + 1,
                    budget,
                    out,
                );
            }
        } else if meta.is_file() && matches(pattern, &rel) {
            out.push(Found {
                modified: secs(meta.modified().unwrap_or(UNIX_EPOCH)),
                path: rel,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a probe was told of in one directory, and what the last scan saw
/// (to tell a settled file from one still being written).
#[derive(Debug, Default)]
pub struct Watch {
    /// Told of, and still there (kept across restarts).
    pub told: BTreeSet<Found>,
    last_scan: BTreeSet<Found>,
}

impl Watch {
    /// A watch that was told of `told` before.
    pub fn new(told: BTreeSet<Found>) -> Watch {
        Watch {
            told,
            last_scan: BTreeSet::new(),
        }
    }

    /// Takes a scan: forgets files that are gone (a new file of the same
    /// name is new) and returns the settled ones not told yet, oldest first.
    pub fn new_files(&mut self, scan: Vec<Found>, now: SystemTime) -> Vec<Found> {
        let now = secs(now);
        let seen: BTreeSet<Found> = scan.into_iter().collect();
        self.told.retain(|f| seen.contains(f));
        let fresh = seen
            .iter()
            .filter(|f| !self.told.contains(*f))
            .filter(|f| {
                self.last_scan.contains(*f) || now.saturating_sub(f.modified) >= SETTLE.as_secs()
            })
            .cloned()
            .collect();
        self.last_scan = seen;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("dmesg-*", "dmesg-efi-1"));
        assert!(!matches("dmesg-*", "console-ramoops-0"));
        assert!(matches("*/*/dmesg.txt", "1682630623/014/dmesg.txt"));
        assert!(!matches("*/dmesg.txt", "a/b/dmesg.txt"), "* crosses no /");
        assert!(matches("dmesg-ramoops-?", "dmesg-ramoops-0"));
        assert!(!matches("dmesg-ramoops-?", "dmesg-ramoops-10"));
    }

    #[test]
    fn scans_match_by_relative_path_and_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("1682630623/014")).unwrap();
        std::fs::write(d.path().join("1682630623/014/dmesg.txt"), "x").unwrap();
        std::fs::write(d.path().join("dmesg-ramoops-0"), "yy").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("dmesg-ramoops-1")).unwrap();
        let got: Vec<String> = scan(d.path(), "dmesg-ramoops-*")
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(got, ["dmesg-ramoops-0"]);
        let got: Vec<String> = scan(d.path(), "*/*/dmesg.txt")
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(got, ["1682630623/014/dmesg.txt"]);
    }

    #[test]
    fn each_file_once_and_only_once_settled() {
        let f = |p: &str, m| Found {
            modified: m,
            path: p.into(),
            size: 1,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let mut w = Watch::default();
        // An old file is settled at once; a new one waits for a second scan.
        assert_eq!(
            w.new_files(vec![f("a", 10), f("b", 1000)], now),
            vec![f("a", 10)]
        );
        w.told.insert(f("a", 10));
        assert_eq!(
            w.new_files(vec![f("a", 10), f("b", 1000)], now),
            vec![f("b", 1000)]
        );
        w.told.insert(f("b", 1000));
        assert!(w.new_files(vec![f("a", 10), f("b", 1000)], now).is_empty());
        // Removed, then a new file of the same name: told again.
        assert!(w.new_files(vec![f("b", 1000)], now).is_empty());
        assert_eq!(
            w.new_files(vec![f("a", 20), f("b", 1000)], now),
            vec![f("a", 20)]
        );
    }
}
