//! `telemctl`'s verbs: one module per verb group, holding the group's
//! arguments (clap) and their handlers. Adding a verb to a group touches
//! that group's module alone on this side, and (if the daemon must act) a
//! `Request` variant in `telem_core::control` and its arm in
//! `telemd::control` on the daemon's (ARCHITECTURE.md shows one). A new
//! group, or a verb outside any, adds its variant to `cli.rs` and its arm
//! here.

pub mod config;
pub mod crash;
pub mod journal;
pub mod opt_in;
pub mod probe;
mod probe_offline;
mod service;
pub mod spool;
mod status;

use std::path::Path;

use anyhow::Context;

use crate::cli::{Args, Cmd};
use telem_core::config::Config;
use telem_core::control::client::Client;

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
        Cmd::Metrics => status::metrics(&load_config(explicit)?),
        // Reaches the daemon even when the new config does not load, so
        // the daemon's log says why too.
        Cmd::Reload => status::reload(explicit),
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
