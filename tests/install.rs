//! The install command: a DESTDIR install yields the packaged tree, and the
//! installed systemd units pass `systemd-analyze verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn built_bins() -> PathBuf {
    Path::new(support::TELEMD).parent().unwrap().to_owned()
}

fn install(destdir: Option<&Path>, prefix: &Path) {
    support::probe_wasm("hello");
    support::probe_wasm("crash_symbolizer");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let mut cmd = Command::new(script);
    cmd.arg("--prefix")
        .arg(prefix)
        .arg("--from")
        .arg(built_bins());
    if let Some(d) = destdir {
        cmd.env("DESTDIR", d);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A packager's build with `CARGO_TARGET_DIR` set: the probes are taken
/// from there, not from `probes-wasm/target`.
#[test]
fn install_takes_the_probes_from_cargo_target_dir() {
    let target = tempfile::tempdir().unwrap();
    let wasm = target.path().join("wasm32-wasip2/release");
    std::fs::create_dir_all(&wasm).unwrap();
    // Each shipped probe, marked (a custom section) so its copy is told
    // from probes-wasm/target's.
    let mark = [0x00u8, 0x05, 0x04, b'm', b'a', b'r', b'k'];
    for p in [
        "hello",
        "crash_symbolizer",
        "kernel_oops",
        "pstore",
        "journal_errors",
    ] {
        let mut bytes = std::fs::read(support::probe_wasm(p)).unwrap();
        bytes.extend_from_slice(&mark);
        std::fs::write(wasm.join(format!("{p}.wasm")), bytes).unwrap();
    }
    let dest = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let out = Command::new(script)
        .args(["--prefix", "/usr", "--from"])
        .arg(built_bins())
        .env("DESTDIR", dest.path())
        .env("CARGO_TARGET_DIR", target.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::fs::read(dest.path().join("usr/lib/telemetry/probes/hello.wasm")).unwrap();
    assert!(
        installed.ends_with(&mark),
        "hello.wasm not taken from CARGO_TARGET_DIR"
    );
}

#[test]
fn destdir_install_yields_the_packaged_tree() {
    let dest = tempfile::tempdir().unwrap();
    install(Some(dest.path()), Path::new("/usr"));
    let root = dest.path().join("usr");
    let expect = [
        ("bin/telemd", 0o755),
        ("bin/telemctl", 0o755),
        ("bin/telem-record-gen", 0o755),
        ("bin/telem-crash-handler", 0o755),
        ("lib/sysctl.d/60-telem-crash-handler.conf", 0o644),
        ("lib/telemetry/probes/crash-symbolizer.wasm", 0o644),
        ("share/man/man8/telem-crash-handler.8", 0o644),
        ("lib/systemd/system/telemd.service", 0o644),
        ("lib/systemd/system/telemd.socket", 0o644),
        ("lib/sysusers.d/telemetry.conf", 0o644),
        ("lib/tmpfiles.d/telemetry.conf", 0o644),
        ("lib/telemetry/probes/hello.wasm", 0o644),
        ("lib/telemetry/probes/kernel-oops.wasm", 0o644),
        ("lib/telemetry/probes/pstore.wasm", 0o644),
        ("lib/telemetry/probes/journal-errors.wasm", 0o644),
        ("share/defaults/telemetrics/telemd.toml", 0o644),
        ("share/man/man8/telemd.8", 0o644),
        ("share/man/man1/telemctl.1", 0o644),
        ("share/man/man1/telem-record-gen.1", 0o644),
        ("share/bash-completion/completions/telemctl", 0o644),
        ("share/zsh/site-functions/_telemctl", 0o644),
        ("share/fish/vendor_completions.d/telemctl.fish", 0o644),
        ("lib/libtelemetry.so.4.0.1", 0o755),
        ("include/telemetry.h", 0o644),
        ("lib/pkgconfig/libtelemetry.pc", 0o644),
        ("share/man/man3/telemetry.3", 0o644),
        ("share/man/man3/tm_create_record.3", 0o644),
        ("share/man/man3/tm_set_payload.3", 0o644),
        ("share/man/man3/tm_set_event_id.3", 0o644),
        ("share/man/man3/tm_send_record.3", 0o644),
        ("share/man/man3/tm_free_record.3", 0o644),
        ("share/man/man3/tm_set_config_file.3", 0o644),
        ("share/man/man3/tm_is_opted_in.3", 0o644),
    ];
    for (rel, mode) in expect {
        let m = std::fs::metadata(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(m.permissions().mode() & 0o777, mode, "{rel}");
    }
    // The library's links, and a pkg-config file that points at the
    // installed paths (not DESTDIR's).
    for (link, to) in [
        ("lib/libtelemetry.so.4", "libtelemetry.so.4.0.1"),
        ("lib/libtelemetry.so", "libtelemetry.so.4"),
    ] {
        assert_eq!(
            std::fs::read_link(root.join(link)).unwrap(),
            Path::new(to),
            "{link}"
        );
    }
    let pc = std::fs::read_to_string(root.join("lib/pkgconfig/libtelemetry.pc")).unwrap();
    assert!(
        pc.contains("libdir=/usr/lib\n") && pc.contains("includedir=/usr/include\n"),
        "{pc}"
    );
    assert!(!pc.contains('@'), "{pc}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/telemd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/telemd\n"), "{unit}");
    assert!(!unit.contains("@bindir@"));
    for ceiling in ["\nMemoryMax=", "\nTasksMax=", "\nLimitNOFILE="] {
        assert!(unit.contains(ceiling), "the unit sets {ceiling:?}: {unit}");
    }
    // What the kernel log source needs, and only that: /dev/kmsg bound in
    // and allowed read-only, CAP_SYSLOG as the one capability.
    for line in [
        "\nBindReadOnlyPaths=-/dev/kmsg\n",
        "\nDeviceAllow=/dev/kmsg r\n",
        "\nAmbientCapabilities=CAP_SYSLOG\n",
        "\nCapabilityBoundingSet=CAP_SYSLOG\n",
        "\nPrivateDevices=yes\n",
        "\nInaccessiblePaths=-/proc/kmsg\n",
        "\nSystemCallFilter=~syslog\n",
        "\nSupplementaryGroups=systemd-journal\n",
    ] {
        assert!(unit.contains(line), "the unit has {line:?}: {unit}");
    }
    let sysctl =
        std::fs::read_to_string(root.join("lib/sysctl.d/60-telem-crash-handler.conf")).unwrap();
    assert!(
        sysctl.contains(
            "\nkernel.core_pattern = |/usr/bin/telem-crash-handler -p %e -E %E -s %s -P %P -I %I -u %u -d %d -F %F\n"
        ),
        "{sysctl}"
    );
    let socket = std::fs::read_to_string(root.join("lib/systemd/system/telemd.socket")).unwrap();
    assert!(socket.contains("ListenStream=/run/telem-0") && socket.contains("SocketMode=0666"));
    let man = std::fs::read_to_string(root.join("share/man/man1/telemctl.1")).unwrap();
    assert!(
        man.contains("journal") && man.contains("opt\\-in"),
        "man page lacks verbs"
    );
    let bash =
        std::fs::read_to_string(root.join("share/bash-completion/completions/telemctl")).unwrap();
    assert!(bash.contains("is-active") && bash.contains("spool"));
    // The packaged default config is a valid config equal to the built-in defaults.
    let c = telem_core::config::Config::load_file(
        telem_core::config::Config::default(),
        &root.join("share/defaults/telemetrics/telemd.toml"),
    )
    .unwrap();
    assert_eq!(c.spool.spool_dir, Path::new("/var/spool/telemetry"));
    assert_eq!(c.socket.socket_path, Path::new("/run/telem-0"));
    // It approves what the shipped crash-symbolizer needs, read back from
    // the file itself (base: an empty table, not the built-in defaults).
    let text =
        std::fs::read_to_string(root.join("share/defaults/telemetrics/telemd.toml")).unwrap();
    assert!(text.contains("[probes.crash-symbolizer]"), "{text}");
    let cs = &c.probes.probes["crash-symbolizer"];
    assert_eq!(cs.crashes, Some(true));
    assert_eq!(
        cs.classifications.as_deref(),
        Some(&["org.clearlinux/crash/*".to_owned()][..])
    );
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing: the test command installs the systemd package");
    }
    // A real prefix (no DESTDIR) so ExecStart points at an existing binary.
    let prefix = tempfile::tempdir().unwrap();
    install(None, prefix.path());
    let units = prefix.path().join("lib/systemd/system");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("telemd.service"))
        .arg(units.join("telemd.socket"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
/// 1.8: the unit allows `setpriority` back out of `@resources` (0.1 of it),
/// so that the probes' threads can lower their own priority; without
/// CAP_SYS_NICE and with the default RLIMIT_NICE, nothing can be raised.
fn the_installed_unit_is_exposed_no_more_than_1_8() {
    let dest = tempfile::tempdir().unwrap();
    install(Some(dest.path()), Path::new("/usr"));
    let unit = dest.path().join("usr/lib/systemd/system/telemd.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for telemd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(level <= 1.8, "exposure {level} is above 1.8:\n{text}");
}

/// The probes' threads lower their own priority (`setpriority`), which the
/// unit's `~@resources` filter would refuse with EPERM: the unit allows it
/// back after that line (systemd: the last setting of a call wins).
#[test]
fn the_unit_lets_the_probe_threads_lower_their_priority() {
    let dest = tempfile::tempdir().unwrap();
    install(Some(dest.path()), Path::new("/usr"));
    let unit =
        std::fs::read_to_string(dest.path().join("usr/lib/systemd/system/telemd.service")).unwrap();
    let filters: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    let denied = filters.iter().rposition(|f| *f == "~@resources");
    let allowed = filters
        .iter()
        .rposition(|f| !f.starts_with('~') && f.split_whitespace().any(|c| c == "setpriority"));
    assert!(
        matches!((denied, allowed), (Some(d), Some(a)) if a > d),
        "setpriority is not allowed back after ~@resources: {filters:?}"
    );
}
