//! Delivery policies that depend on time (rate-limit windows, both
//! strategies, expiry), driven in-process with an injected clock so no
//! test sleeps.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use telem_core::clock::{Clock, ManualClock};
use telem_core::config::values::{Bounded, CollectorUrl, Limit};
use telem_core::config::{Config, RateLimitStrategy};
use telem_core::journal::{Journal, JournalFilter, Outcome};
use telemd::delivery::Delivery;
use telemd::spool::Spool;

struct Rig {
    dir: tempfile::TempDir,
    spool: Spool,
    journal: Arc<Journal>,
    clock: Arc<ManualClock>,
    delivery: Delivery,
}

async fn rig(records: usize, tweak: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::dev(dir.path());
    tweak(&mut cfg);
    let spool = Spool::open(&cfg.spool.spool_dir, None).unwrap();
    for i in 0..records {
        spool
            .store(&test_record(&format!("rec {i}")))
            .await
            .unwrap();
    }
    let journal = Arc::new(Journal::open(&cfg.journal.journal_dir, 1000, false).unwrap());
    // Start mid-minute so window arithmetic is not at a boundary.
    let now = SystemTime::now();
    let clock = Arc::new(ManualClock::new(now));
    let delivery = Delivery::new(
        cfg.delivery,
        None,
        spool.clone(),
        journal.clone(),
        clock.clone() as Arc<dyn Clock>,
        1,
    )
    .unwrap();
    Rig {
        dir,
        spool,
        journal,
        clock,
        delivery,
    }
}

/// One spool run, then the trailing unlinks.
async fn run(r: &mut Rig) -> telemd::delivery::RunReport {
    let rep = r.delivery.run_once(None).await;
    r.delivery.wait_removals();
    rep
}

fn outcomes(j: &Journal, o: Outcome) -> usize {
    j.query(&JournalFilter::default())
        .unwrap()
        .iter()
        .filter(|e| e.outcome == o)
        .count()
}

fn delivered_lines(r: &Rig) -> usize {
    std::fs::read_to_string(r.dir.path().join("collector/records.jsonl"))
        .map_or(0, |t| t.lines().count())
}

#[tokio::test]
async fn record_burst_with_spool_strategy_waits_for_the_window() {
    let mut r = rig(8, |c| {
        c.delivery.record_burst_limit = Limit::at(3);
        c.delivery.record_window_length = Bounded::new(1);
        c.delivery.rate_limit_strategy = RateLimitStrategy::Spool;
    })
    .await;
    let rep = run(&mut r).await;
    assert_eq!(rep.delivered, 3);
    assert!(rep.blocked_for.is_some());
    assert_eq!(
        r.spool.entries().unwrap().len(),
        5,
        "over-limit records stay spooled"
    );
    // Still inside the window (this minute and the one before).
    r.clock.advance(Duration::from_secs(30));
    assert_eq!(run(&mut r).await.delivered, 0);
    r.clock.advance(Duration::from_secs(120));
    assert_eq!(run(&mut r).await.delivered, 3);
    r.clock.advance(Duration::from_secs(180));
    assert_eq!(run(&mut r).await.delivered, 2);
    assert_eq!(delivered_lines(&r), 8);
    assert_eq!(outcomes(&r.journal, Outcome::Delivered), 8);
    assert_eq!(outcomes(&r.journal, Outcome::Dropped), 0);
}

#[tokio::test]
async fn drop_strategy_removes_and_journals_over_limit_records() {
    let mut r = rig(6, |c| {
        c.delivery.record_burst_limit = Limit::at(2);
        c.delivery.record_window_length = Bounded::new(0);
        c.delivery.rate_limit_strategy = RateLimitStrategy::Drop;
    })
    .await;
    let rep = run(&mut r).await;
    assert_eq!((rep.delivered, rep.dropped), (2, 4));
    assert!(r.spool.entries().unwrap().is_empty());
    assert_eq!(outcomes(&r.journal, Outcome::Dropped), 4);
    assert_eq!(delivered_lines(&r), 2);
}

#[tokio::test]
async fn byte_burst_counts_each_records_real_size() {
    let size = test_record("rec 0").byte_len() as i64;
    let mut r = rig(5, |c| {
        c.delivery.record_burst_limit = Limit::OFF;
        c.delivery.byte_burst_limit = Limit::at((size * 2 + size / 2) as u64);
        c.delivery.byte_window_length = Bounded::new(0);
    })
    .await;
    assert_eq!(
        run(&mut r).await.delivered,
        2,
        "the legacy poster counted 4 bytes a record and sent all 5"
    );
    r.clock.advance(Duration::from_secs(60));
    assert_eq!(run(&mut r).await.delivered, 2);
    r.clock.advance(Duration::from_secs(60));
    assert_eq!(run(&mut r).await.delivered, 1);
}

#[tokio::test]
async fn disabled_rate_limit_sends_everything() {
    let mut r = rig(30, |c| {
        c.delivery.rate_limit_enabled = false;
        c.delivery.record_burst_limit = Limit::at(1);
    })
    .await;
    assert_eq!(run(&mut r).await.delivered, 30);
}

#[tokio::test]
async fn records_older_than_record_expiry_are_expired_and_journaled() {
    let mut r = rig(3, |c| {
        c.delivery.record_expiry = 10;
        c.delivery.server = CollectorUrl::new("http://127.0.0.1:9/unreachable");
    })
    .await;
    // Nine minutes later they are still worth trying (and fail: port 9).
    r.clock.advance(Duration::from_secs(9 * 60));
    let rep = run(&mut r).await;
    assert_eq!(rep.expired, 0);
    assert!(rep.blocked_for.is_some());
    // Past the expiry (and past the backoff) they go, journaled.
    r.clock.advance(Duration::from_secs(2 * 60));
    let rep = run(&mut r).await;
    assert_eq!(rep.expired, 3);
    assert!(r.spool.entries().unwrap().is_empty());
    let j = r.journal.query(&JournalFilter::default()).unwrap();
    assert!(
        j.iter()
            .all(|e| e.outcome == Outcome::Expired && e.detail.contains("min ago")),
        "{j:?}"
    );
}

#[tokio::test]
async fn expiry_minus_one_keeps_records_forever() {
    let mut r = rig(1, |c| {
        c.delivery.record_expiry = -1;
        c.delivery.server = CollectorUrl::new("http://127.0.0.1:9/unreachable");
    })
    .await;
    r.clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert_eq!(run(&mut r).await.expired, 0);
    assert_eq!(r.spool.entries().unwrap().len(), 1);
}

#[tokio::test]
async fn unreadable_spool_file_is_quarantined_not_lost() {
    let mut r = rig(1, |_| {}).await;
    std::fs::write(r.spool.dir().join("garbage"), b"not a record").unwrap();
    let rep = run(&mut r).await;
    assert_eq!((rep.delivered, rep.rejected), (1, 1));
    assert!(r.spool.dir().join(".unreadable/garbage").exists());
    assert!(r.spool.entries().unwrap().is_empty());
}

/// A record as `telem-record-gen` sends it (the legacy capture), with its
/// own payload and event id.
fn test_record(payload: &str) -> telem_core::record::Record {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/legacy/frame-record-gen.bin"
    );
    let mut r = telem_core::record::wire::parse_frame(&std::fs::read(p).unwrap()).unwrap();
    r.payload = payload.into();
    r.headers.set(
        telem_core::record::Header::EventId,
        telem_core::record::random_id(),
    );
    r
}
