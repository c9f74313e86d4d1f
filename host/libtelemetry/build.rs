//! Links `libtelemetry.so` with the seed's SONAME and symbol versions.
//!
//! rustc hands the linker its own, anonymous version script for a cdylib.
//! GNU ld refuses to combine that with named versions, so the library is
//! linked with the `ld.lld` the Rust toolchain ships (the default on
//! x86_64 Linux since Rust 1.90, made explicit for every target here).
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

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = std::env::var("HOST").expect("set by cargo");
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match sysroot {
        Some(root) => {
            let gcc_ld = PathBuf::from(root).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
            if gcc_ld.join("ld.lld").exists() {
                println!("cargo:rustc-cdylib-link-arg=-B{}", gcc_ld.display());
            }
        }
        None => println!(
            "cargo:warning=cannot ask {rustc} for its sysroot; linking with the system's ld.lld"
        ),
    }
    println!("cargo:rustc-cdylib-link-arg=-fuse-ld=lld");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtelemetry.so.4");
}
