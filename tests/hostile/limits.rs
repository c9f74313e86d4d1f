//! Resource caps on the whole store and on host resources: memory is one
//! budget for the call, and a probe holding files cannot exhaust the
//! daemon's descriptors or stop it answering.

use std::time::Duration;

use crate::{append_config, daemon_with, prepared_with, run};
use support::*;
use telem_core::control::Request;

#[test]
fn the_admins_memory_grant_is_what_the_probe_gets() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nmemory_limit_mib = 16\n",
    );
    // 20 MiB passes the default 64 MiB but not the 16 MiB grant.
    let v = run(&d, "sandbox-test", &["grow", "20"]);
    assert!(v.is_err(), "{v:?}");
    let e = v.unwrap_err();
    assert!(
        e.contains("grow failed") || e.contains("memory budget"),
        "{e}"
    );
    let v = run(&d, "sandbox-test", &["grow", "4"]);
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn held_files_are_capped_and_the_sockets_answer_during_the_call() {
    let d = prepared_with(&["sandbox_test"], HOLD);
    let data = d.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "x").unwrap();
    append_config(
        &d,
        &format!(
            "[probes.sandbox-test]\nread_paths = [\"{}\"]\nclassifications = [\"org.example/test/*\"]\ntimeout_ms = 8000\n",
            data.display()
        ),
    );
    let d = d.spawn();
    crate::probe_info(&d, "sandbox-test");
    let fds_before = fd_count(d.pid());
    let file = data.join("f").display().to_string();
    // 100,000 opens: the call is stopped at the cap, with a reason.
    let v = run(&d, "sandbox-test", &["hold", &file, "100000", "0"]);
    assert!(v.is_err(), "{v:?}");
    assert!(
        v.as_ref()
            .unwrap_err()
            .contains("resource table has no free keys"),
        "{v:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(d.pid())
            <= fds_before + 2),
        "{} descriptors after the call (was {fds_before})",
        fd_count(d.pid())
    );
    // Just under the cap, held for a while: the daemon has descriptors to
    // spare and both sockets answer during the call.
    std::thread::scope(|s| {
        let call = s.spawn(|| run(&d, "sandbox-test", &["hold", &file, "200", "3000"]));
        assert!(
            wait_until(Duration::from_secs(10), || d
                .log()
                .contains("holding 200 files")),
            "{}",
            d.log()
        );
        let fds = fd_count(d.pid());
        assert!(fds >= fds_before + 200, "the probe holds its files: {fds}");
        assert!(
            fds < fds_before + 300,
            "{fds} descriptors open (was {fds_before})"
        );
        let status = support::call(&d, &Request::Status);
        assert!(status.is_ok(), "{status:?}");
        send_raw(
            &d.socket(),
            &telem_core::record::wire::encode_frame(&test_record("during")),
        );
        assert!(
            wait_until(Duration::from_secs(5), || d
                .spool_records()
                .iter()
                .any(|r| r.payload == "during")),
            "{}",
            d.log()
        );
        let v = call.join().unwrap();
        assert!(v.is_ok(), "{v:?}");
    });
    // Everything the call held is closed again.
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(d.pid())
            <= fds_before + 2),
        "{} descriptors after the call (was {fds_before})",
        fd_count(d.pid())
    );
}

#[test]
fn invalid_records_do_not_use_up_the_hourly_allowance() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nmax_records_per_hour = 3\n",
    );
    // Granted by the pattern, refused by the record rules (a space).
    for _ in 0..4 {
        let v = run(&d, "sandbox-test", &["send", "org.example/test/bad value"]);
        assert!(v.is_err(), "{v:?}");
        assert!(
            v.as_ref().unwrap_err().contains("refused as invalid"),
            "{v:?}"
        );
    }
    let v = run(&d, "sandbox-test", &["flood", "3"]);
    assert!(v.is_ok(), "the allowance is whole: {v:?}");
    let v = run(&d, "sandbox-test", &["flood", "1"]);
    assert!(
        v.as_ref().err().is_some_and(|e| e.contains("rate limited")),
        "and then spent: {v:?}"
    );
}

/// The host's own limit is not the probe's failure: a probe that returns
/// its rate limiting as an error (as an old SDK's `handle` did) is not
/// quarantined for it, however often; its own errors still count.
#[test]
fn a_probe_is_not_quarantined_for_the_hosts_own_limit() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nmax_records_per_hour = 1\n",
    );
    assert_eq!(run(&d, "sandbox-test", &["flood", "1"]), Ok(()));
    // More than QUARANTINE_AFTER (5) runs over the budget, each an error.
    for i in 0..7 {
        let e = run(&d, "sandbox-test", &["flood", "1"]).unwrap_err();
        assert!(
            e.contains("after the host did not take a record")
                && e.contains("over its limit of 1 records per hour")
                && !e.contains("RateLimited"),
            "run {i}: {e}"
        );
    }
    let p = crate::probe_info(&d, "sandbox-test");
    assert_eq!(p.state, telem_core::control::ProbeState::Running, "{p:?}");
    assert_eq!(p.stats.failures_in_a_row, 0);
    // Its own failures still quarantine it.
    for _ in 0..5 {
        assert!(run(&d, "sandbox-test", &["no-such-command"]).is_err());
    }
    assert!(
        matches!(
            crate::probe_info(&d, "sandbox-test").state,
            telem_core::control::ProbeState::Quarantined(_)
        ),
        "{}",
        d.log()
    );
    // Quarantined is "not running" to scripts: exit 3, the info printed.
    let out = telemctl(&d, &["probe", "info", "sandbox-test"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("quarantined: "));
}

/// `telemctl probe run` shows what a run stored, but the daemon copies at
/// most 100 of a run's records into its answer (a probe may store
/// thousands an hour): all are stored, the count says so, and only the
/// first 100 are shown.
#[test]
fn a_run_of_many_records_stores_them_all_and_shows_the_first_hundred() {
    let d = daemon_with(
        &["sandbox_test"],
        &format!("{HOLD}[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nmax_records_per_hour = 1000\n"),
    );
    let out = telemctl(&d, &["probe", "run", "sandbox-test", "--", "flood", "250"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("ran successfully; 250 record(s) stored")
            && stdout.contains("(the first 100 shown)"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("org.example/test/flood (severity").count(),
        100,
        "{stdout}"
    );
    assert_eq!(d.wait_spool(250).len(), 250);
}

/// A run of `sandbox-test flood 1` that the hourly budget refused.
fn refused_by_the_budget(d: &TestDaemon, when: &str) {
    let v = run(d, "sandbox-test", &["flood", "1"]);
    assert!(
        v.as_ref().err().is_some_and(|e| e.contains("rate limited")),
        "{when}: the budget was handed out again: {v:?}"
    );
}

#[test]
fn the_hourly_budget_is_not_renewed_by_reload_enable_or_restart() {
    let mut d = daemon_with(
        &["sandbox_test"],
        &format!(
            "{HOLD}[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nmax_records_per_hour = 4\n"
        ),
    );
    assert!(run(&d, "sandbox-test", &["flood", "3"]).is_ok());
    assert!(call(&d, &Request::Reload).is_ok());
    assert!(
        run(&d, "sandbox-test", &["flood", "1"]).is_ok(),
        "the fourth"
    );
    // Killed at once: what was spent is on disk already, not only kept
    // in memory or written at shutdown.
    d.kill9();
    d.spawn_with(std::process::Command::new(TELEMD));
    refused_by_the_budget(&d, "at the cap, after a kill -9 right after the fourth");
    assert!(call(&d, &Request::Reload).is_ok());
    refused_by_the_budget(&d, "after a reload");
    let probe = "sandbox-test".to_owned();
    act(
        &d,
        &Request::Disable {
            probe: probe.clone(),
        },
    )
    .unwrap();
    act(&d, &Request::Enable { probe }).unwrap();
    refused_by_the_budget(&d, "after disable and enable");
    d.stop();
    d.spawn_with(std::process::Command::new(TELEMD));
    refused_by_the_budget(&d, "after a restart");
    d.kill9();
    d.spawn_with(std::process::Command::new(TELEMD));
    refused_by_the_budget(&d, "after a kill -9 and a start");
    let floods = d
        .spool_records()
        .iter()
        .filter(|r| r.payload.starts_with("flood "))
        .count();
    assert_eq!(floods, 4, "records spooled in the hour");
}

#[test]
fn a_component_too_big_to_compile_safely_is_refused_before_compiling() {
    // One straight-line function of ~1.5 MB: Cranelift needed close to
    // 1 GB for such a function, inside the daemon.
    let body = "(drop (i32.const 1))".repeat(500_000);
    let bomb = wat::parse_str(format!("(component (core module (func {body})))")).unwrap();
    let d = prepared_with(&[], HOLD);
    std::fs::write(d.path("probes/bomb.wasm"), &bomb).unwrap();
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("refused before compiling: a function of")),
        "{}",
        d.log()
    );
    let list = probe_list(&d);
    assert_eq!(list.compilations, 0, "{list:?}");
    assert!(rss_kib(d.pid()) < 200 * 1024);
}

#[test]
fn a_component_over_max_component_bytes_is_not_compiled() {
    let d = daemon_with(
        &["sandbox_test"],
        &format!("{HOLD}max_component_bytes = 65536\n"),
    );
    let size = std::fs::metadata(d.path("probes/sandbox_test.wasm"))
        .unwrap()
        .len();
    assert!(
        size > 65536,
        "the test needs a component over the cap: {size}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("is over max_component_bytes (65536); not compiled")),
        "{}",
        d.log()
    );
    let list = probe_list(&d);
    assert_eq!(list.compilations, 0, "{list:?}");
    assert_eq!(list.probes.len(), 0, "{list:?}");
}
