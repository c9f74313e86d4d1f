//! The kernel-oops probe (the legacy klogscanner) as a component: the
//! parsing is the `kernel-report` crate's. The kernel log is handed by the host, the assembler's open
//! report, the repeat counts and the count of skipped lines kept in the
//! probe's state between calls (written only if the call succeeds, with
//! the records: a batch handed again after a failure starts from the same
//! state).

use telemetrics_probe_sdk::{
    export_probe, log, state, BatchLimits, Event, Manifest, Probe, Record, Sent, Source, Trigger,
};

use kernel_report::assemble::Assembler;
use kernel_report::repeats::Repeats;
use kernel_report::Outgoing;

const OPEN: &str = "open-report";
const REPEATS: &str = "repeats";
const SKIPPED: &str = "skipped";

struct KernelOops;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sends a record. A refusal (over the hourly budget, most likely) is
/// logged and the batch goes on: failing it would hand the same batch
/// back until the probe is quarantined, and the kernel log would stop.
fn send(o: &Outgoing) {
    let sent = Record::new(o.classification.clone())
        .severity(o.severity)
        .payload(o.payload.clone())
        .send();
    let why = match sent {
        Ok(Sent::Stored(_)) => return,
        Ok(Sent::RateLimited) => "over the hourly budget".to_owned(),
        Ok(Sent::NotKept(why)) => why,
        Err(e) => e.to_string(),
    };
    log::warn(&format!("record {} not taken: {why}", o.classification));
}

fn save(key: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        state::delete(key)
    } else {
        state::set(key, bytes)
    }
    .map_err(|e| format!("state {key}: {e}"))
}

fn skipped_so_far() -> u64 {
    state::get(SKIPPED)
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl Probe for KernelOops {
    fn describe() -> Manifest {
        Manifest {
            name: "kernel-oops".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Kernel oopses, warnings, BUGs, panics and BERT reports from the kernel log".into(),
            classifications: vec![
                "org.clearlinux/kernel/*".into(),
                "org.clearlinux/bert/*".into(),
                "org.clearlinux/kernel-oops/*".into(),
            ],
            // The tick ends a report the log went quiet after and sends the
            // counts of repeats and skipped lines.
            triggers: vec![Trigger::Interval(60)],
            max_records_per_hour: 120,
            sources: vec![Source::KernelLog(BatchLimits {
                max_items: 512,
                max_bytes: 128 << 10,
            })],
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let mut asm = Assembler::decode(&state::get(OPEN).unwrap_or_default());
        let mut repeats = Repeats::decode(&state::get(REPEATS).unwrap_or_default());
        let mut reports = Vec::new();
        let now = now_secs();
        let mut out = Vec::new();
        match event {
            Event::KernelLog(batch) => {
                // The kernel's own lines only: what user space writes to
                // /dev/kmsg carries another facility and cannot forge a
                // report.
                for line in batch.lines.iter().filter(|l| l.facility == 0) {
                    asm.push(
                        line.usec,
                        &kernel_report::kmsg::unescape(&line.text),
                        &mut reports,
                    );
                }
                if batch.skipped > 0 {
                    let total = skipped_so_far().saturating_add(batch.skipped);
                    save(SKIPPED, &total.to_le_bytes())?;
                }
            }
            Event::Timer => {
                asm.tick(&mut reports);
                out.extend(repeats.expire(now).iter().map(Repeats::summary));
                let skipped = skipped_so_far();
                if skipped > 0 {
                    out.push(Outgoing {
                        classification: "org.clearlinux/kernel-oops/skipped".into(),
                        severity: 2,
                        payload: format!(
                            "Kernel log records lost before they were read (overwritten in the kernel's ring or malformed): {skipped}\n"
                        ),
                    });
                    save(SKIPPED, &[])?;
                }
            }
            // Whatever else a later contract hands it.
            _ => {}
        }
        out.extend(kernel_report::records_of(reports, &mut repeats, now));
        for o in &out {
            send(o);
        }
        if !out.is_empty() {
            log::info(&format!("{} record(s) sent", out.len()));
        }
        save(OPEN, &asm.encode())?;
        save(REPEATS, &repeats.encode())?;
        Ok(())
    }
}

export_probe!(KernelOops);
