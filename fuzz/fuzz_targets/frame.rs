//! Any bytes as a native socket frame (`docs/legacy-protocol.md` §1), as
//! the daemon receives one: a frame that parses has a sound structure, its
//! record validates or is refused with an error (never a panic), encodes
//! back to a frame that parses to the same record, and spools to a file
//! that decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telem_core::record::wire::{
    encode_frame, parse_frame, parse_frame_body, FrameError, MAX_FRAME_SIZE, PATH_MAX,
};
use telem_core::record::{spool_file, validate_payload, MAX_PAYLOAD_LEN, NUM_HEADERS};

fuzz_target!(|data: &[u8]| {
    let rec = match parse_frame(data) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // What the parser promises before `validate`.
    assert!(data.len() <= MAX_FRAME_SIZE as usize);
    assert!(rec.payload.len() <= MAX_PAYLOAD_LEN);
    validate_payload(rec.payload.as_bytes()).expect("payload checked by the parser");
    if let Some(c) = &rec.config {
        assert!(c.starts_with('/') && c.len() <= PATH_MAX, "{c:?}");
        assert!(!c.bytes().any(|b| b.is_ascii_control()), "{c:?}");
    }
    for (name, value) in rec.headers.iter() {
        assert!(!value.contains('\n'), "{name}: {value:?}");
    }
    if let Err(e) = rec.validate() {
        let _ = e.to_string();
    }

    // Encode and parse again: the same record. The encoder writes
    // `name: value`; a frame that left the space out grows by one byte per
    // such header, which may take a frame at the size limit over it.
    let enc = encode_frame(&rec);
    assert!(
        enc.len() >= data.len() && enc.len() <= data.len() + NUM_HEADERS,
        "re-encoded {} bytes from {}",
        enc.len(),
        data.len()
    );
    match parse_frame(&enc) {
        Ok(back) => assert_eq!(back, rec, "the record changed through encode_frame"),
        Err(FrameError::TooLarge(n)) => {
            assert!(n > MAX_FRAME_SIZE);
            let back = parse_frame_body(&enc[4..]).expect("the body of a re-encoded frame");
            assert_eq!(back, rec, "the record changed through encode_frame");
        }
        Err(e) => panic!("a re-encoded frame does not parse: {e}"),
    }
    // The canonical encoding is a fixed point.
    if enc.len() == data.len() {
        assert_eq!(
            enc, data,
            "a frame in canonical form re-encodes differently"
        );
    }

    // The daemon spools what it accepted; the spool file reads back as the
    // same record, and its size is what the rate limiter counts.
    let file = spool_file::encode(&rec);
    assert_eq!(file.len(), spool_file::encoded_len(&rec));
    assert_eq!(file.len(), rec.byte_len());
    let back = spool_file::decode(&file).expect("a spool file of a parsed frame");
    assert_eq!(back, rec, "the record changed through its spool file");
});
