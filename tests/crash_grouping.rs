//! Crash grouping through the kernel's own `core_pattern` path (as root):
//! real programs crash, the kernel pipes their cores to the handler, and
//! the flood limits and signatures decide what is sent. The handler keys
//! repeats on the crash site, telemd on the signature; the same crash
//! elsewhere in memory (ASLR) has the same signature, a different site of
//! the same program another, and both are reported. The programs are in a
//! scratch directory the probe is not granted: each crash call is shown
//! its program alone, and its frames are named.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{probe_wasm, wait_until, TestDaemon, CRASH_HANDLER, HOLD};
use telem_core::crash_history::{signature_in, CrashEntry};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// Points `kernel.core_pattern` at the handler for this test and gives the
/// old pattern back when dropped, whatever happened.
struct CorePattern(String);

impl CorePattern {
    fn set(pattern: &str) -> CorePattern {
        // The kernel cuts a longer pattern (CORENAME_MAX_SIZE).
        assert!(pattern.len() < 128, "{pattern}");
        let old = std::fs::read_to_string(CORE_PATTERN).unwrap();
        std::fs::write(CORE_PATTERN, pattern).unwrap();
        CorePattern(old.trim_end().to_owned())
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = std::fs::write(CORE_PATTERN, &self.0);
    }
}

/// A C program with crash sites: `a` and `c` crash at two instructions
/// of one function (one signature, two sites), `b` in another function,
/// `d` and `e` abort in two functions (one site in libc, two signatures).
/// It prints where `main` is, to show ASLR moved it.
const GROUPING_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) static void abort_d(void) { abort(); }
__attribute__((noinline)) static void abort_e(void) { abort(); }
__attribute__((noinline)) static void site_a(int how) {
    volatile int *p = 0;
    if (how == 'a') {
        *p = 1;
    } else {
        __asm__ volatile("nop; nop");
        *p = 2;
    }
}
__attribute__((noinline)) static void site_b(void) { volatile int *p = 0; *p = 3; }
int main(int argc, char **argv) {
    printf("%p\n", (void *)&main);
    fflush(stdout);
    char m = argc > 1 ? argv[1][0] : 'a';
    if (m == 'b') site_b();
    else if (m == 'd') abort_d();
    else if (m == 'e') abort_e();
    else site_a(m);
    return 0;
}
"#;

/// A Rust program that panics in `panicky::parse` and aborts (`panic=abort`).
const PANICKY_RS: &str = r#"
#[inline(never)]
fn parse(s: &str) -> u32 {
    s.parse::<u32>().unwrap()
}
fn main() {
    println!("{:p}", main as fn() as *const ());
    std::process::exit(parse(std::hint::black_box("not a number")) as i32);
}
"#;

fn build_c(dir: &Path) -> PathBuf {
    let src = dir.join("grouping.c");
    std::fs::write(&src, GROUPING_C).unwrap();
    let exe = dir.join("grouping");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success());
    exe
}

fn build_rust(dir: &Path) -> PathBuf {
    let src = dir.join("panicky.rs");
    std::fs::write(&src, PANICKY_RS).unwrap();
    let exe = dir.join("panicky");
    let out = Command::new("rustc")
        .args(["-g", "-C", "panic=abort", "-C", "opt-level=1", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("rustc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs `exe arg` with core dumps on until it dies by a signal; returns
/// where it printed `main` to be.
fn crash(exe: &Path, arg: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -c unlimited; exec \"$0\" \"$1\"")
        .arg(exe)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{} {arg} did not crash",
        exe.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn history(d: &TestDaemon) -> Vec<CrashEntry> {
    let out = support::telemctl(d, &["crash", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_history(d: &TestDaemon, n: usize) -> Vec<CrashEntry> {
    let ok = wait_until(Duration::from_secs(30), || history(d).len() >= n);
    let h = history(d);
    assert!(
        ok && h.len() == n,
        "{} entries, not {n}: {h:#?}\n{}",
        h.len(),
        d.log()
    );
    h
}

/// Repeats the handler dropped, from its flood state in the inbox.
fn handler_dropped_repeats(d: &TestDaemon) -> u64 {
    std::fs::read(d.path("state/crash-inbox/.recent.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["dropped_repeats"].as_u64())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root: points kernel.core_pattern at the handler"]
fn the_kernels_cores_are_grouped_by_site_and_signature() {
    support::assert_root("it sets kernel.core_pattern");
    let progs = tempfile::tempdir().unwrap();
    let (one, two) = (progs.path().join("one"), progs.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let exe = build_c(&one);
    // The same program at another path: another site for the handler.
    let copy = two.join("grouping");
    std::fs::copy(&exe, &copy).unwrap();
    let panicky = build_rust(&one);

    let d = TestDaemon::prepare(&format!("{HOLD}crash_repeat_window_secs = 600\n"));
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config_path)
        .unwrap();
    writeln!(
        cfg,
        "no_privacy_filters_file = \"{}\"\nservice_user = \"root\"\n[probes.crash-symbolizer]\ntimeout_ms = 5000",
        d.path("no-filters").display(),
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
    // Short names: the kernel's pattern holds 127 bytes.
    std::os::unix::fs::symlink(CRASH_HANDLER, d.path("h")).unwrap();
    std::os::unix::fs::symlink(&d.config_path, d.path("c")).unwrap();
    let _pattern = CorePattern::set(&format!(
        "|{} -p %e -E %E -s %s -P %P -I %I -u %u -d %d -F %F -f {}",
        d.path("h").display(),
        d.path("c").display()
    ));

    // The first crash is sent, with its signature.
    let first_main = crash(&exe, "a");
    let sent = d.wait_spool(1);
    let sig_a = signature_in(&sent[0].payload)
        .expect("a signature")
        .to_owned();
    assert!(sig_a.starts_with("sym1:"), "{}", sent[0].payload);
    assert!(
        sent[0].payload.contains("site_a() - ["),
        "{}",
        sent[0].payload
    );

    // The same crash again: the handler drops it (same site).
    crash(&exe, "a");
    assert!(
        wait_until(Duration::from_secs(30), || handler_dropped_repeats(&d) == 1),
        "{}",
        d.log()
    );

    // The same crash of a copy at another path, elsewhere in memory: the
    // same signature, but another program (a look-alike must not hold
    // back the original's crashes), so it is sent.
    let copy_main = crash(&copy, "a");
    assert_ne!(
        first_main, copy_main,
        "ASLR placed main at the same address"
    );
    let h = wait_history(&d, 2);
    assert_eq!(h[1].signature.as_deref(), Some(sig_a.as_str()), "{h:#?}");
    assert_eq!(h[1].repeat_of, None);
    d.wait_spool(2);

    // Another site of the same program: sent, under another signature.
    crash(&exe, "b");
    let h = wait_history(&d, 3);
    let sig_b = h[2].signature.clone().expect("a signature");
    assert_ne!(sig_b, sig_a);
    d.wait_spool(3);

    // The first function again at another instruction: a new site for the
    // handler, the same program and signature for telemd: held back.
    crash(&exe, "c");
    let h = wait_history(&d, 4);
    assert_eq!(h[3].signature.as_deref(), Some(sig_a.as_str()));
    assert_eq!(h[3].repeat_of.as_deref(), Some(h[0].id.as_str()));
    assert_eq!(d.spool_records().len(), 3, "the repeat is not sent");

    // Two aborts from two functions: one site (in libc) for the handler,
    // which lets a few through; two signatures, both sent.
    crash(&exe, "d");
    crash(&exe, "e");
    let h = wait_history(&d, 6);
    assert_ne!(h[4].signature, h[5].signature, "{h:#?}");
    assert!(h[4..]
        .iter()
        .all(|e| e.repeat_of.is_none() && e.signal == Some(6)));
    d.wait_spool(5);

    // A stripped program: its own frames have no names, so the
    // signature is made of their offsets; two sites, two signatures.
    let stripped = one.join("stripped");
    std::fs::copy(&exe, &stripped).unwrap();
    assert!(Command::new("strip")
        .arg(&stripped)
        .status()
        .unwrap()
        .success());
    crash(&stripped, "a");
    crash(&stripped, "b");
    let h = wait_history(&d, 8);
    let (sa, sb) = (h[6].signature.clone(), h[7].signature.clone());
    assert!(
        sa.as_deref().is_some_and(|s| s.starts_with("addr1:")),
        "{h:#?}"
    );
    assert_ne!(sa, sb);
    d.wait_spool(7);

    // A Rust panic: demangled names without hashes, and a signature.
    crash(&panicky, "");
    let sent = d.wait_spool(8);
    let rust = sent
        .iter()
        .find(|r| r.payload.contains("panicky"))
        .expect("the panic's record");
    assert!(
        rust.payload.contains("panicky::parse() - ["),
        "{}",
        rust.payload
    );
    assert!(rust.payload.contains("Signal: 6\n"), "{}", rust.payload);
    let hashed =
        rust.payload.split("::h").skip(1).any(|rest| {
            rest.len() >= 16 && rest.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit)
        });
    assert!(!hashed, "a hash suffix: {}", rust.payload);
    let sig_rust = signature_in(&rust.payload).expect("a signature");
    assert!(sig_rust.starts_with("sym1:") && sig_rust != sig_a && sig_rust != sig_b);

    // The admin's view.
    wait_history(&d, 9);
    let table = String::from_utf8(support::telemctl(&d, &["crash", "list"]).stdout).unwrap();
    assert!(
        table.contains("SIGNATURE") && table.contains(&sig_a) && table.contains("repeat"),
        "{table}"
    );
    let info = support::telemctl(&d, &["crash", "info", &sig_a]);
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(
        info.starts_with("crashes with this signature in the history: 3 "),
        "{info}"
    );
}
