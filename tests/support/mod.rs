//! Shared harness for end-to-end tests: a real `telemd` process in a
//! private directory, raw socket clients, spool inspection. A library of
//! the test package, compiled once for every test binary.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use telem_core::control::client::{Client, ClientError};
use telem_core::control::{ProbeList, Request, Response, Status};
use telem_core::record::{spool_file, Record};

pub mod collector;

/// Failures in a row after which a probe is quarantined (the daemon's rule).
pub const QUARANTINE_AFTER: usize = telemd::supervisor::QUARANTINE_AFTER as usize;

// The programs under test. They belong to other packages of the workspace,
// so Cargo does not hand their paths to this one (`CARGO_BIN_EXE_*` is
// per package); `build.rs` derives them from the shared target directory.
// The test command builds them first (`cargo build --workspace --bins`).
pub const TELEMD: &str = env!("E2E_BIN_TELEMD");
pub const TELEMCTL: &str = env!("E2E_BIN_TELEMCTL");
pub const RECORD_GEN: &str = env!("E2E_BIN_TELEM_RECORD_GEN");
pub const CRASH_HANDLER: &str = env!("E2E_BIN_TELEM_CRASH_HANDLER");
pub const LIBTELEMETRY: &str = env!("E2E_LIB_TELEMETRY");

pub fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/legacy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Config lines that keep every record in the spool (a burst limit of 0
/// sends nothing), for tests that inspect the spool itself.
pub const HOLD: &str = "record_burst_limit = 0\n";

/// Kills a child process when dropped, so a failing test leaves no daemon
/// behind holding the test runner's output pipe.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// For tests marked `#[ignore = "needs root: ..."]`: the test command runs
/// them (`--include-ignored`) when it runs as root, and the closing totals
/// count them as ignored otherwise. Run without root anyway, such a test
/// fails here instead of passing unrun.
pub fn assert_root(why: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root ({why}); it is #[ignore]d for that reason"
    );
}

/// Stops the suite when the programs under test are older than the sources
/// they are built from: these tests run the binaries of other packages,
/// which `cargo test -p telem-e2e-tests` does not rebuild.
pub fn programs_are_fresh() {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host");
        // Each program and the crates it is built from.
        let programs: [(&str, &[&str]); 5] = [
            (TELEMD, &["telemd", "sandbox", "core", "cli"]),
            (TELEMCTL, &["telemctl", "sandbox", "core", "cli"]),
            (RECORD_GEN, &["record-gen", "core", "cli"]),
            (CRASH_HANDLER, &["crash-handler", "core", "cli"]),
            (LIBTELEMETRY, &["libtelemetry", "core"]),
        ];
        for (program, crates) in programs {
            let newest = crates
                .iter()
                .map(|c| newest_source(&host.join(c).join("src")))
                .max()
                .expect("crates listed");
            let built = std::fs::metadata(program).and_then(|m| m.modified());
            match built {
                Ok(t) if t >= newest => {}
                Ok(_) => panic!(
                    "{program} is older than its sources under host/; run `cargo build --workspace --bins --lib` first (scripts/test.sh does)"
                ),
                Err(e) => panic!(
                    "{program}: {e}; run `cargo build --workspace --bins --lib` first (scripts/test.sh does)"
                ),
            }
        }
    });
}

/// The latest modification time of a `.rs` file under `dir` (a crate's
/// `src/`: what Cargo relinks the program for when it changes).
fn newest_source(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                // Not what the programs are built from.
                if p.file_name()
                    .is_some_and(|n| n != "target" && n != "tests" && n != "benches")
                {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                newest = newest.max(m.modified().unwrap_or(newest));
            }
        }
    }
    newest
}

/// The environment variables reqwest takes a proxy from, in both cases.
pub const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A `telemd` with every path under a temp dir.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub child: Option<Child>,
}

impl TestDaemon {
    /// Writes a config (test paths plus `extra` TOML lines), opts in, starts.
    pub fn start(extra: &str) -> TestDaemon {
        let d = TestDaemon::prepare(extra);
        std::fs::write(d.path("opt-in"), "").unwrap();
        d.spawn()
    }

    /// Config written, not opted in, not started.
    pub fn prepare(extra: &str) -> TestDaemon {
        programs_are_fresh();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // An `extra` server line replaces the default file target.
        let server = if extra.lines().any(|l| l.trim_start().starts_with("server")) {
            String::new()
        } else {
            format!("server = \"file://{}/collector.jsonl\"", p.display())
        };
        let config = format!(
            r#"{server}
socket_path = "{root}/telem-0"
spool_dir = "{root}/spool"
state_dir = "{root}/state"
journal_dir = "{root}/journal"
opt_in_file = "{root}/opt-in"
static_machine_id_file = "{root}/static-machine-id"
probes_dirs = ["{root}/probes"]
control_socket = "{root}/control.sock"
socket_timeout_ms = 1000
{extra}
"#,
            root = p.display()
        );
        let config_path = p.join("telemd.toml");
        std::fs::write(&config_path, config).unwrap();
        TestDaemon {
            dir,
            config_path,
            child: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("telem-0")
    }

    /// Starts the daemon (stderr to `telemd.log`) and waits for its socket.
    pub fn spawn(mut self) -> TestDaemon {
        let mut cmd = Command::new(TELEMD);
        // Loopback collectors must not be reached through a proxy the
        // machine running the tests happens to have.
        for v in PROXY_VARIABLES {
            cmd.env_remove(v);
        }
        self.spawn_with(cmd);
        self
    }

    pub fn spawn_with(&mut self, mut cmd: Command) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("telemd.log"))
            .unwrap();
        cmd.arg("-f")
            .arg(&self.config_path)
            .arg("--log")
            // Not cranelift's per-function statistics: they bury the log.
            .arg("debug,cranelift_codegen=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn telemd"));
        let sock = self.socket();
        assert!(
            wait_until(Duration::from_secs(20), || UnixStream::connect(&sock)
                .is_ok()
                || self.exited()),
            "telemd did not start; log:\n{}",
            self.log()
        );
        assert!(
            !self.exited(),
            "telemd exited at start; log:\n{}",
            self.log()
        );
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("telemd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Names of the record files in the spool (temp files excluded).
    pub fn spool_names(&self) -> Vec<String> {
        spool_names(&self.path("spool"))
    }

    pub fn spool_records(&self) -> Vec<Record> {
        let dir = self.path("spool");
        self.spool_names()
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.join(&n)).unwrap();
                spool_file::decode(&bytes)
                    .unwrap_or_else(|e| panic!("spool file {n} unreadable: {e}"))
            })
            .collect()
    }

    /// Waits until the spool holds exactly `n` records.
    pub fn wait_spool(&self, n: usize) -> Vec<Record> {
        let ok = wait_until(Duration::from_secs(10), || self.spool_names().len() >= n);
        let recs = self.spool_records();
        assert!(
            ok && recs.len() == n,
            "expected {n} spooled records, found {}; log:\n{}",
            recs.len(),
            self.log()
        );
        recs
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spool_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sends raw bytes in one connection and closes it.
pub fn send_raw(socket: &Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(bytes).expect("write");
}

/// A valid record (from the legacy capture) with a fresh event id and `payload`.
pub fn test_record(payload: &str) -> Record {
    let mut r = telem_core::record::wire::parse_frame(&fixture("frame-record-gen.bin")).unwrap();
    r.payload = payload.into();
    r.headers.set(
        telem_core::record::Header::EventId,
        telem_core::record::random_id(),
    );
    r
}

/// Writes records straight into a spool directory, as an earlier daemon
/// (ours or the legacy one) would have left them.
pub fn preload_spool(dir: &Path, records: &[Record]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, r) in records.iter().enumerate() {
        std::fs::write(dir.join(format!("preloaded{i:08}")), spool_file::encode(r)).unwrap();
    }
}

/// Path of a probe component built from `probes-wasm/` (built on first use
/// if the test command has not built it already).
pub fn probe_wasm(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes-wasm");
    let path = root.join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    BUILD.call_once(|| {
        let st = Command::new("cargo")
            .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release"])
            .current_dir(&root)
            .status()
            .expect("cargo build of probes-wasm");
        assert!(st.success(), "building probes-wasm failed");
    });
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// How long a control request may take before the test fails: a deadline
/// that regresses must fail the test, not hang the suite.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

/// `telemctl -f CONFIG ARGS` against the daemon `d`, as an admin runs it.
pub fn telemctl(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new(TELEMCTL)
        .arg("-f")
        .arg(&d.config_path)
        .args(args)
        .output()
        .unwrap()
}

/// A control connection to the daemon, after the handshake.
pub fn client(d: &TestDaemon) -> Client {
    let path = d.path("control.sock");
    Client::connect(&path, Some(CONTROL_TIMEOUT)).unwrap_or_else(|e| {
        let ls: Vec<_> = std::fs::read_dir(d.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        panic!(
            "control socket {}: {}\n{ls:?}\n{}",
            path.display(),
            telem_core::error_text::one_line(telem_core::error_text::chain(&e)),
            d.log()
        )
    })
}

/// One request on its own connection. `Err` is the daemon's refusal (an
/// error reply); anything else going wrong fails the test.
pub fn call(d: &TestDaemon, req: &Request) -> Result<Response, String> {
    match client(d).call(req) {
        Ok(r) => Ok(r),
        Err(ClientError::Daemon(message)) => Err(message),
        Err(e) => panic!(
            "control request {:?}: {}\n{}",
            req,
            telem_core::error_text::one_line(telem_core::error_text::chain(&e)),
            d.log()
        ),
    }
}

/// A request whose only answer is `done` (run, enable, disable, flush);
/// `Err` is the daemon's refusal.
pub fn act(d: &TestDaemon, req: &Request) -> Result<(), String> {
    match call(d, req)? {
        Response::Done => Ok(()),
        other => panic!("control request {:?}: answered {other:?}\n{}", req, d.log()),
    }
}

/// `handle(manual(args))` of `probe`; `Err` is the daemon's refusal or the
/// probe's failure, in words.
pub fn run_probe(d: &TestDaemon, probe: &str, args: &[&str]) -> Result<(), String> {
    act(
        d,
        &Request::Run {
            probe: probe.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            report: false,
        },
    )
}

/// The probes the daemon knows, with their grants and counters.
pub fn probe_list(d: &TestDaemon) -> ProbeList {
    match call(d, &Request::List) {
        Ok(Response::Probes(list)) => list,
        other => panic!("list answered {other:?}\n{}", d.log()),
    }
}

/// The daemon's summary (`telemctl status`).
pub fn status(d: &TestDaemon) -> Status {
    match call(d, &Request::Status) {
        Ok(Response::Status(s)) => *s,
        other => panic!("status answered {other:?}\n{}", d.log()),
    }
}

/// Resident set size of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Unmounts on drop (lazily, so a test failing mid-way does not leave a
/// busy mount behind).
pub struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. "16k") on `dir` (root only), for
/// full-disk tests.
pub fn mount_small_tmpfs(dir: &Path, size: &str) -> Unmount {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    Unmount(dir.to_owned())
}

/// A program's output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config for telemctl's verbs that need no daemon (`probe test`,
/// `probe verify`): every path of it under `dir`, with no daemon behind
/// them, plus `extra` lines.
pub fn offline_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("telemd.toml");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{0}/spool\"\nstate_dir = \"{0}/state\"\njournal_dir = \"{0}/journal\"\ncontrol_socket = \"{0}/control.sock\"\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    config
}

/// `telemctl -f CONFIG ARGS`, its compile cache under `dir` (not the
/// invoking user's).
pub fn telemctl_offline<I, S>(config: &Path, dir: &Path, args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(TELEMCTL)
        .arg("-f")
        .arg(config)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap()
}

/// Frames of one burst and how many client threads send them: what the
/// issue that found native records lost measured with.
pub const BURST_FRAMES: usize = 20_000;
/// See [`BURST_FRAMES`].
pub const BURST_CLIENTS: usize = 16;
/// Records held, and room for all of a burst's (the default 5 MiB cap
/// holds about 12,000 of these).
pub const BURST_CONFIG: &str = "record_burst_limit = 0\nspool_max_size = 65536\n";

/// What a burst sent.
pub struct Burst {
    /// The event id of every frame sent.
    pub ids: Vec<String>,
    /// When the first frame was written.
    pub first_sent: Instant,
}

/// What libtelemetry does per record, as fast as `clients` threads can:
/// connect (waiting while the backlog is full), write one whole frame,
/// close; nothing read back. Payloads are `burst N`.
pub fn burst(sock: &Path, clients: usize, frames: usize) -> Burst {
    let first = std::sync::Arc::new(std::sync::OnceLock::new());
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let sock = sock.to_owned();
            let first = first.clone();
            std::thread::spawn(move || {
                let mut r = test_record("");
                let mut ids = Vec::new();
                for i in (c..frames).step_by(clients) {
                    r.payload = format!("burst {i}");
                    let id = telem_core::record::random_id();
                    r.headers.set(telem_core::record::Header::EventId, &id);
                    let frame = telem_core::record::wire::encode_frame(&r);
                    let mut s = UnixStream::connect(&sock).expect("connect");
                    first.get_or_init(Instant::now);
                    s.write_all(&frame).expect("write");
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let ids = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    Burst {
        ids,
        first_sent: *first.get().expect("a frame was sent"),
    }
}

/// Waits (up to two minutes) for `sent.len()` more records than `before`
/// in the spool, then asserts that each sent event id is there exactly
/// once.
pub fn all_landed_once(d: &TestDaemon, sent: &[String], before: usize) {
    let want = before + sent.len();
    let landed = wait_until(Duration::from_secs(120), || d.spool_names().len() >= want);
    let n = d.spool_names().len();
    assert!(
        landed && n == want,
        "{} of {} records spooled; log tail:\n{}",
        n - before.min(n),
        sent.len(),
        tail(&d.log(), 20)
    );
    let spooled = d.spool_records();
    let mut got: Vec<&str> = spooled
        .iter()
        .map(|r| r.headers.get(telem_core::record::Header::EventId))
        .collect();
    got.sort_unstable();
    let mut dup = got.clone();
    dup.dedup();
    assert_eq!(dup.len(), got.len(), "an event id was spooled twice");
    for id in sent {
        assert!(
            got.binary_search(&id.as_str()).is_ok(),
            "event id {id} was sent and not spooled"
        );
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
