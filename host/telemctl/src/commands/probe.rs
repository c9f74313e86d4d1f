//! `telemctl probe ...`: the daemon's probes, through the control socket.

use std::path::PathBuf;

use clap::Subcommand;
use telem_core::config::Config;
use telem_core::control::{ProbeInfo, ProbeList, ProbeState, RefusedProbe, Request};

use crate::table::{format_time, list, shown};

use super::probe_new::ProbeNew;
use super::probe_offline::ProbeTest;

/// `telemctl probe` verbs.
#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// Loaded probes, their state and counters.
    List {
        /// Also the probes that do not run: disabled (by `probe disable`
        /// or the config), and files refused, each with why.
        #[arg(short, long)]
        all: bool,
    },
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
    /// Create a probe project ready to build and `probe test`: a Rust
    /// crate on the SDK, or a Python project for componentize-py, with a
    /// commented manifest and a README of the commands.
    New(ProbeNew),
}

/// Runs a probe verb.
pub fn run(c: &Config, cmd: ProbeCmd, json: bool) -> anyhow::Result<()> {
    // The verbs that need no daemon.
    let cmd = match cmd {
        ProbeCmd::Verify { file } => return super::probe_offline::verify(c, &file, json),
        ProbeCmd::Test(t) => return super::probe_offline::test(c, t, json),
        ProbeCmd::New(n) => return super::probe_new::create(&n),
        // As `status NAME`, exit 3 when nothing answers included.
        ProbeCmd::Info { name } => return status(c, &name, json),
        cmd => cmd,
    };
    let mut client = super::connect(c)?;
    match cmd {
        ProbeCmd::Verify { .. } | ProbeCmd::Test(_) | ProbeCmd::New(_) => {
            unreachable!("handled above")
        }
        ProbeCmd::List { all } => {
            let list = client.list()?;
            if json && all {
                super::print_json(&list);
            } else if json {
                super::print_json(&list.probes);
            } else {
                print_list(&list, all);
            }
        }
        ProbeCmd::Info { .. } => unreachable!("handled above"),
        ProbeCmd::Run { name, args } => match client.run(&name, args)? {
            None => println!("{}: ran successfully", shown(&name)),
            Some(ran) => {
                let (records, refused) = (&ran.records, ran.refused);
                if json {
                    super::print_json(&ran);
                } else {
                    println!(
                        "{}: ran successfully; {} record(s) stored",
                        shown(&name),
                        ran.stored
                    );
                    if ran.stored > records.len() as u64 {
                        println!("  (the first {} shown)", records.len());
                    }
                    for r in records {
                        println!(
                            "  {} (severity {}, event {}): {}",
                            shown(&r.classification),
                            r.severity,
                            shown(&r.event_id),
                            shown(first_line(&r.payload))
                        );
                    }
                }
                if refused > 0 {
                    eprintln!(
                        "telemctl: {} record(s) refused while it ran (why: the daemon's log; `telemctl probe info {}`)",
                        refused,
                        shown(&name)
                    );
                }
            }
        },
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

/// What the daemon knows of a probe name: `probe info` and `status NAME`.
enum Found<'a> {
    Loaded(&'a ProbeInfo),
    Disabled,
    DisabledInConfig,
    /// Its file, and why it was refused.
    Refused(&'a RefusedProbe),
    Unknown,
}

impl<'a> Found<'a> {
    fn in_list(list: &'a ProbeList, name: &str) -> Found<'a> {
        if let Some(p) = list.probes.iter().find(|p| p.name == name) {
            return Found::Loaded(p);
        }
        if list.disabled.iter().any(|d| d == name) {
            return Found::Disabled;
        }
        if list.disabled_in_config.iter().any(|d| d == name) {
            return Found::DisabledInConfig;
        }
        // A refused file is named after the probe it would be (the daemon
        // loads NAME only from NAME.wasm; `_` reads as `-`).
        let stem = |r: &RefusedProbe| {
            r.file
                .file_stem()
                .map(|s| s.to_string_lossy().replace('_', "-"))
        };
        match list
            .refused
            .iter()
            .find(|r| stem(r).as_deref() == Some(name))
        {
            Some(r) => Found::Refused(r),
            None => Found::Unknown,
        }
    }

    /// Says why the probe does not run, as the exit status too: 3 when it
    /// exists and does not run, 4 when there is no such probe.
    fn explain(self, name: &str) -> anyhow::Result<()> {
        let name = shown(name);
        let (code, message) = match self {
            Found::Loaded(_) => return Ok(()),
            Found::Disabled => (
                super::Exit::NOT_RUNNING,
                format!("{name} is disabled (`telemctl probe enable {name}` lets it run)"),
            ),
            Found::DisabledInConfig => (
                super::Exit::NOT_RUNNING,
                format!("{name} is disabled by the config ([probes.{name}] enabled = false)"),
            ),
            Found::Refused(r) => (
                super::Exit::NOT_RUNNING,
                format!(
                    "{name} is not loaded: {} was refused: {}",
                    shown(&r.file.display().to_string()),
                    shown(&r.reason)
                ),
            ),
            Found::Unknown => (
                super::Exit::NO_SUCH_PROBE,
                format!("no probe named {name}: no probes directory holds {name}.wasm (`telemctl probe list --all` shows every file found)"),
            ),
        };
        Err(super::Exit {
            code,
            message: Some(message),
        }
        .into())
    }
}

/// `telemctl status NAME`: the probe's info; exit 0 running, 3 quarantined,
/// disabled, refused or no daemon, 4 no such probe.
pub fn status(c: &Config, name: &str, json: bool) -> anyhow::Result<()> {
    let list = match super::connect(c).and_then(|mut client| Ok(client.list()?)) {
        Ok(l) => l,
        Err(e) if super::NotRunning::is(&e) => {
            return Err(super::Exit::not_running(format!("{e:#}")).into())
        }
        Err(e) => return Err(e),
    };
    show(&list, name, json)
}

/// A probe's info from `list`, its exit status as `status NAME`'s.
fn show(list: &ProbeList, name: &str, json: bool) -> anyhow::Result<()> {
    match Found::in_list(list, name) {
        Found::Loaded(p) => {
            if json {
                super::print_json(p);
            } else {
                print_info(p);
            }
            match p.state {
                ProbeState::Running => Ok(()),
                ProbeState::Quarantined(_) => {
                    Err(super::Exit::quiet(super::Exit::NOT_RUNNING).into())
                }
            }
        }
        other => other.explain(name),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn state(s: &ProbeState) -> &'static str {
    match s {
        ProbeState::Running => "running",
        ProbeState::Quarantined(_) => "quarantined",
    }
}

fn print_list(list: &ProbeList, all: bool) {
    let mut rows: Vec<[String; 9]> = list
        .probes
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
    if all {
        let dash = || "-".to_owned();
        for name in &list.disabled {
            let mut row = [(); 9].map(|()| dash());
            row[0] = shown(name);
            row[2] = "disabled".into();
            row[8] = format!(
                "disabled by the admin (`telemctl probe enable {}`)",
                shown(name)
            );
            rows.push(row);
        }
        for name in &list.disabled_in_config {
            let mut row = [(); 9].map(|()| dash());
            row[0] = shown(name);
            row[2] = "disabled".into();
            row[8] = format!("[probes.{}] enabled = false in the config", shown(name));
            rows.push(row);
        }
        for r in &list.refused {
            let mut row = [(); 9].map(|()| dash());
            row[0] = shown(&r.file.display().to_string());
            row[2] = "refused".into();
            row[8] = shown(&r.reason);
            rows.push(row);
        }
    }
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
    if !all && !list.refused.is_empty() {
        println!(
            "({} file(s) refused: `telemctl probe list --all` shows why)",
            list.refused.len()
        );
    }
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
    println!("  triggers: {}", list(&p.triggers));
    let when = |t: Option<u64>| t.map_or("-".into(), |t| format_time(t) + " UTC");
    println!(
        "  runs: {}, last {}, next {}",
        p.stats.runs,
        when(p.stats.last_run),
        when(p.stats.next_run)
    );
    println!(
        "  records: {} sent, {} refused; traps {}, timeouts {}",
        p.stats.records_sent, p.stats.records_refused, p.stats.traps, p.stats.timeouts
    );
    if let Some(e) = &p.stats.last_error {
        println!("  last error: {}", shown(e));
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
