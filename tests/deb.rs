//! The Debian packages: `scripts/build-deb.sh` makes telemetrics,
//! libtelemetry4 and libtelemetry-dev from the programs the tests run and
//! the shipped probes; `dpkg-deb -c` lists every file a packager expects
//! with its mode and owner, `lintian` reports no error, and `dpkg --root`
//! installs them into a throwaway root whose postinst creates the service
//! user and its directories there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::*;

/// The three packages, built once for every test here.
fn packages() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static BUILT: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    BUILT.get_or_init(|| {
        programs_are_fresh();
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(&from).unwrap();
        for (built, name) in [
            (TELEMD, "telemd"),
            (TELEMCTL, "telemctl"),
            (RECORD_GEN, "telem-record-gen"),
            (CRASH_HANDLER, "telem-crash-handler"),
            (LIBTELEMETRY, "libtelemetry.so"),
        ] {
            std::fs::copy(built, from.join(name)).unwrap();
        }
        let out = dir.path().join("out");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-deb.sh");
        let built = Command::new(script)
            .arg("--from")
            .arg(&from)
            .arg("--out")
            .arg(&out)
            .arg("--fast")
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "build-deb.sh: {}{}",
            text(&built.stdout),
            text(&built.stderr)
        );
        let debs: Vec<PathBuf> = text(&built.stdout).lines().map(PathBuf::from).collect();
        assert_eq!(debs.len(), 3, "{debs:?}");
        (dir, debs)
    })
}

fn deb(name: &str) -> &'static Path {
    packages()
        .1
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}_"))
        })
        .unwrap_or_else(|| panic!("no {name} package"))
}

/// `dpkg-deb -c`: path -> (mode string, owner).
fn contents(deb: &Path) -> std::collections::HashMap<String, (String, String)> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    text(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches("./").to_owned();
            (path, (f[0].to_owned(), f[1].to_owned()))
        })
        .collect()
}

fn multiarch() -> String {
    let out = Command::new("dpkg-architecture")
        .arg("-qDEB_HOST_MULTIARCH")
        .output()
        .unwrap();
    text(&out.stdout).trim().to_owned()
}

#[test]
fn every_file_a_packager_expects_is_there_with_its_mode() {
    let ma = multiarch();
    let main = contents(deb("telemetrics"));
    let mut expected: Vec<(String, &str)> = vec![
        ("usr/bin/telemd".into(), "-rwxr-xr-x"),
        ("usr/bin/telemctl".into(), "-rwxr-xr-x"),
        ("usr/bin/telem-record-gen".into(), "-rwxr-xr-x"),
        ("usr/bin/telem-crash-handler".into(), "-rwxr-xr-x"),
        ("lib/systemd/system/telemd.service".into(), "-rw-r--r--"),
        ("lib/systemd/system/telemd.socket".into(), "-rw-r--r--"),
        ("usr/lib/sysusers.d/telemetry.conf".into(), "-rw-r--r--"),
        ("usr/lib/tmpfiles.d/telemetry.conf".into(), "-rw-r--r--"),
        (
            "usr/lib/sysctl.d/60-telem-crash-handler.conf".into(),
            "-rw-r--r--",
        ),
        (
            "usr/share/defaults/telemetrics/telemd.toml".into(),
            "-rw-r--r--",
        ),
        ("usr/share/man/man1/telemctl.1.gz".into(), "-rw-r--r--"),
        ("usr/share/man/man8/telemd.8.gz".into(), "-rw-r--r--"),
        (
            "usr/share/bash-completion/completions/telemctl".into(),
            "-rw-r--r--",
        ),
        (
            "usr/share/zsh/site-functions/_telemctl".into(),
            "-rw-r--r--",
        ),
        ("usr/share/doc/telemetrics/copyright".into(), "-rw-r--r--"),
    ];
    for p in [
        "hello",
        "crash-symbolizer",
        "kernel-oops",
        "pstore",
        "journal-errors",
    ] {
        expected.push((format!("usr/lib/telemetry/probes/{p}.wasm"), "-rw-r--r--"));
    }
    for (path, mode) in &expected {
        let (m, owner) = main
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from telemetrics"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "root/root", "{path}");
    }
    let lib = contents(deb("libtelemetry4"));
    assert_eq!(
        lib[&format!("usr/lib/{ma}/libtelemetry.so.4.0.1")].0,
        "-rw-r--r--"
    );
    assert!(lib[&format!("usr/lib/{ma}/libtelemetry.so.4")]
        .0
        .starts_with('l'));
    let dev = contents(deb("libtelemetry-dev"));
    for path in [
        "usr/include/telemetry.h".to_owned(),
        format!("usr/lib/{ma}/pkgconfig/libtelemetry.pc"),
    ] {
        assert_eq!(dev[&path].0, "-rw-r--r--", "{path}");
    }
    assert!(dev[&format!("usr/lib/{ma}/libtelemetry.so")]
        .0
        .starts_with('l'));
    assert!(
        dev.keys().any(|p| p.starts_with("usr/share/man/man3/")),
        "{dev:?}"
    );
    // The library is in its own package only.
    assert!(!main.keys().any(|p| p.contains("libtelemetry")));
}

/// The maintainer scripts are valid sh, and do what the README says.
#[test]
fn the_maintainer_scripts_parse_and_cover_install_upgrade_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb("telemetrics"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for script in ["postinst", "prerm", "postrm"] {
        let path = dir.path().join(script);
        let check = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(check.status.success(), "{script}: {}", text(&check.stderr));
    }
    let read = |s: &str| std::fs::read_to_string(dir.path().join(s)).unwrap();
    let postinst = read("postinst");
    assert!(postinst.contains("systemd-sysusers"));
    assert!(postinst.contains("try-restart telemd.service"));
    assert!(postinst.contains("telemd.socket telemd.service"));
    let prerm = read("prerm");
    let at = |what: &str| {
        prerm
            .find(what)
            .unwrap_or_else(|| panic!("{what} missing: {prerm}"))
    };
    assert!(
        at("stop telemd.socket") < at("stop telemd.service"),
        "{prerm}"
    );
    assert!(read("postrm").contains("/proc/sys/kernel/core_pattern"));
}

#[test]
fn lintian_reports_no_error() {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .args(packages().1.iter())
        .output()
        .expect("lintian (the test command installs it)");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(!said.lines().any(|l| l.starts_with("E: ")), "{said}");
}

#[test]
#[ignore = "needs root: dpkg --root installs files owned by root and the service user"]
fn installing_into_a_throwaway_root_creates_the_user_and_its_directories() {
    assert_root("dpkg --root");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in [
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let out = Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        // The maintainer scripts run here, with DPKG_ROOT naming the root.
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
            "-i",
        ])
        .arg(deb("libtelemetry4"))
        .arg(deb("telemetrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("telemetry:"))
        .unwrap_or_else(|| panic!("no telemetry user in {passwd}"));
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    use std::os::unix::fs::MetadataExt;
    for (dir, mode) in [
        ("var/spool/telemetry", 0o750),
        ("var/lib/telemetry", 0o750),
        ("var/lib/telemetry/crash-inbox", 0o700),
        ("var/log/telemetry", 0o750),
    ] {
        let m = std::fs::metadata(r.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(m.uid(), uid, "{dir}");
        assert_eq!(m.mode() & 0o7777, mode, "{dir}");
    }
    assert!(r.join("usr/bin/telemd").exists());

    // And purged again: the files go, the removal scripts run (in their
    // DPKG_ROOT branch, which leaves the host's units and sysctl alone).
    let out = Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args([
            "--force-script-chrootless",
            "--log=/dev/null",
            "--purge",
            "telemetrics",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!r.join("usr/bin/telemd").exists());
}
