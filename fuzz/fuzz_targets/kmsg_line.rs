//! Any bytes as kernel log records (host/telemd/src/sources/kmsg.rs): one
//! record's first line through `parse_record`, and the whole input as a
//! stream through `Parser`, read in pieces of a size the input picks.
//! `parse_record` keeps the text within `TEXT_CAP` and takes level and
//! facility from the priority; the parser gives the same items however
//! the stream is cut, hands records on with rising sequence numbers after
//! its cursor, and never more than two items per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemd::sources::kmsg::{parse_record, Item, Parser, LINE_CAP, TEXT_CAP};

/// The items of a stream read in these pieces, up to its end.
fn run<'a>(after: Option<u64>, pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Item> {
    let mut p = Parser::new(after);
    let mut out = Vec::new();
    for piece in pieces {
        p.feed(piece, &mut out);
    }
    p.flush(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    // One record, as `/dev/kmsg` hands it in one read.
    let first = stream.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if let Some(l) = parse_record(first) {
        assert!(l.text.len() <= TEXT_CAP, "{} bytes of text", l.text.len());
        assert!(l.level <= 7);
        let semi = first.iter().position(|&b| b == b';').expect("a ';'");
        let head = std::str::from_utf8(&first[..semi]).expect("a UTF-8 head");
        let mut f = head.split(',');
        let pri: u32 = f.next().unwrap().parse().unwrap();
        assert_eq!(f.next().unwrap().parse::<u64>().unwrap(), l.seq);
        assert_eq!(f.next().unwrap().parse::<u64>().unwrap(), l.usec);
        assert_eq!(u32::from(l.level), pri & 7);
        assert_eq!(u32::from(l.facility), (pri >> 3) & 0xff);
        let full = String::from_utf8_lossy(&first[semi + 1..]);
        assert!(full.starts_with(&l.text));
        if full.len() <= TEXT_CAP {
            assert_eq!(full, l.text);
        }
    }

    // The stream: whole, then in pieces.
    let after = (knobs & 0x80 != 0).then_some(u64::from(knobs & 0x0f));
    let chunk = usize::from(knobs & 0x70) / 16 * 7 + 1;
    let whole = run(after, std::iter::once(stream));
    let pieces = run(after, stream.chunks(chunk));
    assert_eq!(
        whole, pieces,
        "items depend on how the stream was cut ({chunk})"
    );

    let lines = stream.split(|&b| b == b'\n').count();
    assert!(
        whole.len() <= 2 * lines,
        "{} items of {lines} lines",
        whole.len()
    );
    let mut last = after;
    for item in &whole {
        match item {
            Item::Line(l) => {
                assert!(last.is_none_or(|a| l.seq > a), "{} after {last:?}", l.seq);
                last = Some(l.seq);
                assert!(l.text.len() <= TEXT_CAP);
                assert!(l.text.len() <= LINE_CAP);
            }
            Item::Skipped(n) => assert!(*n > 0),
        }
    }
});
