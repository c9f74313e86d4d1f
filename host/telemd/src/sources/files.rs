//! The `files` source: which files in a watched directory match the
//! probe's pattern, and which of them the probe has not been told of.
//! Symlinks are never followed (each subdirectory is opened beneath its
//! parent's descriptor, refusing a symlink swapped in for it since it was
//! listed) and at most [`MAX_ENTRIES`] entries are looked at per scan, so a
//! hostile directory costs bounded time and memory.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use telem_core::fsutil::beneath;

use telem_core::control::ProbeState;
use telem_core::grants::FilesWatch;
use telem_sandbox::{BatchLimits, Event, FileNotice, LoadedProbe};

use super::{batch_limits, on_host, save, watch_key, BatchConsumer, CursorFile};

/// Most directory entries one scan looks at.
pub const MAX_ENTRIES: usize = 10_000;
/// Deepest match: `a/b/c` relative to the directory.
pub const MAX_DEPTH: usize = telem_core::grants::MAX_PATTERN_PARTS;
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
/// `/`, `?` one character but `/`, anything else itself. Part by part
/// (split at `/`), each in time linear in its pattern times its name:
/// a pattern of many `*` costs no more than that (the probe chooses it).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), name.split('/').collect());
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| part_matches(p.as_bytes(), n.as_bytes()))
}

/// The usual wildcard match with one backtrack point: on a mismatch the
/// last `*` takes one more byte.
fn part_matches(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

pub use telem_core::grants::files_pattern_refusal as pattern_refusal;

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The matching regular files, oldest first.
    pub found: Vec<Found>,
    /// Whether every entry was looked at ([`MAX_ENTRIES`] not reached).
    pub complete: bool,
}

/// The regular files under `dir` whose relative path matches `pattern`.
pub fn scan(dir: &Path, pattern: &str) -> std::io::Result<Scan> {
    let mut found = Vec::new();
    let mut budget = MAX_ENTRIES;
    let dir = beneath::open_dir(dir)?;
    walk(&dir, "", pattern, 1, &mut budget, &mut found)?;
    found.sort();
    Ok(Scan {
        found,
        complete: budget > 0,
    })
}

fn walk(
    dir: &Dir,
    prefix: &str,
    pattern: &str,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<Found>,
) -> std::io::Result<()> {
    for entry in dir.entries()? {
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = format!("{prefix}{name}");
        // The entry itself, a symlink not followed.
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if depth < MAX_DEPTH && pattern.matches('/').count() >= depth {
                if let Ok(sub) = beneath::open_subdir(dir, &name) {
                    let _ = walk(&sub, &format!("{rel}/"), pattern, depth + 1, budget, out);
                }
            }
        } else if meta.is_file() && matches(pattern, &rel) {
            out.push(Found {
                modified: secs(meta.modified().map_or(UNIX_EPOCH, |t| t.into_std())),
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
    /// name is new; only after a complete scan, since a cut one does not
    /// see them all) and returns the settled ones not told yet, oldest
    /// first.
    pub fn new_files(&mut self, scan: Scan, now: SystemTime) -> Vec<Found> {
        let now = secs(now);
        let seen: BTreeSet<Found> = scan.found.into_iter().collect();
        if scan.complete {
            self.told.retain(|f| seen.contains(f));
        }
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

/// Tells `probe` of new files in `watch.dir`, scan by scan.
pub async fn drive<C: BatchConsumer>(
    mgr: Arc<C>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    watch: FilesWatch,
    limits: BatchLimits,
    missing: Arc<Mutex<HashSet<PathBuf>>>,
) {
    let interval = mgr.source_options().files_scan_interval;
    let key = watch_key(&watch);
    let host_dir = on_host(&mgr.source_options().sources_root, &watch.dir);
    let extra = [telem_sandbox::ExtraDir {
        host: host_dir.clone(),
        guest: watch.dir.clone(),
        host_owned: false,
    }];
    let told = cursors
        .cursors
        .lock()
        .expect("cursor lock")
        .files
        .get(&key)
        .cloned()
        .unwrap_or_default();
    let mut w = Watch::new(told);
    let (max_items, _) = batch_limits(&limits);
    let mut said = false;
    let mut refused = false;
    let mut said_cut = false;
    loop {
        if let Some(why) = mgr.source_dir_refusal(&probe, &host_dir) {
            if !refused {
                tracing::warn!(probe = %probe.name, "files source {} not scanned: {why}", host_dir.display());
                refused = true;
            }
            tokio::time::sleep(interval).await;
            continue;
        }
        refused = false;
        let (dir, pattern) = (host_dir.clone(), watch.pattern.clone());
        let scan = tokio::task::spawn_blocking(move || scan(&dir, &pattern)).await;
        match scan {
            Ok(Ok(scan)) => {
                said = false;
                missing.lock().expect("missing lock").remove(&host_dir);
                if !scan.complete && !said_cut {
                    tracing::warn!(probe = %probe.name, "{} holds over {} entries; scans look at that many only", host_dir.display(), MAX_ENTRIES);
                    said_cut = true;
                }
                let fresh = w.new_files(scan, SystemTime::now());
                for chunk in fresh.chunks(max_items) {
                    let notices = chunk
                        .iter()
                        .map(|f| FileNotice {
                            path: watch.dir.join(&f.path).display().to_string(),
                            size: f.size,
                            modified: f.modified,
                        })
                        .collect();
                    let event = Event::Files((watch.dir.display().to_string(), notices));
                    let _commit = cursors.commit.lock().await;
                    if !mgr.deliver_batch(&probe, &state, event, &extra).await {
                        return;
                    }
                    w.told.extend(chunk.iter().cloned());
                    let (k, told) = (key.clone(), w.told.clone());
                    let saved = save(&cursors, move |c| {
                        c.files.insert(k, told);
                    })
                    .await;
                    if let Err(e) = saved {
                        tracing::error!(probe = %probe.name, "files cursor not saved: {e}; a restart tells of these files again");
                    }
                }
            }
            Ok(Err(e)) => {
                if !said {
                    // No such directory is the common case (no pstore on
                    // this machine): worth a line, not a warning.
                    // The probe's sources in one directory say so once.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        if missing
                            .lock()
                            .expect("missing lock")
                            .insert(host_dir.clone())
                        {
                            tracing::info!(probe = %probe.name, "{} does not exist (yet); looking again every scan", host_dir.display());
                        }
                    } else {
                        tracing::warn!(probe = %probe.name, "cannot scan {} ({e}); trying again every scan", host_dir.display());
                    }
                    said = true;
                }
            }
            Err(e) => {
                tracing::error!(probe = %probe.name, "scan of {} failed: {e}", watch.dir.display())
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_of_many_stars_costs_linear_time() {
        // With backtracking at every `*` this call would not return.
        let p = format!("{}X", "*".repeat(250));
        assert!(!matches(&p, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(matches(&p, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaX"));
        assert!(pattern_refusal("").is_some());
        assert!(pattern_refusal("a/b/c/d").is_some());
        assert!(pattern_refusal("../x").is_some());
        assert!(pattern_refusal("a//b").is_some());
        assert_eq!(pattern_refusal("*/*/dmesg.txt"), None);
    }

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
            .found
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(got, ["dmesg-ramoops-0"]);
        let got: Vec<String> = scan(d.path(), "*/*/dmesg.txt")
            .unwrap()
            .found
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(got, ["1682630623/014/dmesg.txt"]);
        // A symlinked directory is not entered.
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        assert!(scan(d.path(), "*/passwd").unwrap().found.is_empty());
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
        let full = |found: Vec<Found>| Scan {
            found,
            complete: true,
        };
        // An old file is settled at once; a new one waits for a second scan.
        assert_eq!(
            w.new_files(full(vec![f("a", 10), f("b", 1000)]), now),
            vec![f("a", 10)]
        );
        w.told.insert(f("a", 10));
        assert_eq!(
            w.new_files(full(vec![f("a", 10), f("b", 1000)]), now),
            vec![f("b", 1000)]
        );
        w.told.insert(f("b", 1000));
        assert!(w
            .new_files(full(vec![f("a", 10), f("b", 1000)]), now)
            .is_empty());
        // Removed, then a new file of the same name: told again.
        // A cut scan that misses `a` does not forget it.
        let cut = Scan {
            found: vec![f("b", 1000)],
            complete: false,
        };
        assert!(w.new_files(cut, now).is_empty());
        assert!(w.told.contains(&f("a", 10)));
        assert!(w.new_files(full(vec![f("b", 1000)]), now).is_empty());
        assert_eq!(
            w.new_files(full(vec![f("a", 20), f("b", 1000)]), now),
            vec![f("a", 20)]
        );
    }
}
