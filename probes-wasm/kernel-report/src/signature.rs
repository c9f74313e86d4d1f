//! A kernel report's signature (see the `crash-signature` crate): `sym1:`
//! over the report's classification and its top named functions (the
//! function the registers name, then the trace's reliable frames), skipping
//! the functions that only report (`dump_stack`, `__warn`, the trap and
//! page fault handlers, `panic`); `line1:` over the classification and the
//! first line with its numbers made `N` when the report has no frame (a
//! one-line watchdog warning, a panic).
//!
//! Compiler suffixes (`.isra.0`, `.constprop.0`, `.cold`) are dropped from
//! names: they change with the compiler, the site does not.

use crash_signature::{line1, sym1};

use crate::assemble::Report;

/// The name the signature gives the kernel as a program.
const PROGRAM: &str = "linux";

/// Functions that report a problem found elsewhere, on x86, arm64 and arm.
const REPORTING: &[&str] = &[
    "dump_stack",
    "dump_stack_lvl",
    "__dump_stack",
    "show_stack",
    "show_regs",
    "dump_backtrace",
    "unwind_backtrace",
    "__warn",
    "__warn_printk",
    "warn_slowpath_fmt",
    "warn_slowpath_null",
    "warn_slowpath_common",
    "report_bug",
    "handle_bug",
    "exc_invalid_op",
    "asm_exc_invalid_op",
    "do_error_trap",
    "do_invalid_op",
    "invalid_op",
    "do_trap",
    "die",
    "__die",
    "__die_body",
    "die_kernel_fault",
    "oops_end",
    "panic",
    "nmi_panic",
    "no_context",
    "__bad_area_nosemaphore",
    "bad_area_nosemaphore",
    "do_user_addr_fault",
    "do_kern_addr_fault",
    "__do_page_fault",
    "do_page_fault",
    "exc_page_fault",
    "asm_exc_page_fault",
    "page_fault",
    "page_fault_oops",
    "kernelmode_fixup_or_oops",
    "__do_kernel_fault",
    "do_translation_fault",
    "do_mem_abort",
    "el1_abort",
    "el1h_64_sync_handler",
    "el1h_64_sync",
    "el1_sync",
    "el1_sync_handler",
    "el1_dbg",
    "do_debug_exception",
    "call_break_hook",
    "bug_handler",
    "brk_handler",
    "__schedule_bug",
    "__might_resched",
    "__might_sleep",
    "___might_sleep",
];

/// A frame or register name without its offset (`+0x1b5/0x3fb`), its
/// `? ` mark and compiler suffixes; `None` for a value with no name.
fn function(name: &str) -> Option<&str> {
    let name = name.split('+').next()?.split('.').next()?;
    let named = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    named.then_some(name)
}

/// The report's signature.
pub fn signature(report: &Report) -> String {
    let kind = report.pattern.classification;
    let p = crate::payload::parse(report);
    // The faulting function: on x86 the trace lists its callers only.
    let at = p
        .regs
        .iter()
        .find(|(n, _)| n == "RIP" || n == "PC")
        // A value the kernel could not name is shown only as zero or not.
        .filter(|(_, v)| v != "Zero" && v != "Non-zero")
        .and_then(|(_, v)| function(v));
    let frames = p
        .frames
        .iter()
        .filter(|(f, _)| !f.starts_with("? "))
        .filter_map(|(f, _)| function(f));
    let mut names: Vec<&str> = at.into_iter().chain(frames).collect();
    // The faulting function is also the trace's first frame on arm.
    names.dedup();
    let names = names.into_iter().filter(|n| !REPORTING.contains(n));
    sym1(PROGRAM, kind, names).unwrap_or_else(|| line1(kind, &report.lines[0].1))
}
