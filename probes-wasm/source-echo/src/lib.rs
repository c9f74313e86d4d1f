//! A test probe for the event sources and the state interface. Kernel log
//! lines are commands:
//!
//! - `echo TEXT`: a record with payload `TEXT` (a refusal is logged);
//! - `slow`: logs `slow batch FIRST..LAST` and sleeps 3 s (a test kills
//!   the daemon meanwhile);
//! - `trap`: traps (every time the batch is handed again);
//! - `fill KIB`: stores KIB KiB under `fill`; a record `fill KIB: ok` or
//!   `fill KIB: <error>`;
//! - `count`: a record with how many lines it has handled, kept in state;
//! - `overfill N`: sends N records and fails if the host did not store
//!   them all (a batch holds at most 256: the probe's own doing, which
//!   must count toward its quarantine).
//!
//! A batch that says lines were skipped gives a record `skipped N`. Each
//! file of the `files` source gives a record `file NAME: CONTENT` (or
//! `gone NAME: ERROR` when it vanished before it was read); a file that
//! says `slow` is slept on for 3 s first.

use telemetrics_probe_sdk::{
    export_probe, log, state, BatchLimits, Event, FilesSource, Manifest, Probe, Record, Source,
    Trigger,
};

struct SourceEcho;

fn record(payload: String) -> Result<(), String> {
    Record::new("org.example/source-echo/line")
        .payload(payload)
        .send()?;
    Ok(())
}

fn counter(key: &str) -> u64 {
    state::get(key)
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl Probe for SourceEcho {
    fn describe() -> Manifest {
        Manifest {
            name: "source-echo".into(),
            version: "0.1.0".into(),
            description: "Test probe: echoes its sources".into(),
            classifications: vec!["org.example/source-echo/*".into()],
            triggers: vec![Trigger::Manual],
            max_records_per_hour: 1000,
            sources: vec![
                Source::KernelLog(BatchLimits {
                    max_items: 4,
                    max_bytes: 0,
                }),
                Source::Files(FilesSource {
                    dir: "/var/lib/telemd-test/drop".into(),
                    pattern: "*.txt".into(),
                    limits: BatchLimits {
                        max_items: 2,
                        max_bytes: 0,
                    },
                }),
            ],
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        match event {
            Event::KernelLog(batch) => {
                if batch.skipped > 0 {
                    record(format!("skipped {}", batch.skipped))?;
                }
                let lines = counter("lines") + batch.lines.len() as u64;
                state::set("lines", &lines.to_le_bytes()).map_err(|e| e.to_string())?;
                for l in &batch.lines {
                    let (cmd, arg) = l.text.split_once(' ').unwrap_or((&l.text, ""));
                    match cmd {
                        // A line the record rules refuse (binary bytes) is
                        // logged, not a failure of the batch.
                        "echo" => {
                            if let Err(e) = record(arg.to_owned()) {
                                log::warn(&format!("line {} not recorded: {e}", l.seq));
                            }
                        }
                        "slow" => {
                            let first = batch.lines.first().map_or(0, |l| l.seq);
                            let last = batch.lines.last().map_or(0, |l| l.seq);
                            log::info(&format!("slow batch {first}..{last}"));
                            std::thread::sleep(std::time::Duration::from_secs(3));
                        }
                        "trap" => unreachable!("asked to trap"),
                        "fill" => {
                            let kib: usize = arg.parse().map_err(|_| "fill KIB".to_owned())?;
                            let outcome = match state::set("fill", &vec![7u8; kib << 10]) {
                                Ok(()) => "ok".to_owned(),
                                Err(e) => format!("{e:?}"),
                            };
                            record(format!("fill {kib}: {outcome}"))?;
                        }
                        "count" => record(format!("count {lines}"))?,
                        "overfill" => {
                            let n: u32 = arg.parse().map_err(|_| "overfill N".to_owned())?;
                            for i in 0..n {
                                let sent = Record::new("org.example/source-echo/line")
                                    .payload(format!("overfill {i}"))
                                    .send()?;
                                if !sent.is_stored() {
                                    return Err(format!("overfill stopped at {i}: {sent:?}"));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Event::Files((_, files)) => {
                for f in files {
                    let name = f.path.rsplit('/').next().unwrap_or("").to_owned();
                    match std::fs::read_to_string(&f.path) {
                        Ok(text) if text.trim() == "slow" => {
                            log::info(&format!("slow file {name}"));
                            std::thread::sleep(std::time::Duration::from_secs(3));
                            record(format!("file {name}: slow"))?
                        }
                        Ok(text) => record(format!("file {name}: {}", text.trim()))?,
                        Err(e) => record(format!("gone {name}: {e}"))?,
                    }
                }
                Ok(())
            }
            Event::Manual(args) if args.first().map(String::as_str) == Some("keys") => {
                record(format!("keys {}", state::keys().join(",")))
            }
            _ => Ok(()),
        }
    }
}

export_probe!(SourceEcho);
