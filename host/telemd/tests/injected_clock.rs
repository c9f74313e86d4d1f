//! What depends on time (rate-limit windows, both strategies, expiry,
//! backoff pacing, `Retry-After`, machine id rotation), driven in-process
//! with an injected clock so no test sleeps; and the journal commit point,
//! observed through injected syncs.

#[path = "../../../tests/support/collector.rs"]
mod collector;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use collector::{Collector, Mode};
use telem_core::clock::{Clock, ManualClock};
use telem_core::config::values::{Bounded, CollectorUrl, Limit};
use telem_core::config::{Config, RateLimitStrategy};
use telem_core::fsutil::{Durability, Fsync};
use telem_core::journal::{Journal, JournalFilter, Outcome};
use telemd::delivery::backoff::MAX_DELAY;
use telemd::delivery::Delivery;
use telemd::spool::Spool;

struct Rig {
    dir: tempfile::TempDir,
    cfg: Config,
    spool: Spool,
    journal: Arc<Journal>,
    clock: Arc<ManualClock>,
    delivery: Delivery,
}

async fn rig(records: usize, tweak: impl FnOnce(&mut Config)) -> Rig {
    rig_with(records, tweak, |_| Arc::new(Fsync)).await
}

/// [`rig`] with the journal's syncs made through what `durability` makes
/// of the spool and journal directories.
async fn rig_with(
    records: usize,
    tweak: impl FnOnce(&mut Config),
    durability: impl FnOnce(&Config) -> Arc<dyn Durability>,
) -> Rig {
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
    let journal = Arc::new(
        Journal::open_with(&cfg.journal.journal_dir, 1000, false, durability(&cfg)).unwrap(),
    );
    // Start mid-minute so window arithmetic is not at a boundary, on a
    // whole second so an HTTP date (whole seconds) is an exact offset.
    let now = UNIX_EPOCH + Duration::from_secs(unix_secs(SystemTime::now()));
    let clock = Arc::new(ManualClock::new(now));
    let delivery = Delivery::new(
        cfg.delivery.clone(),
        None,
        spool.clone(),
        journal.clone(),
        clock.clone() as Arc<dyn Clock>,
        1,
    )
    .unwrap();
    Rig {
        dir,
        cfg,
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
        c.delivery.record_expiry = Limit::at(10);
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
        c.delivery.record_expiry = Limit::OFF;
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

/// Records stamped through the real ingest path and sent: the machine id
/// on them holds for three days from its creation, then a new one is made
/// (and kept), checked hourly.
#[tokio::test]
async fn the_machine_id_on_sent_records_changes_after_three_days() {
    use telem_core::machine_id::{MachineIdCache, MachineIdStore, MACHINE_ID_MAX_AGE};
    use telemd::ingest::Ingest;
    // No expiry: a spool file's age is its real mtime, three injected days off.
    let mut r = rig(0, |c| c.delivery.record_expiry = Limit::OFF).await;
    let host = &r.cfg.host;
    std::fs::write(&host.opt_in_file, "").unwrap();
    let ingest = Ingest::new(
        r.spool.clone(),
        MachineIdCache::new(MachineIdStore::new(
            &host.state_dir,
            &host.static_machine_id_file,
        )),
        telem_core::metadata::HostMetadata::collect(Path::new("/")),
        host.opt_in_file.clone(),
        r.clock.clone() as Arc<dyn Clock>,
    );
    let hour = Duration::from_secs(3600);
    for (after, payload) in [
        (Duration::ZERO, "new"),
        (hour * 2, "two hours on"),
        (MACHINE_ID_MAX_AGE - hour * 3, "an hour short of three days"),
        (hour * 2, "an hour past three days"),
        (hour * 2, "three hours past"),
    ] {
        r.clock.advance(after);
        ingest.submit_native(test_record(payload)).await.unwrap();
        assert_eq!(run(&mut r).await.delivered, 1, "{payload}");
    }
    let sent: Vec<(String, String)> =
        std::fs::read_to_string(r.dir.path().join("collector/records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["payload"].as_str().unwrap().to_owned(),
                    v["machine_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    let ids: Vec<&str> = sent.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{sent:?}");
    assert!(ids[0].len() == 32, "{sent:?}");
    assert_eq!(&ids[..3], &[ids[0]; 3], "one id for three days: {sent:?}");
    assert_ne!(ids[3], ids[0], "rotated past three days: {sent:?}");
    assert_eq!(ids[4], ids[3], "the new id is kept: {sent:?}");
    assert_eq!(
        std::fs::read_to_string(r.cfg.host.state_dir.join("machine_id")).unwrap(),
        ids[3]
    );
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Journal syncs, each checked against the spool at that moment: a record
/// whose entry is synced must still be spooled (it is removed only after).
struct CommitWatch {
    spool_dir: PathBuf,
    journal_file: PathBuf,
    synced: Mutex<HashSet<String>>,
    gone_before_sync: Mutex<Vec<String>>,
}

impl Durability for CommitWatch {
    fn sync_file(&self, name: &str, file: &File) -> io::Result<()> {
        assert_eq!(name, "journal");
        file.sync_data()?;
        let text = std::fs::read_to_string(&self.journal_file)?;
        for line in text.lines() {
            let id = line.split('\t').next().unwrap().to_owned();
            if !self.spool_dir.join(&id).exists() && !self.synced.lock().unwrap().contains(&id) {
                self.gone_before_sync.lock().unwrap().push(id.clone());
            }
            self.synced.lock().unwrap().insert(id);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        telem_core::fsutil::sync_dir(dir)
    }
}

#[tokio::test]
async fn every_record_is_journaled_durably_before_it_leaves_the_spool() {
    let watch = Arc::new(Mutex::new(None::<Arc<CommitWatch>>));
    let w = watch.clone();
    let mut r = rig_with(
        200,
        |_| {},
        move |cfg| {
            let cw = Arc::new(CommitWatch {
                spool_dir: cfg.spool.spool_dir.clone(),
                journal_file: cfg.journal.journal_dir.join("journal"),
                synced: Mutex::default(),
                gone_before_sync: Mutex::default(),
            });
            *w.lock().unwrap() = Some(cw.clone());
            cw
        },
    )
    .await;
    let cw = watch.lock().unwrap().clone().unwrap();
    let rep = run(&mut r).await;
    assert_eq!(rep.delivered, 200);
    assert!(r.spool.entries().unwrap().is_empty());
    let journaled: HashSet<String> = r
        .journal
        .query(&JournalFilter::default())
        .unwrap()
        .into_iter()
        .map(|e| e.record_id)
        .collect();
    assert_eq!(journaled.len(), 200);
    let synced = cw.synced.lock().unwrap().clone();
    let unsynced: Vec<_> = journaled.difference(&synced).collect();
    assert!(
        unsynced.is_empty(),
        "{} of 200 records left the spool with no sync of their journal entry",
        unsynced.len()
    );
    let early = cw.gone_before_sync.lock().unwrap().clone();
    assert!(
        early.is_empty(),
        "{} records were removed before their entry was synced",
        early.len()
    );
}

/// A response body up to the cap (64 KiB) is read to its end, so the
/// connection serves the next record; a longer one is cut where it passes
/// the cap and its connection closed (`tests/hostile/collector.rs` sends
/// endless ones).
#[tokio::test]
async fn a_response_body_up_to_the_cap_keeps_the_connection() {
    use telemd::delivery::post::MAX_RESPONSE_BODY;
    for (body, connections) in [(MAX_RESPONSE_BODY, 1), (MAX_RESPONSE_BODY * 4, 3)] {
        let server = Collector::start(Mode::Body(body));
        let mut r = rig(3, |c| c.delivery.server = CollectorUrl::new(&server.url())).await;
        assert_eq!(run(&mut r).await.delivered, 3, "body of {body} bytes");
        assert_eq!(server.connections(), connections, "body of {body} bytes");
    }
}

/// A collector that refuses the connection is a failure to retry, and the
/// status says why in the words of the error's whole chain.
#[tokio::test]
async fn a_refused_connection_is_retried_and_the_status_says_why() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut r = rig(1, |c| {
        c.delivery.server = CollectorUrl::new(&format!("http://127.0.0.1:{port}/v2/collector"))
    })
    .await;
    assert!(run(&mut r).await.blocked_for.is_some());
    let st = r.delivery.status().lock().unwrap().clone();
    let said = st.last_result.unwrap_or_default();
    assert!(
        said.starts_with("failed (cannot connect: ") && said.contains("Connection refused"),
        "{said}"
    );
}

/// Against a collector that answers 503 for an hour, the tries are paced by
/// the backoff: at least one per [`MAX_DELAY`] (the largest delay), and far
/// fewer than the one per clock step a missing backoff would make (full
/// jitter averages half the doubling cap: about 30 tries).
#[tokio::test]
async fn a_down_collector_is_tried_at_a_bounded_pace_for_an_hour() {
    let server = Collector::start(Mode::Status(503, None));
    let mut r = rig(1, |c| c.delivery.server = CollectorUrl::new(&server.url())).await;
    let hour = Duration::from_secs(3600);
    let step = Duration::from_millis(100);
    let mut elapsed = Duration::ZERO;
    while elapsed < hour {
        r.delivery.run_once(None).await;
        r.clock.advance(step);
        elapsed += step;
    }
    let tries = server.requests().len();
    let at_least = (hour.as_secs_f64() / (MAX_DELAY + step).as_secs_f64()) as usize + 1;
    assert!(
        (at_least..=100).contains(&tries),
        "{tries} tries in an hour; expected {at_least} to 100"
    );
    assert_eq!(r.spool.entries().unwrap().len(), 1, "the record is kept");
    assert_eq!(
        r.delivery.status().lock().unwrap().failures_in_a_row as usize,
        tries
    );
}

/// `Retry-After` in both forms, over a real response: the next try is
/// exactly that far away on the delivery clock (the first backoff delay,
/// at most 1 s, is below it), not a step sooner.
#[tokio::test]
async fn retry_after_as_seconds_or_an_http_date_sets_the_next_try() {
    for date_form in [false, true] {
        let server = Collector::start(Mode::Status(503, None));
        let mut r = rig(1, |c| c.delivery.server = CollectorUrl::new(&server.url())).await;
        let wait = Duration::from_secs(600);
        let value = if date_form {
            httpdate::fmt_http_date(r.clock.now() + wait)
        } else {
            wait.as_secs().to_string()
        };
        server.set_mode(Mode::Status(503, Some(value.clone())));
        let rep = r.delivery.run_once(None).await;
        assert_eq!(rep.blocked_for, Some(wait), "Retry-After: {value}");
        assert_eq!(server.requests().len(), 1);
        r.clock.advance(wait - Duration::from_secs(1));
        let rep = r.delivery.run_once(None).await;
        assert_eq!(rep.blocked_for, Some(Duration::from_secs(1)), "{value}");
        assert_eq!(
            server.requests().len(),
            1,
            "tried before Retry-After: {value}"
        );
        r.clock.advance(Duration::from_secs(1));
        r.delivery.run_once(None).await;
        assert_eq!(
            server.requests().len(),
            2,
            "not tried at Retry-After: {value}"
        );
    }
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
