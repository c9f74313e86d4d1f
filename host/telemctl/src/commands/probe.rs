//! `telemctl probe ...`: the daemon's probes, through the control socket.

use std::path::PathBuf;

use clap::Subcommand;
use telem_core::config::Config;
use telem_core::control::{ProbeInfo, ProbeState, Request};

use crate::table::{list, shown};

use super::probe_offline::ProbeTest;

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

/// Runs a probe verb.
pub fn run(c: &Config, cmd: ProbeCmd, json: bool) -> anyhow::Result<()> {
    // The verbs that need no daemon.
    let cmd = match cmd {
        ProbeCmd::Verify { file } => return super::probe_offline::verify(c, &file, json),
        ProbeCmd::Test(t) => return super::probe_offline::test(c, t, json),
        cmd => cmd,
    };
    let mut client = super::connect(c)?;
    match cmd {
        ProbeCmd::Verify { .. } | ProbeCmd::Test(_) => unreachable!("handled above"),
        ProbeCmd::List => {
            let list = client.list()?;
            if json {
                super::print_json(&list.probes);
            } else {
                print_list(&list.probes);
                for r in &list.refused {
                    println!(
                        "{}: refused: {}",
                        shown(&r.file.display().to_string()),
                        shown(&r.reason)
                    );
                }
            }
        }
        ProbeCmd::Info { name } => {
            let probes = client.list()?.probes;
            let p = probes
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| anyhow::anyhow!("no probe named {} is loaded", shown(&name)))?;
            if json {
                super::print_json(p);
            } else {
                print_info(p);
            }
        }
        ProbeCmd::Run { name, args } => {
            client.act(&Request::Run {
                probe: name.clone(),
                args,
            })?;
            println!("{name}: ran successfully");
        }
        ProbeCmd::Reload => {
            let n = client.reload()?;
            println!("reloaded: {n} probe(s) loaded");
        }
        ProbeCmd::Enable { name } => {
            client.act(&Request::Enable {
                probe: name.clone(),
            })?;
            println!("{name}: enabled and loaded");
        }
        ProbeCmd::Disable { name } => {
            client.act(&Request::Disable {
                probe: name.clone(),
            })?;
            println!("{name}: disabled (stays off until `telemctl probe enable {name}`)");
        }
        ProbeCmd::Reset { name } => {
            client.act(&Request::Reset {
                probe: name.clone(),
            })?;
            println!("{name}: private state cleared");
        }
    }
    Ok(())
}

fn state(s: &ProbeState) -> &'static str {
    match s {
        ProbeState::Running => "running",
        ProbeState::Quarantined(_) => "quarantined",
    }
}

fn print_list(probes: &[ProbeInfo]) {
    let rows: Vec<[String; 9]> = probes
        .iter()
        .map(|p| {
            let s = &p.stats;
            [
                shown(&p.name),
                shown(&p.version),
                state(&p.state).to_owned(),
                s.runs.to_string(),
                s.traps.to_string(),
                s.timeouts.to_string(),
                s.records_sent.to_string(),
                s.records_refused.to_string(),
                s.last_error.as_deref().map_or("-".into(), shown),
            ]
        })
        .collect();
    crate::table::print(
        [
            "NAME",
            "VERSION",
            "STATE",
            "RUNS",
            "TRAPS",
            "TIMEOUTS",
            "SENT",
            "REFUSED",
            "LAST ERROR",
        ],
        &rows,
    );
}

fn print_info(p: &ProbeInfo) {
    let paths = |v: &[std::path::PathBuf]| {
        list(
            &v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "{} {} ({})",
        shown(&p.name),
        shown(&p.version),
        shown(&p.file.display().to_string())
    );
    println!("  {}", shown(&p.description));
    println!("  state: {}", state(&p.state));
    println!("  sha256: {}", shown(&p.sha256));
    if let Some(pin) = &p.pinned_sha256 {
        println!(
            "  pinned: {} ([probes.{}] sha256)",
            shown(pin),
            shown(&p.name)
        );
    }
    println!(
        "  signed by: {}",
        p.signed_by
            .as_deref()
            .map_or("(no signature)".into(), shown)
    );
    if let ProbeState::Quarantined(why) = &p.state {
        println!("  quarantined: {}", shown(why));
    }
    let (r, g) = (&p.requested, &p.granted);
    println!("  {:<22} {:<40} granted", "", "requested");
    println!(
        "  {:<22} {:<40} {}",
        "read paths",
        paths(&r.read_paths),
        paths(&g.read_paths)
    );
    println!(
        "  {:<22} {:<40} {}",
        "classifications",
        list(&r.classifications),
        list(&g.classifications)
    );
    println!(
        "  {:<22} {:<40} {}",
        "records per hour", r.max_records_per_hour, g.max_records_per_hour
    );
    println!("  {:<22} {:<40} {} MiB", "memory", "-", g.memory_limit_mib);
    println!("  {:<22} {:<40} {} ms", "time per call", "-", g.timeout_ms);
    println!("  {:<22} {:<40} {}", "crashes", r.crashes, g.crashes);
    println!(
        "  {:<22} {:<40} {}",
        "kernel log", r.kernel_log, g.kernel_log
    );
    let watches = |v: &[telem_core::grants::FilesWatch]| {
        list(
            &v.iter()
                .map(|w| format!("{} {}", w.dir.display(), w.pattern))
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "  {:<22} {:<40} {}",
        "files",
        watches(&r.files),
        watches(&g.files)
    );
    println!(
        "  {:<22} {:<40} {} of {} bytes, {} key(s)",
        "state", "-", p.state_bytes, g.state_quota_bytes, p.state_keys
    );
    for s in &p.sources {
        let waiting = s
            .waiting
            .filter(|n| *n > 0)
            .map_or(String::new(), |n| format!(" ({n} read and waiting)"));
        println!(
            "  source {}: {}{waiting}",
            shown(&s.source),
            shown(&s.position)
        );
        for w in &s.warnings {
            println!("    warning: {}", shown(w));
        }
    }
    if p.stats.source_skipped > 0 {
        println!("  source items skipped: {}", p.stats.source_skipped);
    }
    if !g.refused.is_empty() {
        println!("  refused:");
        for f in &g.refused {
            println!("    {}: {}", shown(&f.item), shown(&f.reason));
        }
    }
}
