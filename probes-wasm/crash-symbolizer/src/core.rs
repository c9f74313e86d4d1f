//! Reading an ELF core file that may be hostile or broken: every read is a
//! bounded seek-and-read of exactly the bytes asked for (a missing byte is
//! an error, never a zero), every count and size from the file is checked
//! against what the file can hold before anything is allocated.

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
        let table_len = u64::from(phnum) * 56;
        if phoff.checked_add(table_len).is_none_or(|end| end > r.len()) {
            return Err(CoreError::Truncated("program header table"));
        }
        let mut table = vec![0u8; table_len as usize];
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
            .collect();
        Ok(Core { r, machine, phdrs })
    }

    /// Reads `buf.len()` bytes of process memory at `addr` from the dumped
    /// segments; fails if any byte was not dumped.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), CoreError> {
        let len = buf.len() as u64;
        let seg = self
            .phdrs
            .iter()
            .find(|p| {
                p.p_type == PT_LOAD
                    && addr >= p.vaddr
                    && addr
                        .checked_add(len)
                        .is_some_and(|e| e <= p.vaddr + p.filesz)
            })
            .ok_or_else(|| {
                CoreError::Malformed(format!("address {addr:#x} (+{len}) is not in the core"))
            })?;
        self.r
            .read_exact_at(seg.offset + (addr - seg.vaddr), buf)
            .map_err(|_| CoreError::Truncated("memory segment"))
    }

    /// Parses every note of every PT_NOTE segment.
    pub fn notes(&self) -> Result<crate::notes::Notes, CoreError> {
        let mut total = 0u64;
        let mut notes = crate::notes::Notes::default();
        for p in self.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            total = total.saturating_add(p.filesz);
            if total > MAX_NOTES_BYTES {
                return Err(CoreError::Malformed(format!(
                    "more than {MAX_NOTES_BYTES} bytes of notes"
                )));
            }
            if p.offset
                .checked_add(p.filesz)
                .is_none_or(|end| end > self.r.len())
            {
                return Err(CoreError::Truncated("note segment"));
            }
            let mut data = vec![0u8; p.filesz as usize];
            self.r
                .read_exact_at(p.offset, &mut data)
                .map_err(|_| CoreError::Truncated("note segment"))?;
            crate::notes::parse_into(&mut notes, &data, self.machine)?;
        }
        Ok(notes)
    }
}
