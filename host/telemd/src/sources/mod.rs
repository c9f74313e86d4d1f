//! Event sources the host reads on a probe's behalf (contract 0.2): the
//! kernel log and new files in a directory. The host reads, batches and
//! hands them to the probe; the probe never opens them. A source's
//! position (its cursor) moves only after the probe's `handle` returned
//! `ok` and the records it sent were spooled, so a restart neither reports
//! a batch twice nor skips one, and a failing probe gets the same batch
//! again until it succeeds or is quarantined (the cursor then waits for a
//! reload).

pub mod files;
pub mod journal;
pub mod kmsg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use telem_core::control::{ProbeState, SourceInfo};
use telem_core::grants::FilesWatch;
use telem_sandbox::{BatchLimits, Event, FileNotice, KernelLogBatch, LoadedProbe};

use crate::supervisor::ProbeManager;

/// Host cap on lines or files per call, whatever the manifest asks.
pub const MAX_BATCH_ITEMS: u32 = 1024;
/// Host cap on bytes of kernel log text per call.
pub const MAX_BATCH_BYTES: u32 = 256 << 10;
/// Lines per call when the manifest says 0.
pub const DEFAULT_BATCH_ITEMS: u32 = 256;
/// Bytes per call when the manifest says 0.
pub const DEFAULT_BATCH_BYTES: u32 = 64 << 10;
/// How often a missing source is tried again.
pub const SOURCE_RETRY: Duration = Duration::from_secs(5);

/// Where the sources are and where their cursors are kept.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// The kernel log (`/dev/kmsg`, or a file or FIFO in its format).
    pub kernel_log_path: PathBuf,
    /// This boot's id.
    pub boot_id_path: PathBuf,
    /// One cursor file per probe.
    pub cursor_dir: PathBuf,
    /// Where `files` sources' directories are found on this host: `/`, or
    /// the host's tree mounted elsewhere (a container, a test). The probe
    /// sees them at the path its manifest names.
    pub sources_root: PathBuf,
    /// How often `files` directories are scanned.
    pub files_scan_interval: Duration,
    /// The journal source's directory (`None`: the system journal).
    pub journal_dir: Option<PathBuf>,
    /// The admin's privacy opt-out: a journal source's privacy-gated
    /// matches apply only while it exists.
    pub no_privacy_filters_file: PathBuf,
}

/// A probe's positions in its sources, kept across restarts in
/// `<cursor_dir>/<probe>.sources.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursors {
    /// The last kernel log record handled, and its boot.
    #[serde(default)]
    pub kernel_log: Option<KernelLogCursor>,
    /// Per `files` source (`DIR PATTERN`), the files the probe was told of.
    #[serde(default)]
    pub files: BTreeMap<String, BTreeSet<files::Found>>,
    /// The journal cursor of the last entry handled.
    #[serde(default)]
    pub journal: Option<String>,
}

/// The last kernel log record a probe handled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelLogCursor {
    /// The boot it belongs to: a cursor of another boot means nothing.
    pub boot_id: String,
    /// Its sequence number.
    pub seq: u64,
}

/// A probe's cursors and the file they live in.
#[derive(Debug)]
pub struct CursorFile {
    path: PathBuf,
    /// The cursors as last saved.
    pub cursors: Mutex<Cursors>,
    /// Held by a source from handing a batch over until its cursor is
    /// saved; the daemon takes it when it stops, so a clean stop never
    /// falls between a batch's records and its cursor.
    pub commit: Arc<tokio::sync::Mutex<()>>,
}

impl CursorFile {
    /// The cursors of `probe` (empty when none were saved or the file is
    /// damaged: then the sources start over, which the log says).
    pub fn load(dir: &Path, probe: &str) -> CursorFile {
        let path = dir.join(format!("{probe}.sources.json"));
        let cursors = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    probe,
                    "source cursors {} are unreadable ({e}); starting over",
                    path.display()
                );
                Cursors::default()
            }),
            Err(_) => Cursors::default(),
        };
        CursorFile {
            path,
            cursors: Mutex::new(cursors),
            commit: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Changes the cursors and saves them (write, fsync, rename). On error
    /// the saved cursors stay as they were, and so do those in memory.
    pub fn update(&self, change: impl FnOnce(&mut Cursors)) -> std::io::Result<()> {
        let mut c = self.cursors.lock().expect("cursor lock");
        let mut next = c.clone();
        change(&mut next);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec(&next).map_err(std::io::Error::other)?;
        telem_core::fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        *c = next;
        Ok(())
    }

    /// What `telemctl probe info` shows of them.
    pub fn describe(&self, probe: &LoadedProbe) -> Vec<SourceInfo> {
        let c = self.cursors.lock().expect("cursor lock");
        let mut out = Vec::new();
        if probe.grant.kernel_log {
            out.push(SourceInfo {
                source: "kernel-log".into(),
                position: match &c.kernel_log {
                    Some(k) => format!("handled up to record {} of boot {}", k.seq, k.boot_id),
                    None => "nothing handled yet".into(),
                },
            });
        }
        if probe.grant.journal.is_some() {
            out.push(SourceInfo {
                source: "journal".into(),
                position: match &c.journal {
                    Some(_) => "handled up to a saved cursor".into(),
                    None => "nothing handled yet".into(),
                },
            });
        }
        for w in &probe.grant.files {
            let told = c.files.get(&watch_key(w)).map_or(0, BTreeSet::len);
            out.push(SourceInfo {
                source: format!("files {} {}", w.dir.display(), w.pattern),
                position: format!("{told} file(s) handled and still there"),
            });
        }
        out
    }
}

/// Saves a change of the cursors on a blocking thread (it fsyncs).
async fn save(
    cursors: &Arc<CursorFile>,
    change: impl FnOnce(&mut Cursors) + Send + 'static,
) -> std::io::Result<()> {
    let cursors = cursors.clone();
    tokio::task::spawn_blocking(move || cursors.update(change))
        .await
        .map_err(std::io::Error::other)?
}

/// The key of a `files` source's cursor.
pub fn watch_key(w: &FilesWatch) -> String {
    format!("{} {}", w.dir.display(), w.pattern)
}

/// Where a source directory named `dir` by a manifest is on this host.
pub fn on_host(root: &Path, dir: &Path) -> PathBuf {
    root.join(dir.strip_prefix("/").unwrap_or(dir))
}

/// The limits of one batch: the manifest's, within the host's caps.
pub fn batch_limits(asked: &BatchLimits) -> (usize, usize) {
    let items = match asked.max_items {
        0 => DEFAULT_BATCH_ITEMS,
        n => n.min(MAX_BATCH_ITEMS),
    };
    let bytes = match asked.max_bytes {
        0 => DEFAULT_BATCH_BYTES,
        n => n.min(MAX_BATCH_BYTES),
    };
    (items as usize, bytes as usize)
}

fn boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Hands the kernel log to `probe`, batch by batch, from its cursor.
/// Returns when the probe is quarantined (the cursor stays where it was)
/// or its task is dropped.
pub async fn drive_kernel_log(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    limits: BatchLimits,
) {
    let opts = mgr.source_options().clone();
    let boot = boot_id(&opts.boot_id_path);
    let after = cursors
        .cursors
        .lock()
        .expect("cursor lock")
        .kernel_log
        .as_ref()
        .filter(|k| k.boot_id == boot)
        .map(|k| k.seq);
    let (max_items, max_bytes) = batch_limits(&limits);
    // The reader blocks once this many lines wait: it holds no more, and
    // the kernel's ring (or the FIFO's writer) waits, or loses lines,
    // which the next batch counts.
    let (tx, mut rx) = mpsc::channel::<kmsg::Item>(max_items);
    let path = opts.kernel_log_path.clone();
    let name = probe.name.clone();
    let reader = std::thread::Builder::new()
        .name(format!("kmsg-{name}"))
        .spawn(move || {
            let alive = {
                let tx = tx.clone();
                move || !tx.is_closed()
            };
            kmsg::follow(
                path,
                after,
                SOURCE_RETRY,
                |item| tx.blocking_send(item).is_ok(),
                alive,
            );
        });
    if let Err(e) = reader {
        tracing::error!(probe = %probe.name, "no kernel log reader (cannot start a thread: {e}); the source stays off until the probe is reloaded");
        return;
    }
    let mut pending: Option<kmsg::Item> = None;
    // One warning a minute at most about skipped lines: a flood of them
    // must not flood the daemon's log too (the count is in `probe info`).
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let first = match pending.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = KernelLogBatch {
            boot_id: boot.clone(),
            skipped: 0,
            lines: Vec::new(),
        };
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                kmsg::Item::Skipped(n) => batch.skipped = batch.skipped.saturating_add(n),
                kmsg::Item::Line(line) => {
                    if !batch.lines.is_empty()
                        && (batch.lines.len() >= max_items || bytes + line.text.len() > max_bytes)
                    {
                        pending = Some(kmsg::Item::Line(line));
                        break;
                    }
                    bytes += line.text.len();
                    batch.lines.push(line);
                }
            }
            next = rx.try_recv().ok();
        }
        let last = batch.lines.last().map(|l| l.seq);
        if batch.skipped > 0 {
            let mut st = probe.stats.lock().expect("stats lock");
            st.source_skipped = st.source_skipped.saturating_add(batch.skipped);
            drop(st);
            if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_warned = Some(std::time::Instant::now());
                tracing::warn!(probe = %probe.name, "{} kernel log record(s) skipped before this batch (lost in the ring or malformed; telemctl probe info counts them all)", batch.skipped);
            }
        }
        if batch.lines.is_empty() && batch.skipped == 0 {
            continue;
        }
        let _commit = cursors.commit.lock().await;
        if !mgr
            .deliver_batch(&probe, &state, Event::KernelLog(batch), &[])
            .await
        {
            return;
        }
        if let Some(seq) = last {
            let next = KernelLogCursor {
                boot_id: boot.clone(),
                seq,
            };
            // Forward only (a replaced probe's late save must not undo its
            // successor's).
            let saved = save(&cursors, move |c| {
                let behind = c
                    .kernel_log
                    .as_ref()
                    .is_some_and(|k| k.boot_id == next.boot_id && k.seq >= next.seq);
                if !behind {
                    c.kernel_log = Some(next);
                }
            })
            .await;
            if let Err(e) = saved {
                tracing::error!(probe = %probe.name, "kernel log cursor not saved: {e}; a restart hands this batch again");
            }
        }
    }
}

/// Tells `probe` of new files in `watch.dir`, scan by scan.
pub async fn drive_files(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    watch: FilesWatch,
    limits: BatchLimits,
) {
    let interval = mgr.source_options().files_scan_interval;
    let key = watch_key(&watch);
    let host_dir = on_host(&mgr.source_options().sources_root, &watch.dir);
    let extra = [telem_sandbox::ExtraDir {
        host: host_dir.clone(),
        guest: watch.dir.clone(),
        host_owned: false,
    }];
    let told = cursors
        .cursors
        .lock()
        .expect("cursor lock")
        .files
        .get(&key)
        .cloned()
        .unwrap_or_default();
    let mut w = files::Watch::new(told);
    let (max_items, _) = batch_limits(&limits);
    let mut said = false;
    let mut refused = false;
    let mut said_cut = false;
    loop {
        if let Some(why) = mgr.source_dir_refusal(&probe, &host_dir) {
            if !refused {
                tracing::warn!(probe = %probe.name, "files source {} not scanned: {why}", host_dir.display());
                refused = true;
            }
            tokio::time::sleep(interval).await;
            continue;
        }
        refused = false;
        let (dir, pattern) = (host_dir.clone(), watch.pattern.clone());
        let scan = tokio::task::spawn_blocking(move || files::scan(&dir, &pattern)).await;
        match scan {
            Ok(Ok(scan)) => {
                said = false;
                if !scan.complete && !said_cut {
                    tracing::warn!(probe = %probe.name, "{} holds over {} entries; scans look at that many only", host_dir.display(), files::MAX_ENTRIES);
                    said_cut = true;
                }
                let fresh = w.new_files(scan, SystemTime::now());
                for chunk in fresh.chunks(max_items) {
                    let notices = chunk
                        .iter()
                        .map(|f| FileNotice {
                            path: watch.dir.join(&f.path).display().to_string(),
                            size: f.size,
                            modified: f.modified,
                        })
                        .collect();
                    let event = Event::Files((watch.dir.display().to_string(), notices));
                    let _commit = cursors.commit.lock().await;
                    if !mgr.deliver_batch(&probe, &state, event, &extra).await {
                        return;
                    }
                    w.told.extend(chunk.iter().cloned());
                    let (k, told) = (key.clone(), w.told.clone());
                    let saved = save(&cursors, move |c| {
                        c.files.insert(k, told);
                    })
                    .await;
                    if let Err(e) = saved {
                        tracing::error!(probe = %probe.name, "files cursor not saved: {e}; a restart tells of these files again");
                    }
                }
            }
            Ok(Err(e)) => {
                if !said {
                    // No such directory is the common case (no pstore on
                    // this machine): worth a line, not a warning.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        tracing::info!(probe = %probe.name, "{} does not exist (yet); looking again every scan", host_dir.display());
                    } else {
                        tracing::warn!(probe = %probe.name, "cannot scan {} ({e}); trying again every scan", host_dir.display());
                    }
                    said = true;
                }
            }
            Err(e) => {
                tracing::error!(probe = %probe.name, "scan of {} failed: {e}", watch.dir.display())
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Hands journal entries to `probe`, batch by batch, from its cursor:
/// journalctl runs as a child, started again (after the last entry
/// handled) when it stops; a journal that cannot be read is logged once
/// and tried again every [`SOURCE_RETRY`].
pub async fn drive_journal(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    source: telem_sandbox::JournalSource,
) {
    let opts = mgr.source_options().clone();
    let Some(fields) = probe.grant.journal.clone() else {
        return;
    };
    let (max_items, max_bytes) = batch_limits(&source.limits);
    let mut said: Option<String> = None;
    let mut last_warned: Option<std::time::Instant> = None;
    let mut quick_failures = 0;
    // The last cursor delivered in this run (a failed save does not make a
    // restarted journalctl hand the batch again).
    let mut delivered: Option<String> = None;
    loop {
        let mut groups = source.matches.clone();
        let gated = opts.no_privacy_filters_file.exists();
        if gated {
            groups.extend(source.privacy_gated.iter().cloned());
        }
        if groups.is_empty() {
            // Refused at load; never read the whole journal.
            return;
        }
        let query = journal::Query {
            dir: opts.journal_dir.clone(),
            groups,
            // The journal writes the id without its dashes.
            boot_id: source
                .this_boot
                .then(|| boot_id(&opts.boot_id_path).replace('-', "")),
            fields: fields.clone(),
        };
        let cursor = delivered
            .clone()
            .or_else(|| cursors.cursors.lock().expect("cursor lock").journal.clone());
        let problem = opts.journal_dir.as_deref().and_then(journal::dir_problem);
        let child = match problem {
            Some(p) => Err(p),
            None => journal::command(&query, cursor.as_deref())
                .spawn()
                .map_err(|e| format!("cannot run journalctl: {e}")),
        };
        let mut child = match child {
            Ok(c) => journal::ChildGuard(c),
            Err(why) => {
                if said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(probe = %probe.name, "journal source: {why}; trying again every {} s", SOURCE_RETRY.as_secs());
                    said = Some(why);
                }
                tokio::time::sleep(SOURCE_RETRY).await;
                continue;
            }
        };
        let Some(out) = child.0.stdout.take() else {
            return;
        };
        let stderr_first = journal::drain_stderr(&mut child.0);
        let started = std::time::Instant::now();
        // Entries may be up to 64 KiB each: the queue holds 128 at most.
        let (tx, mut rx) = mpsc::channel::<journal::Item>(max_items.min(128));
        let reader_fields = fields.clone();
        let reader = std::thread::Builder::new()
            .name(format!("journal-{}", probe.name))
            .spawn(move || {
                journal::read_entries(out, &reader_fields, |item| tx.blocking_send(item).is_ok())
            });
        if let Err(e) = reader {
            tracing::error!(probe = %probe.name, "no journal reader (cannot start a thread: {e}); the source stays off until the probe is reloaded");
            return;
        }
        let mut pending: Option<journal::Item> = None;
        let mut gate_check = tokio::time::interval(SOURCE_RETRY);
        let mut gate_changed = false;
        loop {
            let first = match pending.take() {
                Some(item) => item,
                None => {
                    let next = tokio::select! {
                        item = rx.recv() => item,
                        _ = gate_check.tick() => {
                            // The admin turned the privacy filters on or
                            // off: journalctl starts again with the
                            // matches that now apply.
                            if opts.no_privacy_filters_file.exists() != gated {
                                tracing::info!(probe = %probe.name, "privacy filters changed; journal matches follow");
                                gate_changed = true;
                                break;
                            }
                            continue;
                        }
                    };
                    match next {
                        Some(item) => item,
                        None => break,
                    }
                }
            };
            let mut entries = Vec::new();
            let mut last_cursor = None;
            let (mut bytes, mut skipped) = (0usize, 0u64);
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    journal::Item::Skipped(n) => skipped = skipped.saturating_add(n),
                    journal::Item::Entry(cursor, entry) => {
                        let size: usize = entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
                        if !entries.is_empty()
                            && (entries.len() >= max_items || bytes + size > max_bytes)
                        {
                            pending = Some(journal::Item::Entry(cursor, entry));
                            break;
                        }
                        bytes += size;
                        entries.push(entry);
                        last_cursor = Some(cursor);
                    }
                }
                next = rx.try_recv().ok();
            }
            if skipped > 0 {
                let mut st = probe.stats.lock().expect("stats lock");
                st.source_skipped = st.source_skipped.saturating_add(skipped);
                drop(st);
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warned = Some(std::time::Instant::now());
                    tracing::warn!(probe = %probe.name, "{skipped} journal entries could not be read (over 4 MiB, or not journalctl's JSON)");
                }
            }
            if entries.is_empty() {
                continue;
            }
            let _commit = cursors.commit.lock().await;
            if !mgr
                .deliver_batch(&probe, &state, Event::Journal(entries), &[])
                .await
            {
                return;
            }
            said = None;
            if let Some(c) = last_cursor {
                delivered = Some(c.clone());
                let saved = save(&cursors, move |cs| cs.journal = Some(c)).await;
                if let Err(e) = saved {
                    tracing::error!(probe = %probe.name, "journal cursor not saved: {e}; a restart hands this batch again");
                }
            }
        }
        // journalctl stopped (with --follow it does not on its own), or is
        // stopped here (the privacy gate changed, its output ended).
        let _ = child.0.kill();
        let status = child.0.wait();
        if gate_changed {
            continue;
        }
        let first_line = stderr_first.lock().expect("stderr lock").clone();
        // A cursor journalctl refuses (its file vacuumed and damaged, say)
        // would stop it at every start: after a second quick failure with
        // it, the source reads its matches from the start instead (a
        // repeat of what was reported beats a source stuck for good).
        if cursor.is_some() && started.elapsed() < SOURCE_RETRY {
            quick_failures += 1;
            if quick_failures >= 2 {
                tracing::warn!(probe = %probe.name, "journalctl stopped twice at once with the saved cursor ({}); reading from the start of the journal's matches", telem_core::untrusted::escape(&first_line, 256));
                let _ = save(&cursors, |cs| cs.journal = None).await;
                quick_failures = 0;
            }
        } else {
            quick_failures = 0;
        }
        let why = format!(
            "journalctl stopped ({}): {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            telem_core::untrusted::escape(&first_line, 256)
        );
        if said.as_deref() != Some(why.as_str()) {
            tracing::warn!(probe = %probe.name, "journal source: {why}; starting it again every {} s", SOURCE_RETRY.as_secs());
            said = Some(why);
        }
        tokio::time::sleep(SOURCE_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_limits_are_the_manifests_within_the_hosts_caps() {
        let l = |max_items, max_bytes| BatchLimits {
            max_items,
            max_bytes,
        };
        assert_eq!(
            batch_limits(&l(0, 0)),
            (DEFAULT_BATCH_ITEMS as usize, DEFAULT_BATCH_BYTES as usize)
        );
        assert_eq!(batch_limits(&l(4, 100)), (4, 100));
        assert_eq!(
            batch_limits(&l(u32::MAX, u32::MAX)),
            (MAX_BATCH_ITEMS as usize, MAX_BATCH_BYTES as usize)
        );
    }

    #[test]
    fn cursors_survive_a_new_file_and_a_damaged_one_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let c = CursorFile::load(dir.path(), "p");
        c.update(|c| {
            c.kernel_log = Some(KernelLogCursor {
                boot_id: "b".into(),
                seq: 41,
            })
        })
        .unwrap();
        let again = CursorFile::load(dir.path(), "p");
        assert_eq!(
            again.cursors.lock().unwrap().kernel_log,
            Some(KernelLogCursor {
                boot_id: "b".into(),
                seq: 41
            })
        );
        std::fs::write(dir.path().join("p.sources.json"), b"{not json").unwrap();
        let damaged = CursorFile::load(dir.path(), "p");
        assert_eq!(*damaged.cursors.lock().unwrap(), Cursors::default());
        // A failed save changes nothing in memory.
        let blocked = CursorFile::load(&dir.path().join("p.sources.json").join("x"), "p");
        assert!(blocked.update(|c| c.kernel_log = None).is_err());
    }
}
