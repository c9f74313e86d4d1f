//! End-to-end: event sources (contract 0.2) in a running `telemd`: the
//! kernel log read from a file in `/dev/kmsg`'s format, `files` sources,
//! cursors across restarts and failures, probe state and its quota, the
//! shipped `kernel-oops` probe on real kernel reports, and a component
//! built against contract 0.1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use telem_core::control::{ProbeInfo, ProbeState, Request};
use telem_core::record::Header;

/// Appends records in `/dev/kmsg`'s format: `PRI,SEQ,USEC,FLAGS;text`.
struct Kmsg {
    path: PathBuf,
    seq: u64,
    usec: u64,
}

impl Kmsg {
    fn new(path: PathBuf) -> Kmsg {
        std::fs::write(&path, "").unwrap();
        Kmsg {
            path,
            seq: 0,
            usec: 1_000_000,
        }
    }

    /// Writes lines 1 ms apart (one `write`, so a reader never sees half).
    fn lines<'a>(&mut self, lines: impl IntoIterator<Item = &'a str>) {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(format!("4,{},{},-;", self.seq, self.usec).as_bytes());
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
            self.seq += 1;
            self.usec += 1000;
        }
        self.raw(&out);
    }

    fn raw(&self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// A quiet gap in kernel time (ends any open report).
    fn pause(&mut self, secs: u64) {
        self.usec += secs * 1_000_000;
    }
}

fn sources_daemon(extra: &str) -> (TestDaemon, Kmsg) {
    let d = TestDaemon::prepare(&format!(
        "{HOLD}probe_scan_interval_ms = 200\nkernel_log_path = \"{kmsg}\"\nsources_root = \"{root}\"\n{extra}\n",
        kmsg = std::env::temp_dir().join("unused").display(),
        root = "/nonexistent",
    ));
    // Rewrite the two paths now that the temp dir is known.
    let cfg = std::fs::read_to_string(&d.config_path).unwrap();
    let cfg = cfg
        .replace(
            &std::env::temp_dir().join("unused").display().to_string(),
            &d.path("kmsg").display().to_string(),
        )
        .replace("/nonexistent", &d.path("root").display().to_string());
    std::fs::write(&d.config_path, cfg).unwrap();
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::create_dir_all(d.path("root/var/lib/telemd-test/drop")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    let k = Kmsg::new(d.path("kmsg"));
    (d, k)
}

const ECHO_GRANT: &str =
    "[probes.source-echo]\nkernel_log = true\nread_paths = [\"/var/lib/telemd-test/drop\"]\n";

fn echo_daemon(extra: &str) -> (TestDaemon, Kmsg) {
    let (d, k) = sources_daemon(&format!("{ECHO_GRANT}{extra}"));
    std::fs::copy(probe_wasm("source_echo"), d.path("probes/source-echo.wasm")).unwrap();
    (d, k)
}

fn payloads(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = d.spool_records().into_iter().map(|r| r.payload).collect();
    v.sort();
    v
}

fn wait_payloads(d: &TestDaemon, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let ok = wait_until(Duration::from_secs(20), || payloads(d) == want);
    assert!(ok, "want {want:?}\ngot  {:?}\n{}", payloads(d), d.log());
}

fn info(d: &TestDaemon, name: &str) -> ProbeInfo {
    let list = probe_list(d);
    list.probes
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} not loaded\n{}", d.log()))
}

fn kernel_log_position(d: &TestDaemon, name: &str) -> String {
    info(d, name)
        .sources
        .into_iter()
        .find(|s| s.source == "kernel-log")
        .map(|s| s.position)
        .unwrap_or_default()
}

#[test]
fn lines_reach_the_probe_in_order_and_a_restart_resumes_after_the_last_batch_handled() {
    let (d, mut k) = echo_daemon("");
    k.lines(["echo one", "unrelated", "echo two"]);
    let mut d = d.spawn();
    wait_payloads(&d, &["one", "two"]);
    d.stop();
    k.lines(["echo three"]);
    let d = d.spawn();
    wait_payloads(&d, &["one", "three", "two"]);
    // The cursor is saved after the batch's records are spooled.
    assert!(
        wait_until(Duration::from_secs(10), || kernel_log_position(
            &d,
            "source-echo"
        )
        .starts_with("handled up to record 3 of boot ")),
        "{}",
        kernel_log_position(&d, "source-echo")
    );
}

#[test]
fn a_kill_in_the_middle_of_a_batch_loses_nothing_and_sends_nothing_twice() {
    let (d, mut k) = echo_daemon("");
    // Batches of at most 4 (the reader may cut them shorter): the one
    // holding `slow` sleeps, and the daemon is killed meanwhile; that
    // batch's records were held, not spooled, and its cursor not moved.
    k.lines(["echo a", "echo b", "echo c", "echo d"]);
    k.lines(["echo e", "echo f", "slow", "echo g"]);
    k.lines(["echo h"]);
    let names = ["a", "b", "c", "d", "e", "f", "", "g", "h"];
    let mut d = d.spawn();
    let first_of_slow = || {
        let log = d.log();
        let at = log.find("slow batch ")?;
        log[at + "slow batch ".len()..]
            .split("..")
            .next()?
            .parse::<usize>()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(20), || first_of_slow().is_some()),
        "{}",
        d.log()
    );
    let before: Vec<&str> = names[..first_of_slow().unwrap()].to_vec();
    assert!(
        wait_until(Duration::from_secs(5), || payloads(&d) == before),
        "the batches before the slow one are spooled, the slow one's held: {:?} vs {before:?}",
        payloads(&d)
    );
    d.kill9();
    let mut d = d.spawn();
    wait_payloads(&d, &["a", "b", "c", "d", "e", "f", "g", "h"]);
    // And a clean restart now hands nothing again.
    d.stop();
    let d = d.spawn();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(payloads(&d).len(), 8, "{:?}", payloads(&d));
}

#[test]
fn a_probe_that_traps_on_every_batch_is_quarantined_with_its_cursor_held() {
    let (d, mut k) = echo_daemon("");
    k.lines(["echo before"]);
    let d = d.spawn();
    wait_payloads(&d, &["before"]);
    // Whether the reader hands these two in one batch or two, the trap
    // comes first: the cursor cannot pass it.
    k.lines(["trap", "echo lost-with-the-trap"]);
    let quarantined = || matches!(info(&d, "source-echo").state, ProbeState::Quarantined(_));
    // Retries back off from 1 s, doubling: five failures take about 15 s.
    assert!(
        wait_until(Duration::from_secs(40), quarantined),
        "{}",
        d.log()
    );
    let i = info(&d, "source-echo");
    assert_eq!(i.stats.traps as usize, QUARANTINE_AFTER, "{:?}", i.stats);
    assert!(
        kernel_log_position(&d, "source-echo").starts_with("handled up to record 0 "),
        "the cursor moved past the failing batch: {}",
        kernel_log_position(&d, "source-echo")
    );
    assert_eq!(payloads(&d), ["before"], "a failed batch's records leaked");
    // The daemon serves on.
    send_raw(
        &d.socket(),
        &telem_core::record::wire::encode_frame(&test_record("native")),
    );
    wait_payloads(&d, &["before", "native"]);
}

#[test]
fn hostile_kernel_log_lines_are_cut_or_counted_and_the_rest_still_flows() {
    let (d, k) = echo_daemon("");
    let d = d.spawn();
    // A 1 MiB line, binary bytes, a record header cut short, continuation
    // lines, a sequence gap of 5, and a last line without its newline.
    let mut huge = b"4,0,1000,-;echo ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    huge.push(b'\n');
    k.raw(&huge);
    k.raw(b"4,1,1001,-;echo bin\xff\xfe\x01ary\n SUBSYSTEM=pci\n DEVICE=+pci:0000\n");
    k.raw(b"4,2,10\n");
    k.raw(b"4,8,1008,-;echo after-gap\n");
    k.raw(b"4,9,1009,-;echo no-newline");
    // Records 2 to 7 never arrived whole: the cut header (2) and the gap
    // (3 to 7), counted once each, in one `skipped` record or in two if
    // the reader handed them over in two batches.
    let skipped_sum = |got: &[String]| -> u64 {
        got.iter()
            .filter_map(|p| p.strip_prefix("skipped ")?.parse::<u64>().ok())
            .sum()
    };
    let ok = wait_until(Duration::from_secs(20), || {
        let got = payloads(&d);
        skipped_sum(&got) == 6 && got.iter().filter(|p| !p.starts_with("skipped ")).count() == 3
    });
    let got = payloads(&d);
    assert!(ok, "{got:?}\n{}", d.log());
    let long = got
        .iter()
        .find(|p| p.starts_with("xxx"))
        .expect("the long line, cut");
    assert!(long.len() < 8192, "{} bytes", long.len());
    assert!(got.contains(&"after-gap".to_string()), "{got:?}");
    assert!(got.contains(&"no-newline".to_string()), "{got:?}");
    assert_eq!(info(&d, "source-echo").stats.source_skipped, 6);
    // `bin\u{fffd}\u{fffd}\u{1}ary` is not printable: refused by the
    // record rules and counted against the probe, which logs it and goes on.
    assert!(d.log().contains("line 1 not recorded"), "{}", d.log());
    assert_eq!(info(&d, "source-echo").stats.records_refused, 1);
}

#[test]
fn a_kernel_log_source_that_vanishes_is_waited_for_and_followed_again() {
    let (d, mut k) = echo_daemon("");
    k.lines(["echo first"]);
    let d = d.spawn();
    wait_payloads(&d, &["first"]);
    std::fs::remove_file(&k.path).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || d.log().contains("vanished")),
        "{}",
        d.log()
    );
    std::fs::write(&k.path, "").unwrap();
    k.lines(["echo second"]);
    wait_payloads(&d, &["first", "second"]);
}

#[test]
fn state_survives_restarts_holds_its_quota_and_is_cleared_by_reset() {
    let (d, mut k) = echo_daemon("state_quota_mib = 1\n");
    // `count` last: however the reader splits them into batches, it
    // counts all three.
    k.lines(["fill 512", "fill 2048", "count"]);
    let mut d = d.spawn();
    wait_payloads(
        &d,
        &[
            "count 3",
            "fill 2048: StateError::QuotaExceeded(1048576)",
            "fill 512: ok",
        ],
    );
    let i = info(&d, "source-echo");
    assert_eq!(i.granted.state_quota_bytes, 1 << 20);
    assert!(
        i.state_bytes > 512 << 10 && i.state_bytes <= 1 << 20,
        "{}",
        i.state_bytes
    );
    let shown = std::process::Command::new(TELEMCTL)
        .args([
            "-f",
            d.config_path.to_str().unwrap(),
            "probe",
            "info",
            "source-echo",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for line in [
        format!("of 1048576 bytes, {} key(s)", i.state_keys),
        "source kernel-log: handled up to record 2 of boot".to_owned(),
        "source files /var/lib/telemd-test/drop *.txt: 0 file(s) handled".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line:?} not in:\n{shown}");
    }
    assert!(
        shown.contains(&format!("{} of 1048576 bytes", i.state_bytes)),
        "{shown}"
    );
    let on_disk = std::fs::metadata(d.path("state/probe-state/source-echo.kv"))
        .unwrap()
        .len();
    assert!(on_disk < (1 << 20) + 4096, "{on_disk} bytes on disk");
    d.stop();
    k.lines(["count"]);
    let d = d.spawn();
    wait_payloads(
        &d,
        &[
            "count 3",
            "count 4",
            "fill 2048: StateError::QuotaExceeded(1048576)",
            "fill 512: ok",
        ],
    );
    let out = std::process::Command::new(TELEMCTL)
        .args([
            "-f",
            d.config_path.to_str().unwrap(),
            "probe",
            "reset",
            "source-echo",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(info(&d, "source-echo").state_bytes, 0);
    k.lines(["count"]);
    wait_payloads(
        &d,
        &[
            "count 1",
            "count 3",
            "count 4",
            "fill 2048: StateError::QuotaExceeded(1048576)",
            "fill 512: ok",
        ],
    );
}

#[test]
fn each_file_is_told_once_across_restarts_and_one_removed_before_its_read_is_reported_gone() {
    let (d, _k) = echo_daemon("");
    let drop = d.path("root/var/lib/telemd-test/drop");
    let write = |name: &str, text: &str, age: u64| {
        let p = drop.join(name);
        std::fs::write(&p, text).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(age);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    write("a.txt", "alpha", 30);
    write("b.txt", "beta", 20);
    write("ignored.log", "not matched", 20);
    let mut d = d.spawn();
    wait_payloads(&d, &["file a.txt: alpha", "file b.txt: beta"]);
    d.stop();
    write("c.txt", "gamma", 10);
    let d = d.spawn();
    wait_payloads(
        &d,
        &["file a.txt: alpha", "file b.txt: beta", "file c.txt: gamma"],
    );
    // The cursor is saved after the batch's records are spooled: wait for
    // it rather than read it between the two.
    let position = || {
        info(&d, "source-echo")
            .sources
            .iter()
            .find(|s| s.source.starts_with("files "))
            .unwrap()
            .position
            .clone()
    };
    wait_until(Duration::from_secs(5), || {
        position() == "3 file(s) handled and still there"
    });
    assert_eq!(position(), "3 file(s) handled and still there");
    // Three more, told in two calls (the probe takes two at a time),
    // oldest first: the first call sleeps on `f.txt`, and `h.txt`, waiting
    // for the second call, is removed meanwhile. The probe is told of a
    // file it can no longer read, says so, and nothing fails.
    write("f.txt", "slow", 9);
    write("g.txt", "gee", 8);
    write("h.txt", "aitch", 7);
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("slow file f.txt")),
        "{}",
        d.log()
    );
    std::fs::remove_file(drop.join("h.txt")).unwrap();
    let ok = wait_until(Duration::from_secs(20), || {
        payloads(&d).iter().any(|p| p.starts_with("gone h.txt: "))
    });
    assert!(ok, "{:?}\n{}", payloads(&d), d.log());
    assert!(payloads(&d).contains(&"file f.txt: slow".to_string()));
    assert!(payloads(&d).contains(&"file g.txt: gee".to_string()));
    assert_eq!(info(&d, "source-echo").stats.failures_in_a_row, 0);
}

#[test]
fn a_files_source_swapped_for_a_link_into_the_daemons_state_shows_nothing() {
    let (d, _k) = echo_daemon("");
    let drop = d.path("root/var/lib/telemd-test/drop");
    std::fs::remove_dir(&drop).unwrap();
    std::fs::create_dir_all(d.path("state")).unwrap();
    std::fs::write(d.path("state/secret.txt"), "the daemon's").unwrap();
    std::os::unix::fs::symlink(d.path("state"), &drop).unwrap();
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("not scanned: it resolves to")),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(payloads(&d).is_empty(), "{:?}", payloads(&d));
}

#[test]
fn a_component_built_against_contract_0_1_loads_and_sends_unchanged() {
    let (d, _k) = sources_daemon("");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/probes/hello-contract-0.1.0.wasm");
    std::fs::copy(fixture, d.path("probes/hello.wasm")).unwrap();
    let d = d.spawn();
    let recs = d.wait_spool(1);
    assert_eq!(
        recs[0].headers.get(Header::Classification),
        "org.clearlinux/hello/world"
    );
    assert_eq!(recs[0].payload, "hello");
    run_probe(&d, "hello", &[]).unwrap();
    d.wait_spool(2);
    assert!(info(&d, "hello").sources.is_empty());
}

/// 0.2.1 added an interface (`debuginfo`) and changed none: a component
/// built against 0.2.0 (the hello probe, built before it) is linked to
/// the 0.2.1 host's interfaces by their semver-compatible versions, loads
/// and sends unchanged.
#[test]
fn a_component_built_against_contract_0_2_0_loads_on_0_2_1() {
    let (d, _k) = sources_daemon("");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/probes/hello-contract-0.2.0.wasm");
    let bytes = std::fs::read(&fixture).unwrap();
    let imports = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        imports(b"telemetrics:probe/records@0.2.0"),
        "built against 0.2.0"
    );
    assert!(!imports(b"debuginfo"), "before 0.2.1");
    std::fs::copy(&fixture, d.path("probes/hello.wasm")).unwrap();
    let d = d.spawn();
    let recs = d.wait_spool(1);
    assert_eq!(
        recs[0].headers.get(Header::Classification),
        "org.clearlinux/hello/world"
    );
    run_probe(&d, "hello", &[]).unwrap();
    d.wait_spool(2);
}

/// The contract-bump checklist (ARCHITECTURE.md, "A contract version"),
/// as far as files can tell: every frozen contract has its host bindings
/// and a component built against it that a test loads (the one above for
/// 0.1.0; a new frozen version adds its own beside it).
#[test]
fn every_frozen_contract_has_its_bindings_and_a_fixture_component() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bindings = std::fs::read_to_string(root.join("host/sandbox/src/bindings.rs")).unwrap();
    let tests = std::fs::read_to_string(root.join("tests/sources.rs")).unwrap();
    let mut versions = Vec::new();
    for e in std::fs::read_dir(root.join("wit/frozen")).unwrap() {
        let v = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            root.join(format!("wit/frozen/{v}/probe.wit")).is_file(),
            "wit/frozen/{v} has no probe.wit"
        );
        assert!(
            bindings.contains(&format!("\"../../wit/frozen/{v}\"")),
            "no host bindings for the frozen contract {v} in host/sandbox/src/bindings.rs"
        );
        let fixture = format!("fixtures/probes/hello-contract-{v}.wasm");
        assert!(
            root.join("tests").join(&fixture).is_file() && tests.contains(&fixture),
            "no fixture component tests/{fixture} loaded by a test"
        );
        versions.push(v);
    }
    assert!(!versions.is_empty(), "wit/frozen holds no contract");
    // Every accepted minor is the current contract or a frozen one.
    let lib = std::fs::read_to_string(root.join("host/sandbox/src/lib.rs")).unwrap();
    let current = std::fs::read_to_string(root.join("wit/probe.wit")).unwrap();
    let minors = lib
        .split_once("ACCEPTED_MINORS")
        .and_then(|(_, rest)| rest.split_once("= ["))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.to_owned())
        .expect("ACCEPTED_MINORS in host/sandbox/src/lib.rs");
    for minor in minors.split(',').map(|m| m.trim().trim_matches('"')) {
        let is_current = current.contains(&format!("package telemetrics:probe@{minor}."));
        let frozen = versions.iter().any(|v| v.starts_with(&format!("{minor}.")));
        assert!(
            is_current || frozen,
            "accepted minor {minor} is neither wit/probe.wit nor under wit/frozen"
        );
    }
}

/// The body of a fixture (after its `# ---` header).
fn body(text: &str) -> Vec<&str> {
    let mut lines = text.lines();
    for l in lines.by_ref() {
        if l == "# ---" {
            break;
        }
    }
    lines.collect()
}

/// The spooled records as (classification, severity, payload), sorted:
/// what an `.expected` file lists.
/// Ends any open report with a quiet gap and an unrelated line, then
/// waits until `probe` has handled every line written so far.
fn end_and_wait_handled(d: &TestDaemon, k: &mut Kmsg, probe: &str) {
    k.pause(10);
    k.lines(["telemd-test: end"]);
    let last = k.seq - 1;
    assert!(
        wait_until(Duration::from_secs(20), || kernel_log_position(d, probe)
            .starts_with(&format!("handled up to record {last} "))),
        "{}\n{}",
        kernel_log_position(d, probe),
        d.log()
    );
}

fn spooled_records(d: &TestDaemon) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = d
        .spool_records()
        .into_iter()
        .map(|r| {
            (
                r.headers.get(Header::Classification).to_owned(),
                r.headers.get(Header::Severity).to_owned(),
                r.payload,
            )
        })
        .collect();
    v.sort();
    v
}

/// Records of an `.expected` file: (classification, severity, payload).
fn expected(text: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(head) = line.strip_prefix("=== ") {
            let (c, s) = head.trim_end().rsplit_once(' ').unwrap();
            out.push((c.to_owned(), s.to_owned(), String::new()));
        } else {
            out.last_mut().unwrap().2.push_str(line);
        }
    }
    out
}

#[test]
fn kernel_oops_turns_each_real_report_into_exactly_its_expected_record() {
    let (d, mut k) = sources_daemon("");
    std::fs::copy(probe_wasm("kernel_oops"), d.path("probes/kernel-oops.wasm")).unwrap();
    let d = d.spawn();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel-log");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    assert!(names.len() >= 13);
    let mut all = Vec::new();
    for path in &names {
        let text = std::fs::read_to_string(path).unwrap();
        let want = expected(&std::fs::read_to_string(path.with_extension("expected")).unwrap());
        k.lines(body(&text));
        // A quiet gap, then an unrelated line: the last report is over.
        k.pause(10);
        k.lines(["telemd-test: end of fixture"]);
        let last = k.seq - 1;
        assert!(
            wait_until(Duration::from_secs(20), || kernel_log_position(
                &d,
                "kernel-oops"
            )
            .starts_with(&format!("handled up to record {last} "))),
            "{}: {}\n{}",
            path.display(),
            kernel_log_position(&d, "kernel-oops"),
            d.log()
        );
        all.extend(want);
        let got = spooled_records(&d);
        let mut want_all = all.clone();
        want_all.sort();
        assert_eq!(got, want_all, "after {}", path.display());
        // Each fixture stands alone: repeats of an earlier one are not
        // counted against it.
        act(
            &d,
            &Request::Reset {
                probe: "kernel-oops".into(),
            },
        )
        .unwrap();
    }
    let i = info(&d, "kernel-oops");
    assert_eq!(i.stats.records_refused, 0, "{:?}", i.stats);
    // Each record counted once, when spooled (not also when its batch held it).
    assert_eq!(i.stats.records_sent as usize, all.len(), "{:?}", i.stats);
    // Every line read was handled: nothing waits (the metrics' source lag).
    let kernel_log = i
        .sources
        .iter()
        .find(|s| s.source == "kernel-log")
        .expect("the kernel-log source");
    assert_eq!(kernel_log.waiting, Some(0), "{kernel_log:?}");
}

#[test]
fn kernel_oops_counts_repeats_of_a_warning_instead_of_sending_them() {
    let (d, mut k) = sources_daemon("");
    std::fs::copy(probe_wasm("kernel_oops"), d.path("probes/kernel-oops.wasm")).unwrap();
    let d = d.spawn();
    let warning = |cpu: u32| {
        vec![
            "------------[ cut here ]------------".to_owned(),
            format!("WARNING: CPU: {cpu} PID: 1{cpu} at net/core/dev.c:3244 skb_warn_bad_offload+0x7a/0x110"),
            format!("CPU: {cpu} PID: 1{cpu} Comm: ksoftirqd Not tainted 6.1.0 #1"),
            "Call Trace:".to_owned(),
            " <TASK>".to_owned(),
            " __skb_gso_segment+0x10a/0x180".to_owned(),
            " </TASK>".to_owned(),
            "---[ end trace 0000000000000000 ]---".to_owned(),
        ]
    };
    for cpu in 0..5 {
        let lines = warning(cpu);
        k.lines(lines.iter().map(String::as_str));
    }
    k.pause(10);
    k.lines(["telemd-test: end"]);
    let last = k.seq - 1;
    assert!(wait_until(Duration::from_secs(20), || kernel_log_position(
        &d,
        "kernel-oops"
    )
    .starts_with(&format!("handled up to record {last} "))));
    let recs = d.spool_records();
    assert_eq!(
        recs.len(),
        1,
        "{:?}",
        recs.iter().map(|r| &r.payload).collect::<Vec<_>>()
    );
    assert!(
        recs[0].payload.contains("#1 __skb_gso_segment - [kernel]"),
        "{}",
        recs[0].payload
    );
    // The counts live in the probe's state until their window closes.
    assert!(info(&d, "kernel-oops").state_keys >= 1);
}

/// A real report's lines as the kernel writes them into a pstore dump:
/// `<4>[  100.000100] text`, split into parts of at most `part_size` bytes
/// (the kernel uses its backend's record size, 1 KiB for EFI), part 1
/// holding the newest lines, each part headed `Panic#1 PartN`. Returns the
/// parts, part 1 first.
fn pstore_parts(fixture_name: &str, reason: &str, part_size: usize) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel-log");
    let text = std::fs::read_to_string(dir.join(fixture_name)).unwrap();
    let lines: Vec<String> = body(&text)
        .iter()
        .enumerate()
        .map(|(i, l)| format!("<4>[  100.{:06}] {l}\n", i * 100))
        .collect();
    let mut chunks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in lines.iter().rev() {
        if cur.len() + l.len() > part_size && !cur.is_empty() {
            chunks.push(std::mem::take(&mut cur));
        }
        cur.insert_str(0, l);
    }
    chunks.push(cur);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| format!("{reason}#1 Part{}\n{c}", i + 1))
        .collect()
}

fn expected_of(fixture_name: &str) -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel-log");
    expected(&std::fs::read_to_string(dir.join(fixture_name).with_extension("expected")).unwrap())
}

/// A real dump pasted as its parts (`tests/fixtures/pstore/`): (part
/// number, text with its `Panic#1 PartN` header).
fn real_dump_parts(fixture_name: &str) -> Vec<(u32, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pstore");
    let text = std::fs::read_to_string(dir.join(fixture_name)).unwrap();
    let mut out: Vec<(u32, String)> = Vec::new();
    for l in body(&text) {
        if let Some(n) = l.split_once("#1 Part").and_then(|(_, n)| n.parse().ok()) {
            out.push((n, String::new()));
        }
        let part = &mut out.last_mut().unwrap().1;
        part.push_str(l);
        part.push('\n');
    }
    out
}

fn pstore_expected(fixture_name: &str) -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pstore");
    expected(&std::fs::read_to_string(dir.join(fixture_name).with_extension("expected")).unwrap())
}

#[test]
fn pstore_reports_each_dump_once_whichever_layout_and_across_restarts() {
    let (d, _k) = sources_daemon("");
    std::fs::copy(probe_wasm("pstore"), d.path("probes/pstore.wasm")).unwrap();
    let root = d.path("root");
    // systemd-pstore 253+: a real 18-part EFI panic dump under
    // <seconds>/<count>/, with the dmesg.txt it joins, oldest part first,
    // headers kept.
    let panic = real_dump_parts("01-efi-ath11k-panic-multipart.txt");
    assert_eq!(panic.len(), 18);
    let archive = root.join("var/lib/systemd/pstore/1674425560/001");
    std::fs::create_dir_all(&archive).unwrap();
    let mut joined = String::new();
    for (n, part) in panic.iter().rev() {
        std::fs::write(
            archive.join(format!("dmesg-efi_pstore-1674425560{n:02}001")),
            part,
        )
        .unwrap();
        joined.push_str(part);
    }
    std::fs::write(archive.join("dmesg.txt"), &joined).unwrap();
    // A real ramoops dump, moved flat by systemd-pstore.
    let ramoops = real_dump_parts("02-ramoops-kernelsu-oops-single.txt");
    assert_eq!(ramoops.len(), 1);
    std::fs::write(
        root.join("var/lib/systemd/pstore/dmesg-ramoops-0"),
        &ramoops[0].1,
    )
    .unwrap();
    // No systemd-pstore run yet for this one: the kernel's own files, a
    // real stack overflow split as the kernel splits a dump; and the panic
    // above again, as the kernel still shows it (systemd-pstore's
    // Unlink=no): one dump, one report.
    let kernel = root.join("sys/fs/pstore");
    std::fs::create_dir_all(&kernel).unwrap();
    for (i, part) in pstore_parts("12-stack-guard-page-overflow.txt", "Oops", 1024)
        .iter()
        .enumerate()
    {
        std::fs::write(
            kernel.join(format!("dmesg-efi-1666922861{:02}001", i + 1)),
            part,
        )
        .unwrap();
    }
    for (n, part) in &panic {
        std::fs::write(
            kernel.join(format!("dmesg-efi_pstore-1674425560{n:02}001")),
            part,
        )
        .unwrap();
    }
    let mut want = pstore_expected("01-efi-ath11k-panic-multipart.txt");
    want.extend(pstore_expected("02-ramoops-kernelsu-oops-single.txt"));
    want.extend(expected_of("12-stack-guard-page-overflow.txt"));
    want.sort();
    let got = spooled_records;
    let mut d = d.spawn();
    let ok = wait_until(Duration::from_secs(20), || got(&d).len() >= want.len());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(ok, "{:#?}\n{}", got(&d), d.log());
    assert_eq!(got(&d), want);
    d.stop();
    let d = d.spawn();
    assert!(wait_until(Duration::from_secs(10), || !info(&d, "pstore")
        .sources
        .is_empty()));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(got(&d), want, "reported again after a restart");
}

/// `/dev/kmsg` hands a backslash as `\x5c` (and line breaks and other
/// unprintable bytes as `\xHH`); the record carries the message as the
/// kernel wrote it. The line is fwupd/fwupd#70's
/// (https://github.com/fwupd/fwupd/issues/70), as /dev/kmsg escapes it.
#[test]
fn kernel_oops_decodes_the_escapes_of_dev_kmsg() {
    let (d, mut k) = sources_daemon("");
    std::fs::copy(probe_wasm("kernel_oops"), d.path("probes/kernel-oops.wasm")).unwrap();
    let d = d.spawn();
    k.lines([
        r"ACPI Error: [\x5c_SB_.PCI0.LPCB.H_EC.ECWT] Namespace lookup failure, AE_NOT_FOUND (20150930/psargs-359)",
    ]);
    end_and_wait_handled(&d, &mut k, "kernel-oops");
    let got = spooled_records(&d);
    assert_eq!(
        got,
        [(
            "org.clearlinux/kernel/warning".to_owned(),
            "2".to_owned(),
            "Crash Report:\nReason: ACPI Error: [\\_SB_.PCI0.LPCB.H_EC.ECWT] Namespace lookup failure, AE_NOT_FOUND (20150930/psargs-359)\n\
             Signature : line1:a841fcb600101cdc\n"
                .to_owned()
        )]
    );
}

#[test]
fn kernel_oops_over_its_hourly_budget_drops_records_but_keeps_reading() {
    let (d, mut k) = sources_daemon("[probes.kernel-oops]\nmax_records_per_hour = 2\n");
    std::fs::copy(probe_wasm("kernel_oops"), d.path("probes/kernel-oops.wasm")).unwrap();
    let d = d.spawn();
    for name in ["alpha", "beta", "gamma", "delta", "epsilon"] {
        k.lines([
            format!("WARNING: CPU: 0 PID: 1 at drivers/x/x.c:1 {name}_probe+0x1/0x2").as_str(),
            "---[ end trace 0000000000000000 ]---",
        ]);
    }
    end_and_wait_handled(&d, &mut k, "kernel-oops");
    let i = info(&d, "kernel-oops");
    assert_eq!(i.state, ProbeState::Running);
    assert_eq!(d.spool_records().len(), 2);
    assert_eq!(i.stats.records_refused, 3, "{:?}", i.stats);
    assert_eq!(i.stats.records_sent, 2, "{:?}", i.stats);
}

/// The host's own limits are not a probe's failure, but the per-batch
/// record cap is the probe's doing: a probe that overfills its batch and
/// fails (the same batch again and again) is quarantined as any failing
/// probe is, not exempted as if the host had refused it.
#[test]
fn a_probe_overfilling_its_batch_is_still_quarantined() {
    let (d, mut k) = echo_daemon("");
    let d = d.spawn();
    k.lines(["overfill 300"]);
    let quarantined = || matches!(info(&d, "source-echo").state, ProbeState::Quarantined(_));
    // Retries back off from 1 s, doubling: five failures take about 15 s.
    assert!(
        wait_until(Duration::from_secs(40), quarantined),
        "{:?}\n{}",
        info(&d, "source-echo").stats,
        d.log()
    );
    assert!(
        d.log().contains("at most 256 records per batch"),
        "{}",
        d.log()
    );
    assert!(payloads(&d).is_empty(), "a failed batch's records leaked");
}

/// A probe whose `files` sources share a directory that does not exist
/// says so once for the directory, not once per source: pstore watches
/// /var/lib/systemd/pstore with three patterns.
#[test]
fn a_missing_source_directory_is_said_once() {
    let (d, _k) = sources_daemon("");
    std::fs::copy(probe_wasm("pstore"), d.path("probes/pstore.wasm")).unwrap();
    let d = d.spawn();
    let said = |dir: &str| {
        d.log()
            .lines()
            .filter(|l| l.contains(&format!("{dir} does not exist (yet)")))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || said("var/lib/systemd/pstore")
            > 0
            && said("sys/fs/pstore") > 0),
        "{}",
        d.log()
    );
    // Every source of the directory has looked by now, some twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(said("var/lib/systemd/pstore"), 1, "{}", d.log());
    assert_eq!(said("sys/fs/pstore"), 1, "{}", d.log());
}
