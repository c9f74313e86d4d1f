//! The flood limits, shared by concurrent handlers under the inbox lock:
//! a repeat of the same crash site (the executable and where it stopped,
//! or the executable alone when that is unknown) within the window is
//! dropped; a crash
//! whose core would be kept is admitted against what the inbox holds plus
//! what the crashes still being copied have reserved (each a
//! `.reservation` file in its entry, locked while its handler lives), and
//! against the free-space floor of the inbox's filesystem. See the crash
//! handler's module docs for the whole rule.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cap_std::fs::Dir;
use rustix::fs::{flock, FlockOperation, OFlags};
use serde::{Deserialize, Serialize};
use telem_core::config::CrashConfig;

use crate::inbox::{create_in, make_entry, open_plain};

/// Where the flood limits keep their state, inside the inbox.
const RECENT_FILE: &str = ".recent.json";
/// Largest flood state read: 1024 keys of at most 512 bytes, each byte
/// at most 6 in JSON (`\u001b`), with their times and counts.
const RECENT_FILE_CAP: u64 = 4 << 20;
/// Crash sites the repeat filter remembers at once; the oldest are
/// forgotten first, so crashing copies of a program under ever new names
/// cannot grow the file every handler reads and rewrites under the lock.
const MAX_RECENT: usize = 1024;
/// Bytes of a crash site kept as its key in the repeat filter.
const RECENT_KEY_CAP: usize = 512;
/// The reservation of an entry being written (see the module docs).
const RESERVATION_FILE: &str = ".reservation";
/// Bytes an entry may hold besides its core (`crash.json`: a path of up
/// to 4096 bytes, escaped).
const META_RESERVE: u64 = 64 * 1024;
/// A core smaller than this is not worth keeping: the free-space floor
/// drops the crash rather than cut its core shorter.
const MIN_CORE: u64 = 64 * 1024;
const MIB: u64 = 1 << 20;

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct Recent {
    last: BTreeMap<String, u64>,
    /// Crashes admitted under each key of `last` since it was last empty.
    admitted: BTreeMap<String, u32>,
    dropped_repeats: u64,
    dropped_full: u64,
    dropped_low_space: u64,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the flood limits make of a crash.
pub(crate) enum Admission {
    /// Dropped, and why.
    Dropped(String),
    /// Allowed, keeping no core (a short record).
    NoCore,
    /// Allowed, its entry made and its room reserved.
    Keep(Reservation),
}

/// An inbox entry being written and the room reserved for it.
pub(crate) struct Reservation {
    /// The entry directory.
    pub(crate) entry: Dir,
    /// The reservation file, locked while this handler lives.
    file: File,
    /// Bytes of core that fit: `crash_max_core_size`, or less where the
    /// free-space floor leaves less.
    pub(crate) core_limit: u64,
}

impl Reservation {
    /// The entry is complete: from now on it counts at its real size.
    pub(crate) fn release(self) {
        let _ = self.entry.remove_file(RESERVATION_FILE);
        // Unlinked first, then unlocked (closed): a handler counting the
        // inbox never finds it unlocked while this one is still writing.
        drop(self.file);
    }
}

/// Holds the lock shared by concurrent handlers until dropped.
fn lock_inbox(inbox: &Dir) -> anyhow::Result<File> {
    let lock = open_plain(inbox, ".lock", OFlags::WRONLY | OFlags::CREATE)
        .context("cannot open the inbox lock")?;
    // Released when `lock` closes.
    flock(&lock, FlockOperation::LockExclusive).context("cannot lock the inbox")?;
    Ok(lock)
}

/// Drops the oldest entries until at most `keep` remain.
fn forget_oldest(last: &mut BTreeMap<String, u64>, keep: usize) {
    if last.len() <= keep {
        return;
    }
    let mut by_age: Vec<(u64, String)> = last.iter().map(|(k, t)| (*t, k.clone())).collect();
    by_age.sort();
    for (_, k) in by_age.into_iter().take(last.len() - keep) {
        last.remove(&k);
    }
}

/// An executable's path as the repeat filter keys it: cut at a char
/// boundary near [`RECENT_KEY_CAP`] bytes.
fn recent_key(exe: &str) -> String {
    let mut cut = exe.len().min(RECENT_KEY_CAP);
    while !exe.is_char_boundary(cut) {
        cut -= 1;
    }
    exe[..cut].to_owned()
}

fn read_recent(inbox: &Dir) -> Recent {
    let mut text = Vec::new();
    open_plain(inbox, RECENT_FILE, OFlags::RDONLY)
        .and_then(|f| (&f).take(RECENT_FILE_CAP).read_to_end(&mut text))
        .ok()
        .and_then(|_| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

fn write_recent(inbox: &Dir, recent: &Recent) -> anyhow::Result<()> {
    let tmp = format!("{RECENT_FILE}.tmp");
    serde_json::to_vec(recent)
        .map_err(io::Error::other)
        .and_then(|text| {
            open_plain(inbox, &tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)
                .and_then(|f| (&f).write_all(&text))
        })
        .and_then(|()| inbox.rename(&tmp, inbox, RECENT_FILE))
        .context("cannot record the flood state")
}

/// Counts an admitted crash under `key` at `t`.
fn note_admitted(recent: &mut Recent, key: &str, t: u64) {
    let n = if recent.last.contains_key(key) {
        recent.admitted.get(key).copied().unwrap_or(1) + 1
    } else {
        1
    };
    recent.last.insert(key.to_owned(), t);
    recent.admitted.insert(key.to_owned(), n);
}

fn low_space_message(exe: &str, crash: &CrashConfig, dropped: u64) -> String {
    format!(
        "crash of {exe} dropped: its core would leave less than crash_min_free_mb = {} MiB free on the crash inbox's filesystem ({dropped} dropped so far)",
        crash.crash_min_free_mb.get()
    )
}

/// Crashes of one program by one user within the window that the handler
/// admits when where they stopped does not tell them apart (`abort`,
/// `raise`, an uncaught exception: the pc is in libc for all of them);
/// telemd then tells them apart by their stacks' signatures.
pub(crate) const BURST: u32 = 5;

/// Signals of a fault at the pc (SIGILL, SIGBUS, SIGFPE, SIGSEGV): there,
/// the pc names the crash site.
fn is_fault(signal: Option<u32>) -> bool {
    matches!(signal, Some(4 | 7 | 8 | 11))
}

/// Who crashed where, as the repeat filter keys it, and how many crashes
/// of that key the window admits: the user, the executable and, for a
/// fault whose site is known, the site (one per window); for any other
/// signal with the site known (a kernel that gives `%I`), [`BURST`]; with
/// no site (older kernels), one per executable as before sites.
fn repeat_key(
    uid: Option<u32>,
    exe: &str,
    site: Option<&str>,
    signal: Option<u32>,
) -> (String, u32) {
    let who = uid.map_or_else(|| "?".to_owned(), |u| u.to_string());
    match site {
        // The site first: a long executable path is what the cap cuts.
        Some(site) if is_fault(signal) => (recent_key(&format!("{site} in {who}:{exe}")), 1),
        Some(_) => (recent_key(&format!("{who}:{exe}")), BURST),
        None => (recent_key(&format!("{who}:{exe}")), 1),
    }
}

/// The flood limits, under the lock shared by concurrent handlers: the
/// same site (`key`: the executable, and where it stopped when known)
/// again within `crash_repeat_window_secs`; for a crash
/// whose core would be kept (`new_entry` names its entry), an inbox at
/// `crash_inbox_max_size` or more counting what the crashes being copied
/// have reserved, or less room than a small core above the
/// `crash_min_free_mb` floor. An admitted core's entry is made and its
/// room reserved before the lock is let go.
#[allow(clippy::too_many_arguments)]
pub(crate) fn admit(
    inbox: &Dir,
    exe: &str,
    uid: Option<u32>,
    signal: Option<u32>,
    site: Option<&str>,
    crash: &CrashConfig,
    new_entry: Option<&str>,
) -> anyhow::Result<Admission> {
    let _lock = lock_inbox(inbox)?;
    let mut recent = read_recent(inbox);
    let t = now();
    let window = crash.crash_repeat_window_secs.get();
    recent
        .last
        .retain(|_, last| t.saturating_sub(*last) < window.max(1));
    forget_oldest(&mut recent.last, MAX_RECENT - 1);
    let Recent { last, admitted, .. } = &mut recent;
    admitted.retain(|k, _| last.contains_key(k));
    let (key, budget) = repeat_key(uid, exe, site, signal);
    let key = &key;
    let seen = recent.admitted.get(key).copied().unwrap_or(1);
    let verdict = if recent.last.contains_key(key) && seen >= budget && window > 0 {
        recent.dropped_repeats += 1;
        let at = match site {
            Some(s) if budget == 1 => format!(" at {s}"),
            _ => String::new(),
        };
        Admission::Dropped(format!(
            "crash of {exe}{at} dropped: it crashed {budget} time(s) there within {window} s ({} repeats dropped so far)",
            recent.dropped_repeats
        ))
    } else if let Some(id) = new_entry {
        let usage = inbox_usage(inbox, crash.crash_max_core_size.get() + META_RESERVE);
        // The floor (0: none) counts the room reserved and not yet written
        // as used.
        let room = if crash.crash_min_free_mb.get() == 0 {
            u64::MAX
        } else {
            free_bytes(inbox)?
                .saturating_sub(usage.unwritten)
                .saturating_sub(crash.crash_min_free_mb.get().saturating_mul(MIB))
                .saturating_sub(META_RESERVE)
        };
        let core_limit = room.min(crash.crash_max_core_size.get());
        if usage.bytes >= crash.crash_inbox_max_size.get() {
            recent.dropped_full += 1;
            Admission::Dropped(format!(
                "crash of {exe} dropped: the crash inbox holds crash_inbox_max_size = {} bytes or more ({} dropped so far)",
                crash.crash_inbox_max_size.get(), recent.dropped_full
            ))
        } else if core_limit < MIN_CORE.min(crash.crash_max_core_size.get()) {
            recent.dropped_low_space += 1;
            Admission::Dropped(low_space_message(exe, crash, recent.dropped_low_space))
        } else {
            let r = reserve(inbox, id, core_limit)?;
            note_admitted(&mut recent, key, t);
            Admission::Keep(r)
        }
    } else {
        note_admitted(&mut recent, key, t);
        Admission::NoCore
    };
    if let Err(e) = write_recent(inbox, &recent) {
        if let (Admission::Keep(_), Some(id)) = (&verdict, new_entry) {
            let _ = inbox.remove_dir_all(id);
        }
        return Err(e);
    }
    Ok(verdict)
}

/// Counts (under the inbox lock) a crash dropped once its core passed
/// what the free-space floor left it; says why.
pub(crate) fn count_low_space_drop(
    inbox: &Dir,
    exe: &str,
    crash: &CrashConfig,
) -> anyhow::Result<String> {
    let _lock = lock_inbox(inbox)?;
    let mut recent = read_recent(inbox);
    recent.dropped_low_space += 1;
    write_recent(inbox, &recent)?;
    Ok(low_space_message(exe, crash, recent.dropped_low_space))
}

/// Makes the entry `id` and its reservation for a core of up to
/// `core_limit` bytes (under the inbox lock).
fn reserve(inbox: &Dir, id: &str, core_limit: u64) -> anyhow::Result<Reservation> {
    let entry = make_entry(inbox, id)?;
    let made = (|| {
        let file = create_in(&entry, RESERVATION_FILE)?;
        // The lock lasts as long as `file` is open.
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("cannot lock the reservation of {id}"))?;
        (&file)
            .write_all((core_limit + META_RESERVE).to_string().as_bytes())
            .with_context(|| format!("cannot reserve room for {id}"))?;
        Ok(file)
    })();
    match made {
        Ok(file) => Ok(Reservation {
            entry,
            file,
            core_limit,
        }),
        Err(e) => {
            let _ = inbox.remove_dir_all(id);
            Err(e)
        }
    }
}

/// What the inbox's entries hold, counting each entry being written at
/// its reservation when that is more (`unwritten`: by how much).
#[derive(Debug, Default, PartialEq, Eq)]
struct Usage {
    bytes: u64,
    unwritten: u64,
}

/// [`Usage`] of the inbox (under the inbox lock); a reservation that cannot
/// be read counts as `fallback` bytes.
fn inbox_usage(inbox: &Dir, fallback: u64) -> Usage {
    let mut usage = Usage::default();
    let Ok(entries) = inbox.entries() else {
        return usage;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(entry) = e.open_dir() else { continue };
        let held: u64 = entry
            .entries()
            .into_iter()
            .flatten()
            .filter_map(|f| f.ok())
            .filter(|f| f.file_name() != RESERVATION_FILE)
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .fold(0, u64::saturating_add);
        let reserved = live_reservation(&entry, fallback).unwrap_or(0);
        usage.bytes = usage.bytes.saturating_add(held.max(reserved));
        usage.unwritten = usage
            .unwritten
            .saturating_add(reserved.saturating_sub(held));
    }
    usage
}

/// The bytes an entry being written has reserved, if its handler is
/// still at it; a reservation its handler left behind (it died: the lock
/// went with it) is removed.
fn live_reservation(entry: &Dir, fallback: u64) -> Option<u64> {
    // Someone with the service user's rights could have put a FIFO or a
    // symlink there: counted at the fallback, neither waited on nor followed.
    let f = match open_plain(entry, RESERVATION_FILE, OFlags::RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => return Some(fallback),
    };
    // A lock we get is released when `f` closes.
    if flock(&f, FlockOperation::NonBlockingLockShared).is_ok() {
        let _ = entry.remove_file(RESERVATION_FILE);
        return None;
    }
    let mut text = String::new();
    let _ = f.take(32).read_to_string(&mut text);
    Some(text.trim().parse().unwrap_or(fallback))
}

/// Bytes an unprivileged user may still write on the filesystem of `dir`.
fn free_bytes(dir: &Dir) -> anyhow::Result<u64> {
    let st = rustix::fs::fstatvfs(dir).context("cannot read the free space of the inbox")?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::open_inbox;

    #[test]
    fn reservations_count_while_their_handler_lives() {
        let dir = std::env::temp_dir().join(format!("telem-resv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("done")).unwrap();
        std::fs::write(dir.join("done/core"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join(".recent.json"), vec![b' '; 500]).unwrap();
        let fd = open_inbox(&dir).unwrap();
        let r = reserve(&fd, "busy", 10_000).unwrap();
        let reserved = 10_000 + META_RESERVE;
        std::fs::write(dir.join("busy/core"), vec![0u8; 4000]).unwrap();
        assert_eq!(
            inbox_usage(&fd, 1),
            Usage {
                bytes: 1000 + reserved,
                unwritten: reserved - 4000
            }
        );
        // Complete: counted at its real size.
        r.release();
        assert!(!dir.join("busy").join(RESERVATION_FILE).exists());
        assert_eq!(
            inbox_usage(&fd, 1),
            Usage {
                bytes: 5000,
                unwritten: 0
            }
        );
        // Left behind by a handler that died: unlocked, so removed.
        let r = reserve(&fd, "dead", 10_000).unwrap();
        drop(r);
        assert_eq!(inbox_usage(&fd, 1).bytes, 5000);
        assert!(!dir.join("dead").join(RESERVATION_FILE).exists());
        // Not a number: counted at the fallback.
        let r = reserve(&fd, "odd", 10_000).unwrap();
        r.file.set_len(0).unwrap();
        std::os::unix::fs::FileExt::write_at(&r.file, b"lots", 0).unwrap();
        assert_eq!(inbox_usage(&fd, 77_777).bytes, 5000 + 77_777);
        drop(r);
        assert!(free_bytes(&fd).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_repeat_filter_forgets_the_oldest_beyond_its_cap() {
        let mut last: BTreeMap<String, u64> = (0..MAX_RECENT as u64 + 10)
            .map(|i| (format!("/usr/bin/p{i}"), i))
            .collect();
        forget_oldest(&mut last, MAX_RECENT - 1);
        assert_eq!(last.len(), MAX_RECENT - 1);
        assert!(!last.contains_key("/usr/bin/p0") && last.contains_key("/usr/bin/p1033"));
        assert_eq!(recent_key(&"é".repeat(400)).len(), RECENT_KEY_CAP);
    }

    #[test]
    fn the_repeat_key_is_cut_back_to_a_char_boundary() {
        // 512 falls inside a two-byte character here.
        let exe = format!("a{}", "é".repeat(400));
        assert_eq!(recent_key(&exe).len(), RECENT_KEY_CAP - 1);
    }

    #[test]
    fn planted_fifos_and_symlinks_are_neither_waited_on_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open_inbox(dir.path()).unwrap();
        // A FIFO as the flood state: read as empty at once, not waited on.
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.path().join(RECENT_FILE))
            .status()
            .unwrap()
            .success());
        assert_eq!(read_recent(&inbox).last.len(), 0);
        // A symlink as the lock or the temp file: refused, its target untouched.
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".lock")).unwrap();
        assert!(lock_inbox(&inbox).is_err());
        std::fs::remove_file(dir.path().join(RECENT_FILE)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(format!("{RECENT_FILE}.tmp"))).unwrap();
        assert!(write_recent(&inbox, &Recent::default()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A symlinked reservation counts at the fallback.
        std::fs::create_dir(dir.path().join("e")).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("e").join(RESERVATION_FILE)).unwrap();
        let entry = inbox.open_dir("e").unwrap();
        assert_eq!(live_reservation(&entry, 99), Some(99));
    }

    #[test]
    fn the_flood_state_is_read_up_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open_inbox(dir.path()).unwrap();
        // Valid JSON, but padded past RECENT_FILE_CAP: not read whole, so
        // taken as no state rather than read without bound.
        let mut text = b"{\"dropped_repeats\": 7".to_vec();
        text.resize(RECENT_FILE_CAP as usize * 2, b' ');
        text.push(b'}');
        std::fs::write(dir.path().join(RECENT_FILE), &text).unwrap();
        assert_eq!(read_recent(&inbox).dropped_repeats, 0);
        std::fs::write(dir.path().join(RECENT_FILE), b"{\"dropped_repeats\": 7}").unwrap();
        assert_eq!(read_recent(&inbox).dropped_repeats, 7);
    }

    /// Faults at a known site: one per site and user; aborts (the pc is in
    /// libc whatever failed): up to BURST per program and user, for telemd
    /// to tell apart by signature; without a site: one per program.
    #[test]
    fn repeats_are_keyed_on_user_program_and_fault_site() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open_inbox(dir.path()).unwrap();
        let crash = CrashConfig::default();
        let run = |uid, signal, site| {
            matches!(
                admit(
                    &inbox,
                    "/usr/bin/p",
                    Some(uid),
                    Some(signal),
                    site,
                    &crash,
                    None
                )
                .unwrap(),
                Admission::NoCore
            )
        };
        let a = Some("/usr/bin/p+0x1139");
        let b = Some("/usr/bin/p+0x1200");
        assert!(run(1000, 11, a));
        assert!(!run(1000, 11, a), "the same fault site again");
        assert!(run(1000, 11, b), "another site");
        assert!(run(1001, 11, a), "another user");
        let libc = Some("/usr/lib/libc.so.6+0x8f3b2");
        for i in 0..BURST {
            assert!(run(1000, 6, libc), "abort {i} of the burst");
        }
        assert!(!run(1000, 6, libc), "past the burst");
        assert!(!run(1000, 6, None), "the program alone is now seen");
        assert!(run(1002, 11, None));
        assert!(!run(1002, 11, None), "no site: one per program");
    }
}
