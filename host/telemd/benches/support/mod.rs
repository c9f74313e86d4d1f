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
        tokio::runtime::Handle::current(),
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
        // Beside its directory, not on the bench's terminal: hostile
        // probes' log lines would bury the results.
        .stderr(std::fs::File::create(root.with_extension("log")).unwrap())
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

/// How many hostile probes [`install_hostile`] installs.
pub const HOSTILE_PROBES: usize = 10;

/// What each hostile probe does in a loop, each followed by `print 1` (a
/// call that succeeds, so that none is quarantined and every one keeps
/// hammering): spin until the deadline, grow memory to the store budget
/// (64 MiB), flood the log, hold files past the host-resource cap, make
/// pollables past it, fill its state to the quota, send records up to
/// the hourly budget, flood stdout.
const HOSTILE_PLAN: [&[&str]; HOSTILE_PROBES] = [
    &["spin"],
    &["spin"],
    &["grow", "60"],
    &["grow", "60"],
    &["log", "1000", "4000"],
    &["hold", "FILE", "300", "200"],
    &["pollables", "300"],
    &["fill-state"],
    &["flood", "2000"],
    &["print", "1000000"],
];

/// The name of hostile probe `i`: as long as `sandbox-test`, whose
/// component it is with the name's bytes replaced (a component's name is
/// its own claim, and one name runs one call at a time).
fn hostile_name(i: usize) -> String {
    format!("hostile-p-{i:02}")
}

/// Installs [`HOSTILE_PROBES`] copies of the `sandbox-test` component
/// under `root/probes`, each under its own name, and returns the config
/// lines that grant them (default limits: 64 MiB, 10 s, 16 MiB of state,
/// the host's 1,000 records an hour).
pub fn install_hostile(root: &Path) -> String {
    let wasm = format!(
        "{}/../../probes-wasm/target/wasm32-wasip2/release/sandbox_test.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes =
        std::fs::read(&wasm).unwrap_or_else(|e| panic!("{wasm}: {e} (build probes-wasm first)"));
    std::fs::create_dir_all(root.join("probes")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/f"), "x").unwrap();
    let mut config = String::new();
    for i in 0..HOSTILE_PROBES {
        let name = hostile_name(i);
        let from = b"sandbox-test";
        assert_eq!(name.len(), from.len());
        let mut patched = bytes.clone();
        let mut at = 0;
        while let Some(p) = patched[at..].windows(from.len()).position(|w| w == from) {
            patched[at + p..at + p + from.len()].copy_from_slice(name.as_bytes());
            at += p + from.len();
        }
        std::fs::write(root.join(format!("probes/{name}.wasm")), patched).unwrap();
        config.push_str(&format!(
            "[probes.{name}]\nclassifications = [\"org.example/test/*\"]\nread_paths = [\"{}/data\"]\n",
            root.display()
        ));
    }
    config
}

/// The hostile probes being run, each in a loop of its own.
pub struct Hostile {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Hostile {
    /// Waits until the daemon behind `control` has loaded every hostile
    /// probe, then runs each one's plan in a loop, all at once.
    pub fn start(root: &Path) -> Hostile {
        use std::sync::atomic::{AtomicBool, Ordering};
        use telem_core::control::client::Client;
        use telem_core::control::{Request, Response};
        let control = root.join("control.sock");
        let t = Instant::now();
        loop {
            let loaded = Client::connect(&control, Some(Duration::from_secs(60)))
                .and_then(|mut c| c.call(&Request::List))
                .map(|r| match r {
                    Response::Probes(list) => list.probes.len(),
                    _ => 0,
                })
                .unwrap_or(0);
            if loaded >= HOSTILE_PROBES {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the hostile probes did not load"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let file = root.join("data/f").display().to_string();
        let threads = (0..HOSTILE_PROBES)
            .map(|i| {
                let (stop, control, file) = (stop.clone(), control.clone(), file.clone());
                std::thread::spawn(move || {
                    let plan: Vec<String> = HOSTILE_PLAN[i]
                        .iter()
                        .map(|a| {
                            if *a == "FILE" {
                                file.clone()
                            } else {
                                (*a).to_owned()
                            }
                        })
                        .collect();
                    let mut calls = 0;
                    let mut seen = std::collections::HashSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        for args in [plan.clone(), vec!["print".to_owned(), "1".to_owned()]] {
                            let run = Request::Run {
                                probe: hostile_name(i),
                                args,
                                report: false,
                            };
                            let answer = Client::connect(&control, Some(Duration::from_secs(60)))
                                .and_then(|mut c| c.call(&run));
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            calls += 1;
                            if let Err(e) = answer {
                                let e = e.to_string();
                                let kind: String = e.chars().take(60).collect();
                                if seen.insert(kind) && seen.len() <= 3 {
                                    eprintln!(
                                        "  {}: {}",
                                        hostile_name(i),
                                        e.chars().take(200).collect::<String>()
                                    );
                                }
                            }
                        }
                    }
                    calls
                })
            })
            .collect();
        Hostile { stop, threads }
    }

    /// Stops the loops (each after its call in progress) and returns how
    /// many calls were made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

/// The options the ingest and delivery benches share: `--records N`,
/// `--rounds R`, `--hostile`, `--dir DIR` (where the runs' files go: a
/// disk, since the fsyncs are the point), and `--clients N,N` (ingest).
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub records: usize,
    pub rounds: usize,
    pub hostile: bool,
    pub dir: PathBuf,
    pub clients: Vec<usize>,
}

impl BenchArgs {
    /// The command line over `defaults`; unknown words are ignored (cargo
    /// bench passes its own).
    pub fn parse(defaults: BenchArgs) -> BenchArgs {
        let mut a = defaults;
        let mut args = std::env::args().skip(1);
        while let Some(w) = args.next() {
            let mut value = |what: &str| args.next().unwrap_or_else(|| panic!("{w} {what}"));
            match w.as_str() {
                "--records" => a.records = value("N").parse().expect("--records N"),
                "--rounds" => a.rounds = value("R").parse().expect("--rounds R"),
                "--hostile" => a.hostile = true,
                "--dir" => a.dir = PathBuf::from(value("DIR")),
                "--clients" => {
                    a.clients = value("N,N")
                        .split(',')
                        .map(|n| n.parse().expect("--clients N,N"))
                        .collect()
                }
                _ => {}
            }
        }
        a
    }
}
