//! End-to-end: `telemctl` against a running `telemd` (dev-mode paths, no root).

use std::process::Command;
use std::time::Duration;

use support::*;

use support::TELEMCTL;
use telem_core::control::Status;
use telem_core::journal::{JournalEntry, Outcome};

fn ctl(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let out = telemctl(d, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(d: &TestDaemon, args: &[&str]) -> String {
    let (code, out, err) = ctl(d, args);
    assert_eq!(code, 0, "telemctl {args:?} failed: {err}");
    out
}

#[test]
fn probes_and_journal_through_telemctl() {
    let d = TestDaemon::prepare("probe_scan_interval_ms = 200\nrecord_retention_enabled = true\n");
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    let d = d.spawn();
    let journal_lines = |args: &[&str]| {
        let mut a = vec!["journal"];
        a.extend_from_slice(args);
        ok(&d, &a).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || journal_lines(&[]).len() == 1),
        "{}",
        d.log()
    );

    let list = ok(&d, &["probe", "list"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.lines().nth(1).unwrap().starts_with("hello") && list.contains("running"),
        "{list}"
    );
    let info = ok(&d, &["probe", "info", "hello"]);
    assert!(
        info.contains("requested")
            && info.contains("granted")
            && info.contains("org.clearlinux/hello/world"),
        "{info}"
    );
    assert!(ok(&d, &["probe", "run", "hello"]).contains("ran successfully"));
    assert!(
        wait_until(Duration::from_secs(10), || journal_lines(&[]).len() == 2),
        "{}",
        d.log()
    );
    let (code, _, err) = ctl(&d, &["probe", "run", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no probe named nope"), "{err}");

    // Journal columns and each filter.
    let all = journal_lines(&["-V"]);
    assert!(
        all[0].starts_with("Classification")
            && all[0].contains("Record ID")
            && all[0].contains("Boot ID"),
        "{all:?}"
    );
    assert_eq!(all.last().unwrap(), "Total records: 2");
    let entries =
        telem_core::journal::query_dir(&d.path("journal"), 100, &Default::default()).unwrap();
    assert_eq!(
        journal_lines(&["-c", "org.clearlinux/hello/world"]).len(),
        2
    );
    assert_eq!(journal_lines(&["-c", "org.example/none/x"]).len(), 0);
    assert_eq!(journal_lines(&["-r", &entries[0].record_id]).len(), 1);
    assert_eq!(journal_lines(&["-e", &entries[1].event_id]).len(), 1);
    assert_eq!(journal_lines(&["-b", &entries[0].boot_id]).len(), 2);
    assert_eq!(journal_lines(&["-b", "0000"]).len(), 0);
    let with_payload = journal_lines(&["-i", "-r", &entries[0].record_id]);
    assert_eq!(with_payload[1], "hello", "{with_payload:?}");
    let out = ok(&d, &["--json", "journal"]);
    let v: Vec<JournalEntry> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json journal: {e}\n{out}"));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].outcome, Outcome::Delivered);
    // Reload re-arms on-start: hello runs again.
    assert!(ok(&d, &["probe", "reload"]).contains("1 probe(s)"));
    assert!(
        wait_until(Duration::from_secs(10), || journal_lines(&[]).len() == 3),
        "{}",
        d.log()
    );
}

#[test]
fn spool_list_opt_in_out_and_daemon_down() {
    let mut d = TestDaemon::start(HOLD);
    for i in 0..2 {
        telem_core::native_client::send_record(
            &d.socket(),
            &test_record(&format!("held {i}")),
            Duration::from_secs(2),
        )
        .unwrap();
    }
    d.wait_spool(2);
    let out = ok(&d, &["spool", "list"]);
    assert!(out.starts_with("RECORD ID"), "{out}");
    assert_eq!(out.matches("org.example/test/vec").count(), 2, "{out}");
    assert!(out.contains("2 record(s)"), "{out}");

    assert!(ok(&d, &["opt-out"]).contains("disabled"));
    assert!(!d.path("opt-in").exists());
    assert!(ok(&d, &["opt-in"]).contains("enabled"));
    assert!(d.path("opt-in").exists());

    d.stop();
    let (code, _, err) = ctl(&d, &["probe", "list"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("telemd is not running"), "{err}");
}

#[test]
fn config_check_good_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(
        &good,
        "[settings]\nserver=http://localhost/v2/collector\nspool_process_time=30\n",
    )
    .unwrap();
    let out = Command::new(TELEMCTL)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(legacy INI): valid") && stdout.contains("spool_process_time = 120"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("120..300"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "spool_dir = \"/x\"\nbyte_window_length = 99\n").unwrap();
    let out = Command::new(TELEMCTL)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2:") && err.contains("byte_window_length") && err.contains("0..59"),
        "{err}"
    );

    let out = Command::new(TELEMCTL)
        .args(["config", "migrate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let toml_text = String::from_utf8_lossy(&out.stdout);
    let migrated = dir.path().join("migrated.toml");
    std::fs::write(&migrated, toml_text.as_bytes()).unwrap();
    let c = telem_core::config::Config::load_file(telem_core::config::Config::default(), &migrated)
        .unwrap();
    assert_eq!(c.delivery.server, "http://localhost/v2/collector");
    assert_eq!(c.delivery.spool_process_time, 120);
}

#[test]
fn status_flush_enable_disable() {
    use support::collector::{Collector, Mode};
    let c = Collector::start(Mode::Drop);
    let d = TestDaemon::prepare(&format!(
        "server = \"{}\"\nprobe_scan_interval_ms = 200\n",
        c.url()
    ));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    let mut d = d.spawn();
    for i in 0..3 {
        telem_core::native_client::send_record(
            &d.socket(),
            &test_record(&format!("f{i}")),
            Duration::from_secs(2),
        )
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || d.spool_names().len() == 4),
        "{}",
        d.log()
    );

    let st = ok(&d, &["status"]);
    assert!(
        st.contains("opted in:        yes") && st.contains("daemon:          running"),
        "{st}"
    );
    assert!(
        st.contains("4 record(s)") && st.contains("1 loaded, 0 quarantined"),
        "{st}"
    );
    let out = ok(&d, &["--json", "status"]);
    let v: Status =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json status: {e}\n{out}"));
    assert_eq!(v.spool.records, 4);
    assert_eq!(v.ingest.accepted, 4);

    // Collector down: flush reports the failure instead of hanging.
    let (code, _, err) = ctl(&d, &["spool", "flush"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("still spooled") && err.contains("failed"),
        "{err}"
    );
    c.set_mode(Mode::Status(200, None));
    assert!(ok(&d, &["spool", "flush"]).contains("spool is empty"));
    assert_eq!(c.accepted_count(), 4);

    // Disable survives a restart; enable brings it back.
    assert!(ok(&d, &["probe", "disable", "hello"]).contains("disabled"));
    assert!(!ok(&d, &["probe", "list"]).contains("hello"));
    d.stop();
    let d = d.spawn();
    // `probe list` answers after the first scan of the probes directory.
    assert!(!ok(&d, &["probe", "list"]).contains("hello"), "{}", d.log());
    assert!(ok(&d, &["status"]).contains("disabled: hello"));
    assert!(ok(&d, &["probe", "enable", "hello"]).contains("enabled"));
    assert!(ok(&d, &["probe", "list"]).contains("hello"));
}

#[test]
fn systemd_verbs_say_plainly_when_systemd_is_absent() {
    let out = Command::new(TELEMCTL).arg("is-active").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/run/systemd/system").exists() {
        // With systemd, the answer is systemctl's, one line per unit.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        assert!(
            stdout.lines().any(|l| l.starts_with("telemd.service : ")),
            "{stdout}"
        );
        assert!(!err.contains("systemd is not running"), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("systemd is not running"), "{err}");
}

/// The daemon holds every connection to the handshake: a client of
/// another protocol version, or one that skips the hello, gets one line
/// saying so and nothing else.
#[test]
fn control_requests_before_a_matching_hello_are_refused() {
    use std::io::{BufRead, BufReader, Write};
    use telem_core::control::{Request, Response, PROTOCOL_VERSION};
    let d = TestDaemon::start(HOLD);
    let ask = |lines: &[String]| -> Vec<Response> {
        let s = std::os::unix::net::UnixStream::connect(d.path("control.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        lines
            .iter()
            .map(|l| {
                (&s).write_all(format!("{l}\n").as_bytes()).unwrap();
                let mut out = String::new();
                r.read_line(&mut out).unwrap();
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"))
            })
            .collect()
    };
    let line = |r: &Request| serde_json::to_string(r).unwrap();
    let hello = |version| Request::Hello {
        version,
        client: "test".into(),
    };

    let skipped = ask(&[line(&Request::Status)]);
    assert!(
        matches!(&skipped[0], Response::Error { message } if message.contains("hello") && !message.contains('\n')),
        "{skipped:?}"
    );
    let other = ask(&[line(&hello(PROTOCOL_VERSION + 1)), line(&Request::Status)]);
    assert!(
        matches!(&other[0], Response::Hello(h) if h.version == PROTOCOL_VERSION),
        "{other:?}"
    );
    assert!(matches!(&other[1], Response::Error { .. }), "{other:?}");
    let matching = ask(&[line(&hello(PROTOCOL_VERSION)), line(&Request::Status)]);
    assert!(matches!(&matching[1], Response::Status(_)), "{matching:?}");
}

/// `telemctl opt-out` takes effect on a running daemon at once: a record
/// sent while opted out is refused (a record sent after opting back in
/// lands, so the refused one had its chance to land first), and nothing
/// already spooled is lost.
#[test]
fn opt_out_refuses_records_at_once_and_opt_in_takes_them_again() {
    let mut d = TestDaemon::start(HOLD);
    let send = |p: &str| {
        telem_core::native_client::send_record(&d.socket(), &test_record(p), Duration::from_secs(2))
            .unwrap()
    };
    send("before");
    d.wait_spool(1);
    assert!(ok(&d, &["opt-out"]).contains("disabled"));
    send("while opted out");
    assert!(
        wait_until(Duration::from_secs(10), || d.log().contains("not opted in")),
        "{}",
        d.log()
    );
    assert!(ok(&d, &["opt-in"]).contains("enabled"));
    send("after");
    let mut payloads: Vec<String> = d.wait_spool(2).into_iter().map(|r| r.payload).collect();
    payloads.sort();
    assert_eq!(payloads, ["after", "before"]);
    assert_eq!(status(&d).ingest.not_opted_in, 1);
    d.stop();
}

/// Output to a pipe whose reader has gone (`telemctl config defaults |
/// head -1` once head has exited) ends telemctl by SIGPIPE, as it ends
/// `cat`, never by a panic (exit 101, "failed printing to stdout").
#[test]
fn output_to_a_closed_pipe_ends_telemctl_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["config", "defaults"][..],
        &["config", "defaults", "--json"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(TELEMCTL)
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
