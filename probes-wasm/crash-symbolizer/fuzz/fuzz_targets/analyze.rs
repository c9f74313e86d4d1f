//! Any bytes as a core through the whole pipeline: modules, build ids from
//! core memory, the vDSO image, unwinding and the payload. (Files named by
//! a fuzzed NT_FILE are opened read-only if they exist.)
#![no_main]

use crash_symbolizer::modules::Lookup;
use crash_symbolizer::{analyze, CrashFacts, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = Options {
        lookup: Lookup {
            debug_roots: Vec::new(),
            exe: None,
        },
        ..Options::default()
    };
    if let Ok(r) = analyze(data, &CrashFacts::default(), &opts) {
        let p = r.payload();
        assert!(p.len() <= 8192);
        let _ = r.classification();
    }
});
