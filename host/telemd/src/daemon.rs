//! Assembles `telemd` from the library parts and runs it until SIGTERM or
//! SIGINT. The binary only parses arguments and calls [`run`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::net::UnixListener;
use thiserror::Error;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use telem_core::state_layout::StateLayout;

use crate::delivery::post::PosterError;
use crate::delivery::Delivery;
use crate::ingest::socket::{self, NativeSocketOptions};
use crate::ingest::Ingest;
use crate::spool::Spool;
use crate::systemd;
use telem_core::clock::{Clock, SystemClock};
use telem_core::config::Config;
use telem_core::journal::Journal;
use telem_core::machine_id::{MachineIdCache, MachineIdStore};
use telem_core::metadata::HostMetadata;

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// A file or socket operation failed; `what` says which.
    #[error("{what}")]
    Io {
        /// What the daemon was doing.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The WASM engine could not be set up.
    #[error("cannot start the probe sandbox")]
    Sandbox(#[source] telem_sandbox::EngineError),
    /// The collector client could not be set up (bad `cainfo`).
    #[error(transparent)]
    Poster(#[from] PosterError),
    /// Another daemon runs on the same state directory.
    #[error(transparent)]
    Locked(#[from] crate::state_lock::LockError),
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Io {
        what: what(),
        source,
    }
}

/// Runs the daemon with `config` until a termination signal. `passed` are
/// the sockets systemd passed, taken in `main` before any thread started
/// ([`systemd::take_listen_fds`]).
pub async fn run(
    config: Config,
    passed: Vec<systemd::ListenFd>,
    source: crate::reload::ConfigSource,
) -> Result<(), DaemonError> {
    raise_fd_limit();
    let mut signals =
        Signals::install().map_err(ctx(|| "cannot install the signal handlers".into()))?;
    for w in &config.warnings {
        warn!("config: {w}");
    }
    for dir in [
        &config.spool.spool_dir,
        &config.host.state_dir,
        &config.journal.journal_dir,
    ] {
        std::fs::create_dir_all(dir).map_err(ctx(|| format!("cannot create {}", dir.display())))?;
    }
    // Before anything is opened, bound or cleaned up: held until this
    // function returns.
    let _state_lock = crate::state_lock::StateLock::acquire(&config.host.state_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metadata = HostMetadata::collect(&config.host.metadata_root);
    let cap = config
        .spool
        .spool_max_size
        .get()
        .map(|kib| kib.saturating_mul(1024));
    let spool = Spool::open(&config.spool.spool_dir, cap).map_err(ctx(|| {
        format!("cannot open the spool {}", config.spool.spool_dir.display())
    }))?;
    let machine_id = MachineIdCache::new(MachineIdStore::new(
        &config.host.state_dir,
        &config.host.static_machine_id_file,
    ));
    let ingest = Arc::new(Ingest::new(
        spool.clone(),
        machine_id,
        metadata,
        config.host.opt_in_file.clone(),
        clock.clone(),
    ));
    let journal = Arc::new(
        Journal::open(
            &config.journal.journal_dir,
            config.journal.journal_limit.get() as usize,
            config.delivery.record_retention_enabled,
        )
        .map_err(ctx(|| {
            format!(
                "cannot open the journal in {}",
                config.journal.journal_dir.display()
            )
        }))?,
    );
    // Marked by native ingest and delivery while they work: probe calls
    // then make way (telem_sandbox::host_pressure).
    let pressure = telem_sandbox::HostPressure::new();
    let delivery = Delivery::new(
        config.delivery.clone(),
        config.source.clone(),
        spool.clone(),
        journal,
        clock,
        rand::random(),
    )?
    .with_pressure(pressure.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let layout = StateLayout::new(&config.host.state_dir);
    let inbox = layout.crash_inbox();
    std::fs::create_dir_all(&inbox)
        .map_err(ctx(|| format!("cannot create {}", inbox.display())))?;
    let mut sandbox_options = telem_sandbox::SandboxOptions::for_config(&config, pressure.clone());
    // Crash calls' debug files, from the servers the admin named.
    sandbox_options.debuginfo = crate::debuginfod::Debuginfod::for_config(&config)
        .map(|d| d as Arc<dyn telem_sandbox::DebuginfoSource>);
    let sandbox =
        telem_sandbox::Sandbox::with_options(sandbox_options).map_err(DaemonError::Sandbox)?;
    // Probe work gets a runtime of its own at a lower priority, so
    // probes never take the CPU that ingest and delivery need.
    let probe_runtime = crate::probe_runtime::ProbeRuntime::start()
        .map_err(ctx(|| "cannot start the probes' runtime".into()))?;
    let probes = crate::supervisor::ProbeManager::new(
        sandbox,
        probe_runtime.handle(),
        ingest.clone(),
        config.probes.probes_dirs.clone(),
        config.probes.probes.clone(),
        layout.disabled_probes(),
        crate::sources::SourceOptions::for_config(&config),
        crate::supervisor::Trust::for_config(&config),
    );
    // Crashes left in the inbox while the daemon was down wait for the
    // probes, which load once the sockets are bound (below).
    let crashes = {
        let _on_probe_runtime = probe_runtime.handle().enter();
        crate::crash_queue::CrashQueue::start(
            inbox,
            telem_core::crash_history::CrashHistory::new(&layout.crash_history()),
            crate::crash_queue::CrashOptions::for_config(&config),
            probes.clone(),
            ingest.clone(),
        )
    };
    let control_listener =
        crate::control::bind(&config.host.control_socket).map_err(ctx(|| {
            format!("cannot listen on {}", config.host.control_socket.display())
        }))?;
    let flush = Arc::new(Notify::new());
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let reloader = Arc::new(crate::reload::Reloader::new(
        source,
        config.clone(),
        reload_tx,
        probes.clone(),
    ));
    let control_ctx = Arc::new(crate::control::ControlContext {
        reloader: reloader.clone(),
        probes: probes.clone(),
        ingest: ingest.clone(),
        delivery: delivery.status(),
        flush: flush.clone(),
        opt_in_file: config.host.opt_in_file.clone(),
        crashes,
        crash_inbox: layout.crash_inbox(),
        journal_file: config.journal.journal_dir.join("journal"),
    });
    let metrics = if config.host.metrics_listen.is_empty() {
        None
    } else {
        let l = crate::metrics_http::MetricsListener::bind(&config.host.metrics_listen)
            .await
            .map_err(ctx(|| {
                format!(
                    "cannot serve the metrics at {}",
                    config.host.metrics_listen.as_str()
                )
            }))?;
        Some(tokio::spawn(crate::metrics_http::serve(
            l,
            control_ctx.clone(),
            stop_rx.clone(),
        )))
    };
    let control = tokio::spawn(crate::control::serve(
        control_listener,
        control_ctx,
        stop_rx.clone(),
    ));
    // The native socket comes last: once it accepts, everything is ready.
    let (listener, bound_path) = native_listener(&config.socket, passed)?;
    let opts = NativeSocketOptions {
        timeout: Duration::from_millis(config.socket.socket_timeout_ms.get()),
        max_connections: config.socket.max_connections.get() as usize,
    };
    let listener = socket::NativeListener::new(listener)
        .map_err(ctx(|| "cannot watch the native socket".into()))?;
    let (watchdog, beat) = crate::watchdog::Watchdog::new();
    let native = tokio::spawn(socket::serve(
        listener,
        ingest.clone(),
        opts,
        pressure,
        stop_rx.clone(),
        beat,
    ));
    // Delivery gets a thread and a single-threaded runtime of its own: posts
    // are sequential, so keeping the worker and its HTTP connection task on
    // one thread saves a cross-thread wake-up per record, and a slow disk or
    // collector never competes with the socket listener.
    let (delivery_rt_tx, delivery_rt) = std::sync::mpsc::channel();
    let delivering = {
        let flush = flush.clone();
        std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = delivery_rt_tx.send(rt.handle().clone());
                        rt.block_on(delivery.run(stop_rx, flush, reload_rx))
                    }
                    Err(e) => warn!("cannot start the delivery runtime: {e}"),
                }
            })
            .map_err(ctx(|| "cannot start the delivery thread".into()))?
    };

    info!(
        socket = %config.socket.socket_path.display(),
        spool = %config.spool.spool_dir.display(),
        server = %config.delivery.server,
        opted_in = config.host.opt_in_file.exists(),
        "telemd ready"
    );
    systemd::notify_ready();
    // systemd's watchdog (WatchdogSec=): pings while the loops progress.
    let _watchdog = systemd::watchdog_period().map(|period| {
        let mut runtimes = vec![("probes", probe_runtime.handle().clone())];
        if let Ok(h) = delivery_rt.recv_timeout(Duration::from_secs(5)) {
            runtimes.push(("delivery", h));
        }
        info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
        tokio::spawn(watchdog.run(period, runtimes, systemd::notify_watchdog))
    });
    wedge_for_tests(&probe_runtime.handle());
    // Probes load only now: a slow, huge or hostile component file can
    // never keep the sockets from answering or systemd from hearing READY.
    let watcher = probe_runtime
        .handle()
        .spawn(probes.clone().watch(Duration::from_millis(
            config.probes.probe_scan_interval_ms.get(),
        )));

    wait_for_signal(&mut signals, &reloader).await;
    systemd::notify_stopping();
    // First: the stop may end in a SIGKILL if it takes long. Compiles
    // under way are interrupted, not crashed, and must not keep their
    // probes out at the next start; none starts from now on.
    probes.release_compile_markers();
    info!("stopping: finishing connections in progress");
    let _ = stop_tx.send(true);
    let _ = native.await;
    watcher.abort();
    // Source batches in flight finish with their cursors; no other starts.
    let _quiet = probes.quiesce(Duration::from_secs(15)).await;
    let _ = control.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&config.host.control_socket);
    let _ = tokio::task::spawn_blocking(move || delivering.join()).await;
    drop(probe_runtime);
    spool.close();
    if let Some(p) = bound_path {
        let _ = std::fs::remove_file(p);
    }
    let c = ingest.stats.snapshot();
    info!(
        accepted = c.accepted,
        invalid = c.invalid,
        not_opted_in = c.not_opted_in,
        spool_full = c.spool_full,
        spool_errors = c.spool_errors,
        timed_out = c.timed_out,
        "telemd stopped"
    );
    Ok(())
}

/// Raises the soft descriptor limit to the hard one, as systemd advises
/// services that need more than the 1024 kept for select(): the native
/// socket's open-connection budget is half of it (the unit sets
/// `LimitNOFILE`).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            warn!("cannot raise the descriptor limit: {e}");
        }
    }
}

/// The native socket: the one systemd passed (named `telem-0`/`native`, or
/// the only one), else a fresh bind at `socket_path`. Returns the path to
/// clean up when this process bound it.
fn native_listener(
    config: &telem_core::config::SocketConfig,
    mut fds: Vec<systemd::ListenFd>,
) -> Result<(UnixListener, Option<PathBuf>), DaemonError> {
    let pick = fds
        .iter()
        .position(|f| f.name == "telem-0" || f.name == "native")
        .or_else(|| (fds.len() == 1).then_some(0));
    if let Some(i) = pick {
        let fd = fds.swap_remove(i);
        info!("using the native socket passed by systemd");
        return Ok((UnixListener::from(fd.fd), None));
    }
    let path: &Path = &config.socket_path;
    let l = socket::bind(path, config.socket_mode.bits())
        .map_err(ctx(|| format!("cannot listen on {}", path.display())))?;
    Ok((l, Some(path.to_owned())))
}

/// Sets up the rootless developer layout under `dir` and returns its
/// config: every path under `dir`, opted in, records delivered to a local
/// JSON-lines file. The effective config is written to `dir/telemd.toml` so
/// `telem-record-gen -f` and `telemctl -f` find the same socket and paths.
pub fn prepare_dev(dir: &Path, extra: Option<&Path>) -> Result<Config, DevError> {
    let dir_error = |source| DevError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    let dir = dir.canonicalize().map_err(dir_error)?;
    let base = Config::dev(&dir);
    let config = match extra {
        Some(p) => Config::load_file(base, p)?,
        None => base,
    };
    let write = |p: &Path, text: &str| {
        telem_core::fsutil::write_atomic(p, text.as_bytes(), 0o644).map_err(|source| {
            DevError::Write {
                path: p.to_owned(),
                source,
            }
        })
    };
    write(&config.host.opt_in_file, "")?;
    // Where an author's own public keys go (`minisign -G`'s `.pub`), so
    // signed probes load as they would on a machine requiring signatures.
    // Writable by its owner alone, whatever the umask: a keys directory
    // others could write is not used.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o755)
        .create(&config.probes.trusted_keys_dir)
        .map_err(|source| DevError::Write {
            path: config.probes.trusted_keys_dir.clone(),
            source,
        })?;
    let cfg_path = dir.join("telemd.toml");
    write(
        &cfg_path,
        &format!(
            "# written by telemd --dev; effective dev-mode config\n{}",
            config.to_toml()
        ),
    )?;
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned));
    let gen = bin.as_ref().map_or_else(
        || "telem-record-gen".into(),
        |b| b.join("telem-record-gen").display().to_string(),
    );
    eprintln!("telemd dev mode: everything lives under {}", dir.display());
    eprintln!("  config:    {}", cfg_path.display());
    eprintln!("  socket:    {}", config.socket.socket_path.display());
    eprintln!("  spool:     {}", config.spool.spool_dir.display());
    eprintln!(
        "  send one:  {gen} -f {} -c org.example/dev/test -p 'hello from dev'",
        cfg_path.display()
    );
    let ctl = bin.as_ref().map_or_else(
        || "telemctl".into(),
        |b| b.join("telemctl").display().to_string(),
    );
    eprintln!(
        "  telemctl:  {ctl} -f {} status   (and probe list, journal, ...)",
        cfg_path.display()
    );
    eprintln!(
        "  probes:    {} (drop NAME.wasm here; loaded within a second)",
        config
            .probes
            .probes_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "  keys:      {} (a minisign .pub here is trusted)",
        config.probes.trusted_keys_dir.display()
    );
    eprintln!(
        "  records:   {} (every delivered record, native and probe)",
        config.delivery.server.as_str()
    );
    Ok(Config {
        source: Some(cfg_path),
        ..config
    })
}

/// Why dev mode could not be set up.
#[derive(Debug, Error)]
pub enum DevError {
    /// The dev directory could not be made or resolved.
    #[error("dev mode: cannot use the directory {}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The extra config given with `-f` is not valid.
    #[error("dev mode: the config given with -f")]
    Config(#[from] telem_core::config::ConfigError),
    /// A file of the layout could not be written.
    #[error("dev mode: cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The signals telemd answers, taken at start (a SIGHUP's default action
/// would end the process).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Waits for SIGTERM or SIGINT; each SIGHUP meanwhile starts a config
/// reload (one at a time; its outcome is logged by the reloader), which a
/// stop does not wait for.
async fn wait_for_signal(signals: &mut Signals, reloader: &Arc<crate::reload::Reloader>) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = signals.hup.recv() => {
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    let _ = reloader.reload().await;
                });
            }
        }
    }
}

/// The watchdog's test hook: `TELEMD_TEST_WEDGE_PROBES_AFTER_MS=N` blocks
/// the probes' runtime thread for good N ms after start, as a probe loop
/// stuck in a call that never returns would (tests/systemd_watchdog.rs).
/// Whoever sets the daemon's environment could stop it anyway.
fn wedge_for_tests(probes: &tokio::runtime::Handle) {
    let Some(after) = std::env::var("TELEMD_TEST_WEDGE_PROBES_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    warn!("test hook: the probes' runtime will be wedged in {after} ms");
    probes.spawn(async move {
        tokio::time::sleep(Duration::from_millis(after)).await;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
}
