//! Native ingest benchmark: a burst of records over the legacy socket into
//! the durable spool, as libtelemetry sends them (connect, write one
//! frame, close; nothing read back), from 1, 16 and 64 client threads of
//! one uid, as fast as they can, with no window. A record counts once its
//! file appears in the spool under its name (inotify), which for `telemd`
//! happens only after its fsync; the frame-to-spool latency of each record
//! runs from its write to that moment. The run fails if a single frame
//! sent is not in the spool.
//!
//! With `LEGACY_TELEMPROBD=/path/to/telemprobd` (the legacy daemon, built
//! from clearlinux/telemetrics-client; see BENCHMARKS.md), the same
//! clients send the same frames to it in the same run, alternating with
//! `telemd`, for comparison. It writes each record once, without fsync.
//!
//! With `--hostile`, each run of `telemd` alternates with one where ten
//! hostile probes run at their limits meanwhile (benches/support).
//!
//! Run: `cargo bench -p telemd --bench ingest`
//! (`-- --records N`, `-- --clients 1,16,64`, `-- --rounds R`,
//! `-- --hostile`, `-- --dir DIR` for the filesystem the daemons use).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telem_core::record::wire::{encode_frame, parse_frame};
use telem_core::record::{spool_file, Header};

mod support;
use support::{install_hostile, pct, start_telemd, Daemon, Hostile};

fn frame_template() -> telem_core::record::Record {
    let p = format!(
        "{}/../../tests/fixtures/legacy/frame-record-gen.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    parse_frame(&std::fs::read(p).expect("fixture")).expect("fixture parses")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The daemon under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Telemd,
    /// `telemd` with ten hostile probes running at their limits.
    Hostile,
    Legacy,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Telemd => "telemd (fsync)",
            Which::Hostile => "telemd, 10 hostile probes",
            Which::Legacy => "legacy telemprobd (no fsync)",
        }
    }
}

/// A daemon started for one run, killed when dropped.
struct Running {
    /// `telemd` (the support's daemon) or the legacy one.
    process: Process,
    socket: PathBuf,
    spool: PathBuf,
}

enum Process {
    Telemd(Daemon),
    Hostile(Daemon, Option<Hostile>),
    Legacy(Child),
}

impl Running {
    fn pid(&self) -> u32 {
        match &self.process {
            Process::Telemd(d) | Process::Hostile(d, _) => d.child.id(),
            Process::Legacy(c) => c.id(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match &mut self.process {
            Process::Legacy(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Process::Hostile(_, hostile) => {
                if let Some(h) = hostile.take() {
                    let calls = h.stop();
                    eprintln!("  hostile probe calls during the run: {calls}");
                }
            }
            Process::Telemd(_) => {}
        }
    }
}

fn start(which: Which, root: &Path, legacy: Option<&OsString>) -> Running {
    let process = match which {
        Which::Telemd => Process::Telemd(start_telemd(root, "", true)),
        Which::Hostile => {
            let _ = std::fs::remove_dir_all(root);
            let grants = install_hostile(root);
            let d = start_telemd(
                root,
                &format!("probes_dirs = [\"{}/probes\"]\n{grants}", root.display()),
                false,
            );
            let hostile = Hostile::start(root);
            // Every probe is in its loop before the burst starts.
            std::thread::sleep(Duration::from_secs(3));
            Process::Hostile(d, Some(hostile))
        }

        Which::Legacy => {
            let _ = std::fs::remove_dir_all(root);
            std::fs::create_dir_all(root.join("spool")).unwrap();
            let conf = root.join("telemetrics.conf");
            std::fs::write(
                &conf,
                format!(
                    "[settings]\nsocket_path={0}/telem-0\nspool_dir={0}/spool\ndaemon_recycling_enabled=false\n",
                    root.display()
                ),
            )
            .unwrap();
            let child = Command::new(legacy.expect("legacy path"))
                .arg("-f")
                .arg(&conf)
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDNAMES")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn the legacy telemprobd");
            let t = Instant::now();
            while std::os::unix::net::UnixStream::connect(root.join("telem-0")).is_err() {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "telemprobd did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Process::Legacy(child)
        }
    };
    Running {
        process,
        socket: root.join("telem-0"),
        spool: root.join("spool"),
    }
}

/// Watches a spool directory and notes when each record file appears
/// under its name: renamed into place (`telemd`) or closed after writing
/// (the legacy daemon, which writes in place).
struct Watcher {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    count: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(dir: &Path) -> Watcher {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .expect("inotify");
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
        )
        .expect("watch the spool");
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let count = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, count, done) = (seen.clone(), count.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![std::mem::MaybeUninit::uninit(); 1 << 20];
                let mut reader = inotify::Reader::new(&fd, &mut buf);
                while !done.load(Ordering::Relaxed) {
                    match reader.next() {
                        Ok(ev) => {
                            let now = Instant::now();
                            if ev.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                                panic!(
                                    "inotify queue overflowed: raise fs.inotify.max_queued_events"
                                );
                            }
                            let Some(name) = ev.file_name() else { continue };
                            let name = name.to_string_lossy().into_owned();
                            if name.starts_with('.') {
                                continue;
                            }
                            if seen.lock().unwrap().insert(name, now).is_none() {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(rustix::io::Errno::AGAIN) => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        Err(e) => panic!("inotify read: {e}"),
                    }
                }
            })
        };
        Watcher {
            seen,
            count,
            done,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    fn snapshot(&self) -> Vec<(String, Instant)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect()
    }

    fn stop(mut self) -> HashMap<String, Instant> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

struct RunResult {
    which: Which,
    clients: usize,
    records: usize,
    secs: f64,
    lost: usize,
    p50: Duration,
    p99: Duration,
    peak_rss: u64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        (self.records - self.lost) as f64 / self.secs
    }
}

/// User and system CPU time a process has used, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at 3.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Lets write-back of earlier runs finish so it doesn't bill this one.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(3));
}

fn run(
    which: Which,
    root: &Path,
    legacy: Option<&OsString>,
    clients: usize,
    records: usize,
) -> RunResult {
    settle();
    let d = start(which, root, legacy);
    let pid = d.pid();
    let watcher = Watcher::start(&d.spool);
    let per = records / clients;
    let total = per * clients;
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let sock = d.socket.clone();
            std::thread::spawn(move || {
                let mut r = frame_template();
                let mut sent = Vec::with_capacity(per);
                for i in 0..per {
                    r.payload = format!("client {c} record {i}");
                    let id = telem_core::record::random_id();
                    r.headers.set(Header::EventId, &id);
                    let frame = encode_frame(&r);
                    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
                    std::io::Write::write_all(&mut s, &frame).expect("send");
                    drop(s);
                    sent.push((id, Instant::now()));
                }
                sent
            })
        })
        .collect();
    let sent: HashMap<String, Instant> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let sent_after = start.elapsed().as_secs_f64();
    // Done when every frame sent is in the spool, or nothing new came for
    // 10 s. Probes' records land there too: files are told apart by their
    // event ids, read once each, only when the count could be complete.
    let mut decoded = std::collections::HashSet::new();
    let mut landed = Vec::with_capacity(total);
    let mut match_new = |landed: &mut Vec<(Instant, Instant)>| {
        for (name, at) in watcher.snapshot() {
            if !decoded.insert(name.clone()) {
                continue;
            }
            let rec = std::fs::read(d.spool.join(&name))
                .ok()
                .and_then(|b| spool_file::decode(&b).ok());
            if let Some(sent_at) =
                rec.and_then(|r| sent.get(r.headers.get(Header::EventId)).copied())
            {
                landed.push((sent_at, at));
            }
        }
    };
    let mut last = (watcher.count(), Instant::now());
    loop {
        let n = watcher.count();
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n >= total {
            match_new(&mut landed);
            if landed.len() >= total {
                break;
            }
        }
        if last.1.elapsed() > Duration::from_secs(10) {
            match_new(&mut landed);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let cpu = cpu_secs(pid);
    drop(watcher.stop());
    drop(d);
    let end = landed.iter().map(|(_, at)| *at).max().unwrap_or(start);
    let secs = end.duration_since(start).as_secs_f64();
    let mut latencies: Vec<Duration> = landed
        .iter()
        .map(|(sent, at)| at.saturating_duration_since(*sent))
        .collect();
    let lost = total - latencies.len().min(total);
    eprintln!(
        "{}, {clients} clients: all frames sent after {sent_after:.2}s, last spooled after {secs:.2}s, {lost} lost, daemon CPU {cpu:.2}s",
        which.name()
    );
    let (p50, p99) = if latencies.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (pct(&mut latencies, 0.5), pct(&mut latencies, 0.99))
    };
    // Not removed until the whole bench ends: on ext4 without a journal
    // (this VM's disk), allocating an inode skips the recently deleted
    // ones, reading each one's inode, so 20,000 files deleted just before
    // a run would bill it several times its own cost.
    RunResult {
        which,
        clients,
        records: total,
        secs,
        lost,
        p50,
        p99,
        peak_rss: peak.load(Ordering::Relaxed),
    }
}

fn main() {
    let support::BenchArgs {
        records,
        rounds,
        hostile,
        dir,
        clients,
    } = support::BenchArgs::parse(support::BenchArgs {
        records: 20_000,
        rounds: 3,
        hostile: false,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        clients: vec![1, 16, 64],
    });
    let legacy = std::env::var_os("LEGACY_TELEMPROBD");
    let mut daemons = vec![Which::Telemd];
    if hostile {
        daemons.push(Which::Hostile);
    }
    if legacy.is_some() {
        daemons.push(Which::Legacy);
    }
    // On a disk, not tmpfs: the fsyncs are the point.
    let base = dir.join("bench-ingest");
    let _ = std::fs::remove_dir_all(&base);

    let idle = {
        let d = start_telemd(&base.join("idle"), "", true);
        std::thread::sleep(Duration::from_secs(1));
        rss_kib(d.child.id())
    };
    println!("telemd idle RSS, no probes: {idle} KiB");
    // And with the hello probe loaded (if probes-wasm is built).
    let hello = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../probes-wasm/target/wasm32-wasip2/release/hello.wasm");
    if hello.exists() {
        let root = base.join("idle-hello");
        std::fs::create_dir_all(root.join("probes")).unwrap();
        std::fs::copy(&hello, root.join("probes/hello.wasm")).unwrap();
        let d = start_telemd(
            &root,
            &format!("probes_dirs = [\"{}/probes\"]\n", root.display()),
            false,
        );
        std::thread::sleep(Duration::from_secs(3));
        println!(
            "telemd idle RSS, hello loaded (after its start-up run): {} KiB",
            rss_kib(d.child.id())
        );
    }

    // Rounds alternate daemons and client counts, and the median is
    // reported with every run: this VM's disk swings by 2x between runs.
    let mut results: Vec<RunResult> = Vec::new();
    for round in 0..rounds {
        for &c in &clients {
            for &which in &daemons {
                let root = base.join(format!("{which:?}-c{c}-{round}"));
                results.push(run(which, &root, legacy.as_ref(), c, records));
            }
        }
    }
    println!();
    println!("| daemon | clients | records | records/s (median) | runs | lost (all runs) | p50 frame-to-spool | p99 | peak RSS (KiB) |");
    println!("|---|--:|--:|--:|---|--:|--:|--:|--:|");
    let mut failed = false;
    for &c in &clients {
        for &which in &daemons {
            let mut rs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.which == which && r.clients == c)
                .collect();
            rs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let runs: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.rate())).collect();
            let lost: usize = rs.iter().map(|r| r.lost).sum();
            failed |= which == Which::Telemd && lost > 0;
            let m = rs[rs.len() / 2];
            println!(
                "| {} | {} | {} | {:.0} | {} | {} | {:.1} ms | {:.1} ms | {} |",
                which.name(),
                m.clients,
                m.records,
                m.rate(),
                runs.join(", "),
                lost,
                m.p50.as_secs_f64() * 1e3,
                m.p99.as_secs_f64() * 1e3,
                m.peak_rss
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    if failed {
        eprintln!("telemd lost records");
        std::process::exit(1);
    }
}
