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

/// Sends one native record to `d` (as a native probe would).
fn send(d: &TestDaemon, payload: &str) {
    telem_core::native_client::send_record(
        &d.socket(),
        &test_record(payload),
        Duration::from_secs(2),
    )
    .unwrap();
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
    // A manual run shows what it stored.
    let ran = ok(&d, &["probe", "run", "hello"]);
    assert!(
        ran.contains("ran successfully; 1 record(s) stored")
            && ran.contains("org.clearlinux/hello/world (severity 1, event ")
            && ran.contains("): hello"),
        "{ran}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || journal_lines(&[]).len() == 2),
        "{}",
        d.log()
    );
    let (code, _, err) = ctl(&d, &["probe", "run", "nope"]);
    assert_eq!(code, 1, "{err}");
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
    // A query that selects nothing is exit 1 and says so, as coredumpctl's.
    let (code, out, err) = ctl(&d, &["journal", "-c", "org.example/none/x"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("no journal entries match"), "{err}");
    assert_eq!(journal_lines(&["-r", &entries[0].record_id]).len(), 1);
    assert_eq!(journal_lines(&["-e", &entries[1].event_id]).len(), 1);
    assert_eq!(journal_lines(&["-b", &entries[0].boot_id]).len(), 2);
    assert_eq!(ctl(&d, &["journal", "-b", "0000"]).0, 1);
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
        send(&d, &format!("held {i}"));
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
    // And how to reach a daemon run with another config.
    assert!(
        err.contains("telemd is not running") && err.contains("telemctl -f CONFIG"),
        "{err}"
    );
    // Not running is systemctl's 3, for the daemon and for a probe.
    let (code, out, _) = ctl(&d, &["status"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("daemon:          no: telemd is not running"),
        "{out}"
    );
    assert_eq!(ctl(&d, &["--json", "status"]).0, 3);
    assert_eq!(ctl(&d, &["status", "hello"]).0, 3);
    let (code, out, _) = ctl(&d, &["is-active"]);
    assert_eq!((code, out.as_str()), (3, "inactive\n"));
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
        send(&d, &format!("f{i}"));
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
    // `--all` shows it, with why; `status NAME` says it does not run.
    let all = ok(&d, &["probe", "list", "--all"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("hello ") && l.contains("disabled by the admin")),
        "{all}"
    );
    let (code, _, err) = ctl(&d, &["status", "hello"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("hello is disabled"), "{err}");
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    if std::path::Path::new("/run/systemd/system").exists() {
        // With systemd, the answer is systemctl's, one line per unit.
        assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
        assert!(
            stdout.lines().any(|l| l.starts_with("telemd.service : ")),
            "{stdout}"
        );
        return;
    }
    // Without, whether a daemon answers on the config's socket (none
    // here): systemctl's "inactive", 3.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(stdout, "inactive\n");
    let out = Command::new(TELEMCTL).arg("start").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
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
    send(&d, "before");
    d.wait_spool(1);
    assert!(ok(&d, &["opt-out"]).contains("disabled"));
    send(&d, "while opted out");
    assert!(
        wait_until(Duration::from_secs(10), || d.log().contains("not opted in")),
        "{}",
        d.log()
    );
    assert!(ok(&d, &["opt-in"]).contains("enabled"));
    send(&d, "after");
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

/// What scripts and admins read: systemd's exit codes, `--all` with the
/// reasons, a probe's triggers and runs, and what an ELF file or a core
/// module named `.wasm` is, in words that say what to do.
#[test]
fn status_codes_probe_reasons_and_what_a_file_is() {
    let d = TestDaemon::prepare("probe_scan_interval_ms = 200\n[probes.ticker]\nenabled = false\n");
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    std::fs::copy(probe_wasm("ticker"), d.path("probes/ticker.wasm")).unwrap();
    // A native program renamed, larger than max_component_bytes too.
    std::fs::write(d.path("probes/native.wasm"), {
        let mut elf = std::fs::read(TELEMCTL).unwrap();
        elf.resize(17 << 20, 0);
        elf
    })
    .unwrap();
    std::fs::write(
        d.path("probes/core-module.wasm"),
        wat::parse_str("(module)").unwrap(),
    )
    .unwrap();
    let d = d.spawn();
    // Both files refused, and hello's start run done with its next run
    // set.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let l = probe_list(&d);
            l.refused.len() == 2
                && l.probes
                    .iter()
                    .any(|p| p.stats.runs >= 1 && p.stats.next_run.is_some())
        }),
        "{}",
        d.log()
    );
    let (code, out, err) = ctl(&d, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&d, &["status", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  triggers: on start, every 86400 s, manual")
            && out.contains("  runs: 1, last 2")
            && out.contains(" UTC, next 2"),
        "{out}"
    );
    // Disabled by the config: there, not running, and why.
    let (code, _, err) = ctl(&d, &["status", "ticker"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("ticker is disabled by the config"), "{err}");
    assert_eq!(ctl(&d, &["probe", "info", "ticker"]).0, 3);
    let (code, _, err) = ctl(&d, &["status", "nosuch"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no probe named nosuch"), "{err}");
    assert_eq!(ctl(&d, &["probe", "info", "nosuch"]).0, 4);

    let (code, _, err) = ctl(&d, &["probe", "info", "native"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("an ELF file (a native program or library), not WebAssembly")
            && err.contains("cargo build --target wasm32-wasip2")
            && !err.contains("max_component_bytes"),
        "{err}"
    );
    let (code, _, err) = ctl(&d, &["status", "core-module"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("a core WebAssembly module, not a component") && err.contains("wasm32-wasip2"),
        "{err}"
    );
    // The plain list says refusals exist; --all says which and why, each
    // file named once per line.
    let list = ok(&d, &["probe", "list"]);
    assert!(
        list.contains("(2 file(s) refused: `telemctl probe list --all`"),
        "{list}"
    );
    let all = ok(&d, &["probe", "list", "--all"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("ticker ") && l.contains("[probes.ticker] enabled = false")),
        "{all}"
    );
    for f in ["native.wasm", "core-module.wasm"] {
        let line = all
            .lines()
            .find(|l| l.contains(f))
            .unwrap_or_else(|| panic!("{all}"));
        assert_eq!(line.matches(f).count(), 1, "{line}");
        assert!(line.contains(" refused "), "{line}");
    }
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("probe not loaded") && l.contains("native.wasm"))
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(line.matches("native.wasm").count(), 1, "{line}");
    let (code, out, _) = ctl(&d, &["is-active"]);
    assert_eq!((code, out.as_str()), (0, "active\n"));
}

/// `telemctl journal` takes journalctl's options: -n, --since/--until in
/// its time forms, --reverse, -o json, --follow; kebab-case spellings with
/// the old ones kept; a record id with no entry is exit 1.
#[test]
fn journal_reads_like_journalctl() {
    let d = TestDaemon::start("");
    for i in 0..5 {
        send(&d, &format!("j{i}"));
    }
    let all =
        || telem_core::journal::query_dir(&d.path("journal"), 100, &Default::default()).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || all().len() == 5),
        "{}",
        d.log()
    );
    let entries = all();
    let ids = |out: &str| {
        out.lines()
            .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let want: Vec<String> = entries.iter().map(|e| e.record_id.clone()).collect();
    assert_eq!(ids(&ok(&d, &["journal"])), want);
    assert_eq!(ids(&ok(&d, &["journal", "-n", "2"])), want[3..]);
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(ids(&ok(&d, &["journal", "--reverse"])), rev);
    assert_eq!(
        ids(&ok(&d, &["journal", "--reverse", "-n", "1"])),
        want[4..]
    );
    let lines = ok(&d, &["journal", "-o", "json"]);
    let parsed: Vec<JournalEntry> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(parsed, entries);
    // Times as journalctl spells them.
    assert_eq!(ids(&ok(&d, &["journal", "--since", "-1h"])).len(), 5);
    assert_eq!(
        ids(&ok(&d, &["journal", "--since", "today", "--until", "now"])).len(),
        5
    );
    let t = entries[0].time;
    assert_eq!(
        ids(&ok(&d, &["journal", "--until", &format!("@{t}")])).len(),
        entries.iter().filter(|e| e.time <= t).count()
    );
    let (code, _, err) = ctl(&d, &["journal", "--since", "tomorrow"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = ctl(&d, &["journal", "--since", "last tuesday"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--since") && err.contains("is not a time"),
        "{err}"
    );
    // The kebab-case option, its old spelling, and an id with no entry.
    assert_eq!(
        ids(&ok(&d, &["journal", "--record-id", &want[2]])),
        want[2..3]
    );
    assert_eq!(
        ids(&ok(&d, &["journal", "--record_id", &want[2]])),
        want[2..3]
    );
    let (code, out, err) = ctl(&d, &["journal", "-r", "NOSUCHID"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("no entry for this record id"), "{err}");

    // --follow prints the entries, then each new one as it is written.
    let mut follow = Command::new(TELEMCTL)
        .arg("-f")
        .arg(d.path("telemd.toml"))
        .args(["journal", "--follow", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    for _ in 0..5 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    send(&d, "j5");
    let new: JournalEntry =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert!(!want.contains(&new.record_id), "{new:?}");
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "printed once"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
}

/// `telemctl probe new NAME`: the crate it writes builds as its README
/// says, against this checkout's SDK (no path to edit), passes `probe
/// test`, and its record arrives from a daemon it is dropped into.
#[test]
fn a_generated_rust_probe_builds_and_sends_its_record() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("uptime-beat");
    let out = Command::new(TELEMCTL)
        .args(["probe", "new", "uptime-beat", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probe-sdk")
        .canonicalize()
        .unwrap();
    assert!(
        manifest.contains(&format!(
            "telemetrics-probe-sdk = {{ path = \"{}\" }}",
            sdk.display()
        )),
        "{manifest}"
    );
    // Built as the README says; the shipped probes' target directory and
    // lock file are shared so their dependencies are neither resolved nor
    // built again (cargo drops what the new crate does not use).
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes-wasm/target");
    std::fs::copy(target.join("../Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--target", "wasm32-wasip2", "--release"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = dir.join("uptime-beat.wasm");
    std::fs::copy(target.join("wasm32-wasip2/release/uptime_beat.wasm"), &wasm).unwrap();

    let config = offline_config(t.path(), "");
    // `probe test FILE EXTRA...`, which must pass: its stdout.
    let probe_test = |extra: &[&str]| {
        let mut args = vec![
            std::ffi::OsStr::new("probe"),
            "test".as_ref(),
            wasm.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let tested = telemctl_offline(&config, t.path(), args);
        let stdout = String::from_utf8_lossy(&tested.stdout).into_owned();
        assert!(
            tested.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&tested.stderr)
        );
        stdout
    };
    let stdout = probe_test(&[]);
    assert!(
        stdout.contains("  classification: org.example/uptime-beat/uptime\n")
            && stdout.contains("handle: ok, 1 record(s)")
            && stdout.contains("granted: read [\"/proc/uptime\"]"),
        "{stdout}"
    );
    // --grant-read adds a path beside what the manifest was granted.
    let stdout = probe_test(&["--grant-read", "/usr/lib"]);
    assert!(
        stdout.contains("granted: read [\"/proc/uptime\", \"/usr/lib\"]"),
        "{stdout}"
    );

    let d = TestDaemon::prepare(&format!("{HOLD}probe_scan_interval_ms = 200\n"));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::copy(&wasm, d.path("probes/uptime-beat.wasm")).unwrap();
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(20), || d.spool_records().iter().any(
            |r| r.headers.get(telem_core::record::Header::Classification)
                == "org.example/uptime-beat/uptime"
        )),
        "{}",
        d.log()
    );
}
