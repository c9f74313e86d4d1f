//! `telemd`: the telemetry daemon.

use anyhow::Context;
use clap::Parser;
use telem_cli::telemd::Args;
use telem_core::config::Config;
use telemd::reload::ConfigSource;

/// Threads of the main runtime's blocking pool (tokio's default is 512).
/// Probe work (WASI file I/O, compiling) has a pool of its own
/// (`probe_runtime.rs`).
const MAX_BLOCKING_THREADS: usize = 64;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telemd: {}", telem_core::error_text::one_line(e.chain()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // First, while this is the only thread: the sockets systemd passed.
    let passed = telemd::systemd::take_listen_fds();
    let args = Args::parse();
    let default_filter = if args.dev.is_some() {
        "info,telemd=debug,telem_sandbox=debug,telem_core=debug"
    } else {
        "info"
    };
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_owned());
    telemd::logging::init(
        tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log filter")?,
    );

    let passed = passed.unwrap_or_else(|e| {
        tracing::warn!("ignoring the sockets systemd passed: {e}");
        Vec::new()
    });
    let (config, source) = match &args.dev {
        Some(dir) => {
            let config = telemd::daemon::prepare_dev(dir, args.config.as_deref())?;
            let dir = dir.canonicalize().context("the dev directory")?;
            let extra = args.config.clone();
            (config, ConfigSource::Dev { dir, extra })
        }
        None => (
            Config::load(Config::default(), args.config.as_deref())?,
            ConfigSource::Files(args.config.clone()),
        ),
    };
    // Blocking threads are bounded well below the unit's TasksMax.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    rt.block_on(telemd::daemon::run(config, passed, source))?;
    Ok(())
}
