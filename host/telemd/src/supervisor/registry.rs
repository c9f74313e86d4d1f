//! What the probe manager knows about its probe files, under one lock:
//! the running probes, the files waiting to settle or that failed, the
//! files refused with why, the probes the admin turned off and each
//! probe name's cursor file. The rules that decide between them (when a
//! file is loaded, when it is left alone, when a name is taken) live here
//! as methods, so they are read and tested in one place.
//!
//! Nothing here waits: no I/O, no await, no other lock taken inside
//! (a probe's run state is read under it by `crash`; nothing takes the
//! registry while holding a probe's lock).
//! Slots a method removes are handed back to the caller, to be dropped
//! (their task stopped, their component freed) after the lock is let go.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::sources::CursorFile;

/// A file's size and mtime, and a stamp of what its provenance depends on:
/// what tells a scan that it changed. The stamp covers the inode, owner,
/// mode and change time of the file and its directory, its signature
/// file's, and the trusted keys directory's: a `chmod`, a `chown`, a file
/// replaced with its old mtime kept, a signature put beside it or a key
/// added are each noticed, and the file is checked again.
pub(super) type Seen = (u64, SystemTime, u64);

/// What the registry needs of a running probe's slot.
pub(super) trait Loaded {
    /// The probe's name (its file's stem, checked at load).
    fn name(&self) -> &str;
    /// The component's SHA-256, hex.
    fn hash(&self) -> &str;
    /// The file as the slot's probe was loaded from it.
    fn seen(&self) -> Seen;
    /// The file changed in a way that kept its bytes (a `touch`, a new
    /// signature): the probe keeps running under the new stamp.
    fn refresh(&mut self, seen: Seen, signed_by: Option<String>);
}

/// What a scan does with one file it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Its probe runs from it as it is, or it failed as it is: nothing to do.
    Leave,
    /// New or changed since the last pass: wait for it to look the same
    /// on the next (it may be half copied).
    Settle,
    /// Load it (again).
    Load,
}

/// The registry of [`super::ProbeManager`], behind its one mutex.
#[derive(Debug)]
pub(super) struct Registry<S> {
    slots: HashMap<PathBuf, S>,
    /// Files seen but not loaded yet (waiting to settle, `false`) or that
    /// failed (`true`), with how they looked then.
    pending: HashMap<PathBuf, (Seen, bool)>,
    /// Files found and not loaded, with why (`telemctl probe list`).
    refused: BTreeMap<PathBuf, String>,
    /// Probes the admin disabled with `telemctl probe disable`.
    disabled: HashSet<String>,
    /// Each probe name's cursor file, kept across reloads: a replaced
    /// probe's last save cannot then undo its successor's.
    cursor_files: HashMap<String, Arc<CursorFile>>,
}

impl<S: Loaded> Registry<S> {
    /// An empty registry with the names the admin disabled before.
    pub(super) fn new(disabled: HashSet<String>) -> Self {
        Registry {
            slots: HashMap::new(),
            pending: HashMap::new(),
            refused: BTreeMap::new(),
            disabled,
            cursor_files: HashMap::new(),
        }
    }

    /// Forgets every file not in `present`; the slots of removed files are
    /// returned, to be stopped by the caller.
    pub(super) fn forget_missing(&mut self, present: &HashMap<PathBuf, Seen>) -> Vec<S> {
        self.refused.retain(|p, _| present.contains_key(p));
        self.pending.retain(|p, _| present.contains_key(p));
        let gone: Vec<PathBuf> = self
            .slots
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        gone.iter().filter_map(|p| self.slots.remove(p)).collect()
    }

    /// The settle rule. A file its probe runs from, or that failed, as it
    /// looks now is left alone; with `settle`, a new or changed file is
    /// loaded only once it looked the same on two passes (so a half-copied
    /// file is not loaded); without (start-up, reload, enable) at once.
    pub(super) fn next_step(&mut self, path: &Path, seen: Seen, settle: bool) -> Step {
        if self.slots.get(path).map(Loaded::seen) == Some(seen) {
            return Step::Leave;
        }
        match self.pending.get(path) {
            Some((prev, failed)) if *prev == seen && *failed => Step::Leave,
            Some((prev, _)) if *prev == seen || !settle => Step::Load,
            _ if !settle => Step::Load,
            _ => {
                self.pending.insert(path.to_owned(), (seen, false));
                Step::Settle
            }
        }
    }

    /// The file's bytes are those its probe already runs: the slot takes
    /// the new stamp, any earlier failure of the file is forgotten, and
    /// nothing is loaded. Whether that was so.
    pub(super) fn refresh_if_same(
        &mut self,
        path: &Path,
        hash: &str,
        seen: Seen,
        signed_by: Option<String>,
    ) -> bool {
        match self.slots.get_mut(path) {
            Some(slot) if slot.hash() == hash => {
                slot.refresh(seen, signed_by);
                self.pending.remove(path);
                self.refused.remove(path);
                true
            }
            _ => false,
        }
    }

    /// Another file whose probe has this name, if one runs: the first
    /// keeps it, so which of two same-named files wins does not depend on
    /// which changed last.
    pub(super) fn other_file_named(&self, name: &str, path: &Path) -> Option<PathBuf> {
        self.slots
            .iter()
            .find(|(p, s)| s.name() == name && p.as_path() != path)
            .map(|(p, _)| p.clone())
    }

    /// The probe now runs from `path`; the slot it replaces, if any, is
    /// returned to be stopped.
    pub(super) fn loaded(&mut self, path: &Path, slot: S) -> Option<S> {
        self.pending.remove(path);
        self.refused.remove(path);
        self.slots.insert(path.to_owned(), slot)
    }

    /// Loading `path` as it looks in `seen` failed: it is not tried again
    /// until it changes. With a `reason` it is listed as refused; without
    /// (the admin turned it off) it is not.
    pub(super) fn failed(&mut self, path: &Path, seen: Seen, reason: Option<String>) {
        match reason {
            Some(r) => self.refused.insert(path.to_owned(), r),
            None => self.refused.remove(path),
        };
        self.pending.insert(path.to_owned(), (seen, true));
    }

    /// The hashes of the components running, which the compile cache keeps.
    pub(super) fn hashes_in_use(&self) -> HashSet<String> {
        self.slots.values().map(|s| s.hash().to_owned()).collect()
    }

    /// Forgets every slot and every failure, so that the next scan loads
    /// all files afresh (reload). The slots are returned to be stopped.
    pub(super) fn forget_all(&mut self) -> Vec<S> {
        self.pending.clear();
        self.slots.drain().map(|(_, s)| s).collect()
    }

    /// Forgets which files failed, so that the next scan tries them all
    /// again (after `enable`).
    pub(super) fn retry_failed(&mut self) {
        self.pending.clear();
    }

    /// Whether the admin turned this probe off.
    pub(super) fn is_disabled(&self, name: &str) -> bool {
        self.disabled.contains(name)
    }

    /// The disabled-probes file's text (one name per line, sorted) once
    /// this probe is turned off or on: written before the choice is
    /// applied, so a choice that could not be kept is not made.
    pub(super) fn disabled_file_text(&self, name: &str, off: bool) -> String {
        let mut names: Vec<&str> = self
            .disabled
            .iter()
            .map(String::as_str)
            .filter(|n| *n != name)
            .collect();
        if off {
            names.push(name);
        }
        names.sort_unstable();
        names.iter().map(|n| format!("{n}\n")).collect()
    }

    /// Turns a probe off or on. Turning off a running probe stops it: its
    /// slot is returned, and its file is left alone until it changes or
    /// the probe is enabled.
    pub(super) fn set_disabled(&mut self, name: &str, off: bool) -> Option<S> {
        if !off {
            self.disabled.remove(name);
            return None;
        }
        self.disabled.insert(name.to_owned());
        let path = self
            .slots
            .iter()
            .find(|(_, s)| s.name() == name)
            .map(|(p, _)| p.clone())?;
        let slot = self.slots.remove(&path)?;
        self.pending.insert(path, (slot.seen(), true));
        Some(slot)
    }

    /// Names of the probes the admin disabled, sorted.
    pub(super) fn disabled(&self) -> Vec<String> {
        let mut v: Vec<String> = self.disabled.iter().cloned().collect();
        v.sort();
        v
    }

    /// Files found and not loaded, with why, by path.
    pub(super) fn refused(&self) -> impl Iterator<Item = (&PathBuf, &String)> {
        self.refused.iter()
    }

    /// The running slot whose probe has this name.
    pub(super) fn named(&self, name: &str) -> Option<&S> {
        self.slots.values().find(|s| s.name() == name)
    }

    /// Every running slot.
    pub(super) fn slots(&self) -> impl Iterator<Item = &S> {
        self.slots.values()
    }

    /// The probe name's cursor file, if its predecessors had one.
    pub(super) fn cursor_file(&self, name: &str) -> Option<Arc<CursorFile>> {
        self.cursor_files.get(name).cloned()
    }

    /// Keeps `loaded` (read by the caller, outside the lock) as the probe
    /// name's cursor file, unless another load kept one first: the one
    /// kept is returned, so every load of a name shares it.
    pub(super) fn keep_cursor_file(
        &mut self,
        name: &str,
        loaded: Arc<CursorFile>,
    ) -> Arc<CursorFile> {
        self.cursor_files
            .entry(name.to_owned())
            .or_insert(loaded)
            .clone()
    }

    /// Every cursor file handed out.
    pub(super) fn cursor_files(&self) -> impl Iterator<Item = &Arc<CursorFile>> {
        self.cursor_files.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Debug, PartialEq)]
    struct FakeSlot {
        name: String,
        hash: String,
        seen: Seen,
        signed_by: Option<String>,
    }

    impl Loaded for FakeSlot {
        fn name(&self) -> &str {
            &self.name
        }
        fn hash(&self) -> &str {
            &self.hash
        }
        fn seen(&self) -> Seen {
            self.seen
        }
        fn refresh(&mut self, seen: Seen, signed_by: Option<String>) {
            self.seen = seen;
            self.signed_by = signed_by;
        }
    }

    fn seen(n: u64) -> Seen {
        (n, UNIX_EPOCH + Duration::from_secs(n), n)
    }

    fn slot(name: &str, hash: &str, s: Seen) -> FakeSlot {
        FakeSlot {
            name: name.into(),
            hash: hash.into(),
            seen: s,
            signed_by: None,
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_new_file_waits_one_pass_when_settling_and_loads_at_once_otherwise() {
        let mut r = Registry::<FakeSlot>::new(HashSet::new());
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), true), Step::Settle);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), true), Step::Load);
        // Still being written: it changed between passes, so it waits again.
        assert_eq!(r.next_step(&p("/d/b.wasm"), seen(1), true), Step::Settle);
        assert_eq!(r.next_step(&p("/d/b.wasm"), seen(2), true), Step::Settle);
        assert_eq!(r.next_step(&p("/d/b.wasm"), seen(2), true), Step::Load);
        assert_eq!(r.next_step(&p("/d/c.wasm"), seen(1), false), Step::Load);
    }

    #[test]
    fn a_running_file_is_left_alone_until_it_changes() {
        let mut r = Registry::new(HashSet::new());
        assert!(r
            .loaded(&p("/d/a.wasm"), slot("a", "h1", seen(1)))
            .is_none());
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), true), Step::Leave);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), false), Step::Leave);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), true), Step::Settle);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), true), Step::Load);
    }

    #[test]
    fn a_failed_file_is_not_tried_again_until_it_changes_or_failures_are_forgotten() {
        let mut r = Registry::<FakeSlot>::new(HashSet::new());
        r.failed(&p("/d/a.wasm"), seen(1), Some("bad".into()));
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), true), Step::Leave);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), false), Step::Leave);
        assert_eq!(
            r.refused().collect::<Vec<_>>(),
            [(&p("/d/a.wasm"), &"bad".to_owned())]
        );
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), false), Step::Load);
        r.failed(&p("/d/a.wasm"), seen(2), Some("worse".into()));
        r.retry_failed();
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), true), Step::Settle);
        // Loading it at last lifts the refusal.
        r.loaded(&p("/d/a.wasm"), slot("a", "h", seen(2)));
        assert_eq!(r.refused().count(), 0);
    }

    #[test]
    fn a_file_turned_off_by_the_admin_is_not_listed_as_refused() {
        let mut r = Registry::<FakeSlot>::new(HashSet::new());
        r.failed(&p("/d/a.wasm"), seen(1), Some("bad".into()));
        r.failed(&p("/d/a.wasm"), seen(2), None);
        assert_eq!(r.refused().count(), 0);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), true), Step::Leave);
    }

    #[test]
    fn removed_files_are_forgotten_and_their_slots_handed_back() {
        let mut r = Registry::new(HashSet::new());
        r.loaded(&p("/d/a.wasm"), slot("a", "h1", seen(1)));
        r.loaded(&p("/d/b.wasm"), slot("b", "h2", seen(1)));
        r.failed(&p("/d/c.wasm"), seen(1), Some("bad".into()));
        r.next_step(&p("/d/e.wasm"), seen(1), true);
        let present = HashMap::from([(p("/d/b.wasm"), seen(1))]);
        let gone = r.forget_missing(&present);
        assert_eq!(gone, [slot("a", "h1", seen(1))]);
        assert_eq!(r.refused().count(), 0);
        assert_eq!(r.hashes_in_use(), HashSet::from(["h2".to_owned()]));
        // c and e were forgotten: back, they start over.
        assert_eq!(r.next_step(&p("/d/c.wasm"), seen(1), true), Step::Settle);
        assert_eq!(r.next_step(&p("/d/e.wasm"), seen(1), true), Step::Settle);
    }

    #[test]
    fn the_same_bytes_under_a_new_stamp_keep_the_probe_running() {
        let mut r = Registry::new(HashSet::new());
        r.loaded(&p("/d/a.wasm"), slot("a", "h1", seen(1)));
        // A change that failed its checks (a bad signature put beside it)...
        r.failed(&p("/d/a.wasm"), seen(3), Some("bad signature".into()));
        assert!(!r.refresh_if_same(&p("/d/a.wasm"), "h2", seen(2), None));
        assert!(!r.refresh_if_same(&p("/d/b.wasm"), "h1", seen(2), None));
        assert!(r.refresh_if_same(&p("/d/a.wasm"), "h1", seen(2), Some("key".into())));
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(2), true), Step::Leave);
        assert_eq!(r.named("a").unwrap().signed_by.as_deref(), Some("key"));
        // ...is forgotten once the file is back as its probe runs it.
        assert_eq!(r.refused().count(), 0);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(3), false), Step::Load);
    }

    #[test]
    fn a_name_is_taken_by_the_first_file_that_runs_it() {
        let mut r = Registry::new(HashSet::new());
        r.loaded(&p("/d1/a.wasm"), slot("a", "h1", seen(1)));
        assert_eq!(
            r.other_file_named("a", &p("/d2/a.wasm")),
            Some(p("/d1/a.wasm"))
        );
        // Its own file replacing it is no duplicate.
        assert_eq!(r.other_file_named("a", &p("/d1/a.wasm")), None);
        assert_eq!(r.other_file_named("b", &p("/d2/b.wasm")), None);
        let old = r.loaded(&p("/d1/a.wasm"), slot("a", "h2", seen(2)));
        assert_eq!(old, Some(slot("a", "h1", seen(1))));
    }

    #[test]
    fn disabling_stops_the_probe_and_keeps_its_file_out_until_enabled() {
        let mut r = Registry::new(HashSet::from(["z".to_owned()]));
        r.loaded(&p("/d/a.wasm"), slot("a", "h1", seen(1)));
        assert_eq!(r.disabled_file_text("a", true), "a\nz\n");
        // Asking for the text changes nothing.
        assert!(!r.is_disabled("a"));
        let stopped = r.set_disabled("a", true);
        assert_eq!(stopped, Some(slot("a", "h1", seen(1))));
        assert!(r.is_disabled("a"));
        assert!(r.named("a").is_none());
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), false), Step::Leave);
        // Disabling a probe that is not running only records the choice.
        assert_eq!(r.disabled_file_text("b", true), "a\nb\nz\n");
        assert_eq!(r.set_disabled("b", true), None);
        assert_eq!(r.disabled_file_text("a", false), "b\nz\n");
        assert_eq!(r.disabled_file_text("a", true), "a\nb\nz\n");
        assert_eq!(r.set_disabled("a", false), None);
        assert_eq!(r.disabled(), ["b", "z"]);
        r.retry_failed();
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), false), Step::Load);
    }

    #[test]
    fn reload_forgets_every_probe_and_failure_but_not_refusals_or_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::new(HashSet::new());
        r.loaded(&p("/d/a.wasm"), slot("a", "h1", seen(1)));
        r.failed(&p("/d/b.wasm"), seen(1), Some("bad".into()));
        assert!(r.cursor_file("a").is_none());
        let cursors = r.keep_cursor_file("a", Arc::new(CursorFile::load(dir.path(), "a")));
        assert_eq!(r.forget_all().len(), 1);
        assert_eq!(r.next_step(&p("/d/a.wasm"), seen(1), false), Step::Load);
        assert_eq!(r.next_step(&p("/d/b.wasm"), seen(1), false), Step::Load);
        assert_eq!(r.refused().count(), 1);
        assert!(Arc::ptr_eq(&cursors, &r.cursor_file("a").unwrap()));
        // A second load of the name keeps the first file.
        let again = r.keep_cursor_file("a", Arc::new(CursorFile::load(dir.path(), "a")));
        assert!(Arc::ptr_eq(&cursors, &again));
        assert_eq!(r.cursor_files().count(), 1);
    }
}
