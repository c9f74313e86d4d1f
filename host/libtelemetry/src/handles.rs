//! The records a program holds, keyed by the handle it was given.
//!
//! C programs pass handles back as raw pointers; a stale, forged or freed
//! one must not be dereferenced. Every handle is looked up here first:
//! the library only touches memory it handed out and has not taken back.
//! The table also makes calls from several threads safe (the seed's
//! library was not).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use telem_core::record::Record;

use crate::error::TmError;

/// The public handle of `telemetry.h`: `struct telem_ref { struct
/// telem_record *record; }`. C code may read `record`; it must not free
/// either allocation itself.
#[repr(C)]
pub struct TelemRef {
    /// Opaque to C.
    pub record: *mut TelemRecord,
}

/// `struct telem_record`, opaque to C: the record being built.
pub struct TelemRecord {
    record: Record,
}

/// Freed handles kept allocated (not handed back to malloc) so that the
/// next records do not get their addresses: a stale handle used again, or
/// freed twice, is then still unknown rather than someone else's record
/// (for the next 4096 records at least; 8 bytes each).
const QUARANTINE: usize = 4096;

#[derive(Default)]
struct Table {
    /// Live handles (the address of each `TelemRef`) and their records.
    /// The records are owned here; a `TelemRef` points into this table.
    live: HashMap<usize, Box<TelemRecord>>,
    /// Freed handles not yet returned to the allocator, oldest first.
    quarantine: VecDeque<usize>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn table() -> MutexGuard<'static, Option<Table>> {
    // A panic caught at the C boundary must not turn every later call into
    // one: the table is consistent between statements.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes ownership of `record` and returns the handle C gets for it.
pub(crate) fn register(record: Record) -> *mut TelemRef {
    let mut owned = Box::new(TelemRecord { record });
    let r = Box::into_raw(Box::new(TelemRef {
        record: &mut *owned,
    }));
    table()
        .get_or_insert_with(Table::default)
        .live
        .insert(r as usize, owned);
    r
}

/// Runs `f` on the record behind `handle`, under the table's lock (so two
/// threads using one handle take turns).
pub(crate) fn with_record<T>(
    handle: *const TelemRef,
    f: impl FnOnce(&mut Record) -> Result<T, TmError>,
) -> Result<T, TmError> {
    if handle.is_null() {
        return Err(TmError::Null { what: "t_ref" });
    }
    let mut guard = table();
    let entry = guard
        .as_mut()
        .and_then(|t| t.live.get_mut(&(handle as usize)))
        .ok_or(TmError::UnknownRecord)?;
    f(&mut entry.record)
}

/// Takes a handle back and frees its record; the handle itself goes to the
/// quarantine. Returns whether the handle was live: freeing one twice, or
/// one never handed out, does nothing.
pub(crate) fn release(handle: *mut TelemRef) -> bool {
    let mut guard = table();
    let Some(t) = guard.as_mut() else {
        return false;
    };
    let Some(record) = t.live.remove(&(handle as usize)) else {
        return false;
    };
    t.quarantine.push_back(handle as usize);
    let expired = if t.quarantine.len() > QUARANTINE {
        t.quarantine.pop_front()
    } else {
        None
    };
    drop(guard);
    drop(record);
    if let Some(old) = expired {
        // SAFETY: `old` was a live handle (from `Box::into_raw` in
        // `register`), moved from the live table to the quarantine once and
        // out of it once, here: it is freed exactly once.
        drop(unsafe { Box::from_raw(old as *mut TelemRef) });
    }
    true
}

/// How many handles are live (tests check that nothing leaks).
#[cfg(test)]
pub(crate) fn live_count() -> usize {
    table().as_ref().map_or(0, |t| t.live.len())
}

/// Whether a freed handle is still held back from the allocator.
#[cfg(test)]
pub(crate) fn quarantined(handle: *const TelemRef) -> bool {
    table()
        .as_ref()
        .is_some_and(|t| t.quarantine.contains(&(handle as usize)))
}
