//! Event source benchmark, in-process with the real supervisor, sandbox,
//! spool and the shipped `kernel-oops` probe, the kernel log a FIFO in
//! `/dev/kmsg`'s format (read as the device is: non-blocking, woken by
//! `poll`; a regular file is looked at every 100 ms instead):
//! - one kernel warning appended to the log until its record is spooled
//!   (reader, batch, the probe's call, fsync), p50/p99 over 200;
//! - a burst of 100,000 lines (1 in 1000 a warning, each different): time
//!   until the probe has handled the last line, and the process's RSS
//!   before and at its peak (sampled every 5 ms).
//!
//! Needs the components built: `(cd probes-wasm && cargo build --target
//! wasm32-wasip2 --release)`. Run: `cargo bench -p telemd --bench sources`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemd::sources::SourceOptions;

#[path = "support/mod.rs"]
mod support;
use support::{bench_root, pct, probe_manager, rss_kib, spooled};
use telemd::supervisor::ProbeManager;

/// A name of letters only for `n`: the probe counts repeats of a report
/// whose first line differs only in numbers.
fn letters(mut n: usize) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

struct Kmsg {
    file: std::fs::File,
    seq: u64,
}

impl Kmsg {
    fn write(&mut self, lines: &[String]) {
        let mut out = String::new();
        for l in lines {
            out.push_str(&format!("4,{},{},-;{l}\n", self.seq, self.seq * 1000));
            self.seq += 1;
        }
        self.file.write_all(out.as_bytes()).unwrap();
    }
}

fn warning(name: &str) -> Vec<String> {
    vec![
        "------------[ cut here ]------------".into(),
        format!(
            "WARNING: CPU: 1 PID: 42 at drivers/bench/bench.c:99 bench_{name}+0x1c/0x30 [bench]"
        ),
        "CPU: 1 PID: 42 Comm: kworker/1:1 Not tainted 6.6.0 #1".into(),
        "Call Trace:".into(),
        " <TASK>".into(),
        format!(" bench_{name}+0x1c/0x30 [bench]"),
        " process_one_work+0x1e5/0x3b0".into(),
        " </TASK>".into(),
        "---[ end trace 0000000000000000 ]---".into(),
    ]
}

fn main() {
    let root = bench_root("bench-sources", "kernel_oops.wasm", "kernel-oops.wasm");
    let kmsg_path = root.join("kmsg");
    let made = std::process::Command::new("mkfifo")
        .arg(&kmsg_path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    // Read and write: opening a FIFO for writing alone would wait for a
    // reader, and the reader (the daemon's) starts later.
    let mut kmsg = Kmsg {
        file: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&kmsg_path)
            .unwrap(),
        seq: 0,
    };
    let spool_dir = root.join("spool");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mgr = probe_manager(
        &root,
        "kernel-oops",
        SourceOptions {
            kernel_log_path: kmsg_path,
            boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
            cursor_dir: root.join("probe-state"),
            sources_root: "/".into(),
            files_scan_interval: Duration::from_secs(60),
            journal_dir: None,
            no_privacy_filters_file: root.join("no-privacy-filters"),
        },
    );
    rt.spawn(mgr.clone().watch(Duration::from_secs(60)));
    while mgr.list().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Latency: one warning at a time.
    let mut lat = Vec::new();
    for i in 0..200 {
        let before = spooled(&spool_dir);
        let t = Instant::now();
        kmsg.write(&warning(&letters(i)));
        while spooled(&spool_dir) == before {
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t.elapsed());
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "kmsg warning -> spooled record: p50 {:.1} ms, p99 {:.1} ms (200 warnings)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    // Burst: 100,000 lines.
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
    let records_before = spooled(&spool_dir);
    let mut lines = Vec::with_capacity(100_000);
    let mut warnings = 0;
    while lines.len() < 100_000 {
        if lines.len() % 1000 == 500 {
            lines.extend(warning(&format!("burst{}", letters(1000 + warnings))));
            warnings += 1;
        } else {
            lines.push(format!(
                "usb 1-{}: new high-speed USB device number {} using xhci_hcd",
                lines.len() % 8,
                lines.len()
            ));
        }
    }
    let lines = &lines[..100_000];
    let last = kmsg.seq + lines.len() as u64 - 1;
    let t = Instant::now();
    kmsg.write(lines);
    let handled = |m: &ProbeManager| {
        m.list()[0].sources.iter().any(|s| {
            s.position
                .starts_with(&format!("handled up to record {last} "))
        })
    };
    while !handled(&mgr) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "burst of 100,000 lines ({warnings} warnings): handled in {:.2} s ({:.0} lines/s), {} records; RSS {} MiB before, {} MiB at peak (+{} MiB)",
        took.as_secs_f64(),
        100_000.0 / took.as_secs_f64(),
        spooled(&spool_dir) - records_before,
        before_rss / 1024,
        peak / 1024,
        (peak - before_rss) / 1024
    );
    let stats = &mgr.list()[0].stats;
    println!(
        "probe calls: {}, skipped lines: {}",
        stats.runs, stats.source_skipped
    );
}
