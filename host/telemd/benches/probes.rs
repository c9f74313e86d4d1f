//! WASM probe benchmark, in-process against the real sandbox:
//! - first load of a component: compile (cold) vs from the artefact cache;
//! - one call (new store + instantiate + `handle`) of `sandbox-test`'s
//!   no-op command: the sandbox's own overhead, p50/p99;
//! - the `hello` heartbeat end to end (call + record spooled, fsync
//!   included), p50/p99;
//! - new store + instantiate, linked at each call vs pre-linked at load
//!   (`InstancePre`), interleaved in one run;
//! - RSS per loaded probe.
//!
//! Needs the components built: `(cd probes-wasm && cargo build --target
//! wasm32-wasip2 --release)`. Run: `cargo bench -p telemd --bench probes`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telem_core::clock::SystemClock;
use telem_core::machine_id::{MachineIdCache, MachineIdStore};
use telem_core::metadata::HostMetadata;
use telem_sandbox::{Event, Sandbox, Sink};
use telemd::ingest::Ingest;

#[path = "support/mod.rs"]
mod support;
use support::{pct, rss_kib};
use telemd::spool::Spool;

fn wasm(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../../probes-wasm/target/wasm32-wasip2/release/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e} (build probes-wasm first)"))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-probes");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("opt-in"), "").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spool = Spool::open(&root.join("spool"), None).unwrap();
        let ingest = Arc::new(Ingest::new(
            spool,
            MachineIdCache::new(MachineIdStore::new(&root, &root.join("static-id"))),
            HostMetadata::collect(Path::new("/")),
            root.join("opt-in"),
            Arc::new(SystemClock),
        ));
        let cache = root.join("cache");
        let hello = wasm("hello");
        let test = wasm("sandbox_test");
        let policy = |_: &str| Default::default();

        // Cold: empty cache, fresh engine. Cached: another fresh engine, same cache.
        let mut cold = Vec::new();
        let mut cached = Vec::new();
        for _ in 0..5 {
            let _ = std::fs::remove_dir_all(&cache);
            let sb = Sandbox::new(&cache).unwrap();
            let t = Instant::now();
            sb.load(Path::new("hello.wasm"), &hello, policy)
                .await
                .unwrap();
            cold.push(t.elapsed());
            let sb = Sandbox::new(&cache).unwrap();
            let t = Instant::now();
            sb.load(Path::new("hello.wasm"), &hello, policy)
                .await
                .unwrap();
            cached.push(t.elapsed());
        }
        println!("| load (hello, {} KiB) | p50 |", hello.len() / 1024);
        println!("|---|---:|");
        println!(
            "| cold (compile + describe) | {:.1} ms |",
            pct(&mut cold, 0.5).as_secs_f64() * 1e3
        );
        println!(
            "| from cache (deserialize + describe) | {:.1} ms |",
            pct(&mut cached, 0.5).as_secs_f64() * 1e3
        );
        println!();

        let sb = Sandbox::new(&cache).unwrap();
        let noop = Arc::new(sb.load(Path::new("t.wasm"), &test, policy).await.unwrap());
        let hb = Arc::new(
            sb.load(Path::new("hello.wasm"), &hello, |_: &str| {
                telem_core::grants::ProbePolicy {
                    max_records_per_hour: Some(telem_core::config::values::Bounded::new(1_000_000)),
                    ..Default::default()
                }
            })
            .await
            .unwrap(),
        );
        let n = 2000;
        let mut calls = Vec::with_capacity(n);
        let args = vec!["print".to_string(), "0".to_string()];
        for _ in 0..n {
            let t = Instant::now();
            sb.run(
                &noop,
                Sink::Spool(ingest.clone()),
                Event::Manual(args.clone()),
                &[],
            )
            .await
            .unwrap();
            calls.push(t.elapsed());
        }
        let mut e2e = Vec::with_capacity(n);
        for _ in 0..n / 4 {
            let t = Instant::now();
            sb.run(&hb, Sink::Spool(ingest.clone()), Event::Timer, &[])
                .await
                .unwrap();
            e2e.push(t.elapsed());
        }
        println!("| call | n | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        println!(
            "| new store + instantiate + handle (no-op) | {n} | {} | {} |",
            us(pct(&mut calls, 0.5)),
            us(pct(&mut calls, 0.99))
        );
        println!(
            "| hello handle, record spooled (fsync) | {} | {} | {} |",
            n / 4,
            us(pct(&mut e2e, 0.5)),
            us(pct(&mut e2e, 0.99))
        );
        println!();

        // What InstancePre saves, in one run: the same component linked at
        // every instantiation (before) and pre-linked once (now).
        let (mut linked, mut prelinked) = sb.instantiation_costs(&test, n).await.unwrap();
        println!("| new store + instantiate (sandbox-test) | n | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        for (what, v) in [
            ("linked at each call", &mut linked),
            ("pre-linked at load (InstancePre)", &mut prelinked),
        ] {
            println!(
                "| {what} | {n} | {} | {} |",
                us(pct(v, 0.5)),
                us(pct(v, 0.99))
            );
        }
        println!();

        let before = rss_kib();
        let mut loaded = Vec::new();
        for _ in 0..20 {
            loaded.push(
                sb.load(Path::new("hello.wasm"), &hello, policy)
                    .await
                    .unwrap(),
            );
        }
        let after = rss_kib();
        println!(
            "RSS per loaded hello probe: {} KiB (20 loaded: {} -> {} KiB)",
            (after - before) / 20,
            before,
            after
        );
        drop(loaded);

        // The Python template next to the Rust hello, when it is built
        // (scripts/build-python-probe.sh), under the limits its README asks
        // the admin for.
        let py_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../probes-wasm/target/python/hello-python.wasm");
        if let Ok(py) = std::fs::read(&py_path) {
            python(&root, &py, &hello).await;
        } else {
            println!("(no {}: Python probe figures skipped)", py_path.display());
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}

/// Size, cold and cached load, call latency and RSS of the Python
/// template beside the Rust hello, both calls captured (no spool).
async fn python(root: &Path, py: &[u8], hello: &[u8]) {
    let options = |cache: &Path| {
        let mut o = telem_sandbox::SandboxOptions::new(cache);
        o.max_component_bytes = 32 << 20;
        o.max_function_bytes = 512 << 10;
        o
    };
    let policy = |_: &str| telem_core::grants::ProbePolicy {
        max_records_per_hour: Some(telem_core::config::values::Bounded::new(1_000_000)),
        ..Default::default()
    };
    let cache = root.join("py-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let sb = Sandbox::with_options(options(&cache)).unwrap();
    let t = Instant::now();
    let probe = Arc::new(
        sb.load(Path::new("hello-python.wasm"), py, policy)
            .await
            .unwrap(),
    );
    let cold = t.elapsed();
    let sb2 = Sandbox::with_options(options(&cache)).unwrap();
    let t = Instant::now();
    sb2.load(Path::new("hello-python.wasm"), py, policy)
        .await
        .unwrap();
    let cached = t.elapsed();
    let rust = Arc::new(
        sb.load(Path::new("hello.wasm"), hello, policy)
            .await
            .unwrap(),
    );
    let n = 200;
    let times = |p: &Arc<telem_sandbox::LoadedProbe>| {
        let sb = &sb;
        let p = p.clone();
        async move {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
                let t = Instant::now();
                sb.run(&p, Sink::Capture(kept.clone()), Event::Timer, &[])
                    .await
                    .unwrap();
                v.push(t.elapsed());
                assert_eq!(kept.lock().unwrap().len(), 1);
            }
            v
        }
    };
    let mut py_calls = times(&probe).await;
    let mut rust_calls = times(&rust).await;
    // What a loaded (compiled, linked) Python probe keeps between calls.
    let before = rss_kib();
    let mut loaded = Vec::new();
    for _ in 0..5 {
        loaded.push(
            sb2.load(Path::new("hello-python.wasm"), py, policy)
                .await
                .unwrap(),
        );
    }
    let per_loaded = (rss_kib() - before) / 5;
    drop(loaded);
    println!("| hello-python (componentize-py) next to hello (Rust) | Python | Rust |");
    println!("|---|---:|---:|");
    println!(
        "| component size | {:.1} MB | {} KiB |",
        py.len() as f64 / 1e6,
        hello.len() / 1024
    );
    println!(
        "| cold load (compile + describe) | {:.1} s | (above) |",
        cold.as_secs_f64()
    );
    println!(
        "| load from the cache | {:.1} ms | (above) |",
        cached.as_secs_f64() * 1e3
    );
    println!(
        "| call p50 / p99 (new store + instantiate + handle, record captured) | {} / {} | {} / {} |",
        us(pct(&mut py_calls, 0.5)),
        us(pct(&mut py_calls, 0.99)),
        us(pct(&mut rust_calls, 0.5)),
        us(pct(&mut rust_calls, 0.99))
    );
    println!("| RSS per loaded probe | {per_loaded} KiB | (above) |");
}
