//! Any bytes as journalctl's JSON output (host/telemd/src/sources/
//! journal.rs): one line through `parse_line` with the fields a probe is
//! granted (the journal-errors probe's, and a name that repeats), and the
//! whole input through `read_entries`, read in pieces. An entry keeps
//! only granted fields, in the order granted, each value within
//! `VALUE_CAP` and all within `ENTRY_CAP`; the reader gives one item per
//! line, the entry `parse_line` gives for it or a skip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telem_fuzz::{split_lines, Chunked};
use telemd::sources::systemd_journal::{parse_line, read_entries, Item, ENTRY_CAP, LINE_CAP, VALUE_CAP};

const FIELDS: [&str; 9] = [
    "MESSAGE",
    "_PID",
    "UNIT",
    "_SYSTEMD_UNIT",
    "SYSLOG_IDENTIFIER",
    "PRIORITY",
    "EXIT_CODE",
    "EXIT_STATUS",
    "MESSAGE",
];

/// The fields an entry carries (`JournalEntry::fields`).
fn check_entry(granted: &[String], fields: &[(String, String)]) {
    let mut total = 0;
    let mut at = 0;
    for (name, value) in fields {
        // Granted, and in the granted order.
        let i = granted[at..]
            .iter()
            .position(|f| f == name)
            .unwrap_or_else(|| panic!("{name:?} not granted or out of order"));
        at += i + 1;
        assert!(value.len() <= VALUE_CAP, "{} bytes", value.len());
        total += value.len();
    }
    assert!(total <= ENTRY_CAP, "{total} bytes");
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let fields: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
    let (lines, _) = split_lines(stream);
    let first = lines.first().copied().unwrap_or(stream);
    if let Some((_cursor, entry)) = parse_line(first, &fields) {
        check_entry(&fields, &entry.fields);
    }

    let mut got = Vec::new();
    let reader = Chunked {
        data: stream,
        chunk: usize::from(knob) * 31 + 1,
    };
    read_entries(reader, &fields, |item| {
        got.push(item);
        true
    });
    assert_eq!(got.len(), lines.len(), "one item per line");
    for (item, line) in got.iter().zip(&lines) {
        let want = if line.len() > LINE_CAP {
            None
        } else {
            parse_line(line, &fields)
        };
        match (item, want) {
            (Item::Skipped(1), None) => {}
            (Item::Entry(c, e), Some((wc, we))) => {
                assert_eq!(c, &wc);
                assert_eq!(e, &we);
                check_entry(&fields, &e.fields);
            }
            (item, want) => panic!("reader gave {item:?}, parse_line {want:?}"),
        }
    }
});
