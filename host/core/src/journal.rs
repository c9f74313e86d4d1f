//! The delivery journal: one line per record outcome (delivered, rejected,
//! expired, dropped, kept local), so an admin can answer "did my crash
//! report leave this machine?" with `telemctl journal`.
//!
//! The file is append-only and compacted to the latest `journal_limit`
//! entries only when it has grown to twice that, so a busy daemon does not
//! rewrite it per record. With retention on, each entry's payload is kept
//! in `records/<record_id>` and pruned with it.
//!
//! An entry is the delivery engine's commit point: the engine calls
//! [`Journal::sync`] before it removes the records whose entries it
//! appended, so after a power cut a record is still spooled or journaled
//! as final, never neither (one sync covers a batch of entries).
//!
//! Line format (tab-separated; no field contains a tab):
//! `record_id  unix_time  classification  event_id  boot_id  outcome  detail`

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::fsutil::{Durability, Fsync};

/// Entries kept on compaction even when `journal_limit` is smaller: the
/// delivery engine relies on recent final outcomes being on record across
/// a restart, for as many records as it may have journaled and not yet
/// removed from the spool (one OTLP request of up to 1000). Queries still
/// show `journal_limit`, and payload copies are kept for those only.
pub const MIN_KEPT: usize = 1024;

/// What finally happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The collector confirmed it (HTTP 200/201) or the file target took it.
    Delivered,
    /// The collector refused it for good (a 4xx other than 408/429), or
    /// its spool file was unreadable.
    Rejected,
    /// It outlived `record_expiry` in the spool.
    Expired,
    /// Over the rate limit with `rate_limit_strategy = "drop"`.
    Dropped,
    /// `record_server_delivery_enabled = false`: journaled, not sent.
    Local,
}

impl Outcome {
    /// The word used in the journal file and by telemctl.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected => "rejected",
            Outcome::Expired => "expired",
            Outcome::Dropped => "dropped",
            Outcome::Local => "local",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "delivered" => Outcome::Delivered,
            "rejected" => Outcome::Rejected,
            "expired" => Outcome::Expired,
            "dropped" => Outcome::Dropped,
            "local" => Outcome::Local,
            _ => return None,
        })
    }
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The spool file name the record had.
    pub record_id: String,
    /// When the outcome happened (unix seconds).
    pub time: u64,
    /// The record's classification.
    pub classification: String,
    /// The record's event id.
    pub event_id: String,
    /// Boot the outcome happened in.
    pub boot_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Extra facts: the HTTP status of a rejection, a reason.
    pub detail: String,
}

impl JournalEntry {
    fn to_line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            clean(&self.record_id),
            self.time,
            clean(&self.classification),
            clean(&self.event_id),
            clean(&self.boot_id),
            self.outcome.as_str(),
            clean(&self.detail)
        )
    }

    fn parse(line: &str) -> Option<JournalEntry> {
        let mut f = line.split('\t');
        Some(JournalEntry {
            record_id: f.next()?.to_owned(),
            time: f.next()?.parse().ok()?,
            classification: f.next()?.to_owned(),
            event_id: f.next()?.to_owned(),
            boot_id: f.next()?.to_owned(),
            outcome: Outcome::parse(f.next()?)?,
            detail: f.next().unwrap_or("").to_owned(),
        })
    }
}

/// Filters of `telemctl journal`; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct JournalFilter {
    /// Exact classification.
    pub classification: Option<String>,
    /// Exact record id.
    pub record_id: Option<String>,
    /// Exact event id.
    pub event_id: Option<String>,
    /// Exact boot id.
    pub boot_id: Option<String>,
}

impl JournalFilter {
    fn matches(&self, e: &JournalEntry) -> bool {
        let m = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        m(&self.classification, &e.classification)
            && m(&self.record_id, &e.record_id)
            && m(&self.event_id, &e.event_id)
            && m(&self.boot_id, &e.boot_id)
    }
}

struct State {
    file: File,
    lines: usize,
}

/// The journal of one daemon.
pub struct Journal {
    dir: PathBuf,
    limit: usize,
    retention: bool,
    state: Mutex<State>,
    durability: Arc<dyn Durability>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("limit", &self.limit)
            .finish()
    }
}

/// The current boot's id, as the legacy journal recorded it.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_else(|_| "unknown".into())
}

impl Journal {
    /// Opens (creating) the journal in `dir`, keeping `limit` entries;
    /// `retention` keeps payload copies.
    pub fn open(dir: &Path, limit: usize, retention: bool) -> io::Result<Journal> {
        Journal::open_with(dir, limit, retention, Arc::new(Fsync))
    }

    /// [`Journal::open`] with the syncs made through `durability` (a test
    /// records them to prove an entry is synced before its record goes).
    pub fn open_with(
        dir: &Path,
        limit: usize,
        retention: bool,
        durability: Arc<dyn Durability>,
    ) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        if retention {
            fs::create_dir_all(dir.join("records"))?;
        }
        let path = dir.join("journal");
        let lines = match File::open(&path) {
            Ok(f) => BufReader::new(f).lines().count(),
            Err(_) => 0,
        };
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A crash mid-append can leave a torn last line; end it so the next
        // entry starts on a line of its own.
        let data_len = file.metadata()?.len();
        if data_len > 0 {
            let mut last = [0u8; 1];
            use std::os::unix::fs::FileExt;
            File::open(&path)?.read_exact_at(&mut last, data_len - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Journal {
            dir: dir.to_owned(),
            limit: limit.max(1),
            retention,
            state: Mutex::new(State { file, lines }),
            durability,
        })
    }

    /// Path of the journal file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("journal")
    }

    /// Appends an entry (and the payload copy, with retention on). The
    /// entry reaches the disk at the next [`Journal::sync`] or compaction.
    pub fn append(&self, entry: &JournalEntry, payload: Option<&str>) -> io::Result<()> {
        if self.retention {
            if let Some(p) = payload {
                fs::write(self.dir.join("records").join(&entry.record_id), p)?;
            }
        }
        let mut st = self.state.lock().expect("journal lock");
        st.file.write_all(entry.to_line().as_bytes())?;
        st.lines += 1;
        if st.lines >= self.limit.max(MIN_KEPT) * 2 {
            self.compact(&mut st)?;
        }
        Ok(())
    }

    /// Makes every entry appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let st = self.state.lock().expect("journal lock");
        self.durability.sync_file("journal", &st.file)
    }

    /// Rewrites the file with the latest `max(limit, MIN_KEPT)` entries and
    /// removes the payload copies of all but the latest `limit`.
    fn compact(&self, st: &mut State) -> io::Result<()> {
        let all = read_entries(File::open(self.path())?)?;
        let cut = all.len().saturating_sub(self.limit.max(MIN_KEPT));
        let (old, keep) = all.split_at(cut);
        let text: String = keep.iter().map(JournalEntry::to_line).collect();
        crate::fsutil::write_atomic(&self.path(), text.as_bytes(), 0o644)?;
        st.file = OpenOptions::new().append(true).open(self.path())?;
        st.lines = keep.len();
        if self.retention {
            // Payload copies only for what a query can show.
            let shown: std::collections::HashSet<&str> = keep
                .iter()
                .rev()
                .take(self.limit)
                .map(|e| e.record_id.as_str())
                .collect();
            for e in old.iter().chain(keep.iter().rev().skip(self.limit)) {
                if !shown.contains(e.record_id.as_str()) {
                    let _ = fs::remove_file(self.dir.join("records").join(&e.record_id));
                }
            }
        }
        Ok(())
    }

    /// Ids of the records the journal file holds a final outcome for.
    pub fn recent_ids(&self) -> io::Result<std::collections::HashSet<String>> {
        Ok(read_entries(File::open(self.path())?)?
            .into_iter()
            .map(|e| e.record_id)
            .collect())
    }

    /// Entries matching `filter`, oldest first, at most the latest `limit`.
    pub fn query(&self, filter: &JournalFilter) -> io::Result<Vec<JournalEntry>> {
        query_dir(&self.dir, self.limit, filter)
    }
}

/// Most bytes of the journal file `telemctl` reads: a million entries of
/// a few hundred bytes (the largest `journal_limit`).
pub const QUERY_READ_CAP: u64 = 512 << 20;

/// Most bytes of a retained payload read back (a payload is at most 8 KiB).
const RETAINED_READ_CAP: u64 = 64 << 10;

/// Reads the journal in `dir` without opening it for writing (telemctl,
/// often as root, in a directory the service user owns: see
/// [`crate::fsutil::beneath`]).
pub fn query_dir(
    dir: &Path,
    limit: usize,
    filter: &JournalFilter,
) -> io::Result<Vec<JournalEntry>> {
    let opened = crate::fsutil::beneath::open_dir(dir)
        .and_then(|d| crate::fsutil::beneath::open_file(&d, "journal"));
    let all = match opened {
        Ok(f) => read_entries(f)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let start = all.len().saturating_sub(limit);
    Ok(all[start..]
        .iter()
        .filter(|e| filter.matches(e))
        .cloned()
        .collect())
}

/// The kept payload of a journaled record, if retention kept it (read as
/// [`query_dir`] reads the journal).
pub fn retained_payload(dir: &Path, record_id: &str) -> Option<String> {
    if record_id.starts_with('.') {
        return None;
    }
    use crate::fsutil::beneath;
    let records = beneath::open_subdir(&beneath::open_dir(dir).ok()?, "records").ok()?;
    let bytes = beneath::read_file(&records, record_id, RETAINED_READ_CAP).ok()?;
    String::from_utf8(bytes).ok()
}

fn read_entries(f: File) -> io::Result<Vec<JournalEntry>> {
    let mut out = Vec::new();
    for line in BufReader::new(f.take(QUERY_READ_CAP)).lines() {
        // A line cut by a crash mid-append is skipped, not fatal.
        if let Some(e) = JournalEntry::parse(&line?) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, class: &str) -> JournalEntry {
        JournalEntry {
            record_id: format!("rec{i:04}"),
            time: 1_800_000_000 + i as u64,
            classification: class.into(),
            event_id: format!("{i:032x}"),
            boot_id: if i % 2 == 0 {
                "bootA".into()
            } else {
                "bootB".into()
            },
            outcome: Outcome::Delivered,
            detail: String::new(),
        }
    }

    #[test]
    fn append_query_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 100, false).unwrap();
        for i in 0..10 {
            j.append(&entry(i, if i < 3 { "a/b/c" } else { "x/y/z" }), None)
                .unwrap();
        }
        assert_eq!(j.query(&JournalFilter::default()).unwrap().len(), 10);
        let f =
            |c: Option<&str>, r: Option<&str>, e: Option<&str>, b: Option<&str>| JournalFilter {
                classification: c.map(Into::into),
                record_id: r.map(Into::into),
                event_id: e.map(Into::into),
                boot_id: b.map(Into::into),
            };
        assert_eq!(
            j.query(&f(Some("a/b/c"), None, None, None)).unwrap().len(),
            3
        );
        assert_eq!(
            j.query(&f(None, Some("rec0004"), None, None)).unwrap()[0].record_id,
            "rec0004"
        );
        assert_eq!(
            j.query(&f(None, None, Some(&format!("{:032x}", 7)), None))
                .unwrap()[0]
                .record_id,
            "rec0007"
        );
        assert_eq!(
            j.query(&f(None, None, None, Some("bootA"))).unwrap().len(),
            5
        );
        assert_eq!(
            j.query(&f(Some("x/y/z"), None, None, Some("bootB")))
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn pruned_to_limit_without_rewriting_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let limit = MIN_KEPT + 6;
        let j = Journal::open(dir.path(), limit, true).unwrap();
        for i in 0..2 * limit - 1 {
            j.append(&entry(i, "a/b/c"), Some(&format!("payload {i}")))
                .unwrap();
        }
        // Below twice the limit: the file only grew.
        let lines = fs::read_to_string(j.path()).unwrap().lines().count();
        assert_eq!(lines, 2 * limit - 1);
        let last = 2 * limit - 1;
        j.append(&entry(last, "a/b/c"), Some("last payload"))
            .unwrap();
        let lines = fs::read_to_string(j.path()).unwrap().lines().count();
        assert_eq!(lines, limit, "compacted at twice the limit");
        let q = j.query(&JournalFilter::default()).unwrap();
        assert_eq!(q.len(), limit);
        assert_eq!(q[0].record_id, format!("rec{:04}", limit));
        assert_eq!(q.last().unwrap().record_id, format!("rec{last:04}"));
        assert_eq!(
            retained_payload(dir.path(), &format!("rec{last:04}")).as_deref(),
            Some("last payload")
        );
        assert_eq!(
            retained_payload(dir.path(), "rec0001"),
            None,
            "payload pruned with its entry"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("records")).unwrap().count(),
            limit
        );
        // Reopening counts the existing lines and keeps appending.
        drop(j);
        let j = Journal::open(dir.path(), limit, true).unwrap();
        j.append(&entry(9999, "a/b/c"), None).unwrap();
        assert_eq!(
            j.query(&JournalFilter::default())
                .unwrap()
                .last()
                .unwrap()
                .record_id,
            "rec9999"
        );
        assert!(j.recent_ids().unwrap().contains("rec9999"));
    }

    #[test]
    fn small_limits_still_keep_recent_outcomes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 5, true).unwrap();
        for i in 0..3 * MIN_KEPT {
            j.append(&entry(i, "a/b/c"), Some("payload")).unwrap();
        }
        // Queries show the latest 5; the file keeps at least MIN_KEPT.
        assert_eq!(j.query(&JournalFilter::default()).unwrap().len(), 5);
        assert!(j.recent_ids().unwrap().len() >= MIN_KEPT);
        // The last append compacted (3 * MIN_KEPT lines: the second
        // time the file reached 2 * MIN_KEPT): payload copies are left of
        // what a query shows only, not of every entry kept.
        let copies = std::fs::read_dir(dir.path().join("records"))
            .unwrap()
            .count();
        assert_eq!(copies, 5);
    }

    #[test]
    fn torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 100, false).unwrap();
        j.append(&entry(1, "a/b/c"), None).unwrap();
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"rec9\t12")
            .unwrap();
        assert_eq!(j.query(&JournalFilter::default()).unwrap().len(), 1);
        drop(j);
        let j = Journal::open(dir.path(), 100, false).unwrap();
        j.append(&entry(2, "a/b/c"), None).unwrap();
        assert_eq!(
            j.query(&JournalFilter::default()).unwrap().len(),
            2,
            "entry after a torn line survives"
        );
    }
}
