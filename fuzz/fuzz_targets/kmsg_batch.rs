//! Any bytes as the kernel log a kernel-oops probe is handed: the stream
//! through the host's reader (host/telemd/src/sources/kmsg.rs `Parser`),
//! cut into batches the way `sources::kmsg::drive` cuts them (item
//! and byte limits the input picks), and each batch through the probe's
//! `handle` (probes-wasm/kernel-oops): the kernel's own lines into the
//! report assembler (probes-wasm/kernel-report/src/assemble.rs), whose
//! open report and repeat counts are kept as bytes between calls, then
//! `records_of`. Timer ticks come between batches where the input says.
//!
//! Checked: the assembler kept as bytes between batches finishes exactly
//! the reports of one that stayed in memory; every report has its start
//! line and at most `MAX_LINES` lines; every record is one the host takes.
#![no_main]

use kernel_report::assemble::Assembler;
use kernel_report::repeats::{Repeats, MAX_TRACKED};
use libfuzzer_sys::fuzz_target;
use telem_fuzz::{check_outgoing, check_report};
use telemd::sources::kmsg::{Item, Parser};

fuzz_target!(|data: &[u8]| {
    let &[items_knob, bytes_knob, tick_knob, ref rest @ ..] = data else {
        return;
    };
    let max_items = usize::from(items_knob % 16) + 1;
    let max_bytes = usize::from(bytes_knob) * 16 + 1;

    let mut parser = Parser::new(None);
    let mut items = Vec::new();
    parser.feed(rest, &mut items);
    parser.flush(&mut items);

    // Batches as `sources::kmsg::drive` makes them (it reads from a channel;
    // here everything is already there).
    let mut batches: Vec<Vec<_>> = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for item in items {
        let Item::Line(line) = item else { continue };
        if !batch.is_empty() && (batch.len() >= max_items || bytes + line.text.len() > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += line.text.len();
        batch.push(line);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }

    let mut kept = Assembler::default(); // stays in memory
    let mut open_state = Vec::new(); // the probe's state: `open-report`
    let mut repeats_state = Vec::new(); // and `repeats`
    let now = 1_700_000_000;
    for (i, batch) in batches.iter().enumerate() {
        let mut asm = Assembler::decode(&open_state);
        assert_eq!(asm, kept, "the open report changed through its state bytes");
        let mut repeats = Repeats::decode(&repeats_state);
        let mut reports = Vec::new();
        let mut expected = Vec::new();
        for line in batch.iter().filter(|l| l.facility == 0) {
            asm.push(line.usec, &line.text, &mut reports);
            kept.push(line.usec, &line.text, &mut expected);
        }
        if tick_knob & (1 << (i % 8)) != 0 {
            asm.tick(&mut reports);
            kept.tick(&mut expected);
        }
        assert_eq!(reports, expected);
        for r in &reports {
            check_report(r);
        }
        for o in kernel_report::records_of(reports, &mut repeats, now + i as u64) {
            check_outgoing(&o);
        }
        assert!(repeats.seen.len() <= MAX_TRACKED);
        for s in repeats.expire(now + i as u64) {
            check_outgoing(&Repeats::summary(&s));
        }
        open_state = asm.encode();
        repeats_state = repeats.encode();
    }
    // The log ends: what is open is finished.
    let mut asm = Assembler::decode(&open_state);
    assert_eq!(asm, kept, "the open report changed through its state bytes");
    let mut reports = Vec::new();
    asm.finish(&mut reports);
    for r in &reports {
        check_report(r);
    }
    let mut repeats = Repeats::decode(&repeats_state);
    for o in kernel_report::records_of(reports, &mut repeats, now) {
        check_outgoing(&o);
    }
});
