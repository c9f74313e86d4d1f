//! `libtelemetry.so.4` as native probes use it: C programs written for
//! these tests are compiled with `cc` against the installed `telemetry.h`
//! and linked with `pkg-config --libs libtelemetry`, then run against a
//! real `telemd` (or a listener that captures their bytes).

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;
use telem_core::record::wire::{encode_frame, parse_frame};
use telem_core::record::{Header, Record};

/// The tree `scripts/install.sh` made, and the C programs built against it.
struct Installed {
    root: PathBuf,
    libdir: PathBuf,
}

/// Installs once per test binary, under Cargo's scratch directory for
/// tests (overwritten by the next run, never left in /tmp).
fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        programs_are_fresh();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libtelemetry");
        let _ = std::fs::remove_dir_all(&root);
        let prefix = root.join("usr");
        let libdir = prefix.join("lib/x86_64-linux-gnu");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
        let out = Command::new(script)
            .arg("--prefix")
            .arg(&prefix)
            .arg("--libdir")
            .arg(&libdir)
            .arg("--from")
            .arg(Path::new(LIBTELEMETRY).parent().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Installed { root, libdir }
    })
}

/// Compiles `tests/c/NAME.c` as a packager's user would: the flags from
/// pkg-config, nothing else of this project's.
fn c_program(name: &str) -> PathBuf {
    let inst = installed();
    let out_path = inst.root.join(name);
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if out_path.exists() {
        return out_path;
    }
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libtelemetry"])
        .env("PKG_CONFIG_PATH", inst.libdir.join("pkgconfig"))
        .output()
        .expect("pkg-config is installed (scripts/test.sh installs it)");
    assert!(
        flags.status.success(),
        "pkg-config: {}",
        text(&flags.stderr)
    );
    let flags = text(&flags.stdout);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.c"));
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-D_DEFAULT_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-g",
        ])
        .arg(&src)
        .args(flags.split_whitespace())
        // Where the installed library is found at run time; a system
        // install needs no rpath.
        .arg(format!("-Wl,-rpath,{}", inst.libdir.display()))
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc {name}.c {flags}: {}",
        text(&out.stderr)
    );
    out_path
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn stdout_of(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn cfg(d: &TestDaemon) -> String {
    d.config_path.display().to_string()
}

/// The SONAME and exactly the seven functions, versioned, in `lib`.
fn assert_seed_abi(lib: &Path) {
    let p = Command::new("objdump").arg("-p").arg(lib).output().unwrap();
    let p = text(&p.stdout);
    assert!(
        p.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["SONAME", "libtelemetry.so.4"]),
        "{}: objdump -p:\n{p}",
        lib.display()
    );
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .unwrap();
    let mut functions: Vec<String> = text(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Version definitions may be listed as absolute symbols; every
            // other defined symbol must be one of the seven.
            (f.len() == 3 && f[1] != "A").then(|| format!("{} {}", f[1], f[2]))
        })
        .collect();
    functions.sort();
    assert_eq!(
        functions,
        [
            "T tm_create_record@@TM_3_0_0",
            "T tm_free_record@@TM_2_0_0",
            "T tm_is_opted_in@@TM_4_1_0",
            "T tm_send_record@@TM_3_0_0",
            "T tm_set_config_file@@TM_1_0_0",
            "T tm_set_event_id@@TM_4_0_0",
            "T tm_set_payload@@TM_3_0_0",
        ],
        "{}: nm -D --defined-only:\n{}",
        lib.display(),
        text(&nm.stdout)
    );
}

#[test]
fn the_library_has_the_seeds_soname_and_exactly_its_seven_versioned_functions() {
    let inst = installed();
    let lib = inst.libdir.join("libtelemetry.so.4");
    // The SONAME link and the dev link point at the versioned file.
    assert_eq!(
        std::fs::read_link(&lib).unwrap(),
        Path::new("libtelemetry.so.4.0.1")
    );
    assert_eq!(
        std::fs::read_link(inst.libdir.join("libtelemetry.so")).unwrap(),
        Path::new("libtelemetry.so.4")
    );
    assert_seed_abi(&lib);
    // The release build too (install.sh's default; the test command builds
    // it), when it is there.
    let release = Path::new(LIBTELEMETRY)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("release/libtelemetry.so");
    if release.exists() {
        assert_seed_abi(&release);
    }
    // A program linked against it asks for those versions, as programs
    // linked against the seed's library do.
    let prog = c_program("errors");
    let t = Command::new("objdump")
        .arg("-T")
        .arg(&prog)
        .output()
        .unwrap();
    let t = text(&t.stdout);
    for (f, v) in [
        ("tm_set_config_file", "TM_1_0_0"),
        ("tm_free_record", "TM_2_0_0"),
        ("tm_create_record", "TM_3_0_0"),
        ("tm_set_payload", "TM_3_0_0"),
        ("tm_send_record", "TM_3_0_0"),
        ("tm_set_event_id", "TM_4_0_0"),
        ("tm_is_opted_in", "TM_4_1_0"),
    ] {
        assert!(
            t.lines()
                .any(|l| l.ends_with(&format!(" {f}")) && l.contains(&format!("({v})"))),
            "{f} ({v}) not needed by the program:\n{t}"
        );
    }
}

#[test]
fn a_heartbeat_probe_built_with_pkg_config_reaches_telemd() {
    let d = TestDaemon::start(HOLD);
    let out = run(&c_program("heartbeat"), &["-f", &cfg(&d)]);
    assert!(out.status.success(), "{}", stdout_of(&out));
    assert_eq!(text(&out.stdout), "sent\n");
    let recs = d.wait_spool(1);
    let r = &recs[0];
    assert_eq!(
        r.headers.get(Header::Classification),
        "org.clearlinux/heartbeat/ping"
    );
    assert_eq!(r.headers.get(Header::Severity), "1");
    assert_eq!(r.payload, "hello\n");
    assert_eq!(
        r.config.as_deref(),
        Some(cfg(&d).as_str()),
        "CFG: names the config"
    );
}

#[test]
fn a_record_with_an_event_id_and_a_config_file_arrives_as_set_with_severity_clamped() {
    let d = TestDaemon::start(HOLD);
    let send = c_program("send");
    let id = "00112233445566778899aabbccddeeff";
    for (sev, class) in [
        ("0", "org.example/native/low"),
        ("7", "org.example/native/high"),
    ] {
        let out = run(
            &send,
            &[
                "-f",
                &cfg(&d),
                "-c",
                class,
                "-s",
                sev,
                "-v",
                "3",
                "-e",
                id,
                "-p",
                "two\nlines\n",
            ],
        );
        assert!(out.status.success(), "{}", stdout_of(&out));
    }
    let mut recs = d.wait_spool(2);
    recs.sort_by(|a, b| {
        a.headers
            .get(Header::Classification)
            .cmp(b.headers.get(Header::Classification))
    });
    for (r, (class, sev)) in recs.iter().zip([
        ("org.example/native/high", "4"),
        ("org.example/native/low", "1"),
    ]) {
        assert_eq!(r.headers.get(Header::Classification), class);
        assert_eq!(r.headers.get(Header::Severity), sev, "{class}: clamped");
        assert_eq!(r.headers.get(Header::EventId), id);
        assert_eq!(r.headers.get(Header::PayloadFormatVersion), "3");
        assert_eq!(r.payload, "two\nlines\n");
        assert_eq!(r.config.as_deref(), Some(cfg(&d).as_str()));
    }
}

#[test]
fn an_8_kib_payload_arrives_whole_and_a_longer_one_is_cut_at_8_kib_as_the_seed_did() {
    let d = TestDaemon::start(HOLD);
    let send = c_program("send");
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("8192");
    let longer = dir.path().join("9000");
    std::fs::write(&exact, "x".repeat(8192)).unwrap();
    std::fs::write(&longer, "y".repeat(9000)).unwrap();
    for (f, class) in [
        (&exact, "org.example/native/exact"),
        (&longer, "org.example/native/longer"),
    ] {
        let out = run(
            &send,
            &["-f", &cfg(&d), "-c", class, "-P", f.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", stdout_of(&out));
    }
    let recs = d.wait_spool(2);
    let payload_of = |class: &str| {
        &recs
            .iter()
            .find(|r| r.headers.get(Header::Classification) == class)
            .unwrap()
            .payload
    };
    assert_eq!(*payload_of("org.example/native/exact"), "x".repeat(8192));
    assert_eq!(*payload_of("org.example/native/longer"), "y".repeat(8192));
}

#[test]
fn every_error_path_answers_its_documented_code_and_loses_nothing_else() {
    let d = TestDaemon::start(HOLD);
    let scratch = tempfile::tempdir().unwrap();
    let out = run(
        &c_program("errors"),
        &[&cfg(&d), scratch.path().to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stdout_of(&out));
    assert!(
        text(&out.stdout).ends_with("0 failed\n"),
        "{}",
        stdout_of(&out)
    );
    // The good record went through twice, untouched by the refusals
    // around it: severity 99 clamped, the event id and payload it was given.
    let recs = d.wait_spool(2);
    for r in &recs {
        assert_eq!(
            r.headers.get(Header::Classification),
            "org.example/native/errors"
        );
        assert_eq!(r.headers.get(Header::Severity), "4");
        assert_eq!(
            r.headers.get(Header::EventId),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(r.payload, "errors\n");
    }
    assert!(d.log().contains("telemd ready"), "the daemon is unharmed");
}

/// A client config naming `socket` and an opt-in file (created or not).
fn client_config(
    dir: &Path,
    socket: &Path,
    opted_in: bool,
    metadata_root: Option<&Path>,
) -> PathBuf {
    let opt_in = dir.join("opt-in");
    if opted_in {
        std::fs::write(&opt_in, "").unwrap();
    }
    let mut text = format!(
        "socket_path = \"{}\"\nopt_in_file = \"{}\"\n",
        socket.display(),
        opt_in.display()
    );
    if let Some(root) = metadata_root {
        text.push_str(&format!("metadata_root = \"{}\"\n", root.display()));
    }
    let path = dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_daemon_that_is_down_stalled_or_not_opted_in_is_an_error_code_within_the_timeout() {
    let send = c_program("send");
    let dir = tempfile::tempdir().unwrap();
    let rc = |config: &Path| {
        let t = Instant::now();
        let out = run(&send, &["-f", config.to_str().unwrap()]);
        (text(&out.stdout), t.elapsed())
    };

    // Nothing at the socket path.
    let none = dir.path().join("none");
    std::fs::create_dir(&none).unwrap();
    let c = client_config(&none, &none.join("telem-0"), true, None);
    assert_eq!(rc(&c).0, format!("rc=-{}\n", libc::ENOENT));

    // A socket file nobody listens on (a daemon that died).
    let stale = dir.path().join("stale");
    std::fs::create_dir(&stale).unwrap();
    drop(UnixListener::bind(stale.join("telem-0")).unwrap());
    let c = client_config(&stale, &stale.join("telem-0"), true, None);
    assert_eq!(rc(&c).0, format!("rc=-{}\n", libc::ECONNREFUSED));

    // Not opted in: refused before any connection.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let listener = UnixListener::bind(out.join("telem-0")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let c = client_config(&out, &out.join("telem-0"), false, None);
    assert_eq!(rc(&c).0, format!("rc=-{}\n", libc::ECONNREFUSED));
    assert!(listener.accept().is_err(), "no connection was made");

    // A daemon that stopped accepting: its backlog is full, so connect()
    // would wait forever; the library gives up after its timeout.
    let stalled = dir.path().join("stalled");
    std::fs::create_dir(&stalled).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    sock.bind(&socket2::SockAddr::unix(stalled.join("telem-0")).unwrap())
        .unwrap();
    sock.listen(0).unwrap();
    let mut fillers = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&socket2::SockAddr::unix(stalled.join("telem-0")).unwrap()) {
            Ok(()) => fillers.push(s),
            Err(_) => break,
        }
        assert!(fillers.len() < 1000, "the backlog never filled");
    }
    let c = client_config(&stalled, &stalled.join("telem-0"), true, None);
    let (got, took) = rc(&c);
    assert_eq!(got, format!("rc=-{}\n", libc::ETIMEDOUT));
    // The library's timeout is one second; ten leaves room for a loaded
    // machine and still catches a send that blocks.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A directory with the host facts of the machine the legacy captures were
/// made on (no DMI, Debian 12, an AMD EPYC): the library reads its headers
/// from here when the config names it as `metadata_root`.
fn capture_machine(dir: &Path) -> PathBuf {
    let root = dir.join("machine");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("proc/cpuinfo"),
        "processor\t: 0\nmodel name\t: AMD EPYC\n",
    )
    .unwrap();
    root
}

/// Accepts one connection at `socket` and returns every byte sent on it.
fn capture_one(listener: &UnixListener) -> Vec<u8> {
    use std::io::Read;
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

/// The legacy capture with what depends on the sending machine and moment
/// (time, architecture, kernel, the config file's path) taken from `sent`:
/// everything else must be equal byte for byte.
fn expected_from(fixture_name: &str, sent: &Record) -> Vec<u8> {
    let mut want = parse_frame(&fixture(fixture_name)).unwrap();
    for h in [
        Header::CreationTimestamp,
        Header::Arch,
        Header::KernelVersion,
    ] {
        want.headers.set(h, sent.headers.get(h));
    }
    if want.config.is_some() {
        want.config = sent.config.clone();
    }
    encode_frame(&want)
}

#[test]
fn frames_with_a_config_file_equal_the_legacy_capture_byte_for_byte() {
    let send = c_program("send");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("telem-0");
    let listener = UnixListener::bind(&socket).unwrap();
    let machine = capture_machine(dir.path());
    let config = client_config(dir.path(), &socket, true, Some(&machine));
    let want = parse_frame(&fixture("frame-hprobe-cfg.bin")).unwrap();
    let sender = std::thread::spawn({
        let send = send.clone();
        let config = config.clone();
        let id = want.headers.get(Header::EventId).to_owned();
        move || {
            run(
                &send,
                &[
                    "-f",
                    config.to_str().unwrap(),
                    "-c",
                    "org.clearlinux/hello/world",
                    "-e",
                    &id,
                    "-p",
                    "hello\n",
                ],
            )
        }
    });
    let got = capture_one(&listener);
    let out = sender.join().unwrap();
    assert!(out.status.success(), "{}", stdout_of(&out));
    let sent = parse_frame(&got).unwrap();
    assert_eq!(sent.config.as_deref(), config.to_str());
    assert_eq!(
        got,
        expected_from("frame-hprobe-cfg.bin", &sent),
        "sent:\n{}",
        String::from_utf8_lossy(&got)
    );
}

/// An `/etc` for [`in_private_etc`]: the loader's cache (the programs
/// find libc through it) and `telemetrics/` with `files` in it.
fn private_etc(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let etc = dir.join("etc");
    std::fs::create_dir_all(etc.join("telemetrics")).unwrap();
    std::fs::copy("/etc/ld.so.cache", etc.join("ld.so.cache")).unwrap();
    for (name, text) in files {
        std::fs::write(etc.join("telemetrics").join(name), text).unwrap();
    }
    etc
}

/// Runs `program ARGS` in a private mount namespace where `etc` is `/etc`:
/// the library's default paths (`/etc/telemetrics/...`) are the test's,
/// and nothing outside the namespace changes.
fn in_private_etc(etc: &Path, program: &Path, args: &[&str]) -> Output {
    let script = format!(
        "mount --make-rprivate / && mount --bind {} /etc && exec \"$0\" \"$@\"",
        etc.display()
    );
    Command::new("unshare")
        .args(["--mount", "sh", "-ec", &script])
        .arg(program)
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root: runs the C program in a mount namespace where /etc holds the default config"]
fn frames_through_the_default_config_lookup_equal_the_legacy_captures_byte_for_byte() {
    assert_root("mounts a private /etc");
    let send = c_program("send");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("telem-0");
    let listener = UnixListener::bind(&socket).unwrap();
    let machine = capture_machine(dir.path());
    // The /etc the program sees: only the loader's cache and the legacy
    // default config, /etc/telemetrics/telemetrics.conf (INI, as the seed
    // installed it).
    let conf = format!(
        "[settings]\nsocket_path={}\nmetadata_root={}\n",
        socket.display(),
        machine.display()
    );
    let etc = private_etc(dir.path(), &[("opt-in", ""), ("telemetrics.conf", &conf)]);
    let payloads = dir.path().join("payloads");
    std::fs::create_dir(&payloads).unwrap();
    for name in [
        "frame-record-gen.bin",
        "frame-record-gen-multiline.bin",
        "frame-record-gen-8192.bin",
    ] {
        let want = parse_frame(&fixture(name)).unwrap();
        let payload_file = payloads.join(name);
        std::fs::write(&payload_file, &want.payload).unwrap();
        let h = |x| want.headers.get(x).to_owned();
        let args = [
            "-c".to_owned(),
            h(Header::Classification),
            "-s".into(),
            h(Header::Severity),
            "-v".into(),
            h(Header::PayloadFormatVersion),
            "-e".into(),
            h(Header::EventId),
            "-P".into(),
            payload_file.display().to_string(),
        ];
        let (etc, send) = (etc.clone(), send.clone());
        let sender = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            in_private_etc(&etc, &send, &args)
        });
        let got = capture_one(&listener);
        let out = sender.join().unwrap();
        assert!(out.status.success(), "{name}: {}", stdout_of(&out));
        let sent = parse_frame(&got).unwrap();
        assert_eq!(
            sent.config, None,
            "{name}: no CFG: without tm_set_config_file"
        );
        assert_eq!(
            got,
            expected_from(name, &sent),
            "{name}: sent:\n{}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn random_calls_under_valgrind_neither_fault_nor_leak() {
    let d = TestDaemon::start("record_burst_limit = 0\n");
    let fuzz = c_program("fuzz");
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--quiet",
        ])
        .arg(&fuzz)
        .args([&cfg(&d), "20261126", "1000"])
        .output()
        .expect("valgrind is installed (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", stdout_of(&out));
    // The random inputs got past the checks often enough to exercise
    // creation, sending and freeing, not just the refusals.
    let summary = text(&out.stdout);
    let counts: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        matches!(counts[..], [1000, created, sent] if created >= 50 && sent >= 5),
        "{summary}"
    );
}

#[test]
fn records_made_in_forked_children_have_their_own_event_ids() {
    let d = TestDaemon::start(HOLD);
    let out = run(&c_program("forked"), &[&cfg(&d), "4"]);
    assert!(out.status.success(), "{}", stdout_of(&out));
    let recs = d.wait_spool(5);
    let mut ids: Vec<&str> = recs
        .iter()
        .map(|r| r.headers.get(Header::EventId))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "event ids repeat across fork: {ids:?}");
}

#[test]
#[ignore = "needs root: a config file owned by another uid, and a private /etc for the default opt-in file"]
fn a_config_file_someone_else_owns_moves_only_the_socket() {
    assert_root("chowns a file to another uid and mounts a private /etc");
    let send = c_program("send");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("telem-0");
    let listener = UnixListener::bind(&socket).unwrap();
    let machine = dir.path().join("machine");
    std::fs::create_dir_all(machine.join("etc")).unwrap();
    std::fs::write(machine.join("etc/os-release"), "ID=planted\n").unwrap();
    // A privileged probe handed a config its user wrote: it names the
    // socket (as the seed allowed), an opt-in file that does not exist and a
    // metadata root of its own.
    let named = dir.path().join("user.toml");
    std::fs::write(
        &named,
        format!(
            "socket_path = \"{}\"\nopt_in_file = \"{}/absent\"\nmetadata_root = \"{}\"\n",
            socket.display(),
            dir.path().display(),
            machine.display()
        ),
    )
    .unwrap();
    let etc = private_etc(dir.path(), &[("opt-in", "")]);
    let named_arg = named.display().to_string();
    let args = ["-f", named_arg.as_str(), "-c", "org.example/native/owned"];

    // Owned by nobody (65534): only the socket is taken from it.
    std::os::unix::fs::chown(&named, Some(65534), Some(65534)).unwrap();
    let sender = {
        let (etc, send) = (etc.clone(), send.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            in_private_etc(&etc, &send, &args)
        })
    };
    let got = capture_one(&listener);
    let out = sender.join().unwrap();
    assert!(out.status.success(), "{}", stdout_of(&out));
    let sent = parse_frame(&got).unwrap();
    assert_ne!(
        sent.headers.get(Header::SystemName),
        "planted",
        "metadata_root ignored"
    );
    assert_eq!(sent.config.as_deref(), Some(named_arg.as_str()));

    // Owned by root: the admin's file, so all of it counts: the opt-in
    // file it names is absent, and nothing is sent.
    std::os::unix::fs::chown(&named, Some(0), Some(0)).unwrap();
    let out = in_private_etc(&etc, &send, &args);
    assert_eq!(
        text(&out.stdout),
        format!("rc=-{}\n", libc::ECONNREFUSED),
        "{}",
        stdout_of(&out)
    );
}
