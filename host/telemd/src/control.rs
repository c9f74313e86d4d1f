//! The daemon's end of the control socket (`control_socket`, mode 0660):
//! how `telemctl` and the crash handler reach a running daemon. The
//! protocol, both directions typed, is `telem_core::control`; this module
//! binds the socket, holds each connection to the handshake, and answers
//! each [`Request`] from the daemon's parts.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use telem_core::control::{
    DeliveryStatus, Hello, ProbeList, ProbeState, ProbesSummary, Request, Response, SpoolSummary,
    Status, MAX_REQUEST, PROTOCOL_VERSION,
};
use telem_core::error_text::Chain;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::supervisor::{ProbeManager, FIRST_SCAN_WAIT};

/// What the control socket can reach inside the daemon.
pub struct ControlContext {
    /// Loaded probes.
    pub probes: Arc<ProbeManager>,
    /// Ingest counters and the spool.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// The delivery worker's status.
    pub delivery: Arc<std::sync::Mutex<DeliveryStatus>>,
    /// Wakes the delivery worker.
    pub flush: Arc<tokio::sync::Notify>,
    /// The opt-in file.
    pub opt_in_file: std::path::PathBuf,
    /// Crashes waiting for the probes.
    pub crashes: crate::crash_queue::CrashQueue,
    /// The crash inbox (crashes waiting are counted in the metrics).
    pub crash_inbox: std::path::PathBuf,
    /// The delivery journal file (its size is in the metrics).
    pub journal_file: std::path::PathBuf,
    /// Config reloads.
    pub reloader: Arc<crate::reload::Reloader>,
}

/// Binds the control socket with mode 0660 (replacing a stale socket).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Serves control clients until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<ControlContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match conn {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &ctx).await {
                        debug!("control connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, ctx: &ControlContext) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 * 16)).lines();
    let mut greeted = false;
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Hello { version, client }) => {
                debug!(
                    "control client {} (protocol {version})",
                    telem_core::untrusted::escape(&client, 128)
                );
                greeted = version == PROTOCOL_VERSION;
                Response::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    server: format!("telemd {}", env!("CARGO_PKG_VERSION")),
                })
            }
            Ok(_) if !greeted => Response::Error {
                message: format!(
                    "no handshake: this telemd speaks control protocol {PROTOCOL_VERSION}; a client must say hello first (use the telemctl that came with this telemd)"
                ),
            },
            Ok(req) => respond(req, ctx).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_string(&resp).expect("replies serialize");
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

fn outcome<E: std::error::Error + 'static>(r: Result<(), E>) -> Response {
    match r {
        Ok(()) => Response::Done,
        Err(e) => Response::Error {
            message: Chain(&e).to_string(),
        },
    }
}

async fn respond(req: Request, ctx: &ControlContext) -> Response {
    let probes = &ctx.probes;
    match req {
        Request::Hello { .. } => unreachable!("answered by handle"),
        Request::Enable { probe } => outcome(probes.enable(&probe).await),
        Request::Disable { probe } => {
            probes.first_scan_done(FIRST_SCAN_WAIT).await;
            outcome(probes.disable(&probe).await)
        }
        Request::Reset { probe } => outcome(probes.reset(&probe).await),
        Request::Flush => {
            ctx.flush.notify_one();
            Response::Done
        }
        Request::Crash { id, wait } => match ctx.crashes.announce(&id, wait) {
            Err(e) => Response::Error {
                message: Chain(&e).to_string(),
            },
            Ok(None) => Response::Done,
            Ok(Some(rx)) => match rx.await {
                Ok(records) => Response::CrashHandled { records },
                Err(_) => Response::Error {
                    message: "the crash worker stopped".into(),
                },
            },
        },
        Request::Status => Response::Status(Box::new(status(ctx).await)),
        Request::ReloadConfig => match ctx.reloader.reload().await {
            Ok(r) => Response::ConfigReloaded {
                changed: [("delivery", r.delivery), ("probes", r.probes)]
                    .into_iter()
                    .filter(|(_, c)| *c)
                    .map(|(n, _)| n.to_owned())
                    .collect(),
                restart_needed: r.restart_needed.iter().map(|s| (*s).to_owned()).collect(),
            },
            Err(e) => Response::Error {
                message: Chain(&e).to_string(),
            },
        },
        Request::Metrics => Response::Metrics {
            text: metrics_text(ctx, crate::metrics::Format::PrometheusText).await,
        },
        Request::List => {
            probes.first_scan_done(FIRST_SCAN_WAIT).await;
            Response::Probes(ProbeList {
                probes: probes.list(),
                compilations: probes.compilations(),
                refused: probes.refused(),
                disabled: probes.disabled(),
                disabled_in_config: probes.disabled_in_config(),
            })
        }
        Request::Run {
            probe,
            args,
            report,
        } => match probes.run_now(&probe, args, report).await {
            Ok(ran) if report => Response::Ran(ran),
            r => outcome(r.map(drop)),
        },
        Request::Reload => match probes.reload().await {
            Ok(()) => Response::Reloaded {
                probes: probes.list().len(),
            },
            Err(e) => Response::Error {
                message: Chain(&e).to_string(),
            },
        },
    }
}

async fn status(ctx: &ControlContext) -> Status {
    // Listing a large spool is disk work: off the runtime's workers.
    let spool = ctx.ingest.spool().clone();
    let entries = tokio::task::spawn_blocking(move || spool.entries().unwrap_or_default())
        .await
        .unwrap_or_default();
    let list = ctx.probes.list();
    let loading = !ctx.probes.first_scan_done(Duration::ZERO).await;
    let delivery = ctx.delivery.lock().expect("status lock").clone();
    Status {
        opted_in: ctx.opt_in_file.exists(),
        spool: SpoolSummary {
            records: entries.len(),
            bytes: entries.iter().map(|e| e.size).sum(),
            oldest: entries
                .first()
                .and_then(|e| e.mtime.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        },
        delivery,
        ingest: ctx.ingest.stats.snapshot(),
        probes: ProbesSummary {
            loaded: list.len(),
            quarantined: list
                .iter()
                .filter(|p| matches!(p.state, ProbeState::Quarantined(_)))
                .count(),
            disabled: ctx.probes.disabled(),
            loading,
        },
    }
}

/// The self-metrics now, in `format` (`telemctl metrics` prints the
/// Prometheus text format; the `metrics_listen` endpoint answers what the
/// scraper asks for).
pub async fn metrics_text(ctx: &ControlContext, format: crate::metrics::Format) -> String {
    let status = status(ctx).await;
    let c = ctx.crashes.counts();
    let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (journal, inbox) = (ctx.journal_file.clone(), ctx.crash_inbox.clone());
    let (journal_bytes, waiting) = tokio::task::spawn_blocking(move || {
        (
            std::fs::metadata(&journal).map_or(0, |m| m.len()),
            telem_core::crash_inbox::pending(&inbox).len() as u64,
        )
    })
    .await
    .unwrap_or_default();
    crate::metrics::render(
        crate::metrics::Snapshot {
            native: ctx.ingest.stats.native.snapshot(),
            probes_ingest: ctx.ingest.stats.probes.snapshot(),
            probes: ctx.probes.list(),
            journal_bytes,
            crashes: crate::metrics::CrashTally {
                reported: r(&c.reported),
                held_back: r(&c.held_back),
                failed: r(&c.failed),
                waiting,
            },
            now: std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            status,
        },
        format,
    )
}
