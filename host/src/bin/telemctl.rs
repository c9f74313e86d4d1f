//! `telemctl`: the admin's tool. Legacy verbs (opt-in, opt-out, journal)
//! work as admins of the old client remember; probes and the spool are
//! driven through the daemon's control socket.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};
use telem::cli::telemctl::{Args, Cmd, ConfigCmd, CrashCmd, ProbeCmd, SpoolCmd};
use telem::config::{Config, ConfigFormat};
use telem::journal::{query_dir, retained_payload, JournalFilter};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("telemctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config, String> {
    Config::load(Config::default(), explicit).map_err(|e| e.to_string())
}

fn run(args: Args) -> Result<(), String> {
    match args.cmd {
        Cmd::GenerateDocs { dir } => telem::cli::docs::generate(&dir)
            .map_err(|e| format!("cannot write docs under {}: {e}", dir.display())),
        Cmd::OptIn => {
            let c = load_config(args.config.as_deref())?;
            if let Some(dir) = c.opt_in_file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| needs_root("opt-in", dir, e))?;
            }
            std::fs::write(&c.opt_in_file, "")
                .map_err(|e| needs_root("opt-in", &c.opt_in_file, e))?;
            println!(
                "Telemetry is enabled ({} created).",
                c.opt_in_file.display()
            );
            Ok(())
        }
        Cmd::OptOut => {
            let c = load_config(args.config.as_deref())?;
            match std::fs::remove_file(&c.opt_in_file) {
                Ok(()) => println!(
                    "Telemetry is disabled ({} removed).",
                    c.opt_in_file.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("Telemetry was not enabled.")
                }
                Err(e) => return Err(needs_root("opt-out", &c.opt_in_file, e)),
            }
            Ok(())
        }
        Cmd::Journal {
            classification,
            record_id,
            event_id,
            boot_id,
            include_record,
            verbose,
        } => {
            let c = load_config(args.config.as_deref())?;
            let filter = JournalFilter {
                classification,
                record_id,
                event_id,
                boot_id,
            };
            let entries = query_dir(&c.journal_dir, c.journal_limit, &filter).map_err(|e| {
                format!(
                    "cannot read the journal in {}: {e}",
                    c.journal_dir.display()
                )
            })?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).expect("serializes")
                );
                return Ok(());
            }
            let rows: Vec<[String; 6]> = entries
                .iter()
                .map(|e| {
                    [
                        e.classification.clone(),
                        format_time(e.time),
                        e.record_id.clone(),
                        e.event_id.clone(),
                        e.boot_id.clone(),
                        e.outcome.as_str().to_owned(),
                    ]
                })
                .collect();
            let header = [
                "Classification",
                "Time",
                "Record ID",
                "Event ID",
                "Boot ID",
                "Outcome",
            ]
            .map(String::from);
            let widths = column_widths(verbose.then_some(&header), &rows);
            if verbose {
                println!("{}", align(&header, &widths));
            }
            for (row, e) in rows.iter().zip(&entries) {
                println!("{}", align(row, &widths));
                if include_record {
                    match retained_payload(&c.journal_dir, &e.record_id) {
                        Some(p) => println!("{p}"),
                        None => println!("(payload not kept)"),
                    }
                }
            }
            if verbose {
                println!("Total records: {}", rows.len());
            }
            Ok(())
        }
        Cmd::Probe { cmd } => {
            let c = load_config(args.config.as_deref())?;
            probe_cmd(&c, cmd, args.json)
        }
        Cmd::Crash {
            cmd:
                CrashCmd::Symbolize {
                    core,
                    exe,
                    debug_root,
                    probe,
                },
        } => {
            let c = load_config(args.config.as_deref())?;
            let req = telem::crash::SymbolizeRequest {
                core,
                exe,
                debug_roots: debug_root,
                probe,
            };
            let records = telem::crash::symbolize_offline(&c, &req)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&records).expect("records serialize")
                );
            } else {
                for r in &records {
                    println!(
                        "classification: {}    severity: {}\n{}",
                        r.classification, r.severity, r.payload
                    );
                }
            }
            if records.is_empty() {
                return Err("the probe sent no record".into());
            }
            Ok(())
        }
        Cmd::Start => systemctl(&["start", "telemd.socket", "telemd.service"]),
        Cmd::Stop => systemctl(&["stop", "telemd.socket", "telemd.service"]),
        Cmd::Restart => systemctl(&["restart", "telemd.socket", "telemd.service"]),
        Cmd::IsActive => is_active(),
        Cmd::Status => {
            let c = load_config(args.config.as_deref())?;
            status(&c, args.json)
        }
        Cmd::Spool {
            cmd: SpoolCmd::Flush,
        } => {
            let c = load_config(args.config.as_deref())?;
            flush(&c)
        }
        Cmd::Spool {
            cmd: SpoolCmd::List,
        } => {
            let c = load_config(args.config.as_deref())?;
            spool_list(&c, args.json)
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => {
            let file = file.or(args.config);
            let c = load_config(file.as_deref())?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            let from = match (&c.source, c.format) {
                (Some(p), Some(ConfigFormat::LegacyIni)) => format!("{} (legacy INI)", p.display()),
                (Some(p), _) => p.display().to_string(),
                (None, _) => "built-in defaults (no config file found)".into(),
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&c).expect("serializes"));
            } else {
                println!("# {from}: valid. Effective values:\n{}", c.to_toml());
            }
            Ok(())
        }
        Cmd::Config {
            cmd: ConfigCmd::Defaults,
        } => {
            print!(
                "# telemd defaults; copy to /etc/telemetrics/telemd.toml to change them\n{}",
                Config::default().to_toml()
            );
            Ok(())
        }
        Cmd::Config {
            cmd: ConfigCmd::Migrate { file },
        } => {
            let file = file.unwrap_or_else(|| "/etc/telemetrics/telemetrics.conf".into());
            let c = Config::load_file(Config::default(), &file).map_err(|e| e.to_string())?;
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            print!("# migrated from {}\n{}", file.display(), c.to_toml());
            Ok(())
        }
    }
}

fn needs_root(verb: &str, path: &Path, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "{verb} needs root: cannot change {} ({e}); try `sudo telemctl {verb}`",
            path.display()
        )
    } else {
        format!("{verb}: {}: {e}", path.display())
    }
}

fn format_time(unix: u64) -> String {
    httpdate_like(UNIX_EPOCH + Duration::from_secs(unix))
}

/// `YYYY-MM-DD HH:MM:SS` UTC, without pulling in a date crate.
fn httpdate_like(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn column_widths<const N: usize>(header: Option<&[String; N]>, rows: &[[String; N]]) -> [usize; N] {
    let mut w = [0; N];
    for row in header.into_iter().chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.len());
        }
    }
    w
}

fn align<const N: usize>(row: &[String; N], widths: &[usize; N]) -> String {
    let cells: Vec<String> = row
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    cells.join("  ").trim_end().to_owned()
}

fn control(c: &Config, req: Value) -> Result<Value, String> {
    telem::control::request(&c.control_socket, &req).map_err(|e| e.to_string())
}

fn probe_cmd(c: &Config, cmd: ProbeCmd, as_json: bool) -> Result<(), String> {
    let resp = match &cmd {
        ProbeCmd::List | ProbeCmd::Info { .. } => control(c, json!({"op": "list"}))?,
        ProbeCmd::Run { name, args } => {
            control(c, json!({"op": "run", "probe": name, "args": args}))?
        }
        ProbeCmd::Reload => control(c, json!({"op": "reload"}))?,
        ProbeCmd::Enable { name } => control(c, json!({"op": "enable", "probe": name}))?,
        ProbeCmd::Disable { name } => control(c, json!({"op": "disable", "probe": name}))?,
    };
    if resp["ok"] != true {
        return Err(resp["error"].as_str().map_or_else(
            || "the daemon refused the request".to_owned(),
            |e| telem::untrusted::escape(e, 4096),
        ));
    }
    let probes = resp["probes"].as_array().cloned().unwrap_or_default();
    match cmd {
        ProbeCmd::List => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&probes).expect("serializes")
                );
                return Ok(());
            }
            let header = [
                "NAME",
                "VERSION",
                "STATE",
                "RUNS",
                "TRAPS",
                "TIMEOUTS",
                "SENT",
                "REFUSED",
                "LAST ERROR",
            ]
            .map(String::from);
            let rows: Vec<[String; 9]> = probes
                .iter()
                .map(|p| {
                    let s = &p["stats"];
                    [
                        str_of(&p["name"]),
                        str_of(&p["version"]),
                        str_of(&p["state"]["state"]),
                        s["runs"].to_string(),
                        s["traps"].to_string(),
                        s["timeouts"].to_string(),
                        s["records_sent"].to_string(),
                        s["records_refused"].to_string(),
                        s["last_error"]
                            .as_str()
                            .map_or("-".into(), |e| str_of(&e.into())),
                    ]
                })
                .collect();
            let widths = column_widths(Some(&header), &rows);
            println!("{}", align(&header, &widths));
            for r in &rows {
                println!("{}", align(r, &widths));
            }
        }
        ProbeCmd::Info { name } => {
            let p = probes
                .iter()
                .find(|p| p["name"] == name.as_str())
                .ok_or_else(|| format!("no probe named {name} is loaded"))?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(p).expect("serializes"));
                return Ok(());
            }
            println!(
                "{} {} ({})",
                str_of(&p["name"]),
                str_of(&p["version"]),
                str_of(&p["file"])
            );
            println!("  {}", str_of(&p["description"]));
            println!("  state: {}", str_of(&p["state"]["state"]));
            println!("  {:<22} {:<40} granted", "", "requested");
            let (r, g) = (&p["requested"], &p["granted"]);
            println!(
                "  {:<22} {:<40} {}",
                "read paths",
                list_of(&r["read_paths"]),
                list_of(&g["read_paths"])
            );
            println!(
                "  {:<22} {:<40} {}",
                "classifications",
                list_of(&r["classifications"]),
                list_of(&g["classifications"])
            );
            println!(
                "  {:<22} {:<40} {}",
                "records per hour", r["max_records_per_hour"], g["max_records_per_hour"]
            );
            println!(
                "  {:<22} {:<40} {} MiB",
                "memory", "-", g["memory_limit_mib"]
            );
            println!(
                "  {:<22} {:<40} {} ms",
                "time per call", "-", g["timeout_ms"]
            );
            println!("  {:<22} {:<40} {}", "crashes", r["crashes"], g["crashes"]);
            let refused = g["refused"].as_array().cloned().unwrap_or_default();
            if !refused.is_empty() {
                println!("  refused:");
                for f in &refused {
                    println!("    {}: {}", str_of(&f["item"]), str_of(&f["reason"]));
                }
            }
        }
        ProbeCmd::Run { name, .. } => println!("{name}: ran successfully"),
        ProbeCmd::Reload => println!("reloaded: {} probe(s) loaded", resp["probes"]),
        ProbeCmd::Enable { name } => println!("{name}: enabled and loaded"),
        ProbeCmd::Disable { name } => {
            println!("{name}: disabled (stays off until `telemctl probe enable {name}`)")
        }
    }
    Ok(())
}

/// A value for the terminal: probe-supplied strings (names, descriptions,
/// versions, errors) have their control characters escaped, so a probe
/// cannot drive the admin's terminal.
fn str_of(v: &Value) -> String {
    let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    telem::untrusted::escape(&s, 1024)
}

fn list_of(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(str_of).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn spool_list(c: &Config, as_json: bool) -> Result<(), String> {
    let rd = std::fs::read_dir(&c.spool_dir)
        .map_err(|e| format!("cannot read the spool {}: {e}", c.spool_dir.display()))?;
    let mut rows = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let class = std::fs::read(e.path())
            .ok()
            .and_then(|b| telem::record::spool_file::decode(&b).ok())
            .map_or_else(
                || "(unreadable)".to_owned(),
                |r| {
                    r.headers
                        .get(telem::record::Header::Classification)
                        .to_owned()
                },
            );
        let mtime = m.modified().unwrap_or(UNIX_EPOCH);
        rows.push((mtime, name, m.len(), class));
    }
    rows.sort();
    if as_json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(t, n, s, c)| json!({"record_id": n, "size": s, "spooled": httpdate_like(*t), "classification": c}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    let header = ["RECORD ID", "SPOOLED (UTC)", "BYTES", "CLASSIFICATION"].map(String::from);
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|(t, n, s, c)| [n.clone(), httpdate_like(*t), s.to_string(), c.clone()])
        .collect();
    let widths = column_widths(Some(&header), &table);
    println!("{}", align(&header, &widths));
    for r in &table {
        println!("{}", align(r, &widths));
    }
    println!(
        "{} record(s), {} bytes",
        rows.len(),
        rows.iter().map(|r| r.2).sum::<u64>()
    );
    Ok(())
}

const UNITS: [&str; 2] = ["telemd.socket", "telemd.service"];

fn systemd_running() -> Result<(), String> {
    if Path::new("/run/systemd/system").exists() {
        Ok(())
    } else {
        Err("systemd is not running on this machine; run telemd directly (telemd -f CONFIG)".into())
    }
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    systemd_running()?;
    let st = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if st.success() {
        Ok(())
    } else if unsafe { libc::geteuid() } != 0 {
        Err(format!(
            "systemctl {} failed; it needs root: try `sudo telemctl {}`",
            args.join(" "),
            args[0]
        ))
    } else {
        Err(format!("systemctl {} failed", args.join(" ")))
    }
}

/// Prints `telemd.socket : active` style lines, as the legacy telemctl did.
fn is_active() -> Result<(), String> {
    systemd_running()?;
    let mut all = true;
    for u in UNITS {
        let out = std::process::Command::new("systemctl")
            .args(["is-active", u])
            .output()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        all &= out.status.success();
        println!(
            "{u} : {}",
            if state.is_empty() { "unknown" } else { &state }
        );
    }
    if all {
        Ok(())
    } else {
        Err("telemd is not active".into())
    }
}

fn status(c: &Config, as_json: bool) -> Result<(), String> {
    let daemon = telem::control::request(&c.control_socket, &json!({"op": "status"}));
    if as_json {
        let v = match &daemon {
            Ok(v) => v.clone(),
            Err(e) => {
                json!({"ok": false, "opted_in": c.opt_in_file.exists(), "error": e.to_string()})
            }
        };
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "{:<16} {} ({})",
        "opted in:",
        yes(c.opt_in_file.exists()),
        c.opt_in_file.display()
    );
    let v = match daemon {
        Ok(v) => v,
        Err(e) => {
            println!("{:<16} no: {e}", "daemon:");
            return Ok(());
        }
    };
    println!("{:<16} running", "daemon:");
    let sp = &v["spool"];
    let oldest = sp["oldest"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |t| format_time(t) + " UTC");
    println!(
        "{:<16} {} record(s), {} bytes, oldest {oldest}",
        "spool:", sp["records"], sp["bytes"]
    );
    let d = &v["delivery"];
    let next = d["next_try"]
        .as_u64()
        .map_or_else(|| "now".to_owned(), |t| format_time(t) + " UTC");
    println!(
        "{:<16} last {}, next try {next}; delivered {}, rejected {}, expired {}, dropped {}",
        "delivery:",
        d["last_result"].as_str().unwrap_or("none yet"),
        d["delivered"],
        d["rejected"],
        d["expired"],
        d["dropped"]
    );
    let i = &v["ingest"];
    println!(
        "{:<16} accepted {}, invalid {}, not opted in {}, spool full {}, timed out {}",
        "native/probes:",
        i["accepted"],
        i["invalid"],
        i["not_opted_in"],
        i["spool_full"],
        i["timed_out"]
    );
    let p = &v["probes"];
    println!(
        "{:<16} {} loaded, {} quarantined, disabled: {}",
        "probes:",
        p["loaded"],
        p["quarantined"],
        list_of(&p["disabled"])
    );
    Ok(())
}

/// Asks for delivery now and follows the spool until it is empty, showing
/// progress on a terminal; fails when delivery fails.
fn flush(c: &Config) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    control(c, json!({"op": "flush"}))?;
    let tty = std::io::stdout().is_terminal();
    let start = std::time::Instant::now();
    loop {
        let v = control(c, json!({"op": "status"}))?;
        let left = v["spool"]["records"].as_u64().unwrap_or(0);
        if tty {
            print!("\r{left} record(s) left   ");
            let _ = std::io::stdout().flush();
        }
        if left == 0 {
            println!("{}spool is empty", if tty { "\r" } else { "" });
            return Ok(());
        }
        let d = &v["delivery"];
        let failing = d["failures_in_a_row"].as_u64().unwrap_or(0) > 0;
        if failing && start.elapsed() > Duration::from_secs(2) {
            if tty {
                println!();
            }
            return Err(format!(
                "{left} record(s) still spooled: delivery {}",
                d["last_result"].as_str().unwrap_or("is failing")
            ));
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{left} record(s) still spooled after 2 minutes (rate limit?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
