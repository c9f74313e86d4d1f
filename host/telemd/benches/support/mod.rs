//! What the benchmarks share: this process's RSS, percentiles, and the
//! records in a spool directory. Included by each bench with
//! `#[path = "support/mod.rs"] mod support;`.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// This process's resident set, KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        })
        .unwrap()
}

/// The `p` quantile of `v` (sorted in place).
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Records stored in a spool directory (temporary files not counted).
pub fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}
