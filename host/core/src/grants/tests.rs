//! Tests of `grants`.

use super::*;
use crate::config::values::Bounded;

fn rules() -> HostRules {
    HostRules {
        max_records_per_hour: 1000,
        min_interval_secs: 60,
        protected_dirs: vec!["/var/lib/telemetry".into(), "/var/spool/telemetry".into()],
    }
}

#[test]
fn a_files_pattern_is_one_to_three_plain_parts_of_at_most_255_bytes() {
    for ok in ["*.log", "a/b/c", "x..y/*", &"a".repeat(255)] {
        assert_eq!(files_pattern_refusal(ok), None, "{ok:?}");
    }
    for bad in [
        "",
        &"a".repeat(256),
        "a/b/c/d",
        "a//b",
        "/a",
        "a/",
        ".",
        "a/./b",
        "..",
        "a/../b",
    ] {
        assert!(files_pattern_refusal(bad).is_some(), "{bad:?}");
    }
}

#[test]
fn the_daemons_rules_come_from_its_config_and_protect_its_own_directories() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().canonicalize().unwrap();
    let link = real.join("link");
    std::fs::create_dir_all(real.join("state/crash-inbox")).unwrap();
    std::os::unix::fs::symlink(real.join("state"), &link).unwrap();
    let text = format!(
        "state_dir = \"{}\"\nspool_dir = \"{}/spool\"\n\
         journal_dir = \"{}/journal\"\n\
         max_records_per_hour = 60\nprobe_min_interval_secs = 5\n",
        link.display(),
        real.display(),
        real.display()
    );
    let config = crate::config::Config::parse_str(
        crate::config::Config::default(),
        &text,
        Path::new("test.toml"),
    )
    .unwrap();
    let r = HostRules::for_config(&config);
    assert_eq!(r.max_records_per_hour, 60);
    assert_eq!(r.min_interval_secs, 5);
    for dir in [
        link.clone(),
        real.join("state"),
        real.join("spool"),
        real.join("journal"),
        crate::state_layout::StateLayout::new(&link).crash_inbox(),
        real.join("state/crash-inbox"),
    ] {
        assert!(
            r.protected_dirs.contains(&dir),
            "{dir:?} in {:?}",
            r.protected_dirs
        );
    }
}

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
fn a_greedy_manifest_gets_only_the_safe_set() {
    let req = Request {
        read_paths: vec![
            "/".into(),
            "relative/dir".into(),
            "/proc/self".into(),
            "/proc/1/mem".into(),
            "/proc".into(),
            "/var".into(),
            "/var/lib/telemetry/crash-inbox".into(),
            "/usr/../var/spool/telemetry".into(),
            "/etc".into(),
            "/usr/share/zoneinfo".into(),
            "/proc/mounts".into(),
        ],
        classifications: vec![
            "*/*/*".into(),
            "org.clearlinux/crash/clr".into(),
            "*/greedy/*".into(),
            "org.example/greedy/*".into(),
            "org.example/other/*".into(),
        ],
        max_records_per_hour: u32::MAX,
        crashes: true,
        interval_secs: Some(1),
        ..Default::default()
    };
    let g = Grant::effective("greedy", &req, &ProbePolicy::default(), &rules());
    assert_eq!(
        g.read_paths,
        vec![
            PathBuf::from("/usr/share/zoneinfo"),
            PathBuf::from("/proc/mounts")
        ]
    );
    assert_eq!(g.classifications, vec!["org.example/greedy/*".to_owned()]);
    assert_eq!(g.max_records_per_hour, 1000);
    assert!(!g.crashes);
    let refused: Vec<&str> = g.refused.iter().map(|r| r.item.as_str()).collect();
    assert_eq!(
        refused,
        [
            "read /",
            "read relative/dir",
            "read /proc/self",
            "read /proc/1/mem",
            "read /proc",
            "read /var",
            "read /var/lib/telemetry/crash-inbox",
            "read /usr/../var/spool/telemetry",
            "read /etc",
            "classification */*/*",
            "classification org.clearlinux/crash/clr",
            "classification */greedy/*",
            "classification org.example/other/*",
            "max_records_per_hour 4294967295",
            "crashes",
            "interval 1 s",
        ]
    );
    assert_eq!(g.interval_secs, Some(60));
    let reason = |item: &str| &g.refused.iter().find(|r| r.item == item).unwrap().reason;
    assert!(reason("read /etc").contains("needs [probes.greedy] read_paths"));
    assert!(reason("read /var").contains("daemon's own /var/lib/telemetry"));
    assert!(reason("crashes").contains("crashes = true"));
    assert!(reason("classification org.clearlinux/crash/clr").contains("reserved"));
}

#[test]
fn a_probe_named_crash_does_not_own_the_crash_classifications() {
    assert!(!is_own_classification("crash", "org.clearlinux/crash/*"));
    assert!(!is_own_classification("crash", "*/crash/*"));
    assert!(
        is_reserved("ORG.CLEARLINUX/Crash/x"),
        "case does not get around it"
    );
    assert!(is_own_classification("crash", "org.example/crash/*"));
    assert!(is_own_classification("hello", "org.clearlinux/hello/world"));
}

#[test]
fn the_admin_approves_and_narrows_but_never_grants_the_forbidden() {
    let req = Request {
        read_paths: vec!["/usr".into(), "/etc/x".into()],
        classifications: vec!["org.clearlinux/crash/*".into()],
        max_records_per_hour: 10,
        crashes: true,
        interval_secs: None,
        ..Default::default()
    };
    let approved = ProbePolicy {
        read_paths: Some(vec![
            "/usr".into(),
            "/".into(),
            "/var/lib/telemetry/spool".into(),
            "/proc/self/environ".into(),
        ]),
        classifications: Some(vec!["org.clearlinux/crash/*".into()]),
        crashes: Some(true),
        max_records_per_hour: Some(Bounded::new(5000)),
        memory_limit_mib: Some(Bounded::new(16)),
        timeout_ms: Some(Bounded::new(500)),
        enabled: None,
        kernel_log: None,
        state_quota_mib: None,
        journal: None,
        journal_fields: None,
        sha256: None,
        also_read: Vec::new(),
    };
    let g = Grant::effective("crash-symbolizer", &req, &approved, &rules());
    assert_eq!(g.read_paths, vec![PathBuf::from("/usr")]);
    assert!(g.crashes);
    assert!(g.allows_classification("org.clearlinux/crash/clr"));
    assert_eq!(
        (g.max_records_per_hour, g.memory_limit_mib, g.timeout_ms),
        (1000, 16, 500)
    );
    let refused: Vec<&str> = g.refused.iter().map(|r| r.item.as_str()).collect();
    assert_eq!(
        refused,
        [
            "read /",
            "read /var/lib/telemetry/spool",
            "read /proc/self/environ",
            "read /etc/x",
            "max_records_per_hour 5000"
        ]
    );
    let refused_crashes = ProbePolicy {
        crashes: Some(false),
        ..approved.clone()
    };
    assert!(!Grant::effective("c", &req, &refused_crashes, &rules()).crashes);
    let not_asked = Request {
        crashes: false,
        ..req.clone()
    };
    assert!(
        !Grant::effective("c", &not_asked, &approved, &rules()).crashes,
        "a probe without the crash trigger is never called for crashes"
    );
}

#[test]
fn a_safe_directory_left_through_a_symlink_is_not_safe() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir_all(share.join("data")).unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc-link")).unwrap();
    let share = share.canonicalize().unwrap();
    let dirs = [share.to_str().unwrap()];
    assert!(stays_under(&share.join("data"), &dirs));
    assert!(stays_under(&share.join("missing"), &dirs));
    assert!(!stays_under(&share.join("etc-link"), &dirs));
    assert!(!stays_under(&share.join("etc-link/passwd"), &dirs));
}

#[test]
fn a_symlink_into_a_protected_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("state");
    std::fs::create_dir(&secret).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let rules = HostRules {
        max_records_per_hour: 10,
        min_interval_secs: 60,
        protected_dirs: vec![secret.canonicalize().unwrap()],
    };
    let policy = ProbePolicy {
        read_paths: Some(vec![link.clone()]),
        ..ProbePolicy::default()
    };
    let g = Grant::effective("p", &Request::default(), &policy, &rules);
    assert!(g.read_paths.is_empty());
    assert!(
        g.refused[0].reason.contains("resolves to"),
        "{:?}",
        g.refused
    );
}

// Found by scripts/mutants.sh (docs/mutants.md): each test below pins
// down a rule a mutant changed with every other test still passing.

#[test]
fn the_permissive_rules_are_the_defaults() {
    let r = HostRules::permissive();
    assert_eq!(r.max_records_per_hour, DEFAULT_MAX_RECORDS_PER_HOUR);
    assert_eq!(r.min_interval_secs, DEFAULT_MIN_INTERVAL_SECS);
    assert!(r.protected_dirs.is_empty());
}

#[test]
fn every_kind_of_per_process_proc_entry_is_never_grantable() {
    for p in [
        "/proc/self/environ",
        "/proc/thread-self/maps",
        "/proc/1234/mem",
    ] {
        assert!(never_grantable(Path::new(p), &rules()).is_some(), "{p}");
    }
    assert!(never_grantable(Path::new("/proc/meminfo"), &rules()).is_none());
}

#[test]
fn the_safe_set_is_exactly_usr_share_and_the_listed_proc_files() {
    assert!(is_safe_path(Path::new("/usr/share/zoneinfo")));
    assert!(is_safe_path(Path::new("/proc/meminfo")));
    assert!(!is_safe_path(Path::new("/etc/passwd")));
    assert!(!is_safe_path(Path::new("/proc/self/environ")));
}

#[test]
fn the_safe_sets_neighbours_need_the_admin() {
    // Its parent, siblings, and names that only begin the same.
    for p in [
        "/usr",
        "/usr/lib",
        "/usr/lib/os-release",
        "/usr/sharefoo",
        "/usr/share-other/x",
        "/proc/meminfo2",
        "/procx/meminfo",
    ] {
        assert!(!is_safe_path(Path::new(p)), "{p}");
        let req = Request {
            read_paths: vec![p.into()],
            ..Default::default()
        };
        let g = Grant::effective("p", &req, &ProbePolicy::default(), &rules());
        assert!(g.read_paths.is_empty(), "{p} granted without the admin");
        let refusal = g.refused.iter().find(|r| r.item == format!("read {p}"));
        assert!(
            refusal.is_some_and(|r| r.reason.contains("needs [probes.p] read_paths")),
            "{p}: {:?}",
            g.refused
        );
    }
}

#[test]
fn only_the_daemons_own_directories_are_never_grantable_not_their_namesakes() {
    for p in [
        "/var/lib/telemetry-other",
        "/var/lib/telemetryx/y",
        "/var/spool/telemetry2",
    ] {
        assert_eq!(never_grantable(Path::new(p), &rules()), None, "{p}");
    }
    for p in [
        "/var/lib/telemetry",
        "/var/lib/telemetry/x",
        "/var/lib",
        "/var/spool",
    ] {
        assert!(never_grantable(Path::new(p), &rules()).is_some(), "{p}");
    }
}

fn asking(max_records_per_hour: u32, crashes: bool, interval_secs: Option<u64>) -> Request {
    Request {
        read_paths: vec![],
        classifications: vec![],
        max_records_per_hour,
        crashes,
        interval_secs,
        ..Default::default()
    }
}

#[test]
fn limits_at_the_host_ceiling_or_floor_are_not_refusals() {
    let g = Grant::effective(
        "p",
        &asking(1000, false, Some(60)),
        &ProbePolicy::default(),
        &rules(),
    );
    assert_eq!(g.max_records_per_hour, 1000);
    assert_eq!(g.interval_secs, Some(60));
    assert!(g.refused.is_empty(), "{:?}", g.refused);
    let g = Grant::effective(
        "p",
        &asking(1001, false, Some(59)),
        &ProbePolicy::default(),
        &rules(),
    );
    assert_eq!(g.max_records_per_hour, 1000);
    assert_eq!(g.interval_secs, Some(60));
    assert_eq!(g.refused.len(), 2, "{:?}", g.refused);
}

#[test]
fn a_crash_trigger_the_admin_refused_says_so() {
    let refused = ProbePolicy {
        crashes: Some(false),
        ..Default::default()
    };
    let g = Grant::effective("p", &asking(10, true, None), &refused, &rules());
    assert!(!g.crashes);
    assert!(
        g.refused[0]
            .reason
            .contains("refused by [probes.p] crashes = false"),
        "{:?}",
        g.refused
    );
    let g = Grant::effective(
        "p",
        &asking(10, true, None),
        &ProbePolicy::default(),
        &rules(),
    );
    assert!(
        g.refused[0]
            .reason
            .contains("needs [probes.p] crashes = true"),
        "{:?}",
        g.refused
    );
}

#[test]
fn a_request_an_approved_pattern_covers_is_not_refused() {
    // The shipped journal-errors grant approves org.clearlinux/journal/*;
    // the probe asks for the one classification it sends.
    let shipped = crate::config::Config::default().probes.probes["journal-errors"].clone();
    let req = Request {
        classifications: vec![
            "org.clearlinux/journal/error".into(),
            "org.clearlinux/journal/*".into(),
            "org.clearlinux/journal/error/extra".into(),
            "org.clearlinux/crash/segfault".into(),
        ],
        ..asking(10, false, None)
    };
    let g = Grant::effective("journal-errors", &req, &shipped, &rules());
    let refused: Vec<&str> = g.refused.iter().map(|r| r.item.as_str()).collect();
    assert_eq!(
        refused,
        [
            "classification org.clearlinux/journal/error/extra",
            "classification org.clearlinux/crash/segfault"
        ]
    );
    assert!(g.allows_classification("org.clearlinux/journal/error"));
    assert!(!g.allows_classification("org.clearlinux/crash/segfault"));
}

#[test]
fn a_grant_allows_only_its_patterns() {
    let g = Grant::effective(
        "disk",
        &Request {
            classifications: vec!["org.example/disk/*".into()],
            ..asking(10, false, None)
        },
        &ProbePolicy::default(),
        &rules(),
    );
    assert!(g.allows_classification("org.example/disk/usage"));
    assert!(!g.allows_classification("org.example/net/usage"));
}

#[test]
fn sources_are_granted_only_by_the_admin() {
    let req = Request {
        read_paths: vec!["/var/lib/systemd/pstore".into()],
        kernel_log: true,
        files: vec![FilesWatch {
            dir: "/var/lib/systemd/pstore".into(),
            pattern: "*/dmesg.txt".into(),
        }],
        ..asking(10, false, None)
    };
    // Nothing said: neither source.
    let g = Grant::effective("k", &req, &ProbePolicy::default(), &rules());
    assert!(!g.kernel_log);
    assert!(g.files.is_empty());
    assert!(
        g.refused
            .iter()
            .any(|r| r.item == "kernel log"
                && r.reason.contains("needs [probes.k] kernel_log = true"))
    );
    assert!(g
        .refused
        .iter()
        .any(|r| r.item.starts_with("files /var/lib/systemd/pstore")));
    // Approved: both.
    let approved = ProbePolicy {
        kernel_log: Some(true),
        read_paths: Some(vec!["/var/lib/systemd/pstore".into()]),
        state_quota_mib: Some(Bounded::new(2)),
        ..Default::default()
    };
    let g = Grant::effective("k", &req, &approved, &rules());
    assert!(g.kernel_log);
    assert_eq!(g.files, req.files);
    assert_eq!(g.state_quota_bytes, 2 << 20);
    assert!(g.refused.is_empty(), "{:?}", g.refused);
    // Refused by name.
    let refused = ProbePolicy {
        kernel_log: Some(false),
        ..approved
    };
    let g = Grant::effective("k", &req, &refused, &rules());
    assert!(!g.kernel_log);
    assert!(g
        .refused
        .iter()
        .any(|r| r.reason == "refused by [probes.k] kernel_log = false"));
    // A probe that did not ask is never handed the log.
    let g = Grant::effective("k", &asking(1, false, None), &approved_log(), &rules());
    assert!(!g.kernel_log);
    assert_eq!(
        Grant::effective("k", &req, &ProbePolicy::default(), &rules()).state_quota_bytes,
        DEFAULT_STATE_QUOTA_MIB << 20
    );
}

fn approved_log() -> ProbePolicy {
    ProbePolicy {
        kernel_log: Some(true),
        ..Default::default()
    }
}

#[test]
fn the_journal_is_granted_only_by_the_admin_and_narrowed_by_its_fields() {
    let req = Request {
        journal: Some(vec![
            "MESSAGE".into(),
            "_SYSTEMD_UNIT".into(),
            "_CMDLINE".into(),
        ]),
        ..asking(10, false, None)
    };
    let g = Grant::effective("j", &req, &ProbePolicy::default(), &rules());
    assert_eq!(g.journal, None);
    assert!(g.refused.iter().any(|r| r.item == "journal"));
    let approved = ProbePolicy {
        journal: Some(true),
        journal_fields: Some(vec!["MESSAGE".into(), "_SYSTEMD_UNIT".into()]),
        ..Default::default()
    };
    let g = Grant::effective("j", &req, &approved, &rules());
    assert_eq!(
        g.journal,
        Some(vec!["MESSAGE".into(), "_SYSTEMD_UNIT".into()])
    );
    assert!(g.refused.iter().any(|r| r.item == "journal field _CMDLINE"));
    let refused = ProbePolicy {
        journal: Some(false),
        ..approved
    };
    assert_eq!(
        Grant::effective("j", &req, &refused, &rules()).journal,
        None
    );
}

#[test]
fn a_path_granted_beside_the_rest_adds_to_the_grant_and_replaces_nothing() {
    // `probe test --grant-read`: the manifest's safe path stays granted.
    let req = Request {
        read_paths: vec!["/proc/uptime".into(), "/var/log/app".into()],
        classifications: vec!["org.example/uptime/*".into()],
        ..Default::default()
    };
    let beside = ProbePolicy {
        also_read: vec!["/var/log/app".into(), "/var/lib/telemetry/spool".into()],
        ..Default::default()
    };
    let g = Grant::effective("uptime", &req, &beside, &rules());
    assert_eq!(
        g.read_paths,
        vec![PathBuf::from("/proc/uptime"), "/var/log/app".into()]
    );
    // Still never the daemon's own directories.
    assert_eq!(g.refused.len(), 1, "{:?}", g.refused);
    assert!(g.refused[0].item.contains("/var/lib/telemetry/spool"));
    // Beside the admin's approval too: the approved path stays.
    let both = ProbePolicy {
        read_paths: Some(vec!["/proc/uptime".into()]),
        also_read: vec!["/var/log/app".into()],
        ..Default::default()
    };
    let g = Grant::effective("uptime", &req, &both, &rules());
    assert_eq!(
        g.read_paths,
        vec![PathBuf::from("/proc/uptime"), "/var/log/app".into()]
    );
    assert!(g.refused.is_empty(), "{:?}", g.refused);
}
