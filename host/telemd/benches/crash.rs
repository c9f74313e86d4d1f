//! Crash symbolization against elfutils: each test program of the
//! crash-symbolizer's test suite is compiled (gcc/g++ -g), run under gdb
//! until it dies and dumped (`generate-core-file`); then each core is
//! symbolized end to end through the sandbox (new store, instantiate, the
//! crash-symbolizer component reading the core, binaries and debug files
//! through WASI, unwinding every thread, the payload captured), and by
//! `eu-stack --core` (a process per run, as an admin or the legacy probe
//! ran it). Medians of 15 runs each, after one warm-up; the component is
//! compiled once beforehand (the daemon keeps it loaded). "First" runs
//! start with the probe's state cleared (no frame cache: the first crash
//! after install); "repeat" runs keep it (another crash through the same
//! libraries).
//!
//! Needs gcc, g++, gdb, eu-stack and the components built. Run:
//! `cargo bench -p telemd --bench crash`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telem_core::grants::ProbePolicy;
use telem_sandbox::{CrashReport, Event, Sandbox, Sink};

const RUNS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn build_and_dump(dir: &Path, src: &str, flags: &[&str], name: &str) -> (PathBuf, PathBuf) {
    let programs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../probes-wasm/crash-symbolizer/tests/programs");
    let exe = dir.join(name);
    let cc = if src.ends_with(".cpp") { "g++" } else { "gcc" };
    // Short source paths, as a distribution build has.
    let map = format!("-fdebug-prefix-map={}=/src", programs.display());
    let st = Command::new(cc)
        .args(["-g", "-pthread", &map])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(programs.join(src))
        .status()
        .unwrap();
    assert!(st.success(), "{cc} {src}");
    let core = dir.join(format!("{name}.core"));
    Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "handle SIGUSR1 nostop noprint pass"])
        .args(["-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&exe)
        .output()
        .unwrap();
    assert!(core.exists(), "gdb made no core for {name}");
    (exe, core)
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("threads_segv.c", &["-O0"][..], "threads-O0"),
        (
            "threads_segv.c",
            &["-O2", "-fomit-frame-pointer"][..],
            "threads-O2",
        ),
        (
            "recurse.c",
            &["-O2", "-fomit-frame-pointer"][..],
            "recurse-O2",
        ),
        ("sighandler.c", &["-O0"][..], "sighandler-O0"),
        (
            "abort.cpp",
            &["-O2", "-fomit-frame-pointer"][..],
            "cpp-abort-O2",
        ),
    ];
    let built: Vec<_> = cases
        .iter()
        .map(|(src, flags, name)| (*name, build_and_dump(&dir, src, flags, name)))
        .collect();

    let wasm_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../probes-wasm/target/wasm32-wasip2/release/crash_symbolizer.wasm");
    let wasm = std::fs::read(&wasm_path).expect("build probes-wasm first");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| core | frame lines (crashing thread) | ours, first crash | ours, repeat crash | eu-stack (symbols) | eu-stack -s -i (lines, inlines: our facts) | first / eu-stack -s -i | repeat / eu-stack -s -i |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    rt.block_on(async {
        let sb = Sandbox::new(&dir.join("cache")).unwrap();
        // What the shipped defaults approve, plus the programs' directory.
        let policy = ProbePolicy {
            read_paths: Some(vec!["/usr".into(), dir.clone()]),
            classifications: Some(vec!["org.clearlinux/crash/*".into()]),
            crashes: Some(true),
            max_records_per_hour: Some(telem_core::config::values::Bounded::new(1_000_000)),
            ..Default::default()
        };
        let probe = Arc::new(
            sb.load(&wasm_path, &wasm, |_| policy.clone())
                .await
                .unwrap(),
        );
        for (name, (exe, core)) in &built {
            let report = CrashReport {
                core_path: core.to_string_lossy().into_owned(),
                process_name: name.to_string(),
                process_path: Some(exe.to_string_lossy().into_owned()),
                pid: 1,
                signal: None,
            };
            let mut first = Vec::new();
            let mut repeat = Vec::new();
            let mut frames = 0;
            for i in 0..=2 * RUNS {
                // Odd runs start without the frame cache.
                let cold = i % 2 == 1;
                if cold {
                    probe.state.lock().unwrap().clear().unwrap();
                }
                let kept = Arc::new(Mutex::new(Vec::new()));
                let t = Instant::now();
                sb.run(
                    &probe,
                    Sink::Capture(kept.clone()),
                    Event::Crash(report.clone()),
                    &[],
                )
                .await
                .unwrap();
                let el = t.elapsed();
                let recs = kept.lock().unwrap();
                assert_eq!(recs.len(), 1);
                assert_eq!(
                    recs[0].classification, "org.clearlinux/crash/clr",
                    "{}",
                    recs[0].payload
                );
                frames = recs[0]
                    .payload
                    .split("\n\n")
                    .nth(1)
                    .map_or(0, |t| t.lines().filter(|l| l.starts_with('#')).count());
                if i > 0 && cold {
                    first.push(el);
                } else if i > 0 {
                    repeat.push(el);
                }
            }
            let eu = |extra: &[&str]| {
                let mut v = Vec::new();
                for i in 0..=RUNS {
                    let t = Instant::now();
                    let out = Command::new("eu-stack")
                        .args(extra)
                        .arg(format!("--core={}", core.display()))
                        .arg(format!("--executable={}", exe.display()))
                        .output()
                        .expect("eu-stack (apt-get install elfutils)");
                    let el = t.elapsed();
                    assert!(!out.stdout.is_empty());
                    if i > 0 {
                        v.push(el);
                    }
                }
                median(v)
            };
            let (cold, warm) = (median(first), median(repeat));
            let (plain, full) = (eu(&[]), eu(&["-s", "-i"]));
            println!(
                "| {name} | {frames} | {} | {} | {} | {} | {:.2}x | {:.2}x |",
                ms(cold),
                ms(warm),
                ms(plain),
                ms(full),
                cold.as_secs_f64() / full.as_secs_f64(),
                warm.as_secs_f64() / full.as_secs_f64()
            );
        }
    });
}
