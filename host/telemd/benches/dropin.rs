//! A probe dropped into a probe directory, to its first record spooled
//! (the `ticker` test probe: a record at start, 1000 an hour; `hello`'s
//! four an hour would run out):
//! the real `telemd` (this package's release binary) with a scan only once
//! an hour, so what is measured is the directory watch, the settle passes
//! and the load (from the compile cache after the first). 20 drops; each
//! time the file is removed, the removal seen, then the component renamed
//! into place as a package manager installs it. p50 and max.
//!
//! Needs the components built. Run: `cargo bench -p telemd --bench dropin`.

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{pct, spooled};

const DROPS: usize = 20;

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

fn main() {
    let root = support::bench_root("bench-dropin", "ticker.wasm", ".staged");
    let staged = root.join("probes/.staged");
    let config = root.join("telemd.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"file://{r}/collector.jsonl\"\nsocket_path = \"{r}/telem-0\"\nspool_dir = \"{r}/spool\"\nstate_dir = \"{r}/state\"\njournal_dir = \"{r}/journal\"\nopt_in_file = \"{r}/opt-in\"\nstatic_machine_id_file = \"{r}/machine-id\"\nprobes_dirs = [\"{r}/probes\"]\ncontrol_socket = \"{r}/control.sock\"\nrecord_burst_limit = 0\nprobe_scan_interval_ms = 3600000\ndaemon_recycling_enabled = false\n[probes.ticker]\nclassifications = [\"org.example/test/tick\"]\n",
            r = root.display()
        ),
    )
    .unwrap();
    // Killed when dropped, a failed assertion too (a daemon left running
    // would hold the state directory's lock against the next run).
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _telemd = Daemon(
        Command::new(env!("CARGO_BIN_EXE_telemd"))
            .arg("-f")
            .arg(&config)
            .stderr(std::fs::File::create(root.join("telemd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait(Duration::from_secs(30), || root
        .join("telem-0")
        .exists()));
    let spool = root.join("spool");
    let hello = root.join("probes/ticker.wasm");
    let mut times = Vec::new();
    for i in 0..=DROPS {
        let before = spooled(&spool);
        std::fs::copy(&staged, root.join("probes/.copy")).unwrap();
        let t = Instant::now();
        std::fs::rename(root.join("probes/.copy"), &hello).unwrap();
        assert!(
            wait(Duration::from_secs(30), || spooled(&spool) > before),
            "drop {i}: no record"
        );
        // The first drop compiles the component; the rest load it cached.
        if i > 0 {
            times.push(t.elapsed());
        }
        std::fs::remove_file(&hello).unwrap();
        // Seen gone (its unload is one settle pass away), its last tick
        // spooled.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!("| drops | p50 | max |");
    println!("|---:|---:|---:|");
    println!(
        "| {DROPS} | {} | {} |",
        ms(pct(&mut times, 0.5)),
        ms(pct(&mut times, 1.0))
    );
}
