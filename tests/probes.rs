//! End-to-end: WASM probes in a running `telemd`: loading, hot reload, the
//! compile cache, and every sandbox enforcement point, proved with the
//! `sandbox-test` component built from this repository.

use std::time::{Duration, Instant};

use support::*;
use telem_core::control::{ProbeState, Request};
use telem_core::record::Header;

fn run(d: &TestDaemon, args: &[&str]) -> Result<(), String> {
    run_probe(d, "sandbox-test", args)
}

/// Runs a command expected to fail, then a no-op that succeeds, so the
/// expected failures don't add up to a quarantine.
fn run_err(d: &TestDaemon, args: &[&str]) -> String {
    let e = error_of(&run(d, args));
    let v = run(d, &["print", "0"]);
    assert!(v.is_ok(), "{v:?}");
    e
}

fn error_of(v: &Result<(), String>) -> String {
    assert!(v.is_err(), "expected a failure, got {v:?}");
    v.clone().unwrap_err()
}

fn payloads(d: &TestDaemon) -> Vec<String> {
    d.spool_records().into_iter().map(|r| r.payload).collect()
}

fn wait_payload(d: &TestDaemon, want: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || payloads(d)
            .iter()
            .any(|p| p == want)),
        "no record {want:?} in {:?}\n{}",
        payloads(d),
        d.log()
    );
}

/// Waits until `n` probes are loaded.
fn wait_loaded(d: &TestDaemon, n: usize) {
    let loaded = || probe_list(d).probes.len();
    assert!(
        wait_until(Duration::from_secs(10), || loaded() == n),
        "{} probes loaded\n{}",
        loaded(),
        d.log()
    );
}

/// The admin's approval of the test probes' classifications (outside their
/// own `DOMAIN/NAME/...`, so not granted by default).
const TEST_GRANTS: &str = "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\n[probes.ticker]\nclassifications = [\"org.example/test/tick\"]\n";

fn probe_daemon(extra: &str) -> TestDaemon {
    probe_daemon_granting(extra, TEST_GRANTS)
}

fn probe_daemon_granting(extra: &str, grants: &str) -> TestDaemon {
    let d = TestDaemon::prepare(&format!(
        "{HOLD}probe_scan_interval_ms = 200\n{extra}\n{grants}"
    ));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    d
}

#[test]
fn hello_runs_at_start_with_host_metadata() {
    let d = probe_daemon("");
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    let d = d.spawn();
    let recs = d.wait_spool(1);
    let r = &recs[0];
    assert_eq!(
        r.headers.get(Header::Classification),
        "org.clearlinux/hello/world"
    );
    assert_eq!(r.headers.get(Header::Severity), "1");
    assert_eq!(r.payload, "hello");
    let meta = telem_core::metadata::HostMetadata::collect(std::path::Path::new("/"));
    assert_eq!(r.headers.get(Header::Arch), meta.arch);
    assert_eq!(r.headers.get(Header::KernelVersion), meta.kernel_version);
    assert_eq!(
        r.headers.get(Header::MachineId),
        std::fs::read_to_string(d.path("state/machine_id")).unwrap()
    );
    // The counter moves once the record is durable, just after it lands.
    let sent = || probe_list(&d).probes.first().map(|p| p.stats.records_sent);
    assert!(
        wait_until(Duration::from_secs(5), || sent() == Some(1)),
        "{:?}",
        sent()
    );
    let list = probe_list(&d);
    assert_eq!(list.probes[0].name, "hello");
}

#[test]
fn drop_in_replace_and_remove_without_restart() {
    let d = probe_daemon("").spawn();
    wait_loaded(&d, 0);
    // Drop in, written slowly: a tenth every 100 ms, so at least four
    // scans (every 200 ms) see it half-written and growing. A file is
    // loaded only once two scans in a row saw it unchanged, so no scan
    // tries the partial one.
    let bytes = std::fs::read(probe_wasm("hello")).unwrap();
    let hello = d.path("probes/hello.wasm");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&hello).unwrap();
        for chunk in bytes.chunks(bytes.len() / 10 + 1) {
            f.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_payload(&d, "hello");
    assert!(
        !d.log().contains("probe not loaded"),
        "a partial file was loaded:\n{}",
        d.log()
    );
    // Replace it with another build (a custom section makes the file
    // differ): the new one is loaded and runs its start trigger again.
    let mut rebuilt = bytes.clone();
    rebuilt.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'1']);
    std::fs::write(&hello, &rebuilt).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || payloads(&d)
            .iter()
            .filter(|p| *p == "hello")
            .count()
            == 2),
        "{}",
        d.log()
    );
    // A component whose name is not its file's is refused: grants go by name.
    std::fs::copy(probe_wasm("sandbox_test"), d.path("probes/heartbeat.wasm")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            d
            .log()
            .contains("the component calls itself sandbox-test, but a probe's file must be named after it (sandbox-test.wasm)")
        }),
        "{}",
        d.log()
    );
    std::fs::remove_file(d.path("probes/heartbeat.wasm")).unwrap();
    let target = d.path("probes/sandbox-test.wasm");
    std::fs::copy(probe_wasm("sandbox_test"), &target).unwrap();
    wait_loaded(&d, 2);
    {
        let v = run(&d, &["state"]);
        assert!(v.is_ok(), "{v:?}");
    }
    // Remove: it stops.
    std::fs::remove_file(&target).unwrap();
    wait_loaded(&d, 1);
    assert!(error_of(&run(&d, &["state"])).contains("no probe named sandbox-test"));
}

/// The probe directories are watched: with a scan only once an hour, a
/// probe dropped in (copied, then renamed into place, as package managers
/// install) runs within a second or so, not at the next scan; one that
/// appears in a directory made after the start is found by the scan.
#[test]
fn a_dropped_in_probe_runs_without_waiting_for_a_scan() {
    let d = TestDaemon::prepare(&format!(
        "{HOLD}probe_scan_interval_ms = 3600000
"
    ));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    let d = d.spawn();
    wait_loaded(&d, 0);
    let staged = d.path("probes/.hello.wasm.tmp");
    std::fs::copy(probe_wasm("hello"), &staged).unwrap();
    std::fs::rename(&staged, d.path("probes/hello.wasm")).unwrap();
    // Generous for a loaded machine; the scan would take an hour.
    assert!(
        wait_until(Duration::from_secs(5), || payloads(&d)
            .iter()
            .any(|p| p == "hello")),
        "not run without a scan:\n{}",
        d.log()
    );
}

#[test]
fn bad_files_are_reported_and_skipped() {
    let d = probe_daemon("");
    std::fs::write(d.path("probes/junk.wasm"), b"this is not wasm").unwrap();
    // A core module, not a component.
    std::fs::write(d.path("probes/core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    let d = d.spawn();
    d.wait_spool(1);
    let log = d.log();
    assert!(
        log.contains("junk.wasm: a text file, not WebAssembly"),
        "{log}"
    );
    assert!(
        log.contains("core.wasm: a core WebAssembly module, not a component"),
        "{log}"
    );
    wait_loaded(&d, 1);
}

#[test]
fn restart_with_a_warm_cache_does_not_recompile() {
    let mut d = probe_daemon("");
    std::fs::copy(
        probe_wasm("sandbox_test"),
        d.path("probes/sandbox-test.wasm"),
    )
    .unwrap();
    d = d.spawn();
    assert!(wait_until(Duration::from_secs(10), || probe_list(&d)
        .compilations
        == 1));
    d.stop();
    let d = d.spawn();
    wait_loaded(&d, 1);
    assert_eq!(probe_list(&d).compilations, 0, "{}", d.log());
    assert!(d.log().contains("from cache"));
}

#[test]
fn sandbox_enforcement() {
    // The granted directory sits beside a file that must not leak.
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    let outside = root.path().join("outside.txt");
    std::fs::create_dir(&granted).unwrap();
    let d = probe_daemon_granting(
        "",
        &format!(
            "[probes.sandbox-test]\nclassifications = [\"org.example/test/*\"]\nread_paths = [\"{}\"]\ntimeout_ms = 1000\nmemory_limit_mib = 16\nmax_records_per_hour = 20\n",
            granted.display()
        ),
    );
    std::fs::write(granted.join("ok.txt"), "secret-ok").unwrap();
    std::fs::write(&outside, "must not leak").unwrap();
    std::os::unix::fs::symlink(&outside, granted.join("link.txt")).unwrap();
    std::fs::copy(
        probe_wasm("sandbox_test"),
        d.path("probes/sandbox-test.wasm"),
    )
    .unwrap();
    let d = d.spawn();
    wait_loaded(&d, 1);

    // Filesystem: the grant reads, nothing else does.
    {
        let v = run(&d, &["read", granted.join("ok.txt").to_str().unwrap()]);
        assert!(v.is_ok(), "{v:?}");
    }
    wait_payload(&d, "read: secret-ok");
    for path in [
        outside.clone(),
        granted.join("../outside.txt"),
        granted.join("link.txt"),
        "/etc/passwd".into(),
    ] {
        assert!(
            path.exists(),
            "{}: the test needs it to exist",
            path.display()
        );
        let e = run_err(&d, &["read", path.to_str().unwrap()]);
        assert!(e.contains("read failed"), "{}: {e}", path.display());
    }
    assert!(!payloads(&d).iter().any(|p| p.contains("must not leak")));

    // Network: a listening loopback port is unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    assert!(run_err(&d, &["connect", &addr]).contains("connect failed"));

    // Environment, arguments, and no state across calls.
    {
        let v = run(&d, &["env"]);
        assert!(v.is_ok(), "{v:?}");
    }
    wait_payload(&d, "env: 0 vars, 0 args");
    {
        let v = run(&d, &["state"]);
        assert!(v.is_ok(), "{v:?}");
    }
    {
        let v = run(&d, &["state"]);
        assert!(v.is_ok(), "{v:?}");
    }
    assert!(wait_until(Duration::from_secs(5), || payloads(&d)
        .iter()
        .filter(|p| *p == "state: call 1")
        .count()
        == 2));

    // Memory: under the cap works, past it traps.
    let grown = run(&d, &["grow", "4"]);
    assert!(grown.is_ok(), "{grown:?}");
    // 20 MiB is under the 64 MiB default but over this probe's 16 MiB grant.
    let e = run_err(&d, &["grow", "20"]);
    assert!(
        e.contains("trapped") && e.contains("memory budget of 16777216 bytes exceeded"),
        "{e}"
    );

    // Wall time: an infinite loop is stopped at the deadline while native
    // records keep flowing.
    let sock = d.socket();
    let native = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        telem_core::native_client::send_record(
            &sock,
            &test_record("native during spin"),
            Duration::from_secs(2),
        )
        .unwrap();
    });
    let t = Instant::now();
    let e = run_err(&d, &["spin"]);
    assert!(e.contains("timed out after 1000 ms"), "{e}");
    // The 1 s limit, with room for a slow machine (10x); without the
    // limit the spin never ends.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    native.join().unwrap();
    wait_payload(&d, "native during spin");

    // Classification outside the grant, and the hourly cap.
    let e = run_err(&d, &["send", "org.other/x/y"]);
    assert!(
        e.contains("is not among the probe's granted classifications"),
        "{e}"
    );
    let e = run_err(&d, &["flood", "50"]);
    assert!(
        e.contains("flood stopped after")
            && e.contains("rate limited")
            && e.contains("over its limit of 20 records per hour"),
        "{e}"
    );
    let flood = payloads(&d)
        .iter()
        .filter(|p| p.starts_with("flood "))
        .count();
    let sent = probe_list(&d).probes[0].stats.records_sent;
    assert_eq!(sent, 20, "{flood} flood records");

    // Output is captured into the log, tagged, and capped.
    let _ = run(&d, &["print", "100000"]);
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .contains("stream=\"stderr\"")
            || d.log().contains("stream=stderr")),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("[cut at 16 KiB]"))
        .unwrap_or_else(|| panic!("no cut stdout line:\n{log}"));
    let longest = line.split(|c| c != 'p').map(str::len).max().unwrap();
    assert_eq!(longest, 16 * 1024, "stdout is kept up to 16 KiB exactly");

    // Counters.
    let p = &probe_list(&d).probes[0];
    assert_eq!(p.stats.timeouts, 1);
    // The grow past the grant, and `print!` panicking when the 16 KiB
    // stdout pipe refused the rest of its 100,000 bytes.
    assert_eq!(p.stats.traps, 2, "{p:?}");
    assert_eq!(
        p.stats.records_refused, 2,
        "one not granted, one over the hourly cap: {p:?}"
    );
    assert_eq!(p.granted.memory_limit_mib, 16);
    assert_eq!(p.requested.max_records_per_hour, 50);
}

#[test]
fn repeated_failures_quarantine_until_reload() {
    let d = probe_daemon("");
    std::fs::copy(
        probe_wasm("sandbox_test"),
        d.path("probes/sandbox-test.wasm"),
    )
    .unwrap();
    let d = d.spawn();
    wait_loaded(&d, 1);
    for _ in 0..5 {
        assert!(error_of(&run(&d, &["bogus"])).contains("unknown command"));
    }
    let e = error_of(&run(&d, &["state"]));
    assert!(e.contains("quarantined"), "{e}");
    let state = probe_list(&d).probes[0].state.clone();
    assert!(
        matches!(state, ProbeState::Quarantined(_)),
        "{state:?} is not quarantined"
    );
    let reloaded = call(&d, &Request::Reload);
    assert!(reloaded.is_ok(), "{reloaded:?}");
    {
        let v = run(&d, &["state"]);
        assert!(v.is_ok(), "{v:?}");
    }
}

/// Quarantine reached by the daemon's own triggers, with no admin call: the
/// ticker's start run fails every time (the admin granted it another
/// classification than the one it sends: the probe's own mistake, unlike
/// an hourly budget of 0, which is the host's limit and never its
/// failure), is retried after 1, 2, 4 and 8 s, and the fifth failure
/// quarantines it.
#[test]
fn a_probe_failing_its_triggered_runs_is_quarantined_after_paced_retries() {
    let d = probe_daemon_granting(
        "",
        "[probes.ticker]\nclassifications = [\"org.example/test/other\"]\n",
    );
    std::fs::copy(probe_wasm("ticker"), d.path("probes/ticker.wasm")).unwrap();
    let started = Instant::now();
    let d = d.spawn();
    let quarantined = || {
        probe_list(&d)
            .probes
            .first()
            .is_some_and(|p| matches!(p.state, ProbeState::Quarantined(_)))
    };
    assert!(
        wait_until(Duration::from_secs(150), quarantined),
        "{:?}\n{}",
        probe_list(&d).probes,
        d.log()
    );
    let took = started.elapsed();
    let p = probe_list(&d).probes[0].clone();
    assert_eq!(p.stats.runs as usize, support::QUARANTINE_AFTER, "{p:?}");
    assert_eq!(p.stats.records_refused as usize, support::QUARANTINE_AFTER);
    assert_eq!(
        p.stats.failures_in_a_row as usize,
        support::QUARANTINE_AFTER
    );
    assert!(
        took >= Duration::from_secs(1 + 2 + 4 + 8),
        "quarantined {took:?} after start: the retries were not paced"
    );
    assert!(d.spool_names().is_empty());
    assert!(error_of(&run_probe(&d, "ticker", &[])).contains("quarantined"));
}

#[test]
fn interval_trigger_fires_repeatedly_after_the_start_run() {
    // The host's floor is lowered to the ticker's 1 s for the test.
    let d = probe_daemon("probe_min_interval_secs = 1\n");
    std::fs::copy(probe_wasm("ticker"), d.path("probes/ticker.wasm")).unwrap();
    let d = d.spawn();
    let ticks = || payloads(&d).iter().filter(|p| *p == "tick").count();
    assert!(
        wait_until(Duration::from_secs(10), || ticks() >= 3),
        "{:?}\n{}",
        payloads(&d),
        d.log()
    );
    assert_eq!(payloads(&d).iter().filter(|p| *p == "start").count(), 1);
    // One second plus a splay of at most a tenth of it: never faster than 1 s.
    let mut times: Vec<u64> = d
        .spool_records()
        .iter()
        .filter(|r| r.payload == "tick")
        .map(|r| {
            r.headers
                .get(telem_core::record::Header::CreationTimestamp)
                .parse()
                .unwrap()
        })
        .collect();
    times.sort();
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(
        span as usize >= times.len() - 2,
        "{} ticks within {span} s",
        times.len()
    );
}

#[test]
fn an_interval_below_the_floor_is_raised_to_it() {
    let d = probe_daemon("probe_min_interval_secs = 3600\n");
    std::fs::copy(probe_wasm("ticker"), d.path("probes/ticker.wasm")).unwrap();
    let d = d.spawn();
    wait_payload(&d, "start");
    let p = &probe_list(&d).probes[0];
    assert_eq!(p.granted.interval_secs, Some(3600), "{p:?}");
    assert_eq!(p.requested.interval_secs, Some(1), "{p:?}");
    assert!(
        p.granted.refused.iter().any(|r| r.item == "interval 1 s"),
        "{p:?}"
    );
}
