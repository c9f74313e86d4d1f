//! Source lines and inlined calls from DWARF, parsing only the compile
//! units frames land in. `addr2line` builds its index by parsing every
//! unit of a file; a distribution's libc has well over a thousand, and that
//! parse cost more than all the rest of a crash. `.debug_aranges` says
//! which unit covers an address, so a context is built for just that unit
//! (its bytes sliced out of `.debug_info`). A unit whose abbreviations
//! refer across units (`DW_FORM_ref_addr`, dwz's alternate-file forms,
//! type signatures) cannot be read alone; for those, and for files without
//! `.debug_aranges`, the whole-file context is used.
//!
//! Compressed sections (distributions compress debug files) are inflated
//! lazily: `.debug_info`, `.debug_abbrev` and `.debug_line` only as far as
//! the units looked at reach, since inflating was most of what remained.
//! A unit is given its own line program alone (its `DW_AT_stmt_list`
//! rebased to 0, as its abbreviation offset is), never a copy of the
//! section up to it: memory grows with the programs read, not with units
//! times the section.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use gimli::{Reader, SectionId};

/// The reader type DWARF is parsed with: owned, so a module holds its own.
pub type Rd = gimli::EndianRcSlice<gimli::LittleEndian>;

type Ctx = addr2line::Context<Rd>;

/// One frame of a lookup: function (raw name), file, line.
pub type SourceFrame = (Option<String>, Option<String>, Option<u32>);

/// A section's bytes: whole, or a zlib stream inflated on demand.
pub enum Source {
    /// Uncompressed (or already inflated).
    Whole(Rd),
    /// zlib-compressed: the stream and its inflated size.
    Zlib(Vec<u8>, usize),
}

/// A zlib section inflated as far as asked.
struct Lazy {
    input: Vec<u8>,
    total: usize,
    out: Vec<u8>,
    z: flate2::Decompress,
    /// The inflated prefix as a reader, while `out` has not grown.
    shared: Option<Rd>,
}

impl Lazy {
    /// A copy of `range`, inflating as far as it reaches; None past the
    /// end or if the stream is corrupt.
    fn bytes(&mut self, range: std::ops::Range<usize>) -> Option<Vec<u8>> {
        self.inflate(range.end)?;
        self.out.get(range).map(<[u8]>::to_vec)
    }

    /// At least `upto` bytes inflated (fewer only at the end of the
    /// section); None if the stream is corrupt.
    fn prefix(&mut self, upto: usize) -> Option<Rd> {
        self.inflate(upto)?;
        if self.shared.is_none() {
            self.shared = Some(gimli::EndianRcSlice::new(
                Rc::from(&self.out[..]),
                gimli::LittleEndian,
            ));
        }
        self.shared.clone()
    }

    fn inflate(&mut self, upto: usize) -> Option<()> {
        let want = upto.min(self.total);
        while self.out.len() < want {
            // By a quarter of what is inflated (at least 256 KiB, at most
            // the rest): growth stays amortized (each byte is copied a
            // bounded number of times), and the sandbox's memory does not
            // grow far past what is read, as doubling made it.
            let grow = (want - self.out.len())
                .max(256 << 10)
                .max(self.out.len() / 4)
                .min(self.total - self.out.len());
            self.out.reserve_exact(grow);
            let before_out = self.z.total_out();
            let at = self.z.total_in() as usize;
            self.z
                .decompress_vec(
                    &self.input[at..],
                    &mut self.out,
                    flate2::FlushDecompress::None,
                )
                .ok()?;
            if self.z.total_out() == before_out {
                return None;
            }
            self.shared = None;
        }
        Some(())
    }
}

/// The DWARF of one file.
pub struct DwarfIndex {
    sections: HashMap<SectionId, Rd>,
    lazy: RefCell<HashMap<SectionId, Lazy>>,
    /// (start, end, unit offset), sorted by start.
    aranges: Vec<(u64, u64, usize)>,
    units: RefCell<HashMap<usize, Option<Rc<Ctx>>>>,
    full: OnceCell<Option<Ctx>>,
}

const SECTIONS: [SectionId; 10] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugAranges,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
];

fn empty() -> Rd {
    gimli::EndianRcSlice::new(Rc::from(&[][..]), gimli::LittleEndian)
}

impl DwarfIndex {
    /// An index over the sections `load` gives (the ones names and lines
    /// need).
    pub fn new(mut load: impl FnMut(SectionId) -> Option<Source>) -> Option<DwarfIndex> {
        let mut sections = HashMap::new();
        let mut lazy = HashMap::new();
        for &id in &SECTIONS {
            match load(id) {
                None => {}
                Some(Source::Whole(r)) => {
                    sections.insert(id, r);
                }
                Some(Source::Zlib(input, total)) => {
                    let mut l = Lazy {
                        input,
                        total,
                        out: Vec::new(),
                        z: flate2::Decompress::new(true),
                        shared: None,
                    };
                    if matches!(
                        id,
                        SectionId::DebugInfo | SectionId::DebugAbbrev | SectionId::DebugLine
                    ) {
                        lazy.insert(id, l);
                    } else if let Some(r) = l.prefix(total) {
                        sections.insert(id, r);
                    }
                }
            }
        }
        let has_info = sections
            .get(&SectionId::DebugInfo)
            .is_some_and(|s| !s.is_empty())
            || lazy.contains_key(&SectionId::DebugInfo);
        if !has_info {
            return None;
        }
        let mut idx = DwarfIndex {
            sections,
            lazy: RefCell::new(lazy),
            aranges: Vec::new(),
            units: RefCell::new(HashMap::new()),
            full: OnceCell::new(),
        };
        idx.aranges = idx.read_aranges().unwrap_or_default();
        Some(idx)
    }

    /// A section, inflated as far as `upto` if it is lazy.
    fn section(&self, id: SectionId, upto: usize) -> Option<Rd> {
        if let Some(r) = self.sections.get(&id) {
            return Some(r.clone());
        }
        self.lazy.borrow_mut().get_mut(&id)?.prefix(upto)
    }

    /// A copy of `range` of a section.
    fn bytes(&self, id: SectionId, range: std::ops::Range<usize>) -> Option<Vec<u8>> {
        if let Some(r) = self.sections.get(&id) {
            return r.bytes().get(range).map(<[u8]>::to_vec);
        }
        self.lazy.borrow_mut().get_mut(&id)?.bytes(range)
    }

    /// `Dwarf` over the sections; `info`, `abbrev` and `line` replace
    /// those.
    fn dwarf(&self, info: Option<Rd>, abbrev: Option<Rd>, line: Option<Rd>) -> gimli::Dwarf<Rd> {
        let get = |id: SectionId| -> Result<Rd, gimli::Error> {
            let over = match id {
                SectionId::DebugInfo => &info,
                SectionId::DebugAbbrev => &abbrev,
                SectionId::DebugLine => &line,
                _ => &None,
            };
            if let Some(r) = over {
                return Ok(r.clone());
            }
            Ok(self.section(id, usize::MAX).unwrap_or_else(empty))
        };
        gimli::Dwarf::load(get).expect("loading from memory cannot fail")
    }

    fn read_aranges(&self) -> Result<Vec<(u64, u64, usize)>, gimli::Error> {
        let Some(aranges) = self.sections.get(&SectionId::DebugAranges) else {
            return Ok(Vec::new());
        };
        let aranges = gimli::DebugAranges::from(aranges.clone());
        let mut out = Vec::new();
        let mut headers = aranges.headers();
        while let Some(h) = headers.next()? {
            let unit = h.debug_info_offset().0;
            let mut entries = h.entries();
            while let Some(e) = entries.next()? {
                let r = e.range();
                if r.end > r.begin {
                    out.push((r.begin, r.end, unit));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The frames at `addr`, innermost (inlined) first.
    pub fn frames(&self, addr: u64) -> Vec<SourceFrame> {
        if self.aranges.is_empty() {
            return self.full().map_or_else(Vec::new, |c| lookup(c, addr));
        }
        let i = self.aranges.partition_point(|a| a.0 <= addr);
        let Some(&(_, end, unit)) = i.checked_sub(1).and_then(|i| self.aranges.get(i)) else {
            return Vec::new();
        };
        if addr >= end {
            return Vec::new();
        }
        let ctx = self
            .units
            .borrow_mut()
            .entry(unit)
            .or_insert_with(|| self.unit_context(unit).map(Rc::new))
            .clone();
        match ctx {
            Some(c) => lookup(&c, addr),
            None => self.full().map_or_else(Vec::new, |c| lookup(c, addr)),
        }
    }

    fn full(&self) -> Option<&Ctx> {
        self.full
            .get_or_init(|| addr2line::Context::from_dwarf(self.dwarf(None, None, None)).ok())
            .as_ref()
    }

    /// A context over one unit, or None when it cannot stand alone. Only
    /// the unit's bytes and its abbreviation table are copied out, the
    /// table then at offset 0 (the unit header is patched to match).
    fn unit_context(&self, offset: usize) -> Option<Ctx> {
        // 32-bit DWARF only (what compilers emit for user space).
        let head = self.bytes(SectionId::DebugInfo, offset..offset.checked_add(12)?)?;
        let unit_len = u32::from_le_bytes(head[0..4].try_into().ok()?);
        if unit_len >= 0xffff_fff0 {
            return None;
        }
        let version = u16::from_le_bytes(head[4..6].try_into().ok()?);
        let abbrev_field = match version {
            2..=4 => 6,
            5 => 8,
            _ => return None,
        };
        let at = u32::from_le_bytes(head[abbrev_field..abbrev_field + 4].try_into().ok()?) as usize;
        let len = 4 + unit_len as usize;
        let mut info = self.bytes(SectionId::DebugInfo, offset..offset.checked_add(len)?)?;
        info[abbrev_field..abbrev_field + 4].copy_from_slice(&0u32.to_le_bytes());
        // The abbreviation table ends where it ends: copy more until it parses.
        let mut want = 16usize << 10;
        let abbrev = loop {
            let end = at.checked_add(want)?;
            let chunk = match self.bytes(SectionId::DebugAbbrev, at..end) {
                Some(c) => c,
                None => {
                    // Near the end of the section: take what is left.
                    let total = self.section_len(SectionId::DebugAbbrev)?;
                    self.bytes(SectionId::DebugAbbrev, at..total)?
                }
            };
            let r = gimli::EndianRcSlice::new(Rc::from(chunk), gimli::LittleEndian);
            match refers_across_units(&r, 0) {
                Some(true) => return None,
                Some(false) => break r,
                None if r.len() < want => return None,
                None => want = want.checked_mul(4)?,
            }
        };
        let line = if self.lazy.borrow().contains_key(&SectionId::DebugLine) {
            // Its own program only, or no lines (never the whole section
            // inflated for one unit).
            let whole = gimli::EndianRcSlice::new(Rc::from(&info[..]), gimli::LittleEndian);
            match self.own_line_program(&whole, &abbrev)? {
                Some((at, program)) => {
                    info[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
                    Some(program)
                }
                None => Some(empty()),
            }
        } else {
            None
        };
        let info = gimli::EndianRcSlice::new(Rc::from(info), gimli::LittleEndian);
        addr2line::Context::from_dwarf(self.dwarf(Some(info), Some(abbrev), line)).ok()
    }

    /// Where the unit's `DW_AT_stmt_list` is in `info` (a 4-byte offset)
    /// and its line program, copied alone out of `.debug_line`; `Some(None)`
    /// for a unit without lines, `None` when it cannot be told.
    fn own_line_program(&self, info: &Rd, abbrev: &Rd) -> Option<Option<(usize, Rd)>> {
        let header = gimli::DebugInfo::from(info.clone()).units().next().ok()??;
        let abbrevs = header
            .abbreviations(&gimli::DebugAbbrev::from(abbrev.clone()))
            .ok()?;
        let mut raw = header.entries_raw(&abbrevs, None).ok()?;
        let root = raw.read_abbreviation().ok()??;
        for spec in root.attributes() {
            let at = raw.next_offset().0;
            let attr = raw.read_attribute(*spec).ok()?;
            if attr.name() != gimli::DW_AT_stmt_list {
                continue;
            }
            let gimli::AttributeValue::DebugLineRef(gimli::DebugLineOffset(off)) = attr.value()
            else {
                return None;
            };
            if raw.next_offset().0 - at != 4 {
                return None;
            }
            // 32-bit DWARF only, as for units.
            let len = self.bytes(SectionId::DebugLine, off..off.checked_add(4)?)?;
            let len = u32::from_le_bytes(len[..4].try_into().ok()?);
            if len >= 0xffff_fff0 {
                return None;
            }
            let end = off.checked_add(4)?.checked_add(len as usize)?;
            let program = self.bytes(SectionId::DebugLine, off..end)?;
            let program = gimli::EndianRcSlice::new(Rc::from(program), gimli::LittleEndian);
            return Some(Some((at, program)));
        }
        Some(None)
    }

    fn section_len(&self, id: SectionId) -> Option<usize> {
        if let Some(r) = self.sections.get(&id) {
            return Some(r.len());
        }
        self.lazy.borrow().get(&id).map(|l| l.total)
    }
}

fn lookup(ctx: &Ctx, addr: u64) -> Vec<SourceFrame> {
    let mut out = Vec::new();
    if let Ok(mut it) = ctx.find_frames(addr).skip_all_loads() {
        while let Ok(Some(f)) = it.next() {
            let name = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok().map(|s| s.into_owned()));
            let (file, line) = f
                .location
                .as_ref()
                .map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
            out.push((name, file, line));
        }
    }
    if out.iter().any(|f| f.1.is_some()) {
        if let Some(unit) = ctx.find_dwarf_and_unit(addr).skip_all_loads() {
            for f in &mut out {
                if let Some(legacy) = f.1.as_deref().and_then(|p| legacy_file_name(unit, p)) {
                    f.1 = Some(legacy);
                }
            }
        }
    }
    out
}

/// How the legacy probe (elfutils) named the file addr2line calls `path`,
/// when the two differ: for a file whose directory entry is relative and
/// not entry 0, addr2line puts the compilation directory in front
/// (`./csu/../sysdeps/nptl/x.h`), elfutils does not
/// (`../sysdeps/nptl/x.h`), and the legacy payload showed the latter.
/// Compares in place (no allocation per file entry): a unit's line table
/// can list thousands of files and this runs for every frame.
fn legacy_file_name(unit: gimli::UnitRef<'_, Rd>, path: &str) -> Option<String> {
    let comp_dir = unit.comp_dir.as_ref()?.to_string_lossy().ok()?;
    let rest = path.strip_prefix(comp_dir.as_ref())?;
    let rest = after_separator(&comp_dir, rest)?;
    let header = unit.line_program.as_ref()?.header();
    for file in header.file_names() {
        if file.directory_index() == 0 {
            continue;
        }
        let Some(dir) = file
            .directory(header)
            .and_then(|d| unit.attr_string(d).ok())
        else {
            continue;
        };
        let Ok(dir) = dir.to_string_lossy() else {
            continue;
        };
        if dir.is_empty() || dir.starts_with('/') {
            continue;
        }
        let Some(tail) = rest
            .strip_prefix(dir.as_ref())
            .and_then(|t| after_separator(&dir, t))
        else {
            continue;
        };
        let Ok(name) = unit.attr_string(file.path_name()) else {
            continue;
        };
        if name.to_string_lossy().is_ok_and(|n| n == tail) {
            return Some(rest.to_owned());
        }
    }
    None
}

/// What follows `prefix` in a path joined as addr2line joins: a `/` is
/// expected unless `prefix` ended with one.
fn after_separator<'a>(prefix: &str, rest: &'a str) -> Option<&'a str> {
    if prefix.ends_with('/') {
        Some(rest)
    } else {
        rest.strip_prefix('/')
    }
}

/// Whether the unit's abbreviation table uses a form that points outside
/// the unit. Read from the raw table: (code, tag, children, (attr, form
/// [, implicit const])* 0 0)* 0. None when the table is malformed.
fn refers_across_units(abbrev: &Rd, at: usize) -> Option<bool> {
    const CROSS: [u64; 6] = [0x10, 0x1c, 0x20, 0x24, 0x1f20, 0x1f21];
    let mut r = abbrev.clone();
    r.skip(at).ok()?;
    for _ in 0..100_000 {
        if r.read_uleb128().ok()? == 0 {
            return Some(false);
        }
        r.read_uleb128().ok()?;
        r.read_u8().ok()?;
        loop {
            let (attr, form) = (r.read_uleb128().ok()?, r.read_uleb128().ok()?);
            if attr == 0 && form == 0 {
                break;
            }
            if CROSS.contains(&form) {
                return Some(true);
            }
            if form == 0x21 {
                r.read_sleb128().ok()?;
            }
        }
    }
    None
}
