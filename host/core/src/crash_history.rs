//! The local crash history: what the daemon did with each crash it
//! handled (when, which program, which signal, and the records it sent),
//! kept under `state_dir` so that an admin can look back as with
//! `coredumpctl list` and `coredumpctl info` (`telemctl crash list`,
//! `telemctl crash info`). One small JSON file per crash, written
//! atomically; the oldest are removed beyond [`MAX_ENTRIES`] files or
//! [`MAX_BYTES`] in all, so the history never grows without bound.
//!
//! The files hold what a crashed program and its core decided (names,
//! paths, frames): they are data, shown escaped, and a file that cannot
//! be read as an entry is skipped and counted, never trusted.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most crashes kept.
pub const MAX_ENTRIES: usize = 200;
/// Most bytes of history kept, all files together.
pub const MAX_BYTES: u64 = 4 << 20;
/// Most bytes of one entry; payloads are cut to fit.
pub const MAX_ENTRY_BYTES: usize = 64 << 10;

/// One crash, as handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashEntry {
    /// The crash's inbox id (what the handler logged).
    pub id: String,
    /// Seconds since the epoch when the handler took the crash.
    pub time: u64,
    /// The crashed program: its path when the kernel gave one, else its
    /// name.
    pub program: String,
    /// Its pid (in its own namespace).
    pub pid: u32,
    /// The signal that killed it.
    pub signal: Option<u32>,
    /// Its uid, when the kernel gave it.
    pub uid: Option<u32>,
    /// The signature its record carried (`sym1:...`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The earlier crash with the same signature, within the repeat
    /// window, whose record was sent: this one's was held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<String>,
    /// The records made for it, as sent (or held back).
    pub records: Vec<SentRecord>,
}

/// One record sent for a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    /// Its classification.
    pub classification: String,
    /// Its severity.
    pub severity: u8,
    /// Its event id (the collector's key for it).
    pub event_id: String,
    /// Its payload (cut to fit [`MAX_ENTRY_BYTES`]).
    pub payload: String,
    /// False when it was held back as a repeat (see
    /// [`CrashEntry::repeat_of`]).
    #[serde(default = "yes")]
    pub sent: bool,
}

fn yes() -> bool {
    true
}

/// The signature a crash or kernel payload carries on its `Signature:`
/// line (`Signature : ` in the kernel layout), if it has the form of one.
pub fn signature_in(payload: &str) -> Option<&str> {
    payload
        .lines()
        .take_while(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix("Signature: ")
                .or_else(|| l.strip_prefix("Signature : "))
        })
        .filter(|s| crash_signature::is_signature(s))
}

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The directory could not be listed or a file written.
    #[error("crash history {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`CrashHistory::find`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The one crash the key names.
    One(Box<CrashEntry>),
    /// The latest of the crashes with the signature the key is, and how
    /// many the history holds.
    Signature(Box<CrashEntry>, usize),
    /// No crash.
    None,
    /// This many crashes begin with the key.
    Ambiguous(usize),
}

/// The history directory (`StateLayout::crash_history`).
#[derive(Clone, Debug)]
pub struct CrashHistory {
    dir: PathBuf,
}

/// What [`CrashHistory::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The entries, oldest first.
    pub entries: Vec<CrashEntry>,
    /// Files that could not be read as entries (skipped).
    pub unreadable: usize,
}

impl Listing {
    /// How many entries have `signature`.
    pub fn with_signature(&self, signature: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.signature.as_deref() == Some(signature))
            .count()
    }
}

impl CrashHistory {
    /// The history kept in `dir`.
    pub fn new(dir: &Path) -> CrashHistory {
        CrashHistory {
            dir: dir.to_owned(),
        }
    }

    /// Keeps `entry` (its payloads cut so that it fits
    /// [`MAX_ENTRY_BYTES`]), then removes the oldest entries beyond the
    /// bounds.
    pub fn add(&self, entry: &CrashEntry) -> Result<(), HistoryError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| HistoryError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let bytes = fitted(entry);
        let name = format!("{:020}-{}.json", entry.time, file_safe(&entry.id));
        let path = self.dir.join(name);
        crate::fsutil::write_atomic(&path, &bytes, 0o640).map_err(io(&path))?;
        self.prune().map_err(io(&self.dir))
    }

    /// Removes the oldest entries while more than [`MAX_ENTRIES`] or
    /// [`MAX_BYTES`] are kept.
    fn prune(&self) -> std::io::Result<()> {
        let mut files = self.files()?;
        let mut total: u64 = files.iter().map(|(_, len)| len).sum();
        let mut count = files.len();
        files.reverse();
        while count > MAX_ENTRIES || total > MAX_BYTES {
            let Some((oldest, len)) = files.pop() else {
                break;
            };
            match std::fs::remove_file(&oldest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            count -= 1;
            total = total.saturating_sub(len);
        }
        Ok(())
    }

    /// The entry files and their sizes, oldest first (names begin with the
    /// time).
    fn files(&self) -> std::io::Result<Vec<(PathBuf, u64)>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files: Vec<(PathBuf, u64)> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (e.path(), m.len()))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every entry kept, oldest first; files that are not entries (too
    /// large, not JSON of an entry) are skipped and counted.
    pub fn list(&self) -> Result<Listing, HistoryError> {
        let files = self.files().map_err(|source| HistoryError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Listing::default();
        for (path, _) in files {
            match read_entry(&path) {
                Some(e) => out.entries.push(e),
                None => out.unreadable += 1,
            }
        }
        Ok(out)
    }

    /// The entry whose id or whose record's event id is `key`, or starts
    /// with it when only one does; for a signature, the latest crash with
    /// it.
    pub fn find(&self, key: &str) -> Result<Found, HistoryError> {
        let entries = self.list()?.entries;
        if crash_signature::is_signature(key) {
            let same: Vec<&CrashEntry> = entries
                .iter()
                .filter(|e| e.signature.as_deref() == Some(key))
                .collect();
            return Ok(match same.last() {
                Some(latest) => Found::Signature(Box::new((*latest).clone()), same.len()),
                None => Found::None,
            });
        }
        let exact = |e: &CrashEntry| e.id == key || e.records.iter().any(|r| r.event_id == key);
        if let Some(e) = entries.iter().rev().find(|e| exact(e)) {
            return Ok(Found::One(Box::new(e.clone())));
        }
        let prefixed: Vec<&CrashEntry> = entries
            .iter()
            .filter(|e| {
                !key.is_empty()
                    && (e.id.starts_with(key)
                        || e.records.iter().any(|r| r.event_id.starts_with(key)))
            })
            .collect();
        Ok(match prefixed[..] {
            [] => Found::None,
            [one] => Found::One(Box::new(one.clone())),
            ref many => Found::Ambiguous(many.len()),
        })
    }
}

/// The entry as JSON, its payloads cut (longest first) until it fits;
/// records beyond what fits are left out, the last ones first.
fn fitted(entry: &CrashEntry) -> Vec<u8> {
    let mut e = entry.clone();
    e.program.truncate(floor_char_boundary(&e.program, 4096));
    e.id = file_safe(&e.id);
    loop {
        let bytes = serde_json::to_vec(&e).expect("an entry serializes");
        if bytes.len() <= MAX_ENTRY_BYTES || e.records.is_empty() {
            return bytes;
        }
        let over = bytes.len() - MAX_ENTRY_BYTES;
        match e.records.iter_mut().max_by_key(|r| r.payload.len()) {
            Some(longest) if longest.payload.len() > 64 => {
                let keep = floor_char_boundary(
                    &longest.payload,
                    longest.payload.len().saturating_sub(over + 32),
                );
                longest.payload.truncate(keep);
                longest.payload.push_str("\n[cut]\n");
            }
            _ => {
                e.records.pop();
            }
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn read_entry(path: &Path) -> Option<CrashEntry> {
    let f = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_ENTRY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// An id as a file name part: letters, digits and `-` (inbox ids are
/// made of those already).
fn file_safe(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: u64, id: &str, payload: &str) -> CrashEntry {
        CrashEntry {
            id: id.into(),
            time,
            program: "/usr/bin/crashme".into(),
            pid: 42,
            signal: Some(11),
            uid: Some(1000),
            signature: signature_in(payload).map(str::to_owned),
            repeat_of: None,
            records: vec![SentRecord {
                classification: "org.clearlinux/crash/clr".into(),
                severity: 3,
                event_id: format!("ev{id}"),
                payload: payload.into(),
                sent: true,
            }],
        }
    }

    #[test]
    fn entries_are_kept_oldest_first_and_found_by_id_or_event_id() {
        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(&dir.path().join("history"));
        assert!(h.list().unwrap().entries.is_empty());
        h.add(&entry(20, "b", "second")).unwrap();
        h.add(&entry(10, "a", "first")).unwrap();
        let l = h.list().unwrap();
        let ids: Vec<&str> = l.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let one = |key: &str| match h.find(key).unwrap() {
            Found::One(e) => *e,
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(one("b").records[0].payload, "second");
        assert_eq!(one("eva").id, "a");
        // A prefix shared by both names neither.
        assert_eq!(h.find("ev").unwrap(), Found::Ambiguous(2));
        assert_eq!(h.find("").unwrap(), Found::None);
        assert_eq!(h.find("zzz").unwrap(), Found::None);
    }

    #[test]
    fn the_oldest_go_beyond_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(dir.path());
        for t in 0..(MAX_ENTRIES as u64 + 5) {
            h.add(&entry(t, &format!("c{t}"), "p")).unwrap();
        }
        let l = h.list().unwrap();
        assert_eq!(l.entries.len(), MAX_ENTRIES);
        assert_eq!(l.entries[0].id, "c5");
    }

    #[test]
    fn the_oldest_go_beyond_the_bytes_and_a_huge_payload_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(dir.path());
        let big = "x".repeat(10 * MAX_ENTRY_BYTES);
        for t in 0..(MAX_BYTES / MAX_ENTRY_BYTES as u64 + 10) {
            h.add(&entry(t, &format!("c{t}"), &big)).unwrap();
        }
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= MAX_BYTES, "{total}");
        let l = h.list().unwrap();
        // As many as fit, the newest: the oldest went first.
        let fit = (MAX_BYTES / MAX_ENTRY_BYTES as u64) as usize;
        assert!(
            (fit..fit + 2).contains(&l.entries.len()),
            "{}",
            l.entries.len()
        );
        let added = MAX_BYTES / MAX_ENTRY_BYTES as u64 + 10;
        assert_eq!(l.entries.last().unwrap().id, format!("c{}", added - 1));
        assert_ne!(l.entries[0].id, "c0");
        assert!(l.entries[0].records[0].payload.ends_with("\n[cut]\n"));
    }

    #[test]
    fn a_damaged_or_oversized_file_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(dir.path());
        h.add(&entry(1, "a", "ok")).unwrap();
        std::fs::write(dir.path().join("00000000000000000002-b.json"), b"{not json").unwrap();
        std::fs::write(
            dir.path().join("00000000000000000003-c.json"),
            vec![b' '; MAX_ENTRY_BYTES + 10],
        )
        .unwrap();
        let l = h.list().unwrap();
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.unreadable, 2);
    }

    #[test]
    fn an_id_cannot_step_out_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(&dir.path().join("h"));
        h.add(&entry(1, "../../escape", "p")).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join("h"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["00000000000000000001-escape.json"]);
    }

    #[test]
    fn signatures_are_read_from_payloads_and_find_the_latest_crash() {
        let crash = "Process: /p\nPID: 1\nSignal: 11\nSignature: sym1:0123456789abcdef\n\nBacktrace (TID 1):\n";
        assert_eq!(signature_in(crash), Some("sym1:0123456789abcdef"));
        let kernel = "Crash Report:\nReason: BUG: x\nSignature : line1:00000000000000ff\n";
        assert_eq!(signature_in(kernel), Some("line1:00000000000000ff"));
        // Not in the header, not of the form: none.
        assert_eq!(
            signature_in("Process: /p\n\nSignature: sym1:0123456789abcdef\n"),
            None
        );
        assert_eq!(signature_in("Signature: sym1:XYZ\n"), None);
        assert_eq!(signature_in("#0 Signature: sym1:0123456789abcdef\n"), None);

        let dir = tempfile::tempdir().unwrap();
        let h = CrashHistory::new(dir.path());
        h.add(&entry(10, "a", crash)).unwrap();
        h.add(&entry(20, "b", crash)).unwrap();
        h.add(&entry(30, "c", "Process: /p\n")).unwrap();
        assert_eq!(h.list().unwrap().with_signature("sym1:0123456789abcdef"), 2);
        match h.find("sym1:0123456789abcdef").unwrap() {
            Found::Signature(e, 2) => assert_eq!(e.id, "b"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.find("sym1:ffffffffffffffff").unwrap(), Found::None);
        // An entry of the version before signatures still reads.
        std::fs::write(
            dir.path().join("00000000000000000005-old.json"),
            r#"{"id":"old","time":5,"program":"/p","pid":1,"signal":11,"uid":null,"records":[{"classification":"c/d/e","severity":3,"event_id":"e","payload":"p"}]}"#,
        )
        .unwrap();
        let l = h.list().unwrap();
        assert_eq!(l.unreadable, 0);
        assert!(l.entries[0].records[0].sent && l.entries[0].signature.is_none());
    }
}
