//! What checking a probe file's provenance costs at load, for a 1 MiB
//! component: ownership and mode of the file and its directory, its
//! SHA-256 (also what a pin compares), and a minisign signature's check
//! (reading the trusted keys included). Keys and signature are made with
//! the minisign tool, as authors make them.
//!
//! Run: `cargo bench -p telemd --bench provenance` (needs minisign).

mod support;

use std::process::Command;
use std::time::Instant;

use support::pct;
use telem_core::provenance::{check_tree, open_probe_file, Owners, Signatures};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&probes).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    let file = probes.join("big.wasm");
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 2654435761) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let secret = dir.path().join("vendor.key");
    let ok = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(keys.join("vendor.pub"))
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign")
        .status
        .success();
    assert!(ok, "minisign -G");
    let ok = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&secret)
        .arg("-m")
        .arg(&file)
        .arg("-x")
        .arg(probes.join("big.wasm.sig"))
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "minisign -S");
    let owners = Owners::of(&[0, rustix::process::geteuid().as_raw()]);
    let n = 200;
    let (mut tree, mut digest, mut signature) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let (_, meta) = open_probe_file(&file).unwrap();
        check_tree(&file, &meta, &probes, &owners).unwrap();
        tree.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(telem_sandbox::cache::sha256_hex(&bytes));
        digest.push(t.elapsed());
        let t = Instant::now();
        let sigs = Signatures::load(true, &keys, &owners);
        let key = sigs.check(&file, &bytes, &owners).unwrap();
        assert!(key.is_some());
        signature.push(t.elapsed());
    }
    let ms = |d: std::time::Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
    println!("| check, 1 MiB component | n | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for (what, v) in [
        ("ownership and mode (file + probes directory)", &mut tree),
        ("SHA-256 of the file (pin, cache key)", &mut digest),
        ("signature: read the trusted keys, verify", &mut signature),
    ] {
        println!(
            "| {what} | {n} | {} | {} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99))
        );
    }
}
