//! The programs that run with the most privilege link the least: the crash
//! handler runs as root for every crash the kernel reports, and neither it
//! nor `telem-record-gen` nor libtelemetry (inside every native probe) nor
//! the core crate they share may pull in the async runtime, the wasm
//! engine or the HTTP stack; the core and libtelemetry link no argument
//! parser or schema generator either (those are the programs' business).
//! Checked on the dependency tree Cargo resolves, so a new dependency of
//! the core crate that drags one in fails here.

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

/// What a library linked into other programs' processes leaves to them:
/// command-line parsing and the config reference's schema generator.
const PROGRAMS_ONLY: [&str; 2] = ["clap", "schemars"];

fn assert_lean(package: &str) {
    assert_links_none(package, &FORBIDDEN);
}

fn assert_links_none(package: &str, forbidden: &[&str]) {
    let tree = dependency_tree(package);
    assert!(tree.iter().any(|p| p == "telem-core"), "{tree:?}");
    let found: Vec<&String> = tree
        .iter()
        .filter(|p| forbidden.iter().any(|f| p.starts_with(f)))
        .collect();
    assert!(found.is_empty(), "{package} links {found:?}");
}

#[test]
fn the_core_links_neither_runtime_nor_engine_nor_http_nor_parser_nor_schemas() {
    assert_lean("telem-core");
    assert_links_none("telem-core", &PROGRAMS_ONLY);
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
fn libtelemetry_links_neither_runtime_nor_engine_nor_http_nor_parser_nor_schemas() {
    assert_lean("libtelemetry");
    assert_links_none("libtelemetry", &PROGRAMS_ONLY);
}

#[test]
fn the_check_sees_what_it_forbids() {
    // The daemon does link them: a tree the check cannot read would pass.
    let tree = dependency_tree("telemd");
    for p in [
        "tokio",
        "wasmtime",
        "reqwest",
        "hyper",
        "telem-sandbox",
        "clap",
    ] {
        assert!(tree.iter().any(|t| t == p), "{p} not in {tree:?}");
    }
    let tree = dependency_tree("telemctl");
    assert!(tree.iter().any(|t| t == "schemars"), "{tree:?}");
}
