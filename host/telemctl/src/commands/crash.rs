//! `telemctl crash`: the local crash history the daemon keeps (`list`,
//! `info`, read from `state_dir`, as `coredumpctl` reads systemd's), and
//! `symbolize`, the crash probe run on an admin's core in this process,
//! under the daemon's sandbox and limits.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use telem_core::config::Config;
use telem_core::crash_history::{CrashEntry, CrashHistory, Found};
use telem_core::state_layout::StateLayout;
use telem_sandbox::offline::{symbolize_offline, SymbolizeRequest};

use crate::table::{format_time, print, shown};

/// `telemctl crash` verbs.
#[derive(Subcommand, Debug)]
pub enum CrashCmd {
    /// Crashes handled on this machine, oldest first: when, which
    /// program, which signal, and the records sent (the last 200 are kept).
    List,
    /// One crash as handled: its facts and each record as it was sent.
    Info {
        /// The crash's id (from `crash list`) or a record's event id; a
        /// prefix naming one crash is enough.
        id: String,
    },
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

/// Runs a crash verb.
pub fn run(c: &Config, cmd: CrashCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        CrashCmd::List => list(c, json),
        CrashCmd::Info { id } => info(c, &id, json),
        CrashCmd::Symbolize {
            core,
            exe,
            debug_root,
            probe,
        } => symbolize(c, core, exe, debug_root, probe, json),
    }
}

fn history(c: &Config) -> CrashHistory {
    CrashHistory::new(&StateLayout::new(&c.host.state_dir).crash_history())
}

fn list(c: &Config, json: bool) -> anyhow::Result<()> {
    let listing = history(c)
        .list()
        .context("cannot read the crash history (it is under state_dir: try as root)")?;
    if json {
        super::print_json(&listing.entries);
    } else {
        let rows: Vec<[String; 6]> = listing
            .entries
            .iter()
            .map(|e| {
                [
                    format_time(e.time),
                    e.pid.to_string(),
                    e.signal.map_or_else(|| "-".into(), |s| s.to_string()),
                    shown(&e.program),
                    match &e.records[..] {
                        [] => "-".into(),
                        [one] => shown(&one.classification),
                        [first, rest @ ..] => {
                            format!("{} (+{})", shown(&first.classification), rest.len())
                        }
                    },
                    shown(&e.id),
                ]
            })
            .collect();
        if rows.is_empty() {
            println!("no crash handled yet");
        } else {
            print(["TIME", "PID", "SIG", "PROGRAM", "RECORD", "ID"], &rows);
        }
    }
    if listing.unreadable > 0 {
        eprintln!(
            "warning: {} file(s) of the crash history could not be read and were skipped",
            listing.unreadable
        );
    }
    Ok(())
}

fn info(c: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let found = history(c)
        .find(id)
        .context("cannot read the crash history (it is under state_dir: try as root)")?;
    let entry: CrashEntry = match found {
        Found::One(e) => *e,
        Found::None => anyhow::bail!(
            "no crash {} in the history (`telemctl crash list` shows them)",
            shown(id)
        ),
        Found::Ambiguous(n) => anyhow::bail!(
            "{n} crashes begin with {}: give more of the id (`telemctl crash list` shows them)",
            shown(id)
        ),
    };
    if json {
        super::print_json(&entry);
        return Ok(());
    }
    println!("id: {}", shown(&entry.id));
    println!("time: {}", format_time(entry.time));
    println!("program: {}", shown(&entry.program));
    println!("pid: {}", entry.pid);
    if let Some(s) = entry.signal {
        println!("signal: {s}");
    }
    if let Some(u) = entry.uid {
        println!("uid: {u}");
    }
    for r in &entry.records {
        println!(
            "\nrecord {}: {} (severity {})",
            shown(&r.event_id),
            shown(&r.classification),
            r.severity
        );
        for line in r.payload.lines() {
            println!("  {}", shown(line));
        }
    }
    Ok(())
}

fn symbolize(
    c: &Config,
    core: PathBuf,
    exe: Option<PathBuf>,
    debug_root: Vec<PathBuf>,
    probe: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let req = SymbolizeRequest {
        core,
        exe,
        debug_roots: debug_root,
        probe,
    };
    let records = symbolize_offline(&c.probes, &req)?;
    if json {
        super::print_json(&records);
    } else {
        for r in &records {
            println!(
                "classification: {}    severity: {}\n{}",
                r.classification, r.severity, r.payload
            );
        }
    }
    if records.is_empty() {
        anyhow::bail!("the probe sent no record");
    }
    Ok(())
}
