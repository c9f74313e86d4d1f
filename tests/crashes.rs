//! Crash reports end to end: a real program's core (compiled by gcc, dumped
//! by gdb) piped into `telem-crash-handler` exactly as the kernel would,
//! with a dev `telemd` running the crash-symbolizer component built from
//! the repo; the filters; the daemon being down; hostile cores; and
//! `telemctl crash symbolize`.

#[path = "support/eu_stack.rs"]
mod eu_stack;
#[path = "support/hostile_cores.rs"]
mod hostile_cores;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{probe_wasm, wait_until, TestDaemon, HOLD};
use telem_core::control::{ProbeInfo, ProbeState};
use telem_core::record::{Header, Record};

use support::CRASH_HANDLER as HANDLER;
use support::TELEMCTL;

struct Program {
    dir: tempfile::TempDir,
    exe: PathBuf,
    core: PathBuf,
    pid: u32,
}

/// Compiles a three-thread program that segfaults two calls deep and dumps
/// its core with gdb.
fn crashed_program() -> Program {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("crashme.c");
    std::fs::write(
        &src,
        "#include <pthread.h>\n#include <stdint.h>\n#include <unistd.h>\n\
         static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }\n\
         __attribute__((noinline)) static void level3(int *p) { *p = 42; }\n\
         __attribute__((noinline)) static void level2(int *p) { level3(p); __asm__ volatile(\"\"); }\n\
         int main(int argc, char **argv) {\n  (void)argv;\n  pthread_t t;\n\
           pthread_create(&t, 0, idle, 0);\n  usleep(50000);\n\
           level2((int *)(uintptr_t)(argc - 1));\n  return 0;\n}\n",
    )
    .unwrap();
    let exe = dir.path().join("crashme");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success());
    let core = dir.path().join("core");
    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "run",
            "-ex",
            "info inferiors",
            "-ex",
        ])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&exe)
        .output()
        .expect("gdb");
    assert!(core.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find_map(|l| l.split("process ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(4242);
    Program {
        dir,
        exe,
        core,
        pid,
    }
}

/// A dev daemon with the crash-symbolizer loaded; `filters_off` creates the
/// no-privacy-filters file; the program's directory is granted to the probe
/// (outside /usr, as a test program must be).
fn daemon(prog: &Program, filters_off: bool) -> TestDaemon {
    let d = configured(prog, filters_off, "root");
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(60), || d.socket().exists()),
        "{}",
        d.log()
    );
    d
}

/// The config of [`daemon`], not started; `user` is the handler's service
/// user (root when the tests run as root, so it can read back the files).
fn configured(prog: &Program, filters_off: bool, user: &str) -> TestDaemon {
    configured_with(prog, filters_off, user, "")
}

/// [`configured`] with more top-level config lines.
fn configured_with(prog: &Program, filters_off: bool, user: &str, extra: &str) -> TestDaemon {
    let d = TestDaemon::prepare(&format!("{HOLD}{extra}"));
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config_path)
        .unwrap();
    writeln!(
        cfg,
        "no_privacy_filters_file = \"{}\"\nservice_user = \"{user}\"\n[probes.crash-symbolizer]\nread_paths = [\"/usr\", \"{}\"]\ntimeout_ms = 5000",
        d.path("no-filters").display(),
        prog.dir.path().display()
    )
    .unwrap();
    if filters_off {
        std::fs::write(d.path("no-filters"), "").unwrap();
    }
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(
        probe_wasm("crash_symbolizer"),
        d.path("probes/crash-symbolizer.wasm"),
    )
    .unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    d
}

/// Runs the handler as the kernel would: core on stdin, `%e %E %s %P`.
fn handle(d: &TestDaemon, prog: &Program, core: &Path, extra: &[&str]) -> std::process::Output {
    handle_as(d, &prog.exe, prog.pid, core, extra)
}

/// [`handle`], which must succeed (its stderr shown if not).
fn handle_ok(d: &TestDaemon, prog: &Program, core: &Path, extra: &[&str]) -> std::process::Output {
    let out = handle(d, prog, core, extra);
    assert!(
        out.status.success(),
        "handler failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn handle_as(
    d: &TestDaemon,
    exe: &Path,
    pid: u32,
    core: &Path,
    extra: &[&str],
) -> std::process::Output {
    feed(
        spawn_handler(d, OsStr::new("crashme"), exe, pid, extra),
        core,
    )
}

/// Starts the handler as the kernel would (`%e %E %s %P`), its core not
/// given yet.
fn spawn_handler(
    d: &TestDaemon,
    name: &OsStr,
    exe: &Path,
    pid: u32,
    extra: &[&str],
) -> std::process::Child {
    let exe = exe.to_str().unwrap().replace('/', "!");
    Command::new(HANDLER)
        .arg("-p")
        .arg(name)
        .args(["-E", &exe, "-s", "11", "-P"])
        .arg(pid.to_string())
        .arg("-f")
        .arg(&d.config_path)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Pipes the core into a started handler and waits for it.
fn feed(mut child: std::process::Child, core: &Path) -> std::process::Output {
    let bytes = std::fs::read(core).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The handler may stop reading (a filter): a broken pipe is fine.
    let _ = stdin.write_all(&bytes);
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn inbox_entries(d: &TestDaemon) -> Vec<String> {
    std::fs::read_dir(d.path("state/crash-inbox"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn class(r: &Record) -> (&str, &str) {
    (
        r.headers.get(Header::Classification),
        r.headers.get(Header::Severity),
    )
}

#[test]
fn a_piped_core_becomes_a_symbolized_record() {
    let prog = crashed_program();
    let d = daemon(&prog, true);
    let out = handle(&d, &prog, &prog.core, &["-v"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let recs = d.wait_spool(1);
    let r = &recs[0];
    assert_eq!(class(r), ("org.clearlinux/crash/clr", "3"), "{}", r.payload);
    let exe = prog.exe.to_str().unwrap();
    assert!(
        r.payload.starts_with(&format!(
            "Process: {exe}\nPID: {}\nSignal: 11\nSignature: sym1:",
            prog.pid
        )),
        "{}",
        r.payload
    );
    assert!(r.payload.contains("\n\nBacktrace (TID "), "{}", r.payload);
    let threads = payload_threads(&r.payload);
    let src = prog.dir.path().join("crashme.c");
    let crashing = &threads[0].1;
    assert_eq!(
        crashing[..2],
        [
            Frame {
                function: "level3".into(),
                module: exe.into(),
                source: Some(format!("{}:5", src.display())),
            },
            Frame {
                function: "level2".into(),
                module: exe.into(),
                source: Some(format!("{}:6", src.display())),
            },
        ],
        "{}",
        r.payload
    );
    // The idle thread waits in libc's pause().
    assert!(
        threads[1..].iter().any(|(_, fs)| fs
            .iter()
            .any(|f| f.function == "pause" && f.module == "libc.so.6")),
        "{}",
        r.payload
    );
    // The component's payload, as the collector gets it, against eu-stack
    // on the same core: each thread's frames in the program, and each
    // thread's source lines, the same and in the same order.
    let in_program = |fs: &[Frame]| -> Vec<String> {
        fs.iter()
            .filter(|f| f.module == exe || f.module == "crashme")
            .map(|f| f.function.clone())
            .collect()
    };
    let sources =
        |fs: &[Frame]| -> Vec<String> { fs.iter().filter_map(|f| f.source.clone()).collect() };
    assert_eq!(
        in_program(crashing),
        ["level3", "level2", "main", "_start"],
        "{}",
        r.payload
    );
    let (mut ours, mut theirs) = (threads.clone(), eu_stack(&prog));
    ours.sort_by_key(|t| t.0);
    theirs.sort_by_key(|t| t.0);
    assert_eq!(
        ours.iter().map(|t| t.0).collect::<Vec<_>>(),
        theirs.iter().map(|t| t.0).collect::<Vec<_>>(),
        "threads\n{}",
        r.payload
    );
    for ((tid, ours), (_, theirs)) in ours.iter().zip(&theirs) {
        assert_eq!(
            in_program(ours),
            in_program(theirs),
            "TID {tid}\n{}",
            r.payload
        );
        assert_eq!(sources(ours), sources(theirs), "TID {tid}\n{}", r.payload);
    }
    // -v printed the payload once the record existed.
    assert!(stdout.contains(&r.payload), "{stdout}");
    // The entry (core included) is gone once handled.
    assert!(
        wait_until(Duration::from_secs(5), || inbox_entries(&d).is_empty()),
        "{:?}",
        inbox_entries(&d)
    );
}

/// One frame of a backtrace: function, module, `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Frame {
    function: String,
    module: String,
    source: Option<String>,
}

/// The threads of a crash record's payload: `Backtrace (TID n):` then lines
/// `#k function() - [module] - file:line (found by ...)`.
fn payload_threads(payload: &str) -> Vec<(u32, Vec<Frame>)> {
    let mut threads: Vec<(u32, Vec<Frame>)> = Vec::new();
    for line in payload.lines() {
        if let Some(tid) = line
            .strip_prefix("Backtrace (TID ")
            .and_then(|l| l.strip_suffix("):"))
        {
            threads.push((tid.parse().unwrap(), Vec::new()));
            continue;
        }
        let Some((_, frame)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let (function, rest) = frame.split_once(" - [").expect(line);
        let (module, rest) = rest.split_once(']').expect(line);
        let rest = rest.split(" (found by ").next().unwrap();
        threads.last_mut().expect(line).1.push(Frame {
            function: function.trim_end_matches("()").to_owned(),
            module: module.to_owned(),
            source: rest.strip_prefix(" - ").map(str::to_owned),
        });
    }
    threads
}

/// eu-stack (elfutils) on the program's core, as [`Frame`]s (versioned
/// symbol names cut at `@`).
fn eu_stack(prog: &Program) -> Vec<(u32, Vec<Frame>)> {
    eu_stack::eu_stack(&prog.core, &prog.exe, None)
        .into_iter()
        .map(|(tid, frames)| {
            let frames = frames
                .into_iter()
                .map(|f| Frame {
                    function: f.name.split('@').next().unwrap_or_default().to_owned(),
                    module: f.module,
                    source: f.source,
                })
                .collect();
            (tid, frames)
        })
        .collect()
}

#[test]
fn third_party_crashes_send_the_short_record_and_keep_no_core() {
    let prog = crashed_program();
    let d = daemon(&prog, false);
    handle_ok(&d, &prog, &prog.core, &[]);
    let recs = d.wait_spool(1);
    assert_eq!(class(&recs[0]), ("org.clearlinux/crash/unknown", "2"));
    assert_eq!(recs[0].payload, "Crash from third party");
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));
    // A crash loop of a filtered program is bounded too.
    let again = handle_ok(&d, &prog, &prog.core, &[]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("1 repeats dropped so far"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The handler drops a repeat before writing anything: nothing reaches
    // the inbox, so nothing can be announced to telemd later.
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));
    assert_eq!(d.spool_records().len(), 1);
    let kept: u64 = walk(d.path("state").as_path());
    assert!(
        kept < 4096,
        "a core was kept somewhere under state/: {kept} bytes"
    );
}

fn walk(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else if e.file_name() == "core" {
                        m.len()
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_crash_waits_in_the_inbox_while_telemd_is_down() {
    let prog = crashed_program();
    let mut d = daemon(&prog, true);
    d.stop();
    let out = handle_ok(&d, &prog, &prog.core, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waits in the inbox"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = inbox_entries(&d);
    assert_eq!(entries.len(), 1);
    let entry = d.path("state/crash-inbox").join(&entries[0]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(entry.join("core"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(entry.join("core")).unwrap().len(),
        std::fs::metadata(&prog.core).unwrap().len()
    );
    // A repeat of the same program within the window is dropped.
    let again = handle_ok(&d, &prog, &prog.core, &[]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("1 repeats dropped so far"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(inbox_entries(&d).len(), 1);
    d.spawn_with(Command::new(support::TELEMD));
    let recs = d.wait_spool(1);
    assert_eq!(class(&recs[0]), ("org.clearlinux/crash/clr", "3"));
    assert!(wait_until(Duration::from_secs(5), || inbox_entries(&d).is_empty()));
}

#[test]
fn a_crash_waits_for_a_crash_probe_and_goes_to_it_once_loaded() {
    let prog = crashed_program();
    let mut d = configured(&prog, true, "root");
    let wasm = d.path("probes/crash-symbolizer.wasm");
    let held = d.path("crash-symbolizer.wasm");
    std::fs::rename(&wasm, &held).unwrap();
    d.spawn_with(Command::new(support::TELEMD));
    assert!(
        wait_until(Duration::from_secs(60), || d.socket().exists()),
        "{}",
        d.log()
    );
    handle_ok(&d, &prog, &prog.core, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || d.log().contains(
            "waits in the inbox until a probe that handles crashes is loaded"
        )),
        "{}",
        d.log()
    );
    assert_eq!(inbox_entries(&d).len(), 1);
    assert!(d.spool_names().is_empty());
    // The admin drops the crash probe in: the waiting crash goes to it.
    std::fs::copy(&held, d.path("probes/.crash-symbolizer.tmp")).unwrap();
    std::fs::rename(d.path("probes/.crash-symbolizer.tmp"), &wasm).unwrap();
    // Loading includes compiling it (a debug build of telemd here).
    assert!(
        wait_until(Duration::from_secs(120), || d.log().lines().any(|l| l
            .contains("loaded")
            && l.contains("crash-symbolizer.wasm"))),
        "{}",
        d.log()
    );
    let recs = d.wait_spool(1);
    assert_eq!(
        class(&recs[0]),
        ("org.clearlinux/crash/clr", "3"),
        "{}",
        recs[0].payload
    );
    assert!(
        recs[0].payload.contains("level3() - ["),
        "{}",
        recs[0].payload
    );
    assert!(
        wait_until(Duration::from_secs(5), || inbox_entries(&d).is_empty()),
        "{:?}",
        inbox_entries(&d)
    );
}

/// Hostile cores: each ends in an error record, within the probe's
/// deadline, and the daemon keeps serving.
#[test]
fn hostile_cores_end_in_error_records() {
    let prog = crashed_program();
    let good = std::fs::read(&prog.core).unwrap();
    let phoff = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(good[56..58].try_into().unwrap()) as usize;
    let note = (0..phnum)
        .map(|i| phoff + 56 * i)
        .find(|&p| u32::from_le_bytes(good[p..p + 4].try_into().unwrap()) == 4)
        .map(|p| u64::from_le_bytes(good[p + 8..p + 16].try_into().unwrap()) as usize)
        .expect("a PT_NOTE");
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 3].to_vec(), "Error: "),
        ("zero-length", Vec::new(), "Error: not an ELF file"),
    ];
    let mut wrong_machine = good.clone();
    wrong_machine[18..20].copy_from_slice(&40u16.to_le_bytes());
    cases.push((
        "wrong machine",
        wrong_machine,
        "Error: unsupported machine 40",
    ));
    let mut note_past_end = good.clone();
    note_past_end[note + 4..note + 8].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    cases.push(("note size past the end", note_past_end, "past the end"));
    // NT_FILE: find its header by type and claim 4e9 entries.
    let mut huge_file = good.clone();
    let nt_file = (note..note + (1 << 20))
        .step_by(4)
        .find(|&o| {
            huge_file.get(o + 8..o + 12) == Some(&0x4649_4c45u32.to_le_bytes()[..])
                && huge_file.get(o + 12..o + 17) == Some(&b"CORE\0"[..])
        })
        .expect("NT_FILE note");
    let desc = nt_file + 12 + 8;
    huge_file[desc..desc + 8].copy_from_slice(&4_000_000_000u64.to_le_bytes());
    cases.push((
        "NT_FILE count in the billions",
        huge_file,
        "NT_FILE claims 4000000000 entries",
    ));

    let d = daemon(&prog, true);
    for (i, (what, bytes, expect)) in cases.iter().enumerate() {
        let core = prog.dir.path().join(format!("hostile-{i}"));
        std::fs::write(&core, bytes).unwrap();
        // Distinct executables, so the repeat filter does not drop them.
        let exe = prog.exe.with_file_name(format!("crashme{i}"));
        let started = std::time::Instant::now();
        let out = handle_as(&d, &exe, prog.pid, &core, &["-v"]);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        let recs = d.wait_spool(i + 1);
        let r = recs
            .iter()
            .find(|r| r.payload.contains(&format!("crashme{i}\n")))
            .unwrap_or_else(|| panic!("{what}: no record: {:?}\n{}", recs, d.log()));
        assert_eq!(
            class(r),
            ("org.clearlinux/crash/error", "4"),
            "{what}: {}",
            r.payload
        );
        assert!(r.payload.contains(expect), "{what}: {}", r.payload);
    }
    // Still serving: a native record and a good crash go through.
    support::send_raw(&d.socket(), &support::fixture("frame-record-gen.bin"));
    handle_ok(&d, &prog, &prog.core, &[]);
    let recs = d.wait_spool(cases.len() + 2);
    assert!(recs
        .iter()
        .any(|r| class(r) == ("org.clearlinux/crash/clr", "3")));
}

#[test]
fn telemctl_crash_symbolize_prints_the_payload_without_sending() {
    let prog = crashed_program();
    let d = TestDaemon::prepare("");
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(
        probe_wasm("crash_symbolizer"),
        d.path("probes/crash-symbolizer.wasm"),
    )
    .unwrap();
    let moved = prog.dir.path().join("moved-away");
    std::fs::copy(&prog.exe, &moved).unwrap();
    std::fs::remove_file(&prog.exe).unwrap();
    let out = Command::new(TELEMCTL)
        .arg("-f")
        .arg(&d.config_path)
        .args(["crash", "symbolize"])
        .arg(&prog.core)
        .arg("--exe")
        .arg(&moved)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("org.clearlinux/crash/clr"), "{stdout}");
    assert!(stdout.contains("#0 level3() - ["), "{stdout}");
    assert!(stdout.contains("crashme.c:5"), "{stdout}");
    // Nothing was spooled or sent.
    assert!(support::spool_names(&d.path("spool")).is_empty());
    // A file that is no core gets a clear error.
    let out = Command::new(TELEMCTL)
        .arg("-f")
        .arg(&d.config_path)
        .args(["crash", "symbolize"])
        .arg(prog.exe.with_file_name("crashme.c"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Error: not an ELF file"), "{stdout}");
}

/// As root (how the kernel runs it), the handler drops to the service user
/// before it keeps anything: the core belongs to that user, mode 0600.
#[test]
#[ignore = "needs root: the handler drops privileges"]
fn a_root_handler_keeps_the_core_as_the_service_user() {
    support::assert_root("the handler drops privileges");
    let prog = crashed_program();
    let d = configured(&prog, true, "nobody");
    // SAFETY: valid C string; the entry is read at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "user nobody");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let inbox = d.path("state/crash-inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    chown(&inbox, Some(uid), Some(gid)).unwrap();
    handle_ok(&d, &prog, &prog.core, &[]);
    let entries = inbox_entries(&d);
    assert_eq!(entries.len(), 1);
    for f in ["core", "crash.json"] {
        let m = std::fs::metadata(inbox.join(&entries[0]).join(f)).unwrap();
        assert_eq!(m.uid(), uid, "{f} is the service user's");
        assert_eq!(m.mode() & 0o777, 0o600, "{f}");
    }
    let meta: telem_core::crash_inbox::CrashMeta =
        serde_json::from_slice(&std::fs::read(inbox.join(&entries[0]).join("crash.json")).unwrap())
            .unwrap();
    assert_eq!(meta.signal, Some(11));
    assert_eq!(meta.process_path.as_deref(), prog.exe.to_str());
    assert!(!meta.core_truncated);
}

/// A full disk loses this crash, cleanly: an error naming the cause, no
/// partial entry left behind.
#[test]
#[ignore = "needs root: mounts a small tmpfs"]
fn a_full_disk_loses_the_crash_cleanly() {
    support::assert_root("mounts a small tmpfs");
    let prog = crashed_program();
    // No floor: the disk fills up while the core is copied.
    let d = configured_with(&prog, true, "root", "crash_min_free_mb = 0\n");
    let inbox = d.path("state/crash-inbox");
    let _guard = support::mount_small_tmpfs(&inbox, "256k");
    let out = handle(&d, &prog, &prog.core, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("lost") && err.contains("No space left on device"),
        "{err}"
    );
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));
}

/// An inbox replaced by a symlink (say, by someone who got the service
/// user's rights) is not followed: the handler refuses and writes nothing
/// where the link points.
#[test]
fn a_symlinked_inbox_is_refused() {
    let prog = crashed_program();
    let d = configured(&prog, true, "root");
    let elsewhere = d.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(d.path("state")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, d.path("state/crash-inbox")).unwrap();
    let out = handle(&d, &prog, &prog.core, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("crash-inbox"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Crashes arriving while the inbox is over its cap are dropped, counted.
#[test]
fn a_full_inbox_drops_further_crashes() {
    let prog = crashed_program();
    let d = configured_with(&prog, true, "root", "crash_inbox_max_size = 65536\n");
    // telemd is not running: the first crash stays in the inbox.
    handle_ok(&d, &prog, &prog.core, &[]);
    assert_eq!(inbox_entries(&d).len(), 1);
    let other = prog.exe.with_file_name("another");
    let out = handle_as(&d, &other, prog.pid, &prog.core, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("crash_inbox_max_size = 65536") && err.contains("(1 dropped so far)"),
        "{err}"
    );
    assert_eq!(inbox_entries(&d).len(), 1);
}

const MIB: u64 = 1 << 20;

/// A stand-in for [`crashed_program`] when the core's content does not
/// matter (telemd is not running, or the core is not kept): `bytes` of
/// generated data, an executable path that is never run.
fn generated_core(bytes: u64) -> Program {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core");
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    std::fs::write(&core, data).unwrap();
    Program {
        exe: dir.path().join("crashme"),
        core,
        pid: 4242,
        dir,
    }
}

/// Bytes held by the inbox's entries (what its cap limits).
fn inbox_total(d: &TestDaemon) -> u64 {
    let inbox = d.path("state/crash-inbox");
    inbox_entries(d)
        .iter()
        .flat_map(|e| std::fs::read_dir(inbox.join(e)).unwrap())
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum()
}

fn meta_of(d: &TestDaemon, entry: &str) -> telem_core::crash_inbox::CrashMeta {
    let p = d.path("state/crash-inbox").join(entry).join("crash.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Twenty crashes at once cannot pass the inbox cap together: each is
/// admitted (or dropped) under the inbox lock against what the inbox holds
/// plus what the crashes being copied may still write.
#[test]
fn concurrent_crashes_stay_within_the_inbox_cap() {
    let prog = generated_core(8 * MIB);
    let cap = 20 * MIB;
    let d = configured_with(
        &prog,
        true,
        "root",
        &format!(
            "crash_inbox_max_size = {cap}\ncrash_max_core_size = {}\ncrash_min_free_mb = 0\n",
            8 * MIB
        ),
    );
    // telemd is not running: whatever is kept stays in the inbox. All
    // twenty are admitted or dropped before any of them gets its core.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let exe = prog.exe.with_file_name(format!("crashme{i}"));
            spawn_handler(&d, OsStr::new("crashme"), &exe, prog.pid, &[])
        })
        .collect();
    let feeders: Vec<_> = children
        .into_iter()
        .map(|c| {
            let core = prog.core.clone();
            std::thread::spawn(move || feed(c, &core))
        })
        .collect();
    let mut dropped = 0;
    for f in feeders {
        let out = f.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        if err.contains("crash_inbox_max_size") {
            dropped += 1;
        }
    }
    let kept = inbox_entries(&d).len();
    let total = inbox_total(&d);
    assert!(
        total <= cap + 8 * MIB + 64 * 1024,
        "{kept} crashes kept, {total} bytes in the inbox"
    );
    assert!(
        kept >= 2,
        "{kept} kept: the cap leaves room for two at least"
    );
    assert_eq!(kept + dropped, 20);
    for e in inbox_entries(&d) {
        assert_eq!(meta_of(&d, &e).core_bytes, 8 * MIB);
    }
}

/// A crash that would leave less than `crash_min_free_mb` free on the
/// inbox's filesystem is dropped, counted, whether that is known before
/// its core comes or only once it passes what is left.
#[test]
#[ignore = "needs root: mounts a small tmpfs"]
fn crashes_leave_the_free_space_floor_free() {
    support::assert_root("mounts a small tmpfs");
    let prog = generated_core(8 * MIB);
    let d = configured_with(&prog, true, "root", "crash_min_free_mb = 12\n");
    let inbox = d.path("state/crash-inbox");
    let _guard = support::mount_small_tmpfs(&inbox, "16m");
    // 16 MiB free, 12 to stay free: an 8 MiB core does not fit.
    let out = handle_as(&d, &prog.exe.with_file_name("a"), prog.pid, &prog.core, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("crash_min_free_mb = 12") && err.contains("(1 dropped so far)"),
        "{err}"
    );
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));
    // A small one does.
    let small = prog.dir.path().join("small");
    std::fs::write(&small, vec![1u8; MIB as usize]).unwrap();
    handle_ok(&d, &prog, &small, &[]);
    assert_eq!(inbox_entries(&d).len(), 1);
    // Below the floor already: dropped before the core is read.
    std::fs::write(inbox.join(".filler"), vec![0u8; 4 * MIB as usize]).unwrap();
    let out = handle_as(&d, &prog.exe.with_file_name("b"), prog.pid, &small, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("crash_min_free_mb = 12") && err.contains("(2 dropped so far)"),
        "{err}"
    );
    assert_eq!(inbox_entries(&d).len(), 1);
}

/// `%d` = 2: the kernel dumped a process that was not dumpable (setuid)
/// because `fs.suid_dumpable` = 2: its core is not kept.
#[test]
fn a_core_dumped_in_suid_mode_is_not_kept() {
    let prog = generated_core(256 * 1024);
    let d = daemon(&prog, true);
    handle_ok(&d, &prog, &prog.core, &["-d", "2", "-F", ""]);
    let recs = d.wait_spool(1);
    assert_eq!(class(&recs[0]), ("org.clearlinux/crash/unknown", "2"));
    assert!(
        recs[0].payload.contains("privileged"),
        "{}",
        recs[0].payload
    );
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));
    assert!(walk(d.path("state").as_path()) < 4096);
}

/// `%F`: the pidfd must be the crashed process (`%P`), still there;
/// otherwise no core is kept. Kernels without `%d`/`%F` expand them to
/// nothing: as if they were not given.
#[test]
fn a_pidfd_of_another_process_is_refused() {
    let prog = generated_core(256 * 1024);
    let d = configured(&prog, true, "root");
    let mut child = support::KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = child.0.id();
    assert_ne!(pid, prog.pid);
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) };
    // Linux 5.3 and later; the handler's -F (%F) needs it as much.
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let fd = fd as i32;
    // SAFETY: our own fd; the handler inherits it as the kernel's would be.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let fds = fd.to_string();
    let exe = |n: &str| prog.exe.with_file_name(n);

    let out = handle_as(
        &d,
        &exe("a"),
        prog.pid,
        &prog.core,
        &["-d", "1", "-F", &fds],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("pidfd"), "{err}");
    assert!(inbox_entries(&d).is_empty(), "{:?}", inbox_entries(&d));

    let out = handle_as(&d, &exe("b"), pid, &prog.core, &["-d", "1", "-F", &fds]);
    assert!(out.status.success());
    assert_eq!(inbox_entries(&d).len(), 1);
    let out = handle_as(&d, &exe("c"), pid, &prog.core, &["-d", "", "-F", ""]);
    assert!(out.status.success());
    assert_eq!(inbox_entries(&d).len(), 2);

    // Gone (reaped): the pid may be someone else's by now.
    let _ = child.0.kill();
    let _ = child.0.wait();
    let out = handle_as(&d, &exe("d"), pid, &prog.core, &["-d", "1", "-F", &fds]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("pidfd"), "{err}");
    assert_eq!(inbox_entries(&d).len(), 2);
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
}

/// `%e` is the crashed program's choice: a name that looks like options,
/// or is not UTF-8, is still a name. Arguments that cannot be parsed at all
/// are logged and the core read to its end, not left in the pipe.
#[test]
fn hostile_process_names_are_names() {
    let prog = generated_core(256 * 1024);
    let d = configured(&prog, true, "root");
    let names: [&OsStr; 3] = [
        OsStr::new("-x --help"),
        OsStr::new("--version"),
        OsStr::from_bytes(b"-\xff\n"),
    ];
    for (i, name) in names.iter().enumerate() {
        let exe = prog.exe.with_file_name(format!("crashme{i}"));
        let out = feed(spawn_handler(&d, name, &exe, prog.pid, &[]), &prog.core);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name:?}: {err}");
        assert_eq!(inbox_entries(&d).len(), i + 1, "{name:?}: {err}");
    }
    let mut got: Vec<String> = inbox_entries(&d)
        .iter()
        .map(|e| meta_of(&d, e).process_name)
        .collect();
    got.sort();
    assert_eq!(got, ["--version", "-x --help", "-\u{fffd}\n"]);

    let mut child = Command::new(HANDLER)
        .args(["--no-such-option", "-f"])
        .arg(&d.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let written = stdin.write_all(&vec![0u8; 4 * MIB as usize]);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(written.is_ok(), "the core was left in the pipe: {err}");
    assert!(!out.status.success());
    assert!(err.contains("--no-such-option"), "{err}");
}

/// The crash-symbolizer's state and counters as `telemctl probe list` shows them.
fn symbolizer(d: &TestDaemon) -> ProbeInfo {
    let list = support::probe_list(d);
    list.probes
        .iter()
        .find(|p| p.name == "crash-symbolizer")
        .cloned()
        .unwrap_or_else(|| panic!("{list:?}"))
}

#[test]
fn nt_file_floods_and_wrapping_notes_neither_stall_nor_quarantine_the_symbolizer() {
    let prog = crashed_program();
    let d = daemon(&prog, true);
    let mut cores: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("flood{i}"),
                hostile_cores::core_with_nt_file_entries(64_000),
            )
        })
        .collect();
    cores.push(("wrap".into(), hostile_cores::core_with_overflowing_note()));
    cores.push((
        "segment".into(),
        hostile_cores::core_with_wrapping_segment(),
    ));
    for (i, (what, bytes)) in cores.iter().enumerate() {
        let core = prog.dir.path().join(format!("{what}.core"));
        std::fs::write(&core, bytes).unwrap();
        let exe = prog.exe.with_file_name(format!("crashme-{what}"));
        let out = handle_as(&d, &exe, prog.pid, &core, &["-v"]);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs = d.wait_spool(i + 1);
        let r = recs
            .iter()
            .find(|r| r.payload.contains(&format!("crashme-{what}")))
            .unwrap_or_else(|| panic!("{what}: no record: {recs:?}\n{}", d.log()));
        assert!(
            r.payload.contains("Error: ") || r.payload.contains("cannot unwind"),
            "{what}: {}",
            r.payload
        );
    }
    let p = symbolizer(&d);
    assert_eq!(p.state, ProbeState::Running, "{p:?}");
    assert_eq!(
        p.stats.timeouts, 0,
        "every core was handled within its deadline: {p:?}"
    );
    // A real crash afterwards is symbolized.
    handle_ok(&d, &prog, &prog.core, &[]);
    let recs = d.wait_spool(cores.len() + 1);
    assert!(
        recs.iter()
            .any(|r| class(r) == ("org.clearlinux/crash/clr", "3")),
        "{recs:?}"
    );
}

#[test]
fn crash_calls_that_time_out_are_recorded_by_telemd_and_never_quarantine() {
    let prog = crashed_program();
    // 10 ms (the least a grant may say): no core is symbolized in time.
    let d = configured(&prog, true, "root");
    let text = std::fs::read_to_string(&d.config_path)
        .unwrap()
        .replace("timeout_ms = 5000", "timeout_ms = 10");
    std::fs::write(&d.config_path, text).unwrap();
    let d = d.spawn();
    let n = support::QUARANTINE_AFTER + 2;
    for i in 0..n {
        let exe = prog.exe.with_file_name(format!("crashme-late{i}"));
        let out = handle_as(&d, &exe, prog.pid, &prog.core, &["-v"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let recs = d.wait_spool(n);
    assert!(
        recs.iter()
            .all(|r| class(r) == ("org.clearlinux/crash/error", "4")
                && r.payload.contains("timed out after 10 ms")),
        "{recs:?}"
    );
    let p = symbolizer(&d);
    assert_eq!(p.state, ProbeState::Running, "{p:?}");
    assert_eq!(p.stats.timeouts, n as u64, "{p:?}");
    assert_eq!(p.stats.failures_in_a_row, 0, "{p:?}");
}

/// The crash history (`telemctl crash list` and `crash info`, as
/// `coredumpctl` shows systemd's): a crash handled through the daemon is
/// listed with its program, pid, signal and the record sent, and `info`
/// (by its id, or by a prefix of the record's event id) shows the record
/// as it was sent; `--json` on both.
#[test]
fn a_handled_crash_is_in_the_crash_history() {
    let prog = crashed_program();
    let d = daemon(&prog, true);
    let telemctl = |args: &[&str]| {
        let out = support::telemctl(&d, args);
        assert!(
            out.status.success(),
            "telemctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(telemctl(&["crash", "list"]), "no crash handled yet\n");
    handle_ok(&d, &prog, &prog.core, &[]);
    let sent = d.wait_spool(1).remove(0);
    let event_id = sent.headers.get(Header::EventId).to_owned();
    let exe = prog.exe.to_str().unwrap();
    let listed = || -> Vec<telem_core::crash_history::CrashEntry> {
        serde_json::from_str(&telemctl(&["crash", "list", "--json"])).unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || listed().len() == 1),
        "{}",
        d.log()
    );
    let e = listed().remove(0);
    assert_eq!(
        (e.program.as_str(), e.pid, e.signal),
        (exe, prog.pid, Some(11))
    );
    assert_eq!(e.records.len(), 1);
    assert_eq!(e.records[0].event_id, event_id);
    assert_eq!(e.records[0].payload, sent.payload);
    let table = telemctl(&["crash", "list"]);
    assert!(
        table.starts_with("TIME") && table.contains(exe) && table.contains(&e.id),
        "{table}"
    );
    let info = telemctl(&["crash", "info", &event_id[..8]]);
    assert!(info.contains(&format!("id: {}\n", e.id)), "{info}");
    assert!(info.contains(&format!("  Process: {exe}\n")), "{info}");
    let by_id: telem_core::crash_history::CrashEntry =
        serde_json::from_str(&telemctl(&["crash", "info", &e.id, "--json"])).unwrap();
    assert_eq!(by_id, e);
    let missing = support::telemctl(&d, &["crash", "info", "nosuchcrash"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no crash nosuchcrash in the history"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// The second crash through the same libraries reads no DWARF: every
/// lookup is answered from the probe's frame cache (kept in its state),
/// and the record is the same.
#[test]
fn a_second_crash_is_symbolized_from_the_frame_cache() {
    let prog = crashed_program();
    let d = configured_with(&prog, true, "root", "crash_repeat_window_secs = 0\n").spawn();
    assert!(
        wait_until(Duration::from_secs(60), || d.socket().exists()),
        "{}",
        d.log()
    );
    handle_ok(&d, &prog, &prog.core, &[]);
    let first = d.wait_spool(1).remove(0);
    handle_ok(&d, &prog, &prog.core, &[]);
    let both = d.wait_spool(2);
    assert!(both.iter().all(|r| r.payload == first.payload), "{both:?}");
    let answered: Vec<(usize, usize)> = d
        .log()
        .lines()
        .filter_map(|l| l.split("frame cache: ").nth(1))
        .filter_map(|l| {
            let (hits, rest) = l.split_once(" of ")?;
            Some((hits.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(answered.len(), 2, "{}", d.log());
    assert!(
        answered[0].0 < answered[0].1,
        "the first crash read the files"
    );
    assert!(
        answered[1].1 > 0 && answered[1].0 == answered[1].1,
        "the second read them all from the cache: {answered:?}"
    );
    let p = symbolizer(&d);
    assert!(p.state_keys >= 2, "cache entries and their list: {p:?}");
}

/// The crash probe's hourly budget holds for crashes too: a crash whose
/// record the budget held back is not sent by telemd either (no
/// `crash/error` record of its own), is said in the log, and is not the
/// probe's failure.
#[test]
fn a_crash_over_the_crash_probes_budget_is_held_back_not_resent() {
    let prog = crashed_program();
    let d = configured(&prog, true, "root");
    // The last table of the config is the crash-symbolizer's.
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config_path)
        .unwrap();
    writeln!(cfg, "\nmax_records_per_hour = 1").unwrap();
    let d = d.spawn();
    for i in 0..2 {
        // Distinct programs, so the repeat filter holds neither back.
        let exe = prog.exe.with_file_name(format!("crashme-budget{i}"));
        let out = handle_as(&d, &exe, prog.pid, &prog.core, &["-v"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("not reported, the host's limits held its record back")),
        "{}",
        d.log()
    );
    let recs = d.spool_records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(class(&recs[0]), ("org.clearlinux/crash/clr", "3"));
    let p = symbolizer(&d);
    assert_eq!(p.state, ProbeState::Running, "{p:?}");
    assert_eq!(p.stats.failures_in_a_row, 0, "{p:?}");
}
