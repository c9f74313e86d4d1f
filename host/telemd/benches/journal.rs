//! Journal source benchmark, in-process with the real supervisor, sandbox
//! and spool, the shipped `journal-errors` probe and real journal files
//! made by `systemd-journal-remote` (`journalctl` reads them, as in the
//! daemon):
//! - a backlog of 100,000 entries (a failing unit's, of this boot) at
//!   start: time until the probe has handled the last one, and the
//!   process's RSS before and at its peak (journalctl's own is apart);
//! - one entry written (a new journal file moved into the directory)
//!   until its record is spooled, p50/p99 over 50.
//!
//! Needs the components built and systemd-journal-remote installed. Run:
//! `cargo bench -p telemd --bench journal`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemd::sources::SourceOptions;

#[path = "support/mod.rs"]
mod support;
use support::{bench_root, pct, probe_manager, rss_kib, spooled};

const REMOTE: &str = "/lib/systemd/systemd-journal-remote";

fn failed(boot: &str, usec: u64, unit: &str) -> String {
    format!(
        "__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot}\n_MACHINE_ID=2222222222222222222222222222222b\n_HOSTNAME=bench\nMESSAGE={unit}: Main process exited, code=exited, status=1/FAILURE\nUNIT={unit}\nEXIT_CODE=exited\n_PID=1\nPRIORITY=5\n\n",
        usec % 1_000_000_000
    )
}

/// Writes `entries` as a journal file, then moves it into `dir`.
fn journal_file(dir: &Path, name: &str, entries: &str) -> Instant {
    let export = dir.with_extension(format!("{name}.export"));
    std::fs::write(&export, entries).unwrap();
    let tmp = dir.with_extension(format!("{name}.journal"));
    let _ = std::fs::remove_file(&tmp);
    let st = std::process::Command::new(REMOTE)
        .arg(format!("--output={}", tmp.display()))
        .arg(&export)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("systemd-journal-remote");
    assert!(st.success());
    let t = Instant::now();
    std::fs::rename(&tmp, dir.join(format!("{name}.journal"))).unwrap();
    t
}

fn main() {
    let root = bench_root(
        "bench-journal",
        "journal_errors.wasm",
        "journal-errors.wasm",
    );
    let jdir = root.join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "");
    let t0: u64 = 1_764_000_000_000_000;
    let backlog: String = (0..100_000u64)
        .map(|i| failed(&boot, t0 + i, "loop.service"))
        .collect();
    journal_file(&jdir, "backlog", &backlog);
    drop(backlog);

    let spool_dir = root.join("spool");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cursor_dir = root.join("probe-state");
    let mgr = probe_manager(
        &root,
        "journal-errors",
        SourceOptions {
            kernel_log_path: root.join("no-kmsg"),
            boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
            cursor_dir: cursor_dir.clone(),
            sources_root: "/".into(),
            files_scan_interval: Duration::from_secs(60),
            journal_dir: Some(jdir.clone()),
            no_privacy_filters_file: root.join("no-privacy-filters"),
        },
    );
    let before_rss = rss_kib();
    let peak = Arc::new(AtomicU64::new(before_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    rt.spawn(mgr.clone().watch(Duration::from_secs(60)));
    let cursor_file = cursor_dir.join("journal-errors.sources.json");
    let handled = |seq: u64| {
        std::fs::read_to_string(&cursor_file).is_ok_and(|s| s.contains(&format!(";i={seq:x};")))
    };
    while !handled(100_000) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "backlog of 100,000 entries: handled in {:.2} s ({:.0} entries/s, probe load included), {} records; RSS {} MiB before, {} MiB at peak (+{} MiB)",
        took.as_secs_f64(),
        100_000.0 / took.as_secs_f64(),
        spooled(&spool_dir),
        before_rss / 1024,
        peak / 1024,
        (peak - before_rss) / 1024
    );

    let mut lat = Vec::new();
    for i in 0..50u64 {
        let before = spooled(&spool_dir);
        let entry = failed(&boot, t0 + 200_000 + i, &format!("unit{i}.service"));
        let t = journal_file(&jdir, &format!("one{i}"), &entry);
        while spooled(&spool_dir) == before {
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t.elapsed());
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "journal entry (a new file moved in) -> spooled record: p50 {:.1} ms, p99 {:.1} ms (50 entries)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
