//! Reading an ELF core file that may be hostile or broken: every read is a
//! bounded seek-and-read of exactly the bytes asked for (a missing byte is
//! an error, never a zero), every count and size from the file is checked
//! against what the file can hold before anything is allocated.
//!
//! Every offset, size and count taken from the file is added, multiplied
//! and converted with checked operations (`checked_add`, `try_from`), never
//! `+` or `as`: the probe runs as wasm32, where `usize` has 32 bits, so a
//! sum that cannot overflow in a native 64-bit test can wrap there (and a
//! wrapped note offset made the note loop spin until the deadline). A value
//! that does not fit is a [`CoreError`], on every target.
//!
//! Address lookups go through an index of the PT_LOAD segments sorted once
//! by address, so each costs O(log n): a core may hold 65,000 segments and
//! its analysis makes a lookup per module and per stack word.

use std::fmt;

/// Exact reads at an offset, from a file or a buffer; the core is never
/// loaded whole. (A file's cursor moves; read from one thread at a time.)
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails if any byte is missing.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Total length.
    fn len(&self) -> u64;
    /// Whether it holds no byte.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        // Seek + read on `&File`: portable to wasm32-wasip2, where the
        // positional-read extension is not stable.
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
    fn len(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "read past the end of the core",
    )
}

/// Most program headers accepted (a real core has one per mapping).
pub const MAX_PHDRS: u16 = 65_000;
/// Most bytes of PT_NOTE data read in all.
pub const MAX_NOTES_BYTES: u64 = 64 << 20;
/// Most NT_FILE entries accepted.
pub const MAX_FILE_ENTRIES: u64 = 1 << 20;

/// Why a core cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum CoreError {
    /// Fewer bytes than a structure needs.
    Truncated(&'static str),
    /// Not an ELF file.
    NotElf,
    /// ELF, but not a 64-bit little-endian core.
    NotCore(String),
    /// A machine this reader does not unwind.
    UnsupportedMachine(u16),
    /// A header or note field is out of bounds.
    Malformed(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Truncated(what) => write!(f, "core is truncated: {what} is incomplete"),
            CoreError::NotElf => f.write_str("not an ELF file"),
            CoreError::NotCore(why) => write!(f, "not a 64-bit little-endian core: {why}"),
            CoreError::UnsupportedMachine(m) => {
                write!(f, "unsupported machine {m} (x86_64 and aarch64 are)")
            }
            CoreError::Malformed(why) => write!(f, "malformed core: {why}"),
        }
    }
}

impl std::error::Error for CoreError {}

/// The CPU the core comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// EM_X86_64.
    X86_64,
    /// EM_AARCH64.
    Aarch64,
}

/// One program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Phdr {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// PT_LOAD.
pub const PT_LOAD: u32 = 1;
/// PT_NOTE.
pub const PT_NOTE: u32 = 4;

/// A core file's header and program headers.
pub struct Core<'r, R: ReadAt + ?Sized> {
    r: &'r R,
    /// The CPU.
    pub machine: Machine,
    /// Program headers.
    pub phdrs: Vec<Phdr>,
    loads: LoadIndex,
}

/// Counts the steps that address lookups and module grouping take, so
/// tests can bound the work a hostile core causes without timing anything
/// (a timed test is flaky on a loaded machine). Compiled to nothing
/// outside `cfg(test)`.
pub(crate) mod work {
    #[cfg(test)]
    thread_local! {
        static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// One step: one segment or module looked at.
    #[inline(always)]
    pub(crate) fn step() {
        #[cfg(test)]
        STEPS.with(|s| s.set(s.get() + 1));
    }

    /// The steps counted on this thread since the last call.
    #[cfg(test)]
    pub(crate) fn take() -> u64 {
        STEPS.with(|s| s.replace(0))
    }
}

/// A PT_LOAD segment's dumped bytes: addresses `[start, end)` are at
/// `offset` in the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dumped {
    start: u64,
    end: u64,
    offset: u64,
}

/// The PT_LOAD segments sorted by start address, for lookups in O(log n):
/// the linear scan this replaced made a core with tens of thousands of
/// segments (one per mapping) take the probe past its deadline.
#[derive(Debug)]
struct LoadIndex {
    /// Sorted by `start`; segments with the same start stay in program
    /// header order.
    segs: Vec<Dumped>,
    /// `reach[i]`: the index in `segs[..=i]` of the segment that ends last
    /// (the first such one on ties). Among the segments starting at or
    /// below an address, that one holds a range from the address if any
    /// does, so overlapping segments (never in a kernel's or gdb's core)
    /// still cost one binary search.
    reach: Vec<usize>,
}

impl LoadIndex {
    /// Indexes the PT_LOAD headers; a segment whose addresses or file
    /// offsets would run past 2^64 is an error (no real core has one, and
    /// reading it would need wrapping arithmetic).
    fn new(phdrs: &[Phdr]) -> Result<LoadIndex, CoreError> {
        let mut segs = Vec::new();
        for p in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            let end = p.vaddr.checked_add(p.filesz);
            let file_end = p.offset.checked_add(p.filesz);
            let (Some(end), Some(_)) = (end, file_end) else {
                return Err(CoreError::Malformed(format!(
                    "PT_LOAD of {:#x} bytes at address {:#x}, file offset {:#x}, \
                     runs past the end of the address space",
                    p.filesz, p.vaddr, p.offset
                )));
            };
            segs.push(Dumped {
                start: p.vaddr,
                end,
                offset: p.offset,
            });
        }
        // Stable: program header order decides among equal starts.
        segs.sort_by_key(|s| s.start);
        let mut reach = Vec::with_capacity(segs.len());
        let mut best = 0;
        for (i, s) in segs.iter().enumerate() {
            if s.end > segs[best].end {
                best = i;
            }
            reach.push(best);
        }
        Ok(LoadIndex { segs, reach })
    }

    /// A segment holding every address of `[addr, end)`, if one does.
    /// When only one does (always, for a non-empty range in the disjoint
    /// segments of a real core) it is that one, as the scan in program
    /// header order this replaced found.
    fn find(&self, addr: u64, end: u64) -> Option<&Dumped> {
        let below = self.segs.partition_point(|s| {
            work::step();
            s.start <= addr
        });
        let s = &self.segs[*self.reach.get(below.checked_sub(1)?)?];
        (end <= s.end).then_some(s)
    }
}

// Little-endian fields of a buffer the caller has sized (panics otherwise).
pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl<'r, R: ReadAt + ?Sized> Core<'r, R> {
    /// Reads and checks the ELF header and the program header table.
    pub fn open(r: &'r R) -> Result<Self, CoreError> {
        let mut eh = [0u8; 64];
        if r.len() < 4 {
            return Err(CoreError::NotElf);
        }
        r.read_exact_at(0, &mut eh[..4])
            .map_err(|_| CoreError::NotElf)?;
        if &eh[..4] != b"\x7fELF" {
            return Err(CoreError::NotElf);
        }
        r.read_exact_at(0, &mut eh)
            .map_err(|_| CoreError::Truncated("ELF header"))?;
        if eh[4] != 2 {
            return Err(CoreError::NotCore("not 64-bit".into()));
        }
        if eh[5] != 1 {
            return Err(CoreError::NotCore("not little-endian".into()));
        }
        let e_type = u16_at(&eh, 16);
        if e_type != 4 {
            return Err(CoreError::NotCore(format!(
                "ELF type {e_type}, not ET_CORE"
            )));
        }
        let machine = match u16_at(&eh, 18) {
            62 => Machine::X86_64,
            183 => Machine::Aarch64,
            m => return Err(CoreError::UnsupportedMachine(m)),
        };
        let phoff = u64_at(&eh, 32);
        let phentsize = u16_at(&eh, 54);
        let phnum = u16_at(&eh, 56);
        if phentsize != 56 {
            return Err(CoreError::Malformed(format!(
                "program header size {phentsize}, expected 56"
            )));
        }
        if phnum > MAX_PHDRS {
            return Err(CoreError::Malformed(format!("{phnum} program headers")));
        }
        // At most 65,000 * 56 bytes: fits a 32-bit usize.
        let table_len = usize::from(phnum) * 56;
        let fits = u64::try_from(table_len)
            .ok()
            .and_then(|len| phoff.checked_add(len))
            .is_some_and(|end| end <= r.len());
        if !fits {
            return Err(CoreError::Truncated("program header table"));
        }
        let mut table = vec![0u8; table_len];
        r.read_exact_at(phoff, &mut table)
            .map_err(|_| CoreError::Truncated("program header table"))?;
        let phdrs = table
            .chunks_exact(56)
            .map(|p| Phdr {
                p_type: u32_at(p, 0),
                flags: u32_at(p, 4),
                offset: u64_at(p, 8),
                vaddr: u64_at(p, 16),
                filesz: u64_at(p, 32),
                memsz: u64_at(p, 40),
            })
            .collect::<Vec<Phdr>>();
        let loads = LoadIndex::new(&phdrs)?;
        Ok(Core {
            r,
            machine,
            phdrs,
            loads,
        })
    }

    /// Reads `buf.len()` bytes of process memory at `addr` from the dumped
    /// segments; fails if any byte was not dumped.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), CoreError> {
        let not_in_core = || {
            CoreError::Malformed(format!(
                "address {addr:#x} (+{}) is not in the core",
                buf.len()
            ))
        };
        let end = u64::try_from(buf.len())
            .ok()
            .and_then(|len| addr.checked_add(len))
            .ok_or_else(not_in_core)?;
        let seg = self.loads.find(addr, end).ok_or_else(not_in_core)?;
        // In range: the index checked offset + size when it was built.
        let at = seg
            .offset
            .checked_add(addr - seg.start)
            .ok_or(CoreError::Truncated("memory segment"))?;
        self.r
            .read_exact_at(at, buf)
            .map_err(|_| CoreError::Truncated("memory segment"))
    }

    /// The bytes of every PT_NOTE segment, in order, at most
    /// `MAX_NOTES_BYTES` in all (`notes.rs` parses them).
    pub fn note_segments(&self) -> Result<Vec<Vec<u8>>, CoreError> {
        let mut total = 0u64;
        let mut segments = Vec::new();
        for p in self.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            // Bounded before the allocation below, and so small enough
            // for a 32-bit usize.
            total = total
                .checked_add(p.filesz)
                .filter(|&t| t <= MAX_NOTES_BYTES)
                .ok_or_else(|| {
                    CoreError::Malformed(format!("more than {MAX_NOTES_BYTES} bytes of notes"))
                })?;
            if p.offset
                .checked_add(p.filesz)
                .is_none_or(|end| end > self.r.len())
            {
                return Err(CoreError::Truncated("note segment"));
            }
            let size = usize::try_from(p.filesz)
                .map_err(|_| CoreError::Malformed(format!("note segment of {} bytes", p.filesz)))?;
            let mut data = vec![0u8; size];
            self.r
                .read_exact_at(p.offset, &mut data)
                .map_err(|_| CoreError::Truncated("note segment"))?;
            segments.push(data);
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vaddr: u64, filesz: u64, offset: u64) -> Phdr {
        Phdr {
            p_type: PT_LOAD,
            flags: 4,
            offset,
            vaddr,
            filesz,
            memsz: filesz,
        }
    }

    /// The lookup the index replaced: the first PT_LOAD in header order
    /// holding the whole range.
    fn scan(phdrs: &[Phdr], addr: u64, end: u64) -> Vec<Dumped> {
        phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.vaddr <= addr && end <= p.vaddr + p.filesz)
            .map(|p| Dumped {
                start: p.vaddr,
                end: p.vaddr + p.filesz,
                offset: p.offset,
            })
            .collect()
    }

    #[test]
    fn lookups_find_what_a_scan_in_header_order_found() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for round in 0..300 {
            // Even rounds: disjoint segments, in shuffled header order, as
            // in a real core; odd rounds: overlapping ones too.
            let n = next(40) as usize;
            let mut phdrs: Vec<Phdr> = Vec::new();
            let mut at = next(64);
            for i in 0..n {
                // filesz may be 0 (mapped, not dumped); memsz is not.
                let size = next(48);
                let start = if round % 2 == 0 { at } else { next(2048) };
                phdrs.push(load(start, size, 1000 * i as u64));
                at = start + size.max(1) + next(3) * 16;
            }
            for i in (1..phdrs.len()).rev() {
                let j = next(i as u64 + 1) as usize;
                phdrs.swap(i, j);
            }
            let index = LoadIndex::new(&phdrs).unwrap();
            for _ in 0..200 {
                let addr = next(2100);
                let end = addr + next(24);
                let expected = scan(&phdrs, addr, end);
                let got = index.find(addr, end);
                assert_eq!(
                    got.is_some(),
                    !expected.is_empty(),
                    "{addr}..{end} in {phdrs:?}"
                );
                if round % 2 == 0 && end > addr {
                    assert!(expected.len() <= 1);
                }
                // The only segment holding it: the same bytes are read.
                if expected.len() == 1 {
                    assert_eq!(got, expected.first(), "{addr}..{end} in {phdrs:?}");
                }
            }
        }
    }

    #[test]
    fn a_segment_past_the_top_of_the_address_space_is_refused() {
        let bytes = crate::hostile_cores::core_with_wrapping_segment();
        let e = Core::open(&bytes[..]).err().expect("refused");
        assert!(matches!(e, CoreError::Malformed(_)), "{e:?}");
        assert!(
            e.to_string().contains("past the end of the address space"),
            "{e}"
        );
        let index = LoadIndex::new(&[load(u64::MAX - 8, 8, 0)]).unwrap();
        assert!(index.find(u64::MAX - 8, u64::MAX).is_some());
        assert!(LoadIndex::new(&[load(u64::MAX - 8, 9, 0)]).is_err());
        assert!(LoadIndex::new(&[load(0, 9, u64::MAX - 8)]).is_err());
    }
}
