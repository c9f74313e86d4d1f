//! The modules of a crashed process: the executable, its libraries and the
//! vDSO, found from the core's NT_FILE note and auxiliary vector, each
//! matched to its file on disk by build id and loaded lazily (only modules
//! a frame lands in are read, and only the sections unwinding and
//! symbolization need).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::hash_map::{Entry, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache};

use crate::blocks::{Blocks, Cursor};
use crate::core::{u16_at, u32_at, u64_at, Core, ReadAt};
use crate::notes::Notes;

/// Largest section copied out of a binary or debug file; a bigger one is
/// treated as absent (a hostile file must not exhaust the probe's memory
/// on its own account).
const MAX_SECTION: u64 = 256 << 20;
/// Largest vDSO image read from core memory.
const MAX_VDSO: u64 = 1 << 20;
/// AT_ENTRY: the executable's entry point, which tells which module is the
/// executable.
const AT_ENTRY: u64 = 9;

/// Where binaries and debug files are looked for.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// Roots of debug-file trees (`/usr/lib/debug`): `ROOT/.build-id/xx/rest.debug`
    /// and `ROOT/<binary's dir>/<debuglink name>`.
    pub debug_roots: Vec<PathBuf>,
    /// Read the executable from here instead of its path in the core (the
    /// admin's `--exe`; a binary that moved since the crash).
    pub exe: Option<PathBuf>,
    /// Asked last, for the debug file of a build id that none of the
    /// above has (the host's debuginfod client, in the probe).
    pub fetch: Option<Fetch>,
}

impl Default for Lookup {
    fn default() -> Self {
        Lookup {
            debug_roots: vec![PathBuf::from("/usr/lib/debug")],
            exe: None,
            fetch: None,
        }
    }
}

/// Where a debug file missing here is asked for: a build id in, the path
/// of a file to read out (checked to carry that build id before it is
/// used).
#[derive(Clone)]
pub struct Fetch(pub std::rc::Rc<FetchFn>);

/// What [`Fetch`] calls: a build id in, a path out.
pub type FetchFn = dyn Fn(&[u8]) -> Option<PathBuf>;

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetch")
    }
}

/// One mapped object of the crashed process.
pub struct Module {
    /// Its path in the core (`[vdso]` for the vDSO).
    pub path: String,
    /// Lowest mapped address.
    pub start: u64,
    /// End of the highest mapping.
    pub end: u64,
    /// Address where file offset 0 is mapped.
    pub base: u64,
    /// The executable (holds AT_ENTRY).
    pub is_main: bool,
    /// The vDSO (no file; read from core memory).
    pub is_vdso: bool,
    /// Build id read from the ELF headers dumped in the core, if they were.
    pub core_build_id: Option<Vec<u8>>,
    loaded: OnceCell<Loaded>,
}

/// What was read of a module.
pub struct Loaded {
    /// Runtime address minus link-time address.
    pub bias: u64,
    /// Why the module's file could not be used, if it could not.
    pub problem: Option<String>,
    /// The file's own build id is the one the crashed process had mapped
    /// (both known and equal): only then may what was read of it be kept
    /// under that build id for other crashes.
    pub build_id_verified: bool,
    /// Call frame information.
    pub cfi: Cfi,
    /// Executable ranges, link-time addresses.
    pub exec: Vec<(u64, u64)>,
    code: Code,
    /// Function symbols (link-time address, size, raw name), sorted.
    pub symbols: Vec<(u64, u64, String)>,
    /// The files DWARF is read from, best first.
    pub dwarf_files: Vec<PathBuf>,
    dwarf: OnceCell<Option<crate::dwarf::DwarfIndex>>,
}

/// A module's CFI sections and the addresses pointer encodings need.
#[derive(Default)]
pub struct Cfi {
    /// `.eh_frame` data and its link-time address.
    pub eh_frame: Option<(Rc<[u8]>, u64)>,
    /// `.eh_frame_hdr` data and its link-time address.
    pub eh_frame_hdr: Option<(Rc<[u8]>, u64)>,
    /// `.debug_frame` data.
    pub debug_frame: Option<Rc<[u8]>>,
    /// `.text` address.
    pub text: u64,
    /// `.got` address.
    pub got: u64,
}

enum Code {
    None,
    /// Executable segments: (link-time address, size, file offset) read
    /// from the file on demand.
    File(Blocks<File>, Vec<(u64, u64, u64)>),
    /// The whole image (the vDSO).
    Bytes(Vec<u8>),
}

/// The modules of one core, sorted by address.
pub struct Modules {
    /// Sorted by `start`.
    pub list: Vec<Module>,
    lookup: Lookup,
}

fn empty_loaded(problem: String) -> Loaded {
    Loaded {
        bias: 0,
        problem: Some(problem),
        cfi: Cfi::default(),
        exec: Vec::new(),
        code: Code::None,
        symbols: Vec::new(),
        dwarf_files: Vec::new(),
        build_id_verified: false,
        dwarf: OnceCell::from(None),
    }
}

impl Modules {
    /// Groups the core's file mappings into modules and reads each one's
    /// build id from the dumped headers.
    ///
    /// One module per path, in the order paths first appear, spanning all
    /// of the path's mappings. Modules are found by path through a hash
    /// map, so a core with tens of thousands of mappings is grouped in
    /// linear time (a scan of the modules so far per mapping took such a
    /// core past the probe's deadline).
    pub fn new<R: ReadAt + ?Sized>(core: &Core<R>, notes: &Notes, lookup: Lookup) -> Modules {
        let entry = notes
            .auxv
            .iter()
            .find(|(k, _)| *k == AT_ENTRY)
            .map(|(_, v)| *v);
        let mut list: Vec<Module> = Vec::new();
        let mut by_path: HashMap<&str, usize> = HashMap::new();
        for m in &notes.mappings {
            if m.end <= m.start {
                continue;
            }
            crate::core::work::step();
            // Where file offset 0 would be mapped: modular on purpose, like
            // every bias (a data file can be mapped below its offset).
            let base = m.start.wrapping_sub(m.file_offset);
            match by_path.entry(&m.path) {
                Entry::Occupied(i) => {
                    let x = &mut list[*i.get()];
                    x.start = x.start.min(m.start);
                    x.end = x.end.max(m.end);
                    x.base = x.base.min(base);
                }
                Entry::Vacant(v) => {
                    v.insert(list.len());
                    list.push(Module {
                        path: m.path.clone(),
                        start: m.start,
                        end: m.end,
                        base,
                        is_main: false,
                        is_vdso: false,
                        core_build_id: None,
                        loaded: OnceCell::new(),
                    });
                }
            }
        }
        for m in &mut list {
            m.is_main = entry.is_some_and(|e| m.start <= e && e < m.end);
            m.core_build_id = build_id_from_memory(core, m.base);
        }
        if let Some(vdso) = notes.vdso() {
            if !list.iter().any(|m| m.start <= vdso && vdso < m.end) {
                let size = vdso_size(core, vdso).unwrap_or(0x2000);
                list.push(Module {
                    path: "[vdso]".into(),
                    start: vdso,
                    end: vdso.saturating_add(size),
                    base: vdso,
                    is_main: false,
                    is_vdso: true,
                    core_build_id: None,
                    loaded: OnceCell::new(),
                });
            }
        }
        list.sort_by_key(|m| m.start);
        Modules { list, lookup }
    }

    /// The module an address lies in.
    pub fn find(&self, addr: u64) -> Option<&Module> {
        let i = self.list.partition_point(|m| m.start <= addr);
        let m = self.list.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// The module, read on first use.
    pub fn loaded<'m, R: ReadAt + ?Sized>(&self, m: &'m Module, core: &Core<R>) -> &'m Loaded {
        m.loaded.get_or_init(|| {
            if m.is_vdso {
                load_vdso(core, m)
            } else {
                load_file(m, &self.lookup)
            }
        })
    }

    /// Whether `addr` is executable code of a module whose file was read.
    pub fn is_code<R: ReadAt + ?Sized>(&self, addr: u64, core: &Core<R>) -> bool {
        let Some(m) = self.find(addr) else {
            return false;
        };
        let l = self.loaded(m, core);
        let a = addr.wrapping_sub(l.bias);
        // A handful of executable sections per file: a scan is fine.
        l.exec.iter().any(|&(s, e)| s <= a && a < e)
    }

    /// The name shown in a frame line: the executable by full path,
    /// libraries by file name (as the legacy probe did).
    pub fn display_name(&self, m: &Module) -> String {
        if m.is_main || m.is_vdso {
            m.path.clone()
        } else {
            Path::new(&m.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| m.path.clone())
        }
    }
}

impl Module {
    /// Why the module's file could not be used, once it was looked at.
    pub fn problem(&self) -> Option<String> {
        self.loaded.get()?.problem.clone()
    }
}

impl Loaded {
    /// Reads code bytes at a link-time address from the module's file.
    pub fn read_code(&self, svma: u64, buf: &mut [u8]) -> bool {
        match &self.code {
            Code::None => false,
            Code::Bytes(b) => usize::try_from(svma)
                .ok()
                .and_then(|s| b.get(s..s.checked_add(buf.len())?))
                .map(|src| buf.copy_from_slice(src))
                .is_some(),
            Code::File(f, segs) => {
                // Addresses and sizes come from the file's headers: checked,
                // so a hostile binary cannot make them wrap. (A handful of
                // executable segments per file: a scan is fine.)
                let Some(end) = u64::try_from(buf.len())
                    .ok()
                    .and_then(|len| svma.checked_add(len))
                else {
                    return false;
                };
                let Some(&(addr, _, off)) = segs.iter().find(|&&(a, size, _)| {
                    a <= svma && a.checked_add(size).is_some_and(|e| end <= e)
                }) else {
                    return false;
                };
                off.checked_add(svma - addr)
                    .is_some_and(|at| f.read_exact_at(at, buf).is_ok())
            }
        }
    }

    /// The function symbol covering a link-time address.
    pub fn symbol(&self, svma: u64) -> Option<&(u64, u64, String)> {
        let i = self.symbols.partition_point(|s| s.0 <= svma);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (svma < s.0.saturating_add(s.1.max(1))).then_some(s)
    }

    /// DWARF of the module, parsed on first use.
    pub fn dwarf(&self) -> Option<&crate::dwarf::DwarfIndex> {
        self.dwarf
            .get_or_init(|| self.dwarf_files.iter().find_map(|p| load_dwarf(p)))
            .as_ref()
    }
}

/// The GNU build id of the ELF image mapped at `base`, read from core
/// memory (the kernel dumps the first page of every ELF mapping).
fn build_id_from_memory<R: ReadAt + ?Sized>(core: &Core<R>, base: u64) -> Option<Vec<u8>> {
    let mut eh = [0u8; 64];
    core.read_memory(base, &mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if phentsize != 56 || phnum == 0 || phnum > 64 {
        return None;
    }
    let mut ph = vec![0u8; 56 * phnum as usize];
    core.read_memory(base.checked_add(phoff)?, &mut ph).ok()?;
    let phdrs: Vec<&[u8]> = ph.chunks_exact(56).collect();
    let first_load = phdrs
        .iter()
        .filter(|p| u32_at(p, 0) == crate::core::PT_LOAD)
        .map(|p| u64_at(p, 16).wrapping_sub(u64_at(p, 8)))
        .min()?;
    let bias = base.wrapping_sub(first_load);
    for p in phdrs
        .iter()
        .filter(|p| u32_at(p, 0) == crate::core::PT_NOTE)
    {
        let size = u64_at(p, 32).min(4096) as usize;
        let mut notes = vec![0u8; size];
        if core
            .read_memory(bias.wrapping_add(u64_at(p, 16)), &mut notes)
            .is_err()
        {
            continue;
        }
        if let Some(id) = gnu_build_id(&notes) {
            return Some(id);
        }
    }
    None
}

fn gnu_build_id(notes: &[u8]) -> Option<Vec<u8>> {
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let ntype = u32_at(notes, off + 8);
        let name_end = off.checked_add(12)?.checked_add(namesz)?;
        let desc = name_end.checked_add(3)? & !3;
        let desc_end = desc.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if ntype == 3 && notes.get(off + 12..name_end) == Some(b"GNU\0") {
            return Some(notes[desc..desc_end].to_vec());
        }
        off = desc_end.checked_add(3)? & !3;
    }
    None
}

fn vdso_size<R: ReadAt + ?Sized>(core: &Core<R>, base: u64) -> Option<u64> {
    let mut eh = [0u8; 64];
    core.read_memory(base, &mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" {
        return None;
    }
    let shoff = u64_at(&eh, 40);
    let end = shoff.checked_add(u64::from(u16_at(&eh, 58)) * u64::from(u16_at(&eh, 60)))?;
    (end <= MAX_VDSO).then_some(end.div_ceil(4096) * 4096)
}

fn load_vdso<R: ReadAt + ?Sized>(core: &Core<R>, m: &Module) -> Loaded {
    let size = (m.end - m.start).min(MAX_VDSO) as usize;
    let mut image = vec![0u8; size];
    if let Err(e) = core.read_memory(m.start, &mut image) {
        return empty_loaded(format!("vDSO not in the core: {e}"));
    }
    let parsed = match object::File::parse(&*image) {
        Ok(f) => f,
        Err(e) => return empty_loaded(format!("vDSO image: {e}")),
    };
    let mut l = describe(&parsed, m);
    l.symbols = symbols(&parsed);
    drop(parsed);
    // The vDSO is linked at 0 and its file offsets equal its addresses;
    // code is read from the image itself.
    l.code = Code::Bytes(image);
    l
}

/// Reads what unwinding needs from an object: bias, CFI, executable ranges.
fn describe<'data, O: Object<'data>>(f: &O, m: &Module) -> Loaded {
    let first = f
        .segments()
        .filter_map(|s| {
            let (off, _) = s.file_range();
            s.address().checked_sub(off)
        })
        .min()
        .unwrap_or(0);
    let bias = m.base.wrapping_sub(first);
    let section = |name: &str| -> Option<(Rc<[u8]>, u64)> {
        let s = f.section_by_name(name)?;
        if s.size() > MAX_SECTION {
            return None;
        }
        let data = s.uncompressed_data().ok()?;
        Some((Rc::from(&*data), s.address()))
    };
    let cfi = Cfi {
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        debug_frame: section(".debug_frame").map(|(d, _)| d),
        text: f.section_by_name(".text").map_or(0, |s| s.address()),
        got: f.section_by_name(".got").map_or(0, |s| s.address()),
    };
    let exec = f
        .sections()
        .filter(|s| s.kind() == object::SectionKind::Text)
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .collect();
    Loaded {
        bias,
        problem: None,
        cfi,
        exec,
        code: Code::None,
        symbols: Vec::new(),
        dwarf_files: Vec::new(),
        build_id_verified: false,
        dwarf: OnceCell::new(),
    }
}

fn symbols<'data, O: Object<'data>>(f: &O) -> Vec<(u64, u64, String)> {
    let mut v = symbols_ranked(f);
    sort_symbols(&mut v);
    v
}

fn symbols_ranked<'data, O: Object<'data>>(f: &O) -> Vec<(u64, u64, String)> {
    f.symbols()
        .chain(f.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            // Ranked into the name so one sort picks the best alias, as
            // elfutils does: global over weak over local, then the name
            // with fewer leading underscores (`raise`, not `__GI_raise`).
            let rank = if s.is_global() && !s.is_weak() {
                '0'
            } else if s.is_weak() {
                '1'
            } else {
                '2'
            };
            let name = s.name().ok()?;
            let unders = name.len() - name.trim_start_matches('_').len();
            Some((
                s.address(),
                s.size(),
                format!("{rank}{}{name}", unders.min(9)),
            ))
        })
        .collect()
}

/// Sorts symbols by address, the best alias first (ranked names from
/// `symbols`), keeps one per address and strips the rank.
fn sort_symbols(v: &mut Vec<(u64, u64, String)>) {
    v.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then((b.1 > 0).cmp(&(a.1 > 0)))
            .then(a.2.cmp(&b.2))
    });
    v.dedup_by_key(|s| s.0);
    for s in v.iter_mut() {
        s.2.drain(..2);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn build_id_path(root: &Path, id: &[u8]) -> Option<PathBuf> {
    if id.len() < 2 {
        return None;
    }
    Some(
        root.join(".build-id")
            .join(hex(&id[..1]))
            .join(format!("{}.debug", hex(&id[1..]))),
    )
}

fn load_file(m: &Module, lookup: &Lookup) -> Loaded {
    let path = match (&lookup.exe, m.is_main) {
        (Some(exe), true) => exe.clone(),
        _ => PathBuf::from(m.path.trim_end_matches(" (deleted)")),
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return empty_loaded(format!("{}: {e}", path.display())),
    };
    let cache = ReadCache::new(Cursor::new(file));
    let parsed = match object::File::parse(&cache) {
        Ok(f) => f,
        Err(e) => return empty_loaded(format!("{}: {e}", path.display())),
    };
    let file_id = parsed.build_id().ok().flatten().map(<[u8]>::to_vec);
    if let (Some(core_id), Some(file_id)) = (&m.core_build_id, &file_id) {
        if core_id != file_id {
            return empty_loaded(format!(
                "{}: build id {} differs from the crashed process's {}",
                path.display(),
                hex(file_id),
                hex(core_id)
            ));
        }
    }
    let mut l = describe(&parsed, m);
    l.build_id_verified = m.core_build_id.is_some() && m.core_build_id == file_id;
    l.symbols = symbols_ranked(&parsed);
    let id = m.core_build_id.clone().or(file_id);
    let debug = find_debug_file(
        &path,
        id.as_deref(),
        parsed.gnu_debuglink().ok().flatten(),
        lookup,
    )
    .or_else(|| {
        // Not here: asked of the host, unless the binary has its own DWARF.
        let has_dwarf = parsed.section_by_name(".debug_info").is_some();
        let (id, fetch) = (id.as_deref()?, lookup.fetch.as_ref()?);
        let p = (!has_dwarf).then(|| (fetch.0)(id)).flatten()?;
        file_build_id(&p).is_some_and(|fid| fid == id).then_some(p)
    });
    if let Some(d) = debug {
        if debug_file_symbols_and_cfi(&d, &mut l) {
            l.dwarf_files.push(d);
        }
    }
    sort_symbols(&mut l.symbols);
    l.dwarf_files.push(path.clone());
    let segs = parsed
        .segments()
        .filter_map(|s| {
            let (off, size) = s.file_range();
            let flags = s.flags();
            let exec = match flags {
                object::SegmentFlags::Elf { p_flags } => p_flags & 1 != 0,
                _ => true,
            };
            exec.then_some((s.address(), size, off))
        })
        .collect();
    drop(parsed);
    l.code = Code::File(cache.into_inner().blocks, segs);
    l
}

/// Adds symbols and `.debug_frame` from a separate debug file; false if it
/// cannot be read (then it is no DWARF source either).
fn debug_file_symbols_and_cfi(path: &Path, l: &mut Loaded) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(Cursor::new(file));
    let Ok(f) = object::File::parse(&cache) else {
        return false;
    };
    // A stripped binary keeps only .dynsym; the debug file has .symtab.
    l.symbols.extend(symbols_ranked(&f));
    if l.cfi.debug_frame.is_none() {
        if let Some(s) = f.section_by_name(".debug_frame") {
            if s.size() <= MAX_SECTION {
                if let Ok(d) = s.uncompressed_data() {
                    l.cfi.debug_frame = Some(Rc::from(&*d));
                }
            }
        }
    }
    true
}

fn find_debug_file(
    binary: &Path,
    build_id: Option<&[u8]>,
    debuglink: Option<(&[u8], u32)>,
    lookup: &Lookup,
) -> Option<PathBuf> {
    if let Some(id) = build_id {
        for root in &lookup.debug_roots {
            if let Some(p) = build_id_path(root, id) {
                if file_build_id(&p).is_some_and(|fid| fid == id) {
                    return Some(p);
                }
            }
        }
    }
    let (name, crc) = debuglink?;
    let name = std::str::from_utf8(name).ok()?;
    if name.contains('/') {
        return None;
    }
    let dir = binary.parent()?;
    let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
    for root in &lookup.debug_roots {
        candidates.push(root.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
    }
    candidates
        .into_iter()
        .filter(|c| c != binary)
        .find(|c| crc32_of(c) == Some(crc))
}

fn file_build_id(p: &Path) -> Option<Vec<u8>> {
    let cache = ReadCache::new(Cursor::new(File::open(p).ok()?));
    let f = object::File::parse(&cache).ok()?;
    f.build_id().ok().flatten().map(<[u8]>::to_vec)
}

fn crc32_of(p: &Path) -> Option<u32> {
    let mut f = File::open(p).ok()?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn load_dwarf(path: &Path) -> Option<crate::dwarf::DwarfIndex> {
    use crate::dwarf::Source;
    let cache = ReadCache::new(Cursor::new(File::open(path).ok()?));
    let f = object::File::parse(&cache).ok()?;
    crate::dwarf::DwarfIndex::new(|id| {
        let s = f.section_by_name(id.name())?;
        let c = s.compressed_data().ok()?;
        if c.uncompressed_size > MAX_SECTION {
            return None;
        }
        if c.format == object::CompressionFormat::Zlib {
            return Some(Source::Zlib(c.data.to_vec(), c.uncompressed_size as usize));
        }
        let data = s.uncompressed_data().ok()?;
        let rc: Rc<[u8]> = match data {
            Cow::Owned(v) => Rc::from(v),
            Cow::Borrowed(b) => Rc::from(b),
        };
        Some(Source::Whole(gimli::EndianRcSlice::new(
            rc,
            gimli::LittleEndian,
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_note_parsing_is_bounded() {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&3u32.to_le_bytes());
        n.extend_from_slice(&3u32.to_le_bytes());
        n.extend_from_slice(b"GNU\0\xaa\xbb\xcc\0");
        assert_eq!(gnu_build_id(&n), Some(vec![0xaa, 0xbb, 0xcc]));
        // A descriptor size past the end is refused, not read.
        n[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(gnu_build_id(&n), None);
        assert_eq!(gnu_build_id(&n[..5]), None);
    }

    /// The grouping `Modules::new` did before: a scan of the modules so far
    /// for each mapping. (path, start, end, base), sorted by start.
    fn grouped_by_scan(mappings: &[crate::notes::Mapping]) -> Vec<(String, u64, u64, u64)> {
        let mut list: Vec<(String, u64, u64, u64)> = Vec::new();
        for m in mappings.iter().filter(|m| m.end > m.start) {
            let base = m.start.wrapping_sub(m.file_offset);
            match list.iter_mut().find(|x| x.0 == m.path) {
                Some(x) => {
                    x.1 = x.1.min(m.start);
                    x.2 = x.2.max(m.end);
                    x.3 = x.3.min(base);
                }
                None => list.push((m.path.clone(), m.start, m.end, base)),
            }
        }
        list.sort_by_key(|m| m.1);
        list
    }

    #[test]
    fn grouping_is_what_the_scan_it_replaced_made() {
        let bytes = crate::notes::tests::synthetic_core(62);
        let core = Core::open(&bytes[..]).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..200 {
            // Few paths, many mappings in any order: empty and inverted
            // ones, equal starts, offsets past the start.
            let mappings: Vec<crate::notes::Mapping> = (0..next(60))
                .map(|_| {
                    let start = next(64) * 0x1000;
                    let end = match next(8) {
                        0 => start.saturating_sub(0x1000),
                        _ => start + next(5) * 0x1000,
                    };
                    crate::notes::Mapping {
                        start,
                        end,
                        file_offset: next(4) * 0x1000 * (1 + 100 * u64::from(next(6) == 0)),
                        path: format!("/lib/l{}.so", next(7)),
                    }
                })
                .collect();
            let notes = Notes {
                mappings,
                ..Notes::default()
            };
            let modules = Modules::new(&core, &notes, Lookup::default());
            let got: Vec<_> = modules
                .list
                .iter()
                .map(|m| (m.path.clone(), m.start, m.end, m.base))
                .collect();
            assert_eq!(
                got,
                grouped_by_scan(&notes.mappings),
                "{:?}",
                notes.mappings
            );
        }
    }

    /// 64,000 NT_FILE entries, each with its PT_LOAD: grouping and the
    /// segment lookups (three per module for its build id, then one per
    /// stack word unwound) count their steps; the scans they replaced took
    /// some n^2 / 4 (10^9) steps, past the probe's deadline.
    #[test]
    fn a_core_with_64000_nt_file_entries_takes_n_log_n_steps() {
        use crate::hostile_cores as h;
        let n = 64_000;
        let bytes = h::core_with_nt_file_entries(n);
        crate::core::work::take();
        let core = Core::open(&bytes[..]).unwrap();
        let notes = crate::notes::read(&core).unwrap();
        assert_eq!(notes.mappings.len(), n);
        let modules = Modules::new(&core, &notes, Lookup::default());
        assert_eq!(modules.list.len(), h::library_count(n));
        for (k, m) in modules.list.iter().enumerate() {
            assert_eq!(m.path, h::library_path(k));
            assert_eq!(
                (m.start, m.end, m.base),
                (h::library_base(k), h::library_end(k), h::library_base(k))
            );
            assert_eq!(
                m.core_build_id.as_deref(),
                Some(&h::library_build_id(k)[..]),
                "{k}"
            );
            assert_eq!(m.is_main, k == 0);
        }
        let opts = crate::Options {
            lookup: Lookup {
                debug_roots: Vec::new(),
                exe: None,
                fetch: None,
            },
            ..crate::Options::default()
        };
        let r = crate::analyze(&bytes[..], &crate::CrashFacts::default(), &opts).unwrap();
        assert_eq!((r.pid, r.signal), (h::PID, Some(h::SIGNAL)));
        assert_eq!(r.process, h::library_path(0));
        assert_eq!(r.threads[0].frames[0].pc, h::crash_pc());
        let steps = crate::core::work::take();
        let log2 = u64::from(usize::BITS - n.leading_zeros());
        let bound = 16 * n as u64 * log2;
        assert!(
            steps <= bound,
            "{steps} steps for {n} entries, more than {bound}"
        );
    }

    #[test]
    fn build_id_paths_split_the_first_byte() {
        let p = build_id_path(Path::new("/usr/lib/debug"), &[0xab, 0xcd, 0xef]).unwrap();
        assert_eq!(p, Path::new("/usr/lib/debug/.build-id/ab/cdef.debug"));
    }
}
