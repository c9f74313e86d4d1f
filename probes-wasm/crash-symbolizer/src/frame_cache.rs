//! What a crash learned about a library, kept for the next crash: per
//! build id, the names, files and lines found at each address looked up.
//! A second crash through the same libc then reads none of libc's DWARF
//! (inflating and indexing it is most of a first crash's time).
//!
//! Entries live in the probe's private state (`frames/<build id>`), each
//! small (a few hundred bytes per address). They are hostile input like
//! everything else read back: an entry whose magic, version, build id,
//! length or checksum is wrong, or that does not parse within its bounds,
//! is thrown away and rebuilt, never trusted. An entry also names the
//! debug file its answers came from: once another one is found (debug
//! info installed since), it is rebuilt.

use std::collections::{BTreeMap, HashMap};

use crate::dwarf::SourceFrame;

/// Layout version of an entry.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"CSYMFRMS";
/// Addresses kept per library; past it, new ones are not kept.
pub const MAX_ADDRESSES: usize = 4096;
/// Frames (inlined calls) kept per address.
const MAX_FRAMES: usize = 64;
/// Bytes of one name, file or source kept.
const MAX_TEXT: usize = 4096;
/// Largest entry written or read back: one larger is not kept.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// Libraries kept at once; past it, the least recently used go.
pub const MAX_LIBRARIES: usize = 256;

/// What an address resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The symbol covering it (raw).
    pub symbol: Option<String>,
    /// DWARF's frames there, innermost first (raw names).
    pub dwarf: Vec<SourceFrame>,
}

/// Where entries are read from (the probe's state; a map in tests).
pub trait EntryStore {
    /// The bytes under `key`, if any.
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
}

/// The state key of a library's entry.
pub fn key(build_id: &[u8]) -> String {
    let mut k = String::from("frames/");
    for b in build_id {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

#[derive(Debug, Default)]
struct Entry {
    /// The debug file the answers came from ("" for none).
    source: String,
    frames: BTreeMap<u64, Resolved>,
    changed: bool,
}

/// The entries of one crash, read on first use.
pub struct FrameCache<'s> {
    store: &'s mut dyn EntryStore,
    entries: HashMap<Vec<u8>, Entry>,
    /// Entries thrown away, and why (logged by the probe).
    pub rebuilt: Vec<String>,
    /// Lookups answered from an entry.
    pub hits: usize,
    /// Lookups that had to read the library.
    pub misses: usize,
}

impl<'s> FrameCache<'s> {
    /// Entries come from `store`.
    pub fn new(store: &'s mut dyn EntryStore) -> FrameCache<'s> {
        FrameCache {
            store,
            entries: HashMap::new(),
            rebuilt: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    fn entry(&mut self, build_id: &[u8], source: &str) -> &mut Entry {
        if !self.entries.contains_key(build_id) {
            let k = key(build_id);
            let e = match self.store.get(&k).map(|b| decode(build_id, &b)) {
                None => Entry {
                    source: source.to_owned(),
                    ..Entry::default()
                },
                Some(Ok(e)) if e.source == source => e,
                Some(Ok(_)) => {
                    self.rebuilt
                        .push(format!("{k}: another debug file is found now"));
                    Entry {
                        source: source.to_owned(),
                        changed: true,
                        ..Entry::default()
                    }
                }
                Some(Err(why)) => {
                    self.rebuilt.push(format!("{k}: {why}"));
                    Entry {
                        source: source.to_owned(),
                        changed: true,
                        ..Entry::default()
                    }
                }
            };
            self.entries.insert(build_id.to_vec(), e);
        }
        self.entries.get_mut(build_id).expect("inserted above")
    }

    /// What the library `build_id` (its DWARF from `source`) resolved
    /// `svma` to in an earlier crash.
    pub fn lookup(&mut self, build_id: &[u8], source: &str, svma: u64) -> Option<Resolved> {
        let found = self.entry(build_id, source).frames.get(&svma).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Keeps what `svma` resolved to.
    pub fn remember(&mut self, build_id: &[u8], source: &str, svma: u64, r: Resolved) {
        let e = self.entry(build_id, source);
        if e.frames.len() < MAX_ADDRESSES || e.frames.contains_key(&svma) {
            e.frames.insert(svma, r);
            e.changed = true;
        }
    }

    /// The entries this crash looked at (keys), and the new bytes of those
    /// it changed (an entry grown past [`MAX_ENTRY_BYTES`] is not kept).
    pub fn finish(self) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
        let used = self.entries.keys().map(|id| key(id)).collect();
        let changed = self
            .entries
            .iter()
            .filter(|(_, e)| e.changed)
            .map(|(id, e)| (key(id), encode(id, e)))
            .filter(|(_, bytes)| bytes.len() <= MAX_ENTRY_BYTES)
            .collect();
        (used, changed)
    }
}

/// The state key listing the entries and when each was last used.
pub const LRU_KEY: &str = "frames-lru";

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The state's quota, in bytes, would be passed.
    Quota(u64),
    /// Anything else (no state in this call).
    Other,
}

/// Where entries are written (the probe's state).
pub trait EntryWriter: EntryStore {
    /// Stores `value` under `key`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Refused>;
    /// Removes `key`.
    fn delete(&mut self, key: &str);
    /// Every key.
    fn keys(&mut self) -> Vec<String>;
}

/// Keeps what a crash resolved ([`FrameCache::finish`]): the changed
/// entries are written and the used ones marked used at `now`; beyond
/// [`MAX_LIBRARIES`] entries, or when the quota is reached, the least
/// recently used entries this crash did not use are dropped until the new
/// one fits. Returns the quota when an entry could not be kept even so: a
/// cache that cannot be kept costs the next crash time, never a record
/// (the probe sends its record first).
pub fn keep(
    store: &mut dyn EntryWriter,
    used: &[String],
    changed: Vec<(String, Vec<u8>)>,
    now: u64,
) -> Option<u64> {
    // `key time` lines; entries missing from it are the oldest.
    let listed: Vec<(String, u64)> = store
        .get(LRU_KEY)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| {
                    let (k, t) = l.split_once(' ')?;
                    Some((k.to_owned(), t.parse().ok()?))
                })
                .filter(|(k, _)| k.starts_with("frames/"))
                .collect()
        })
        .unwrap_or_default();
    // One line per key (the list read back may repeat one), each key
    // stored listed (missing ones as the oldest), those used now at `now`.
    let mut when: HashMap<String, u64> = HashMap::new();
    for (k, t) in listed {
        let e = when.entry(k).or_insert(t);
        *e = (*e).max(t);
    }
    let stored: std::collections::HashSet<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("frames/"))
        .collect();
    when.retain(|k, _| stored.contains(k));
    for k in &stored {
        when.entry(k.clone()).or_insert(0);
    }
    let used: std::collections::HashSet<&String> = used.iter().collect();
    for k in &used {
        when.insert((*k).clone(), now);
    }
    for (k, _) in &changed {
        when.entry(k.clone()).or_insert(now);
    }
    let mut lru: Vec<(String, u64)> = when.into_iter().collect();
    lru.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    // Past the count, the oldest not used now go (whatever the quota).
    while lru.len() > MAX_LIBRARIES {
        let Some(i) = lru.iter().position(|(k, _)| !used.contains(k)) else {
            break;
        };
        let (old, _) = lru.remove(i);
        store.delete(&old);
    }
    let mut full = None;
    for (key, bytes) in changed {
        loop {
            match store.set(&key, &bytes) {
                Ok(()) => break,
                Err(Refused::Quota(limit)) => {
                    let Some(i) = lru.iter().position(|(k, _)| !used.contains(k) && *k != key)
                    else {
                        full = Some(limit);
                        lru.retain(|(k, _)| *k != key);
                        break;
                    };
                    let (old, _) = lru.remove(i);
                    store.delete(&old);
                }
                Err(Refused::Other) => {
                    lru.retain(|(k, _)| *k != key);
                    break;
                }
            }
        }
    }
    let text: String = lru.iter().map(|(k, t)| format!("{k} {t}\n")).collect();
    // Without room for the list, entries are the oldest next time.
    let _ = store.set(LRU_KEY, text.as_bytes());
    full
}

fn put_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            let mut cut = s.len().min(MAX_TEXT);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(1);
            out.extend_from_slice(&(cut as u32).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..cut]);
        }
    }
}

fn encode(build_id: &[u8], e: &Entry) -> Vec<u8> {
    let mut body = Vec::new();
    put_text(&mut body, Some(&e.source));
    body.extend_from_slice(&(e.frames.len() as u32).to_le_bytes());
    for (svma, r) in &e.frames {
        body.extend_from_slice(&svma.to_le_bytes());
        put_text(&mut body, r.symbol.as_deref());
        let n = r.dwarf.len().min(MAX_FRAMES);
        body.extend_from_slice(&(n as u32).to_le_bytes());
        for (name, file, line) in &r.dwarf[..n] {
            put_text(&mut body, name.as_deref());
            put_text(&mut body, file.as_deref());
            match line {
                None => body.push(0),
                Some(l) => {
                    body.push(1);
                    body.extend_from_slice(&l.to_le_bytes());
                }
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(build_id.len() as u32).to_le_bytes());
    out.extend_from_slice(build_id);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads bytes a field at a time, every length checked.
struct Cursor<'b>(&'b [u8]);

impl<'b> Cursor<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], &'static str> {
        if n > self.0.len() {
            return Err("cut short");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn text(&mut self) -> Result<Option<String>, &'static str> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let n = self.u32()? as usize;
                if n > MAX_TEXT {
                    return Err("a text over its bound");
                }
                let b = self.take(n)?;
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| "a text that is not UTF-8")
            }
            _ => Err("a bad tag"),
        }
    }
}

fn decode(build_id: &[u8], bytes: &[u8]) -> Result<Entry, &'static str> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err("larger than an entry can be");
    }
    let mut c = Cursor(bytes);
    if c.take(MAGIC.len())? != MAGIC {
        return Err("not an entry");
    }
    if c.u32()? != VERSION {
        return Err("another version");
    }
    let id_len = c.u32()? as usize;
    if c.take(id_len)? != build_id {
        return Err("another build id");
    }
    let crc = c.u32()?;
    let len = c.u32()? as usize;
    let body = c.take(len)?;
    if !c.0.is_empty() {
        return Err("bytes after the entry");
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let mut c = Cursor(body);
    let source = c.text()?.unwrap_or_default();
    let count = c.u32()? as usize;
    if count > MAX_ADDRESSES {
        return Err("more addresses than an entry holds");
    }
    let mut frames = BTreeMap::new();
    for _ in 0..count {
        let svma = c.u64()?;
        let symbol = c.text()?;
        let n = c.u32()? as usize;
        if n > MAX_FRAMES {
            return Err("more frames than an address has");
        }
        let mut dwarf = Vec::with_capacity(n);
        for _ in 0..n {
            let name = c.text()?;
            let file = c.text()?;
            let line = match c.u8()? {
                0 => None,
                1 => Some(c.u32()?),
                _ => return Err("a bad tag"),
            };
            dwarf.push((name, file, line));
        }
        frames.insert(svma, Resolved { symbol, dwarf });
    }
    if !c.0.is_empty() {
        return Err("bytes after the last address");
    }
    Ok(Entry {
        source,
        frames,
        changed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(HashMap<String, Vec<u8>>);

    impl EntryStore for Map {
        fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.0.get(key).cloned()
        }
    }

    const ID: &[u8] = &[0x93, 0xac, 0x61, 0xec];
    const SRC: &str = "/usr/lib/debug/.build-id/93/ac61ec.debug";

    fn resolved(n: u32) -> Resolved {
        Resolved {
            symbol: Some(format!("f{n}")),
            dwarf: vec![
                (Some("inlined".into()), Some("a.h".into()), Some(n)),
                (Some(format!("f{n}")), None, None),
            ],
        }
    }

    /// A store holding one crash's entries.
    fn after_one_crash() -> Map {
        let mut store = Map::default();
        let mut c = FrameCache::new(&mut store);
        assert_eq!(c.lookup(ID, SRC, 0x1000), None);
        c.remember(ID, SRC, 0x1000, resolved(1));
        c.remember(ID, SRC, 0x2000, resolved(2));
        let (used, changed) = c.finish();
        assert_eq!(used, [key(ID)]);
        let mut store = Map::default();
        store.0.extend(changed);
        store
    }

    #[test]
    fn a_second_crash_finds_what_the_first_resolved() {
        let mut store = after_one_crash();
        let mut c = FrameCache::new(&mut store);
        assert_eq!(c.lookup(ID, SRC, 0x2000), Some(resolved(2)));
        assert_eq!(c.lookup(ID, SRC, 0x3000), None);
        assert_eq!((c.hits, c.misses), (1, 1));
        assert!(c.rebuilt.is_empty());
        let (_, changed) = c.finish();
        assert!(changed.is_empty(), "nothing new to write");
    }

    #[test]
    fn damaged_foreign_or_stale_entries_are_rebuilt() {
        let good = after_one_crash().0.remove(&key(ID)).unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good[..good.len() - 3].to_vec()),
            ("empty", Vec::new()),
            ("garbage", b"CSYMFRMS\xff\xff\xff\xff".to_vec()),
        ];
        for at in [8, 20, good.len() / 2, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x40;
            cases.push(("bit flipped", flipped));
        }
        // Another library's entry under this one's key.
        let mut foreign = good.clone();
        foreign[16] ^= 0xff;
        cases.push(("foreign build id", foreign));
        for (what, bytes) in cases {
            let mut store = Map::default();
            store.0.insert(key(ID), bytes);
            let mut c = FrameCache::new(&mut store);
            assert_eq!(c.lookup(ID, SRC, 0x1000), None, "{what}: trusted");
            assert_eq!(c.rebuilt.len(), 1, "{what}: {:?}", c.rebuilt);
            c.remember(ID, SRC, 0x1000, resolved(1));
            let (_, changed) = c.finish();
            assert_eq!(changed.len(), 1, "{what}: rewritten");
        }
        // Debug info installed since: another source.
        let mut store = Map::default();
        store.0.insert(key(ID), good);
        let mut c = FrameCache::new(&mut store);
        assert_eq!(c.lookup(ID, "/usr/lib/debug/other.debug", 0x1000), None);
        assert!(
            c.rebuilt[0].contains("another debug file"),
            "{:?}",
            c.rebuilt
        );
    }

    /// A store with a byte quota, as the host keeps it.
    struct Quota(Map, u64);

    impl EntryStore for Quota {
        fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.0.get(key)
        }
    }

    impl EntryWriter for Quota {
        fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Refused> {
            let others: usize = (self.0 .0.iter())
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| k.len() + v.len())
                .sum();
            if (others + key.len() + value.len()) as u64 > self.1 {
                return Err(Refused::Quota(self.1));
            }
            self.0 .0.insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        fn delete(&mut self, key: &str) {
            self.0 .0.remove(key);
        }
        fn keys(&mut self) -> Vec<String> {
            let mut k: Vec<String> = self.0 .0.keys().cloned().collect();
            k.sort();
            k
        }
    }

    #[test]
    fn at_the_quota_the_least_recently_used_entries_go() {
        let entry = |n: u8| (key(&[n]), vec![n; 1000]);
        let mut s = Quota(Map::default(), 3500);
        for (n, t) in [(1u8, 10), (2, 20), (3, 30)] {
            let (k, v) = entry(n);
            assert_eq!(
                keep(&mut s, std::slice::from_ref(&k), vec![(k.clone(), v)], t),
                None
            );
        }
        // Library 1 used again: 2 is now the oldest.
        assert_eq!(keep(&mut s, &[key(&[1])], vec![], 40), None);
        let (k4, v4) = entry(4);
        assert_eq!(
            keep(
                &mut s,
                std::slice::from_ref(&k4),
                vec![(k4.clone(), v4)],
                50
            ),
            None
        );
        let mut kept = s.keys();
        kept.retain(|k| k != LRU_KEY);
        assert_eq!(kept, [key(&[1]), key(&[3]), k4.clone()], "2 went");
        // An entry larger than the quota: nothing older to drop at the end.
        let big = (key(&[5]), vec![0; 4000]);
        assert_eq!(
            keep(&mut s, std::slice::from_ref(&big.0), vec![big.clone()], 60),
            Some(3500)
        );
        assert!(s.get(&key(&[5])).is_none());
        // Refused for another reason (no state): nothing kept, no error.
        struct Off;
        impl EntryStore for Off {
            fn get(&mut self, _: &str) -> Option<Vec<u8>> {
                None
            }
        }
        impl EntryWriter for Off {
            fn set(&mut self, _: &str, _: &[u8]) -> Result<(), Refused> {
                Err(Refused::Other)
            }
            fn delete(&mut self, _: &str) {}
            fn keys(&mut self) -> Vec<String> {
                Vec::new()
            }
        }
        assert_eq!(
            keep(
                &mut Off,
                std::slice::from_ref(&k4),
                vec![(k4.clone(), vec![1])],
                70
            ),
            None
        );
    }

    #[test]
    fn at_most_max_libraries_are_kept() {
        let mut s = Quota(Map::default(), u64::MAX);
        for n in 0..MAX_LIBRARIES as u64 + 20 {
            let k = key(&n.to_le_bytes());
            keep(
                &mut s,
                std::slice::from_ref(&k),
                vec![(k.clone(), vec![1])],
                n,
            );
        }
        let kept = s
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("frames/"))
            .count();
        assert_eq!(kept, MAX_LIBRARIES);
        assert!(
            s.get(&key(&0u64.to_le_bytes())).is_none(),
            "the oldest went"
        );
        let newest = key(&(MAX_LIBRARIES as u64 + 19).to_le_bytes());
        assert!(s.get(&newest).is_some());
    }

    #[test]
    fn entries_are_bounded() {
        let mut store = Map::default();
        let mut c = FrameCache::new(&mut store);
        for a in 0..MAX_ADDRESSES as u64 + 10 {
            c.remember(ID, SRC, a, resolved(0));
        }
        assert_eq!(c.entries[ID].frames.len(), MAX_ADDRESSES);
        let long = Resolved {
            symbol: Some("é".repeat(MAX_TEXT)),
            dwarf: vec![(None, None, None); MAX_FRAMES + 5],
        };
        c.remember(ID, SRC, 0, long);
        let (_, changed) = c.finish();
        let mut store = Map::default();
        store.0.extend(changed);
        let mut c = FrameCache::new(&mut store);
        let back = c.lookup(ID, SRC, 0).unwrap();
        assert!(back.symbol.unwrap().len() <= MAX_TEXT);
        assert_eq!(back.dwarf.len(), MAX_FRAMES);
        assert!(c.rebuilt.is_empty());
    }
}
