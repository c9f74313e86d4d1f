//! Log flooding and forging: a probe's log lines are rate-limited, escaped
//! and cut, so one call cannot fill the disk or write lines that look like
//! the daemon's own.

use std::time::Duration;

use crate::{daemon_with, run};
use support::*;

#[test]
fn a_log_flood_is_cut_and_forges_no_line() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\n",
    );
    crate::probe_info(&d, "sandbox-test");
    let before = std::fs::metadata(d.path("telemd.log")).unwrap().len();
    let v = run(&d, "sandbox-test", &["log", "20000", "4096"]);
    assert!(v.is_ok(), "{v:?}");
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains("suppressed")),
        "{}",
        d.log()
    );
    let grown = std::fs::metadata(d.path("telemd.log")).unwrap().len() - before;
    eprintln!("20,000 log lines of 4 KiB grew the daemon's log by {grown} bytes");
    // 20,000 lines of 4 KiB is 80 MiB; the allowance is 100 lines or 64 KiB a minute.
    assert!(grown < 1 << 20, "the log grew {grown} bytes");
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "an embedded newline started a line"
    );
    assert!(log.contains("x\\nFORGED"), "the newline is shown escaped");
    assert!(log.contains("log lines of this probe suppressed"), "{log}");

    // A refused, overlong classification is quoted cut, not whole.
    // (As long as a control request may carry: 64 KiB.)
    let long = format!("org.example/{}/x", "c".repeat(60_000));
    let v = run(&d, "sandbox-test", &["send", &long]);
    assert!(v.is_err(), "{v:?}");
    let e = v.unwrap_err();
    assert!(
        e.len() < 1024 && e.contains("bytes cut]"),
        "the error is cut: {} bytes",
        e.len()
    );
    let grown_again = std::fs::metadata(d.path("telemd.log")).unwrap().len() - before;
    assert!(
        grown_again < 1 << 20,
        "a 60 kB classification is not logged whole"
    );
}

#[test]
fn telemctl_prints_probe_text_with_control_characters_escaped() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\n",
    );
    crate::probe_info(&d, "sandbox-test");
    // The probe's error quotes the classification it was refused, escape
    // sequence and all.
    let out = std::process::Command::new(support::TELEMCTL)
        .args([
            "-f",
            d.config_path.to_str().unwrap(),
            "probe",
            "run",
            "sandbox-test",
            "--",
        ])
        .args(["send", "org.evil/\x1b]0;owned\x07\x1b[2J/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let shown = [out.stdout, out.stderr].concat();
    assert!(
        !shown.contains(&0x1b) && !shown.contains(&0x07),
        "raw control bytes reached the terminal: {:?}",
        String::from_utf8_lossy(&shown)
    );
    assert!(
        String::from_utf8_lossy(&shown).contains("\\u{1b}"),
        "{:?}",
        String::from_utf8_lossy(&shown)
    );
}
