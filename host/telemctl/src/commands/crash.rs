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
    /// program, which signal, its signature, how many other crashes in the
    /// history have that signature, and the record sent ("repeat" when it
    /// was held back as a repeat); the last 200 are kept.
    List,
    /// One crash as handled: its facts and each record as it was sent.
    Info {
        /// The crash's id (from `crash list`) or a record's event id (a
        /// prefix naming one crash is enough), or a signature (its latest
        /// crash).
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
        let rows: Vec<[String; 8]> = listing
            .entries
            .iter()
            .map(|e| {
                let others = e
                    .signature
                    .as_deref()
                    .map_or(0, |s| listing.with_signature(s) - 1);
                [
                    format_time(e.time),
                    e.pid.to_string(),
                    e.signal.map_or_else(|| "-".into(), |s| s.to_string()),
                    shown(&e.program),
                    e.signature.as_deref().map_or_else(|| "-".into(), shown),
                    if others == 0 {
                        "-".into()
                    } else {
                        others.to_string()
                    },
                    match e.records.iter().find(|r| r.sent) {
                        _ if e.repeat_of.is_some() => "repeat".into(),
                        Some(r) => shown(&r.event_id),
                        None => "-".into(),
                    },
                    shown(&e.id),
                ]
            })
            .collect();
        if rows.is_empty() {
            println!("no crash handled yet");
        } else {
            print(
                [
                    "TIME",
                    "PID",
                    "SIG",
                    "PROGRAM",
                    "SIGNATURE",
                    "REPEATS",
                    "RECORD",
                    "ID",
                ],
                &rows,
            );
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
    let (entry, same): (CrashEntry, Option<usize>) = match found {
        Found::One(e) => (*e, None),
        Found::Signature(e, n) => (*e, Some(n)),
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
    if let Some(n) = same {
        println!("crashes with this signature in the history: {n} (the latest is shown)");
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
    if let Some(s) = &entry.signature {
        println!("signature: {}", shown(s));
    }
    if let Some(first) = &entry.repeat_of {
        println!(
            "repeat of: {} (the same signature within crash_repeat_window_secs: its record was held back)",
            shown(first)
        );
    }
    for r in &entry.records {
        println!(
            "\nrecord {}: {} (severity {}){}",
            shown(&r.event_id),
            shown(&r.classification),
            r.severity,
            if r.sent { "" } else { ", not sent" }
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
