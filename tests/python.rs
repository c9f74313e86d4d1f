//! A probe written in Python (the `probes-wasm/hello-python` template,
//! built with componentize-py by the test command) runs like any other:
//! dropped into a running `telemd` its record arrives, and `telemctl probe
//! test` runs it. The defaults refuse it, naming the key to raise.

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// What a Python component needs from the admin (the template's README
/// says so): it is about 18 MB, and its interpreter loop is one function
/// of about 420 KiB.
const PYTHON_LIMITS: &str = "max_component_bytes = 33554432\nmax_function_bytes = 524288\n";

fn python_probe() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probes-wasm/target/python/hello-python.wasm");
    assert!(
        p.exists(),
        "{} missing: run scripts/build-python-probe.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

fn daemon(extra: &str) -> TestDaemon {
    let d = TestDaemon::prepare(&format!("{HOLD}probe_scan_interval_ms = 200\n{extra}"));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(python_probe(), d.path("probes/hello-python.wasm")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    d.spawn()
}

#[test]
fn a_python_probe_dropped_into_telemd_sends_its_record() {
    let d = daemon(PYTHON_LIMITS);
    // Compiling an 18 MB component takes seconds (BENCHMARKS.md).
    let recs = {
        let ok = wait_until(Duration::from_secs(120), || d.spool_names().len() == 1);
        assert!(ok, "no record from the Python probe\n{}", d.log());
        d.spool_records()
    };
    assert_eq!(
        recs[0]
            .headers
            .get(telem_core::record::Header::Classification),
        "org.example/hello-python/ping"
    );
    assert_eq!(recs[0].payload, "hello from Python (start)\n");
    // Its errors are errors.
    let e = run_probe(&d, "hello-python", &["fail"]).unwrap_err();
    assert!(e.contains("asked to fail"), "{e}");
    assert!(
        d.log().contains("heartbeat (start)"),
        "its log line: {}",
        d.log()
    );
}

#[test]
fn the_default_limits_refuse_a_python_probe_and_name_the_key() {
    let d = daemon("");
    let mut why = String::new();
    let refused = wait_until(Duration::from_secs(20), || {
        probe_list(&d).refused.into_iter().any(|r| {
            why = r.reason;
            true
        })
    });
    assert!(refused, "{}", d.log());
    assert!(why.contains("max_component_bytes"), "{why}");
    assert_eq!(probe_list(&d).compilations, 0);
}

#[test]
fn probe_test_runs_the_python_probe() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path(), PYTHON_LIMITS);
    let out = telemctl_offline(
        &config,
        dir.path(),
        [
            std::ffi::OsStr::new("probe"),
            std::ffi::OsStr::new("test"),
            python_probe().as_os_str(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("log INFO: heartbeat (start)"), "{stdout}");
    assert!(
        stdout.contains("  classification: org.example/hello-python/ping\n"),
        "{stdout}"
    );
    assert!(stdout.contains("handle: ok, 1 record(s)"), "{stdout}");
}

/// `telemctl probe new --lang python`: the project it writes builds with
/// the commands of its README (componentize-py, the version the test
/// command installs) and `probe test`s with the limits file it carries,
/// its record stamped.
#[test]
fn a_generated_python_probe_builds_and_passes_probe_test() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("py-beat");
    let out = std::process::Command::new(TELEMCTL)
        .args(["probe", "new", "py-beat", "--lang", "python", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("componentize-py -d wit -w probe componentize -p . app -o py-beat.wasm")
            && readme.contains("probe test py-beat.wasm"),
        "{readme}"
    );
    let componentize = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/pyenv/bin/componentize-py");
    let built = std::process::Command::new(&componentize)
        .args([
            "-d",
            "wit",
            "-w",
            "probe",
            "componentize",
            "-p",
            ".",
            "app",
            "-o",
            "py-beat.wasm",
        ])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/build-python-probe.sh installs it)",
                componentize.display()
            )
        });
    assert!(built.status.success(), "{built:?}");
    let tested = std::process::Command::new(TELEMCTL)
        .arg("-f")
        .arg(dir.join("python-limits.toml"))
        .args(["probe", "test", "py-beat.wasm"])
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(
        stdout.contains("  classification: org.example/py-beat/ping\n")
            && stdout.contains("py-beat is alive (start)")
            && stdout.contains("handle: ok, 1 record(s)"),
        "{stdout}"
    );
}
