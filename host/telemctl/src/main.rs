//! `telemctl`: the admin's tool. Legacy verbs (opt-in, opt-out, journal)
//! work as admins of the old client remember; probes and the spool are
//! driven through the daemon's control socket (`telem_core::control`).
//! Each verb group is one module of `commands/`, its arguments beside
//! its handler; this file only parses and reports.

mod cli;
mod commands;
mod docs;
mod table;
mod time_spec;

use std::process::ExitCode;

use clap::Parser;
use cli::Args;

fn main() -> ExitCode {
    // Like the shell tools it is piped into and out of: output to a pipe
    // whose reader has gone (`telemctl journal | head -3`) ends telemctl
    // quietly by SIGPIPE, instead of a write error (Rust's runtime ignores
    // SIGPIPE) that println! turns into a panic.
    // SAFETY: first thing in main, before any thread exists; SIG_DFL is
    // a valid disposition for SIGPIPE and no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<commands::Exit>() {
                // Daemon text may be quoted here too: escaped.
                if let Some(m) = &exit.message {
                    eprintln!("telemctl: {}", telem_core::untrusted::escape(m, 4096));
                }
                return ExitCode::from(exit.code);
            }
            // Daemon and probe text may be quoted: escaped for the terminal.
            let text = telem_core::error_text::one_line(e.chain());
            eprintln!("telemctl: {}", telem_core::untrusted::escape(&text, 4096));
            ExitCode::FAILURE
        }
    }
}
