//! Cores of real programs, compiled at test time and dumped by gdb
//! (`generate-core-file`; the kernel writes no core files on these
//! machines): the notes must describe the process as it crashed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crash_symbolizer::core::{Core, Machine};

fn build_and_dump(src: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let exe = dir.join("threads_segv");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-pthread", "-o"])
        .arg(&exe)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/programs")
                .join(src),
        )
        .status()
        .expect("gcc (the test command installs it)");
    assert!(st.success(), "gcc failed");
    let core = dir.join("core");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&exe)
        .output()
        .expect("gdb (the test command installs it)");
    assert!(
        core.exists(),
        "gdb made no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (exe, core)
}

#[test]
fn notes_of_a_three_thread_segfault() {
    let dir = std::env::temp_dir().join(format!("crash-symbolizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (exe, core_path) = build_and_dump("threads_segv.c", &dir);
    let f = std::fs::File::open(&core_path).unwrap();
    let core = Core::open(&f).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(core.machine, Machine::X86_64);
    }
    let notes = core.notes().unwrap();
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
