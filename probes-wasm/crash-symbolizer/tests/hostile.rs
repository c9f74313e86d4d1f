//! The hostile cores the security review made, through the public API as
//! the probe runs it: each is analyzed, or refused with a clear error,
//! never a hang or a panic. The very generators the host's end-to-end
//! tests feed to `telem-crash-handler`.

#[path = "../../../tests/support/hostile_cores.rs"]
mod hostile_cores;

use crash_symbolizer::core::Core;
use crash_symbolizer::modules::{Lookup, Modules};
use crash_symbolizer::{analyze, CrashFacts, Options};
use hostile_cores as h;

fn options() -> Options {
    Options {
        lookup: Lookup {
            debug_roots: Vec::new(),
            exe: None,
            fetch: None,
        },
        ..Options::default()
    }
}

#[test]
fn a_core_with_64000_nt_file_entries_is_analyzed() {
    let n = 64_000;
    let bytes = h::core_with_nt_file_entries(n);
    let core = Core::open(&bytes[..]).unwrap();
    let notes = crash_symbolizer::notes::read(&core).unwrap();
    let modules = Modules::new(&core, &notes, Lookup::default());
    assert_eq!(modules.list.len(), 32_000);
    let last = modules.list.last().unwrap();
    assert_eq!(
        (last.path.as_str(), last.start, last.end),
        (
            h::library_path(31_999).as_str(),
            h::library_base(31_999),
            h::library_end(31_999)
        )
    );
    let r = analyze(&bytes[..], &CrashFacts::default(), &options()).unwrap();
    assert_eq!(r.process, h::library_path(0));
    assert_eq!(
        (r.pid, r.signal, r.threads_total),
        (h::PID, Some(h::SIGNAL), 1)
    );
    // The libraries do not exist: one frame, and why it ends there.
    assert_eq!(r.threads[0].frames.len(), 1);
    assert!(
        r.error().is_some_and(|e| e.contains("cannot unwind")),
        "{:?}",
        r.error()
    );
    assert_eq!(r.module_problems.len(), 1, "{:?}", r.module_problems);
    assert!(r.module_problems[0].contains(&h::library_path(0)));
}

#[test]
fn an_odd_count_of_entries_leaves_a_library_with_its_header_page_only() {
    let bytes = h::core_with_nt_file_entries(5);
    let core = Core::open(&bytes[..]).unwrap();
    let notes = crash_symbolizer::notes::read(&core).unwrap();
    let modules = Modules::new(&core, &notes, Lookup::default());
    assert_eq!(modules.list.len(), h::library_count(5));
    let m = &modules.list[2];
    assert_eq!(
        (m.start, m.end),
        (h::library_base(2), h::library_base(2) + 4096)
    );
}

#[test]
fn a_note_size_that_wraps_on_32_bits_is_refused() {
    let e = analyze(
        &h::core_with_overflowing_note()[..],
        &CrashFacts::default(),
        &options(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("past the end of its segment"), "{e}");
}

#[test]
fn a_segment_that_wraps_the_address_space_is_refused() {
    let e = analyze(
        &h::core_with_wrapping_segment()[..],
        &CrashFacts::default(),
        &options(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("past the end of the address space"),
        "{e}"
    );
}
