//! `telemctl crash symbolize`: the crash probe run on an admin's core, in
//! this process, under the daemon's sandbox and limits.

use std::path::PathBuf;

use clap::Subcommand;
use telem_core::config::Config;
use telem_sandbox::offline::{symbolize_offline, SymbolizeRequest};

/// `telemctl crash` verbs.
#[derive(Subcommand, Debug)]
pub enum CrashCmd {
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
