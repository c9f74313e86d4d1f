//! The control socket (`control_socket`, mode 0660): how `telemctl` and
//! the crash handler talk to a running daemon.
//!
//! Protocol: one JSON object per line in each direction (a request line
//! holds at most 64 KiB); the client sends a request, reads one response
//! line, and may send another. The ops are those of [`Request`].
//!
//! | request | response |
//! |---------|----------|
//! | `{"op":"list"}` | `{"ok":true,"probes":[ProbeInfo...],"compilations":N}` |
//! | `{"op":"run","probe":"NAME","args":["..."]}` | `{"ok":true}` |
//! | `{"op":"reload"}` | `{"ok":true,"probes":N}` |
//! | `{"op":"enable","probe":"NAME"}`, `{"op":"disable","probe":"NAME"}` | `{"ok":true}` |
//! | `{"op":"status"}` | `{"ok":true,"opted_in":..,"spool":{records,bytes,oldest},"delivery":{..},"ingest":{..},"probes":{loaded,quarantined,disabled,loading}}` |
//! | `{"op":"flush"}` | `{"ok":true}`: delivery tries at once, backoff forgotten |
//! | `{"op":"crash","id":"ENTRY","wait":false}` | `{"ok":true}`, or with `"wait":true` once the crash was handled: `{"ok":true,"records":[...]}` |
//!
//! Any failure is `{"ok":false,"error":"what went wrong"}`.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::sandbox::supervisor::{ProbeManager, FIRST_SCAN_WAIT};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// A control request.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// List loaded probes.
    List,
    /// Run a probe now.
    Run {
        /// Its name.
        probe: String,
        /// Arguments handed to `handle(manual(args))`.
        #[serde(default)]
        args: Vec<String>,
    },
    /// Reload the probe directories.
    Reload,
    /// Let a disabled probe load again.
    Enable {
        /// Its name.
        probe: String,
    },
    /// Stop a probe and keep it off across restarts.
    Disable {
        /// Its name.
        probe: String,
    },
    /// Opt-in, spool, delivery, ingest and probe summary.
    Status,
    /// Try delivery now.
    Flush,
    /// The crash handler left a crash in the inbox.
    Crash {
        /// The inbox entry.
        id: String,
        /// Answer only once the crash was handled, with its records.
        #[serde(default)]
        wait: bool,
    },
}

/// What the control socket can reach inside the daemon.
pub struct ControlContext {
    /// Loaded probes.
    pub probes: Arc<ProbeManager>,
    /// Ingest counters and the spool.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// The delivery worker's status.
    pub delivery: Arc<std::sync::Mutex<crate::delivery::DeliveryStatus>>,
    /// Wakes the delivery worker.
    pub flush: Arc<tokio::sync::Notify>,
    /// The opt-in file.
    pub opt_in_file: std::path::PathBuf,
    /// Crashes waiting for the probes.
    pub crashes: crate::crash::CrashQueue,
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, ctx: &ControlContext) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 * 16)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => respond(req, ctx).await,
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = resp.to_string();
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

async fn respond(req: Request, ctx: &ControlContext) -> Value {
    let probes = &ctx.probes;
    let done = |r: Result<(), crate::sandbox::supervisor::ProbeError>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    match req {
        Request::Enable { probe } => done(probes.enable(&probe).await),
        Request::Disable { probe } => {
            probes.first_scan_done(FIRST_SCAN_WAIT).await;
            done(probes.disable(&probe).await)
        }
        Request::Flush => {
            ctx.flush.notify_one();
            json!({"ok": true})
        }
        Request::Crash { id, wait } => match ctx.crashes.announce(&id, wait) {
            Err(e) => json!({"ok": false, "error": e}),
            Ok(None) => json!({"ok": true}),
            Ok(Some(rx)) => match rx.await {
                Ok(records) => json!({"ok": true, "records": records}),
                Err(_) => json!({"ok": false, "error": "the crash worker stopped"}),
            },
        },
        Request::Status => {
            let spool = ctx.ingest.spool();
            let entries = spool.entries().unwrap_or_default();
            let oldest = entries
                .first()
                .and_then(|e| e.mtime.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let list = probes.list();
            let quarantined = list
                .iter()
                .filter(|p| {
                    matches!(
                        p.state,
                        crate::sandbox::supervisor::ProbeState::Quarantined(_)
                    )
                })
                .count();
            let delivery = ctx.delivery.lock().expect("status lock").clone();
            json!({
                "ok": true,
                "opted_in": ctx.opt_in_file.exists(),
                "spool": {"records": entries.len(), "bytes": entries.iter().map(|e| e.size).sum::<u64>(), "oldest": oldest},
                "delivery": delivery,
                "ingest": ctx.ingest.stats.snapshot(),
                "probes": {"loaded": list.len(), "quarantined": quarantined, "disabled": probes.disabled(), "loading": !probes.first_scan_done(std::time::Duration::ZERO).await},
            })
        }
        Request::List => {
            probes.first_scan_done(FIRST_SCAN_WAIT).await;
            json!({"ok": true, "probes": probes.list(), "compilations": probes.compilations()})
        }
        Request::Run { probe, args } => match probes.run_now(&probe, args).await {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Request::Reload => match probes.reload().await {
            Ok(()) => json!({"ok": true, "probes": probes.list().len()}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
    }
}

/// Why a control request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the control socket.
    #[error("telemd is not running (nothing answers at {0})")]
    NotRunning(String),
    /// The socket exists but this user may not use it.
    #[error("permission denied on {0}: the control socket is for root and the telemetry group")]
    Denied(String),
    /// The exchange broke off.
    #[error("control socket {path}: {message}")]
    Io {
        /// The socket.
        path: String,
        /// What happened.
        message: String,
    },
}

/// Sends one request to the daemon's control socket and returns its answer
/// (blocking; for telemctl and the crash handler).
pub fn request(path: &Path, req: &Value) -> Result<Value, ClientError> {
    request_with_timeout(path, req, None)
}

/// [`request`], giving up after `timeout` without an answer (the crash
/// handler must not hang on a stuck daemon).
pub fn request_with_timeout(
    path: &Path,
    req: &Value,
    timeout: Option<std::time::Duration>,
) -> Result<Value, ClientError> {
    use std::io::{BufRead, Write};
    let p = path.display().to_string();
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => ClientError::Denied(p.clone()),
        _ => ClientError::NotRunning(p.clone()),
    })?;
    let _ = s.set_read_timeout(timeout);
    let _ = s.set_write_timeout(timeout);
    let io_err = |e: io::Error| ClientError::Io {
        path: p.clone(),
        message: e.to_string(),
    };
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io_err)?;
    let mut out = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut out)
        .map_err(io_err)?;
    serde_json::from_str(&out).map_err(|e| ClientError::Io {
        path: p.clone(),
        message: format!("bad answer: {e}"),
    })
}
