//! The telemetry machine id (`docs/legacy-protocol.md` §2.2): 32 lowercase hex
//! in `<state_dir>/machine_id`, replaced by a fresh random one when older
//! than three days so records from one machine can't be linked for long,
//! unless the admin pinned one in the static override file.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::write_atomic;
use crate::record::{random_id, ID_LEN};

/// How long a generated machine id lives.
pub const MACHINE_ID_MAX_AGE: Duration = Duration::from_secs(3 * 24 * 3600);
/// How often the daemon re-checks the id's age (the legacy daemon: hourly).
pub const MACHINE_ID_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Where the machine id lives and where an admin can pin one.
#[derive(Clone, Debug)]
pub struct MachineIdStore {
    path: PathBuf,
    static_path: PathBuf,
}

impl MachineIdStore {
    /// `state_dir/machine_id`, with the override file at `static_path`.
    pub fn new(state_dir: &Path, static_path: &Path) -> Self {
        MachineIdStore {
            path: crate::state_layout::StateLayout::new(state_dir).machine_id(),
            static_path: static_path.to_owned(),
        }
    }

    /// The id to stamp on records at time `now`: the static override if
    /// present, else the stored id, regenerated (and stored atomically)
    /// when missing, malformed or older than three days at `now`.
    pub fn current(&self, now: SystemTime) -> io::Result<String> {
        if let Some(id) = self.static_id() {
            return Ok(id);
        }
        if let Some(id) = self.stored_fresh(now) {
            return Ok(id);
        }
        let id = random_id();
        write_atomic(&self.path, id.as_bytes(), 0o644)?;
        // The id's age is its file's mtime: dated by the caller's clock,
        // so one clock decides both when an id was made and when it is
        // too old (they differ only under an injected clock).
        std::fs::File::options()
            .write(true)
            .open(&self.path)?
            .set_modified(now)?;
        Ok(id)
    }

    /// The id without creating or rotating anything: for clients such as
    /// `telem-record-gen` that only fill a placeholder the daemon replaces.
    pub fn peek(&self) -> Option<String> {
        self.static_id().or_else(|| {
            let text = std::fs::read_to_string(&self.path).ok()?;
            let id = text.trim();
            is_machine_id(id).then(|| id.to_owned())
        })
    }

    fn static_id(&self) -> Option<String> {
        let text = std::fs::read(&self.static_path).ok()?;
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().next().unwrap_or("").trim();
        // Printable only: it becomes a header line.
        let id: String = line
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(ID_LEN)
            .collect();
        (!id.is_empty()).then_some(id)
    }

    fn stored_fresh(&self, now: SystemTime) -> Option<String> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let age = now
            .duration_since(meta.modified().ok()?)
            .unwrap_or(Duration::ZERO);
        if age > MACHINE_ID_MAX_AGE {
            return None;
        }
        let text = std::fs::read_to_string(&self.path).ok()?;
        let id = text.trim();
        is_machine_id(id).then(|| id.to_owned())
    }
}

fn is_machine_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Caches the id between hourly checks so the hot path does no I/O.
#[derive(Debug)]
pub struct MachineIdCache {
    store: MachineIdStore,
    cached: Option<(String, SystemTime)>,
}

impl MachineIdCache {
    /// A cache that consults `store` on first use.
    pub fn new(store: MachineIdStore) -> Self {
        MachineIdCache {
            store,
            cached: None,
        }
    }

    /// The id at `now`, re-reading the store at most hourly.
    pub fn get(&mut self, now: SystemTime) -> io::Result<String> {
        if let Some((id, checked)) = &self.cached {
            if now
                .duration_since(*checked)
                .is_ok_and(|d| d < MACHINE_ID_CHECK_INTERVAL)
            {
                return Ok(id.clone());
            }
        }
        let id = self.store.current(now)?;
        self.cached = Some((id.clone(), now));
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> MachineIdStore {
        MachineIdStore::new(dir, &dir.join("static-id"))
    }

    #[test]
    fn generated_once_then_stable_then_rotated_after_three_days() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let t0 = SystemTime::now();
        let a = s.current(t0).unwrap();
        assert!(is_machine_id(&a), "{a}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("machine_id")).unwrap(),
            a
        );
        assert_eq!(s.current(t0 + Duration::from_secs(3600)).unwrap(), a);
        assert_eq!(
            s.current(t0 + MACHINE_ID_MAX_AGE - Duration::from_secs(60))
                .unwrap(),
            a
        );
        let b = s
            .current(t0 + MACHINE_ID_MAX_AGE + Duration::from_secs(60))
            .unwrap();
        assert_ne!(a, b);
        assert!(is_machine_id(&b));
        assert_eq!(s.peek().as_deref(), Some(b.as_str()));
    }

    #[test]
    fn malformed_stored_id_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("machine_id"), "not-an-id\n").unwrap();
        let id = store(dir.path()).current(SystemTime::now()).unwrap();
        assert!(is_machine_id(&id));
    }

    #[test]
    fn static_override_wins_first_line_cut_to_32() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("static-id"),
            "0123456789abcdef0123456789abcdefEXTRA\nsecond\n",
        )
        .unwrap();
        let s = store(dir.path());
        let far = SystemTime::now() + Duration::from_secs(10 * 24 * 3600);
        assert_eq!(s.current(far).unwrap(), "0123456789abcdef0123456789abcdef");
        assert!(
            !dir.path().join("machine_id").exists(),
            "no id is generated when pinned"
        );
        std::fs::write(dir.path().join("static-id"), "fleet-42\n").unwrap();
        assert_eq!(s.current(far).unwrap(), "fleet-42");
    }

    #[test]
    fn cache_rechecks_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = MachineIdCache::new(store(dir.path()));
        let t0 = SystemTime::now();
        let a = c.get(t0).unwrap();
        std::fs::write(dir.path().join("static-id"), "pinned\n").unwrap();
        assert_eq!(
            c.get(t0 + Duration::from_secs(60)).unwrap(),
            a,
            "cached within the hour"
        );
        assert_eq!(c.get(t0 + Duration::from_secs(3601)).unwrap(), "pinned");
    }
}
