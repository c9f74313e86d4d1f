//! A probe's private state: a key-value map the host keeps for it in one
//! file (`<state_dir>/<probe>.kv`), bounded by the probe's quota, changed
//! only by whole calls that succeeded.
//!
//! File: `telemd-probe-state 1\n`, then per entry the key's length (u32
//! LE), the key, the value's length (u32 LE), the value; then the sha256 of
//! all that. It is replaced atomically (write, fsync, rename). A file that
//! fails its checksum or its format is moved aside (`.corrupt`) and the
//! probe starts empty: the host never trusts what it reads back from disk
//! further than its checksum.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"telemd-probe-state 1\n";
/// What each key costs beyond its bytes and its value's: bounds how many
/// tiny entries a quota admits.
pub const ENTRY_OVERHEAD: u64 = 64;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 256;

/// Why the state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The OS refused.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One probe's committed state.
#[derive(Debug)]
pub struct ProbeStateFile {
    path: PathBuf,
    entries: Option<BTreeMap<String, Vec<u8>>>,
    bytes: u64,
}

/// What a call wrote, applied only if the call succeeded.
#[derive(Debug, Default)]
pub struct StateChanges {
    /// Key to new value (`None`: removed).
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl StateChanges {
    /// Whether the call wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The cost of one entry against the quota.
pub fn entry_cost(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

impl ProbeStateFile {
    /// The store of probe `name` under `dir` (read when first used).
    pub fn new(dir: &Path, name: &str) -> ProbeStateFile {
        ProbeStateFile {
            path: dir.join(format!("{name}.kv")),
            entries: None,
            bytes: 0,
        }
    }

    /// The file it lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn loaded(&mut self, cap: u64) -> &mut BTreeMap<String, Vec<u8>> {
        if self.entries.is_none() {
            let entries = match read_file(&self.path, cap) {
                Ok(e) => e,
                Err(why) => {
                    let aside = self.path.with_extension("kv.corrupt");
                    tracing::warn!(
                        "probe state {} is unusable ({why}); moved to {} and started empty",
                        self.path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(&self.path, &aside);
                    BTreeMap::new()
                }
            };
            self.bytes = entries.iter().map(|(k, v)| entry_cost(k, v)).sum();
            self.entries = Some(entries);
        }
        self.entries.as_mut().expect("just loaded")
    }

    /// The committed value of `key`.
    pub fn get(&mut self, key: &str, cap: u64) -> Option<Vec<u8>> {
        self.loaded(cap).get(key).cloned()
    }

    /// The cost of `key`'s committed entry (0 if absent).
    pub fn cost_of(&mut self, key: &str, cap: u64) -> u64 {
        self.loaded(cap).get(key).map_or(0, |v| entry_cost(key, v))
    }

    /// Bytes used (keys, values and overhead).
    pub fn bytes(&mut self, cap: u64) -> u64 {
        self.loaded(cap);
        self.bytes
    }

    /// How many keys are committed.
    pub fn len(&mut self, cap: u64) -> usize {
        self.loaded(cap).len()
    }

    /// Whether no key is committed.
    pub fn is_empty(&mut self, cap: u64) -> bool {
        self.loaded(cap).is_empty()
    }

    /// Committed keys.
    pub fn keys(&mut self, cap: u64) -> Vec<String> {
        self.loaded(cap).keys().cloned().collect()
    }

    /// Applies a successful call's writes and replaces the file. On error
    /// nothing changes, in memory or on disk.
    pub fn commit(&mut self, changes: StateChanges, cap: u64) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut next = self.loaded(cap).clone();
        for (k, v) in changes.writes {
            match v {
                Some(v) => next.insert(k, v),
                None => next.remove(&k),
            };
        }
        write_file(&self.path, &next)?;
        self.bytes = next.iter().map(|(k, v)| entry_cost(k, v)).sum();
        self.entries = Some(next);
        Ok(())
    }

    /// Removes everything (`telemctl probe reset`).
    pub fn clear(&mut self) -> Result<(), StateError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        self.entries = Some(BTreeMap::new());
        self.bytes = 0;
        Ok(())
    }
}

fn write_file(path: &Path, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), StateError> {
    let mut out = MAGIC.to_vec();
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    telem_core::fsutil::write_atomic(path, &out, 0o600).map_err(io)
}

/// Reads a state file of at most `cap` bytes of entries; an absent file is
/// an empty state.
fn read_file(path: &Path, cap: u64) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let limit = cap + MAGIC.len() as u64 + 32 + 1;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 >= limit {
        return Err(format!("larger than the quota of {cap} bytes"));
    }
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
        return Err("not a probe state file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    let mut rest = &body[MAGIC.len()..];
    let mut out = BTreeMap::new();
    while !rest.is_empty() {
        let key = take_field(&mut rest)?;
        let value = take_field(&mut rest)?;
        let key = std::str::from_utf8(key).map_err(|_| "a key is not UTF-8".to_owned())?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err("a key of a length the host never writes".into());
        }
        out.insert(key.to_owned(), value.to_vec());
    }
    Ok(out)
}

/// One length-prefixed field off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let truncated = || "truncated entry".to_owned();
    let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return Err(truncated());
    }
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(kv: &[(&str, Option<&[u8]>)]) -> StateChanges {
        StateChanges {
            writes: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    #[test]
    fn committed_state_survives_a_new_store_and_reset_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProbeStateFile::new(dir.path(), "p");
        s.commit(changes(&[("a", Some(b"1")), ("b", Some(b"22"))]), 1 << 20)
            .unwrap();
        s.commit(changes(&[("a", None)]), 1 << 20).unwrap();
        let mut again = ProbeStateFile::new(dir.path(), "p");
        assert_eq!(again.keys(1 << 20), vec!["b".to_owned()]);
        assert_eq!(again.get("b", 1 << 20).as_deref(), Some(&b"22"[..]));
        assert_eq!(again.bytes(1 << 20), 1 + 2 + ENTRY_OVERHEAD);
        again.clear().unwrap();
        assert!(ProbeStateFile::new(dir.path(), "p")
            .keys(1 << 20)
            .is_empty());
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_the_probe_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProbeStateFile::new(dir.path(), "p");
        s.commit(changes(&[("key", Some(b"value"))]), 1 << 20)
            .unwrap();
        let mut bytes = std::fs::read(s.path()).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 1;
        std::fs::write(s.path(), &bytes).unwrap();
        let mut again = ProbeStateFile::new(dir.path(), "p");
        assert!(again.keys(1 << 20).is_empty());
        assert!(dir.path().join("p.kv.corrupt").exists());
        // A length pointing past the end: refused, not read.
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&1000u32.to_le_bytes());
        body.extend_from_slice(b"k");
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        assert_eq!(parse(&body).unwrap_err(), "truncated entry");
    }

    #[test]
    fn a_file_larger_than_the_quota_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProbeStateFile::new(dir.path(), "p");
        s.commit(changes(&[("k", Some(&[0u8; 4096]))]), 1 << 20)
            .unwrap();
        let mut small = ProbeStateFile::new(dir.path(), "p");
        assert!(small.keys(1024).is_empty(), "read past a 1 KiB quota");
    }
}
