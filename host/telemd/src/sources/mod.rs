//! Event sources the host reads on a probe's behalf (contract 0.2): the
//! kernel log (`kmsg`), new files in a directory (`files`) and the
//! systemd journal (`systemd_journal`), each module holding its reader and its
//! driver. The host reads, batches and hands them to the probe; the probe
//! never opens them. The drivers reach the probes through
//! [`BatchConsumer`] only, so this module imports nothing of the
//! supervisor that starts them. A source's
//! position (its cursor) moves only after the probe's `handle` returned
//! `ok` and the records it sent were spooled, so a restart neither reports
//! a batch twice nor skips one, and a failing probe gets the same batch
//! again until it succeeds or is quarantined (the cursor then waits for a
//! reload).

pub mod files;
pub mod kmsg;
pub mod systemd_journal;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use telem_core::control::{ProbeState, SourceInfo};
use telem_core::grants::FilesWatch;
use telem_sandbox::{BatchLimits, Event, ExtraDir, LoadedProbe};

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

/// What a source driver needs of the side that runs the probes: where the
/// sources are, whether a source directory may be read now, and the
/// hand-over of a batch. The supervisor implements it; a test can too.
pub trait BatchConsumer: Send + Sync + 'static {
    /// Where the sources are and where their cursors are kept.
    fn source_options(&self) -> &SourceOptions;
    /// Why `probe`'s source directory `dir` may not be read now, if it
    /// may not (checked before every scan).
    fn source_dir_refusal(&self, probe: &LoadedProbe, dir: &Path) -> Option<String>;
    /// Hands `event` to `probe` until it takes it (true: its records are
    /// spooled, the cursor may move) or is quarantined (false: the driver
    /// stops, its cursor where it was).
    fn deliver_batch<'a>(
        &'a self,
        probe: &'a Arc<LoadedProbe>,
        state: &'a Mutex<ProbeState>,
        event: Event,
        extra: &'a [ExtraDir],
    ) -> impl std::future::Future<Output = bool> + Send + 'a;
}

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

impl SourceOptions {
    /// The daemon's sources, from its config (`[probes]`, the crash
    /// section's privacy opt-out) and the state directory's layout.
    pub fn for_config(config: &telem_core::config::Config) -> SourceOptions {
        let probes = &config.probes;
        SourceOptions {
            kernel_log_path: probes.kernel_log_path.clone(),
            boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
            cursor_dir: telem_core::state_layout::StateLayout::new(&config.host.state_dir)
                .probe_state(),
            sources_root: probes.sources_root.clone(),
            journal_dir: (!probes.journal_source_dir.as_os_str().is_empty())
                .then(|| probes.journal_source_dir.clone()),
            no_privacy_filters_file: config.crash.no_privacy_filters_file.clone(),
            files_scan_interval: Duration::from_millis(probes.probe_scan_interval_ms.get()),
        }
    }
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
    /// What the journal source's reader warned of (not saved: journalctl
    /// says it again at each start).
    pub journal_warnings: SourceWarnings,
    /// The kernel log reader's count of records read and not yet handled
    /// (a fresh one for each reader, so a replaced reader's count goes
    /// with it).
    kernel_log_backlog: Mutex<Arc<Backlog>>,
    /// The same for the journal reader.
    journal_backlog: Mutex<Arc<Backlog>>,
}

/// How far a probe lags behind a source's reader: items the reader took
/// from the source and queued, less those the probe handled. Bounded by
/// the queue: when it is full the reader waits, and the rest waits in the
/// source itself.
#[derive(Debug, Default)]
pub struct Backlog {
    read: std::sync::atomic::AtomicU64,
    handled: std::sync::atomic::AtomicU64,
}

impl Backlog {
    /// The reader took `n` more.
    pub fn read(&self, n: u64) {
        self.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The probe handled `n` more.
    pub fn handled(&self, n: u64) {
        self.handled
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Read and not yet handled.
    pub fn waiting(&self) -> u64 {
        let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
        read.saturating_sub(self.handled.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::Backlog;

    #[test]
    fn the_backlog_is_what_was_read_and_not_handled_and_a_new_reader_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let c = super::CursorFile::load(dir.path(), "p");
        let first = c.new_journal_backlog();
        first.read(10);
        first.handled(4);
        assert_eq!(c.journal_backlog.lock().unwrap().waiting(), 6);
        // The reader is replaced: its 6 are read again by the next one,
        // and the old reader's late counts land on its own backlog.
        let second = c.new_journal_backlog();
        first.read(3);
        assert_eq!(c.journal_backlog.lock().unwrap().waiting(), 0);
        second.read(6);
        second.handled(6);
        assert_eq!(c.journal_backlog.lock().unwrap().waiting(), 0);
        let b = Backlog::default();
        b.handled(2);
        assert_eq!(b.waiting(), 0, "never below nothing");
    }
}

/// The distinct warnings a source's reader printed lately: each is logged
/// when first seen (within a log allowance) however often the reader is
/// restarted, the latest [`SourceWarnings::SHOWN`] are shown by `telemctl
/// probe info`. The [`SourceWarnings::REMEMBERED`] latest are remembered;
/// older ones are forgotten, so new damage is always told.
#[derive(Debug)]
pub struct SourceWarnings {
    inner: Mutex<Remembered>,
}

#[derive(Debug)]
struct Remembered {
    /// Distinct lines, oldest first.
    lines: std::collections::VecDeque<String>,
    /// Distinct lines said since the start, for the "N more" line.
    said: u64,
    log: telem_core::untrusted::LogLimit,
}

impl Default for SourceWarnings {
    fn default() -> Self {
        SourceWarnings {
            inner: Mutex::new(Remembered {
                lines: std::collections::VecDeque::new(),
                said: 0,
                log: telem_core::untrusted::LogLimit::new(
                    Self::LOG_LINES,
                    Self::LOG_LINES as usize * Self::LINE_CAP,
                    Self::LOG_WINDOW,
                    std::time::Instant::now(),
                ),
            }),
        }
    }
}

/// What [`SourceWarnings::note`] decided about a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Noted {
    /// Seen lately: nothing to say.
    Known,
    /// New: log it (with how many new ones the allowance held back before).
    Log(String, u64),
    /// New, but over the log allowance: shown by `probe info` only.
    Quiet,
}

impl SourceWarnings {
    /// Distinct warnings remembered; the oldest is forgotten beyond.
    pub const REMEMBERED: usize = 64;
    /// Warnings shown with the source.
    pub const SHOWN: usize = 8;
    /// Longest warning kept, in bytes (escaped).
    pub const LINE_CAP: usize = 256;
    /// New warnings logged per [`Self::LOG_WINDOW`] (a directory of
    /// damaged files must not flood the log).
    pub const LOG_LINES: u32 = 10;
    /// The window of [`Self::LOG_LINES`].
    pub const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

    /// Takes one line the reader printed (escaped here).
    pub fn note(&self, line: &str) -> Noted {
        let line = telem_core::untrusted::escape(line.trim_end(), Self::LINE_CAP);
        if line.is_empty() {
            return Noted::Known;
        }
        let mut r = self.inner.lock().expect("source warnings lock");
        if let Some(at) = r.lines.iter().position(|l| *l == line) {
            // Said again: the latest.
            let again = r.lines.remove(at).expect("found");
            r.lines.push_back(again);
            return Noted::Known;
        }
        if r.lines.len() >= Self::REMEMBERED {
            r.lines.pop_front();
        }
        r.lines.push_back(line.clone());
        r.said += 1;
        let len = line.len();
        match r.log.admit(std::time::Instant::now(), len) {
            Some(held_back) => Noted::Log(line, held_back),
            None => Noted::Quiet,
        }
    }

    /// The latest warnings, oldest first, after a line saying how many
    /// more were said when there were.
    pub fn shown(&self) -> Vec<String> {
        let r = self.inner.lock().expect("source warnings lock");
        let from = r.lines.len().saturating_sub(Self::SHOWN);
        let mut out: Vec<String> = r.lines.iter().skip(from).cloned().collect();
        let more = r.said.saturating_sub(out.len() as u64);
        if more > 0 {
            out.insert(0, format!("({more} other warning(s) said before these)"));
        }
        out
    }
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
            journal_warnings: SourceWarnings::default(),
            kernel_log_backlog: Mutex::default(),
            journal_backlog: Mutex::default(),
        }
    }

    /// A fresh count for a kernel log reader that starts now.
    pub fn new_kernel_log_backlog(&self) -> Arc<Backlog> {
        let b = Arc::new(Backlog::default());
        *self.kernel_log_backlog.lock().expect("backlog lock") = b.clone();
        b
    }

    /// A fresh count for a journal reader that starts now.
    pub fn new_journal_backlog(&self) -> Arc<Backlog> {
        let b = Arc::new(Backlog::default());
        *self.journal_backlog.lock().expect("backlog lock") = b.clone();
        b
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
                warnings: Vec::new(),
                waiting: Some(
                    self.kernel_log_backlog
                        .lock()
                        .expect("backlog lock")
                        .waiting(),
                ),
            });
        }
        if probe.grant.journal.is_some() {
            out.push(SourceInfo {
                source: "journal".into(),
                position: match &c.journal {
                    Some(_) => "handled up to a saved cursor".into(),
                    None => "nothing handled yet".into(),
                },
                warnings: self.journal_warnings.shown(),
                waiting: Some(self.journal_backlog.lock().expect("backlog lock").waiting()),
            });
        }
        for w in &probe.grant.files {
            let told = c.files.get(&watch_key(w)).map_or(0, BTreeSet::len);
            out.push(SourceInfo {
                source: format!("files {} {}", w.dir.display(), w.pattern),
                position: format!("{told} file(s) handled and still there"),
                warnings: Vec::new(),
                waiting: None,
            });
        }
        out
    }
}

/// Saves a change of the cursors on a blocking thread (it fsyncs).
pub(crate) async fn save(
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

pub(crate) fn boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_warning_is_logged_once_and_the_latest_are_shown() {
        let w = SourceWarnings::default();
        let cut = "Journal file /j/a.journal is truncated, ignoring file.";
        assert_eq!(w.note(&format!("{cut}\n")), Noted::Log(cut.into(), 0));
        // Said again at the next start of the reader: not logged again.
        assert_eq!(w.note(cut), Noted::Known);
        assert_eq!(w.note(""), Noted::Known);
        // Hostile bytes are escaped; a long line is cut.
        let Noted::Log(shown, _) = w.note(&format!("\x1b[31m{}", "x".repeat(1000))) else {
            panic!("a new line is logged");
        };
        assert!(
            shown.len() <= SourceWarnings::LINE_CAP + 32 && !shown.contains('\x1b'),
            "{shown}"
        );
        // A directory of damaged files: the log allowance holds the rest
        // back, probe info still shows the latest.
        let mut logged = 2;
        for i in 0..100 {
            if matches!(w.note(&format!("file {i} is truncated")), Noted::Log(..)) {
                logged += 1;
            }
        }
        assert_eq!(logged, SourceWarnings::LOG_LINES as usize);
        let shown = w.shown();
        assert_eq!(shown.len(), SourceWarnings::SHOWN + 1);
        assert_eq!(shown[0], "(94 other warning(s) said before these)");
        assert_eq!(shown.last().unwrap(), "file 99 is truncated");
        // The oldest are forgotten: new damage is never hidden for good,
        // and what was forgotten is new again when said.
        assert_ne!(w.note(cut), Noted::Known);
    }

    #[test]
    fn the_sources_come_from_the_config_and_the_state_layout() {
        let mut config = telem_core::config::Config::default();
        config.host.state_dir = "/var/lib/t".into();
        config.probes.journal_source_dir = PathBuf::new();
        let o = SourceOptions::for_config(&config);
        assert_eq!(o.cursor_dir, Path::new("/var/lib/t/probe-state"));
        assert_eq!(o.journal_dir, None, "empty: the system journal");
        config.probes.journal_source_dir = "/var/log/journal/remote".into();
        assert_eq!(
            SourceOptions::for_config(&config).journal_dir.as_deref(),
            Some(Path::new("/var/log/journal/remote"))
        );
        assert_eq!(
            o.files_scan_interval,
            Duration::from_millis(config.probes.probe_scan_interval_ms.get())
        );
    }

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
