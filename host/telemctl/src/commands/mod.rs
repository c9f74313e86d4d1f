//! `telemctl`'s command line and its verbs: one module per verb group,
//! holding the group's arguments (clap) and their handlers. Adding a verb
//! to a group touches that group's module alone on this side, and (if the
//! daemon must act) a `Request` variant in `telem_core::control` and its
//! arm in `telemd::control` on the daemon's (ARCHITECTURE.md shows one).
//! A new group, or a verb outside any, is added here.

mod config;
mod crash;
mod journal;
mod opt_in;
mod probe;
mod probe_offline;
mod service;
mod spool;
mod status;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use telem_core::config::Config;
use telem_core::control::client::Client;

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
    Journal(journal::JournalArgs),
    /// WASM probes of the running daemon.
    Probe {
        /// The probe verb.
        #[command(subcommand)]
        cmd: probe::ProbeCmd,
    },
    /// Records waiting in the spool.
    Spool {
        /// The spool verb.
        #[command(subcommand)]
        cmd: spool::SpoolCmd,
    },
    /// Crash reports.
    Crash {
        /// The crash verb.
        #[command(subcommand)]
        cmd: crash::CrashCmd,
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
        cmd: config::ConfigCmd,
    },
}

/// Runs one command line.
pub fn run(args: Args) -> anyhow::Result<()> {
    let json = args.json;
    let explicit = args.config.as_deref();
    match args.cmd {
        Cmd::GenerateDocs { dir } => crate::docs::generate(&dir)
            .with_context(|| format!("cannot write docs under {}", dir.display())),
        Cmd::OptIn => opt_in::opt_in(&load_config(explicit)?),
        Cmd::OptOut => opt_in::opt_out(&load_config(explicit)?),
        Cmd::Journal(query) => journal::show(&load_config(explicit)?, query, json),
        Cmd::Probe { cmd } => probe::run(&load_config(explicit)?, cmd, json),
        Cmd::Crash { cmd } => crash::run(&load_config(explicit)?, cmd, json),
        Cmd::Start => service::systemctl(&["start", "telemd.socket", "telemd.service"]),
        Cmd::Stop => service::systemctl(&["stop", "telemd.socket", "telemd.service"]),
        Cmd::Restart => service::systemctl(&["restart", "telemd.socket", "telemd.service"]),
        Cmd::IsActive => service::is_active(),
        Cmd::Status => status::show(&load_config(explicit)?, json),
        Cmd::Spool { cmd } => spool::run(&load_config(explicit)?, cmd, json),
        // The config group reads files named on its own command line, not
        // (only) the config in effect.
        Cmd::Config { cmd } => config::run(explicit, cmd, json),
    }
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(Config::default(), explicit)?)
}

/// A connection to the running daemon, handshake done.
fn connect(c: &Config) -> anyhow::Result<Client> {
    Ok(Client::connect(&c.host.control_socket, None)?)
}

/// An error for a file the admin may lack the rights to change.
fn needs_root(verb: &str, path: &Path, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "{verb} needs root: cannot change {} ({e}); try `sudo telemctl {verb}`",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("{verb}: {}", path.display()))
    }
}

/// Prints a value as pretty JSON (`--json`).
fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}
