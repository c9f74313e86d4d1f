//! End-to-end: unchanged native probes talk to a running `telemd` over the
//! legacy socket; good records land in the spool byte for byte, bad input is
//! refused without harming anything else.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::*;
use telem_core::record::wire::{encode_frame, parse_frame};
use telem_core::record::{Header, Record};

const LEGACY_FRAMES: [&str; 4] = [
    "frame-record-gen.bin",
    "frame-hprobe-cfg.bin",
    "frame-record-gen-multiline.bin",
    "frame-record-gen-8192.bin",
];

fn by_event_id<'a>(recs: &'a [Record], want: &Record) -> &'a Record {
    let id = want.headers.get(Header::EventId);
    recs.iter()
        .find(|r| r.headers.get(Header::EventId) == id)
        .unwrap_or_else(|| panic!("no spooled record with event id {id}"))
}

#[test]
fn legacy_frames_land_in_the_spool_byte_identical() {
    let d = TestDaemon::start(HOLD);
    for name in LEGACY_FRAMES {
        send_raw(&d.socket(), &fixture(name));
    }
    let spooled = d.wait_spool(4);
    let machine_id = std::fs::read_to_string(d.path("state/machine_id")).unwrap();
    for name in LEGACY_FRAMES {
        let sent = parse_frame(&fixture(name)).unwrap();
        let got = by_event_id(&spooled, &sent);
        for h in Header::ALL {
            if h == Header::MachineId {
                assert_eq!(
                    got.headers.get(h),
                    machine_id,
                    "{name}: machine_id is the daemon's"
                );
            } else {
                assert_eq!(
                    got.headers.get(h),
                    sent.headers.get(h),
                    "{name}: header {h}"
                );
            }
        }
        assert_eq!(
            got.payload.as_bytes(),
            sent.payload.as_bytes(),
            "{name}: payload"
        );
        assert_eq!(got.config, sent.config, "{name}: CFG prefix");
    }
    let cfg = parse_frame(&fixture("frame-hprobe-cfg.bin")).unwrap();
    assert_eq!(
        by_event_id(&spooled, &cfg).config.as_deref(),
        Some("/etc/telemetrics/custom.conf")
    );

    // The spool file itself is the legacy staged layout.
    let dir = d.path("spool");
    let hprobe = d
        .spool_names()
        .into_iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .find(|b| b.starts_with(b"CFG:"))
        .unwrap();
    assert!(hprobe.starts_with(b"CFG:/etc/telemetrics/custom.conf\nrecord_format_version: 4\n"));
    assert!(
        hprobe.ends_with(b"\nhello\n\n"),
        "payload plus the legacy extra newline"
    );
}

fn valid_frame(payload: &str) -> Vec<u8> {
    let mut r = parse_frame(&fixture("frame-record-gen.bin")).unwrap();
    r.payload = payload.into();
    r.headers
        .set(Header::EventId, telem_core::record::random_id());
    encode_frame(&r)
}

fn with_size(mut f: Vec<u8>, size: u32) -> Vec<u8> {
    f[..4].copy_from_slice(&size.to_ne_bytes());
    f
}

#[test]
fn malformed_input_is_refused_and_the_daemon_keeps_serving() {
    let d = TestDaemon::start(HOLD);
    let sock = d.socket();
    let good = valid_frame("good");

    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated frame", good[..good.len() / 2].to_vec()),
        ("size 0", with_size(good.clone(), 0)),
        ("size 4", with_size(good.clone(), 4)),
        ("size u32::MAX", with_size(good.clone(), u32::MAX)),
        (
            "size larger than the bytes sent",
            with_size(good.clone(), good.len() as u32 + 50),
        ),
    ];
    // Header-block edits keep header_size consistent by re-encoding from parts.
    let parts = |mutate: &dyn Fn(&str) -> String| {
        let rec = parse_frame(&good).unwrap();
        let blockstr = mutate(&rec.headers.to_block());
        let mut body = Vec::new();
        body.extend_from_slice(&(blockstr.len() as u32).to_ne_bytes());
        body.extend_from_slice(blockstr.as_bytes());
        body.extend_from_slice(rec.payload.as_bytes());
        body.push(0);
        let mut f = ((body.len() + 4) as u32).to_ne_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    };
    bad.push((
        "missing header",
        parts(&|b| b.replacen("arch: x86_64\n", "", 1)),
    ));
    bad.push((
        "reordered headers",
        parts(&|b| {
            b.replacen(
                "classification: org.example/test/vec\nseverity: 3\n",
                "severity: 3\nclassification: org.example/test/vec\n",
                1,
            )
        }),
    ));
    bad.push((
        "severity out of range",
        parts(&|b| b.replacen("severity: 3", "severity: 7", 1)),
    ));
    let mut nul = valid_frame("abcd");
    let n = nul.len();
    nul[n - 3] = 0;
    bad.push(("NUL in payload", nul));
    let mut high = valid_frame("abcd");
    high[n - 3] = 0xc3;
    bad.push(("non-ASCII payload", high));

    for (what, bytes) in &bad {
        send_raw(&sock, bytes);
        // The good record right after each bad one must still be served.
        send_raw(&sock, &valid_frame(what));
    }
    let recs = d.wait_spool(bad.len());
    for r in &recs {
        r.validate().expect("only valid records reach the spool");
        assert!(
            bad.iter().any(|(w, _)| *w == r.payload),
            "unexpected payload {:?}",
            r.payload
        );
    }
    let needles = [
        "frame size 0 is too small",
        "frame size 4 is too small",
        "frame size 4294967295 exceeds the limit",
        "header 5 is \"host_type\"; expected \"arch\"",
        "header 1 is \"severity\"; expected \"classification\"",
        "severity \"7\" is not in 1..4",
        "payload byte 2 is 0x00",
        "payload byte 2 is 0xc3",
        "connection closed after",
    ];
    // A refused record is said once its batch's answer is back, which may
    // be after the next good record's file appeared.
    wait_until(Duration::from_secs(5), || {
        let log = d.log();
        needles.iter().all(|n| log.contains(n))
    });
    let log = d.log();
    for needle in needles {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    // Rejections carry the peer's credentials.
    assert!(
        log.contains(&format!("pid=Some({})", std::process::id())),
        "{log}"
    );
}

#[test]
fn silent_and_slow_clients_time_out_without_blocking_others() {
    let d = TestDaemon::start(&format!("{HOLD}max_connections = 8"));
    let sock = d.socket();
    // Hold more silent connections than there are serving slots.
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // A slow client that trickles a valid frame well within the timeout.
    let slow = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let frame = valid_frame("slow but complete");
            let mut s = UnixStream::connect(&sock).unwrap();
            for chunk in frame.chunks(frame.len() / 4 + 1) {
                s.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let start = Instant::now();
    send_raw(&sock, &valid_frame("after the silent ones"));
    slow.join().unwrap();
    let recs = d.wait_spool(2);
    let payloads: Vec<&str> = recs.iter().map(|r| r.payload.as_str()).collect();
    assert!(
        payloads.contains(&"after the silent ones") && payloads.contains(&"slow but complete"),
        "{payloads:?}"
    );
    // Silent clients were dropped at the 1 s timeout, in batches of 8 slots.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .matches("no complete frame within")
            .count()
            >= 20),
        "{}",
        d.log()
    );
    drop(silent);
}

#[test]
fn two_hundred_clients_at_once_all_land() {
    let d = TestDaemon::start(HOLD);
    let sock = d.socket();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                // Half of them also open a silent connection first.
                let _idle = (i % 2 == 0).then(|| UnixStream::connect(&sock).unwrap());
                let frame = valid_frame(&format!("client {i}"));
                telem_core::native_client::send_frame(&sock, &frame, Duration::from_secs(10))
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let recs = d.wait_spool(200);
    let mut payloads: Vec<String> = recs.into_iter().map(|r| r.payload).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 200);
}

#[test]
fn not_opted_in_refuses_native_records() {
    let mut d = TestDaemon::prepare(HOLD).spawn();
    send_raw(&d.socket(), &valid_frame("nobody asked"));
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains("not opted in")),
        "{}",
        d.log()
    );
    assert!(d.spool_names().is_empty());
    // Opting in takes effect without a restart.
    std::fs::write(d.path("opt-in"), "").unwrap();
    send_raw(&d.socket(), &valid_frame("now yes"));
    assert_eq!(d.wait_spool(1)[0].payload, "now yes");
    d.stop();
}

#[test]
fn socket_mode_is_0666_by_default_and_configurable() {
    let d = TestDaemon::start(HOLD);
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let d2 = TestDaemon::start(&format!("{HOLD}socket_mode = \"0620\""));
    let mode = std::fs::metadata(d2.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o620);
}

#[test]
fn socket_activation_uses_the_passed_listener_and_notifies_ready() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut d = TestDaemon::start(HOLD);
    d.kill9();
    // Bind the socket ourselves, as systemd would, at a path the config does not name.
    let passed = d.path("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&passed).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=telem-0 exec {TELEMD} \"$@\""
        ))
        .arg("sh");
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC; clear it explicitly then.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // spawn_with waits for the configured path; send through the passed one instead.
    let _ = std::fs::remove_file(d.socket());
    std::fs::write(d.path("opt-in"), "").unwrap();
    let log = std::fs::File::create(d.path("telemd.log")).unwrap();
    // The service manager's end of sd_notify.
    let notify_path = d.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    cmd.arg("-f")
        .arg(&d.config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(log)
        .stdin(std::process::Stdio::null());
    let child = KillOnDrop(cmd.spawn().unwrap());
    drop(listener);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("passed by systemd")),
        "{}",
        d.log()
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 20 s");
    // sd_notify(3): newline-separated assignments, one datagram.
    let sent = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(sent.lines().collect::<Vec<_>>(), ["READY=1"], "{}", d.log());
    send_raw(&passed, &valid_frame("activated"));
    assert_eq!(d.wait_spool(1)[0].payload, "activated");
    assert!(!d.socket().exists(), "the configured path was not bound");
    drop(child);
}

/// A service manager may listen on an abstract socket (`NOTIFY_SOCKET=@name`,
/// as systemd does in containers): readiness reaches it too.
#[test]
fn readiness_reaches_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("telemd-e2e-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = TestDaemon::prepare(HOLD);
    let mut cmd = std::process::Command::new(support::TELEMD);
    cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    d.spawn_with(cmd);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1\n", "{}", d.log());
}

#[test]
fn record_gen_sends_records_the_daemon_accepts() {
    let d = TestDaemon::start(HOLD);
    let out = std::process::Command::new(RECORD_GEN)
        .args(["-f"])
        .arg(&d.config_path)
        .args([
            "-c",
            "org.example/gen/test",
            "-s",
            "2",
            "-R",
            "3",
            "-e",
            "0123456789abcdef0123456789abcdef",
            "-p",
            "from the cli",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &d.wait_spool(1)[0];
    assert_eq!(
        r.headers.get(Header::Classification),
        "org.example/gen/test"
    );
    assert_eq!(r.headers.get(Header::Severity), "2");
    assert_eq!(r.headers.get(Header::PayloadFormatVersion), "3");
    assert_eq!(
        r.headers.get(Header::EventId),
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(r.payload, "from the cli");
    let cfg = d.config_path.canonicalize().unwrap();
    assert_eq!(
        r.config.as_deref(),
        Some(cfg.to_str().unwrap()),
        "-f is sent as the CFG: prefix"
    );

    // Payload from stdin, cut to 8192 bytes.
    let mut child = std::process::Command::new(RECORD_GEN)
        .arg("--socket")
        .arg(d.socket())
        .arg("-f")
        .arg(&d.config_path)
        .args(["-c", "org.example/gen/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[b'x'; 9000])
        .unwrap();
    assert!(child.wait().unwrap().success());
    let recs = d.wait_spool(2);
    assert!(recs.iter().any(|r| r.payload.len() == 8192));
}

#[test]
fn record_gen_errors_are_clear_and_exit_nonzero() {
    let d = TestDaemon::prepare(HOLD).spawn(); // not opted in
    let run = |args: &[&str]| {
        let out = std::process::Command::new(RECORD_GEN)
            .arg("-f")
            .arg(&d.config_path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, err, _) = run(&["-p", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("Classification required"), "{err}");
    let (code, err, _) = run(&["-c", "a/b/c", "-s", "5", "-p", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("severity is 1-4"), "{err}");
    let (code, err, _) = run(&["-c", "a/b", "-p", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("exactly 2"), "{err}");
    let (code, err, _) = run(&["-c", "a/b/c", "-e", "XYZ", "-p", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("event_id"), "{err}");
    let (code, err, _) = run(&["-c", "a/b/c", "-p", "caf\u{e9}"]);
    assert_eq!(code, 1);
    assert!(err.contains("payload byte 3"), "{err}");
    let (code, err, _) = run(&["-c", "a/b/c", "-p", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("opt-in"), "{err}");
    let (code, _, out) = run(&["-c", "a/b/c", "-p", "just print", "-n"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("record_format_version: 4\nclassification: a/b/c\n")
            && out.ends_with("just print\n"),
        "{out}"
    );
    let (code, _, _) = run(&["--bogus"]);
    assert_eq!(code, 2);
    // No daemon listening: a clear connect error.
    std::fs::write(d.path("opt-in"), "").unwrap();
    let out = std::process::Command::new(RECORD_GEN)
        .arg("-f")
        .arg(&d.config_path)
        .args(["--socket", "/nonexistent/telem-0", "-c", "a/b/c", "-p", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is telemd running?"));
    assert!(d.spool_names().is_empty());
}

#[test]
fn a_burst_of_one_uid_loses_nothing() {
    let d = TestDaemon::start(BURST_CONFIG);
    let sent = burst(&d.socket(), BURST_CLIENTS, BURST_FRAMES);
    all_landed_once(&d, &sent.ids, 0);
    let s = status(&d);
    assert_eq!(s.ingest.accepted, BURST_FRAMES as u64);
    assert_eq!(s.ingest.refused, 0);
}

#[test]
fn a_second_daemon_on_the_same_state_directory_refuses_and_the_first_keeps_serving() {
    let mut first = TestDaemon::start(HOLD);
    let pid = first.pid();
    let log = first.path("second.log");
    let mut second = KillOnDrop(
        std::process::Command::new(TELEMD)
            .arg("-f")
            .arg(&first.config_path)
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(second.0.try_wait(), Ok(Some(_)))
    });
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(exited, "the second daemon kept running: {err}");
    assert!(!second.0.wait().unwrap().success(), "{err}");
    assert!(
        err.contains(&format!(
            "another telemd (pid {pid}) is running on the state directory"
        )),
        "{err}"
    );
    assert!(!err.contains("telemd ready"), "{err}");
    // The first still has its sockets and serves both.
    send_raw(
        &first.socket(),
        &valid_frame("after the second one gave up"),
    );
    assert_eq!(
        first.wait_spool(1)[0].payload,
        "after the second one gave up"
    );
    assert!(status(&first).ingest.accepted == 1);
    // Killed without a chance to clean up, it leaves nothing that keeps
    // the next one from starting.
    first.kill9();
    first.spawn_with(std::process::Command::new(TELEMD));
    send_raw(&first.socket(), &valid_frame("after a kill -9"));
    assert_eq!(first.wait_spool(2).len(), 2);
}

#[test]
#[ignore = "needs root: mounts a small tmpfs"]
fn a_burst_into_a_full_disk_keeps_every_spooled_record_and_serves_once_space_returns() {
    support::assert_root("mounts a small tmpfs");
    let d = TestDaemon::prepare(BURST_CONFIG);
    // Room for a few hundred of the burst's 5,000 records.
    let _guard = support::mount_small_tmpfs(&d.path("spool"), "1m");
    std::fs::write(d.path("opt-in"), "").unwrap();
    let d = d.spawn();
    let started = Instant::now();
    let sent = burst(&d.socket(), BURST_CLIENTS, 5_000);
    // Every frame is accounted for: spooled, or refused for the disk.
    let settled = wait_until(Duration::from_secs(60), || {
        let i = status(&d).ingest;
        i.accepted + i.spool_errors + i.spool_full == 5_000
    });
    let i = status(&d).ingest;
    assert!(settled, "not every frame was spooled or refused: {i:?}");
    assert!(i.spool_errors > 0, "the disk never filled: {i:?}");
    // What was acknowledged is there, whole, and nothing else.
    let kept = d.spool_records();
    assert_eq!(kept.len() as u64, i.accepted);
    for r in &kept {
        r.validate().unwrap();
        assert!(sent
            .ids
            .iter()
            .any(|id| id == r.headers.get(Header::EventId)));
    }
    let leftovers = std::fs::read_dir(d.path("spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        })
        .count();
    assert_eq!(leftovers, 0, "temporary files of refused records were left");
    // The refusals were said within the log's limits: 64 lines per 10 s.
    let windows = started.elapsed().as_secs() / 10 + 1;
    let lines = d.log().matches("native record refused").count() as u64;
    assert!(
        lines <= 64 * windows,
        "{lines} refusal lines in {windows} windows"
    );
    // Space returns: the next burst lands whole beside what was kept.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(d.path("spool"))
        .status()
        .unwrap();
    assert!(grown.success());
    let again = burst(&d.socket(), BURST_CLIENTS, 1_000);
    all_landed_once(&d, &again.ids, kept.len());
}
