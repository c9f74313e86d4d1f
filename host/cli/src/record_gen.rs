//! Command-line definitions of `telem-record-gen`.

use std::path::PathBuf;

use clap::Parser;

/// Create and send a custom telemetry record.
#[derive(Parser, Debug)]
#[command(
    name = "telem-record-gen",
    version,
    after_help = "The payload comes from -p, else -P, else standard input; it is cut to 8192 bytes.\n\
                  Exit status: 0 sent (or printed with -n), 1 the record was invalid or could not be sent, 2 bad usage."
)]
pub struct Args {
    /// Severity level (1-4).
    #[arg(short = 's', long, default_value = "1", value_name = "N")]
    pub severity: String,
    /// Classification DOMAIN/PROBE/REST (required).
    #[arg(short = 'c', long = "class", value_name = "CLASS")]
    pub class: Option<String>,
    /// Record body (at most 8192 bytes).
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub payload: Option<String>,
    /// File to read the payload from.
    #[arg(short = 'P', long = "payload-file", value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Version number of the payload's format.
    #[arg(
        short = 'R',
        long = "record-version",
        default_value = "1",
        value_name = "N"
    )]
    pub record_version: String,
    /// Event id to use (32 characters of 0-9a-f); random if not given.
    #[arg(short = 'e', long = "event-id", value_name = "ID")]
    pub event_id: Option<String>,
    /// Echo the record to stdout.
    #[arg(short = 'o', long)]
    pub echo: bool,
    /// Do not send the record, only print it.
    #[arg(short = 'n', long = "no-post")]
    pub no_post: bool,
    /// Use this configuration file (its socket_path and opt-in file); the
    /// daemon delivers the record with this file's server.
    #[arg(
        short = 'f',
        long = "config-file",
        alias = "config_file",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,
    /// Native socket to send to (overrides the config's socket_path).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}
