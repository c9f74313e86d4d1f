//! Tests of `spool`.

use super::*;
use telem_core::record::sample;

/// Records each sync and each acknowledgement, in order.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl Durability for Recorder {
    fn sync_file(&self, name: &str, file: &File) -> io::Result<()> {
        file.sync_data()?;
        self.0.lock().unwrap().push(format!("file {name}"));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        telem_core::fsutil::sync_dir(dir)?;
        self.0.lock().unwrap().push("dir".into());
        Ok(())
    }
}

#[tokio::test]
async fn every_acknowledged_record_was_synced_and_its_entry_too() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let spool = Spool::open_with(dir.path(), None, rec.clone()).unwrap();
    // Concurrent stores, so group commits hold several records.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (spool, rec) = (spool.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            let name = spool.store(&sample()).await.unwrap();
            rec.0.lock().unwrap().push(format!("ack {name}"));
            name
        }));
    }
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.unwrap());
    }
    let log = rec.0.lock().unwrap().clone();
    let at = |what: &str| log.iter().position(|l| l == what);
    for name in &names {
        let file =
            at(&format!("file {name}")).unwrap_or_else(|| panic!("{name} never synced: {log:?}"));
        let ack = at(&format!("ack {name}")).unwrap();
        assert!(
            log[file..ack].iter().any(|l| l == "dir"),
            "{name} was acknowledged before its directory entry was synced: {log:?}"
        );
    }
    // Group commit: concurrent records share directory syncs.
    let dir_syncs = log.iter().filter(|l| *l == "dir").count();
    assert!(dir_syncs < 40, "{dir_syncs} directory syncs for 40 records");
    spool.close();
}

/// A burst larger than two groups is committed in groups of at most
/// `MAX_GROUP` records (one directory sync each).
#[tokio::test]
async fn a_burst_is_committed_in_bounded_groups() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let spool = Spool::open_with(dir.path(), None, rec.clone()).unwrap();
    let tasks: Vec<_> = (0..MAX_GROUP * 2 + 50)
        .map(|_| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.store(&sample()).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = rec.0.lock().unwrap().clone();
    let groups: Vec<usize> = log
        .split(|l| l == "dir")
        .map(|g| g.iter().filter(|l| l.starts_with("file ")).count())
        .filter(|&n| n > 0)
        .collect();
    assert!(groups.iter().all(|&n| n <= MAX_GROUP), "{groups:?}");
    assert_eq!(groups.iter().sum::<usize>(), MAX_GROUP * 2 + 50);
    spool.close();
}

#[tokio::test]
async fn stored_record_reads_back_and_lists_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = sample();
        r.payload = format!("payload {i}");
        ids.push(spool.store(&r).await.unwrap());
    }
    let entries = spool.entries().unwrap();
    assert_eq!(
        entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(spool.read(&ids[1]).unwrap().payload, "payload 1");
    let total: u64 = entries.iter().map(|e| e.size).sum();
    assert_eq!(spool.used_bytes(), total);
    spool.remove(&entries[0]).unwrap();
    assert_eq!(spool.entries().unwrap().len(), 2);
    assert_eq!(spool.used_bytes(), total - entries[0].size);
    spool.close();
}

#[tokio::test]
async fn leftover_temp_files_are_removed_and_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".tmp-0123"), b"half a rec").unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    assert!(!dir.path().join(".tmp-0123").exists());
    assert!(spool.entries().unwrap().is_empty());
    assert_eq!(spool.used_bytes(), 0);
}

#[tokio::test]
async fn cap_refuses_new_records_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let len = sample().byte_len() as u64;
    let spool = Spool::open(dir.path(), Some(len * 2 + 10)).unwrap();
    let a = spool.store(&sample()).await.unwrap();
    let b = spool.store(&sample()).await.unwrap();
    let e = spool.store(&sample()).await.unwrap_err();
    assert!(matches!(e, SpoolError::Full { .. }), "{e}");
    let names: Vec<_> = spool
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![a, b]);
}

/// The cap counts what an earlier run left (every record file, no
/// hidden file); a record that exactly fills it fits, one more does
/// not, and a refusal reserves nothing.
#[tokio::test]
async fn the_cap_counts_records_left_by_an_earlier_run_and_is_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(dir.path(), None).unwrap();
    first.store(&sample()).await.unwrap();
    first.store(&sample()).await.unwrap();
    first.close();
    let len = spool_file::encode(&sample()).len() as u64;
    fs::write(dir.path().join(".hidden"), vec![0; 5000]).unwrap();
    let spool = Spool::open(dir.path(), Some(len * 3)).unwrap();
    assert_eq!(spool.used_bytes(), len * 2);
    spool.store(&sample()).await.unwrap();
    assert_eq!(spool.used_bytes(), len * 3);
    let e = spool.store(&sample()).await.unwrap_err();
    assert!(matches!(e, SpoolError::Full { .. }), "{e}");
    assert_eq!(spool.used_bytes(), len * 3);
}

#[tokio::test]
async fn a_store_wakes_the_delivery_worker() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    let waiter = {
        let s = spool.clone();
        tokio::spawn(async move { s.stored().await })
    };
    // One runtime thread: after these yields the waiter has run up to
    // its wait, and must still be waiting.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "woken with nothing stored");
    spool.store(&sample()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), waiter)
        .await
        .expect("woken")
        .unwrap();
}

/// Removing twice is fine (the remover and a restart may race); a name
/// that cannot be removed is an error.
#[tokio::test]
async fn remove_is_idempotent_and_reports_real_failures() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    spool.store(&sample()).await.unwrap();
    let entry = spool.entries().unwrap().remove(0);
    spool.remove(&entry).unwrap();
    assert_eq!(spool.used_bytes(), 0);
    spool.remove(&entry).unwrap();
    fs::create_dir(dir.path().join("adir")).unwrap();
    fs::write(dir.path().join("adir/x"), b"x").unwrap();
    let not_a_file = SpoolEntry {
        name: "adir".into(),
        ..entry
    };
    assert!(spool.remove(&not_a_file).is_err());
}

#[tokio::test]
async fn a_closed_spool_refuses_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    spool.close();
    let e = spool.store(&sample()).await.unwrap_err();
    assert!(matches!(e, SpoolError::Closed), "{e}");
    assert_eq!(spool.used_bytes(), 0);
    assert!(format!("{spool:?}").contains(&dir.path().display().to_string()));
}

#[tokio::test]
async fn many_concurrent_stores_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), None).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let s = spool.clone();
        tasks.push(tokio::spawn(
            async move { s.store(&sample()).await.unwrap() },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(spool.entries().unwrap().len(), 200);
}

#[test]
fn record_ids_are_unique_hex_and_time_ordered() {
    let a = new_record_id();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = new_record_id();
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(a < b);
}
