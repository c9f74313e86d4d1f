//! Hostile ELF core files, made in memory. Each is a complete x86-64 core
//! (ELF header; one PT_NOTE with NT_PRSTATUS, NT_PRPSINFO, NT_SIGINFO,
//! NT_AUXV and NT_FILE; PT_LOAD segments with the dumped header page of
//! every library and a stack) that `telem-crash-handler`, `telemd` or the
//! crash-symbolizer library can be fed, built to hit one defect a security
//! review found.
//!
//! Std-only and standalone on purpose: the end-to-end crash tests
//! (`#[path = "support/hostile_cores.rs"]` in `tests/crashes.rs`) and the
//! crash-symbolizer's tests (`#[path =
//! "../../../tests/support/hostile_cores.rs"]`) include this very file,
//! so both test the same bytes.
//!
//! The process in every core: one thread ([`PID`], stopped by [`SIGNAL`]
//! in the code of library 0, which holds the entry point and so is the
//! executable), named [`PROCESS_NAME`]; library `k` is [`library_path`]`(k)`
//! at [`library_base`]`(k)`, two mappings (a header page at file offset 0,
//! whose dump carries the build id [`library_build_id`]`(k)`, then two
//! pages of code at file offset 4096); none of the files exists, so no
//! frame can be unwound past the first.
#![allow(dead_code)]

/// The crashed process's pid (and its one thread's tid).
pub const PID: u32 = 4242;
/// The signal it died of (SIGSEGV).
pub const SIGNAL: u32 = 11;
/// Its name in NT_PRPSINFO.
pub const PROCESS_NAME: &str = "hostile";
/// NT_FILE entries per library: the header page, then the code.
pub const MAPPINGS_PER_LIBRARY: usize = 2;
/// Most NT_FILE entries a core made here can have: one PT_LOAD per entry,
/// plus the PT_NOTE and the stack, must stay below PN_XNUM (0xffff).
pub const MAX_ENTRIES: usize = 0xfffe - 2;

const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_SIGINFO: u32 = 0x5349_4749;
const NT_FILE: u32 = 0x4649_4c45;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PAGE: u64 = 4096;
const STACK: u64 = 0x7ffd_0000_0000;
const STACK_SIZE: usize = 4096;

/// The path of library `k`.
pub fn library_path(k: usize) -> String {
    format!("/usr/lib/hostile/lib{k:05}.so")
}

/// Where library `k` is mapped (its header page; its code follows).
pub fn library_base(k: usize) -> u64 {
    0x7f00_0000_0000 + 0x4000 * k as u64
}

/// One past the last address of library `k`.
pub fn library_end(k: usize) -> u64 {
    library_base(k) + 3 * PAGE
}

/// The GNU build id in the dumped headers of library `k`.
pub fn library_build_id(k: usize) -> [u8; 20] {
    let mut id = *b"hostile-core-lib\0\0\0\0";
    id[16..].copy_from_slice(&(k as u32).to_be_bytes());
    id
}

/// How many libraries `n` NT_FILE entries describe.
pub fn library_count(n: usize) -> usize {
    n.div_ceil(MAPPINGS_PER_LIBRARY)
}

/// Where the thread stopped: in library 0's code, which holds the entry
/// point too.
pub fn crash_pc() -> u64 {
    library_base(0) + PAGE + 0x100
}

/// A core whose NT_FILE note has `n` entries (at most [`MAX_ENTRIES`]),
/// each with its PT_LOAD segment as the kernel dumps them: the header page
/// of each library (`n / 2` libraries, one more if `n` is odd), and an
/// empty segment for its code. Grouping the mappings into modules, and
/// looking up a segment per module, was quadratic: 64,000 entries took
/// the symbolizer past its 10 s deadline.
pub fn core_with_nt_file_entries(n: usize) -> Vec<u8> {
    assert!(
        n <= MAX_ENTRIES,
        "{n} NT_FILE entries: at most {MAX_ENTRIES}"
    );
    Process::new(n).core()
}

/// A core whose note segment ends with a note header claiming a name of
/// `namesz` bytes and a descriptor of `descsz` bytes, after a valid set of
/// notes (two NT_FILE entries).
pub fn core_with_note_sizes(namesz: u32, descsz: u32) -> Vec<u8> {
    let mut p = Process::new(MAPPINGS_PER_LIBRARY);
    let mut header = Vec::new();
    for v in [namesz, descsz, NT_FILE] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    p.extra_note = header;
    p.core()
}

/// A core with a note whose `namesz` is 0xFFFFFFF4 and `descsz` 0: in a
/// 32-bit build, `offset + 12 + namesz` wrapped back to the note's own
/// offset, so the note loop never moved on and the wasm probe spun until
/// its deadline (a 64-bit build saw a size past the end). It must be
/// refused, as "past the end of its segment".
pub fn core_with_overflowing_note() -> Vec<u8> {
    core_with_note_sizes(0xFFFF_FFF4, 0)
}

/// A core whose stack segment runs past the top of the address space
/// (`vaddr + filesz` > 2^64), the thread's stack pointer inside it: the
/// segment lookup added the two unchecked. It must be refused, as "past
/// the end of the address space".
pub fn core_with_wrapping_segment() -> Vec<u8> {
    let mut p = Process::new(MAPPINGS_PER_LIBRARY);
    p.stack = 0xFFFF_FFFF_FFFF_F000;
    p.stack_size = 2 * STACK_SIZE;
    p.core()
}

/// The crashed process a core describes.
struct Process {
    entries: usize,
    stack: u64,
    stack_size: usize,
    /// Bytes appended to the note segment.
    extra_note: Vec<u8>,
}

/// One PT_LOAD: `data` dumped, `memsz` mapped, at `vaddr`.
struct Segment {
    vaddr: u64,
    memsz: u64,
    flags: u32,
    data: Vec<u8>,
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// A note: header, name and descriptor, each padded to 4 bytes.
fn note(name: &str, ntype: u32, desc: &[u8]) -> Vec<u8> {
    let name = format!("{name}\0");
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ntype.to_le_bytes());
    n.extend_from_slice(name.as_bytes());
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

/// A 64-bit program header.
fn phdr(p_type: u32, flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
    let mut p = vec![0u8; 56];
    put(&mut p, 0, &p_type.to_le_bytes());
    put(&mut p, 4, &flags.to_le_bytes());
    put(&mut p, 8, &offset.to_le_bytes());
    put(&mut p, 16, &vaddr.to_le_bytes());
    put(&mut p, 32, &filesz.to_le_bytes());
    put(&mut p, 40, &memsz.to_le_bytes());
    put(
        &mut p,
        48,
        &(if p_type == PT_LOAD { PAGE } else { 4 }).to_le_bytes(),
    );
    p
}

/// A 64-bit little-endian x86-64 ELF header of type `e_type`.
fn elf_header(e_type: u16, phnum: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    put(&mut h, 0, b"\x7fELF\x02\x01\x01");
    put(&mut h, 16, &e_type.to_le_bytes());
    put(&mut h, 18, &62u16.to_le_bytes());
    put(&mut h, 20, &1u32.to_le_bytes());
    put(&mut h, 32, &64u64.to_le_bytes());
    put(&mut h, 52, &64u16.to_le_bytes());
    put(&mut h, 54, &56u16.to_le_bytes());
    put(&mut h, 56, &phnum.to_le_bytes());
    h
}

/// The first bytes of library `k` as mapped: ELF header, a PT_LOAD and a
/// PT_NOTE holding the GNU build id.
fn library_header(k: usize) -> Vec<u8> {
    let mut h = elf_header(3, 2);
    h.extend(phdr(PT_LOAD, 5, 0, 0, 3 * PAGE, 3 * PAGE));
    let build_id = note("GNU", 3, &library_build_id(k));
    let note_at = (h.len() + 56) as u64;
    let size = build_id.len() as u64;
    h.extend(phdr(PT_NOTE, 4, note_at, note_at, size, size));
    h.extend(build_id);
    h
}

impl Process {
    fn new(entries: usize) -> Process {
        Process {
            entries,
            stack: STACK,
            stack_size: STACK_SIZE,
            extra_note: Vec::new(),
        }
    }

    fn notes(&self) -> Vec<u8> {
        let mut prstatus = vec![0u8; 336];
        put(&mut prstatus, 0, &SIGNAL.to_le_bytes());
        put(&mut prstatus, 12, &(SIGNAL as u16).to_le_bytes());
        put(&mut prstatus, 32, &PID.to_le_bytes());
        let reg = |p: &mut Vec<u8>, i: usize, v: u64| put(p, 112 + 8 * i, &v.to_le_bytes());
        reg(&mut prstatus, 16, crash_pc()); // rip
        reg(&mut prstatus, 19, self.stack + 0x100); // rsp
        let mut psinfo = vec![0u8; 136];
        put(&mut psinfo, 24, &PID.to_le_bytes());
        put(&mut psinfo, 40, PROCESS_NAME.as_bytes());
        put(&mut psinfo, 56, PROCESS_NAME.as_bytes());
        let mut siginfo = vec![0u8; 128];
        put(&mut siginfo, 0, &SIGNAL.to_le_bytes());
        let mut auxv = Vec::new();
        // AT_PAGESZ, AT_ENTRY, AT_NULL
        for (k, v) in [(6, PAGE), (9, crash_pc()), (0, 0)] {
            auxv.extend_from_slice(&u64::to_le_bytes(k));
            auxv.extend_from_slice(&u64::to_le_bytes(v));
        }
        let mut file = Vec::new();
        file.extend_from_slice(&(self.entries as u64).to_le_bytes());
        file.extend_from_slice(&PAGE.to_le_bytes());
        for (start, end, pgoff) in self.mappings() {
            for v in [start, end, pgoff] {
                file.extend_from_slice(&v.to_le_bytes());
            }
        }
        for i in 0..self.entries {
            file.extend_from_slice(library_path(i / MAPPINGS_PER_LIBRARY).as_bytes());
            file.push(0);
        }
        let mut notes = note("CORE", NT_PRSTATUS, &prstatus);
        notes.extend(note("CORE", NT_PRPSINFO, &psinfo));
        notes.extend(note("CORE", NT_SIGINFO, &siginfo));
        notes.extend(note("CORE", NT_AUXV, &auxv));
        notes.extend(note("CORE", NT_FILE, &file));
        notes.extend_from_slice(&self.extra_note);
        notes
    }

    /// (start, end, page offset) of each NT_FILE entry.
    fn mappings(&self) -> impl Iterator<Item = (u64, u64, u64)> {
        (0..self.entries).map(|i| {
            let base = library_base(i / MAPPINGS_PER_LIBRARY);
            if i % MAPPINGS_PER_LIBRARY == 0 {
                (base, base + PAGE, 0)
            } else {
                (base + PAGE, base + 3 * PAGE, 1)
            }
        })
    }

    fn segments(&self) -> Vec<Segment> {
        let mut segs: Vec<Segment> = self
            .mappings()
            .enumerate()
            .map(|(i, (start, end, pgoff))| Segment {
                vaddr: start,
                memsz: end - start,
                flags: if pgoff == 0 { 4 } else { 5 },
                data: if pgoff == 0 {
                    library_header(i / MAPPINGS_PER_LIBRARY)
                } else {
                    Vec::new()
                },
            })
            .collect();
        segs.push(Segment {
            vaddr: self.stack,
            memsz: self.stack_size as u64,
            flags: 6,
            data: vec![0; self.stack_size],
        });
        segs
    }

    fn core(&self) -> Vec<u8> {
        let notes = self.notes();
        let segs = self.segments();
        let phnum = u16::try_from(1 + segs.len()).expect("fewer than 0xffff segments");
        let mut core = elf_header(4, phnum);
        let mut offset = 64 + 56 * u64::from(phnum);
        core.extend(phdr(PT_NOTE, 0, offset, 0, notes.len() as u64, 0));
        offset += notes.len() as u64;
        for s in &segs {
            let size = s.data.len() as u64;
            core.extend(phdr(PT_LOAD, s.flags, offset, s.vaddr, size, s.memsz));
            offset += size;
        }
        core.extend(notes);
        for s in segs {
            core.extend(s.data);
        }
        core
    }
}
