//! Tests of `record`.

use super::*;

#[test]
fn sample_record_is_valid() {
    sample().validate().unwrap();
}

#[test]
fn classification_rules() {
    assert!(validate_classification("a/b/c").is_ok());
    let forty = "x".repeat(40);
    assert!(validate_classification(&format!("{forty}/{forty}/{forty}")).is_ok());
    for bad in [
        "",
        "a/b",
        "a/b/c/d",
        "a//c",
        "/b/c",
        "a b/c/d",
        "a/b/c\u{e9}",
    ] {
        assert!(
            matches!(
                validate_classification(bad),
                Err(RecordError::Classification { .. })
            ),
            "{bad:?} accepted"
        );
    }
    let err = validate_classification(&format!("{}/b/c", "x".repeat(41))).unwrap_err();
    assert!(err.to_string().contains("at most 40"), "{err}");
    let long = format!("{}/b/c", "y".repeat(130));
    assert!(validate_classification(&long)
        .unwrap_err()
        .to_string()
        .contains("122"));
}

#[test]
fn severity_rules() {
    for ok in ["1", "2", "3", "4"] {
        assert!(validate_severity_str(ok).is_ok());
    }
    for bad in ["0", "5", "-1", "+1", "", "1.0", "256", " 1"] {
        assert!(validate_severity_str(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn event_id_rules() {
    assert!(validate_event_id("0123456789abcdef0123456789abcdef").is_ok());
    let e = validate_event_id("0123456789ABCDEF0123456789abcdef").unwrap_err();
    assert!(e.to_string().contains("position 10"), "{e}");
    assert!(validate_event_id("abc")
        .unwrap_err()
        .to_string()
        .contains("32"));
}

#[test]
fn payload_rules() {
    assert!(validate_payload(b"multi\nline\tpayload\r\n").is_ok());
    assert!(validate_payload(&[b'x'; 8192]).is_ok());
    assert_eq!(
        validate_payload(&[b'x'; 8193]),
        Err(RecordError::PayloadTooLong { len: 8193 })
    );
    assert_eq!(
        validate_payload(b"ab\0c"),
        Err(RecordError::PayloadByte { offset: 2, byte: 0 })
    );
    assert_eq!(
        validate_payload("caf\u{e9}".as_bytes()),
        Err(RecordError::PayloadByte {
            offset: 3,
            byte: 0xc3
        })
    );
}

#[test]
fn validate_checks_every_header() {
    let mut r = sample();
    r.headers.set(Header::Severity, "9");
    assert!(matches!(r.validate(), Err(RecordError::Severity { .. })));
    let mut r = sample();
    r.headers.set(Header::CreationTimestamp, "12a");
    assert!(r
        .validate()
        .unwrap_err()
        .to_string()
        .contains("creation_timestamp"));
    let mut r = sample();
    r.headers.set(Header::PayloadFormatVersion, "4294967296");
    assert!(r
        .validate()
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let mut r = sample();
    r.headers.set(Header::RecordFormatVersion, "3");
    assert!(r.validate().is_err());
    let mut r = sample();
    r.headers.set(Header::CpuModel, "AMD\u{7f}");
    assert!(r.validate().unwrap_err().to_string().contains("cpu_model"));
    // machine_id is replaced by the daemon, never judged.
    let mut r = sample();
    r.headers.set(Header::MachineId, "FFFFFFFF");
    assert!(r.validate().is_ok());
}

#[test]
fn header_block_round_trip_and_errors() {
    let r = sample();
    let block = r.headers.to_block();
    assert_eq!(Headers::parse_block(block.as_bytes()).unwrap(), r.headers);

    let missing = block.replacen("arch: x86_64\n", "", 1);
    let e = Headers::parse_block(missing.as_bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            RecordError::UnexpectedHeader {
                expected: "arch",
                ..
            }
        ),
        "{e}"
    );

    let swapped = block.replacen(
        "classification: org.example/test/vec\nseverity: 3\n",
        "severity: 3\nclassification: org.example/test/vec\n",
        1,
    );
    assert_ne!(swapped, block);
    let e = Headers::parse_block(swapped.as_bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            RecordError::UnexpectedHeader {
                expected: "classification",
                index: 1,
                ..
            }
        ),
        "{e}"
    );

    let short = &block[..block.len() - 1];
    assert!(matches!(
        Headers::parse_block(short.as_bytes()),
        Err(RecordError::UnterminatedHeader { index: 14 })
    ));
    let extra = format!("{block}extra: 1\n");
    assert!(matches!(
        Headers::parse_block(extra.as_bytes()),
        Err(RecordError::TrailingHeaderData { .. })
    ));
}

// Found by scripts/mutants.sh (docs/mutants.md).

#[test]
fn byte_len_is_the_spool_file_size() {
    let r = sample();
    assert_eq!(r.byte_len(), spool_file::encode(&r).len());
}

#[test]
fn numbers_are_plain_unsigned_decimals() {
    for bad in ["", "+12", "12a"] {
        let mut r = sample();
        r.headers.set(Header::CreationTimestamp, bad);
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("not an unsigned decimal number"), "{bad:?}: {e}");
    }
}

#[test]
fn header_values_may_be_exactly_the_limit() {
    assert!(validate_header_value(Header::BoardName, &"x".repeat(MAX_HEADER_VALUE_LEN)).is_ok());
    assert!(
        validate_header_value(Header::BoardName, &"x".repeat(MAX_HEADER_VALUE_LEN + 1)).is_err()
    );
}

#[test]
fn a_bad_header_line_is_quoted_in_the_error() {
    let e = Headers::parse_block(b"no colon here\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no colon here"), "{e}");
}
