//! Tells the end-to-end tests where the workspace's programs are.
//!
//! `CARGO_BIN_EXE_<name>` is only set for binaries of the same package, and
//! these tests span four packages. Every package of the workspace builds
//! into one target directory, and `OUT_DIR` is
//! `<target>/<profile>/build/<this package>-<hash>/out`, so the programs are
//! three levels up from it, beside `build/`.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out");
    for (var, bin) in [
        ("E2E_BIN_TELEMD", "telemd"),
        ("E2E_BIN_TELEMCTL", "telemctl"),
        ("E2E_BIN_TELEM_RECORD_GEN", "telem-record-gen"),
        ("E2E_BIN_TELEM_CRASH_HANDLER", "telem-crash-handler"),
        ("E2E_LIB_TELEMETRY", "libtelemetry.so"),
    ] {
        println!("cargo:rustc-env={var}={}", profile_dir.join(bin).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
