//! C strings read with a bound: the library never looks further than the
//! longest value it could accept, whatever the caller passed.

use std::ffi::c_char;

/// A C string as read within its bound.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bounded<'a> {
    /// Its NUL came within the bound: these are all its bytes.
    Whole(&'a [u8]),
    /// No NUL within the bound: its first `bound` bytes.
    Cut(&'a [u8]),
}

/// Reads the string at `p`, looking at `bound + 1` bytes at most.
///
/// # Safety
/// `p` is non-null and points to a NUL-terminated string, or to at least
/// `bound + 1` readable bytes.
pub(crate) unsafe fn read_bounded<'a>(p: *const c_char, bound: usize) -> Bounded<'a> {
    // SAFETY: the caller promises `bound + 1` readable bytes or a NUL
    // before them; strnlen reads no further than either.
    let len = unsafe { libc::strnlen(p, bound + 1) };
    // SAFETY: `len.min(bound)` bytes were just read by strnlen, and the
    // caller keeps them alive for the duration of the call ('a).
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len.min(bound)) };
    if len <= bound {
        Bounded::Whole(bytes)
    } else {
        Bounded::Cut(bytes)
    }
}

/// Reads the string at `p`, or its first `max` bytes if it is longer,
/// looking at `max` bytes at most (C's `strnlen(p, max)`).
///
/// # Safety
/// `p` is non-null and points to a NUL-terminated string, or to at least
/// `max` readable bytes.
pub(crate) unsafe fn read_prefix<'a>(p: *const c_char, max: usize) -> &'a [u8] {
    // SAFETY: as `read_bounded`, with `max` for its bound + 1.
    let len = unsafe { libc::strnlen(p, max) };
    // SAFETY: `len` bytes were just read by strnlen.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_within_its_bound_is_read_whole_and_a_longer_one_is_cut_at_it() {
        let s = c"abcd";
        // SAFETY: a NUL-terminated literal.
        unsafe {
            assert_eq!(read_bounded(s.as_ptr(), 4), Bounded::Whole(b"abcd"));
            assert_eq!(read_bounded(s.as_ptr(), 10), Bounded::Whole(b"abcd"));
            assert_eq!(read_bounded(s.as_ptr(), 3), Bounded::Cut(b"abc"));
            assert_eq!(read_bounded(s.as_ptr(), 0), Bounded::Cut(b""));
        }
    }

    /// Eight bytes of 'x' with no NUL, ending where an inaccessible page
    /// begins: a read of a ninth byte faults and kills the test.
    struct GuardedBytes {
        base: *mut std::ffi::c_void,
        len: usize,
    }

    impl GuardedBytes {
        fn new() -> GuardedBytes {
            use rustix::mm::{mmap_anonymous, mprotect, MapFlags, MprotectFlags, ProtFlags};
            let page = rustix::param::page_size();
            // SAFETY: a fresh private anonymous mapping of two pages; the
            // second is made inaccessible; nothing else refers to them.
            unsafe {
                let base = mmap_anonymous(
                    std::ptr::null_mut(),
                    2 * page,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE,
                )
                .unwrap();
                mprotect(
                    base.cast::<u8>().add(page).cast(),
                    page,
                    MprotectFlags::empty(),
                )
                .unwrap();
                std::ptr::write_bytes(base.cast::<u8>().add(page - 8), b'x', 8);
                GuardedBytes {
                    base,
                    len: 2 * page,
                }
            }
        }

        fn ptr(&self) -> *const c_char {
            // SAFETY: within the first page of the mapping.
            unsafe { self.base.cast::<u8>().add(self.len / 2 - 8).cast() }
        }
    }

    impl Drop for GuardedBytes {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, unmapped once.
            unsafe { rustix::mm::munmap(self.base, self.len).unwrap() };
        }
    }

    #[test]
    fn no_byte_past_the_bound_is_read() {
        let g = GuardedBytes::new();
        // SAFETY: eight readable bytes at `ptr`; each call looks at eight.
        unsafe {
            assert_eq!(read_bounded(g.ptr(), 7), Bounded::Cut(&[b'x'; 7][..]));
            assert_eq!(read_prefix(g.ptr(), 8), &[b'x'; 8][..]);
        }
    }
}
