//! The notes of a core: threads and their registers (NT_PRSTATUS), the
//! signal (NT_SIGINFO), the auxiliary vector (NT_AUXV), the mapped files
//! (NT_FILE) and the process (NT_PRPSINFO). Each is bounds-checked against
//! its own size before a field is read.

use crate::core::{Core, CoreError, Machine, ReadAt, MAX_FILE_ENTRIES};

const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_SIGINFO: u32 = 0x5349_4749;
const NT_FILE: u32 = 0x4649_4c45;
/// AT_SYSINFO_EHDR: where the vDSO is mapped.
pub const AT_SYSINFO_EHDR: u64 = 33;

/// Offset of `pr_reg` in `struct elf_prstatus` (both x86_64 and aarch64).
const PR_REG: usize = 112;

/// One thread at the time of the crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thread {
    /// Its tid.
    pub tid: u32,
    /// The signal it got (`pr_cursig`).
    pub signal: u16,
    /// Program counter.
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp / x29).
    pub fp: u64,
    /// Link register (aarch64 x30; 0 on x86_64).
    pub lr: u64,
    /// Every general register in the kernel's `pr_reg` order.
    pub regs: Vec<u64>,
}

/// A file mapped into the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file, in bytes.
    pub file_offset: u64,
    /// The file's path as the kernel saw it.
    pub path: String,
}

/// Everything the notes said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Threads, in note order (the kernel writes the crashing one first).
    pub threads: Vec<Thread>,
    /// `si_signo` of the first (crashing) thread's NT_SIGINFO.
    pub signal: Option<u32>,
    /// `si_addr` of NT_SIGINFO (the faulting address for SIGSEGV/SIGBUS).
    pub fault_addr: Option<u64>,
    /// The auxiliary vector.
    pub auxv: Vec<(u64, u64)>,
    /// Mapped files.
    pub mappings: Vec<Mapping>,
    /// `pr_fname` of NT_PRPSINFO.
    pub process_name: Option<String>,
    /// `pr_psargs` of NT_PRPSINFO.
    pub args: Option<String>,
    /// `pr_pid` of NT_PRPSINFO.
    pub pid: Option<u32>,
}

impl Notes {
    /// The vDSO's address, from the auxiliary vector.
    pub fn vdso(&self) -> Option<u64> {
        self.auxv
            .iter()
            .find(|(k, _)| *k == AT_SYSINFO_EHDR)
            .map(|(_, v)| *v)
    }
}

// Fields of a slice that may be too short: None then, and None too for an
// offset so large that `o + 4` would not fit a usize.
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// Where the parts of one note lie in its segment.
#[derive(Debug, PartialEq, Eq)]
struct NoteLayout {
    ntype: u32,
    name: std::ops::Range<usize>,
    desc: std::ops::Range<usize>,
    /// Where the next note starts (past the descriptor's padding; may be
    /// past the end of the segment).
    next: usize,
}

/// The layout of the note at `off`, every part checked to lie inside
/// `data`. The sizes are 32-bit fields: added to an offset in a 32-bit
/// `usize` (wasm32) they can wrap, and a wrapped `next` that does not move
/// past `off` made the note loop spin forever; here a sum that does not
/// fit is an error, and `next` is always past `off`.
fn note_layout(data: &[u8], off: usize) -> Result<NoteLayout, CoreError> {
    let field = |at: usize| {
        off.checked_add(at)
            .and_then(|o| u32_at(data, o))
            .ok_or(CoreError::Truncated("note header"))
    };
    let (namesz, descsz, ntype) = (field(0)?, field(4)?, field(8)?);
    let past_end = |what: &str, size: u32| {
        CoreError::Malformed(format!(
            "note of type {ntype:#x} claims a {what} of {size} bytes, past the end of its segment"
        ))
    };
    let inside = |start: usize, size: u32| -> Option<usize> {
        start
            .checked_add(usize::try_from(size).ok()?)
            .filter(|&end| end <= data.len())
    };
    let name_start = off
        .checked_add(12)
        .ok_or(CoreError::Truncated("note header"))?;
    let name_end = inside(name_start, namesz).ok_or_else(|| past_end("name", namesz))?;
    let desc_start = align4(name_end)
        .filter(|&d| d <= data.len())
        .ok_or_else(|| past_end("name", namesz))?;
    let desc_end = inside(desc_start, descsz).ok_or_else(|| past_end("descriptor", descsz))?;
    // desc_end <= data.len(), far below usize::MAX: cannot fail, and at
    // least off + 12.
    let next = align4(desc_end).ok_or_else(|| past_end("descriptor", descsz))?;
    Ok(NoteLayout {
        ntype,
        name: name_start..name_end,
        desc: desc_start..desc_end,
        next,
    })
}

/// Parses every note of every PT_NOTE segment of `core`.
pub fn read<R: ReadAt + ?Sized>(core: &Core<'_, R>) -> Result<Notes, CoreError> {
    let mut notes = Notes::default();
    for data in core.note_segments()? {
        parse_into(&mut notes, &data, core.machine)?;
    }
    Ok(notes)
}

/// Parses the notes in one PT_NOTE segment into `out`.
pub fn parse_into(out: &mut Notes, data: &[u8], machine: Machine) -> Result<(), CoreError> {
    let mut off = 0usize;
    while off < data.len() {
        let note = note_layout(data, off)?;
        let name = cstr(&data[note.name]);
        if name == "CORE" || name == "LINUX" {
            parse_note(out, note.ntype, &data[note.desc], machine)?;
        }
        debug_assert!(note.next > off, "each note moves the offset forward");
        off = note.next;
    }
    Ok(())
}

fn parse_note(out: &mut Notes, ntype: u32, d: &[u8], machine: Machine) -> Result<(), CoreError> {
    let short = |what: &'static str| CoreError::Truncated(what);
    match ntype {
        NT_PRSTATUS => {
            let nregs = match machine {
                Machine::X86_64 => 27,
                Machine::Aarch64 => 34,
            };
            let regs: Vec<u64> = (0..nregs)
                .map(|i| u64_at(d, PR_REG + 8 * i))
                .collect::<Option<_>>()
                .ok_or(short("NT_PRSTATUS"))?;
            let (pc, sp, fp, lr) = match machine {
                // r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ...
                Machine::X86_64 => (regs[16], regs[19], regs[4], 0),
                // x0..x30, sp, pc, pstate
                Machine::Aarch64 => (regs[32], regs[31], regs[29], regs[30]),
            };
            out.threads.push(Thread {
                tid: u32_at(d, 32).ok_or(short("NT_PRSTATUS"))?,
                signal: u16::from_le_bytes([d[12], d[13]]),
                pc,
                sp,
                fp,
                lr,
                regs,
            });
        }
        NT_SIGINFO => {
            // One per thread, after its NT_PRSTATUS; the first thread is the
            // one that crashed, the others only show why they stopped.
            let signo = u32_at(d, 0).ok_or(short("NT_SIGINFO"))?;
            if out.signal.is_none() {
                out.signal = Some(signo);
                out.fault_addr = u64_at(d, 16);
            }
        }
        NT_AUXV => {
            for pair in d.chunks_exact(16) {
                let (k, v) = (u64_at(pair, 0).unwrap_or(0), u64_at(pair, 8).unwrap_or(0));
                if k == 0 {
                    break;
                }
                out.auxv.push((k, v));
            }
        }
        NT_PRPSINFO => {
            // x86_64 and aarch64 share this layout: fname at 40, psargs at 56.
            out.pid = u32_at(d, 24);
            out.process_name = d.get(40..56).map(cstr);
            out.args = d.get(56..136).map(cstr);
        }
        NT_FILE => {
            let count = u64_at(d, 0).ok_or(short("NT_FILE"))?;
            let page = u64_at(d, 8).ok_or(short("NT_FILE"))?;
            let claims = || {
                CoreError::Malformed(format!(
                    "NT_FILE claims {count} entries in {} bytes",
                    d.len()
                ))
            };
            // Checked before anything is allocated: each entry needs 24 bytes
            // of triple plus at least one byte of name.
            if count > MAX_FILE_ENTRIES
                || count.saturating_mul(25).saturating_add(16) > d.len() as u64
            {
                return Err(claims());
            }
            // At most MAX_FILE_ENTRIES, and its triples fit in `d`.
            let count = usize::try_from(count).map_err(|_| claims())?;
            let names_at = count
                .checked_mul(24)
                .and_then(|t| t.checked_add(16))
                .ok_or_else(claims)?;
            let mut names = d.get(names_at..).ok_or_else(claims)?.split(|&c| c == 0);
            for (i, t) in d[16..names_at].chunks_exact(24).enumerate() {
                let (start, end, pgoff) = (u64_at(t, 0), u64_at(t, 8), u64_at(t, 16));
                let (Some(start), Some(end), Some(pgoff)) = (start, end, pgoff) else {
                    return Err(short("NT_FILE"));
                };
                let file_offset = pgoff.checked_mul(page).ok_or_else(|| {
                    CoreError::Malformed(format!(
                        "NT_FILE entry {i}: page offset {pgoff} times page size {page} \
                         does not fit 64 bits"
                    ))
                })?;
                let path = names
                    .next()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .ok_or(short("NT_FILE names"))?;
                out.mappings.push(Mapping {
                    start,
                    end,
                    file_offset,
                    path,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn note(name: &str, ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        let name_bytes = format!("{name}\0");
        n.extend_from_slice(&(name_bytes.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name_bytes.as_bytes());
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    /// A small x86_64 core: one PT_NOTE with every note kind, one PT_LOAD.
    pub fn synthetic_core(machine: u16) -> Vec<u8> {
        let mut prstatus = vec![0u8; 336];
        prstatus[12..14].copy_from_slice(&11u16.to_le_bytes());
        prstatus[32..36].copy_from_slice(&4242u32.to_le_bytes());
        let reg = |i: usize, v: u64, p: &mut Vec<u8>| {
            p[112 + 8 * i..120 + 8 * i].copy_from_slice(&v.to_le_bytes())
        };
        reg(16, 0x401136, &mut prstatus); // rip
        reg(19, 0x7ffd_0000_1000, &mut prstatus); // rsp
        reg(4, 0x7ffd_0000_1010, &mut prstatus); // rbp
        let mut siginfo = vec![0u8; 128];
        siginfo[0..4].copy_from_slice(&11u32.to_le_bytes());
        siginfo[16..24].copy_from_slice(&0xdeadu64.to_le_bytes());
        let mut auxv = Vec::new();
        for (k, v) in [
            (AT_SYSINFO_EHDR, 0x7fff_f7fc_1000u64),
            (9, 0x401020),
            (0, 0),
        ] {
            auxv.extend_from_slice(&k.to_le_bytes());
            auxv.extend_from_slice(&v.to_le_bytes());
        }
        let mut psinfo = vec![0u8; 136];
        psinfo[24..28].copy_from_slice(&4242u32.to_le_bytes());
        psinfo[40..47].copy_from_slice(b"crashme");
        psinfo[56..70].copy_from_slice(b"./crashme -x 1");
        let mut file = Vec::new();
        for v in [2u64, 4096, 0x400000, 0x401000, 0, 0x401000, 0x402000, 1] {
            file.extend_from_slice(&v.to_le_bytes());
        }
        file.extend_from_slice(b"/usr/bin/crashme\0/usr/bin/crashme\0");
        let mut notes = Vec::new();
        notes.extend(note("CORE", NT_PRSTATUS, &prstatus));
        notes.extend(note("CORE", NT_PRPSINFO, &psinfo));
        notes.extend(note("CORE", NT_SIGINFO, &siginfo));
        notes.extend(note("CORE", NT_AUXV, &auxv));
        notes.extend(note("CORE", NT_FILE, &file));
        let memory = b"0123456789abcdef".repeat(4);
        let phoff = 64u64;
        let notes_off = phoff + 2 * 56;
        let mem_off = notes_off + notes.len() as u64;
        let mut c = vec![0u8; 64];
        c[..4].copy_from_slice(b"\x7fELF");
        c[4] = 2;
        c[5] = 1;
        c[6] = 1;
        c[16..18].copy_from_slice(&4u16.to_le_bytes());
        c[18..20].copy_from_slice(&machine.to_le_bytes());
        c[32..40].copy_from_slice(&phoff.to_le_bytes());
        c[54..56].copy_from_slice(&56u16.to_le_bytes());
        c[56..58].copy_from_slice(&2u16.to_le_bytes());
        let phdr = |t: u32, off: u64, vaddr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            p
        };
        c.extend(phdr(crate::core::PT_NOTE, notes_off, 0, notes.len() as u64));
        c.extend(phdr(
            crate::core::PT_LOAD,
            mem_off,
            0x7ffd_0000_1000,
            memory.len() as u64,
        ));
        c.extend(notes);
        c.extend_from_slice(&memory);
        c
    }

    #[test]
    fn every_note_kind_is_read() {
        let bytes = synthetic_core(62);
        let core = Core::open(&bytes[..]).unwrap();
        assert_eq!(core.machine, Machine::X86_64);
        let n = read(&core).unwrap();
        assert_eq!(n.threads.len(), 1);
        let t = &n.threads[0];
        assert_eq!(
            (t.tid, t.signal, t.pc, t.sp, t.fp),
            (4242, 11, 0x401136, 0x7ffd_0000_1000, 0x7ffd_0000_1010)
        );
        assert_eq!((n.signal, n.fault_addr), (Some(11), Some(0xdead)));
        assert_eq!(n.vdso(), Some(0x7fff_f7fc_1000));
        assert_eq!(n.process_name.as_deref(), Some("crashme"));
        assert_eq!(n.args.as_deref(), Some("./crashme -x 1"));
        assert_eq!(n.pid, Some(4242));
        assert_eq!(n.mappings.len(), 2);
        assert_eq!(
            n.mappings[1],
            Mapping {
                start: 0x401000,
                end: 0x402000,
                file_offset: 4096,
                path: "/usr/bin/crashme".into()
            }
        );
        let mut buf = [0u8; 4];
        core.read_memory(0x7ffd_0000_1004, &mut buf).unwrap();
        assert_eq!(&buf, b"4567");
        assert!(
            core.read_memory(0x7ffd_0000_1000 + 61, &mut buf).is_err(),
            "a byte past the dump is an error"
        );
        assert!(core.read_memory(0x1000, &mut buf).is_err());
    }

    #[test]
    fn a_core_file_on_disk_reads_the_same() {
        let path = std::env::temp_dir().join(format!("synthetic-core-{}", std::process::id()));
        std::fs::write(&path, synthetic_core(62)).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let n = read(&Core::open(&f).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(n.threads[0].pc, 0x401136);
        assert_eq!(n.mappings.len(), 2);
    }

    #[test]
    fn hostile_cores_are_refused_cleanly() {
        assert_eq!(Core::open(&[][..]).err(), Some(CoreError::NotElf));
        assert_eq!(
            Core::open(&b"not a core at all"[..]).err(),
            Some(CoreError::NotElf)
        );
        assert_eq!(
            Core::open(&synthetic_core(40)[..]).err(),
            Some(CoreError::UnsupportedMachine(40))
        );
        let good = synthetic_core(62);
        // Truncated at every length: an error or (past the notes) fewer facts, never a panic.
        for cut in 0..good.len() {
            if let Ok(c) = Core::open(&good[..cut]) {
                let _ = read(&c);
            }
        }
        // A note size pointing past the end of its segment.
        let mut b = good.clone();
        let notes_off = 64 + 2 * 56;
        b[notes_off + 4..notes_off + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let e = read(&Core::open(&b[..]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        // NT_FILE claiming billions of entries: refused before allocating.
        let mut b = good.clone();
        let file_at = b
            .windows(24)
            .position(|w| w[..8] == 2u64.to_le_bytes() && w[8..16] == 4096u64.to_le_bytes())
            .unwrap();
        b[file_at..file_at + 8].copy_from_slice(&4_000_000_000u64.to_le_bytes());
        let e = read(&Core::open(&b[..]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("NT_FILE claims 4000000000"), "{e}");
        // Program header table past the end.
        let mut b = good.clone();
        b[56..58].copy_from_slice(&60_000u16.to_le_bytes());
        assert_eq!(
            Core::open(&b[..]).err(),
            Some(CoreError::Truncated("program header table"))
        );
    }

    /// Note sizes near 2^32: in a 32-bit build (the wasm probe; run these
    /// tests with `--target i686-unknown-linux-gnu`) `offset + 12 + namesz`
    /// wrapped, and with `descsz` 0 the note loop never moved on.
    #[test]
    fn note_sizes_near_4_gib_are_errors_on_every_target() {
        for (namesz, descsz) in [
            (0xFFFF_FFF4, 0),
            (0xFFFF_FFF4, 0xFFFF_FFF0),
            (0xFFFF_FFF4, u32::MAX),
            (0xFFFF_FFF0, 0),
            (u32::MAX, u32::MAX),
            (0, 0xFFFF_FFFC),
            (4, 0xFFFF_FFF4),
        ] {
            let bytes = crate::hostile_cores::core_with_note_sizes(namesz, descsz);
            let e = read(&Core::open(&bytes[..]).unwrap()).unwrap_err();
            assert!(
                matches!(e, CoreError::Malformed(_)),
                "{namesz:#x}/{descsz:#x}: {e:?}"
            );
            assert!(
                e.to_string().contains("past the end of its segment"),
                "{namesz:#x}/{descsz:#x}: {e}"
            );
        }
        let bytes = crate::hostile_cores::core_with_overflowing_note();
        assert!(read(&Core::open(&bytes[..]).unwrap()).is_err());
        // Offsets whose header would end past usize::MAX.
        let data = [0u8; 64];
        for off in [usize::MAX, usize::MAX - 3, usize::MAX - 11] {
            assert_eq!(
                note_layout(&data, off),
                Err(CoreError::Truncated("note header"))
            );
        }
    }

    #[test]
    fn nt_file_offsets_past_2_pow_64_are_errors() {
        let mut b = synthetic_core(62);
        let file_at = b
            .windows(24)
            .position(|w| w[..8] == 2u64.to_le_bytes() && w[8..16] == 4096u64.to_le_bytes())
            .unwrap();
        // Page size 2^63, second entry at page 2.
        b[file_at + 8..file_at + 16].copy_from_slice(&(1u64 << 63).to_le_bytes());
        let pgoff = file_at + 16 + 24 + 16;
        b[pgoff..pgoff + 8].copy_from_slice(&2u64.to_le_bytes());
        let e = read(&Core::open(&b[..]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("NT_FILE entry 1"), "{e}");
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let good = synthetic_core(62);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len();
                b[i] = (state >> 32) as u8;
            }
            if let Ok(c) = Core::open(&b[..]) {
                let _ = read(&c);
            }
        }
    }

    #[test]
    fn reads_at_the_top_of_the_address_space_are_errors() {
        let bytes = synthetic_core(62);
        let core = Core::open(&bytes[..]).unwrap();
        let mut buf = [0u8; 16];
        for addr in [u64::MAX, u64::MAX - 8, u64::MAX - 15] {
            assert!(core.read_memory(addr, &mut buf).is_err(), "{addr:#x}");
        }
    }
}
