//! What the benchmarks share: this process's RSS, percentiles, and the
//! records in a spool directory. Included by each bench with
//! `#[path = "support/mod.rs"] mod support;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TELEMD: &str = env!("CARGO_BIN_EXE_telemd");

/// This process's resident set, KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        })
        .unwrap()
}

/// The `p` quantile of `v` (sorted in place).
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Records stored in a spool directory (temporary files not counted).
pub fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// A fresh bench directory under Cargo's scratch directory, opted in, with
/// the release component `built` (`probes-wasm/target/...`) installed in
/// its `probes/` as `installed`.
pub fn bench_root(name: &str, built: &str, installed: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("probes")).unwrap();
    std::fs::write(root.join("opt-in"), "").unwrap();
    let wasm = format!(
        "{}/../../probes-wasm/target/wasm32-wasip2/release/{built}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(&wasm, root.join("probes").join(installed))
        .unwrap_or_else(|e| panic!("{wasm}: {e} (build probes-wasm first)"));
    root
}

/// The daemon's probe path in this process, as the source benches run it:
/// spool, ingest, sandbox and supervisor under `root` (which holds
/// `probes/` and `opt-in`), with the shipped grant of `probe` but its
/// records per hour raised so the bench measures the path, not the cap.
/// Call inside the runtime.
pub fn probe_manager(
    root: &Path,
    probe: &str,
    sources: telemd::sources::SourceOptions,
) -> std::sync::Arc<telemd::supervisor::ProbeManager> {
    use std::sync::Arc;
    let spool = telemd::spool::Spool::open(&root.join("spool"), None).unwrap();
    let ingest = Arc::new(telemd::ingest::Ingest::new(
        spool,
        telem_core::machine_id::MachineIdCache::new(telem_core::machine_id::MachineIdStore::new(
            root,
            &root.join("static-id"),
        )),
        telem_core::metadata::HostMetadata::collect(Path::new("/")),
        root.join("opt-in"),
        Arc::new(telem_core::clock::SystemClock),
    ));
    let mut options = telem_sandbox::SandboxOptions::new(&root.join("cache"));
    options.rules.max_records_per_hour = 1_000_000;
    let sandbox = telem_sandbox::Sandbox::with_options(options).unwrap();
    let mut policy = telem_core::config::Config::default().probes.probes[probe].clone();
    policy.max_records_per_hour = Some(telem_core::config::values::Bounded::new(1_000_000));
    telemd::supervisor::ProbeManager::new(
        sandbox,
        ingest,
        vec![root.join("probes")],
        std::collections::BTreeMap::from([(probe.to_owned(), policy)]),
        root.join("disabled"),
        sources,
        telemd::supervisor::Trust::this_process(),
    )
}

/// A `telemd` started by a bench, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub root: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the release `telemd` with every path under `root`, opted in,
/// delivery held (records stay in the spool), plus `extra` config lines;
/// waits for its socket. `fresh` empties `root` first.
pub fn start_telemd(root: &Path, extra: &str, fresh: bool) -> Daemon {
    if fresh {
        let _ = std::fs::remove_dir_all(root);
    }
    std::fs::create_dir_all(root).unwrap();
    let r = root.display();
    let cfg = format!(
        "server = \"file://{r}/out.jsonl\"\nsocket_path = \"{r}/telem-0\"\nspool_dir = \"{r}/spool\"\n\
         state_dir = \"{r}/state\"\njournal_dir = \"{r}/journal\"\nopt_in_file = \"{r}/opt-in\"\n\
         control_socket = \"{r}/control.sock\"\nspool_max_size = -1\n# hold records in the spool: this measures ingest only\nrecord_burst_limit = 0\n{extra}"
    );
    std::fs::write(root.join("telemd.toml"), cfg).unwrap();
    std::fs::write(root.join("opt-in"), "").unwrap();
    let child = Command::new(TELEMD)
        .arg("-f")
        .arg(root.join("telemd.toml"))
        .arg("--log")
        .arg("warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn telemd");
    let sock = root.join("telem-0");
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "telemd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        root: root.to_owned(),
    }
}
