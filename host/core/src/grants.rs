//! What a probe may do. Deny by default: a manifest only *asks*; the host
//! grants without the admin's word just a documented safe set (read-only
//! paths under `/usr/share`, a list of `/proc` files that hold no
//! per-process secrets, classifications `DOMAIN/NAME/*` in the probe's own
//! name), and everything else needs the admin's `[probes.NAME]` table. An
//! admin key, when present, replaces the manifest's request outright (that
//! is how a grant is narrowed or approved). Some things no one can grant:
//! relative paths, `/`, another process's `/proc` entries, and the daemon's
//! own state, spool, journal and crash inbox. Every refusal is kept with its
//! reason so `telemctl probe info` can say why.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::probe_policy::{
    ProbePolicy, DEFAULT_MAX_RECORDS_PER_HOUR, DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_MIN_INTERVAL_SECS,
    DEFAULT_STATE_QUOTA_MIB, DEFAULT_TIMEOUT_MS,
};

/// Directories a probe may read without the admin's approval: shared,
/// world-readable data of installed packages.
pub const SAFE_DIRS: [&str; 1] = ["/usr/share"];

/// `/proc` files a probe may read without the admin's approval: machine-wide
/// figures any local user can read, nothing about one process.
pub const SAFE_PROC_FILES: [&str; 14] = [
    "/proc/buddyinfo",
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/filesystems",
    "/proc/loadavg",
    "/proc/meminfo",
    "/proc/mounts",
    "/proc/partitions",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/version",
    "/proc/vmstat",
    "/proc/zoneinfo",
];

/// Classification domains and names only the admin can grant, whatever the
/// probe is called: crash records are trusted by triagers as the output of
/// the crash path.
pub const RESERVED_CLASSIFICATIONS: [(&str, &str); 1] = [("org.clearlinux", "crash")];

/// What the host decides for every probe, whatever its table says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRules {
    /// Ceiling on records per hour.
    pub max_records_per_hour: u32,
    /// Shortest interval trigger; shorter ones are raised to it.
    pub min_interval_secs: u64,
    /// The daemon's own directories (state, spool, journal, crash inbox):
    /// never readable by a probe, nor any directory above them.
    pub protected_dirs: Vec<PathBuf>,
}

impl HostRules {
    /// The daemon's rules, from its config: its ceilings, and its own
    /// directories (state, spool, journal, crash inbox, as written and as
    /// resolved) never readable by a probe. `telemctl probe test` applies
    /// the same.
    pub fn for_config(config: &crate::config::Config) -> HostRules {
        let inbox = crate::state_layout::StateLayout::new(&config.host.state_dir).crash_inbox();
        let mut protected_dirs = Vec::new();
        for d in [
            &config.host.state_dir,
            &config.spool.spool_dir,
            &config.journal.journal_dir,
            &inbox,
        ] {
            protected_dirs.push(d.clone());
            if let Ok(real) = d.canonicalize() {
                protected_dirs.push(real);
            }
        }
        HostRules {
            max_records_per_hour: config.probes.max_records_per_hour.get() as u32,
            min_interval_secs: config.probes.probe_min_interval_secs.get(),
            protected_dirs,
        }
    }

    /// Rules with the default ceiling and no protected directories (tests,
    /// `telemctl crash symbolize`, which runs as the admin).
    pub fn permissive() -> HostRules {
        HostRules {
            max_records_per_hour: DEFAULT_MAX_RECORDS_PER_HOUR,
            min_interval_secs: DEFAULT_MIN_INTERVAL_SECS,
            protected_dirs: Vec::new(),
        }
    }
}

/// What the probe asked for in `describe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Paths to read.
    pub read_paths: Vec<PathBuf>,
    /// Classification patterns.
    pub classifications: Vec<String>,
    /// Records per hour.
    pub max_records_per_hour: u32,
    /// The crash trigger.
    pub crashes: bool,
    /// The interval trigger, in seconds.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// The kernel log source.
    #[serde(default)]
    pub kernel_log: bool,
    /// `files` sources: directories to watch and which files. Each
    /// directory is also asked for as a read path (that is how it is
    /// granted).
    #[serde(default)]
    pub files: Vec<FilesWatch>,
    /// The journal source, with the fields it wants.
    #[serde(default)]
    pub journal: Option<Vec<String>>,
}

/// Most parts (`/`-separated) a `files` pattern has: a dump two levels
/// down (`*/*/dmesg.txt`) is the deepest a shipped probe needs.
pub const MAX_PATTERN_PARTS: usize = 3;

/// Why a manifest's `files` pattern is refused, if it is: empty, over 255
/// bytes, more than [`MAX_PATTERN_PARTS`] parts, or an empty, `.` or `..`
/// part.
pub fn files_pattern_refusal(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() || pattern.len() > 255 {
        return Some("a files pattern is 1 to 255 bytes");
    }
    let parts: Vec<&str> = pattern.split('/').collect();
    if parts.len() > MAX_PATTERN_PARTS {
        return Some("a files pattern has at most 3 parts (a/b/c)");
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Some("a files pattern's parts are not empty, . or ..");
    }
    None
}

/// One `files` source: a directory and the pattern of the files in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesWatch {
    /// The directory.
    pub dir: PathBuf,
    /// The files' paths relative to it (`*`, `?`).
    pub pattern: String,
}

/// One thing asked for and not granted, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What was asked for (`read /`, `classification */*/*`, `crashes`,
    /// `max_records_per_hour 4294967295`).
    pub item: String,
    /// Why it was refused or cut.
    pub reason: String,
}

/// The effective grant a probe runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Read-only paths, at the same path in the guest. A directory is
    /// preopened whole; a file is shown alone in its directory.
    pub read_paths: Vec<PathBuf>,
    /// Classification patterns.
    pub classifications: Vec<String>,
    /// Memory cap in MiB, all linear memories of a call together.
    pub memory_limit_mib: u64,
    /// Wall time per call in ms, host calls included.
    pub timeout_ms: u64,
    /// Records per hour.
    pub max_records_per_hour: u32,
    /// Handed each crash, with read access to that crash's inbox entry.
    pub crashes: bool,
    /// The interval trigger, in seconds, at least the host's minimum.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Whether `read_paths` are the admin's (else the safe set's, which
    /// must still be safe once symlinks are resolved at each call).
    #[serde(default)]
    pub read_paths_by_admin: bool,
    /// Handed the kernel log.
    #[serde(default)]
    pub kernel_log: bool,
    /// `files` sources granted: those whose directory is a granted read
    /// path.
    #[serde(default)]
    pub files: Vec<FilesWatch>,
    /// Bytes of private state the probe may keep.
    #[serde(default)]
    pub state_quota_bytes: u64,
    /// Handed journal entries, with these fields only (`None`: not at all).
    #[serde(default)]
    pub journal: Option<Vec<String>>,
    /// What was asked for and not granted, and why.
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

/// Why a path can never be granted, if it can't.
pub fn never_grantable(path: &Path, rules: &HostRules) -> Option<String> {
    if !path.is_absolute() {
        return Some("relative paths are never granted".into());
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Some("paths with . or .. are never granted".into());
    }
    if path == Path::new("/") {
        return Some("/ is never granted".into());
    }
    if let Ok(rest) = path.strip_prefix("/proc") {
        if rest.as_os_str().is_empty() {
            return Some("/proc as a whole is never granted (it holds every process)".into());
        }
        let first = rest
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if first == "self" || first == "thread-self" || first.bytes().all(|b| b.is_ascii_digit()) {
            return Some("per-process /proc entries are never granted".into());
        }
    }
    for dir in &rules.protected_dirs {
        if path.starts_with(dir) || dir.starts_with(path) {
            return Some(format!(
                "{} is (or holds) the daemon's own {} and is never granted",
                path.display(),
                dir.display()
            ));
        }
    }
    None
}

/// Whether `path` is in the safe set granted without the admin's approval.
pub fn is_safe_path(path: &Path) -> bool {
    is_under_any(path, &SAFE_DIRS) || is_safe_proc_file(path)
}

fn is_under_any(path: &Path, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| path.starts_with(d))
}

/// Whether `path` is one of the safe `/proc` files (read by the host by
/// name: `/proc/mounts` is a symlink to `self/mounts`).
pub fn is_safe_proc_file(path: &Path) -> bool {
    SAFE_PROC_FILES.iter().any(|f| path == *f)
}

/// Whether `path` is in the safe set and, where it exists, still is once
/// its symlinks are resolved (`/usr/share/x` may lead to `/etc/x`).
pub fn is_safe_after_resolving(path: &Path) -> bool {
    is_safe_proc_file(path) || stays_under(path, &SAFE_DIRS)
}

/// Whether `path` is under one of `dirs`, before and after resolving.
fn stays_under(path: &Path, dirs: &[&str]) -> bool {
    is_under_any(path, dirs)
        && std::fs::canonicalize(path).map_or(true, |real| is_under_any(&real, dirs))
}

/// Why `path` can't be granted, checking both the path as written and,
/// when it exists, where its symlinks lead (a link under a safe directory
/// must not lead into the spool). The safe `/proc` files are fixed names
/// read by the host, so their targets (`/proc/mounts` is `self/mounts`)
/// are not followed.
fn path_refusal(path: &Path, rules: &HostRules) -> Option<String> {
    if let Some(why) = never_grantable(path, rules) {
        return Some(why);
    }
    if is_safe_proc_file(path) {
        return None;
    }
    match std::fs::canonicalize(path) {
        Ok(real) if real != path => never_grantable(&real, rules)
            .map(|why| format!("it resolves to {}: {why}", real.display())),
        _ => None,
    }
}

/// Whether a classification pattern is the probe's own: `DOMAIN/NAME/*` or
/// `DOMAIN/NAME/LEAF` with a literal domain and NAME the probe's name, and
/// not reserved.
pub fn is_own_classification(probe: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('/').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0] != "*"
        && parts[1] == probe
        && !parts[2].is_empty()
        && !is_reserved(pattern)
}

/// Whether a pattern could match a reserved classification.
pub fn is_reserved(pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('/').collect();
    parts.len() == 3
        && RESERVED_CLASSIFICATIONS.iter().any(|(domain, name)| {
            (parts[0] == "*" || parts[0].eq_ignore_ascii_case(domain))
                && (parts[1] == "*" || parts[1].eq_ignore_ascii_case(name))
        })
}

impl Grant {
    /// The grant for `probe`'s `request` under the admin's `policy` and the
    /// host's `rules`.
    pub fn effective(
        probe: &str,
        request: &Request,
        policy: &ProbePolicy,
        rules: &HostRules,
    ) -> Grant {
        let mut refused = Vec::new();
        let mut refuse = |item: String, reason: String| refused.push(Refusal { item, reason });

        let mut read_paths = Vec::new();
        match &policy.read_paths {
            Some(approved) => {
                for p in approved {
                    match path_refusal(p, rules) {
                        Some(why) => refuse(format!("read {}", p.display()), why),
                        None => read_paths.push(p.clone()),
                    }
                }
                for p in request
                    .read_paths
                    .iter()
                    .filter(|p| !approved.contains(p) && !policy.also_read.contains(p))
                {
                    refuse(
                        format!("read {}", p.display()),
                        format!("not in [probes.{probe}] read_paths"),
                    );
                }
            }
            None => {
                for p in request
                    .read_paths
                    .iter()
                    .filter(|p| !policy.also_read.contains(p))
                {
                    if let Some(why) = path_refusal(p, rules) {
                        refuse(format!("read {}", p.display()), why);
                    } else if is_safe_after_resolving(p) {
                        read_paths.push(p.clone());
                    } else if is_safe_path(p) {
                        refuse(
                            format!("read {}", p.display()),
                            format!("it leads outside the safe set through a symlink; needs [probes.{probe}] read_paths"),
                        );
                    } else {
                        refuse(
                            format!("read {}", p.display()),
                            format!("outside the safe set; needs [probes.{probe}] read_paths"),
                        );
                    }
                }
            }
        }
        for p in &policy.also_read {
            match path_refusal(p, rules) {
                Some(why) => refuse(format!("read {}", p.display()), why),
                None => read_paths.push(p.clone()),
            }
        }
        // Each once, in the order given (an `also_read` path may be an
        // approved one too).
        let mut once = std::collections::HashSet::new();
        read_paths.retain(|p| once.insert(p.clone()));

        let mut classifications = Vec::new();
        match &policy.classifications {
            Some(approved) => {
                classifications.clone_from(approved);
                // The admin approves patterns: a request is refused only
                // when no approved pattern covers it (one the admin wrote
                // out, or a narrower one of the probe's).
                for c in request
                    .classifications
                    .iter()
                    .filter(|c| !approved.iter().any(|a| pattern_matches(a, c)))
                {
                    refuse(
                        format!("classification {c}"),
                        format!("not in [probes.{probe}] classifications"),
                    );
                }
            }
            None => {
                for c in &request.classifications {
                    if is_own_classification(probe, c) {
                        classifications.push(c.clone());
                    } else if is_reserved(c) {
                        refuse(
                            format!("classification {c}"),
                            format!("reserved for the crash path; only [probes.{probe}] classifications can grant it"),
                        );
                    } else {
                        refuse(
                            format!("classification {c}"),
                            format!(
                                "not DOMAIN/{probe}/...; needs [probes.{probe}] classifications"
                            ),
                        );
                    }
                }
            }
        }

        let asked = policy
            .max_records_per_hour
            .map_or(request.max_records_per_hour, |n| n.get() as u32);
        let max_records_per_hour = asked.min(rules.max_records_per_hour);
        if asked > max_records_per_hour {
            refuse(
                format!("max_records_per_hour {asked}"),
                format!(
                    "cut to the host ceiling max_records_per_hour = {}",
                    rules.max_records_per_hour
                ),
            );
        }

        let crashes = request.crashes && policy.crashes == Some(true);
        if request.crashes && !crashes {
            refuse(
                "crashes".into(),
                match policy.crashes {
                    Some(false) => format!("refused by [probes.{probe}] crashes = false"),
                    _ => format!(
                        "cores hold other processes' memory; needs [probes.{probe}] crashes = true"
                    ),
                },
            );
        }

        let kernel_log = request.kernel_log && policy.kernel_log == Some(true);
        if request.kernel_log && !kernel_log {
            refuse(
                "kernel log".into(),
                match policy.kernel_log {
                    Some(false) => format!("refused by [probes.{probe}] kernel_log = false"),
                    _ => format!(
                        "the kernel log holds kernel addresses and every driver's messages; needs [probes.{probe}] kernel_log = true"
                    ),
                },
            );
        }
        let journal = match (&request.journal, policy.journal) {
            (Some(asked), Some(true)) => Some(match &policy.journal_fields {
                Some(allowed) => {
                    for f in asked.iter().filter(|f| !allowed.contains(f)) {
                        refuse(
                            format!("journal field {f}"),
                            format!("not in [probes.{probe}] journal_fields"),
                        );
                    }
                    asked
                        .iter()
                        .filter(|f| allowed.contains(f))
                        .cloned()
                        .collect()
                }
                None => asked.clone(),
            }),
            (Some(_), Some(false)) => {
                refuse(
                    "journal".into(),
                    format!("refused by [probes.{probe}] journal = false"),
                );
                None
            }
            (Some(_), None) => {
                refuse(
                    "journal".into(),
                    format!("the journal holds every service's messages; needs [probes.{probe}] journal = true"),
                );
                None
            }
            (None, _) => None,
        };
        let mut files = Vec::new();
        for w in &request.files {
            if read_paths.contains(&w.dir) {
                files.push(w.clone());
            } else {
                refuse(
                    format!("files {} {}", w.dir.display(), w.pattern),
                    format!(
                        "its directory is not a granted read path ([probes.{probe}] read_paths)"
                    ),
                );
            }
        }

        let interval_secs = request.interval_secs.map(|asked| {
            if asked < rules.min_interval_secs {
                refuse(
                    format!("interval {asked} s"),
                    format!(
                        "raised to probe_min_interval_secs = {}",
                        rules.min_interval_secs
                    ),
                );
            }
            asked.max(rules.min_interval_secs)
        });

        Grant {
            interval_secs,
            read_paths,
            classifications,
            memory_limit_mib: policy
                .memory_limit_mib
                .map_or(DEFAULT_MEMORY_LIMIT_MIB, |n| n.get()),
            timeout_ms: policy.timeout_ms.map_or(DEFAULT_TIMEOUT_MS, |n| n.get()),
            max_records_per_hour,
            crashes,
            // `also_read` is an approval too (`probe test --grant-read`,
            // the author's own run): its paths need not stay in the safe
            // set.
            read_paths_by_admin: policy.read_paths.is_some() || !policy.also_read.is_empty(),
            kernel_log,
            files,
            journal,
            state_quota_bytes: policy
                .state_quota_mib
                .map_or(DEFAULT_STATE_QUOTA_MIB, |n| n.get())
                << 20,
            refused,
        }
    }

    /// Whether `classification` matches one of the granted patterns.
    pub fn allows_classification(&self, classification: &str) -> bool {
        self.classifications
            .iter()
            .any(|p| pattern_matches(p, classification))
    }
}

/// `*` matches exactly one whole part; other parts match literally.
pub fn pattern_matches(pattern: &str, classification: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let c: Vec<&str> = classification.split('/').collect();
    p.len() == c.len() && p.iter().zip(&c).all(|(p, c)| *p == "*" || p == c)
}

#[cfg(test)]
mod tests;
