//! The `metrics_listen` endpoint: `GET /metrics` answers the self-metrics
//! of [`crate::control::metrics_text`] (OpenMetrics when the scraper's
//! `Accept` asks for it, as Prometheus does, else the Prometheus text
//! format), over HTTP/1.1 (hyper) on a
//! loopback address or a unix socket. Whoever reaches it is a local
//! client, but not necessarily a friendly one: a few scrapers at a time,
//! each with a bounded time to send its request and to finish.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::control::ControlContext;

/// Scrapes served at once; more connections are closed at once.
pub const MAX_SCRAPERS: usize = 4;
/// Time a client has to send its request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the endpoint listens.
#[derive(Debug)]
pub enum MetricsListener {
    /// A loopback address.
    Tcp(TcpListener),
    /// A unix socket (mode 0660).
    Unix(UnixListener),
}

impl MetricsListener {
    /// Binds `listen` (already checked to be loopback or an absolute path
    /// by the config); a stale socket file at the path is replaced.
    pub async fn bind(listen: &str) -> std::io::Result<MetricsListener> {
        if listen.starts_with('/') {
            let path = Path::new(listen);
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.file_type().is_socket() {
                    // A stale socket is replaced; a live one (another
                    // daemon's, or this one's control socket) never is.
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "something listens on this socket already",
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
            }
            let l = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(MetricsListener::Unix(l))
        } else {
            Ok(MetricsListener::Tcp(TcpListener::bind(listen).await?))
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            MetricsListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| format!("http://{a}/metrics")),
            MetricsListener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".into()),
        }
    }
}

/// Serves scrapes until `shutdown`, then removes its socket file.
pub async fn serve(
    listener: MetricsListener,
    ctx: Arc<ControlContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    info!("metrics served at {}", listener.describe());
    let socket_file = match &listener {
        MetricsListener::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned)),
        MetricsListener::Tcp(_) => None,
    };
    serve_until(listener, ctx, &mut shutdown).await;
    if let Some(p) = socket_file {
        let _ = std::fs::remove_file(p);
    }
}

async fn serve_until(
    listener: MetricsListener,
    ctx: Arc<ControlContext>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A scraper waits for a slot as long as a request head may take;
        // the accept loop waits with it (the backlog holds the rest).
        let permit = tokio::select! {
            p = tokio::time::timeout(HEADER_TIMEOUT, permits.clone().acquire_owned()) => p,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(Ok(permit)) = permit else {
            debug!("metrics: {MAX_SCRAPERS} scrapes in flight for {HEADER_TIMEOUT:?}; connection closed");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match stream {
                Stream::Tcp(s) => connection(s, ctx).await,
                Stream::Unix(s) => connection(s, ctx).await,
            }
            drop(permit);
        });
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &MetricsListener) -> std::io::Result<Stream> {
    Ok(match l {
        MetricsListener::Tcp(l) => Stream::Tcp(l.accept().await?.0),
        MetricsListener::Unix(l) => Stream::Unix(l.accept().await?.0),
    })
}

async fn connection<S>(stream: S, ctx: Arc<ControlContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(answer(&req, &ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics connection ended: {e}"),
        Err(_) => debug!("metrics connection open past {CONNECTION_TIMEOUT:?}; closed"),
    }
}

async fn answer(req: &Request<Incoming>, ctx: &ControlContext) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "telemd serves its metrics at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let format = crate::metrics::Format::for_accept(
        req.headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    reply(
        StatusCode::OK,
        format.content_type(),
        crate::control::metrics_text(ctx, format).await,
    )
}
