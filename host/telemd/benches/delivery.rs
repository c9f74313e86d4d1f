//! Delivery benchmark: drain a spool of 10,000 records to a local HTTP
//! collector; reports records/s and how many TCP connections `telemd`
//! opened to do it.
//!
//! Run: `cargo bench -p telemd --bench delivery`
//! (`-- --records N` to change the count).

#[path = "../../../tests/support/collector.rs"]
mod collector;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector::{Collector, Mode};
use telem_core::record::wire::parse_frame;
use telem_core::record::{spool_file, Header};

const TELEMD: &str = env!("CARGO_BIN_EXE_telemd");

fn main() {
    let mut records = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--records" {
            records = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--records N");
        }
    }
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-delivery");
    let _ = std::fs::remove_dir_all(&root);
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let fixture = format!(
        "{}/../../tests/fixtures/legacy/frame-record-gen.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut rec = parse_frame(&std::fs::read(fixture).unwrap()).unwrap();
    for i in 0..records {
        rec.payload = format!("bench record {i}");
        rec.headers
            .set(Header::EventId, telem_core::record::random_id());
        std::fs::write(spool.join(format!("{i:032x}")), spool_file::encode(&rec)).unwrap();
    }
    let _ = Command::new("sync").status();

    let c = Collector::start(Mode::Status(200, None));
    let r = root.display();
    let cfg = format!(
        "server = \"{}\"\nsocket_path = \"{r}/telem-0\"\nspool_dir = \"{r}/spool\"\nstate_dir = \"{r}/state\"\n\
         journal_dir = \"{r}/journal\"\nopt_in_file = \"{r}/opt-in\"\ncontrol_socket = \"{r}/control.sock\"\n\
         rate_limit_enabled = false\nspool_max_size = -1\n",
        c.url()
    );
    std::fs::write(root.join("telemd.toml"), cfg).unwrap();
    let start = Instant::now();
    let mut child = Command::new(TELEMD)
        .arg("-f")
        .arg(root.join("telemd.toml"))
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = start + Duration::from_secs(120);
    while c.accepted_count() < records && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let delivered = c.accepted_count();
    let left = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    let _ = child.kill();
    let _ = child.wait();
    println!("| records | seconds | records/s | TCP connections | left in spool |");
    println!("|--------:|--------:|----------:|----------------:|--------------:|");
    println!(
        "| {delivered} | {secs:.2} | {:.0} | {} | {left} |",
        delivered as f64 / secs,
        c.connections()
    );
    let _ = std::fs::remove_dir_all(&root);
    if delivered < records {
        eprintln!("only {delivered} of {records} delivered");
        std::process::exit(1);
    }
}
