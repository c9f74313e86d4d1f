//! `telemd`: the telemetry daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use telem::config::Config;

/// Collects telemetry records from native and WASM probes, spools them
/// durably and delivers them to the collector.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML, or a legacy telemetrics.conf). Default: the first of
    /// /etc/telemetrics/telemd.toml, /etc/telemetrics/telemetrics.conf,
    /// /usr/share/defaults/telemetrics/telemd.toml,
    /// /usr/share/defaults/telemetrics/telemetrics.conf.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Rootless developer mode: every path under DIR, opted in, records
    /// delivered to DIR/collector/records.jsonl. The system config is not read
    /// (-f still applies on top).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "target/telemd-dev")]
    dev: Option<PathBuf>,

    /// Log filter (tracing syntax), e.g. "debug" or "telem=debug".
    /// Default: $RUST_LOG, else "info" ("telem=debug" in dev mode).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default_filter = if args.dev.is_some() {
        "info,telem=debug"
    } else {
        "info"
    };
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match &args.dev {
        Some(dir) => telem::daemon::prepare_dev(dir, args.config.as_deref())?,
        None => Config::load(Config::default(), args.config.as_deref())?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(telem::daemon::run(config))?;
    Ok(())
}
