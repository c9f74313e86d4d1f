//! `telem-crash-handler`: the `kernel.core_pattern` target. Keeps a core in
//! the crash inbox for telemd's sandboxed crash-symbolizer.

use std::process::ExitCode;

use clap::Parser;
use telem::cli::crash_handler::Args;
use telem::config::Config;
use telem::crash_handler::{run, Outcome};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(Config::default(), args.config_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telem-crash-handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args, &config) {
        Ok(Outcome::Queued(id)) => {
            if args.verbose {
                eprintln!("crash queued as {id}");
            }
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telem-crash-handler: {e}");
            ExitCode::FAILURE
        }
    }
}
