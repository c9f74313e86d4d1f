//! End-to-end: config reload. SIGHUP (or `telemctl reload`, what the
//! unit's `ExecReload=` runs) makes the running daemon read its config
//! again: a changed grant and server take effect in the same process, no
//! record is lost, a connection open across the reload goes on, and a
//! broken config is refused with the old one kept.

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::time::Duration;

use support::collector::{Collector, Mode};
use support::*;
use telem_core::record::wire::encode_frame;

fn ok() -> Mode {
    Mode::Status(200, None)
}

fn config_for(c: &Collector, grant_timeout_ms: u64) -> String {
    format!(
        "server = \"{}\"\nprobe_scan_interval_ms = 200\n[probes.hello]\ntimeout_ms = {grant_timeout_ms}\n",
        c.url()
    )
}

/// Replaces everything after the test paths (the `extra` part) with `extra`.
fn rewrite(d: &TestDaemon, extra: &str) {
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let keep: String = text
        .lines()
        .filter(|l| {
            [
                "socket_path",
                "spool_dir",
                "state_dir",
                "journal_dir",
                "opt_in_file",
                "static_machine_id_file",
                "probes_dirs",
                "control_socket",
                "socket_timeout_ms",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&d.config_path, format!("{keep}{extra}")).unwrap();
}

fn hello_timeout(d: &TestDaemon) -> Option<u64> {
    probe_list(d)
        .probes
        .iter()
        .find(|p| p.name == "hello")
        .map(|p| p.granted.timeout_ms)
}

fn hup(d: &TestDaemon) {
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
}

fn send(d: &TestDaemon, payload: &str) -> String {
    let r = test_record(payload);
    send_raw(&d.socket(), &encode_frame(&r));
    r.headers
        .get(telem_core::record::Header::EventId)
        .to_owned()
}

#[test]
fn sighup_applies_a_new_grant_and_server_in_the_same_process_losing_nothing() {
    let (a, b) = (Collector::start(ok()), Collector::start(ok()));
    let d = TestDaemon::prepare(&config_for(&a, 1500));
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    let mut d = d.spawn();
    let pid = d.pid();
    assert!(
        wait_until(Duration::from_secs(20), || hello_timeout(&d) == Some(1500)),
        "{:?}\n{}",
        hello_timeout(&d),
        tail(&d.log(), 20)
    );
    let before = [send(&d, "before 1"), send(&d, "before 2")];
    assert!(wait_until(Duration::from_secs(20), || {
        let got = a.accepted_by_event_id();
        before.iter().all(|id| got.contains_key(id))
    }));

    // A native client with a connection open across the reload.
    let mut open = UnixStream::connect(d.socket()).unwrap();
    rewrite(&d, &config_for(&b, 2500));
    hup(&d);
    assert!(
        wait_until(Duration::from_secs(20), || hello_timeout(&d) == Some(2500)),
        "{:?}\n{}",
        hello_timeout(&d),
        tail(&d.log(), 30)
    );
    assert!(!d.exited(), "{}", tail(&d.log(), 20));
    assert_eq!(d.pid(), pid);
    assert!(d.log().contains("config reloaded"), "{}", d.log());

    let r = test_record("across the reload");
    open.write_all(&encode_frame(&r)).unwrap();
    drop(open);
    let after = [
        r.headers
            .get(telem_core::record::Header::EventId)
            .to_owned(),
        send(&d, "after 1"),
    ];
    assert!(
        wait_until(Duration::from_secs(20), || {
            let got = b.accepted_by_event_id();
            after.iter().all(|id| got.contains_key(id))
        }),
        "{}",
        tail(&d.log(), 30)
    );
    // The old server got only what came before the reload, once each.
    let old = a.accepted_by_event_id();
    assert!(before.iter().all(|id| old.get(id) == Some(&1)));
    assert!(after.iter().all(|id| !old.contains_key(id)));
    // hello's records (it runs at load) went to whichever server was in
    // force; nothing stayed behind.
    assert!(wait_until(Duration::from_secs(10), || d
        .spool_names()
        .is_empty()));
}

#[test]
fn a_broken_config_is_refused_and_the_old_one_keeps_working() {
    let (a, b) = (Collector::start(ok()), Collector::start(ok()));
    let mut d = TestDaemon::start(&format!("server = \"{}\"\n", a.url()));
    let pid = d.pid();

    // A syntax error: telemctl reload (which reads the same file to find
    // the daemon) fails with the file and line, and says so in its
    // exit status (what systemctl reload reports).
    rewrite(
        &d,
        &format!("server = \"{}\"\nrecord_burst_limit = \n", b.url()),
    );
    let out = telemctl(&d, &["reload"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("telemd.toml:11: syntax error"), "{err}");

    // A config that loads but whose client key is missing: refused too.
    rewrite(
        &d,
        &format!(
            "server = \"{}\"\ntls_client_cert = \"/nonexistent.pem\"\ntls_client_key = \"/nonexistent.key\"\n",
            b.url()
        ),
    );
    let out = telemctl(&d, &["reload"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nonexistent"),
        "{}",
        text(&out.stderr)
    );

    // SIGHUP with the same: logged once more, not fatal.
    let refusals = || d.log().matches("config reload refused").count();
    let before = refusals();
    hup(&d);
    assert!(wait_until(Duration::from_secs(10), || refusals() == before + 1));
    assert!(!d.exited(), "{}", tail(&d.log(), 20));
    assert_eq!(d.pid(), pid);

    // The old config is in force: records go to the old server.
    let id = send(&d, "still the old server");
    assert!(
        wait_until(Duration::from_secs(20), || a
            .accepted_by_event_id()
            .contains_key(&id)),
        "{}",
        tail(&d.log(), 30)
    );
    assert_eq!(b.requests().len(), 0);

    // And a good config then goes through telemctl, with what changed.
    rewrite(&d, &format!("server = \"{}\"\n", b.url()));
    let out = telemctl(&d, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("delivery"),
        "{}",
        text(&out.stdout)
    );
    let id = send(&d, "the new server");
    assert!(wait_until(Duration::from_secs(20), || b
        .accepted_by_event_id()
        .contains_key(&id)));
}

/// What systemd's `Type=notify-reload` expects: `RELOADING=1` with
/// `MONOTONIC_USEC=`, then `READY=1`.
#[test]
fn a_reload_is_announced_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = TestDaemon::prepare("");
    std::fs::write(d.path("opt-in"), "").unwrap();
    let mut cmd = Command::new(TELEMD);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    d.spawn_with(cmd);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));
    hup(&d);
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(next().contains("READY=1"));
}
