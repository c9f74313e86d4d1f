//! `telemctl spool flush|list`: what waits to be delivered.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use telem_core::config::Config;
use telem_core::control::Request;
use telem_core::fsutil::beneath;
use telem_core::record::{spool_file, Header};

use crate::table::{shown, utc};

/// `telemctl spool` verbs.
#[derive(clap::Subcommand, Debug)]
pub enum SpoolCmd {
    /// Records in the spool, oldest first.
    List,
    /// Ask the daemon to deliver now, and follow until the spool is empty.
    Flush,
}

/// Runs a spool verb.
pub fn run(c: &Config, cmd: SpoolCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SpoolCmd::Flush => flush(c),
        SpoolCmd::List => list(c, json),
    }
}

/// Asks for delivery now and follows the spool until it is empty, showing
/// progress on a terminal; fails when delivery fails.
fn flush(c: &Config) -> anyhow::Result<()> {
    let mut client = super::connect(c)?;
    client.act(&Request::Flush)?;
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    loop {
        let s = client.status()?;
        let left = s.spool.records;
        if tty {
            print!("\r{left} record(s) left   ");
            let _ = std::io::stdout().flush();
        }
        if left == 0 {
            println!("{}spool is empty", if tty { "\r" } else { "" });
            return Ok(());
        }
        let d = &s.delivery;
        if d.failures_in_a_row > 0 && start.elapsed() > Duration::from_secs(2) {
            if tty {
                println!();
            }
            bail!(
                "{left} record(s) still spooled: delivery {}",
                d.last_result.as_deref().map_or("is failing".into(), shown)
            );
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{left} record(s) still spooled after 2 minutes (rate limit?)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One spooled record in `--json`.
#[derive(Serialize)]
struct Spooled {
    record_id: String,
    size: u64,
    spooled: String,
    classification: String,
}

/// Most bytes of a spool file read (a record is at most a frame).
const SPOOL_FILE_READ_CAP: u64 = 64 << 10;

/// Lists the spool directory itself (the daemon need not run). Often as
/// root, in a directory the service user owns: entries are read beneath
/// it, never through a symlink, FIFO or device (`fsutil::beneath`).
fn list(c: &Config, json: bool) -> anyhow::Result<()> {
    let unreadable = || format!("cannot read the spool {}", c.spool.spool_dir.display());
    let dir = beneath::open_dir(&c.spool.spool_dir).with_context(unreadable)?;
    let mut rows = Vec::new();
    for e in dir
        .entries()
        .with_context(unreadable)?
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let class = beneath::read_file(&dir, &name, SPOOL_FILE_READ_CAP)
            .ok()
            .and_then(|b| spool_file::decode(&b).ok())
            .map_or_else(
                || "(unreadable)".to_owned(),
                |r| r.headers.get(Header::Classification).to_owned(),
            );
        let mtime = m.modified().map_or(UNIX_EPOCH, |t| t.into_std());
        rows.push((mtime, name, m.len(), class));
    }
    rows.sort();
    if json {
        let v: Vec<Spooled> = rows
            .iter()
            .map(|(t, n, s, c)| Spooled {
                record_id: n.clone(),
                size: *s,
                spooled: utc(*t),
                classification: c.clone(),
            })
            .collect();
        super::print_json(&v);
        return Ok(());
    }
    let table: Vec<[String; 4]> = rows
        .iter()
        .map(|(t, n, s, c)| [shown(n), utc(*t), s.to_string(), shown(c)])
        .collect();
    crate::table::print(
        ["RECORD ID", "SPOOLED (UTC)", "BYTES", "CLASSIFICATION"],
        &table,
    );
    println!(
        "{} record(s), {} bytes",
        rows.len(),
        rows.iter().map(|r| r.2).sum::<u64>()
    );
    Ok(())
}
