//! `telemctl`'s command line: the global options and the verbs, each
//! group's own arguments defined beside its handlers in `commands/`.
//! Parsed by `main` and read by `generate-docs` for the man page and the
//! shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::config::ConfigCmd;
use crate::commands::crash::CrashCmd;
use crate::commands::journal::JournalArgs;
use crate::commands::probe::ProbeCmd;
use crate::commands::spool::SpoolCmd;

/// The exit statuses, numbered as systemd's tools number theirs where the
/// verbs overlap; `--help` shows them and the man page's EXIT STATUS is
/// this text.
pub const EXIT_STATUS: &str = "\
Exit status (numbered as systemctl's, journalctl's and coredumpctl's where they overlap):
  0    success; `status`: the daemon (or PROBE) runs; `is-active`: active
  1    failure; `journal`: a filter (-c, -r, -e, -b, --since, --until) selected nothing
  2    wrong usage: an unknown verb or option, a missing argument
  3    not running: `status` and `is-active` when no daemon answers; `status PROBE` and
       `probe info NAME` for a probe that is disabled, quarantined or whose file was refused
  4    no such probe: `status PROBE`, `probe info NAME`
Output to a pipe whose reader has gone (`telemctl journal | head -3`) ends telemctl by
SIGPIPE, as it ends cat (the shell's status 141).";

/// Control and inspect the telemetry client.
#[derive(Parser, Debug)]
#[command(name = "telemctl", version, after_long_help = EXIT_STATUS)]
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
    /// Print whether telemd is active: its systemd units', or with
    /// `-f CONFIG` (or without systemd) whether a daemon answers on that
    /// config's control socket; exit 3 if not.
    IsActive,
    /// Opt-in state, spool, delivery and probes at a glance; with PROBE,
    /// that probe. Exit 0 running, 3 not running (no daemon answers, or
    /// the probe is quarantined, disabled or refused), 4 no such probe.
    Status {
        /// A probe's name.
        probe: Option<String>,
    },
    /// The daemon's self-metrics, as OpenMetrics text (what
    /// `metrics_listen` serves to Prometheus).
    Metrics,
    /// Make the running daemon read its config again (what `systemctl
    /// reload telemd` runs); exits non-zero, the old config kept, if the
    /// new one is refused.
    Reload,
    /// Show delivered, rejected, expired and dropped records.
    Journal(JournalArgs),
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
