//! Deny by default: a manifest that asks for everything gets only the safe
//! set, cannot read the daemon's files or other processes' memory, cannot
//! send crash records, and `telemctl probe info` says why each request was
//! refused.

use std::path::Path;
use std::time::Duration;

use crate::{append_config, daemon_with, payloads, prepared_with, probe_info, run};
use support::*;

/// Runs a greedy command and returns the result it reported (a record of
/// its own domain; a forged record it managed to send is not the result).
fn result_of(d: &TestDaemon, args: &[&str]) -> String {
    let results = || -> Vec<String> { payloads(d).into_iter().filter(|p| p != "forged").collect() };
    let before = results();
    let v = run(d, "greedy", args);
    assert!(v.is_ok(), "{v:?}");
    assert!(
        wait_until(Duration::from_secs(10), || results().len() > before.len()),
        "{}",
        d.log()
    );
    let mut after = results();
    for p in &before {
        let i = after.iter().position(|a| a == p).unwrap();
        after.remove(i);
    }
    after.pop().unwrap()
}

#[test]
fn a_greedy_manifest_gets_only_the_safe_set() {
    let d = daemon_with(&["greedy"], HOLD);
    let p = probe_info(&d, "greedy");
    let g = &p.granted;
    assert_eq!(
        g.read_paths,
        [Path::new("/usr/share"), Path::new("/proc/mounts")],
        "{p:?}"
    );
    assert_eq!(g.classifications, ["org.example/greedy/*"]);
    assert_eq!(g.max_records_per_hour, 1000);
    assert!(!g.crashes);
    let refused: Vec<&str> = g.refused.iter().map(|r| r.item.as_str()).collect();
    for item in [
        "read /",
        "read relative",
        "read /proc/self",
        "read /var",
        "read /tmp",
        "classification */*/*",
        "classification org.clearlinux/crash/*",
        "max_records_per_hour 4294967295",
        "crashes",
    ] {
        assert!(refused.contains(&item), "{item} refused: {refused:?}");
    }

    // What it asked for and did not get stays out of reach.
    let spool_file = d.path("spool");
    let secrets = [
        "/proc/self/mem".to_owned(),
        "/proc/1/environ".to_owned(),
        d.path("state").display().to_string(),
        spool_file.display().to_string(),
        d.path("telemd.toml").display().to_string(),
        "/etc/hostname".to_owned(),
    ];
    for path in &secrets {
        let r = result_of(&d, &["read", path]);
        assert!(r.starts_with("read failed"), "{path}: {r}");
    }
    // The safe set works, a single file included.
    let r = result_of(&d, &["read", "/proc/mounts"]);
    assert!(
        r.starts_with("read ") && !r.starts_with("read failed"),
        "{r}"
    );
    assert_ne!(r, "read 0 bytes", "the file grant shows the file's content");
    let r = result_of(&d, &["read", "/proc/cpuinfo"]);
    assert!(
        r.starts_with("read failed"),
        "only the file granted is visible: {r}"
    );
    // No forged crash record.
    let r = result_of(&d, &["send", "org.clearlinux/crash/clr"]);
    assert!(
        r.starts_with("send failed") && r.contains("not among the probe's granted"),
        "{r}"
    );
    assert!(d.spool_records().iter().all(|r| !r
        .headers
        .get(telem_core::record::Header::Classification)
        .contains("crash")));

    // The admin sees why.
    let out = std::process::Command::new(support::TELEMCTL)
        .args([
            "-f",
            d.config_path.to_str().unwrap(),
            "probe",
            "info",
            "greedy",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("refused:"), "{text}");
    assert!(text.contains("read /: / is never granted"), "{text}");
    assert!(
        text.contains("crashes: cores hold other processes' memory"),
        "{text}"
    );
}

#[test]
fn the_admin_approves_what_the_safe_set_leaves_out() {
    let d = prepared_with(&["greedy"], HOLD);
    let shared = d.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("data.txt"), "approved").unwrap();
    append_config(&d, &format!(
        "[probes.greedy]\nread_paths = [\"{}\", \"/\", \"{}\"]\nclassifications = [\"org.example/greedy/*\", \"org.example/other/*\"]\n",
        shared.display(),
        d.path("spool").display()
    ));
    let d = d.spawn();
    let p = probe_info(&d, "greedy");
    assert_eq!(
        p.granted.read_paths,
        [shared.as_path()],
        "the admin's / and the spool are refused all the same: {p:?}"
    );
    let r = result_of(&d, &["read", shared.join("data.txt").to_str().unwrap()]);
    assert_eq!(r, "read 8 bytes");
    let r = result_of(&d, &["send", "org.example/other/x"]);
    assert_eq!(r, "sent");
}
