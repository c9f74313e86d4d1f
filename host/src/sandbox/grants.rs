//! What a probe may do: its manifest's requests, narrowed or widened by
//! the admin's `[probes.NAME]` table. An admin key, when present, replaces
//! the manifest's value outright (that is how a grant is narrowed, or
//! explicitly widened); an absent key grants what the probe asked for.

use std::path::PathBuf;

use serde::Serialize;

/// Default cap on a probe's linear memory.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// Default wall-time cap of one call.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The admin's `[probes.NAME]` table; every key optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbePolicy {
    /// false: the probe is not loaded.
    pub enabled: Option<bool>,
    /// Host paths readable by the probe (replaces the manifest's).
    pub read_paths: Option<Vec<PathBuf>>,
    /// Classification patterns it may emit (replaces the manifest's).
    pub classifications: Option<Vec<String>>,
    /// Linear memory cap.
    pub memory_limit_mib: Option<u64>,
    /// Wall-time cap per call.
    pub timeout_ms: Option<u64>,
    /// Records per hour (replaces the manifest's).
    pub max_records_per_hour: Option<u32>,
    /// false: the probe is not handed crashes (cores hold the crashed
    /// process's memory) even though its manifest asks for them.
    pub crashes: Option<bool>,
}

/// What the probe asked for in `describe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Paths to read.
    pub read_paths: Vec<PathBuf>,
    /// Classification patterns.
    pub classifications: Vec<String>,
    /// Records per hour.
    pub max_records_per_hour: u32,
    /// The crash trigger.
    pub crashes: bool,
}

/// The effective grant a probe runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Read-only preopens, at the same path in the guest.
    pub read_paths: Vec<PathBuf>,
    /// Classification patterns.
    pub classifications: Vec<String>,
    /// Linear memory cap in MiB.
    pub memory_limit_mib: u64,
    /// Wall time per call in ms.
    pub timeout_ms: u64,
    /// Records per hour.
    pub max_records_per_hour: u32,
    /// Handed each crash, with read access to that crash's inbox entry.
    pub crashes: bool,
}

impl Grant {
    /// The grant for `request` under `policy`.
    pub fn effective(request: &Request, policy: &ProbePolicy) -> Grant {
        Grant {
            read_paths: policy
                .read_paths
                .clone()
                .unwrap_or_else(|| request.read_paths.clone()),
            classifications: policy
                .classifications
                .clone()
                .unwrap_or_else(|| request.classifications.clone()),
            memory_limit_mib: policy.memory_limit_mib.unwrap_or(DEFAULT_MEMORY_LIMIT_MIB),
            timeout_ms: policy.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            max_records_per_hour: policy
                .max_records_per_hour
                .unwrap_or(request.max_records_per_hour),
            crashes: request.crashes && policy.crashes.unwrap_or(true),
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
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches(
            "org.example/disk/*",
            "org.example/disk/usage"
        ));
        assert!(pattern_matches(
            "org.example/disk/usage",
            "org.example/disk/usage"
        ));
        assert!(!pattern_matches(
            "org.example/disk/*",
            "org.example/net/usage"
        ));
        assert!(!pattern_matches("org.example/*", "org.example/disk/usage"));
        assert!(pattern_matches("*/*/*", "a/b/c"));
    }

    #[test]
    fn admin_keys_replace_manifest_requests() {
        let req = Request {
            read_paths: vec!["/proc/mounts".into()],
            classifications: vec!["a/b/*".into()],
            max_records_per_hour: 10,
            crashes: true,
        };
        let g = Grant::effective(&req, &ProbePolicy::default());
        assert!(g.crashes, "asked for and not refused");
        assert_eq!(g.read_paths, req.read_paths);
        assert_eq!(g.memory_limit_mib, 64);
        assert_eq!(g.timeout_ms, 10_000);
        assert_eq!(g.max_records_per_hour, 10);
        let narrowed = ProbePolicy {
            read_paths: Some(vec![]),
            classifications: Some(vec!["a/b/c".into()]),
            max_records_per_hour: Some(1),
            memory_limit_mib: Some(16),
            timeout_ms: Some(500),
            enabled: None,
            crashes: Some(false),
        };
        let g = Grant::effective(&req, &narrowed);
        assert!(!g.crashes);
        let not_asked = Request {
            crashes: false,
            ..req.clone()
        };
        let widened = ProbePolicy {
            crashes: Some(true),
            ..ProbePolicy::default()
        };
        assert!(
            !Grant::effective(&not_asked, &widened).crashes,
            "a probe without the crash trigger is never called for crashes"
        );
        assert!(g.read_paths.is_empty());
        assert!(g.allows_classification("a/b/c") && !g.allows_classification("a/b/d"));
        assert_eq!(
            (g.max_records_per_hour, g.memory_limit_mib, g.timeout_ms),
            (1, 16, 500)
        );
    }
}
