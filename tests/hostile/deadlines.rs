//! Deadlines that hold inside host calls: a probe parked in a WASI sleep is
//! stopped at its limit, and a `describe` that sleeps delays neither the
//! sockets nor the other probes.

use std::time::{Duration, Instant};

use crate::{daemon_with, payloads, run};
use support::*;
use telem_core::control::ProbeState;

#[test]
fn a_probe_sleeping_in_a_host_call_is_stopped_at_its_limit() {
    let d = daemon_with(
        &["sandbox_test"],
        "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\ntimeout_ms = 1000\n",
    );
    let t = Instant::now();
    let v = run(&d, "sandbox-test", &["sleep", "60000"]);
    let took = t.elapsed();
    assert!(v.is_err(), "{v:?}");
    assert!(
        v.as_ref().unwrap_err().contains("timed out after 1000 ms"),
        "{v:?}"
    );
    // Stopped at the limit (1 s; 10x that for a slow machine), not when the
    // 60 s sleep ends.
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    assert!(!payloads(&d).iter().any(|p| p.starts_with("slept")));
    // The probe is not wedged: the next call runs.
    let v = run(&d, "sandbox-test", &["sleep", "10"]);
    assert!(v.is_ok(), "{v:?}");
}

#[test]
fn a_sleeping_describe_delays_neither_start_up_nor_other_probes() {
    let d = daemon_with(&["slow_describe", "hello"], "");
    // The sockets answered (spawn waited for them); the slow probe's load
    // fails at the describe deadline, after the daemon said it was ready.
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("describe failed")),
        "{}",
        d.log()
    );
    let log = d.log();
    let ready = log.find("telemd ready").expect("ready logged");
    let failed = log.find("describe failed").unwrap();
    assert!(ready < failed, "READY came first:\n{log}");
    assert!(
        log[failed..]
            .lines()
            .next()
            .unwrap()
            .contains("timed out after 2000 ms"),
        "{log}"
    );
    let hello = crate::probe_info(&d, "hello");
    assert_eq!(hello.state, ProbeState::Running, "{hello:?}");
}
