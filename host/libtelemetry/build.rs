//! Links `libtelemetry.so` with the seed's SONAME and symbol versions.
//!
//! rustc hands the linker its own, anonymous version script for a cdylib.
//! GNU ld refuses to combine that with named versions, so the library is
//! linked with the `ld.lld` the Rust toolchain ships (the default on
//! x86_64 Linux since Rust 1.90, made explicit for every target here), or
//! the system's `ld.lld`; with neither, the library is linked without its
//! versions and the build says so.
//! lld honours a symbol named explicitly in our script over rustc's
//! `local: *`; the `tm_*` names are not Rust exports (see `src/abi.rs`), so
//! ours is the only script that names them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let map = dir.join("telemetry.map");
    println!("cargo:rerun-if-changed={}", map.display());
    println!("cargo:rerun-if-changed=build.rs");

    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtelemetry.so.4");
    match lld() {
        Some(dir) => {
            if let Some(dir) = dir {
                println!("cargo:rustc-cdylib-link-arg=-B{}", dir.display());
            }
            println!("cargo:rustc-cdylib-link-arg=-fuse-ld=lld");
            println!(
                "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
                map.display()
            );
        }
        // Programs linked against a versioned libtelemetry still load an
        // unversioned one (the loader accepts an unversioned definition),
        // so the library works; it just cannot carry the versions.
        None => println!(
            "cargo:warning=no ld.lld (neither the Rust toolchain's nor the system's): libtelemetry.so is linked without its symbol versions"
        ),
    }
}

/// Where `ld.lld` is: `Some(Some(dir))` for the one the Rust toolchain
/// ships (passed to cc with `-B`), `Some(None)` for the system's on PATH.
fn lld() -> Option<Option<PathBuf>> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = std::env::var("HOST").ok()?;
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(root) = sysroot {
        let gcc_ld = PathBuf::from(root).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
        if gcc_ld.join("ld.lld").exists() {
            return Some(Some(gcc_ld));
        }
    }
    let on_path = std::env::var_os("PATH")?;
    std::env::split_paths(&on_path)
        .any(|d| d.join("ld.lld").exists())
        .then_some(None)
}
