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

    #[test]
    fn no_byte_past_the_bound_is_read() {
        // Eight bytes with no NUL: reading them with bound 7 looks at all
        // eight and no more (Miri or ASan would flag a ninth).
        let buf = [b'x'; 8];
        // SAFETY: bound + 1 = 8 readable bytes.
        let got = unsafe { read_bounded(buf.as_ptr().cast(), 7) };
        assert_eq!(got, Bounded::Cut(&buf[..7]));
    }
}
