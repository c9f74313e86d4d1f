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
mod probe_new;
mod probe_offline;
mod service;
pub mod spool;
mod status;

use std::path::Path;

use anyhow::Context;

use crate::cli::{Args, Cmd};
use telem_core::config::Config;
use telem_core::control::client::{Client, ClientError};

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
        Cmd::IsActive => match explicit {
            Some(_) => service::answers(&load_config(explicit)?),
            None => service::is_active(),
        },
        Cmd::Status { probe: None } => status::show(&load_config(explicit)?, json),
        Cmd::Status { probe: Some(name) } => probe::status(&load_config(explicit)?, &name, json),
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

/// A connection to the running daemon, handshake done. When nothing
/// answers, the error says how to reach a daemon run with another config
/// (a dev daemon writes its own to `DIR/telemd.toml`).
fn connect(c: &Config) -> anyhow::Result<Client> {
    Client::connect(&c.host.control_socket, None).map_err(|e| match e {
        ClientError::NotRunning { .. } => NotRunning(e).into(),
        e => e.into(),
    })
}

/// Nothing answers at the control socket: what `status` and `is-active`
/// report as "not running" (3). Every other failure to reach the daemon
/// (permission, another protocol version) is an error (1): the daemon
/// may well run.
#[derive(Debug)]
pub struct NotRunning(ClientError);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; a daemon started with another config is reached with `telemctl -f CONFIG` (`telemd --dev DIR` writes DIR/telemd.toml)",
            self.0
        )
    }
}

impl std::error::Error for NotRunning {}

impl NotRunning {
    /// Whether `e` says nothing answers (exit 3), not another failure.
    fn is(e: &anyhow::Error) -> bool {
        e.downcast_ref::<NotRunning>().is_some()
    }
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

/// An end with its own exit status, numbered as systemd's tools number
/// theirs where they overlap (telemctl(1), EXIT STATUS): scripts tell "not
/// running" and "no such probe" from a failure.
#[derive(Debug)]
pub struct Exit {
    /// The status.
    pub code: u8,
    /// What stderr says; `None`: stdout said it all.
    pub message: Option<String>,
}

impl Exit {
    /// 1: a failure, or the query selected nothing (as coredumpctl's).
    pub const FAILURE: u8 = 1;
    /// 3: not running (systemctl's "inactive").
    pub const NOT_RUNNING: u8 = 3;
    /// 4: no such probe (systemctl's "no such unit").
    pub const NO_SUCH_PROBE: u8 = 4;

    fn nothing(message: &str) -> Exit {
        Exit {
            code: Exit::FAILURE,
            message: Some(message.to_owned()),
        }
    }

    /// 3, saying why: nothing answers, or the units are not active.
    fn not_running(message: String) -> Exit {
        Exit {
            code: Exit::NOT_RUNNING,
            message: Some(message),
        }
    }

    fn quiet(code: u8) -> Exit {
        Exit {
            code,
            message: None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_deref().unwrap_or("exit status"))
    }
}

impl std::error::Error for Exit {}

/// Prints a value as pretty JSON (`--json`).
fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}
