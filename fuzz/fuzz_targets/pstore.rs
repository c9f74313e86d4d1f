//! Any bytes as a pstore dump (probes-wasm/pstore): the first line as a
//! file name under /sys/fs/pstore (`parse_name`), the rest as the dump's
//! text as the probe reads a file (lossily), split into parts at their
//! `Reason#N PartK` headers and joined as the probe joins a dump's part
//! files (`join_parts`), then `records`; `digest` tells a dump seen twice.
//!
//! Checked: a name's EFI part number fits its two digits; every record is
//! one the host takes, from the joined parts and from the text as it is
//! (systemd-pstore's `dmesg.txt`); a dump of one part has the same digest
//! joined (`join_parts` ends it with a newline) as read whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pstore::{digest, is_part_header, join_parts, parse_name, records};
use telem_fuzz::check_outgoing;

fuzz_target!(|data: &[u8]| {
    let (name, dump) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(name) = std::str::from_utf8(name) {
        if let Some((key, part)) = parse_name(name) {
            assert!(!key.backend.is_empty() && !key.dump.is_empty(), "{key:?}");
            assert!(name.starts_with("dmesg-") && !name.ends_with(".enc.z"));
            if key.backend.starts_with("efi") {
                assert!(part < 100, "part {part} of {name:?}");
            }
        }
    }

    // As the probe reads a file: bytes that are not UTF-8 are replaced.
    let text = String::from_utf8_lossy(dump);
    // The parts of a pasted dump, each from its header on (text before
    // the first header is a part of its own, number 0).
    let mut parts: Vec<(u32, String)> = vec![(0, String::new())];
    for l in text.split_inclusive('\n') {
        let line = l.trim_end_matches(['\n', '\r']);
        if is_part_header(line) {
            let n = line
                .rsplit("Part")
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            parts.push((n, String::new()));
        }
        parts.last_mut().expect("a part").1.push_str(l);
    }
    parts.retain(|p| !p.1.is_empty());
    let one_part = parts.len() <= 1;
    let joined = join_parts(parts);

    for o in records(&joined) {
        check_outgoing(&o);
    }
    // `dmesg.txt` as systemd-pstore writes it: the text as it is.
    for o in records(&text) {
        check_outgoing(&o);
    }
    if one_part {
        assert_eq!(digest(&joined), digest(&text), "one dump, two digests");
    }
});
