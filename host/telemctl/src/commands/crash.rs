//! `telemctl crash symbolize`: the crash probe run on an admin's core, in
//! this process, under the daemon's sandbox and limits.

use telem_core::cli::telemctl::CrashCmd;
use telem_core::config::Config;
use telem_sandbox::offline::{symbolize_offline, SymbolizeRequest};

pub fn run(c: &Config, cmd: CrashCmd, json: bool) -> anyhow::Result<()> {
    let CrashCmd::Symbolize {
        core,
        exe,
        debug_root,
        probe,
    } = cmd;
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
