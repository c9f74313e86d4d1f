//! Cores of real programs, compiled at test time and dumped by gdb
//! (`generate-core-file`; the kernel writes no core files on these
//! machines). The notes must describe the process as it crashed, and the
//! backtraces must resolve at least every frame of the test program that
//! `eu-stack --core` (elfutils) resolves, in the same order.

#[path = "../../../tests/support/eu_stack.rs"]
mod eu_stack;

use std::path::{Path, PathBuf};
use std::process::Command;

use crash_symbolizer::core::{Core, Machine};
use crash_symbolizer::modules::Lookup;
use crash_symbolizer::report::{Report, TRUNCATED_LINE};
use crash_symbolizer::unwind::How;
use crash_symbolizer::{analyze, CrashFacts, Options};
use eu_stack::{eu_stack, EuFrame};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "crash-symbolizer-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn program(src: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(src)
}

fn compile(src: &str, flags: &[&str], dir: &Path) -> PathBuf {
    let exe = dir.join(Path::new(src).file_stem().unwrap());
    let cc = if src.ends_with(".cpp") { "g++" } else { "gcc" };
    let prefix_map = format!("-fdebug-prefix-map={}=/src", program("").display());
    let out = Command::new(cc)
        .args(["-g", "-pthread", "-Wl,--build-id", &prefix_map])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(program(src))
        .output()
        .expect("gcc/g++ (the test command installs them)");
    assert!(
        out.status.success(),
        "{cc} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs the program under gdb until it dies and dumps its core.
fn dump(exe: &Path, dir: &Path) -> PathBuf {
    let core = dir.join("core");
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(["-ex", "handle SIGUSR1 nostop noprint pass"])
        .args(["-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(exe)
        .output()
        .expect("gdb (the test command installs it)");
    assert!(
        core.exists(),
        "gdb made no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    core
}

fn symbolize(core: &Path, lookup: Lookup) -> Report {
    let f = std::fs::File::open(core).unwrap();
    analyze(
        &f,
        &CrashFacts::default(),
        &Options {
            lookup,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", core.display()))
}

/// Our thread `tid`.
fn thread(report: &Report, tid: u32) -> &crash_symbolizer::report::ThreadTrace {
    report
        .threads
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("thread {tid} missing"))
}

/// The source lines of every thread, in the program and in libraries whose
/// debug files are installed (libc6-dbg), are eu-stack's, byte for byte,
/// in the same order, none missing and none added: the legacy probe
/// printed elfutils' file names.
fn assert_sources_match_eu_stack(report: &Report, eu: &[(u32, Vec<EuFrame>)]) {
    let mut compared = 0;
    for (tid, frames) in eu {
        let theirs: Vec<&str> = frames.iter().filter_map(|f| f.source.as_deref()).collect();
        let ours_thread = thread(report, *tid);
        let ours: Vec<String> = ours_thread
            .frames
            .iter()
            .filter_map(|f| Some(format!("{}:{}", f.file.as_deref()?, f.line?)))
            .collect();
        assert_eq!(
            ours, theirs,
            "thread {tid}: source lines, ours then eu-stack's"
        );
        compared += theirs.len();
    }
    assert!(compared > 0, "eu-stack gave no source line");
}

/// `level2.constprop.0` and `pause@@GLIBC_2.2.5` are the functions
/// `level2` and `pause`; C++ names are compared without parameters.
fn base_name(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
    let name = name.split('(').next().unwrap_or(name);
    let mut s = name.to_owned();
    for suffix in [".constprop", ".isra", ".part", ".cold"] {
        if let Some(i) = s.find(suffix) {
            s.truncate(i);
        }
    }
    s
}

/// The frames of every thread inside the test program are the ones
/// eu-stack resolves there (inlined calls expanded on both sides), the
/// same functions in the same order, none missing and none added.
fn assert_frames_match_eu_stack(report: &Report, eu: &[(u32, Vec<EuFrame>)], exe: &Path) {
    let exe_name = exe.file_name().unwrap().to_str().unwrap();
    let exe_path = exe.to_str().unwrap();
    let mut compared = 0;
    for (tid, frames) in eu {
        let theirs: Vec<String> = frames
            .iter()
            .filter(|f| f.module == exe_name && !f.name.is_empty() && !f.name.starts_with("??"))
            .map(|f| base_name(&f.name))
            .collect();
        let ours_thread = thread(report, *tid);
        let ours: Vec<String> = ours_thread
            .frames
            .iter()
            .filter(|f| f.module.as_deref() == Some(exe_path))
            .filter_map(|f| f.function.as_deref().map(base_name))
            .collect();
        assert_eq!(
            ours,
            theirs,
            "thread {tid}: the program's frames, ours then eu-stack's\n{}",
            report.payload()
        );
        compared += theirs.len();
    }
    assert!(compared > 0, "eu-stack resolved no frame in the program");
}

fn crashing_names(r: &Report) -> Vec<String> {
    r.threads[0]
        .frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_else(|| "???".into()))
        .collect()
}

/// The (function, line) of the crashing thread's frames in `file`.
fn own_frames(r: &Report, file: &str) -> Vec<(String, u32)> {
    r.threads[0]
        .frames
        .iter()
        .filter(|f| f.file.as_deref().is_some_and(|p| p.ends_with(file)))
        .map(|f| (f.function.clone().unwrap_or_default(), f.line.unwrap_or(0)))
        .collect()
}

fn expect_prefix(actual: &[(String, u32)], expected: &[(&str, u32)], payload: &str) {
    let exp: Vec<(String, u32)> = expected.iter().map(|(n, l)| (n.to_string(), *l)).collect();
    assert!(
        actual.len() >= exp.len() && actual[..exp.len()] == exp[..],
        "expected {exp:?}, got {actual:?}\n{payload}"
    );
}

#[test]
fn notes_of_a_three_thread_segfault() {
    let dir = scratch("notes");
    let exe = compile("threads_segv.c", &["-O0"], &dir);
    let core_path = dump(&exe, &dir);
    let f = std::fs::File::open(&core_path).unwrap();
    let core = Core::open(&f).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(core.machine, Machine::X86_64);
    }
    let notes = crash_symbolizer::notes::read(&core).unwrap();
    assert_eq!(
        notes.threads.len(),
        3,
        "{:?}",
        notes.threads.iter().map(|t| t.tid).collect::<Vec<_>>()
    );
    assert_eq!(notes.signal, Some(11));
    assert_eq!(
        notes.threads[0].signal, 11,
        "the crashing thread comes first"
    );
    assert_eq!(notes.fault_addr, Some(0), "NULL was written");
    assert_eq!(notes.process_name.as_deref(), Some("threads_segv"));
    let exe_str = exe.to_str().unwrap();
    let text = notes
        .mappings
        .iter()
        .find(|m| {
            m.path == exe_str && m.start <= notes.threads[0].pc && notes.threads[0].pc < m.end
        })
        .expect("the crashing thread's pc lies in the program's own mapping");
    assert!(text.end > text.start);
    assert!(
        notes.mappings.iter().any(|m| m.path.contains("libc")),
        "libc is mapped"
    );
    assert!(notes.vdso().is_some(), "AT_SYSINFO_EHDR in auxv");
    // The crashing thread's stack is in the core.
    let mut word = [0u8; 8];
    core.read_memory(notes.threads[0].sp, &mut word).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn threads_segv(flags: &[&str], name: &str) {
    let dir = scratch(name);
    let exe = compile("threads_segv.c", flags, &dir);
    let core = dump(&exe, &dir);
    let r = symbolize(&core, Lookup::default());
    assert_eq!(r.signal, Some(11));
    assert_eq!(r.process, exe.to_str().unwrap());
    assert_eq!(r.threads.len(), 3);
    expect_prefix(
        &own_frames(&r, "threads_segv.c"),
        &[("level3", 5), ("level2", 6), ("main", 13)],
        &r.payload(),
    );
    assert_eq!(r.error(), None, "{}", r.payload());
    assert_eq!(r.classification(), ("org.clearlinux/crash/clr", 3));
    // The other two threads sleep in pause() called from idle().
    for t in &r.threads[1..] {
        let names: Vec<_> = t.frames.iter().filter_map(|f| f.function.clone()).collect();
        assert!(names.iter().any(|n| n == "idle"), "{names:?}");
    }
    let eu = eu_stack(&core, &exe, None);
    assert_frames_match_eu_stack(&r, &eu, &exe);
    assert_sources_match_eu_stack(&r, &eu);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn three_threads_at_o0() {
    threads_segv(&["-O0"], "o0");
}

#[test]
fn three_threads_at_o2_without_frame_pointers() {
    threads_segv(&["-O2", "-fomit-frame-pointer"], "o2");
}

fn recursion(flags: &[&str], name: &str) {
    let dir = scratch(name);
    let exe = compile("recurse.c", flags, &dir);
    let core = dump(&exe, &dir);
    let r = symbolize(&core, Lookup::default());
    let t = &r.threads[0];
    assert_eq!(t.frames.len(), 64, "{}", r.payload());
    assert!(t.truncated);
    let p = r.payload();
    assert!(p.contains(TRUNCATED_LINE), "{p}");
    assert!(p.contains("\n#63 descend() - ["), "{p}");
    assert!(!p.contains("\n#64 "), "{p}");
    assert_eq!(own_frames(&r, "recurse.c")[0], ("descend".to_string(), 9));
    assert!(own_frames(&r, "recurse.c")[1..]
        .iter()
        .all(|f| *f == ("descend".to_string(), 12)));
    assert_eq!(r.error(), None);
    assert_frames_match_eu_stack(&r, &eu_stack(&core, &exe, None)[..1], &exe);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recursion_deeper_than_the_limit_at_o0() {
    recursion(&["-O0"], "rec0");
}

#[test]
fn recursion_deeper_than_the_limit_at_o2() {
    recursion(&["-O2", "-fomit-frame-pointer"], "rec2");
}

#[test]
fn crash_inside_a_signal_handler() {
    for (flags, name) in [
        (&["-O0"][..], "sig0"),
        (&["-O2", "-fomit-frame-pointer"][..], "sig2"),
    ] {
        let dir = scratch(name);
        let exe = compile("sighandler.c", flags, &dir);
        let core = dump(&exe, &dir);
        let r = symbolize(&core, Lookup::default());
        assert_eq!(r.signal, Some(11));
        let names = crashing_names(&r);
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| x == n)
                .unwrap_or_else(|| panic!("{n} missing from {names:?}\n{}", r.payload()))
        };
        // The handler, the kernel's signal frame, then the interrupted
        // call chain down to main.
        assert_eq!(pos("on_usr1"), 0);
        assert!(pos("inner") < pos("outer") && pos("outer") < pos("main"));
        assert!(
            r.threads[0].frames.iter().any(|f| f.how == How::Signal),
            "{:?}",
            r.threads[0].frames
        );
        expect_prefix(
            &own_frames(&r, "sighandler.c")[..1],
            &[("on_usr1", 9)],
            &r.payload(),
        );
        let own = own_frames(&r, "sighandler.c");
        assert!(own.contains(&("inner".into(), 11)), "{own:?}");
        assert!(own.contains(&("outer".into(), 12)), "{own:?}");
        assert_eq!(r.error(), None, "{}", r.payload());
        let eu = eu_stack(&core, &exe, None);
        assert_frames_match_eu_stack(&r, &eu, &exe);
        assert_sources_match_eu_stack(&r, &eu);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn cpp_abort_from_a_nested_call() {
    let dir = scratch("cpp");
    let exe = compile("abort.cpp", &["-O2", "-fomit-frame-pointer"], &dir);
    let core = dump(&exe, &dir);
    let r = symbolize(&core, Lookup::default());
    assert_eq!(r.signal, Some(6));
    let names = crashing_names(&r);
    let at = |n: &str| names.iter().position(|x| x == n);
    let (Some(checkout), Some(pay), Some(main)) =
        (at("shop::Basket::checkout"), at("shop::pay"), at("main"))
    else {
        panic!("C++ frames missing: {names:?}\n{}", r.payload());
    };
    assert!(checkout < pay && pay < main, "{names:?}");
    assert!(at("abort").is_some_and(|a| a < checkout), "{names:?}");
    let own = own_frames(&r, "abort.cpp");
    assert!(
        own.contains(&("shop::Basket::checkout".into(), 8)),
        "{own:?}"
    );
    assert!(own.contains(&("shop::pay".into(), 12)), "{own:?}");
    assert!(own.contains(&("main".into(), 16)), "{own:?}");
    assert_eq!(r.error(), None, "{}", r.payload());
    let eu = eu_stack(&core, &exe, None);
    assert_frames_match_eu_stack(&r, &eu, &exe);
    assert_sources_match_eu_stack(&r, &eu);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} failed");
}

/// Moves `exe`'s debug info into `dir/<name>.debug` and strips `exe`, as a
/// distribution's packaging does; returns the debug file.
fn split_debug(exe: &Path, dir: &Path) -> PathBuf {
    let stem = exe.file_stem().unwrap().to_str().unwrap();
    let debug = dir.join(format!("{stem}.debug"));
    run(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            exe.as_os_str(),
            debug.as_os_str(),
        ],
    );
    run("strip", &["--strip-all".as_ref(), exe.as_os_str()]);
    debug
}

#[test]
fn stripped_binary_with_its_debug_file_under_a_build_id_path() {
    let dir = scratch("stripped");
    let exe = compile("threads_segv.c", &["-O2", "-fomit-frame-pointer"], &dir);
    let debug = split_debug(&exe, &dir);
    let out = Command::new("readelf")
        .arg("-n")
        .arg(&exe)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("build id")
        .to_owned();
    let root = dir.join("debug");
    let under = root.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&under).unwrap();
    std::fs::rename(&debug, under.join(format!("{}.debug", &id[2..]))).unwrap();
    let core = dump(&exe, &dir);

    // Without the debug tree: unwound by the binary's own .eh_frame, but
    // nothing of the program is named.
    let bare = symbolize(&core, Lookup::default());
    assert!(bare.threads[0].frames.len() >= 4, "{}", bare.payload());
    assert!(own_frames(&bare, "threads_segv.c").is_empty());

    let r = symbolize(
        &core,
        Lookup {
            debug_roots: vec![root.clone()],
            exe: None,
            fetch: None,
        },
    );
    expect_prefix(
        &own_frames(&r, "threads_segv.c"),
        &[("level3", 5), ("level2", 6), ("main", 13)],
        &r.payload(),
    );
    let eu = eu_stack(&core, &exe, Some(&root));
    assert_frames_match_eu_stack(&r, &eu, &exe);
    assert_sources_match_eu_stack(&r, &eu);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rebuilt_binary_with_another_build_id_is_not_used() {
    let dir = scratch("rebuilt");
    let exe = compile("threads_segv.c", &["-O0"], &dir);
    let core = dump(&exe, &dir);
    // Same path, different code: the names it would give are wrong.
    compile(
        "threads_segv.c",
        &[
            "-O0",
            "-DUNUSED=1",
            "-fno-inline-small-functions",
            "-Wl,--build-id=sha1",
            "-g3",
        ],
        &dir,
    );
    let r = symbolize(&core, Lookup::default());
    let exe_str = exe.to_str().unwrap();
    assert!(
        r.module_problems
            .iter()
            .any(|p| p.contains(exe_str) && p.contains("differs")),
        "{:?}",
        r.module_problems
    );
    assert!(
        own_frames(&r, "threads_segv.c").is_empty(),
        "{}",
        r.payload()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exe_override_reads_a_binary_that_moved() {
    let dir = scratch("moved");
    let exe = compile("threads_segv.c", &["-O0"], &dir);
    let core = dump(&exe, &dir);
    let moved = dir.join("elsewhere");
    std::fs::rename(&exe, &moved).unwrap();
    let lost = symbolize(&core, Lookup::default());
    assert!(own_frames(&lost, "threads_segv.c").is_empty());
    let r = symbolize(
        &core,
        Lookup {
            exe: Some(moved),
            ..Lookup::default()
        },
    );
    expect_prefix(
        &own_frames(&r, "threads_segv.c"),
        &[("level3", 5), ("level2", 6), ("main", 13)],
        &r.payload(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Code without CFI: `.debug_frame` when only that is there, then the
/// frame-pointer chain (-O0), then the stack scan (-O2 without frame
/// pointers); each frame says how it was found.
#[test]
fn fallbacks_without_eh_frame() {
    let no_tables = ["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"];
    for (opt, strip_debug_frame, how) in [
        ("-O0", false, How::Cfi),
        ("-O0", true, How::FramePointer),
        ("-O2", true, How::Scan),
    ] {
        let dir = scratch(&format!("fallback{opt}{strip_debug_frame}"));
        let mut flags = vec![opt, "-fomit-frame-pointer"];
        if opt == "-O0" {
            flags.pop();
            flags.push("-fno-omit-frame-pointer");
        }
        flags.extend(no_tables);
        let exe = compile("threads_segv.c", &flags, &dir);
        if strip_debug_frame {
            run(
                "objcopy",
                &["--remove-section=.debug_frame".as_ref(), exe.as_os_str()],
            );
        }
        let core = dump(&exe, &dir);
        let r = symbolize(&core, Lookup::default());
        let own: Vec<_> = r.threads[0]
            .frames
            .iter()
            .filter(|f| {
                f.file
                    .as_deref()
                    .is_some_and(|p| p.ends_with("threads_segv.c"))
            })
            .collect();
        let names: Vec<_> = own.iter().filter_map(|f| f.function.as_deref()).collect();
        assert_eq!(
            names,
            ["level3", "level2", "main"],
            "{opt}\n{}",
            r.payload()
        );
        assert!(
            own[1..].iter().any(|f| f.how == how),
            "{opt} {strip_debug_frame}: {:?}",
            own.iter().map(|f| f.how).collect::<Vec<_>>()
        );
        if how != How::Cfi {
            assert!(r.payload().contains(&format!("(found by {})", how.label())));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The vDSO has no file: its image, CFI and symbols come from core memory.
#[test]
fn the_vdso_is_read_from_core_memory() {
    use crash_symbolizer::modules::Modules;
    let dir = scratch("vdso");
    let exe = compile("threads_segv.c", &["-O0"], &dir);
    let core_path = dump(&exe, &dir);
    let f = std::fs::File::open(&core_path).unwrap();
    let core = Core::open(&f).unwrap();
    let notes = crash_symbolizer::notes::read(&core).unwrap();
    let modules = Modules::new(&core, &notes, Lookup::default());
    let vdso = modules
        .list
        .iter()
        .find(|m| m.is_vdso)
        .expect("a vDSO module");
    assert_eq!(Some(vdso.start), notes.vdso());
    let l = modules.loaded(vdso, &core);
    assert_eq!(l.problem, None);
    assert!(l.cfi.eh_frame.is_some(), "the vDSO's .eh_frame");
    assert!(
        l.symbols.iter().any(|s| s.2.contains("clock_gettime")),
        "{:?}",
        l.symbols
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stripped binary whose debug file is found by `.gnu_debuglink` next to
/// it; a debug file whose CRC does not match is not used.
#[test]
fn debuglink_with_crc_check() {
    let dir = scratch("debuglink");
    let exe = compile("threads_segv.c", &["-O0", "-Wl,--build-id=none"], &dir);
    let debug = split_debug(&exe, &dir);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    run("objcopy", &[link.as_ref(), exe.as_os_str()]);
    let core = dump(&exe, &dir);
    let r = symbolize(&core, Lookup::default());
    expect_prefix(
        &own_frames(&r, "threads_segv.c"),
        &[("level3", 5), ("level2", 6), ("main", 13)],
        &r.payload(),
    );
    // Same name, other content: the CRC in the link no longer matches.
    let mut bytes = std::fs::read(&debug).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&debug, bytes).unwrap();
    let r = symbolize(&core, Lookup::default());
    assert!(
        own_frames(&r, "threads_segv.c").is_empty(),
        "{}",
        r.payload()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The frame cache as a map (the probe keeps it in its state).
#[derive(Default)]
struct Entries(std::collections::HashMap<String, Vec<u8>>);

impl crash_symbolizer::frame_cache::EntryStore for Entries {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
}

/// Symbolizes with `entries` as the cache and keeps what changed; the
/// payload, and (hits, lookups, entries rebuilt).
fn symbolize_cached(core: &Path, entries: &mut Entries) -> (String, (usize, usize, usize)) {
    let f = std::fs::File::open(core).unwrap();
    let mut cache = crash_symbolizer::frame_cache::FrameCache::new(entries);
    let r = crash_symbolizer::analyze_cached(
        &f,
        &CrashFacts::default(),
        &Options::default(),
        &mut cache,
    )
    .unwrap();
    let counts = (cache.hits, cache.hits + cache.misses, cache.rebuilt.len());
    let (_, changed) = cache.finish();
    entries.0.extend(changed);
    (r.payload(), counts)
}

/// A second crash through the same libraries answers every lookup from
/// what the first resolved, with the very same report; a damaged, cut or
/// foreign entry is rebuilt, the report unchanged.
#[test]
fn a_second_crash_reads_the_cache_and_damaged_entries_are_rebuilt() {
    let dir = scratch("cache");
    let exe = compile("threads_segv.c", &["-O0"], &dir);
    let core = dump(&exe, &dir);
    let want = symbolize(&core, Lookup::default()).payload();
    let mut entries = Entries::default();
    let (first, (_, lookups, _)) = symbolize_cached(&core, &mut entries);
    assert_eq!(first, want);
    assert!(lookups > 0 && !entries.0.is_empty());
    let (second, (hits, lookups, rebuilt)) = symbolize_cached(&core, &mut entries);
    assert_eq!(second, want);
    assert_eq!((hits, rebuilt), (lookups, 0), "every lookup from the cache");

    let keys: Vec<String> = entries.0.keys().cloned().collect();
    type Damage = (&'static str, fn(&mut Vec<u8>));
    let damage: [Damage; 3] = [
        ("cut", |b| b.truncate(b.len() / 2)),
        ("bit flipped", |b| {
            let at = b.len() - 5;
            b[at] ^= 1
        }),
        ("foreign build id", |b| b[16] ^= 0xff),
    ];
    for (what, hurt) in damage {
        let mut damaged = Entries::default();
        for k in &keys {
            let mut v = entries.0[k].clone();
            hurt(&mut v);
            damaged.0.insert(k.clone(), v);
        }
        let (p, (hits, _, rebuilt)) = symbolize_cached(&core, &mut damaged);
        assert_eq!(p, want, "{what}");
        assert_eq!(rebuilt, keys.len(), "{what}: every entry rebuilt");
        assert!(hits < lookups, "{what}: a damaged entry answered");
        let (again, (hits, lookups, rebuilt)) = symbolize_cached(&core, &mut damaged);
        assert_eq!(
            (again == want, hits, rebuilt),
            (true, lookups, 0),
            "{what}: rewritten"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
