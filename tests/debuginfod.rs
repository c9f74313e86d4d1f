//! debuginfod through the host: a stripped program's crash is symbolized
//! with the debug file Debian's real `debuginfod` server hands telemd (the
//! probe never talks to a server), a second crash asks no server, and a
//! server that is down or answers garbage costs the crash nothing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{probe_wasm, wait_until, TestDaemon, CRASH_HANDLER, HOLD};
use telem_core::record::Record;

const CRASHME_C: &str = "#include <stdint.h>\n\
    __attribute__((noinline)) static void level3(int *p) { *p = 42; }\n\
    __attribute__((noinline)) static void level2(int *p) { level3(p); __asm__ volatile(\"\"); }\n\
    int main(int argc, char **argv) {\n  (void)argv;\n  level2((int *)(uintptr_t)(argc - 1));\n  return 0;\n}\n";

/// A program built with debug info, its debug file split off into
/// `debug_dir` and the program stripped of every symbol (as distributions
/// ship them), and its core dumped by gdb.
struct Stripped {
    dir: tempfile::TempDir,
    exe: PathBuf,
    core: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("the test command installs gcc, binutils, gdb");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stripped_program(debug_dir: &Path) -> Stripped {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("crashme.c");
    std::fs::write(&src, CRASHME_C).unwrap();
    let exe = dir.path().join("crashme");
    run(Command::new("gcc")
        .args(["-g", "-O0", "-Wl,--build-id", "-o"])
        .arg(&exe)
        .arg(&src));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(debug_dir.join("crashme.debug")));
    run(Command::new("strip").arg("-s").arg(&exe));
    let core = dir.path().join("core");
    Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&exe)
        .output()
        .unwrap();
    assert!(core.exists(), "gdb made no core");
    Stripped { dir, exe, core }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The GNU build id of `exe`, as hex (from `readelf -n`).
fn build_id(exe: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(exe).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build id")
        .to_owned()
}

/// A plain HTTP GET on loopback: the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Debian's debuginfod over `dir`, on 127.0.0.1, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn debuginfod(dir: &Path, db: &Path, port: u16) -> Server {
    let child = Command::new("debuginfod")
        .args(["-F", "-p", &port.to_string(), "-d"])
        .arg(db)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("debuginfod (the test command installs it)");
    Server(child)
}

/// A crash daemon with the crash-symbolizer, granted the program's
/// directory, asking `urls`, keeping `cache_mb` MiB of fetched files.
fn daemon(prog: &Stripped, urls: &[String], cache_mb: u32) -> TestDaemon {
    let d = TestDaemon::prepare(&format!(
        "{HOLD}crash_repeat_window_secs = 0\ndebuginfod_urls = {urls:?}\ndebuginfod_timeout_ms = 2000\ndebuginfod_cache_mb = {cache_mb}\n"
    ));
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config_path)
        .unwrap();
    writeln!(
        cfg,
        "no_privacy_filters_file = \"{}\"\nservice_user = \"root\"\n[probes.crash-symbolizer]\nread_paths = [\"/usr\", \"{}\"]\ntimeout_ms = 8000",
        d.path("no-filters").display(),
        prog.dir.path().display()
    )
    .unwrap();
    std::fs::write(d.path("no-filters"), "").unwrap();
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(
        probe_wasm("crash_symbolizer"),
        d.path("probes/crash-symbolizer.wasm"),
    )
    .unwrap();
    let d = d.spawn();
    assert!(
        wait_until(Duration::from_secs(60), || d.socket().exists()),
        "{}",
        d.log()
    );
    d
}

/// Hands the core to the handler as the kernel would; the handler waits
/// for the record (`-v`).
fn handle(d: &TestDaemon, prog: &Stripped) {
    let exe = prog.exe.to_str().unwrap().replace('/', "!");
    let mut child = Command::new(CRASH_HANDLER)
        .args(["-p", "crashme", "-E", &exe, "-s", "11", "-P", "4242", "-f"])
        .arg(&d.config_path)
        .arg("-v")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&prog.core).unwrap());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frames_named(r: &Record) -> bool {
    r.payload.contains("level3() - [") && r.payload.contains("crashme.c:2")
}

#[test]
fn a_stripped_programs_crash_is_named_with_the_debug_file_debuginfod_serves() {
    let served = tempfile::tempdir().unwrap();
    let prog = stripped_program(served.path());
    let port = free_port();
    let server = debuginfod(served.path(), &served.path().join("db.sqlite"), port);
    let id = build_id(&prog.exe);
    assert!(
        wait_until(Duration::from_secs(60), || http_status(
            port,
            &format!("/buildid/{id}/debuginfo")
        ) == Some(200)),
        "debuginfod did not index the debug file"
    );
    let d = daemon(&prog, &[format!("http://127.0.0.1:{port}")], 64);
    handle(&d, &prog);
    let first = d.wait_spool(1).remove(0);
    assert!(frames_named(&first), "{}", first.payload);
    // Kept in telemd's cache: with the server gone, the next crash of the
    // same program is named all the same.
    drop(server);
    handle(&d, &prog);
    let both = d.wait_spool(2);
    assert!(both.iter().all(frames_named), "{both:?}");
    assert!(
        d.path(&format!("state/debuginfod-cache/{id}/debuginfo"))
            .is_file(),
        "the file is in the cache"
    );
}

/// How a hostile server answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 and a page that is no ELF file.
    Lies,
    /// 200 and 3 MiB with no length given.
    Huge,
    /// Sends its headers and part of the body, then nothing more.
    Stalls,
    /// Never answers.
    Silent,
}

/// A server answering every request `how`; counts the requests.
fn hostile_server(how: Answer) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            match how {
                Answer::Lies => {
                    let body = b"<html>this is not a debug file</html>";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                Answer::Huge => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let chunk = vec![0x7fu8; 64 << 10];
                    for _ in 0..48 {
                        if s.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
                Answer::Stalls => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                    let _ = s.write_all(&[0x7f; 1000]);
                    held.push(s);
                }
                Answer::Silent => held.push(s),
            }
        }
    });
    (port, asked)
}

/// Servers down, lying and huge, in that order: each is asked once and
/// says no (the huge one past the cache's 1 MiB); the crash gets today's
/// record, nothing is kept, and the next crash asks none of them again.
#[test]
fn a_server_that_is_down_lies_or_floods_costs_the_crash_nothing() {
    let served = tempfile::tempdir().unwrap();
    let prog = stripped_program(served.path());
    let servers = [Answer::Lies, Answer::Huge].map(hostile_server);
    let down = free_port();
    let mut urls = vec![format!("http://127.0.0.1:{down}")];
    urls.extend(
        servers
            .iter()
            .map(|(port, _)| format!("http://127.0.0.1:{port}/")),
    );
    let d = daemon(&prog, &urls, 1);
    handle(&d, &prog);
    let r = d.wait_spool(1).remove(0);
    // Today's record: the stripped program's frames unnamed, not an error.
    assert!(r.payload.contains("??? - ["), "{}", r.payload);
    assert!(!r.payload.contains("level3"), "{}", r.payload);
    assert!(!r.payload.contains("Error:"), "{}", r.payload);
    let asked = || servers.each_ref().map(|(_, n)| n.load(Ordering::SeqCst));
    assert_eq!(asked(), [1, 1], "each asked once");
    assert!(
        d.log().contains("larger than debuginfod_cache_mb"),
        "the size cap, not the ELF check, refused the huge answer: {}",
        d.log()
    );
    let cache = d.path("state/debuginfod-cache");
    let kept = std::fs::read_dir(&cache).map_or(0, |rd| rd.count());
    assert_eq!(kept, 0, "nothing kept, no partial file left");
    // The failed lookup is remembered: the next crash asks no server.
    handle(&d, &prog);
    d.wait_spool(2);
    assert_eq!(asked(), [1, 1], "asked again");
}

/// A server that stalls mid-body and one that never answers: the call's
/// time for lookups (2 s) is spent on them, the crash gets today's
/// record, no partial download is left, and the next crash asks again
/// (running out of time is no answer).
#[test]
fn a_server_that_stalls_or_hangs_costs_its_time_and_leaves_nothing() {
    let served = tempfile::tempdir().unwrap();
    let prog = stripped_program(served.path());
    let servers = [Answer::Stalls, Answer::Silent].map(hostile_server);
    let urls: Vec<String> = servers
        .iter()
        .map(|(port, _)| format!("http://127.0.0.1:{port}"))
        .collect();
    let d = daemon(&prog, &urls, 64);
    handle(&d, &prog);
    let r = d.wait_spool(1).remove(0);
    assert!(r.payload.contains("??? - ["), "{}", r.payload);
    assert!(!r.payload.contains("Error:"), "{}", r.payload);
    let asked = || servers.each_ref().map(|(_, n)| n.load(Ordering::SeqCst));
    assert_eq!(asked()[0], 1, "the stalling server was asked");
    let cache = d.path("state/debuginfod-cache");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a partial download was left: {left:?}");
    handle(&d, &prog);
    d.wait_spool(2);
    assert_eq!(asked()[0], 2, "out of time is no answer: asked again");
}
