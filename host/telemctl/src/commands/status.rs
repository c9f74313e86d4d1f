//! `telemctl status`: opt-in, and the daemon's summary when it runs.

use serde::Serialize;
use telem_core::config::Config;

use crate::table::{format_time, list, shown};

/// `--json` when the daemon does not answer.
#[derive(Serialize)]
struct Unreachable {
    opted_in: bool,
    error: String,
}

/// `telemctl status`: exit 0 when the daemon answers, 3 (systemctl's
/// "not running") when it does not, the summary printed either way.
pub fn show(c: &Config, json: bool) -> anyhow::Result<()> {
    let daemon = super::connect(c).and_then(|mut client| Ok(client.status()?));
    // 3 when nothing answers; another failure (permission, version) is
    // an error, the daemon may well run.
    let not_running = |e: &anyhow::Error| {
        super::Exit::quiet(if super::NotRunning::is(e) {
            super::Exit::NOT_RUNNING
        } else {
            super::Exit::FAILURE
        })
        .into()
    };
    if json {
        return match &daemon {
            Ok(s) => {
                super::print_json(s);
                Ok(())
            }
            Err(e) => {
                super::print_json(&Unreachable {
                    opted_in: c.host.opt_in_file.exists(),
                    error: format!("{e:#}"),
                });
                Err(not_running(e))
            }
        };
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "{:<16} {} ({})",
        "opted in:",
        yes(c.host.opt_in_file.exists()),
        c.host.opt_in_file.display()
    );
    let s = match daemon {
        Ok(s) => s,
        Err(e) => {
            println!("{:<16} no: {}", "daemon:", shown(&format!("{e:#}")));
            return Err(not_running(&e));
        }
    };
    println!("{:<16} running", "daemon:");
    let oldest = s
        .spool
        .oldest
        .map_or_else(|| "-".to_owned(), |t| format_time(t) + " UTC");
    println!(
        "{:<16} {} record(s), {} bytes, oldest {oldest}",
        "spool:", s.spool.records, s.spool.bytes
    );
    let d = &s.delivery;
    let next = d
        .next_try
        .map_or_else(|| "now".to_owned(), |t| format_time(t) + " UTC");
    println!(
        "{:<16} last {}, next try {next}; delivered {}, rejected {}, expired {}, dropped {}",
        "delivery:",
        d.last_result.as_deref().map_or("none yet".into(), shown),
        d.delivered,
        d.rejected,
        d.expired,
        d.dropped
    );
    let i = &s.ingest;
    println!(
        "{:<16} accepted {}, invalid {}, not opted in {}, spool full {}, spool errors {}",
        "records:", i.accepted, i.invalid, i.not_opted_in, i.spool_full, i.spool_errors
    );
    println!(
        "{:<16} timed out {}, refused over their uid's share {}",
        "native clients:", i.timed_out, i.refused
    );
    let p = &s.probes;
    println!(
        "{:<16} {} loaded, {} quarantined, disabled: {}",
        "probes:",
        p.loaded,
        p.quarantined,
        list(&p.disabled)
    );
    Ok(())
}

/// `telemctl metrics`: the exposition, byte for byte as a scrape gets it.
pub fn metrics(c: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let text = super::connect(c)?.metrics()?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// `telemctl reload`: the daemon reads its config again; an error (the
/// new config refused, the old one kept) is the exit status.
pub fn reload(explicit: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let socket = match Config::load(Config::default(), explicit) {
        Ok(c) => c.host.control_socket,
        Err(e) => {
            let socket = Config::default().host.control_socket;
            eprintln!(
                "telemctl: {}; asking the daemon at {} all the same",
                telem_core::error_text::Chain(&e),
                socket.display()
            );
            socket
        }
    };
    let (changed, restart_needed) = telem_core::control::client::Client::connect(&socket, None)?
        .reload_config()
        .context("reload refused")?;
    if changed.is_empty() {
        println!("config reloaded: nothing to change in place");
    } else {
        println!("config reloaded: {} applied", changed.join(" and "));
    }
    if !restart_needed.is_empty() {
        println!(
            "changes to {} take effect at the next restart",
            restart_needed.join(", ")
        );
    }
    Ok(())
}
