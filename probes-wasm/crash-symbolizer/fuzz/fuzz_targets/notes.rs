//! Any bytes as a core: the ELF header, program headers and every note
//! must parse or fail cleanly, and memory reads stay inside the input.
#![no_main]

use crash_symbolizer::core::Core;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(core) = Core::open(data) else { return };
    let Ok(notes) = core.notes() else { return };
    let mut buf = [0u8; 64];
    for t in notes.threads.iter().take(8) {
        let _ = core.read_memory(t.sp, &mut buf);
        let _ = core.read_memory(t.pc, &mut buf[..8]);
    }
    let _ = notes.vdso();
});
