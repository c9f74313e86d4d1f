//! Command-line definitions of `telemctl` (shared by the binary and the
//! man page and completion generator).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Control and inspect the telemetry client.
#[derive(Parser, Debug)]
#[command(name = "telemctl", version)]
pub struct Args {
    /// Config file (as for telemd).
    #[arg(short = 'f', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// The verb.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// telemctl verbs.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Enable telemetry (creates the opt-in file; needs root on a system install).
    OptIn,
    /// Disable telemetry (removes the opt-in file; needs root on a system install).
    OptOut,
    /// Start telemd (its socket and service) through systemd.
    Start,
    /// Stop telemd through systemd.
    Stop,
    /// Restart telemd through systemd.
    Restart,
    /// Print whether telemd's units are active; exits non-zero if not.
    IsActive,
    /// Opt-in state, spool, delivery and probes at a glance.
    Status,
    /// Show delivered, rejected, expired and dropped records.
    Journal {
        /// Only this classification.
        #[arg(short = 'c', long = "classification")]
        classification: Option<String>,
        /// Only this record id.
        #[arg(short = 'r', long = "record_id", alias = "record-id")]
        record_id: Option<String>,
        /// Only this event id.
        #[arg(short = 'e', long = "event_id", alias = "event-id")]
        event_id: Option<String>,
        /// Only this boot id.
        #[arg(short = 'b', long = "boot_id", alias = "boot-id")]
        boot_id: Option<String>,
        /// Print each record's kept payload (needs record_retention_enabled).
        #[arg(short = 'i', long = "include_record", alias = "include-record")]
        include_record: bool,
        /// Add a header line and a total.
        #[arg(short = 'V', long)]
        verbose: bool,
    },
    /// WASM probes of the running daemon.
    Probe {
        /// The probe verb.
        #[command(subcommand)]
        cmd: ProbeCmd,
    },
    /// Records waiting in the spool.
    Spool {
        /// The spool verb.
        #[command(subcommand)]
        cmd: SpoolCmd,
    },
    /// Crash reports.
    Crash {
        /// The crash verb.
        #[command(subcommand)]
        cmd: CrashCmd,
    },
    /// Write man pages and shell completions under DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
    /// Check or convert configuration files.
    Config {
        /// The config verb.
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

/// `telemctl probe` verbs.
#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// Loaded probes, their state and counters.
    List,
    /// What a probe asked for beside what it was granted.
    Info {
        /// Probe name.
        name: String,
    },
    /// Run a probe now (manual trigger) with ARGS.
    Run {
        /// Probe name.
        name: String,
        /// Arguments for the probe.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Reload every probe (lifts quarantines).
    Reload,
    /// Let a disabled probe run again.
    Enable {
        /// Probe name.
        name: String,
    },
    /// Stop a probe and keep it off across restarts.
    Disable {
        /// Probe name.
        name: String,
    },
    /// Clear a probe's private state (what it reported stays reported:
    /// its places in the kernel log and watched directories are kept).
    Reset {
        /// Probe name.
        name: String,
    },
    /// Say whether, and by which key, a probe file would load: its
    /// ownership and mode, its pinned digest, its signature (no daemon
    /// needed; exit 1 if it would be refused).
    Verify {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Run a probe in the sandbox, under the limits telemd applies,
    /// without a daemon and without spooling: prints its manifest, each
    /// record as it would be stamped, its log lines and output; exit 1 on a
    /// trap, a timeout, a `handle` error, a refused record or a capability
    /// it asked for and was not granted.
    Test(ProbeTest),
}

/// `telemctl probe test`.
#[derive(clap::Args, Debug)]
pub struct ProbeTest {
    /// The `.wasm` component.
    pub file: PathBuf,
    /// The event `handle` is called with.
    #[arg(long, value_enum, default_value_t = TestEvent::Start)]
    pub event: TestEvent,
    /// The core file of a `crash` event.
    #[arg(long, value_name = "CORE", required_if_eq("event", "crash"))]
    pub core: Option<PathBuf>,
    /// The crashed program of a `crash` event.
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,
    /// Grant this path for reading, as `[probes.NAME] read_paths` would
    /// (repeatable).
    #[arg(long = "grant-read", value_name = "PATH")]
    pub grant_read: Vec<PathBuf>,
    /// Arguments of a `manual` event.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The events `probe test` can send.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestEvent {
    /// As when it is loaded.
    Start,
    /// As when its interval elapses.
    Timer,
    /// As `telemctl probe run`, with the arguments after `--`.
    Manual,
    /// A crash, with `--core` (and `--exe`).
    Crash,
}

/// `telemctl crash` verbs.
#[derive(Subcommand, Debug)]
pub enum CrashCmd {
    /// Symbolize a core with the crash-symbolizer probe, in its sandbox,
    /// and print the record it would send (nothing is sent).
    Symbolize {
        /// The core file.
        core: PathBuf,
        /// The crashed program, if it is no longer where the core says.
        #[arg(long, value_name = "PATH")]
        exe: Option<PathBuf>,
        /// Another tree of debug files (DIR/.build-id/xx/rest.debug).
        #[arg(long = "debug-root", value_name = "DIR")]
        debug_root: Vec<PathBuf>,
        /// The component to run (default: crash-symbolizer.wasm in the probe directories).
        #[arg(long, value_name = "FILE")]
        probe: Option<PathBuf>,
    },
}

/// `telemctl spool` verbs.
#[derive(Subcommand, Debug)]
pub enum SpoolCmd {
    /// Records in the spool, oldest first.
    List,
    /// Ask the daemon to deliver now, and follow until the spool is empty.
    Flush,
}

/// `telemctl config` verbs.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a config (TOML or legacy INI) and print the effective values.
    Check {
        /// The file (default: -f, else the daemon's lookup order).
        file: Option<PathBuf>,
    },
    /// Print the built-in defaults as TOML (the packaged default config).
    Defaults,
    /// Print a legacy telemetrics.conf as this daemon's TOML.
    Migrate {
        /// The legacy file (default: /etc/telemetrics/telemetrics.conf).
        file: Option<PathBuf>,
    },
}
