//! `eu-stack` (elfutils) run on a core and its output parsed: the
//! reference the crash symbolizer's backtraces are held to, by its own
//! tests (`#[path = "../../../tests/support/eu_stack.rs"]` in
//! `probes-wasm/crash-symbolizer/tests/real_cores.rs`) and by the
//! end-to-end crash tests (`tests/crashes.rs`), which include this very
//! file. Std-only for that reason.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// One frame as eu-stack prints it.
pub struct EuFrame {
    /// The function as eu-stack names it (`pause@@GLIBC_2.2.5` for a
    /// versioned symbol).
    pub name: String,
    /// The module's file name (`crashme`, `libc.so.6`).
    pub module: String,
    /// `file:line` (its column dropped), when eu-stack found one.
    pub source: Option<String>,
}

/// eu-stack's frames per thread, inlined calls expanded (`-i`) and with
/// their source lines (`-s`), as ours are.
pub fn eu_stack(core: &Path, exe: &Path, debug: Option<&Path>) -> Vec<(u32, Vec<EuFrame>)> {
    let mut cmd = Command::new("eu-stack");
    // The same 64-frame window as ours.
    cmd.args(["-m", "-s", "-i", "-n", "64"])
        .arg(format!("--core={}", core.display()))
        .arg(format!("--executable={}", exe.display()));
    if let Some(d) = debug {
        cmd.arg(format!("--debuginfo-path={}", d.display()));
    }
    let out = cmd
        .output()
        .expect("eu-stack (elfutils; the test command installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut threads: Vec<(u32, Vec<EuFrame>)> = Vec::new();
    for line in text.lines() {
        if let Some(tid) = line.strip_prefix("TID ") {
            threads.push((tid.trim_end_matches(':').parse().unwrap(), Vec::new()));
        } else if line.starts_with('#') {
            // "#0  0x0000555555555178 level3 - tseg"
            let mut parts = line.split_whitespace().skip(2);
            let rest: Vec<&str> = parts.by_ref().collect();
            let (name, module) = match rest.iter().position(|w| *w == "-") {
                Some(i) => (rest[..i].join(" "), rest[i + 1..].join(" ")),
                None => (rest.join(" "), String::new()),
            };
            let frames = &mut threads.last_mut().expect("TID line first").1;
            frames.push(EuFrame {
                name,
                module,
                source: None,
            });
        } else if let Some(src) = line.strip_prefix("    ") {
            // "    ../sysdeps/nptl/libc_start_call_main.h:58:16"
            let mut it = src.rsplitn(3, ':');
            let fields: Vec<&str> = it.by_ref().collect();
            let source = match fields[..] {
                [col, line, file] if col.parse::<u32>().is_ok() => format!("{file}:{line}"),
                _ => src.to_owned(),
            };
            if let Some(f) = threads.last_mut().and_then(|t| t.1.last_mut()) {
                f.source = Some(source);
            }
        }
    }
    assert!(!threads.is_empty(), "eu-stack printed no thread: {text}");
    threads
}
