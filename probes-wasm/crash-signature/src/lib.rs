//! Crash signatures: a short, versioned name for "this crash site", so a
//! collector groups reports without re-parsing their text, and a flood of
//! one crash is counted while a different crash still gets through.
//!
//! A signature is `<scheme>:<16 hex digits>`, the first 64 bits of a
//! SHA-256 over the scheme's inputs, each followed by a NUL byte:
//!
//! - `sym1:` — the program's name, the kind of crash (a signal number or a
//!   kernel report's classification) and the names of the crashing
//!   thread's top [`TOP_FRAMES`] functions, after the caller dropped the
//!   frames that say how a crash was reported rather than where it
//!   happened (`raise`, `abort`, `panic`, `__warn`, ...) and the frames it
//!   could not name. Names hold no address and no hash, so the signature
//!   is the same across ASLR and across rebuilds of the same code.
//! - `addr1:` — when no frame has a name: the program's name, the kind
//!   and, per top frame, its module's build id (or name) and the pc's
//!   offset in that module. The same across ASLR; a rebuild changes it.
//! - `line1:` — a kernel report without any frame: its classification and
//!   first line with every number made `N`.
//!
//! A change to what goes in makes a new scheme number, never a new value
//! under the old one: signatures a collector stored stay comparable.

use sha2::{Digest, Sha256};

/// Function names a signature is made of, at most.
pub const TOP_FRAMES: usize = 5;
/// Bytes of one input taken into the hash: a name longer than this is
/// the same name to the signature (hostile names stay cheap).
const PART_CAP: usize = 1024;

fn hash<'a>(scheme: &str, parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    h.update(scheme.as_bytes());
    h.update([0]);
    for p in parts {
        h.update(&p[..p.len().min(PART_CAP)]);
        h.update([0]);
    }
    let d = h.finalize();
    let mut out = format!("{scheme}:");
    for b in &d[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `sym1:` over the program, the kind and the first [`TOP_FRAMES`] names
/// given (the caller has skipped the reporting frames and the unnamed
/// ones); `None` when no name is given.
pub fn sym1<'a>(
    program: &str,
    kind: &str,
    functions: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let names: Vec<&str> = functions.into_iter().take(TOP_FRAMES).collect();
    if names.is_empty() {
        return None;
    }
    let parts = [program.as_bytes(), kind.as_bytes()]
        .into_iter()
        .chain(names.iter().map(|n| n.as_bytes()));
    Some(hash("sym1", parts))
}

/// One frame of an `addr1:` signature: the module (its build id in hex,
/// or its name when the build id is unknown) and the pc's offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleOffset {
    /// Build id (hex) or, failing that, the module's file name.
    pub module: String,
    /// The pc minus the address the module's file offset 0 is mapped at.
    pub offset: u64,
}

/// `addr1:` over the program, the kind and the first [`TOP_FRAMES`]
/// frames given; `None` when none is given.
pub fn addr1(program: &str, kind: &str, frames: &[ModuleOffset]) -> Option<String> {
    if frames.is_empty() {
        return None;
    }
    let owned: Vec<Vec<u8>> = frames
        .iter()
        .take(TOP_FRAMES)
        .map(|f| format!("{}+{:x}", f.module, f.offset).into_bytes())
        .collect();
    let parts = [program.as_bytes(), kind.as_bytes()]
        .into_iter()
        .chain(owned.iter().map(Vec::as_slice));
    Some(hash("addr1", parts))
}

/// `line1:` over a kernel report's classification and first line, each
/// number in it (decimal, or hexadecimal of 4 digits or more, with or
/// without `0x`) made `N`: the same report on another CPU, pid or address
/// is the same report.
pub fn line1(kind: &str, line: &str) -> String {
    let normal = numbers_as_n(line);
    hash("line1", [kind.as_bytes(), normal.as_bytes()])
}

/// `line` with every number made `N` (see [`line1`]).
pub fn numbers_as_n(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for word in line.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
        let (token, sep) = match word.char_indices().last() {
            Some((at, c)) if !c.is_ascii_alphanumeric() => word.split_at(at),
            _ => (word, ""),
        };
        let hex = token.strip_prefix("0x").unwrap_or(token);
        let is_number = !token.is_empty()
            && (token.bytes().all(|b| b.is_ascii_digit())
                || (!hex.is_empty()
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && (hex.len() >= 4 || token.starts_with("0x"))
                    && hex.bytes().any(|b| b.is_ascii_digit())));
        if is_number {
            out.push('N');
        } else {
            // Digits inside a word (`eth0`, `kswapd0`) are numbers too.
            let mut in_digits = false;
            for c in token.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('N');
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    out.push(c);
                }
            }
        }
        out.push_str(sep);
    }
    out
}

/// Whether `s` has the form of a signature this crate makes.
pub fn is_signature(s: &str) -> bool {
    let Some((scheme, digits)) = s.split_once(':') else {
        return false;
    };
    matches!(scheme, "sym1" | "addr1" | "line1")
        && digits.len() == 16
        && digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sym1_depends_on_every_input_and_only_the_top_frames() {
        let a = sym1("crashme", "11", ["level3", "level2", "main"]).unwrap();
        assert!(is_signature(&a), "{a}");
        assert!(a.starts_with("sym1:"));
        assert_eq!(
            a,
            sym1("crashme", "11", ["level3", "level2", "main"]).unwrap()
        );
        assert_ne!(
            a,
            sym1("crashme", "6", ["level3", "level2", "main"]).unwrap()
        );
        assert_ne!(
            a,
            sym1("other", "11", ["level3", "level2", "main"]).unwrap()
        );
        assert_ne!(
            a,
            sym1("crashme", "11", ["level4", "level2", "main"]).unwrap()
        );
        // Parts are separated: "ab","c" is not "a","bc".
        assert_ne!(
            sym1("p", "11", ["ab", "c"]).unwrap(),
            sym1("p", "11", ["a", "bc"]).unwrap()
        );
        let deep: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let other_tail: Vec<String> = (0..5)
            .map(|i| format!("f{i}"))
            .chain(["g".into()])
            .collect();
        assert_eq!(
            sym1("p", "11", deep.iter().map(String::as_str)),
            sym1("p", "11", other_tail.iter().map(String::as_str)),
            "only the top {TOP_FRAMES} frames count"
        );
        assert_eq!(sym1("p", "11", std::iter::empty()), None);
    }

    #[test]
    fn addr1_keys_on_module_and_offset() {
        let f = |m: &str, o| ModuleOffset {
            module: m.into(),
            offset: o,
        };
        let a = addr1("p", "11", &[f("ab12", 0x1139), f("ab12", 0x1160)]).unwrap();
        assert!(is_signature(&a) && a.starts_with("addr1:"));
        assert_ne!(
            a,
            addr1("p", "11", &[f("ab12", 0x1140), f("ab12", 0x1160)]).unwrap()
        );
        assert_ne!(
            a,
            addr1("p", "11", &[f("cd34", 0x1139), f("ab12", 0x1160)]).unwrap()
        );
        assert_ne!(
            a,
            addr1("q", "11", &[f("ab12", 0x1139), f("ab12", 0x1160)]).unwrap(),
            "another program"
        );
        assert_eq!(addr1("p", "11", &[]), None);
    }

    #[test]
    fn line1_treats_numbers_as_one() {
        let k = "org.clearlinux/kernel/warning";
        let a = "NETDEV WATCHDOG: CPU: 3: transmit queue 0 timed out 5000 ms";
        let b = "NETDEV WATCHDOG: CPU: 1: transmit queue 2 timed out 5344 ms";
        assert_eq!(line1(k, a), line1(k, b));
        assert_eq!(
            numbers_as_n("WARNING: kernel stack regs at 000000003432ebd5 in kswapd0:124 has bad 'bp' value 0xffff8880"),
            "WARNING: kernel stack regs at N in kswapdN:N has bad 'bp' value N"
        );
        assert_eq!(
            numbers_as_n("dead beef cafe face"),
            "dead beef cafe face",
            "words stay"
        );
        assert_ne!(
            line1(k, a),
            line1(
                k,
                "NETDEV WATCHDOG: eth0 (e1000e): transmit queue 0 timed out"
            )
        );
        assert_ne!(line1(k, a), line1("org.clearlinux/kernel/bug", a));
    }

    #[test]
    fn signatures_are_recognised() {
        assert!(is_signature("sym1:0123456789abcdef"));
        assert!(!is_signature("sym1:0123456789ABCDEF"));
        assert!(!is_signature("sym2:0123456789abcdef"));
        assert!(!is_signature("sym1:0123"));
        assert!(!is_signature("sym1"));
    }
}
