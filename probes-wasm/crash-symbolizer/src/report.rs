//! From a core to the crash record: unwind every thread (the crashing one
//! first), symbolize each frame (inlined calls expanded, names demangled),
//! and write the payload in the legacy format.

use crate::core::{Core, CoreError, ReadAt};
use crate::frame_cache::{FrameCache, Resolved};
use crate::modules::{Lookup, Modules};
use crate::unwind::{How, Unwinder};

/// Most frame lines per thread, as the legacy probe had.
pub const MAX_FRAMES: usize = 64;
/// Most threads unwound.
pub const MAX_THREADS: usize = 32;
/// Largest payload a record may carry.
pub const MAX_PAYLOAD: usize = 8192;
/// Line added to the header when a trace was cut.
pub const TRUNCATED_LINE: &str = "Too many frames. Backtrace truncated.";

/// What is known of a crash besides its core (from the kernel, through the
/// crash handler); each fact overrides the core's own.
#[derive(Clone, Debug, Default)]
pub struct CrashFacts {
    /// Executable path (`%E`).
    pub process_path: Option<String>,
    /// Process id (`%p`).
    pub pid: Option<u32>,
    /// Signal (`%s`).
    pub signal: Option<u32>,
}

/// Limits and lookup paths.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where binaries and debug files are found.
    pub lookup: Lookup,
    /// Frame lines per thread.
    pub max_frames: usize,
    /// Threads unwound.
    pub max_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lookup: Lookup::default(),
            max_frames: MAX_FRAMES,
            max_threads: MAX_THREADS,
        }
    }
}

/// One line of a backtrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The physical frame's pc.
    pub pc: u64,
    /// How the physical frame was found.
    pub how: How,
    /// A call inlined into the next line's function.
    pub inlined: bool,
    /// Demangled function name.
    pub function: Option<String>,
    /// Module as shown (executable by path, libraries by name).
    pub module: Option<String>,
    /// The module's build id (or name) and the pc's offset in it: what
    /// names the frame when its function has no name (`addr1:`).
    pub module_offset: Option<crash_signature::ModuleOffset>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// One thread's backtrace.
#[derive(Clone, Debug)]
pub struct ThreadTrace {
    /// Thread id.
    pub tid: u32,
    /// Frame lines, innermost first.
    pub frames: Vec<Frame>,
    /// More frames than the limit.
    pub truncated: bool,
    /// Why unwinding stopped early.
    pub error: Option<String>,
}

/// Everything the record says.
#[derive(Clone, Debug)]
pub struct Report {
    /// Executable path.
    pub process: String,
    /// Process id.
    pub pid: u32,
    /// Signal.
    pub signal: Option<u32>,
    /// Threads, the crashing one first.
    pub threads: Vec<ThreadTrace>,
    /// Threads in the core.
    pub threads_total: usize,
    /// Modules whose file could not be used, and why.
    pub module_problems: Vec<String>,
    /// The crash's signature (`sym1:`/`addr1:`), when the crashing thread
    /// has a frame to make it of.
    pub signature: Option<String>,
}

/// Demangles C++ (without parameters, as the legacy lines had `name()`)
/// and Rust names; other names are returned as they are.
pub fn demangle(raw: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(raw) {
        return format!("{d:#}");
    }
    if raw.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(raw) {
            let opts = cpp_demangle::DemangleOptions::new()
                .no_params()
                .no_return_type();
            if let Ok(s) = sym.demangle_with_options(&opts) {
                return s;
            }
        }
    }
    raw.to_owned()
}

/// A store that holds nothing: every crash starts from the files.
struct NoEntries;

impl crate::frame_cache::EntryStore for NoEntries {
    fn get(&mut self, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// Reads the core, unwinds and symbolizes it.
pub fn analyze<R: ReadAt + ?Sized>(
    r: &R,
    facts: &CrashFacts,
    opts: &Options,
) -> Result<Report, CoreError> {
    analyze_cached(r, facts, opts, &mut FrameCache::new(&mut NoEntries))
}

/// [`analyze`], answering from `cache` what earlier crashes resolved in the
/// same libraries and keeping there what this one resolves.
pub fn analyze_cached<R: ReadAt + ?Sized>(
    r: &R,
    facts: &CrashFacts,
    opts: &Options,
    cache: &mut FrameCache,
) -> Result<Report, CoreError> {
    // Unwinding reads the stack a word at a time: serve those from blocks.
    let cached = crate::blocks::Blocks::new(r);
    let core = Core::open(&cached)?;
    let notes = crate::notes::read(&core)?;
    if notes.threads.is_empty() {
        return Err(CoreError::Malformed("the core holds no thread".into()));
    }
    let modules = Modules::new(&core, &notes, opts.lookup.clone());
    let mut unwinder = Unwinder::new(&core, &modules);
    let mut threads = Vec::new();
    for t in notes.threads.iter().take(opts.max_threads) {
        let u = unwinder.unwind(t, opts.max_frames);
        let mut frames = Vec::new();
        for raw in &u.frames {
            frames.extend(symbolize(
                &core,
                &modules,
                cache,
                raw.pc,
                raw.lookup_pc(),
                raw.how,
            ));
        }
        let truncated = u.truncated || frames.len() > opts.max_frames;
        frames.truncate(opts.max_frames);
        threads.push(ThreadTrace {
            tid: t.tid,
            frames,
            truncated,
            error: u.error,
        });
    }
    let main = modules.list.iter().find(|m| m.is_main);
    let process = facts
        .process_path
        .clone()
        .or_else(|| main.map(|m| m.path.clone()))
        .or_else(|| notes.process_name.clone())
        .unwrap_or_else(|| "???".into());
    let module_problems = modules.list.iter().filter_map(|m| m.problem()).collect();
    let mut report = Report {
        process,
        pid: facts.pid.or(notes.pid).unwrap_or(0),
        signal: facts.signal.or(notes.signal),
        threads_total: notes.threads.len(),
        threads,
        module_problems,
        signature: None,
    };
    report.signature = crate::signature::signature(&report);
    Ok(report)
}

fn symbolize<R: ReadAt + ?Sized>(
    core: &Core<R>,
    modules: &Modules,
    cache: &mut FrameCache,
    pc: u64,
    lookup: u64,
    how: How,
) -> Vec<Frame> {
    let blank = Frame {
        pc,
        how,
        inlined: false,
        function: None,
        module: None,
        module_offset: None,
        file: None,
        line: None,
    };
    let Some(m) = modules.find(lookup) else {
        return vec![blank];
    };
    let module = Some(modules.display_name(m));
    let module_offset = Some(crash_signature::ModuleOffset {
        module: match &m.core_build_id {
            Some(id) => id.iter().map(|b| format!("{b:02x}")).collect(),
            None => m.path.rsplit('/').next().unwrap_or(&m.path).to_owned(),
        },
        offset: lookup.wrapping_sub(m.base),
    });
    let blank = Frame {
        module_offset,
        ..blank
    };
    let l = modules.loaded(m, core);
    let svma = lookup.wrapping_sub(l.bias);
    let resolved = resolve(m, l, cache, svma);
    let symbol = resolved.symbol.as_deref().map(demangle);
    let mut out = Vec::new();
    {
        for (name, file, line) in resolved.dwarf {
            out.push(Frame {
                pc,
                how,
                inlined: true,
                function: name.map(|n| demangle(&n)),
                module: module.clone(),
                module_offset: blank.module_offset.clone(),
                file,
                line,
            });
        }
    }
    match out.last_mut() {
        Some(last) => {
            // The physical function is named by its symbol when it has one,
            // as the legacy probe did (`raise`, not DWARF's `__GI_raise`);
            // inlined calls can only be named by DWARF.
            last.inlined = false;
            if symbol.is_some() {
                last.function = symbol;
            }
        }
        None => out.push(Frame {
            function: symbol,
            module,
            ..blank
        }),
    }
    out
}

/// The symbol and DWARF frames at `svma`: from the cache when an earlier
/// crash resolved them from the same files, else from the files (and then
/// kept). Only a module whose file was used and whose own build id is the
/// one the process had mapped is cached: one that could not be read may
/// be readable next time, and a file without a build id (or a process
/// claiming another's) must not put its names under someone else's.
fn resolve(
    m: &crate::modules::Module,
    l: &crate::modules::Loaded,
    cache: &mut FrameCache,
    svma: u64,
) -> Resolved {
    let id = m
        .core_build_id
        .as_deref()
        .filter(|_| l.problem.is_none() && l.build_id_verified);
    let source = l
        .dwarf_files
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(r) = id.and_then(|id| cache.lookup(id, &source, svma)) {
        return r;
    }
    let r = Resolved {
        symbol: l.symbol(svma).map(|s| s.2.clone()),
        dwarf: l.dwarf().map(|d| d.frames(svma)).unwrap_or_default(),
    };
    if let Some(id) = id {
        cache.remember(id, &source, svma, r.clone());
    }
    r
}

/// Printable ASCII only: names and paths from a hostile core or binary
/// must not break the record format.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// One frame line: `#N name() - [module] - file:line`, with how the frame
/// was found when it was not by CFI.
pub fn frame_line(n: usize, f: &Frame) -> String {
    let mut s = match &f.function {
        Some(name) => format!("#{n} {}() - [", clean(name)),
        None => format!("#{n} ??? - ["),
    };
    s.push_str(&f.module.as_deref().map_or_else(|| "???".into(), clean));
    s.push(']');
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        s.push_str(&format!(" - {}:{line}", clean(file)));
    }
    match f.how {
        How::FramePointer | How::Scan if !f.inlined => {
            s.push_str(&format!(" (found by {})", f.how.label()))
        }
        _ => {}
    }
    s
}

/// The record for a core that could not be read at all: the error and the
/// crash's facts, under the error class.
pub fn error_payload(error: &str, facts: &CrashFacts) -> String {
    let mut p = format!(
        "Error: {}\nProcess: {}\n",
        clean(error),
        clean(facts.process_path.as_deref().unwrap_or("???"))
    );
    if let Some(pid) = facts.pid {
        p.push_str(&format!("PID: {pid}\n"));
    }
    if let Some(s) = facts.signal {
        p.push_str(&format!("Signal: {s}\n"));
    }
    p.truncate(MAX_PAYLOAD);
    p
}

impl Report {
    /// The crashing thread's unwinding error, which makes the record an
    /// error record.
    pub fn error(&self) -> Option<&str> {
        self.threads.first().and_then(|t| t.error.as_deref())
    }

    /// Classification and severity, as the legacy probe chose them.
    pub fn classification(&self) -> (&'static str, u8) {
        if self.error().is_some() {
            ("org.clearlinux/crash/error", 4)
        } else {
            ("org.clearlinux/crash/clr", 3)
        }
    }

    /// The payload, at most `MAX_PAYLOAD` bytes: the crashing thread first,
    /// then others while they fit.
    pub fn payload(&self) -> String {
        let mut head = String::new();
        if let Some(e) = self.error() {
            head.push_str(&format!("Error: {}\n", clean(e)));
        }
        head.push_str(&format!(
            "Process: {}\nPID: {}\n",
            clean(&self.process),
            self.pid
        ));
        if let Some(s) = self.signal {
            head.push_str(&format!("Signal: {s}\n"));
        }
        if let Some(s) = &self.signature {
            head.push_str(&format!("Signature: {s}\n"));
        }
        if self.threads.iter().any(|t| t.truncated) {
            head.push_str(TRUNCATED_LINE);
            head.push('\n');
        }
        let mut out = head;
        let reserve = 64;
        let mut shown = 0;
        for (i, t) in self.threads.iter().enumerate() {
            let mut section = format!("\nBacktrace (TID {}):\n", t.tid);
            for (n, f) in t.frames.iter().enumerate() {
                let line = format!("{}\n", frame_line(n, f));
                if i == 0 && out.len() + section.len() + line.len() + reserve > MAX_PAYLOAD {
                    section.push_str("...\n");
                    break;
                }
                section.push_str(&line);
            }
            if i > 0 && out.len() + section.len() + reserve > MAX_PAYLOAD {
                break;
            }
            out.push_str(&section);
            shown += 1;
        }
        let hidden = self.threads_total - shown;
        if hidden > 0 {
            out.push_str(&format!("\n{hidden} more threads not shown.\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_cpp_without_parameters_and_rust_without_hash() {
        assert_eq!(demangle("_ZN2ns5Outer5innerEi"), "ns::Outer::inner");
        assert_eq!(
            demangle("_ZN4core9panicking5panic17h0123456789abcdefE"),
            "core::panicking::panic"
        );
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
    }

    fn frame(name: Option<&str>, module: &str, file: Option<(&str, u32)>) -> Frame {
        Frame {
            pc: 0,
            how: How::Cfi,
            inlined: false,
            function: name.map(str::to_owned),
            module: Some(module.into()),
            module_offset: None,
            file: file.map(|f| f.0.into()),
            line: file.map(|f| f.1),
        }
    }

    #[test]
    fn payload_is_the_legacy_format() {
        let r = Report {
            process: "/usr/bin/crashme".into(),
            pid: 14545,
            signal: Some(11),
            threads: vec![
                ThreadTrace {
                    tid: 14545,
                    frames: vec![
                        frame(
                            Some("level3"),
                            "/usr/bin/crashme",
                            Some(("/src/crashme.c", 5)),
                        ),
                        frame(Some("_start"), "/usr/bin/crashme", None),
                    ],
                    truncated: false,
                    error: None,
                },
                ThreadTrace {
                    tid: 14548,
                    frames: vec![frame(None, "libc.so.6", None)],
                    truncated: false,
                    error: None,
                },
            ],
            threads_total: 2,
            module_problems: vec![],
            signature: Some("sym1:0123456789abcdef".into()),
        };
        assert_eq!(
            r.payload(),
            "Process: /usr/bin/crashme\nPID: 14545\nSignal: 11\n\
             Signature: sym1:0123456789abcdef\n\n\
             Backtrace (TID 14545):\n\
             #0 level3() - [/usr/bin/crashme] - /src/crashme.c:5\n\
             #1 _start() - [/usr/bin/crashme]\n\n\
             Backtrace (TID 14548):\n\
             #0 ??? - [libc.so.6]\n"
        );
        assert_eq!(r.classification(), ("org.clearlinux/crash/clr", 3));
    }

    #[test]
    fn payload_fits_a_record_and_cleans_names() {
        let long = "x".repeat(300);
        let t = |tid| ThreadTrace {
            tid,
            frames: (0..64)
                .map(|_| frame(Some(&long), "m\u{7}é", None))
                .collect(),
            truncated: true,
            error: None,
        };
        let r = Report {
            process: "/p".into(),
            pid: 1,
            signal: None,
            threads: vec![t(1), t(2)],
            threads_total: 40,
            module_problems: vec![],
            signature: None,
        };
        let p = r.payload();
        assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
        assert!(p.contains(TRUNCATED_LINE));
        assert!(p.contains("[m??]"));
        assert!(p.ends_with("39 more threads not shown.\n"), "{p}");
        assert!(p.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
    }
}
