//! End-to-end: the journal source and the `journal-errors` probe in a
//! running `telemd`, on real journal files made by
//! `systemd-journal-remote` from export-format entries written here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use telem_core::control::{ProbeInfo, ProbeState};
use telem_core::record::Header;

const REMOTE: &str = "/lib/systemd/systemd-journal-remote";

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "")
}

const EARLIER_BOOT: &str = "0123456789abcdef0123456789abcdef";

/// One entry in the journal export format.
fn entry(boot: &str, usec: u64, fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!(
        "__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot}\n_MACHINE_ID=2222222222222222222222222222222b\n_HOSTNAME=testhost\n",
        usec % 1_000_000_000
    )
    .into_bytes();
    for (k, v) in fields {
        if v.iter()
            .all(|b| *b != b'\n' && b.is_ascii() && !b.is_ascii_control())
        {
            out.extend_from_slice(format!("{k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        } else {
            out.extend_from_slice(format!("{k}\n").as_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

fn failed(boot: &str, usec: u64, unit: &str) -> Vec<u8> {
    let msg = format!("{unit}: Main process exited, code=exited, status=1/FAILURE");
    entry(
        boot,
        usec,
        &[
            ("MESSAGE", msg.as_bytes()),
            ("UNIT", unit.as_bytes()),
            ("_SYSTEMD_UNIT", b"init.scope"),
            ("EXIT_CODE", b"exited"),
            ("EXIT_STATUS", b"1"),
            ("PRIORITY", b"5"),
            ("SYSLOG_IDENTIFIER", b"systemd"),
            ("_PID", b"1"),
        ],
    )
}

fn plain(boot: &str, usec: u64, priority: &str, msg: &str) -> Vec<u8> {
    entry(
        boot,
        usec,
        &[
            ("MESSAGE", msg.as_bytes()),
            ("PRIORITY", priority.as_bytes()),
            ("SYSLOG_IDENTIFIER", b"app"),
            ("_SYSTEMD_UNIT", b"app.service"),
        ],
    )
}

/// Turns export-format entries into a real journal file `dir/NAME.journal`.
fn write_journal(dir: &Path, name: &str, entries: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).unwrap();
    let export = dir.with_extension(format!("{name}.export"));
    std::fs::write(&export, entries.concat()).unwrap();
    // Written beside, then moved in whole: a reader never sees half.
    let tmp = dir.with_extension(format!("{name}.journal"));
    let _ = std::fs::remove_file(&tmp);
    let out = std::process::Command::new(REMOTE)
        .arg(format!("--output={}", tmp.display()))
        .arg(&export)
        .output()
        .expect("systemd-journal-remote (the test command installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, dir.join(format!("{name}.journal"))).unwrap();
}

fn journal_daemon(extra: &str) -> (TestDaemon, PathBuf) {
    let d = TestDaemon::prepare(&format!("{HOLD}probe_scan_interval_ms = 200\n{extra}\n"));
    let dir = d.path("journal-src");
    let cfg = std::fs::read_to_string(&d.config_path).unwrap();
    let cfg = format!(
        "journal_source_dir = \"{}\"\nno_privacy_filters_file = \"{}\"\n{cfg}",
        dir.display(),
        d.path("no-privacy-filters").display()
    );
    std::fs::write(&d.config_path, cfg).unwrap();
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(
        probe_wasm("journal_errors"),
        d.path("probes/journal-errors.wasm"),
    )
    .unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    (d, dir)
}

fn payloads(d: &TestDaemon) -> Vec<String> {
    let mut v: Vec<String> = d.spool_records().into_iter().map(|r| r.payload).collect();
    v.sort();
    v
}

fn info(d: &TestDaemon) -> ProbeInfo {
    probe_list(d)
        .probes
        .into_iter()
        .find(|p| p.name == "journal-errors")
        .unwrap_or_else(|| panic!("not loaded\n{}", d.log()))
}

fn failure_payload(unit: &str) -> String {
    format!("{unit}: Main process exited, code=exited, status=1/FAILURE\nUnit: {unit}\n")
}

fn wait_payloads(d: &TestDaemon, want: &[String], limit: Duration) {
    let mut want = want.to_vec();
    want.sort();
    let ok = wait_until(limit, || payloads(d) == want);
    assert!(ok, "want {want:?}\ngot  {:?}\n{}", payloads(d), d.log());
}

const T0: u64 = 1_764_000_000_000_000;

#[test]
fn failed_units_of_this_boot_are_reported_and_nothing_else() {
    let (d, dir) = journal_daemon("");
    let boot = this_boot();
    write_journal(
        &dir,
        "a",
        &[
            // An earlier boot, written (as they are) before this one.
            failed(EARLIER_BOOT, T0 - 3_600_000_000, "earlier.service"),
            plain(&boot, T0, "6", "an ordinary message"),
            failed(&boot, T0 + 1, "foo.service"),
            plain(
                &boot,
                T0 + 2,
                "3",
                "an error, reported only without privacy filters",
            ),
            // Any process may log EXIT_CODE and UNIT: only systemd's count.
            entry(
                &boot,
                T0 + 3,
                &[
                    (
                        "MESSAGE",
                        b"sshd.service: Main process exited, code=exited, status=1/FAILURE",
                    ),
                    ("UNIT", b"sshd.service"),
                    ("EXIT_CODE", b"exited"),
                    ("_PID", b"4242"),
                ],
            ),
        ],
    );
    let d = d.spawn();
    wait_payloads(
        &d,
        &[failure_payload("foo.service")],
        Duration::from_secs(20),
    );
    let r = &d.spool_records()[0];
    assert_eq!(
        r.headers.get(Header::Classification),
        "org.clearlinux/journal/error"
    );
    assert_eq!(r.headers.get(Header::Severity), "2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(payloads(&d).len(), 1, "{:?}", payloads(&d));
}

#[test]
fn with_the_privacy_filters_off_errors_of_priority_0_to_3_are_reported_too() {
    let (d, dir) = journal_daemon("");
    std::fs::write(d.path("no-privacy-filters"), "").unwrap();
    let boot = this_boot();
    write_journal(
        &dir,
        "a",
        &[
            plain(&boot, T0, "6", "an ordinary message"),
            plain(&boot, T0 + 1, "3", "disk on fire"),
            plain(&boot, T0 + 2, "0", "emergency"),
            failed(&boot, T0 + 3, "foo.service"),
        ],
    );
    let d = d.spawn();
    wait_payloads(
        &d,
        &[
            "disk on fire\nUnit: app.service\n".into(),
            "emergency\nUnit: app.service\n".into(),
            failure_payload("foo.service"),
        ],
        Duration::from_secs(20),
    );
}

#[test]
fn entries_written_while_running_are_reported_within_2s_and_a_restart_repeats_nothing() {
    let (d, dir) = journal_daemon("");
    let boot = this_boot();
    write_journal(&dir, "a", &[failed(&boot, T0, "first.service")]);
    let mut d = d.spawn();
    wait_payloads(
        &d,
        &[failure_payload("first.service")],
        Duration::from_secs(20),
    );
    write_journal(&dir, "b", &[failed(&boot, T0 + 10, "second.service")]);
    wait_payloads(
        &d,
        &[
            failure_payload("first.service"),
            failure_payload("second.service"),
        ],
        Duration::from_secs(2),
    );
    d.stop();
    write_journal(&dir, "c", &[failed(&boot, T0 + 20, "third.service")]);
    let d = d.spawn();
    wait_payloads(
        &d,
        &[
            failure_payload("first.service"),
            failure_payload("second.service"),
            failure_payload("third.service"),
        ],
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(payloads(&d).len(), 3, "{:?}", payloads(&d));
}

#[test]
fn a_flood_of_one_unit_is_a_few_records_with_a_count_and_others_still_flow() {
    let (d, dir) = journal_daemon("");
    let boot = this_boot();
    let mut entries: Vec<Vec<u8>> = (0..10_000)
        .map(|i| failed(&boot, T0 + i * 10, "loop.service"))
        .collect();
    // Past the window: the flood's count goes out.
    entries.push(failed(&boot, T0 + 700_000_000, "later.service"));
    write_journal(&dir, "flood", &entries);
    let d = d.spawn();
    let mut want: Vec<String> = vec![failure_payload("loop.service"); 3];
    want.push("9997 more message(s) within 600 s of the first\nUnit: loop.service\n".into());
    want.push(failure_payload("later.service"));
    wait_payloads(&d, &want, Duration::from_secs(60));
    send_raw(
        &d.socket(),
        &telem_core::record::wire::encode_frame(&test_record("native")),
    );
    want.push("native".into());
    wait_payloads(&d, &want, Duration::from_secs(10));
    assert_eq!(info(&d).state, ProbeState::Running);
}

#[test]
fn hostile_entries_a_damaged_file_and_a_missing_directory() {
    let (d, dir) = journal_daemon("");
    let boot = this_boot();
    // The directory does not exist yet: one clear line, the daemon serves.
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("journal source: ")
            && d.log().contains("journal-src")),
        "{}",
        d.log()
    );
    send_raw(
        &d.socket(),
        &telem_core::record::wire::encode_frame(&test_record("native")),
    );
    wait_payloads(&d, &["native".into()], Duration::from_secs(10));
    let huge = format!("huge.service: {}", "x".repeat(1 << 20));
    write_journal(
        &dir,
        "good",
        &[
            entry(
                &boot,
                T0,
                &[
                    ("MESSAGE", huge.as_bytes()),
                    ("UNIT", b"huge.service"),
                    ("EXIT_CODE", b"exited"),
                    ("_PID", b"1"),
                ],
            ),
            entry(
                &boot,
                T0 + 1,
                &[
                    ("MESSAGE", b"bin\x00\xff\xfeary exit"),
                    ("UNIT", b"bin.service"),
                    ("EXIT_CODE", b"exited"),
                    ("_PID", b"1"),
                ],
            ),
        ],
    );
    // A damaged journal file beside the good one.
    let mut junk = std::fs::read(dir.join("good.journal")).unwrap();
    for b in junk.iter_mut().skip(64).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(dir.join("damaged.journal"), junk).unwrap();
    let ok = wait_until(Duration::from_secs(30), || payloads(&d).len() == 3);
    let got = payloads(&d);
    assert!(
        ok,
        "{:?}\n{}",
        got.iter()
            .map(|p| &p[..p.len().min(80)])
            .collect::<Vec<_>>(),
        d.log()
    );
    let long = got
        .iter()
        .find(|p| p.starts_with("huge.service: xxx"))
        .unwrap();
    assert!(
        long.len() <= 8192 && long.ends_with("\nUnit: huge.service\n"),
        "{}",
        long.len()
    );
    assert!(
        got.contains(&"bin???ary exit\nUnit: bin.service\n".to_string()),
        "{got:?}"
    );
}

/// A journal file cut in the middle (a disk that filled, a crash during a
/// copy) is skipped whole by journalctl, which says so on its stderr: the
/// warning reaches the log once, however often journalctl starts again,
/// and `telemctl probe info` shows it with the source; the good file's
/// entries still flow.
#[test]
fn a_truncated_journal_file_is_said_in_the_log_and_in_probe_info() {
    let (d, dir) = journal_daemon("");
    let boot = this_boot();
    write_journal(&dir, "good", &[failed(&boot, T0, "foo.service")]);
    write_journal(
        &dir,
        "cut",
        &(0..200)
            .map(|i| plain(&boot, T0 + 10 + i, "6", "an ordinary message"))
            .collect::<Vec<_>>(),
    );
    let cut = dir.join("cut.journal");
    let len = std::fs::metadata(&cut).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let d = d.spawn();
    wait_payloads(
        &d,
        &[failure_payload("foo.service")],
        Duration::from_secs(20),
    );
    let said = format!(
        "Journal file {} is truncated, ignoring file.",
        cut.display()
    );
    // The warning's own log line (a line saying why journalctl stopped may
    // quote it too).
    let logged = format!("journal source: journalctl: {said}");
    assert!(
        wait_until(Duration::from_secs(10), || info(&d)
            .sources
            .iter()
            .any(|s| s.source == "journal" && s.warnings.contains(&said))),
        "{:?}\n{}",
        info(&d).sources,
        d.log()
    );
    assert_eq!(d.log().matches(&logged).count(), 1, "{}", d.log());
    // journalctl stops (killed here) and is started again, and says the
    // same again: the log does not.
    let journalctl = || -> Option<i32> {
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (cmd.starts_with("journalctl\0") || cmd.contains("/journalctl\0"))
                .then_some(())
                .filter(|()| cmd.contains(&*dir.to_string_lossy()))
                .map(|()| pid)
        })
    };
    let first = journalctl().expect("journalctl runs for the source");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || journalctl()
            .is_some_and(|p| p != first)
            && d.log().contains("journalctl stopped")),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(d.log().matches(&logged).count(), 1, "{}", d.log());
    let out = telemctl(&d, &["probe", "info", "journal-errors"]);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&format!("    warning: {said}")), "{out}");
}
