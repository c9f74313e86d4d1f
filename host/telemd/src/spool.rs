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
mod tests;
