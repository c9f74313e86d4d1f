//! The seven C entry points of `telemetry.h`.
//!
//! Each one checks its pointers, reads strings within their limits, runs
//! under `catch_unwind` (a panic never crosses into C) and answers 0 or a
//! negative errno value, as the seed's header documents.
//!
//! The functions have Rust (mangled) names; `export!` gives each its C name
//! with `global_asm!`, so rustc's own version script never names them and
//! `telemetry.map` alone gives them their versions (see `build.rs`).

use std::ffi::c_char;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use telem_core::metadata::HostMetadata;
use telem_core::native_client::{build_record, send_frame, NewRecord, CLIENT_TIMEOUT};
use telem_core::record::wire::{encode_frame, PATH_MAX};
use telem_core::record::{
    validate_classification, validate_event_id, validate_payload, ID_LEN, MAX_CLASSIFICATION_LEN,
    MAX_PAYLOAD_LEN,
};

use crate::c_string::{read_bounded, read_prefix, Bounded};
use crate::error::TmError;
use crate::handles::{register, release, with_record, TelemRef};
use crate::settings::{in_effect, metadata_root, name_config_file, opt_in_file};

/// The machine id a record leaves the library with; the daemon replaces it
/// (as the seed's library and daemon did).
const PLACEHOLDER_MACHINE_ID: &str = "FFFFFFFF";

/// Gives the function `$f` the exported C name `$name`.
macro_rules! export {
    ($name:literal, $f:path) => {
        std::arch::global_asm!(
            concat!(".globl ", $name),
            concat!(".type ", $name, ", %function"),
            concat!(".set ", $name, ", {f}"),
            f = sym $f,
        );
    };
}

export!("tm_set_config_file", tm_set_config_file);
export!("tm_create_record", tm_create_record);
export!("tm_set_event_id", tm_set_event_id);
export!("tm_set_payload", tm_set_payload);
export!("tm_send_record", tm_send_record);
export!("tm_is_opted_in", tm_is_opted_in);
export!("tm_free_record", tm_free_record);

/// Runs a call, turning its error, or a panic, into `-errno`.
fn answer(call: impl FnOnce() -> Result<(), TmError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => -e.errno(),
        Err(_) => -TmError::Panic.errno(),
    }
}

/// Reads a string argument that must fit whole within `max` bytes.
///
/// # Safety
/// As [`read_bounded`] when `p` is non-null.
unsafe fn text_arg<'a>(
    p: *const c_char,
    max: usize,
    what: &'static str,
) -> Result<&'a str, TmError> {
    if p.is_null() {
        return Err(TmError::Null { what });
    }
    // SAFETY: non-null; the rest is the caller's promise.
    match unsafe { read_bounded(p, max) } {
        Bounded::Whole(b) => {
            std::str::from_utf8(b).map_err(|source| TmError::NotUtf8 { what, source })
        }
        Bounded::Cut(_) => Err(TmError::TooLong { what, max }),
    }
}

/// Names the config file the library reads the socket path and opt-in
/// file from, and sends in the record's `CFG:` prefix.
///
/// # Safety
/// `c_file` is NULL or a NUL-terminated string.
pub unsafe extern "C" fn tm_set_config_file(c_file: *const c_char) -> c_int {
    answer(|| {
        // SAFETY: the caller's promise.
        let path = unsafe { text_arg(c_file, PATH_MAX, "c_file") }.map_err(|e| match e {
            TmError::TooLong { .. } => TmError::ConfigPath {
                path: "(longer than PATH_MAX)".into(),
                source: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
            },
            e => e,
        })?;
        name_config_file(path)
    })
}

/// Creates a record with this machine's headers and a random event id.
///
/// # Safety
/// `t_ref` is NULL or points to writable storage for a pointer;
/// `classification` is NULL or a NUL-terminated string.
pub unsafe extern "C" fn tm_create_record(
    t_ref: *mut *mut TelemRef,
    severity: u32,
    classification: *mut c_char,
    payload_version: u32,
) -> c_int {
    answer(|| {
        if t_ref.is_null() {
            return Err(TmError::Null { what: "t_ref" });
        }
        // SAFETY: non-null and writable by the caller's promise. Cleared
        // first, so a failed call never leaves a pointer to free behind.
        unsafe { t_ref.write(std::ptr::null_mut()) };
        // SAFETY: the caller's promise.
        let class = unsafe { text_arg(classification, MAX_CLASSIFICATION_LEN, "classification") }?;
        validate_classification(class)?;
        let metadata = HostMetadata::collect(&metadata_root());
        let record = build_record(
            &NewRecord {
                classification: class,
                severity: severity.clamp(1, 4) as u8,
                payload_version,
                payload: "",
                event_id: None,
                config: None,
            },
            &metadata,
            PLACEHOLDER_MACHINE_ID,
        );
        let handle = register(record);
        // SAFETY: as above.
        unsafe { t_ref.write(handle) };
        Ok(())
    })
}

/// Replaces the record's random event id (32 lowercase hex digits), so
/// several records can name one event.
///
/// # Safety
/// `event_id` is NULL or a NUL-terminated string; `t_ref` may be anything
/// (it is looked up, not dereferenced).
pub unsafe extern "C" fn tm_set_event_id(t_ref: *mut TelemRef, event_id: *mut c_char) -> c_int {
    answer(|| {
        with_record(t_ref, |r| {
            // SAFETY: the caller's promise.
            let id = unsafe { text_arg(event_id, ID_LEN, "event_id") }?;
            validate_event_id(id)?;
            r.headers.set(telem_core::record::Header::EventId, id);
            Ok(())
        })
    })
}

/// Sets the payload: printable ASCII or whitespace. As in the seed, only
/// the first 8192 bytes are taken.
///
/// # Safety
/// `payload` is NULL or a NUL-terminated string (or at least 8193 readable
/// bytes); `t_ref` may be anything (it is looked up, not dereferenced).
pub unsafe extern "C" fn tm_set_payload(t_ref: *mut TelemRef, payload: *mut c_char) -> c_int {
    answer(|| {
        with_record(t_ref, |r| {
            if payload.is_null() {
                return Err(TmError::Null { what: "payload" });
            }
            // SAFETY: non-null; the rest is the caller's promise. At most
            // 8192 bytes are looked at, as the seed's strnlen did: a full
            // `char buf[8192]` without a NUL is read, and not one byte more.
            let bytes = unsafe { read_prefix(payload, MAX_PAYLOAD_LEN) };
            validate_payload(bytes)?;
            let mut text = String::new();
            text.try_reserve_exact(bytes.len())
                .map_err(|_| TmError::NoMemory)?;
            // Checked above: every byte is ASCII.
            text.push_str(
                std::str::from_utf8(bytes).map_err(|source| TmError::NotUtf8 {
                    what: "payload",
                    source,
                })?,
            );
            r.payload = text;
            Ok(())
        })
    })
}

/// Sends the record to the daemon, within `CLIENT_TIMEOUT` in all.
///
/// # Safety
/// None beyond C's: `t_ref` is looked up, not dereferenced.
pub unsafe extern "C" fn tm_send_record(t_ref: *mut TelemRef) -> c_int {
    answer(|| {
        // Refused before anything else, so a bad handle is EINVAL whatever
        // the machine's state.
        with_record(t_ref, |_| Ok(()))?;
        let settings = in_effect()?;
        let opt_in = &settings.opt_in_file;
        if !opt_in.exists() {
            return Err(TmError::NotOptedIn(opt_in.clone()));
        }
        let frame = with_record(t_ref, |r| {
            r.config = settings.named.clone();
            r.validate()?;
            Ok(encode_frame(r))
        })?;
        send_frame(&settings.socket_path, &frame, CLIENT_TIMEOUT)?;
        Ok(())
    })
}

/// 1 when telemetry is opted in on this machine, else 0.
pub extern "C" fn tm_is_opted_in() -> c_int {
    catch_unwind(|| c_int::from(opt_in_file().exists())).unwrap_or(0)
}

/// Frees a record. NULL, a handle already freed and one never handed out
/// are ignored.
///
/// # Safety
/// None beyond C's: `t_ref` is looked up, not dereferenced, unless it is a
/// live handle.
pub unsafe extern "C" fn tm_free_record(t_ref: *mut TelemRef) {
    if t_ref.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| release(t_ref)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handles::live_count;
    use rand::{Rng, SeedableRng};
    use std::ffi::CString;
    use std::sync::Mutex;

    /// The handle table is process-wide: tests that count it take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn a_panic_stops_at_the_boundary_as_einval() {
        assert_eq!(answer(|| panic!("a bug")), -libc::EINVAL);
        assert_eq!(answer(|| Err(TmError::NoMemory)), -libc::ENOMEM);
        assert_eq!(answer(|| Ok(())), 0);
    }

    /// A random C string: bytes 1..=255, now and then shaped like a valid
    /// value so later checks are reached.
    fn c_string(rng: &mut impl Rng, valid: &str) -> CString {
        if rng.random_bool(0.5) {
            return CString::new(valid).unwrap();
        }
        let len = rng.random_range(0..300);
        CString::new(
            (0..len)
                .map(|_| rng.random_range(1..=255u8))
                .collect::<Vec<u8>>(),
        )
        .unwrap()
    }

    #[test]
    fn random_arguments_are_answered_with_documented_codes_and_nothing_is_kept() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
        let before = live_count();
        let (mut created, mut payloads) = (0, 0);
        for _ in 0..2000 {
            let class = c_string(&mut rng, "org.example/fuzz/x");
            let id = c_string(&mut rng, "00112233445566778899aabbccddeeff");
            let payload = c_string(&mut rng, "a payload\n");
            let mut r: *mut TelemRef = std::ptr::null_mut();
            // SAFETY: valid C strings and a writable out-pointer.
            let rc = unsafe {
                tm_create_record(
                    &mut r,
                    rng.random(),
                    class.as_ptr().cast_mut(),
                    rng.random(),
                )
            };
            assert!(rc == 0 || rc == -libc::EINVAL, "create: {rc}");
            assert_eq!(rc == 0, !r.is_null());
            created += usize::from(rc == 0);
            // SAFETY: as above; a NULL or freed handle is looked up, not used.
            unsafe {
                let rc = tm_set_event_id(r, id.as_ptr().cast_mut());
                assert!(rc == 0 || rc == -libc::EINVAL, "event id: {rc}");
                let rc = tm_set_payload(r, payload.as_ptr().cast_mut());
                assert!(rc == 0 || rc == -libc::EINVAL, "payload: {rc}");
                payloads += usize::from(rc == 0);
                tm_free_record(r);
                tm_free_record(r);
                assert_eq!(
                    tm_set_payload(r, payload.as_ptr().cast_mut()),
                    -libc::EINVAL
                );
            }
        }
        assert!(
            created > 500 && payloads > 250,
            "{created} created, {payloads} payloads"
        );
        assert_eq!(live_count(), before, "every record freed");
    }

    #[test]
    fn a_freed_handle_stays_unknown_after_new_records_are_made() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let class = CString::new("org.example/unit/stale").unwrap();
        let p = CString::new("x").unwrap();
        // SAFETY: valid C strings and writable out-pointers; stale handles
        // are looked up, never used.
        unsafe {
            let mut a: *mut TelemRef = std::ptr::null_mut();
            assert_eq!(tm_create_record(&mut a, 1, class.as_ptr().cast_mut(), 1), 0);
            tm_free_record(a);
            // Kept from the allocator, which would hand `a`'s block to a
            // later record.
            assert!(crate::handles::quarantined(a));
            let mut others = Vec::new();
            for _ in 0..16 {
                let mut b: *mut TelemRef = std::ptr::null_mut();
                assert_eq!(tm_create_record(&mut b, 1, class.as_ptr().cast_mut(), 1), 0);
                assert_ne!(b, a, "a freed handle's address was handed out again");
                others.push(b);
            }
            assert_eq!(tm_set_payload(a, p.as_ptr().cast_mut()), -libc::EINVAL);
            tm_free_record(a);
            for b in others {
                assert_eq!(
                    tm_set_payload(b, p.as_ptr().cast_mut()),
                    0,
                    "freeing `a` twice freed another"
                );
                tm_free_record(b);
            }
        }
    }

    #[test]
    fn a_valid_record_is_answered_zero_at_every_step_before_the_send() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let class = CString::new("org.example/unit/ok").unwrap();
        let mut r: *mut TelemRef = std::ptr::null_mut();
        // SAFETY: valid C strings and a writable out-pointer.
        unsafe {
            assert_eq!(tm_create_record(&mut r, 0, class.as_ptr().cast_mut(), 1), 0);
            let id = CString::new("ffeeddccbbaa99887766554433221100").unwrap();
            assert_eq!(tm_set_event_id(r, id.as_ptr().cast_mut()), 0);
            let p = CString::new("x".repeat(9000)).unwrap();
            assert_eq!(tm_set_payload(r, p.as_ptr().cast_mut()), 0);
            with_record(r, |rec| {
                assert_eq!(rec.payload.len(), MAX_PAYLOAD_LEN, "cut as the seed did");
                assert_eq!(rec.headers.get(telem_core::record::Header::Severity), "1");
                Ok(())
            })
            .unwrap();
            tm_free_record(r);
        }
    }
}
