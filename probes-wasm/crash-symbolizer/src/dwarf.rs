//! Source lines and inlined calls from DWARF, parsing only the compile
//! units frames land in. `addr2line` builds its index by parsing every
//! unit of a file; a distribution's libc has well over a thousand, and that
//! parse cost more than all the rest of a crash. `.debug_aranges` says
//! which unit covers an address, so a context is built for just that unit
//! (its bytes sliced out of `.debug_info`). A unit whose abbreviations
//! refer across units (`DW_FORM_ref_addr`, dwz's alternate-file forms,
//! type signatures) cannot be read alone; for those, and for files without
//! `.debug_aranges`, the whole-file context is used.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use gimli::{Reader, SectionId};

use crate::modules::Rd;

type Ctx = addr2line::Context<Rd>;

/// One frame of a lookup: function (raw name), file, line.
pub type SourceFrame = (Option<String>, Option<String>, Option<u32>);

/// The DWARF of one file.
pub struct DwarfIndex {
    sections: HashMap<SectionId, Rd>,
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
    pub fn new(mut load: impl FnMut(SectionId) -> Option<Rd>) -> Option<DwarfIndex> {
        let sections: HashMap<SectionId, Rd> = SECTIONS
            .iter()
            .filter_map(|&id| Some((id, load(id)?)))
            .collect();
        if sections
            .get(&SectionId::DebugInfo)
            .is_none_or(|s| s.is_empty())
        {
            return None;
        }
        let mut idx = DwarfIndex {
            sections,
            aranges: Vec::new(),
            units: RefCell::new(HashMap::new()),
            full: OnceCell::new(),
        };
        idx.aranges = idx.read_aranges().unwrap_or_default();
        Some(idx)
    }

    fn dwarf(&self, info: Option<Rd>) -> gimli::Dwarf<Rd> {
        let get = |id: SectionId| -> Result<Rd, gimli::Error> {
            if id == SectionId::DebugInfo {
                if let Some(i) = &info {
                    return Ok(i.clone());
                }
            }
            Ok(self.sections.get(&id).cloned().unwrap_or_else(empty))
        };
        gimli::Dwarf::load(get).expect("loading from memory cannot fail")
    }

    fn read_aranges(&self) -> Result<Vec<(u64, u64, usize)>, gimli::Error> {
        let d = self.dwarf(None);
        let mut out = Vec::new();
        let mut headers = d.debug_aranges.headers();
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
            .get_or_init(|| addr2line::Context::from_dwarf(self.dwarf(None)).ok())
            .as_ref()
    }

    /// A context over one unit, or None when it cannot stand alone.
    fn unit_context(&self, offset: usize) -> Option<Ctx> {
        let d = self.dwarf(None);
        let header = d
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(offset))
            .ok()?;
        if refers_across_units(&self.sections[&SectionId::DebugAbbrev], &header)? {
            return None;
        }
        let len = header.length_including_self();
        let mut info = self.sections[&SectionId::DebugInfo].clone();
        info.skip(offset).ok()?;
        info.truncate(len).ok()?;
        addr2line::Context::from_dwarf(self.dwarf(Some(info))).ok()
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
    out
}

/// Whether the unit's abbreviation table uses a form that points outside
/// the unit. Read from the raw table: (code, tag, children, (attr, form
/// [, implicit const])* 0 0)* 0. None when the table is malformed.
fn refers_across_units(abbrev: &Rd, header: &gimli::UnitHeader<Rd>) -> Option<bool> {
    const CROSS: [u64; 6] = [0x10, 0x1c, 0x20, 0x24, 0x1f20, 0x1f21];
    let mut r = abbrev.clone();
    r.skip(header.debug_abbrev_offset().0).ok()?;
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
