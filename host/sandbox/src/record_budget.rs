//! A probe's hourly record budget, spent per probe name and kept in the
//! state directory: a reload, `probe enable`, a daemon restart or a crash
//! loop does not start it afresh, so none of them multiplies what a probe
//! may send in an hour.
//!
//! File `<state_dir>/<name>.sends`: the line `telemd-record-budget 1\n`,
//! then one little-endian u64 per record sent: its wall-clock time in
//! milliseconds since the epoch (an `Instant` does not survive a restart).
//! A send is appended as it is made, and the file is synced once at the
//! end of each call that sent something; it is rewritten atomically,
//! holding only the last hour, whenever expired entries outnumber live
//! ones (and after a torn or failed append). A torn last entry (a crash mid-append) is ignored;
//! a file of another format starts the budget empty, with a warning. A
//! clock that jumps back makes entries look newer, never older: an entry
//! from the future counts as made now.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8] = b"telemd-record-budget 1\n";
/// The window the budget is counted over.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Most entries read back from a file: the largest budget a grant can
/// have holds no more than `u32::MAX`, but a file this long is not one the
/// daemon wrote for any sane grant, and reading further only costs memory.
const MAX_ENTRIES_READ: usize = 1 << 20;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One probe name's sends in the last hour, on disk and in memory.
#[derive(Debug)]
pub struct RecordBudget {
    path: PathBuf,
    /// Send times, oldest first, in ms since the epoch.
    sends: VecDeque<u64>,
    /// Entries in the file, live or not.
    in_file: usize,
    /// Appended to since the last sync.
    unsynced: bool,
}

impl RecordBudget {
    /// Loads the budget of probe `name` from `dir` (creating nothing yet),
    /// as of `now`. Problems are logged; the budget then starts from what
    /// could be read.
    pub fn load(dir: &Path, name: &str, now: SystemTime) -> RecordBudget {
        let path = dir.join(format!("{name}.sends"));
        let mut budget = RecordBudget {
            path,
            sends: VecDeque::new(),
            in_file: 0,
            unsynced: false,
        };
        match budget.read() {
            Ok((sends, whole)) => {
                // Appends continue the file as it is, unless it ends in a
                // torn entry: then the first send rewrites it.
                budget.in_file = if whole { sends.len() } else { 0 };
                budget.sends = sends;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return budget,
            Err(e) => tracing::warn!(
                probe = name,
                "cannot read its spent record budget ({}): {e}; counting from what was read",
                budget.path.display()
            ),
        }
        budget.expire(now);
        budget
    }

    /// The entries, and whether the file ends on an entry's end.
    fn read(&self) -> io::Result<(VecDeque<u64>, bool)> {
        let mut bytes = Vec::new();
        File::open(&self.path)?
            .take((MAGIC.len() + MAX_ENTRIES_READ * 8) as u64)
            .read_to_end(&mut bytes)?;
        let Some(entries) = bytes.strip_prefix(MAGIC) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a record budget file",
            ));
        };
        let whole = entries.len() % 8 == 0;
        let sends = entries
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        Ok((sends, whole))
    }

    /// Drops what is older than the window; entries from the future count
    /// as made `now`. Keeps the order (oldest first).
    fn expire(&mut self, now: SystemTime) {
        let now = millis(now);
        let cutoff = now.saturating_sub(WINDOW.as_millis() as u64);
        let mut kept: Vec<u64> = self
            .sends
            .iter()
            .filter(|&&t| t > cutoff)
            .map(|&t| t.min(now))
            .collect();
        kept.sort_unstable();
        self.sends = kept.into();
    }

    /// Sends made in the window ending `now`.
    pub fn spent(&mut self, now: SystemTime) -> usize {
        let now = millis(now);
        if self.sends.back().is_some_and(|&t| t > now) {
            // The clock went back: what looks newer than now counts as now.
            for t in &mut self.sends {
                *t = (*t).min(now);
            }
        }
        let cutoff = now.saturating_sub(WINDOW.as_millis() as u64);
        while self.sends.front().is_some_and(|&t| t <= cutoff) {
            self.sends.pop_front();
        }
        self.sends.len()
    }

    /// Spends one send at `now` if fewer than `cap` were made in the
    /// window; false when the budget is spent. Recorded on disk at once
    /// (synced by [`RecordBudget::sync`]); a write failure is logged and
    /// the send still counted in memory.
    pub fn try_spend(&mut self, now: SystemTime, cap: u32) -> bool {
        if self.spent(now) >= cap as usize {
            return false;
        }
        let t = millis(now);
        self.sends.push_back(t);
        let result = if self.in_file > 2 * self.sends.len() + 64 {
            self.rewrite()
        } else {
            self.append(t)
        };
        if let Err(e) = result {
            // The file may now end in part of an entry: rewrite it whole
            // at the next send.
            self.in_file = 0;
            tracing::warn!("cannot record a send in {}: {e}", self.path.display());
        }
        true
    }

    /// Gives back the last `n` sends (records of a failed batch, which
    /// were never stored).
    pub fn give_back(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for _ in 0..n.min(self.sends.len()) {
            self.sends.pop_back();
        }
        if let Err(e) = self.rewrite() {
            tracing::warn!("cannot rewrite {}: {e}", self.path.display());
        }
    }

    /// Makes the sends appended since the last call durable.
    pub fn sync(&mut self) {
        if !std::mem::take(&mut self.unsynced) {
            return;
        }
        let synced = File::open(&self.path).and_then(|f| f.sync_data());
        if let Err(e) = synced {
            tracing::warn!("cannot sync {}: {e}", self.path.display());
        }
    }

    fn append(&mut self, t: u64) -> io::Result<()> {
        if self.in_file == 0 {
            return self.rewrite();
        }
        let mut f = File::options().append(true).open(&self.path)?;
        f.write_all(&t.to_le_bytes())?;
        self.in_file += 1;
        self.unsynced = true;
        Ok(())
    }

    /// Replaces the file with the live entries (written, synced, renamed).
    fn rewrite(&mut self) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(MAGIC.len() + 8 * self.sends.len());
        bytes.extend_from_slice(MAGIC);
        for t in &self.sends {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        telem_core::fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        self.in_file = self.sends.len();
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn the_cap_holds_across_loads_and_frees_an_hour_after_each_send() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RecordBudget::load(dir.path(), "p", at(0));
        for i in 0..4 {
            assert!(b.try_spend(at(i * 60), 4), "send {i}");
        }
        assert!(!b.try_spend(at(300), 4), "the fifth in the hour");
        b.sync();
        // As a reload or a restart sees it.
        let mut again = RecordBudget::load(dir.path(), "p", at(600));
        assert_eq!(again.spent(at(600)), 4);
        assert!(!again.try_spend(at(600), 4));
        // An hour after the first send, there is room for one.
        assert!(!again.try_spend(at(3599), 4));
        assert!(again.try_spend(at(3600), 4));
        assert!(!again.try_spend(at(3602), 4));
        let mut third = RecordBudget::load(dir.path(), "p", at(3602));
        assert_eq!(third.spent(at(3602)), 4);
    }

    #[test]
    fn given_back_sends_are_forgotten_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RecordBudget::load(dir.path(), "p", at(0));
        for _ in 0..3 {
            assert!(b.try_spend(at(1), 3));
        }
        b.give_back(2);
        assert_eq!(RecordBudget::load(dir.path(), "p", at(2)).spent(at(2)), 1);
    }

    #[test]
    fn a_torn_entry_is_ignored_and_a_foreign_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RecordBudget::load(dir.path(), "p", at(0));
        assert!(b.try_spend(at(1), 9));
        assert!(b.try_spend(at(2), 9));
        let path = dir.path().join("p.sends");
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(RecordBudget::load(dir.path(), "p", at(3)).spent(at(3)), 2);
        std::fs::write(&path, b"something else entirely").unwrap();
        assert_eq!(RecordBudget::load(dir.path(), "p", at(3)).spent(at(3)), 0);
    }

    #[test]
    fn entries_from_the_future_count_as_made_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RecordBudget::load(dir.path(), "p", at(10_000));
        assert!(b.try_spend(at(10_000), 1));
        b.sync();
        // The clock went back two hours: the send counts from now, for an
        // hour, not for three.
        let mut back = RecordBudget::load(dir.path(), "p", at(2_800));
        assert_eq!(back.spent(at(2_800)), 1);
        assert_eq!(back.spent(at(2_800 + 3600)), 0);
        // The same while running.
        let mut b = RecordBudget::load(dir.path(), "q", at(10_000));
        assert!(b.try_spend(at(10_000), 1));
        assert!(!b.try_spend(at(2_800), 1));
        assert!(b.try_spend(at(2_800 + 3600), 1));
    }

    #[test]
    fn the_file_is_compacted_when_expired_entries_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RecordBudget::load(dir.path(), "p", at(0));
        // One send every 400 s: at most 9 in any hour.
        for i in 0..1000 {
            assert!(b.try_spend(at(i * 400), 10));
        }
        let len = std::fs::metadata(dir.path().join("p.sends")).unwrap().len();
        assert!(
            len < (MAGIC.len() + 8 * 200) as u64,
            "{len} bytes for at most 10 live sends"
        );
    }
}
