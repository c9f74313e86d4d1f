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

/// Builds the shim that logs the syncs and unlinks a program completes
/// (`tests/c/sync_log.c`) into `dir`.
fn sync_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let so = dir.join("sync_log.so");
    let st = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/c/sync_log.c"))
        .arg("-ldl")
        .status()
        .expect("gcc");
    assert!(st.success(), "building the sync shim");
    so
}

/// A daemon run with the shim preloaded (its log: `sync.log` in the
/// daemon's directory), after `prepare` has laid out its directories.
fn daemon_watched_for_syncs(prepare: impl FnOnce(&TestDaemon)) -> TestDaemon {
    let mut d = TestDaemon::prepare(HOLD);
    std::fs::write(d.path("opt-in"), "").unwrap();
    prepare(&d);
    let shim = sync_shim(d.dir.path());
    let mut cmd = std::process::Command::new(TELEMD);
    cmd.env("LD_PRELOAD", &shim)
        .env("SYNC_LOG", d.path("sync.log"));
    d.spawn_with(cmd);
    d
}

fn sync_log(d: &TestDaemon) -> Vec<String> {
    std::fs::read_to_string(d.path("sync.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn canonical(d: &TestDaemon, rel: &str) -> String {
    d.path(rel).canonicalize().unwrap().display().to_string()
}

/// The real `fdatasync` and `fsync` system calls, seen from outside the
/// daemon: a `Durability` that stopped syncing would pass every test that
/// injects its own, and a `kill -9` cannot tell (the page cache survives
/// it).
#[test]
fn each_spooled_record_was_synced_under_its_temporary_name_and_its_name_after_its_rename() {
    let d = daemon_watched_for_syncs(|_| {});
    let spool = canonical(&d, "spool");
    let dirsync = format!("dirsync {spool}");
    let dir_synced_with = |name: &str| {
        sync_log(&d)
            .iter()
            .filter(|l| l.starts_with(&dirsync))
            .any(|l| l.split(' ').skip(2).any(|n| n == name))
    };
    // One at a time (each its own group, its directory sync seen before
    // the next is sent), then in a burst (groups).
    for i in 0..10 {
        send_raw(
            &d.socket(),
            &encode_frame(&test_record(&format!("one {i}"))),
        );
        d.wait_spool(i + 1);
        for name in d.spool_names() {
            assert!(
                wait_until(Duration::from_secs(5), || dir_synced_with(&name)),
                "{name}: no sync of the spool directory after its rename; log:\n{}",
                sync_log(&d).join("\n")
            );
        }
    }
    let sock = d.socket();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    send_raw(
                        &sock,
                        &encode_frame(&test_record(&format!("burst {t} {i}"))),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    d.wait_spool(50);
    // The last group's files are visible once renamed, before its
    // directory sync: wait for every name's sync, then read the log.
    for name in d.spool_names() {
        wait_until(Duration::from_secs(5), || dir_synced_with(&name));
    }
    let log = sync_log(&d);
    for name in d.spool_names() {
        let data = format!("fdatasync {spool}/.tmp-{name}");
        assert!(
            log.contains(&data),
            "{name}: its data was not synced under its temporary name; log:\n{}",
            log.join("\n")
        );
        assert!(
            log.iter()
                .filter(|l| l.starts_with(&dirsync))
                .any(|l| l.split(' ').skip(2).any(|n| n == name)),
            "{name}: no sync of the spool directory after its rename; log:\n{}",
            log.join("\n")
        );
    }
}

/// What a killed daemon journaled may be in the page cache only: a restart
/// makes the journal durable before it removes the spool files the journal
/// says were finished (else a power cut after the removal would lose both).
#[test]
fn a_restart_syncs_the_journal_before_it_removes_what_the_journal_finished() {
    use telem_core::journal::{Journal, JournalEntry, Outcome};
    let record = test_record("finished before the kill");
    let d = daemon_watched_for_syncs(|d| {
        preload_spool(&d.path("spool"), std::slice::from_ref(&record));
        let journal = Journal::open(&d.path("journal"), 1000, false).unwrap();
        journal
            .append(
                &JournalEntry {
                    record_id: "preloaded00000000".into(),
                    time: 1_800_000_000,
                    classification: record.headers.get(Header::Classification).into(),
                    event_id: record.headers.get(Header::EventId).into(),
                    boot_id: telem_core::journal::boot_id(),
                    outcome: Outcome::Delivered,
                    detail: String::new(),
                },
                None,
            )
            .unwrap();
    });
    assert!(
        wait_until(Duration::from_secs(10), || d.spool_names().is_empty()),
        "the finished record was not removed:\n{}",
        d.log()
    );
    let log = sync_log(&d);
    let journal = canonical(&d, "journal/journal");
    let synced = log
        .iter()
        .position(|l| *l == format!("fdatasync {journal}") || *l == format!("fsync {journal}"));
    let removed = log
        .iter()
        .position(|l| l.starts_with("unlink ") && l.ends_with("/preloaded00000000"));
    assert!(
        removed.is_some(),
        "no unlink seen; log:\n{}",
        log.join("\n")
    );
    assert!(
        synced.is_some_and(|s| s < removed.unwrap()),
        "the spool file went before the journal was synced; log:\n{}",
        log.join("\n")
    );
}
