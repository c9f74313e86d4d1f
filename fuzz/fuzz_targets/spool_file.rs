//! Any bytes as a spool file (ours or the legacy daemon's, `docs/legacy-
//! protocol.md` §3): a file that decodes gives a record that encodes to a
//! file of the size `encoded_len` says, which decodes to the same record;
//! validation never panics; a record valid for the socket also frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telem_core::record::spool_file::{decode, encode, encoded_len};
use telem_core::record::wire::{encode_frame, parse_frame_body};
use telem_core::record::NUM_HEADERS;

fuzz_target!(|data: &[u8]| {
    let rec = match decode(data) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let enc = encode(&rec);
    assert_eq!(enc.len(), encoded_len(&rec));
    assert_eq!(enc.len(), rec.byte_len());
    // Only a missing space after a header's colon and a missing final
    // newline are added.
    assert!(
        enc.len() <= data.len() + NUM_HEADERS + 1,
        "re-encoded {} bytes from {}",
        enc.len(),
        data.len()
    );
    let back = decode(&enc).unwrap_or_else(|e| panic!("a re-encoded spool file: {e}"));
    assert_eq!(back, rec, "the record changed through its spool file");
    assert_eq!(encode(&back), enc, "encode is not a fixed point");

    // Delivery validates a spooled record before it posts it.
    if rec.validate().is_ok() {
        // A valid record (config aside, which the socket checks on its
        // own) goes over the socket and comes back the same.
        let mut plain = rec.clone();
        plain.config = None;
        let frame = encode_frame(&plain);
        let again = parse_frame_body(&frame[4..])
            .unwrap_or_else(|e| panic!("a valid spooled record does not frame: {e}"));
        assert_eq!(again, plain);
    }
});
