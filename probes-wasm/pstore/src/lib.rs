//! The logic of the pstore probe (the legacy pstoreprobe), as a plain
//! library for `wasm32-wasip2` and native tests: naming and reassembling
//! the kernel's pstore dumps, and turning their text into the kernel-oops
//! probe's records (the same patterns and payload, as the legacy probes
//! shared their parser).
//!
//! The kernel writes an oops or panic log in parts of about 1 KiB to the
//! firmware (EFI variables) or to reserved RAM (ramoops). At the next boot
//! it shows them in `/sys/fs/pstore` as `dmesg-efi-<id>` (since about 6.1
//! `dmesg-efi_pstore-<id>`), where `<id>` is `<seconds><part:2><count:3>`,
//! or `dmesg-ramoops-<n>`. Part 1 holds the newest text; each part starts
//! with a `<Reason>#<count> Part<n>` line. systemd-pstore moves them to
//! `/var/lib/systemd/pstore`: EFI parts to `<seconds>/<count>/`, with a
//! `dmesg.txt` that joins them oldest first (systemd 253 and later;
//! before, `<id without 6 digits>/dmesg.txt` with a `<file>:` line before
//! each part), anything else (ramoops) flat in the directory.
#![warn(missing_docs)]

use kernel_report::assemble::{strip_prefix, Assembler};
use kernel_report::repeats::Repeats;
pub use kernel_report::Outgoing;

#[cfg(target_family = "wasm")]
mod probe;

/// Which dump a part file belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DumpKey {
    /// `efi`, `efi_pstore`, `ramoops`, `erst`, ...
    pub backend: String,
    /// The dump within the backend (`<seconds>-<count>` for EFI, the zone
    /// for ramoops, the id for others).
    pub dump: String,
}

/// The dump and part a pstore file name names, if it is a dmesg dump this
/// probe reads (compressed `.enc.z` files are not: the kernel could not
/// decompress them either).
pub fn parse_name(name: &str) -> Option<(DumpKey, u32)> {
    let rest = name.strip_prefix("dmesg-")?;
    if rest.ends_with(".enc.z") {
        return None;
    }
    let (backend, id) = rest.rsplit_once('-')?;
    if backend.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if backend == "efi" || backend == "efi_pstore" {
        let n: u64 = id.parse().ok()?;
        let count = n % 1000;
        let part = (n / 1000) % 100;
        let secs = n / 100_000;
        return Some((
            DumpKey {
                backend: backend.to_owned(),
                dump: format!("{secs}-{count}"),
            },
            part as u32,
        ));
    }
    Some((
        DumpKey {
            backend: backend.to_owned(),
            dump: id.to_owned(),
        },
        1,
    ))
}

/// Whether `line` is a part's header (`Oops#1 Part2`, `Panic#3 Part1`).
pub fn is_part_header(line: &str) -> bool {
    let Some((reason, rest)) = line.split_once('#') else {
        return false;
    };
    let Some((count, part)) = rest.split_once(" Part") else {
        return false;
    };
    !reason.is_empty()
        && reason.bytes().all(|b| b.is_ascii_alphabetic())
        && !count.is_empty()
        && count.bytes().all(|b| b.is_ascii_digit())
        && !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
}

/// A line the dump's storage added, not the kernel log: a part's header, or
/// the `<file>:` line older systemd-pstore put before each part.
fn is_separator(line: &str) -> bool {
    is_part_header(line) || (line.starts_with("dmesg-") && line.ends_with(':'))
}

/// Joins a dump's parts oldest text first (the highest part first).
pub fn join_parts(mut parts: Vec<(u32, String)>) -> String {
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut out = String::new();
    for (_, text) in parts {
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The kernel time of a `[ 12.345678]` prefix, in µs.
fn timestamp_usec(line: &str) -> Option<u64> {
    let line = line
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .map_or(line, |(_, r)| r);
    let ts = line.strip_prefix('[')?.split_once(']')?.0.trim();
    let (s, us) = ts.split_once('.')?;
    s.parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(us.parse().ok()?)
}

/// The records of a dump's text (parts joined, or systemd's `dmesg.txt`):
/// part headers and systemd's `<file>:` lines are dropped, each line's
/// `<N>[time]` prefix is removed, and what is left goes through the
/// kernel-oops parser. Every report in the dump gives a record (repeats
/// within the dump counted, as in the kernel log).
pub fn records(text: &str) -> Vec<Outgoing> {
    let mut asm = Assembler::default();
    let mut reports = Vec::new();
    let mut usec = 0u64;
    for line in text.lines() {
        if is_separator(line) {
            continue;
        }
        usec = timestamp_usec(line).unwrap_or(usec + 1000).max(usec);
        asm.push(usec, strip_prefix(line), &mut reports);
    }
    asm.finish(&mut reports);
    kernel_report::records_of(reports, &mut Repeats::default(), 0)
}

/// A 64-bit FNV-1a digest of a dump's text: tells a dump seen twice (in
/// `/sys/fs/pstore` and in systemd-pstore's archive, when it keeps both)
/// from a new one. Not a defence against anyone: the kernel wrote it.
pub fn digest(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in text.lines().filter(|l| !is_separator(l)) {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_kernels_dumps() {
        let (k, part) = parse_name("dmesg-efi-166692286102001").unwrap();
        assert_eq!(
            (k.backend.as_str(), k.dump.as_str(), part),
            ("efi", "1666922861-1", 2)
        );
        let (k, part) = parse_name("dmesg-efi_pstore-168263062301014").unwrap();
        assert_eq!(
            (k.backend.as_str(), k.dump.as_str(), part),
            ("efi_pstore", "1682630623-14", 1)
        );
        let (k, part) = parse_name("dmesg-ramoops-0").unwrap();
        assert_eq!(
            (k.backend.as_str(), k.dump.as_str(), part),
            ("ramoops", "0", 1)
        );
        assert_eq!(parse_name("dmesg-ramoops-0.enc.z"), None);
        assert_eq!(parse_name("console-ramoops-0"), None);
        assert_eq!(parse_name("dmesg-efi-"), None);
        assert_eq!(parse_name("dmesg-efi-12a"), None);
    }

    #[test]
    fn part_headers() {
        assert!(is_part_header("Oops#1 Part1"));
        assert!(is_part_header("Panic#12 Part3"));
        assert!(!is_part_header("Oops: 0000 [#1] SMP"));
        assert!(!is_part_header("BUG#1 Part"));
    }

    #[test]
    fn parts_join_oldest_text_first() {
        let joined = join_parts(vec![
            (1, "Panic#1 Part1\nnew\n".into()),
            (2, "Panic#1 Part2\nold".into()),
        ]);
        assert_eq!(joined, "Panic#1 Part2\nold\nPanic#1 Part1\nnew\n");
    }
}
