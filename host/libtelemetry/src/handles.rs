//! The records a program holds, keyed by the handle it was given.
//!
//! C programs pass handles back as raw pointers; a stale, forged or freed
//! one must not be dereferenced. Every handle is looked up here first:
//! the library only touches memory it handed out and has not taken back.
//! The table also makes calls from several threads safe (the seed's
//! library was not).

use std::collections::HashMap;
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

/// Live handles (the address of each `TelemRef`) and their records. The
/// records are owned here; a `TelemRef` points into this table.
static LIVE: Mutex<Option<HashMap<usize, Box<TelemRecord>>>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Option<HashMap<usize, Box<TelemRecord>>>> {
    // A panic caught at the C boundary must not turn every later call into
    // one: the table is consistent between statements.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes ownership of `record` and returns the handle C gets for it.
pub(crate) fn register(record: Record) -> *mut TelemRef {
    let mut owned = Box::new(TelemRecord { record });
    let r = Box::into_raw(Box::new(TelemRef {
        record: &mut *owned,
    }));
    live()
        .get_or_insert_with(HashMap::new)
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
    let mut table = live();
    let entry = table
        .as_mut()
        .and_then(|t| t.get_mut(&(handle as usize)))
        .ok_or(TmError::UnknownRecord)?;
    f(&mut entry.record)
}

/// Takes a handle back and frees it with its record. Returns whether the
/// handle was live: freeing one twice, or one never handed out, does
/// nothing.
pub(crate) fn release(handle: *mut TelemRef) -> bool {
    let removed = live().as_mut().and_then(|t| t.remove(&(handle as usize)));
    match removed {
        Some(record) => {
            drop(record);
            // SAFETY: `handle` was in the table, so it came from
            // `Box::into_raw` in `register` and has not been freed since
            // (removal from the table is what frees it, once).
            drop(unsafe { Box::from_raw(handle) });
            true
        }
        None => false,
    }
}

/// How many handles are live (tests check that nothing leaks).
#[cfg(test)]
pub(crate) fn live_count() -> usize {
    live().as_ref().map_or(0, HashMap::len)
}
