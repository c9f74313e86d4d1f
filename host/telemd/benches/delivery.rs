//! Delivery benchmark: drain a spool of 10,000 records to a local HTTP
//! collector; reports records/s and how many TCP connections `telemd`
//! opened to do it.
//!
//! The daemon starts with an empty spool; the records are then moved in
//! at once (written beside it first, on the same filesystem) and a flush
//! asked for over the control socket, which starts the clock. With
//! `--hostile`, each run alternates with one where ten hostile probes run
//! at their limits meanwhile (benches/support), the probes loaded and in
//! their loops before the records move in.
//!
//! Each post format (`headers`, `json`, `otlp`) drains its own spool in
//! the same run; the clock stops when the collector has accepted every
//! record (an OTLP request counted by its log records), and the run then
//! checks that the spool empties. Bytes on the wire are the request heads
//! and bodies the collector read.
//!
//! Run: `cargo bench -p telemd --bench delivery`
//! (`-- --records N`, `-- --rounds R`, `-- --hostile`, `-- --dir DIR`
//! for the filesystem the daemon uses, `-- --formats otlp,headers`).

#[path = "../../../tests/support/collector.rs"]
mod collector;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector::{Collector, Mode};
use support::{install_hostile, Hostile};
use telem_core::control::client::Client;
use telem_core::control::Request;
use telem_core::record::wire::parse_frame;
use telem_core::record::{spool_file, Header};

const TELEMD: &str = env!("CARGO_BIN_EXE_telemd");

struct Run {
    delivered: usize,
    secs: f64,
    connections: usize,
    left: usize,
    requests: usize,
    wire_bytes: usize,
}

fn spooled(root: &Path) -> usize {
    std::fs::read_dir(root.join("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

fn run(root: &Path, records: usize, hostile: bool, format: &str) -> Run {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("spool")).unwrap();
    let staged = root.join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    let fixture = format!(
        "{}/../../tests/fixtures/legacy/frame-record-gen.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut rec = parse_frame(&std::fs::read(fixture).unwrap()).unwrap();
    for i in 0..records {
        rec.payload = format!("bench record {i}");
        rec.headers
            .set(Header::EventId, telem_core::record::random_id());
        std::fs::write(staged.join(format!("{i:032x}")), spool_file::encode(&rec)).unwrap();
    }
    let grants = if hostile {
        install_hostile(root)
    } else {
        String::new()
    };
    let _ = Command::new("sync").status();

    let c = Collector::start(Mode::Status(200, None));
    let r = root.display();
    let cfg = format!(
        "server = \"{}\"\nsocket_path = \"{r}/telem-0\"\nspool_dir = \"{r}/spool\"\nstate_dir = \"{r}/state\"\n\
         journal_dir = \"{r}/journal\"\nopt_in_file = \"{r}/opt-in\"\ncontrol_socket = \"{r}/control.sock\"\n\
         probes_dirs = [\"{r}/probes\"]\nrate_limit_enabled = false\nspool_max_size = -1\n\
         post_format = \"{format}\"\n{grants}",
        c.url()
    );
    std::fs::write(root.join("telemd.toml"), cfg).unwrap();
    std::fs::write(root.join("opt-in"), "").unwrap();
    let mut child = Command::new(TELEMD)
        .arg("-f")
        .arg(root.join("telemd.toml"))
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let control = root.join("control.sock");
    let t = Instant::now();
    while Client::connect(&control, Some(Duration::from_secs(5))).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "telemd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let probes = hostile.then(|| {
        let h = Hostile::start(root);
        std::thread::sleep(Duration::from_secs(3));
        h
    });
    for e in std::fs::read_dir(&staged).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), root.join("spool").join(e.file_name())).unwrap();
    }
    let start = Instant::now();
    Client::connect(&control, Some(Duration::from_secs(60)))
        .and_then(|mut c| c.call(&Request::Flush))
        .expect("flush");
    let deadline = start + Duration::from_secs(120);
    while c.records_accepted() < records && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    // Then every record's outcome is journaled and its file removed.
    while spooled(root) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = spooled(root);
    let requests = c.requests();
    // Every record left the spool as delivered (the collector answers 200).
    let delivered = if requests.iter().all(|r| r.answered == 200) {
        records - left
    } else {
        0
    };
    let wire_bytes = requests.iter().map(|r| r.head.len() + r.body.len()).sum();
    if let Some(h) = probes {
        eprintln!("  hostile probe calls during the run: {}", h.stop());
    }
    let _ = child.kill();
    let _ = child.wait();
    Run {
        delivered,
        secs,
        connections: c.connections(),
        left,
        requests: requests.len(),
        wire_bytes,
    }
}

fn main() {
    let support::BenchArgs {
        records,
        rounds,
        hostile,
        dir,
        ..
    } = support::BenchArgs::parse(support::BenchArgs {
        records: 10_000,
        rounds: 1,
        hostile: false,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        clients: Vec::new(),
    });
    let formats: Vec<String> = std::env::args()
        .skip_while(|a| a != "--formats")
        .nth(1)
        .unwrap_or_else(|| "headers,json,otlp".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let base = dir.join("bench-delivery");
    let mut runs: Vec<(String, bool, Run)> = Vec::new();
    for round in 0..rounds {
        for format in &formats {
            for with in [false, true] {
                if with && !hostile {
                    continue;
                }
                let r = run(
                    &base.join(format!("{format}-{with}-{round}")),
                    records,
                    with,
                    format,
                );
                eprintln!(
                    "{format}, {}: {} delivered in {:.2}s",
                    if with { "10 hostile probes" } else { "quiet" },
                    r.delivered,
                    r.secs
                );
                runs.push((format.clone(), with, r));
            }
        }
    }
    println!("| format | probes | records | seconds (median) | records/s (median) | runs | requests | bytes on the wire | TCP connections | left in spool |");
    println!("|---|---|--:|--:|--:|---|--:|--:|--:|--:|");
    let mut failed = false;
    for format in &formats {
        for with in [false, true] {
            let mut rs: Vec<&Run> = runs
                .iter()
                .filter(|(f, w, _)| f == format && *w == with)
                .map(|(_, _, r)| r)
                .collect();
            if rs.is_empty() {
                continue;
            }
            rs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
            let m = rs[rs.len() / 2];
            let all: Vec<String> = rs
                .iter()
                .map(|r| format!("{:.0}", r.delivered as f64 / r.secs))
                .collect();
            failed |= rs.iter().any(|r| r.delivered < records);
            println!(
                "| {format} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} |",
                if with { "10 hostile" } else { "none" },
                m.delivered,
                m.secs,
                m.delivered as f64 / m.secs,
                all.join(", "),
                m.requests,
                m.wire_bytes,
                m.connections,
                m.left
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    if failed {
        eprintln!("records were not delivered");
        std::process::exit(1);
    }
}
