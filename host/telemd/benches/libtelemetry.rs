//! libtelemetry round trip: `tm_create_record` + `tm_set_payload` +
//! `tm_send_record` from C programs against a real `telemd`, per record,
//! from 1 and from 16 processes, next to the same records sent with
//! `telem-record-gen` (one process per record, as scripts use it). A record
//! counts once its file is in the spool (after its fsync); records sent but
//! not spooled are reported as lost.
//!
//! Run: `cargo build --release -p libtelemetry -p telem-record-gen &&
//! cargo bench -p telemd --bench libtelemetry` (needs cc).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{spooled, start_telemd};

/// The release programs the command above builds.
fn release(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release")
        .join(name)
}

/// `tests/c/send.c` linked against the release library.
fn c_sender(dir: &Path) -> PathBuf {
    let lib = release("libtelemetry.so");
    assert!(
        lib.exists(),
        "{} missing: run `cargo build --release -p libtelemetry` first",
        lib.display()
    );
    // The links an install makes: the SONAME the program loads and the
    // name it links with.
    let libdir = dir.join("so");
    std::fs::create_dir_all(&libdir).unwrap();
    for name in ["libtelemetry.so.4", "libtelemetry.so"] {
        let _ = std::fs::remove_file(libdir.join(name));
        std::os::unix::fs::symlink(lib.canonicalize().unwrap(), libdir.join(name)).unwrap();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("send");
    let status = Command::new("cc")
        .args(["-O2", "-std=c11", "-D_DEFAULT_SOURCE"])
        .arg(manifest.join("../../tests/c/send.c"))
        .arg(format!(
            "-I{}",
            manifest.join("../libtelemetry/include").display()
        ))
        .arg(format!("-L{}", libdir.display()))
        .arg("-ltelemetry")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "cc send.c failed");
    out
}

/// A client sends its records back to back, each in its own connection,
/// faster than the daemon spools them: with the default per-uid share the
/// daemon would close most of them at once (SECURITY.md). The bench
/// measures the path, not that cap.
const UNCAPPED: &str = "max_connections = 65536\n";

struct Run {
    records: usize,
    secs: f64,
    lost: usize,
}

/// Waits until `want` records are spooled or nothing moves for 5 s.
fn wait_spooled(spool: &Path, want: usize) -> usize {
    let mut last = (spooled(spool), Instant::now());
    loop {
        let n = spooled(spool);
        if n >= want {
            return n;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// `procs` processes each send `per` records through the library.
fn library(base: &Path, sender: &Path, procs: usize, per: usize) -> Run {
    settle();
    let d = start_telemd(&base.join("lib"), UNCAPPED, true);
    let cfg = d.root.join("telemd.toml");
    let start = Instant::now();
    let children: Vec<Child> = (0..procs)
        .map(|_| {
            Command::new(sender)
                .arg("-f")
                .arg(&cfg)
                .args([
                    "-c",
                    "org.example/bench/lib",
                    "-p",
                    "a payload of a typical size\n",
                ])
                .arg("-n")
                .arg(per.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a sender failed");
    }
    finished(&d, start, procs * per)
}

/// `procs` threads each run `telem-record-gen` `per` times in a row.
fn record_gen(base: &Path, procs: usize, per: usize) -> Run {
    settle();
    let d = start_telemd(&base.join("gen"), UNCAPPED, true);
    let cfg = d.root.join("telemd.toml");
    let gen = release("telem-record-gen");
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..procs {
            s.spawn(|| {
                for _ in 0..per {
                    let st = Command::new(&gen)
                        .arg("--config-file")
                        .arg(&cfg)
                        .args([
                            "-c",
                            "org.example/bench/gen",
                            "-p",
                            "a payload of a typical size\n",
                        ])
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success(), "telem-record-gen failed");
                }
            });
        }
    });
    finished(&d, start, procs * per)
}

/// A run that started at `start` and sent `total` records, once they are
/// spooled (or nothing moved for 5 s).
fn finished(d: &support::Daemon, start: Instant, total: usize) -> Run {
    let n = wait_spooled(&d.root.join("spool"), total);
    Run {
        records: total,
        secs: start.elapsed().as_secs_f64(),
        lost: total - n.min(total),
    }
}

fn median_of_3(mut f: impl FnMut() -> Run) -> (Run, Vec<f64>) {
    let mut runs: Vec<Run> = (0..3).map(|_| f()).collect();
    let rates: Vec<f64> = runs.iter().map(|r| r.records as f64 / r.secs).collect();
    runs.sort_by(|a, b| (a.records as f64 / a.secs).total_cmp(&(b.records as f64 / b.secs)));
    let lost = runs.iter().map(|r| r.lost).sum();
    let mid = runs.swap_remove(1);
    (Run { lost, ..mid }, rates)
}

fn main() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-libtelemetry");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let sender = c_sender(&base);
    println!("| path | processes | records | µs per record (median of 3) | records/s (runs) | lost (all runs) |");
    println!("|---|--:|--:|--:|---|--:|");
    for (procs, lib_per, gen_per) in [(1usize, 4000usize, 400usize), (16, 250, 25)] {
        let (lib, lib_rates) = median_of_3(|| library(&base, &sender, procs, lib_per));
        let (gen, gen_rates) = median_of_3(|| record_gen(&base, procs, gen_per));
        for (name, r, rates) in [
            ("libtelemetry (C)", lib, lib_rates),
            ("telem-record-gen", gen, gen_rates),
        ] {
            println!(
                "| {name} | {procs} | {} | {:.0} | {} | {} |",
                r.records,
                r.secs * 1e6 / r.records as f64,
                rates
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.lost
            );
        }
    }
}
