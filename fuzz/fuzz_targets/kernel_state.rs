//! Any bytes as the state a kernel-oops probe keeps between calls (its
//! `open-report` and `repeats` keys): `Assembler::decode` and
//! `Repeats::decode` (probes-wasm/kernel-report) promise that a damaged
//! state is read as an empty one or loses at most the open report. After
//! decoding, the probe goes on: a timer tick, a few lines, the end of the
//! log, and the records of what was finished must be ones the host takes.
#![no_main]

use kernel_report::assemble::{Assembler, MAX_LINES};
use kernel_report::repeats::{Repeats, MAX_TRACKED};
use libfuzzer_sys::fuzz_target;
use telem_fuzz::{check_outgoing, check_report};

const LINES: [&str; 4] = [
    "CPU: 1 PID: 42 Comm: insmod Not tainted 6.1.0 #1",
    "Call Trace:",
    " do_one_initcall+0x4e/0x190",
    "---[ end trace 0000000000000000 ]---",
];

fuzz_target!(|data: &[u8]| {
    let (open, seen) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let asm = Assembler::decode(open);
    // What decodes encodes back to itself.
    assert_eq!(Assembler::decode(&asm.encode()), asm);
    let mut repeats = Repeats::decode(seen);
    assert!(repeats.seen.len() <= MAX_TRACKED);

    for ending in 0..3 {
        let mut asm = asm.clone();
        let mut reports = Vec::new();
        match ending {
            0 => {
                asm.tick(&mut reports);
                asm.tick(&mut reports);
            }
            1 => {
                for (i, l) in LINES.iter().enumerate() {
                    asm.push(u64::MAX / 2 + i as u64, l, &mut reports);
                }
            }
            _ => asm.finish(&mut reports),
        }
        asm.finish(&mut reports);
        // The probe's own step first, so a panic there is the project's.
        let finished = reports.clone();
        for o in kernel_report::records_of(reports, &mut repeats, 1_700_000_000) {
            check_outgoing(&o);
        }
        for r in &finished {
            check_report(r);
            assert!(r.lines.len() <= MAX_LINES);
        }
    }
    // A summary names a classification the state holds (the host judges
    // it); its payload is one the record format takes.
    for s in repeats.expire(u64::MAX) {
        let o = Repeats::summary(&s);
        telem_core::record::validate_payload(o.payload.as_bytes())
            .unwrap_or_else(|e| panic!("summary payload refused: {e}"));
    }
    let _ = repeats.encode();
});
