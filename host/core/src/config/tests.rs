//! Tests of `config`.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(
        Config::default(),
        text,
        Path::new("/etc/telemetrics/telemd.toml"),
    )
}

#[test]
fn defaults_match_the_legacy_table() {
    let c = Config::default();
    assert_eq!(c.socket.socket_path, Path::new("/run/telem-0"));
    assert_eq!(c.delivery.record_expiry, 1200);
    assert_eq!(c.spool.spool_max_size, 5120);
    assert_eq!(c.delivery.spool_process_time, 120);
    assert_eq!(c.delivery.record_burst_limit, 1000);
    assert_eq!(c.delivery.record_window_length, 15);
    assert_eq!(c.delivery.byte_burst_limit, -1);
    assert_eq!(c.delivery.byte_window_length, 20);
    assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Spool);
    assert!(
        c.delivery.rate_limit_enabled
            && c.host.daemon_recycling_enabled
            && c.delivery.record_server_delivery_enabled
    );
    assert!(!c.delivery.record_retention_enabled);
    assert_eq!(c.delivery.tidheader, DEFAULT_TIDHEADER);
}

#[test]
fn toml_keys_are_applied() {
    let c = parse(
        r#"
server = "https://collector.example/v2/collector"
spool_dir = "/tmp/spool"
record_burst_limit = -1
byte_burst_limit = 4096
rate_limit_strategy = "DROP"
socket_mode = "0660"
probes_dirs = ["/a", "/b"]
post_format = "json"
record_retention_enabled = true
"#,
    )
    .unwrap();
    assert_eq!(c.delivery.server, "https://collector.example/v2/collector");
    assert_eq!(c.spool.spool_dir, Path::new("/tmp/spool"));
    assert_eq!(c.delivery.record_burst_limit, -1);
    assert_eq!(c.delivery.byte_burst_limit, 4096);
    assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
    assert_eq!(c.socket.socket_mode, 0o660);
    assert_eq!(
        c.probes.probes_dirs,
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
    assert_eq!(c.delivery.post_format, PostFormat::Json);
    assert!(c.delivery.record_retention_enabled);
    assert_eq!(c.format, Some(ConfigFormat::Toml));
    assert!(c.warnings.is_empty());
}

#[test]
fn bad_value_names_key_line_and_range() {
    let e = parse("server = \"http://x/\"\n\nrecord_window_length = 75\n").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::Value { line: 3, .. }), "{msg}");
    assert!(
        msg.contains("record_window_length") && msg.contains("0..59") && msg.contains(":3:"),
        "{msg}"
    );

    let e = parse("rate_limit_enabled = \"yes\"\n").unwrap_err();
    assert!(
        e.to_string().contains("rate_limit_enabled") && e.to_string().contains("true or false")
    );
    let e = parse("socket_mode = \"0999\"").unwrap_err();
    assert!(e.to_string().contains("0000..0777"), "{e}");
    let e = parse("record_burst_limit = -5").unwrap_err();
    assert!(e.to_string().contains("-1 (off)"), "{e}");
    let e = parse("server = \"ftp://x\"").unwrap_err();
    assert!(e.to_string().contains("server"), "{e}");
    let e = parse("tidheader = \"nocolon\"").unwrap_err();
    assert!(e.to_string().contains("tidheader"), "{e}");
}

#[test]
fn unknown_key_and_syntax_errors_have_lines() {
    let e = parse("# comment\nspool_dirr = \"/x\"\n").unwrap_err();
    assert!(
        matches!(
            &e,
            ConfigError::UnknownKey { path, line: 2, key }
                if path == Path::new("/etc/telemetrics/telemd.toml") && key == "spool_dirr"
        ),
        "{e}"
    );
    let e = parse("a = 1\nserver = = 2\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
}

#[test]
fn a_probe_tables_key_is_named_at_its_own_line() {
    // Not the `[probes.uptime]` header's line: the key's.
    let e = parse("[probes.uptime]\nreadpaths = [\"/x\"]\n").unwrap_err();
    assert!(
        matches!(&e, ConfigError::UnknownKey { line: 2, key, .. } if key == "probes.uptime.readpaths"),
        "{e}"
    );
    let e = parse("server = \"http://x\"\n\n[probes.a]\nenabled = true\n\n[probes.b]\nenabled = false\nmax_records_per_hour = \"many\"\n")
        .unwrap_err();
    assert!(matches!(e, ConfigError::Value { line: 8, .. }), "{e}");
    let e = parse("[probes]\nuptime = { readpaths = [\"/x\"] }\n").unwrap_err();
    assert!(matches!(e, ConfigError::UnknownKey { line: 2, .. }), "{e}");
}

#[test]
fn a_probe_table_must_be_named_as_probes_are() {
    let e = parse("[probes.my_probe]\nsha256 = \"00\"\n").unwrap_err();
    assert!(e.to_string().contains("probes.my_probe"), "{e}");
    assert!(
        e.to_string().contains("lowercase letters, digits and '-'"),
        "{e}"
    );
    assert!(parse("[probes.my-probe]\nenabled = false\n").is_ok());
}

#[test]
fn legacy_clamping() {
    let c = parse("spool_process_time = 30\nrecord_expiry = -7\nspool_max_size = -3\n").unwrap();
    assert_eq!(c.delivery.spool_process_time, 120);
    assert_eq!(c.delivery.record_expiry, -1);
    assert_eq!(c.spool.spool_max_size, -1);
    // Each clamp is said, with its line and key.
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains(":1:") && c.warnings[0].contains("120..300"),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[1].contains(":2: record_expiry = -7"),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[2].contains(":3: spool_max_size = -3"),
        "{:?}",
        c.warnings
    );
    let c = parse("spool_process_time = 9000\n").unwrap();
    assert_eq!(c.delivery.spool_process_time, 300);
    let c = parse(&format!("record_expiry = {}\n", i64::MAX)).unwrap();
    assert_eq!(c.delivery.record_expiry, i64::MAX / 60);
}

const LEGACY_INI: &str = "\
[settings]
server=http://localhost/v2/collector
socket_path=/run/telem-0
spool_dir=/var/spool/telemetry
record_expiry=1200
spool_max_size=1024
spool_process_time=900
rate_limit_enabled=TRUE
record_burst_limit=100
record_window_length=5
byte_burst_limit=-1
byte_window_length=20
rate_limit_strategy=drop
tidheader=X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f
cainfo=
daemon_recycling_enabled=0
record_retention_enabled=true
";

#[test]
fn legacy_ini_is_read() {
    let c = parse(LEGACY_INI).unwrap();
    assert_eq!(c.format, Some(ConfigFormat::LegacyIni));
    assert_eq!(c.spool.spool_max_size, 1024);
    assert_eq!(
        c.delivery.spool_process_time, 300,
        "clamped like the legacy client"
    );
    assert_eq!(c.delivery.record_burst_limit, 100);
    assert_eq!(c.delivery.record_window_length, 5);
    assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
    assert!(c.delivery.rate_limit_enabled);
    assert!(!c.host.daemon_recycling_enabled);
    assert!(c.delivery.record_retention_enabled);
    assert_eq!(c.delivery.cainfo, None);
    assert_eq!(c.delivery.tidheader, DEFAULT_TIDHEADER);
}

#[test]
fn legacy_ini_errors_name_key_and_line() {
    let bad = LEGACY_INI.replace("record_window_length=5", "record_window_length=60");
    let e = parse(&bad).unwrap_err();
    assert!(
        matches!(e, ConfigError::Value { line: 10, ref key, .. } if key == "record_window_length"),
        "{e}"
    );
    let bad = LEGACY_INI.replace("rate_limit_enabled=TRUE", "rate_limit_enabled=maybe");
    assert!(parse(&bad)
        .unwrap_err()
        .to_string()
        .contains(":8: rate_limit_enabled"));
    let bad = format!("{LEGACY_INI}garbage line\n");
    assert!(matches!(
        parse(&bad).unwrap_err(),
        ConfigError::Syntax { line: 18, .. }
    ));
    let other = format!("{LEGACY_INI}[other]\nfoo=bar\n");
    let c = parse(&other).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("foo")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn toml_round_trips_through_to_toml() {
    let c = parse(LEGACY_INI).unwrap();
    let text = c.to_toml();
    let back = parse(&text).unwrap();
    assert_eq!(back.spool.spool_max_size, c.spool.spool_max_size);
    assert_eq!(
        back.delivery.rate_limit_strategy,
        c.delivery.rate_limit_strategy
    );
    assert_eq!(back.socket.socket_mode, c.socket.socket_mode);
    assert_eq!(back.delivery.cainfo, None);
    assert_eq!(back.probes.probes_dirs, c.probes.probes_dirs);
}

#[test]
fn shipped_grants_are_kept_unless_a_key_replaces_them() {
    let c = parse("").unwrap();
    let cs = &c.probes.probes["crash-symbolizer"];
    assert_eq!(cs.crashes, Some(true));
    assert_eq!(
        cs.classifications.as_deref(),
        Some(&["org.clearlinux/crash/*".to_string()][..])
    );
    let c = parse(
        "[probes.crash-symbolizer]
crashes = false
",
    )
    .unwrap();
    let cs = &c.probes.probes["crash-symbolizer"];
    assert_eq!(cs.crashes, Some(false), "the admin's key wins");
    assert!(cs.read_paths.is_some(), "keys not named stay as shipped");
    let back = parse(&Config::default().to_toml()).unwrap();
    assert_eq!(
        back.probes.probes,
        Config::default().probes.probes,
        "the shipped default config carries them"
    );
}

#[test]
fn security_keys_are_parsed_and_checked() {
    let c = parse("cfg_allowed_dirs = [\"/etc/a\"]\nmax_records_per_hour = 60\nmax_component_bytes = 1048576\n").unwrap();
    assert_eq!(c.delivery.cfg_allowed_dirs, [PathBuf::from("/etc/a")]);
    assert_eq!(c.probes.max_records_per_hour, 60);
    assert_eq!(c.probes.max_component_bytes, 1 << 20);
    let d = Config::default();
    assert_eq!(
        d.delivery.cfg_allowed_dirs,
        [PathBuf::from("/etc/telemetrics")]
    );
    assert_eq!(d.probes.max_records_per_hour, 1000);
    assert_eq!(d.probes.max_component_bytes, 16 << 20);
    assert!(parse("max_component_bytes = 10\n").is_err());
    assert_eq!(
        parse("probe_min_interval_secs = 5\n")
            .unwrap()
            .probes
            .probe_min_interval_secs,
        5
    );
    assert_eq!(d.probes.probe_min_interval_secs, 60);
    assert!(parse("probe_min_interval_secs = 0\n").is_err());
}

#[test]
fn probe_tables_are_parsed_and_checked() {
    let c = parse(
        "spool_dir = \"/s\"\n\n[probes.hello]\nenabled = false\n\n[probes.disk]\nread_paths = [\"/proc/mounts\"]\nclassifications = [\"org.example/disk/*\"]\nmemory_limit_mib = 16\ntimeout_ms = 500\nmax_records_per_hour = 3\n",
    )
    .unwrap();
    assert_eq!(c.probes.probes["hello"].enabled, Some(false));
    let d = &c.probes.probes["disk"];
    assert_eq!(
        d.read_paths.as_deref(),
        Some(&[PathBuf::from("/proc/mounts")][..])
    );
    assert_eq!(
        d.classifications.as_deref(),
        Some(&["org.example/disk/*".to_string()][..])
    );
    assert_eq!(
        (
            d.memory_limit_mib.map(|n| n.get()),
            d.timeout_ms.map(|n| n.get()),
            d.max_records_per_hour.map(|n| n.get())
        ),
        (Some(16), Some(500), Some(3))
    );
    let e = parse("[probes.disk]\nmemory_limit_mib = 0\n").unwrap_err();
    assert!(
        e.to_string().contains("probes.disk.memory_limit_mib") && e.to_string().contains("1..4096"),
        "{e}"
    );
    let e = parse("[probes.disk]\nreadpaths = []\n").unwrap_err();
    assert!(e.to_string().contains("probes.disk.readpaths"), "{e}");
}

#[test]
fn dev_config_keeps_everything_under_one_dir() {
    let c = Config::dev(Path::new("/tmp/dev"));
    for p in [
        &c.socket.socket_path,
        &c.spool.spool_dir,
        &c.host.state_dir,
        &c.journal.journal_dir,
        &c.host.opt_in_file,
        &c.host.control_socket,
        // An author's keys, so signing is tried without root.
        &c.probes.trusted_keys_dir,
    ] {
        assert!(p.starts_with("/tmp/dev"), "{}", p.display());
    }
    assert!(c.delivery.server.starts_with("file:///tmp/dev/"));
}

#[test]
fn review_findings_hold() {
    // Any case, as the legacy client read it.
    let c = parse("rate_limit_strategy = \"dRoP\"\n").unwrap();
    assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
    // Integer keys say so in words, with their range.
    let e = parse("spool_process_time = \"soon\"\n").unwrap_err();
    assert!(
        e.to_string().contains("expected an integer in 120..300"),
        "{e}"
    );
    // Empty items in a probe's lists are refused.
    let e = parse("[probes.disk]\nread_paths = [\"\"]\n").unwrap_err();
    assert!(e.to_string().contains("probes.disk.read_paths"), "{e}");
    let e = parse("[probes.disk]\nclassifications = [\"\"]\n").unwrap_err();
    assert!(e.to_string().contains("probes.disk.classifications"), "{e}");
    // And an I/O error keeps its cause.
    let e = Config::load_file(Config::default(), Path::new("/nonexistent/x.toml")).unwrap_err();
    let text = crate::error_text::Chain(&e).to_string();
    assert!(
        text.contains("cannot read config") && text.contains("No such file"),
        "{text}"
    );
}

/// Debug files decide what a crash report says: a debuginfod server is
/// asked over HTTPS, or over plain HTTP on this machine only.
#[test]
fn debuginfod_urls_are_https_or_loopback() {
    for ok in [
        "https://debuginfod.debian.net",
        "https://debuginfod.example:8443/prefix/",
        "http://127.0.0.1:8002",
        "http://127.1.2.3/",
        "http://localhost:8002",
        "http://[::1]:8002",
    ] {
        let c = parse(&format!("debuginfod_urls = [\"{ok}\"]\n")).unwrap();
        assert_eq!(c.crash.debuginfod_urls[0].as_str(), ok);
    }
    for bad in [
        "http://debuginfod.debian.net",
        "http://127.0.0.1.evil.example/",
        "http://localhost.evil.example",
        "http://127.0.0.1:80@evil.example/",
        "http://[::1]@evil.example/",
        "http://localhost:x@evil.example",
        "https://user:secret@debuginfod.example",
        "ftp://127.0.0.1",
        "https://",
        "127.0.0.1:8002",
    ] {
        let e = parse(&format!("debuginfod_urls = [\"{bad}\"]\n")).unwrap_err();
        assert!(e.to_string().contains("http:// to localhost"), "{bad}: {e}");
    }
    assert!(
        Config::default().crash.debuginfod_urls.is_empty(),
        "off by default"
    );
}
