//! `telem-crash-handler`: the `kernel.core_pattern` target. Keeps a core in
//! the crash inbox for telemd's sandboxed crash-symbolizer.

mod admission;
mod handler;
mod identify;
mod inbox;
mod privacy;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use handler::{discard_input, log, run, Outcome};
use telem_cli::crash_handler::Args;
use telem_core::config::Config;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return bad_arguments(&e),
    };
    let config = match Config::load(Config::default(), args.config_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log(&format!(
                "crash lost: {}",
                telem_core::error_text::Chain(&e)
            ));
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
            log(&telem_core::error_text::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

/// Arguments clap could not take. Run by hand, that is the usual message
/// (or the help asked for); run by the kernel, nobody sees the terminal
/// output, so the failure is logged and the core read to its end rather
/// than left in the pipe.
fn bad_arguments(e: &clap::Error) -> ExitCode {
    let from_kernel = !std::io::stdin().is_terminal();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        if from_kernel {
            log("no core kept: the arguments asked for help or the version");
            discard_input();
        }
        return ExitCode::SUCCESS;
    }
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    let first = e.to_string();
    let first = first.lines().next().unwrap_or_default();
    log(&format!(
        "crash lost: cannot parse the arguments {argv:?}: {first}"
    ));
    if from_kernel {
        discard_input();
    }
    ExitCode::FAILURE
}
