//! The programs that run with the most privilege link the least: the crash
//! handler runs as root for every crash the kernel reports, and neither it
//! nor `telem-record-gen` nor libtelemetry (inside every native probe) may
//! pull in the async runtime, the wasm engine or
//! the HTTP stack. Checked on the dependency tree Cargo resolves, so a new
//! dependency of the core crate that drags one in fails here.

use std::process::Command;

/// Crates that must not be linked into the small programs, by name
/// prefix: every crate of the runtime, the engine, the compiler and the
/// HTTP stack (`tokio-util`, `wasmtime-internal-*`, `cranelift-*`,
/// `hyper-util`, ...).
const FORBIDDEN: [&str; 6] = [
    "tokio",
    "wasmtime",
    "cranelift",
    "reqwest",
    "hyper",
    "telem-sandbox",
];

/// The packages (by name) in `package`'s normal dependency tree.
fn dependency_tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--package", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_lean(package: &str) {
    let tree = dependency_tree(package);
    assert!(tree.iter().any(|p| p == "telem-core"), "{tree:?}");
    let found: Vec<&String> = tree
        .iter()
        .filter(|p| FORBIDDEN.iter().any(|f| p.starts_with(f)))
        .collect();
    assert!(found.is_empty(), "{package} links {found:?}");
}

#[test]
fn the_crash_handler_links_neither_runtime_nor_engine_nor_http() {
    assert_lean("telem-crash-handler");
}

#[test]
fn record_gen_links_neither_runtime_nor_engine_nor_http() {
    assert_lean("telem-record-gen");
}

/// Linked into every native probe's process.
#[test]
fn libtelemetry_links_neither_runtime_nor_engine_nor_http() {
    assert_lean("libtelemetry");
}

#[test]
fn the_check_sees_what_it_forbids() {
    // The daemon does link them: a tree the check cannot read would pass.
    let tree = dependency_tree("telemd");
    for p in ["tokio", "wasmtime", "reqwest", "hyper", "telem-sandbox"] {
        assert!(tree.iter().any(|t| t == p), "{p} not in {tree:?}");
    }
}
