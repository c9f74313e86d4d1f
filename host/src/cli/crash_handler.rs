//! Command-line definition of `telem-crash-handler`, the program the kernel
//! runs for every core dump (`kernel.core_pattern`).

use std::path::PathBuf;

use clap::Parser;

/// Receive a core dump from the kernel and hand it to telemd.
#[derive(Parser, Debug)]
#[command(
    name = "telem-crash-handler",
    version,
    after_help = "Installed as: kernel.core_pattern = |/usr/bin/telem-crash-handler -p %e -E %E -s %s -P %P -u %u\n\
                  The core comes on standard input (or from -c FILE). Exit status: 0 the crash was handled \
                  (recorded, queued, or dropped by a filter or a limit, which is logged), 1 it was lost (logged)."
)]
pub struct Args {
    /// Process name (`%e`).
    #[arg(short = 'p', long = "process-name", value_name = "NAME")]
    pub process_name: Option<String>,
    /// Executable path with `/` written as `!` (`%E`).
    #[arg(short = 'E', long = "exe", value_name = "PATH")]
    pub exe: Option<String>,
    /// Signal number (`%s`).
    #[arg(short = 's', long, value_name = "N")]
    pub signal: Option<u32>,
    /// Pid in the initial pid namespace (`%P`).
    #[arg(short = 'P', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Pidfd of the crashed process (`%F`, kernel 6.16+); accepted for
    /// the pattern's sake, the process is identified by `-P`.
    #[arg(short = 'F', long = "pidfd", value_name = "FD")]
    pub pidfd: Option<i32>,
    /// Real uid of the crashed process (`%u`).
    #[arg(short = 'u', long = "uid", value_name = "UID")]
    pub uid: Option<u32>,
    /// Read the core from this file instead of standard input.
    #[arg(short = 'c', long = "core-file", value_name = "FILE")]
    pub core_file: Option<PathBuf>,
    /// Configuration file (the telemd one).
    #[arg(short = 'f', long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Wait for the record and print its payload.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}
