//! End-to-end: a `kill -9` in the middle of spool writes never leaves a
//! partial record visible under a record name.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use telem_core::record::wire::{encode_frame, parse_frame};
use telem_core::record::Header;

#[test]
fn spool_survives_kill_9_during_writes() {
    let mut d = TestDaemon::start(HOLD);
    let sock = d.socket();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (sock, stop, sent) = (sock.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut r = parse_frame(&fixture("frame-record-gen.bin")).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Large payloads widen the window in which a write is in progress.
                    r.payload = format!("{t}-{i}-{}", "x".repeat(8000));
                    r.headers
                        .set(Header::EventId, telem_core::record::random_id());
                    if telem_core::native_client::send_frame(
                        &sock,
                        &encode_frame(&r),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let records flow, then kill the daemon mid-stream.
    assert!(
        wait_until(Duration::from_secs(20), || d.spool_names().len() >= 300),
        "records are not flowing:\n{}",
        d.log()
    );
    d.kill9();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let names = d.spool_names();
    assert!(!names.is_empty());
    // Every file under a record name is a whole, valid record.
    for r in d.spool_records() {
        r.validate().unwrap();
        assert!(r.payload.ends_with(&"x".repeat(8000)), "truncated payload");
    }
    eprintln!(
        "{} sent, {} spooled before the kill",
        sent.load(Ordering::Relaxed),
        names.len()
    );

    // A restart sweeps any temp file the kill left and keeps every record.
    let d = d.spawn();
    let leftovers: Vec<_> = std::fs::read_dir(d.path("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files survived a restart");
    assert_eq!(d.spool_names(), names);
}
