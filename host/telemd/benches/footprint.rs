//! Idle footprint: `telemd` with the five shipped probes (hello,
//! crash-symbolizer, kernel-oops, pstore, journal-errors) loaded from the
//! compile cache, as after any restart but the first. Reports VmRSS and
//! its parts (file-backed, anonymous, proportional to sharing) a few
//! seconds after the probes loaded, for each of `--rounds` restarts.
//!
//! Run: `cargo bench -p telemd --bench footprint` (the probes workspace
//! built for wasm32-wasip2 release first; `-- --rounds R`, `-- --idle-secs S`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use telem_core::control::client::Client;
use telem_core::control::{Request, Response};

const TELEMD: &str = env!("CARGO_BIN_EXE_telemd");
const SHIPPED: [&str; 5] = [
    "hello",
    "crash_symbolizer",
    "kernel_oops",
    "pstore",
    "journal_errors",
];

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start(dir: &Path) -> Child {
    Command::new(TELEMD)
        .arg("--dev")
        .arg(dir)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

/// Probes loaded, and components compiled on this start.
fn loaded_and_compiled(control: &Path) -> (usize, u64) {
    Client::connect(control, Some(Duration::from_secs(5)))
        .ok()
        .and_then(|mut c| match c.call(&Request::List) {
            Ok(Response::Probes(p)) => Some((p.probes.len(), p.compilations)),
            _ => None,
        })
        .unwrap_or((0, 0))
}

fn loaded(control: &Path) -> usize {
    loaded_and_compiled(control).0
}

fn wait_loaded(child: &mut Child, control: &Path) {
    let t = Instant::now();
    while loaded(control) < SHIPPED.len() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "telemd exited at start"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the five probes did not load"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn main() {
    let mut rounds = 3;
    let mut idle = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().unwrap().parse().unwrap(),
            "--idle-secs" => idle = args.next().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    let wasm_dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../probes-wasm/target/wasm32-wasip2/release"
    ));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-footprint");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("probes")).unwrap();
    for p in SHIPPED {
        let src = wasm_dir.join(format!("{p}.wasm"));
        std::fs::copy(&src, dir.join("probes").join(format!("{p}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e} (build probes-wasm first)", src.display()));
    }
    let control = dir.join("control.sock");
    // The first start compiles every probe into the cache.
    let mut first = start(&dir);
    wait_loaded(&mut first, &control);
    stop(first);

    println!("| round | VmRSS | file-backed | anonymous | PSS | VmHWM |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut rss = Vec::new();
    for round in 0..rounds {
        let mut child = start(&dir);
        wait_loaded(&mut child, &control);
        let (_, compiled) = loaded_and_compiled(&control);
        if compiled != 0 {
            stop(child);
            panic!("{compiled} probe(s) compiled on a restart: the cache was not used");
        }
        std::thread::sleep(Duration::from_secs(idle));
        let pid = child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let (vm, hwm) = (field_kib(&status, "VmRSS:"), field_kib(&status, "VmHWM:"));
        let (file, anon) = (
            field_kib(&status, "RssFile:") + field_kib(&status, "RssShmem:"),
            field_kib(&rollup, "Anonymous:"),
        );
        let pss = field_kib(&rollup, "Pss:");
        println!("| {round} | {vm} KiB | {file} KiB | {anon} KiB | {pss} KiB | {hwm} KiB |");
        rss.push(vm);
        stop(child);
    }
    rss.sort();
    println!("median VmRSS: {} KiB", rss[rss.len() / 2]);
    let _ = std::fs::remove_dir_all(&dir);
}
