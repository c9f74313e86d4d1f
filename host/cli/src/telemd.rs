//! Command-line definitions of `telemd`.

use std::path::PathBuf;

use clap::Parser;

/// Collects telemetry records from native and WASM probes, spools them
/// durably and delivers them to the collector.
#[derive(Parser, Debug)]
#[command(name = "telemd", version)]
pub struct Args {
    /// Config file (TOML, or a legacy telemetrics.conf). Default: the first of
    /// /etc/telemetrics/telemd.toml, /etc/telemetrics/telemetrics.conf,
    /// /usr/share/defaults/telemetrics/telemd.toml,
    /// /usr/share/defaults/telemetrics/telemetrics.conf.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Rootless developer mode: every path under DIR, opted in, records
    /// delivered to DIR/collector/records.jsonl. The system config is not read
    /// (-f still applies on top).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "target/telemd-dev")]
    pub dev: Option<PathBuf>,

    /// Log filter (tracing syntax), e.g. "debug" or "telem=debug".
    /// Default: $RUST_LOG, else "info" ("telem=debug" in dev mode).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}
