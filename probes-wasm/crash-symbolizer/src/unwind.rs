//! Walking a thread's stack in a core: call frame information first
//! (`.eh_frame`, `.debug_frame`; the vDSO's read from core memory), signal
//! trampolines by their code, then frame pointers, then a stack scan that
//! accepts only return addresses just after a call instruction inside a
//! known function. Every frame says how it was found. Every read is checked
//! and the walk is bounded, so a hostile core ends it with an error, never
//! a hang.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, Evaluation,
    EvaluationResult, FrameDescriptionEntry, LittleEndian, Location, Register, RegisterRule,
    UnwindContext, UnwindSection, UnwindTableRow, Value,
};

use crate::core::{Core, Machine, ReadAt};
use crate::modules::{Loaded, Modules};
use crate::notes::Thread;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// How a frame was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The thread's registers (frame #0).
    Context,
    /// Call frame information.
    Cfi,
    /// The kernel's signal frame, below a signal trampoline.
    Signal,
    /// The frame-pointer chain.
    FramePointer,
    /// A return address found by scanning the stack.
    Scan,
}

impl How {
    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            How::Context => "context",
            How::Cfi => "cfi",
            How::Signal => "signal frame",
            How::FramePointer => "frame pointer",
            How::Scan => "stack scan",
        }
    }
}

/// One physical frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// Program counter (a return address for callers).
    pub pc: u64,
    /// How it was found.
    pub how: How,
    /// The pc is the faulting or interrupted instruction itself (frame #0,
    /// a frame interrupted by a signal), so it is looked up as is rather
    /// than at pc-1.
    pub exact: bool,
}

impl RawFrame {
    /// The address to look up: pc-1 for a return address, so a call that
    /// ends a function or an inlined block is attributed to its caller.
    pub fn lookup_pc(&self) -> u64 {
        if self.exact {
            self.pc
        } else {
            self.pc.saturating_sub(1)
        }
    }
}

/// The result of walking one thread.
#[derive(Debug, Default)]
pub struct Unwound {
    /// Frames, innermost first.
    pub frames: Vec<RawFrame>,
    /// Why the walk stopped early, if it did not reach the stack's end.
    pub error: Option<String>,
    /// The frame limit was reached with more frames to go.
    pub truncated: bool,
}

/// Registers by DWARF number; `None` is unknown.
#[derive(Clone, Debug)]
struct Regs {
    r: [Option<u64>; 33],
    pc: u64,
}

struct Arch {
    ra: u16,
    sp: u16,
    fp: u16,
}

const X86_64: Arch = Arch {
    ra: 16,
    sp: 7,
    fp: 6,
};
const AARCH64: Arch = Arch {
    ra: 30,
    sp: 31,
    fp: 29,
};

/// Most words scanned above a frame that nothing else could unwind.
const SCAN_WORDS: u64 = 1024;
/// Most DWARF expression operations evaluated per expression.
const MAX_EXPR_OPS: u32 = 1000;

impl Regs {
    fn get(&self, r: u16) -> Option<u64> {
        self.r.get(usize::from(r)).copied().flatten()
    }
    fn set(&mut self, r: u16, v: Option<u64>) {
        if let Some(slot) = self.r.get_mut(usize::from(r)) {
            *slot = v;
        }
    }

    fn from_thread(t: &Thread, machine: Machine) -> Regs {
        let mut r = [None; 33];
        match machine {
            Machine::X86_64 => {
                // DWARF order rax rdx rcx rbx rsi rdi rbp rsp r8..r15 rip,
                // from user_regs_struct order.
                const MAP: [usize; 17] = [10, 12, 11, 5, 13, 14, 4, 19, 9, 8, 7, 6, 3, 2, 1, 0, 16];
                for (d, &u) in MAP.iter().enumerate() {
                    r[d] = t.regs.get(u).copied();
                }
            }
            Machine::Aarch64 => {
                for (d, slot) in r.iter_mut().enumerate().take(32) {
                    *slot = t.regs.get(d).copied();
                }
            }
        }
        Regs { r, pc: t.pc }
    }
}

/// Walks threads of one core.
pub struct Unwinder<'a, R: ReadAt + ?Sized> {
    core: &'a Core<'a, R>,
    modules: &'a Modules,
    arch: &'static Arch,
    machine: Machine,
    ctx: Box<UnwindContext<usize>>,
}

enum Step {
    Next(Box<Regs>, How, bool),
    End,
    NoInfo(String),
}

impl<'a, R: ReadAt + ?Sized> Unwinder<'a, R> {
    /// An unwinder over a core and its modules.
    pub fn new(core: &'a Core<'a, R>, modules: &'a Modules) -> Self {
        Unwinder {
            core,
            modules,
            arch: match core.machine {
                Machine::X86_64 => &X86_64,
                Machine::Aarch64 => &AARCH64,
            },
            machine: core.machine,
            ctx: Box::new(UnwindContext::new()),
        }
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.core.read_memory(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Walks one thread, at most `max` frames (one more is looked for, to
    /// tell a cut trace from a complete one).
    pub fn unwind(&mut self, t: &Thread, max: usize) -> Unwound {
        let mut out = Unwound::default();
        let mut regs = Regs::from_thread(t, self.machine);
        let mut frame = RawFrame {
            pc: t.pc,
            how: How::Context,
            exact: true,
        };
        let mut seen: Vec<(u64, u64)> = Vec::new();
        loop {
            if out.frames.len() == max {
                out.truncated = true;
                break;
            }
            out.frames.push(frame);
            let sp = regs.get(self.arch.sp).unwrap_or(0);
            if seen.contains(&(frame.pc, sp)) {
                out.error = Some(format!(
                    "unwinding loop: frame #{} repeats pc {:#x} and stack pointer {sp:#x}",
                    out.frames.len() - 1,
                    frame.pc
                ));
                break;
            }
            seen.push((frame.pc, sp));
            let step = match self.signal_step(&regs) {
                Some(next) => {
                    // This frame is the trampoline itself, entered by the
                    // kernel rather than called: name it at its pc.
                    if let Some(f) = out.frames.last_mut() {
                        f.exact = true;
                    }
                    Step::Next(Box::new(next), How::Signal, true)
                }
                None => match self.cfi_step(&regs, frame.lookup_pc()) {
                    Ok(s) => s,
                    Err(e) => Step::NoInfo(e),
                },
            };
            let (next, how, exact) = match step {
                Step::End => break,
                Step::Next(n, h, e) => (*n, h, e),
                Step::NoInfo(why) => {
                    if let Some(n) = self.fp_step(&regs) {
                        (n, How::FramePointer, false)
                    } else if let Some(n) = self.scan_step(&regs) {
                        (n, How::Scan, false)
                    } else {
                        out.error = Some(format!(
                            "cannot unwind past frame #{} at {:#x}: {why}",
                            out.frames.len() - 1,
                            frame.pc
                        ));
                        break;
                    }
                }
            };
            if next.pc == 0 {
                break;
            }
            let new_sp = next.get(self.arch.sp).unwrap_or(0);
            if how != How::Signal && frame.how != How::Signal && new_sp <= sp {
                out.error = Some(format!(
                    "unwinding loop: the stack pointer did not grow past frame #{} ({sp:#x} -> {new_sp:#x})",
                    out.frames.len() - 1
                ));
                break;
            }
            if self.modules.find(next.pc).is_none() {
                out.error = Some(format!(
                    "frame #{} returns to {:#x}, outside every mapping",
                    out.frames.len() - 1,
                    next.pc
                ));
                break;
            }
            frame = RawFrame {
                pc: next.pc,
                how,
                exact,
            };
            regs = next;
        }
        out
    }

    fn code(&self, addr: u64, buf: &mut [u8]) -> bool {
        if self.core.read_memory(addr, buf).is_ok() {
            return true;
        }
        let Some(m) = self.modules.find(addr) else {
            return false;
        };
        let l = self.modules.loaded(m, self.core);
        l.read_code(addr.wrapping_sub(l.bias), buf)
    }

    /// A frame whose pc is the rt_sigreturn trampoline: the interrupted
    /// registers are in the kernel's signal frame on the stack.
    fn signal_step(&self, regs: &Regs) -> Option<Regs> {
        let sp = regs.get(self.arch.sp)?;
        let mut next = Regs {
            r: [None; 33],
            pc: 0,
        };
        match self.machine {
            Machine::X86_64 => {
                // mov $15, %rax; syscall
                let mut code = [0u8; 9];
                if !self.code(regs.pc, &mut code)
                    || code != [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05]
                {
                    return None;
                }
                // The handler's return popped pretcode: sp is the ucontext;
                // gregs start at uc_mcontext (offset 40), in the order
                // r8..r15 rdi rsi rbp rbx rdx rax rcx rsp rip.
                const MAP: [usize; 17] = [13, 12, 14, 11, 9, 8, 10, 15, 0, 1, 2, 3, 4, 5, 6, 7, 16];
                let gregs = sp.checked_add(40)?;
                for (d, &g) in MAP.iter().enumerate() {
                    // sp comes from the core: checked, never wrapped.
                    next.r[d] = Some(self.word(gregs.checked_add(8 * g as u64)?)?);
                }
                next.pc = next.r[16]?;
            }
            Machine::Aarch64 => {
                // mov x8, #139; svc #0
                let mut code = [0u8; 8];
                if !self.code(regs.pc, &mut code)
                    || code != [0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4]
                {
                    return None;
                }
                // rt_sigframe: siginfo (128), then the ucontext whose
                // sigcontext (at 176) holds fault_address, x0..x30, sp, pc.
                let sc = sp.checked_add(128 + 176 + 8)?;
                for d in 0..32u64 {
                    next.r[d as usize] = Some(self.word(sc.checked_add(8 * d)?)?);
                }
                next.pc = self.word(sc.checked_add(8 * 32)?)?;
            }
        }
        Some(next)
    }

    fn cfi_step(&mut self, regs: &Regs, lookup: u64) -> Result<Step, String> {
        let m = self
            .modules
            .find(lookup)
            .ok_or_else(|| format!("{lookup:#x} is in no mapped file"))?;
        let l = self.modules.loaded(m, self.core);
        if let Some(p) = &l.problem {
            return Err(p.clone());
        }
        let svma = lookup.wrapping_sub(l.bias);
        let mut bases = BaseAddresses::default()
            .set_text(l.cfi.text.wrapping_add(l.bias))
            .set_got(l.cfi.got.wrapping_add(l.bias));
        // Section addresses are given at run time, so encoded pointers come
        // out as run-time addresses and the run-time pc is looked up.
        let mut not_found = String::from("no CFI covers it");
        if let Some((data, addr)) = &l.cfi.eh_frame {
            bases = bases.set_eh_frame(addr.wrapping_add(l.bias));
            let mut eh = EhFrame::new(data, LittleEndian);
            eh.set_address_size(8);
            let fde = match &l.cfi.eh_frame_hdr {
                Some((hdr, hdr_addr)) => {
                    bases = bases.set_eh_frame_hdr(hdr_addr.wrapping_add(l.bias));
                    let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8);
                    match parsed.as_ref().ok().and_then(|p| p.table()) {
                        Some(t) => t.fde_for_address(&eh, &bases, lookup, EhFrame::cie_from_offset),
                        None => eh.fde_for_address(&bases, lookup, EhFrame::cie_from_offset),
                    }
                }
                None => eh.fde_for_address(&bases, lookup, EhFrame::cie_from_offset),
            };
            match fde {
                Ok(fde) => return self.apply(&eh, &bases, fde, lookup, regs, &m.path),
                Err(gimli::Error::NoUnwindInfoForAddress) => {}
                Err(e) => not_found = format!("CFI of {}: {e}", m.path),
            }
        }
        if let Some(data) = &l.cfi.debug_frame {
            // .debug_frame holds link-time addresses.
            let bases = BaseAddresses::default();
            let mut df = DebugFrame::new(data, LittleEndian);
            df.set_address_size(8);
            match df.fde_for_address(&bases, svma, DebugFrame::cie_from_offset) {
                Ok(fde) => return self.apply(&df, &bases, fde, svma, regs, &m.path),
                Err(gimli::Error::NoUnwindInfoForAddress) => {}
                Err(e) => not_found = format!("CFI of {}: {e}", m.path),
            }
        }
        Err(not_found)
    }

    /// The caller's registers by the FDE's row for `addr`.
    fn apply<'d, S: UnwindSection<Slice<'d>>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        fde: FrameDescriptionEntry<Slice<'d>>,
        addr: u64,
        regs: &Regs,
        path: &str,
    ) -> Result<Step, String> {
        let signal = fde.is_signal_trampoline();
        let row: UnwindTableRow<usize> = fde
            .unwind_info_for_address(section, bases, &mut self.ctx, addr)
            .map_err(|e| format!("CFI of {path}: {e}"))?
            .clone();
        let row = &row;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => regs
                .get(register.0)
                .ok_or_else(|| format!("CFA register {} is unknown", register.0))?
                .wrapping_add_signed(*offset),
            CfaRule::Expression(e) => {
                let expr = e.get(section).map_err(|e| e.to_string())?;
                self.eval(expr.0, regs, None)?
            }
        };
        let mut next = regs.clone();
        let ra = Register(self.arch.ra);
        let read = |addr: u64| -> Result<u64, String> {
            self.word(addr)
                .ok_or_else(|| format!("cannot read the stack at {addr:#x}"))
        };
        for reg in 0..33u16 {
            let rule = row.register(Register(reg));
            // A saved register that cannot be read is lost; the return
            // address that cannot be read ends the walk with an error.
            let need = |r: Result<u64, String>| -> Result<Option<u64>, String> {
                match r {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if reg == ra.0 => Err(e),
                    Err(_) => Ok(None),
                }
            };
            let v = match rule {
                None if reg == ra.0 => {
                    // aarch64 frame #0: the return address is still in x30.
                    if self.machine == Machine::Aarch64 {
                        regs.get(reg)
                    } else {
                        None
                    }
                }
                None | Some(RegisterRule::SameValue) => regs.get(reg),
                Some(RegisterRule::Undefined) | Some(RegisterRule::Architectural) => None,
                Some(RegisterRule::Offset(o)) => need(read(cfa.wrapping_add_signed(o)))?,
                Some(RegisterRule::ValOffset(o)) => Some(cfa.wrapping_add_signed(o)),
                Some(RegisterRule::Register(r)) => regs.get(r.0),
                Some(RegisterRule::Expression(e)) => {
                    let expr = e.get(section).map_err(|e| e.to_string())?;
                    need(read(self.eval(expr.0, regs, Some(cfa))?))?
                }
                Some(RegisterRule::ValExpression(e)) => {
                    let expr = e.get(section).map_err(|e| e.to_string())?;
                    Some(self.eval(expr.0, regs, Some(cfa))?)
                }
                Some(RegisterRule::Constant(c)) => Some(c),
            };
            next.set(reg, v);
        }
        next.set(self.arch.sp, Some(cfa));
        match next.get(ra.0) {
            // The outermost frame marks its return address undefined.
            None => Ok(Step::End),
            Some(pc) => {
                next.pc = pc;
                Ok(Step::Next(Box::new(next), How::Cfi, signal))
            }
        }
    }

    fn eval(&self, bytecode: Slice<'_>, regs: &Regs, push: Option<u64>) -> Result<u64, String> {
        let encoding = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 4,
            address_size: 8,
        };
        let mut ev: Evaluation<Slice<'_>> = Evaluation::new(bytecode, encoding);
        ev.set_max_iterations(MAX_EXPR_OPS);
        if let Some(v) = push {
            ev.set_initial_value(v);
        }
        let mut state = ev.evaluate().map_err(|e| e.to_string())?;
        loop {
            state = match state {
                EvaluationResult::Complete => break,
                EvaluationResult::RequiresMemory { address, size, .. } => {
                    let mut b = [0u8; 8];
                    let n = usize::from(size).min(8);
                    self.core
                        .read_memory(address, &mut b[..n])
                        .map_err(|e| e.to_string())?;
                    ev.resume_with_memory(Value::Generic(u64::from_le_bytes(b)))
                        .map_err(|e| e.to_string())?
                }
                EvaluationResult::RequiresRegister { register, .. } => {
                    let v = regs.get(register.0).ok_or_else(|| {
                        format!("expression needs unknown register {}", register.0)
                    })?;
                    ev.resume_with_register(Value::Generic(v))
                        .map_err(|e| e.to_string())?
                }
                other => return Err(format!("unsupported CFI expression step {other:?}")),
            };
        }
        match ev.as_result().first().map(|p| &p.location) {
            Some(Location::Address { address }) => Ok(*address),
            Some(Location::Value { value }) => value.to_u64(!0).map_err(|e| e.to_string()),
            _ => Err("CFI expression gave no address".into()),
        }
    }

    /// The caller by the frame-pointer chain: saved fp at [fp], return
    /// address at [fp+8], on both architectures.
    fn fp_step(&self, regs: &Regs) -> Option<Regs> {
        let sp = regs.get(self.arch.sp)?;
        let fp = regs.get(self.arch.fp)?;
        if fp < sp || fp % 8 != 0 || fp - sp > (16 << 20) {
            return None;
        }
        let saved = self.word(fp)?;
        let ra = self.word(fp.checked_add(8)?)?;
        if !self.modules.is_code(ra, self.core) || (saved != 0 && saved <= fp) {
            return None;
        }
        let mut next = regs.clone();
        next.set(self.arch.fp, Some(saved));
        next.set(self.arch.sp, Some(fp.checked_add(16)?));
        next.set(self.arch.ra, Some(ra));
        next.pc = ra;
        Some(next)
    }

    /// The first word above sp that is a return address: inside a known
    /// function of a loaded module and just after a call instruction.
    fn scan_step(&self, regs: &Regs) -> Option<Regs> {
        let sp = regs.get(self.arch.sp)?;
        // Start above the current frame's own return slot candidates; the
        // word at sp itself is a valid candidate on x86_64 (just pushed).
        for i in 0..SCAN_WORDS {
            let slot = sp.checked_add(8 * i)?;
            let v = self.word(slot)?;
            if v == regs.pc || !self.modules.is_code(v, self.core) {
                continue;
            }
            let m = self.modules.find(v)?;
            let l: &Loaded = self.modules.loaded(m, self.core);
            if l.symbol(v.wrapping_sub(l.bias).wrapping_sub(1)).is_none() {
                continue;
            }
            if !self.after_call(v) {
                continue;
            }
            let mut next = regs.clone();
            // The caller's stack starts above the return address slot.
            next.set(self.arch.sp, Some(slot.checked_add(8)?));
            next.set(self.arch.ra, Some(v));
            next.pc = v;
            return Some(next);
        }
        None
    }

    fn after_call(&self, ra: u64) -> bool {
        match self.machine {
            Machine::X86_64 => {
                let mut b = [0u8; 7];
                let Some(start) = ra.checked_sub(7) else {
                    return false;
                };
                if !self.code(start, &mut b) {
                    return false;
                }
                // call rel32
                if b[2] == 0xe8 {
                    return true;
                }
                // call r/m64: ff /2, 2 to 7 bytes long
                (2..=7).any(|len| {
                    let i = 7 - len;
                    b[i] == 0xff && (b[i + 1] >> 3) & 7 == 2
                })
            }
            Machine::Aarch64 => {
                let mut b = [0u8; 4];
                let Some(start) = ra.checked_sub(4) else {
                    return false;
                };
                if !self.code(start, &mut b) {
                    return false;
                }
                let insn = u32::from_le_bytes(b);
                insn & 0xfc00_0000 == 0x9400_0000 || insn & 0xffff_fc1f == 0xd63f_0000
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Lookup;
    use crate::notes::Notes;

    #[test]
    fn a_looping_cfi_expression_is_cut_off() {
        let bytes = crate::notes::tests::synthetic_core(62);
        let core = Core::open(&bytes[..]).unwrap();
        let modules = Modules::new(&core, &Notes::default(), Lookup::default());
        let u = Unwinder::new(&core, &modules);
        let regs = Regs {
            r: [Some(8); 33],
            pc: 0,
        };
        // DW_OP_skip -3: jumps back onto itself forever.
        let looping = [0x2f, 0xfd, 0xff];
        let e = u
            .eval(EndianSlice::new(&looping, LittleEndian), &regs, None)
            .unwrap_err();
        assert!(e.to_lowercase().contains("iteration"), "{e}");
        // DW_OP_breg7 8: rsp + 8 = 16.
        let fine = [0x77, 0x08];
        assert_eq!(
            u.eval(EndianSlice::new(&fine, LittleEndian), &regs, None),
            Ok(16)
        );
    }
}
