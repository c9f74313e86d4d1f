//! The crash's signature (see the `crash-signature` crate): the program's
//! name, the signal and the crashing thread's top named frames, skipping
//! the frames that only say how the crash was reported (`raise`, `abort`,
//! a Rust or C++ panic's machinery, `__assert_fail`, ...) and those found
//! by scanning the stack (a guess, which may differ from one crash to the
//! next). With no named frame, `addr1:` over the frames' modules and
//! offsets.

use crash_signature::{addr1, sym1, ModuleOffset, TOP_FRAMES};

use crate::report::{Frame, Report};
use crate::unwind::How;

/// Functions that report a crash rather than cause it: glibc's abort and
/// assertion paths, the fortify and stack protector checks, malloc's
/// consistency checks.
const REPORTING: &[&str] = &[
    "raise",
    "abort",
    "gsignal",
    "pthread_kill",
    "__pthread_kill",
    "__pthread_kill_implementation",
    "__pthread_kill_internal",
    "__assert_fail",
    "__assert_fail_base",
    "__assert_perror_fail",
    "__libc_message",
    "__libc_message_impl",
    "__libc_fatal",
    "__fortify_fail",
    "__chk_fail",
    "__stack_chk_fail",
    "malloc_printerr",
    "rust_panic",
    "rust_begin_unwind",
    "__rust_start_panic",
    "__rust_abort",
    "__gxx_personality_v0",
    "__cxa_call_terminate",
    "g_assertion_message",
    "g_assertion_message_expr",
];

/// Name prefixes of the same: glibc's internal aliases of the above, Rust's
/// panic machinery and C++'s `terminate` and `__throw_*` helpers.
const REPORTING_PREFIXES: &[&str] = &[
    "__GI_raise",
    "__GI_abort",
    "__GI___pthread_kill",
    "__GI___assert_fail",
    "std::panicking::",
    "core::panicking::",
    "std::sys::pal::unix::abort_internal",
    "std::sys::abort_internal",
    "std::sys::backtrace::",
    "std::process::abort",
    "panic_abort::",
    "_Unwind_",
    "core::result::unwrap_failed",
    "core::option::unwrap_failed",
    "core::option::expect_failed",
    "std::terminate",
    "std::__terminate",
    "std::__throw_",
    "__cxxabiv1::",
    "__gnu_cxx::__verbose_terminate_handler",
    "__cxa_throw",
    "__cxa_rethrow",
];

fn reports_the_crash(name: &str) -> bool {
    REPORTING.contains(&name) || REPORTING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Clone suffixes a compiler adds to a function's name (`f.isra.0`,
/// `f.constprop.1`, `f.part.0`, `f.cold`): they change with the compiler,
/// the site does not.
const CLONE_SUFFIXES: &[&str] = &[".isra.", ".constprop.", ".part.", ".cold", ".lto_priv."];

/// The name without clone suffixes.
fn normal(name: &str) -> &str {
    let cut = CLONE_SUFFIXES
        .iter()
        .filter_map(|s| name.find(s))
        .min()
        .unwrap_or(name.len());
    &name[..cut]
}

/// The program's name: the file name of its path.
fn program(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn reliable(f: &&Frame) -> bool {
    f.how != How::Scan
}

/// The report's signature, if its crashing thread has a frame to make it
/// of: `sym1:` over the names of the frames that say where it crashed;
/// `addr1:` when the first of those has no name (a stripped program), so
/// that every crash in a stripped program's own code is not one
/// signature made of the names below it (`__libc_start_main`).
pub fn signature(report: &Report) -> Option<String> {
    let thread = report.threads.first()?;
    let kind = report
        .signal
        .map_or_else(|| "?".to_owned(), |s| s.to_string());
    let program = program(&report.process);
    // Past the frames that report the crash: the ones that say where.
    let telling: Vec<&Frame> = thread
        .frames
        .iter()
        .filter(reliable)
        .skip_while(|f| f.function.as_deref().is_some_and(reports_the_crash))
        .collect();
    let by_address = || {
        let offsets: Vec<ModuleOffset> = telling
            .iter()
            .filter_map(|f| f.module_offset.clone())
            .take(TOP_FRAMES)
            .collect();
        addr1(program, &kind, &offsets)
    };
    if telling.first().is_some_and(|f| f.function.is_none()) {
        return by_address();
    }
    let names = telling
        .iter()
        .filter_map(|f| f.function.as_deref())
        .filter(|n| !reports_the_crash(n))
        .map(normal);
    sym1(program, &kind, names).or_else(by_address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ThreadTrace;

    fn frame(name: Option<&str>, offset: u64, how: How) -> Frame {
        Frame {
            pc: 0x7f00_0000_0000 + offset,
            how,
            inlined: false,
            function: name.map(str::to_owned),
            module: Some("crashme".into()),
            module_offset: Some(ModuleOffset {
                module: "c0ffee".into(),
                offset,
            }),
            file: None,
            line: None,
        }
    }

    fn report(process: &str, signal: u32, frames: Vec<Frame>) -> Report {
        Report {
            process: process.into(),
            pid: 1,
            signal: Some(signal),
            threads: vec![ThreadTrace {
                tid: 1,
                frames,
                truncated: false,
                error: None,
            }],
            threads_total: 1,
            module_problems: vec![],
            signature: None,
        }
    }

    #[test]
    fn reporting_and_scanned_frames_do_not_count() {
        let plain = report(
            "/usr/bin/crashme",
            6,
            vec![
                frame(Some("check"), 0x1100, How::Cfi),
                frame(Some("main"), 0x1200, How::Cfi),
            ],
        );
        let aborted = report(
            "/tmp/elsewhere/crashme",
            6,
            vec![
                frame(Some("__pthread_kill_implementation"), 0x10, How::Cfi),
                frame(Some("raise"), 0x20, How::Cfi),
                frame(Some("abort"), 0x30, How::Cfi),
                frame(Some("__assert_fail_base"), 0x40, How::Cfi),
                frame(Some("check"), 0x1100, How::Cfi),
                frame(Some("junk"), 0x9999, How::Scan),
                frame(None, 0x5555, How::FramePointer),
                frame(Some("main"), 0x1200, How::Cfi),
            ],
        );
        let s = signature(&plain).unwrap();
        assert!(s.starts_with("sym1:"), "{s}");
        assert_eq!(s, signature(&aborted).unwrap(), "the same site");
        let elsewhere = report(
            "/usr/bin/crashme",
            6,
            vec![
                frame(Some("other_check"), 0x1100, How::Cfi),
                frame(Some("main"), 0x1200, How::Cfi),
            ],
        );
        assert_ne!(s, signature(&elsewhere).unwrap());
    }

    #[test]
    fn rust_panics_are_named_by_their_site() {
        let r = report(
            "/usr/bin/app",
            6,
            vec![
                frame(Some("std::sys::pal::unix::abort_internal"), 1, How::Cfi),
                frame(Some("std::process::abort"), 2, How::Cfi),
                frame(Some("__rust_start_panic"), 3, How::Cfi),
                frame(Some("std::panicking::rust_panic_with_hook"), 4, How::Cfi),
                frame(Some("core::panicking::panic_fmt"), 5, How::Cfi),
                frame(Some("core::result::unwrap_failed"), 6, How::Cfi),
                frame(Some("app::parse"), 7, How::Cfi),
                frame(Some("app::main"), 8, How::Cfi),
            ],
        );
        let direct = report(
            "/usr/bin/app",
            6,
            vec![
                frame(Some("app::parse"), 7, How::Cfi),
                frame(Some("app::main"), 8, How::Cfi),
            ],
        );
        assert_eq!(signature(&r), signature(&direct));
    }

    #[test]
    fn a_stripped_programs_crashes_are_told_apart_by_address() {
        let stripped = |at| {
            report(
                "/usr/bin/stripped",
                11,
                vec![
                    frame(None, at, How::Cfi),
                    frame(None, 0x1200, How::Cfi),
                    frame(Some("__libc_start_main"), 0x29d90, How::Cfi),
                ],
            )
        };
        let a = signature(&stripped(0x1100)).unwrap();
        assert!(a.starts_with("addr1:"), "{a}");
        assert_ne!(a, signature(&stripped(0x1180)).unwrap());
        // Clone suffixes do not count.
        let named = |n: &str| report("/p", 11, vec![frame(Some(n), 1, How::Cfi)]);
        assert_eq!(
            signature(&named("parse.isra.0")),
            signature(&named("parse.constprop.3.cold"))
        );
        assert_eq!(
            signature(&named("parse.part.0")),
            signature(&named("parse"))
        );
        assert_ne!(signature(&named("parse")), signature(&named("parser")));
    }

    #[test]
    fn frames_without_names_give_addr1() {
        let a = report(
            "/p",
            11,
            vec![frame(None, 0x1139, How::Cfi), frame(None, 0x1160, How::Cfi)],
        );
        let b = report(
            "/p",
            11,
            vec![frame(None, 0x1145, How::Cfi), frame(None, 0x1160, How::Cfi)],
        );
        let sa = signature(&a).unwrap();
        assert!(sa.starts_with("addr1:"), "{sa}");
        assert_ne!(sa, signature(&b).unwrap());
        let other = report(
            "/q",
            11,
            vec![frame(None, 0x1139, How::Cfi), frame(None, 0x1160, How::Cfi)],
        );
        assert_ne!(sa, signature(&other).unwrap(), "another program");
        let empty = report("/p", 11, vec![]);
        assert_eq!(signature(&empty), None);
    }
}
