//! The durable spool: one file per accepted record, in the legacy staged
//! format, so the old and new daemons can drain each other's spools.
//!
//! A record becomes visible under its name only once it is whole and on
//! disk: it is written under a dot-prefixed temporary name, fsynced, renamed,
//! and the directory fsynced. Writes go through one writer thread that
//! takes whatever records arrived meanwhile as a group (up to
//! [`MAX_GROUP`]) and writes their files; a second thread publishes the
//! group while the next one is written: start write-back of all
//! (`sync_file_range`), fdatasync each from several threads at once,
//! rename all, one directory fsync, then acknowledge, group after group. Starting write-back
//! for the whole group first puts every file's block allocation into one
//! journal transaction, so the fsyncs share one commit; issuing them
//! together lets the block layer merge the device flushes they ask for.
//! Many records then cost a few disk flushes rather than one each. Callers
//! that have several records hand them over at once ([`Spool::store_all`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::{oneshot, Notify};

use telem_core::fsutil::{Durability, Fsync};
use telem_core::record::{spool_file, Record};

/// Temporary files start with this; no record name does.
const TMP_PREFIX: &str = ".tmp-";
/// Most records committed by one group.
pub const MAX_GROUP: usize = 512;

/// Why a record could not be spooled. The sender is told; nothing already
/// in the spool is touched.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// `spool_max_size` reached: the new record is refused, older ones stay.
    #[error("spool is full ({used} of {max} bytes used; record needs {needed}); spool_max_size limits it")]
    Full {
        /// Bytes in the spool.
        used: u64,
        /// The cap.
        max: u64,
        /// The refused record's size.
        needed: u64,
    },
    /// The disk refused the write (full filesystem, I/O error...).
    #[error("cannot write the spool file in {dir}")]
    Io {
        /// The spool directory.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The spool writer has stopped (daemon shutting down).
    #[error("the spool is closed")]
    Closed,
}

/// A record file waiting in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// File name, which is also the record id.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was spooled (the legacy poster's expiry clock).
    pub mtime: SystemTime,
}

/// One record file to write.
struct Job {
    name: String,
    bytes: Vec<u8>,
}

/// Records handed to the writer together, answered together (in order).
struct Batch {
    jobs: Vec<Job>,
    reply: oneshot::Sender<Vec<Result<(), SpoolError>>>,
}

struct Inner {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Batch>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    used: AtomicU64,
    max: Option<u64>,
    stored: Notify,
}

/// Handle to the spool directory; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`, removes temporary files
    /// a crash left behind, and starts the writer. `max_bytes` is the
    /// `spool_max_size` cap (`None`: unlimited).
    pub fn open(dir: &Path, max_bytes: Option<u64>) -> io::Result<Spool> {
        Spool::open_with(dir, max_bytes, Arc::new(Fsync))
    }

    /// [`Spool::open`] with the syncs made through `durability` (a test
    /// records them to prove every acknowledged record was synced first).
    pub fn open_with(
        dir: &Path,
        max_bytes: Option<u64>,
        durability: Arc<dyn Durability>,
    ) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut used = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            } else if !name.starts_with('.') {
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        used += m.len();
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Batch>();
        let wdir = dir.to_owned();
        let dir_fd = File::open(dir)?;
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(&wdir, &dir_fd, rx, durability.as_ref()))?;
        Ok(Spool {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                used: AtomicU64::new(used),
                max: max_bytes,
                stored: Notify::new(),
            }),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes held by record files (as counted against the cap).
    pub fn used_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Stores a record durably and returns its id once it is on disk under
    /// its final name. Refuses it, touching nothing else, when the cap would
    /// be exceeded or the disk fails.
    pub async fn store(&self, record: &Record) -> Result<String, SpoolError> {
        self.store_all(std::slice::from_ref(record))
            .await
            .pop()
            .expect("one result per record")
    }

    /// [`Spool::store`] for several records, handed to the writer at once
    /// (so they share a group commit without a hand-over each); one result
    /// per record, in order. Each is refused or stored on its own.
    pub async fn store_all(&self, records: &[Record]) -> Vec<Result<String, SpoolError>> {
        let mut results: Vec<Option<Result<String, SpoolError>>> =
            Vec::with_capacity(records.len());
        let mut jobs = Vec::with_capacity(records.len());
        // (index in `results`, bytes reserved) of each job
        let mut placed = Vec::with_capacity(records.len());
        for record in records {
            let bytes = spool_file::encode(record);
            let len = bytes.len() as u64;
            match self.reserve(len) {
                Ok(()) => {
                    placed.push((results.len(), len));
                    jobs.push(Job {
                        name: new_record_id(),
                        bytes,
                    });
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !jobs.is_empty() {
            let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
            let (reply, rx) = oneshot::channel();
            let sent = match &*self.inner.tx.lock().expect("spool lock") {
                Some(tx) => tx.send(Batch { jobs, reply }).is_ok(),
                None => false,
            };
            let mut outcomes = if sent { rx.await.ok() } else { None }.map(Vec::into_iter);
            let mut stored = false;
            for ((i, len), name) in placed.into_iter().zip(names) {
                let outcome = match outcomes.as_mut().and_then(Iterator::next) {
                    Some(Ok(())) => Ok(name),
                    Some(Err(e)) => Err(e),
                    None => Err(SpoolError::Closed),
                };
                if outcome.is_ok() {
                    stored = true;
                } else {
                    self.inner.used.fetch_sub(len, Ordering::Relaxed);
                }
                results[i] = Some(outcome);
            }
            if stored {
                self.inner.stored.notify_one();
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every record answered"))
            .collect()
    }

    fn reserve(&self, len: u64) -> Result<(), SpoolError> {
        let prev = self.inner.used.fetch_add(len, Ordering::Relaxed);
        if let Some(max) = self.inner.max {
            if prev + len > max {
                self.inner.used.fetch_sub(len, Ordering::Relaxed);
                return Err(SpoolError::Full {
                    used: prev,
                    max,
                    needed: len,
                });
            }
        }
        Ok(())
    }

    /// Waits until a record has been stored since the last call (the
    /// delivery worker's wake-up).
    pub async fn stored(&self) {
        self.inner.stored.notified().await
    }

    /// Record files, oldest first (by spool time, then name).
    pub fn entries(&self) -> io::Result<Vec<SpoolEntry>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.inner.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            out.push(SpoolEntry {
                name,
                size: m.len(),
                mtime: m.modified().unwrap_or(UNIX_EPOCH),
            });
        }
        out.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Reads a spooled record back.
    pub fn read(&self, name: &str) -> Result<Record, SpoolReadError> {
        let bytes = fs::read(self.inner.dir.join(name))?;
        Ok(spool_file::decode(&bytes)?)
    }

    /// Removes a record (after delivery or a final refusal).
    pub fn remove(&self, entry: &SpoolEntry) -> io::Result<()> {
        match fs::remove_file(self.inner.dir.join(&entry.name)) {
            Ok(()) => {
                let _ = self
                    .inner
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                        Some(u.saturating_sub(entry.size))
                    });
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops the writer after it committed every queued record.
    pub fn close(&self) {
        self.inner.tx.lock().expect("spool lock").take();
        if let Some(h) = self.inner.writer.lock().expect("spool lock").take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir()).finish()
    }
}

/// Why a spool file could not be read.
#[derive(Debug, Error)]
pub enum SpoolReadError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file is not a record.
    #[error("malformed spool file")]
    Format(#[from] spool_file::SpoolFileError),
}

/// A new record id: 32 hex digits that sort by creation time (nanoseconds)
/// then by a random part, so names are unique and list in arrival order.
pub fn new_record_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{nanos:016x}{:016x}", rand::random::<u64>())
}

/// A group whose files are written, on its way to being published.
struct Written {
    batches: Vec<Batch>,
    /// One per job, in order: its temp file, open, or why it failed.
    files: Vec<Result<File, SpoolError>>,
}

/// Takes the records handed over meanwhile as one group (up to
/// [`MAX_GROUP`]), writes their temp files, and hands the group to a
/// second thread that publishes it (syncs, renames, the directory sync,
/// the answers), so publishing one group overlaps writing the next.
/// Groups are published, and answered, in the order they were written.
fn writer_loop(dir: &Path, dir_fd: &File, rx: mpsc::Receiver<Batch>, durability: &dyn Durability) {
    std::thread::scope(|scope| {
        let (to_publish, publishing) = mpsc::sync_channel::<Written>(1);
        let publisher = std::thread::Builder::new()
            .name("spool-publish".into())
            .spawn_scoped(scope, move || {
                for written in publishing {
                    publish(dir, dir_fd, written, durability);
                }
            });
        if let Err(e) = &publisher {
            tracing::warn!("cannot start the spool's publishing thread ({e}); publishing in turn");
        }
        while let Ok(first) = rx.recv() {
            let mut records = first.jobs.len();
            let mut batches = vec![first];
            while records < MAX_GROUP {
                match rx.try_recv() {
                    Ok(b) => {
                        records += b.jobs.len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            let jobs: Vec<&Job> = batches.iter().flat_map(|b| &b.jobs).collect();
            let files = write_group(dir, dir_fd, &jobs);
            drop(jobs);
            let written = Written { batches, files };
            let unsent = match &publisher {
                Ok(_) => to_publish.send(written).err().map(|e| e.0),
                Err(_) => Some(written),
            };
            // No publishing thread (it could not start, or died): in turn.
            if let Some(written) = unsent {
                publish(dir, dir_fd, written, durability);
            }
        }
    });
}

/// Threads that sync one group's files at once.
const SYNC_THREADS: usize = 8;

/// Syncs every file of a group, from up to [`SYNC_THREADS`] threads at
/// once: each file's sync still returns only once its data is on stable
/// storage, but the device flushes that concurrent syncs ask for are
/// merged by the block layer, so a group costs a few flushes instead of
/// one per file. Results in the group's order.
fn sync_all(files: &[(&Job, File)], durability: &dyn Durability) -> Vec<io::Result<()>> {
    let sync = |(job, f): &(&Job, File)| durability.sync_file(&job.name, f);
    if files.len() < 2 {
        return files.iter().map(sync).collect();
    }
    let per = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        // A chunk whose thread cannot be started (no task left under the
        // unit's TasksMax, say) is synced here, in turn.
        let started: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                let thread = std::thread::Builder::new()
                    .spawn_scoped(scope, move || chunk.iter().map(sync).collect::<Vec<_>>());
                (chunk, thread.ok())
            })
            .collect();
        started
            .into_iter()
            .flat_map(|(chunk, thread)| match thread.map(|t| t.join()) {
                Some(Ok(results)) => results,
                // A sync that panicked (it never does) or did not start.
                _ => chunk.iter().map(sync).collect(),
            })
            .collect()
    })
}

fn tmp_name(job: &Job) -> String {
    format!("{TMP_PREFIX}{}", job.name)
}

fn spool_io(dir: &Path, source: io::Error) -> SpoolError {
    SpoolError::Io {
        dir: dir.to_owned(),
        source,
    }
}

/// Writes the temp file of each job of a group; one outcome per job, in
/// order. Names are resolved beneath `dir_fd` (the spool directory, opened
/// once), not walked from `/` each time.
fn write_group(dir: &Path, dir_fd: &File, jobs: &[&Job]) -> Vec<Result<File, SpoolError>> {
    use rustix::fs::{openat, unlinkat, AtFlags, Mode, OFlags};
    jobs.iter()
        .map(|job| {
            let tmp = tmp_name(job);
            openat(
                dir_fd,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o640),
            )
            .map(File::from)
            .map_err(io::Error::from)
            .and_then(|mut f| f.write_all(&job.bytes).map(|()| f))
            .map_err(|e| {
                let _ = unlinkat(dir_fd, tmp.as_str(), AtFlags::empty());
                spool_io(dir, e)
            })
        })
        .collect()
}

/// Makes a written group durable and visible, then answers each batch:
/// write-back of every file started, every file synced, every temp file
/// renamed to its record name, the directory synced. A record is
/// acknowledged only after all of that; one whose step failed is removed
/// and refused.
fn publish(dir: &Path, dir_fd: &File, written: Written, durability: &dyn Durability) {
    use rustix::fs::{renameat, unlinkat, AtFlags};
    let Written { batches, files } = written;
    let jobs: Vec<&Job> = batches.iter().flat_map(|b| &b.jobs).collect();
    let mut outcomes: Vec<Result<(), SpoolError>> = Vec::with_capacity(jobs.len());
    let mut open = Vec::with_capacity(jobs.len());
    for (i, file) in files.into_iter().enumerate() {
        match file {
            Ok(f) => {
                outcomes.push(Ok(()));
                open.push((i, f));
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    // Start write-back of every file first, so block allocation for the
    // whole group lands in one journal transaction and the syncs below
    // share its commit rather than paying one commit each.
    if open.len() > 1 {
        for (_, f) in &open {
            // SAFETY: plain syscall on an open descriptor; failure only loses the hint.
            unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
    }
    let (index, files): (Vec<usize>, Vec<(&Job, File)>) =
        open.into_iter().map(|(i, f)| (i, (jobs[i], f))).unzip();
    let synced = sync_all(&files, durability);
    drop(files);
    let mut renamed = Vec::with_capacity(index.len());
    for (i, result) in index.into_iter().zip(synced) {
        let tmp = tmp_name(jobs[i]);
        let result = result.and_then(|()| {
            renameat(dir_fd, tmp.as_str(), dir_fd, jobs[i].name.as_str()).map_err(io::Error::from)
        });
        match result {
            Ok(()) => renamed.push(i),
            Err(e) => {
                let _ = unlinkat(dir_fd, tmp.as_str(), AtFlags::empty());
                outcomes[i] = Err(spool_io(dir, e));
            }
        }
    }
    if let Err(e) = durability.sync_dir(dir) {
        for i in renamed {
            let _ = unlinkat(dir_fd, jobs[i].name.as_str(), AtFlags::empty());
            outcomes[i] = Err(spool_io(dir, io::Error::new(e.kind(), e.to_string())));
        }
    }
    drop(jobs);
    let mut outcomes = outcomes.into_iter();
    for b in batches {
        let answer: Vec<_> = outcomes.by_ref().take(b.jobs.len()).collect();
        let _ = b.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
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
            let file = at(&format!("file {name}"))
                .unwrap_or_else(|| panic!("{name} never synced: {log:?}"));
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
}
