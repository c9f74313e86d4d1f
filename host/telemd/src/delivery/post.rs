//! Posting one record to the collector, in either legacy body format, or
//! appending it to a local JSON-lines file (`file://` servers: dev mode and
//! air-gapped machines).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use thiserror::Error;
use tracing::debug;

use super::backoff::parse_retry_after;
use super::otlp::{self, Outgoing, PartialSuccess};
use telem_core::config::{DeliveryConfig, PostFormat};
use telem_core::error_text::Chain;
use telem_core::record::Record;

/// The legacy client's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The legacy client's whole-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a response body read at most. The outcome is decided by the
/// status and `Retry-After` alone; the body is read only so that a small
/// one leaves the connection reusable. Anything answering as the collector
/// (a proxy, a captive portal, an attacker) may send an endless body, which
/// must not grow the daemon's memory: past this the response is dropped
/// with its connection.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Time the body may take after the head has arrived, for the same reason:
/// a body trickling byte by byte must not hold delivery up to
/// [`REQUEST_TIMEOUT`] per record.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A collector URL, with the TID header to send.
    Http {
        /// `server`.
        url: String,
        /// Name of the `tidheader` line.
        tid_name: String,
        /// Its value.
        tid_value: String,
    },
    /// Append JSON lines to this file.
    File(PathBuf),
}

impl Target {
    /// The target a config names.
    pub fn from_config(c: &DeliveryConfig) -> Target {
        if let Some(path) = c.server.strip_prefix("file://") {
            return Target::File(PathBuf::from(path));
        }
        let (name, value) = c
            .tidheader
            .split_once(':')
            .unwrap_or(("X-Telemetry-TID", ""));
        Target::Http {
            url: c.server.to_string(),
            tid_name: name.trim().to_owned(),
            tid_value: value.trim().to_owned(),
        }
    }
}

/// How a post ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostOutcome {
    /// Confirmed (HTTP 200/201, or written to the file target).
    Delivered(u16),
    /// The collector will never take this record (4xx other than 408/429),
    /// or it can't be expressed as a request at all.
    Rejected(String),
    /// Try again later (network error, timeout, 408, 429, 5xx, other).
    Retry {
        /// What went wrong.
        reason: String,
        /// What the collector asked for.
        retry_after: Option<Duration>,
    },
    /// The collector refused the request for its size (HTTP 413 to an
    /// OTLP request): fewer records to a request may pass.
    TooLarge,
}

/// Why the poster could not be built.
#[derive(Debug, Error)]
pub enum PosterError {
    /// `cainfo` could not be read.
    #[error("cannot read cainfo {}", path.display())]
    CaInfoRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `cainfo` holds no usable PEM certificates.
    #[error("cainfo {} is not a PEM certificate bundle", path.display())]
    CaInfoParse {
        /// The file.
        path: PathBuf,
        /// What the TLS library said.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be initialised.
    #[error("cannot initialise the HTTP client")]
    Client(#[source] reqwest::Error),
    /// Only one of `tls_client_cert` and `tls_client_key` is set.
    #[error("tls_client_cert and tls_client_key go together: set both or neither")]
    ClientIdentityHalf,
    /// The client certificate or key could not be read.
    #[error("cannot read {}", path.display())]
    ClientIdentityRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The client certificate and key do not make an identity.
    #[error("tls_client_cert {} and tls_client_key {} are not a PEM certificate and its key", cert.display(), key.display())]
    ClientIdentityParse {
        /// `tls_client_cert`.
        cert: PathBuf,
        /// `tls_client_key`.
        key: PathBuf,
        /// What the TLS library said.
        #[source]
        source: reqwest::Error,
    },
    /// `proxy` is not a proxy URL (shown without its password).
    #[error("proxy {0:?} is not a proxy URL")]
    Proxy(String, #[source] reqwest::Error),
}

/// An HTTP client kept for the daemon's life, so connections are reused.
#[derive(Debug, Clone)]
pub struct Poster {
    client: reqwest::Client,
    format: PostFormat,
}

impl Poster {
    /// Builds the client: rustls with the system roots plus `cainfo`, TLS
    /// 1.2 at least, the client certificate when one is set (mutual TLS),
    /// the proxy of `proxy` or else of the environment (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `NO_PROXY`), the legacy timeouts, no redirects (a POST
    /// must not turn into a GET).
    pub fn new(c: &DeliveryConfig) -> Result<Poster, PosterError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("telemd/", env!("CARGO_PKG_VERSION")));
        match (&c.tls_client_cert, &c.tls_client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| PosterError::ClientIdentityRead {
                        path: path.clone(),
                        source,
                    })
                };
                warn_if_others_read(key);
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|source| {
                    PosterError::ClientIdentityParse {
                        cert: cert.clone(),
                        key: key.clone(),
                        source,
                    }
                })?;
                b = b.identity(identity);
            }
            _ => return Err(PosterError::ClientIdentityHalf),
        }
        if let Some(proxy) = &c.proxy {
            let p = reqwest::Proxy::all(proxy)
                .map_err(|e| PosterError::Proxy(without_password(proxy), e))?
                .no_proxy(reqwest::NoProxy::from_env());
            b = b.proxy(p);
        }
        if let Some(ca) = &c.cainfo {
            let pem = std::fs::read(ca).map_err(|source| PosterError::CaInfoRead {
                path: ca.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                PosterError::CaInfoParse {
                    path: ca.clone(),
                    source,
                }
            })?;
            for cert in certs {
                b = b.add_root_certificate(cert);
            }
        }
        let client = b.build().map_err(PosterError::Client)?;
        Ok(Poster {
            client,
            format: c.post_format,
        })
    }

    /// Sends one record to `target`. `now` is the delivery clock's time, from
    /// which a `Retry-After` given as an HTTP date is counted (the same
    /// clock then schedules the retry).
    pub async fn post(&self, target: &Target, record: &Record, now: SystemTime) -> PostOutcome {
        if self.format == PostFormat::Otlp {
            let one = Outgoing {
                record,
                spooled: now,
                id: record.headers.get(telem_core::record::Header::EventId),
            };
            return self.post_batch(target, &[one], now).await.0;
        }
        match target {
            Target::File(path) => append_json_line(path, record),
            Target::Http {
                url,
                tid_name,
                tid_value,
            } => self.post_http(url, tid_name, tid_value, record, now).await,
        }
    }

    /// Sends `records` to `target` in one OTLP request (or appends them to
    /// a file target); with the collector's partial success, when it
    /// reports one.
    pub async fn post_batch(
        &self,
        target: &Target,
        records: &[Outgoing<'_>],
        now: SystemTime,
    ) -> (PostOutcome, Option<PartialSuccess>) {
        match target {
            Target::File(path) => {
                for out in records {
                    let o = append_json_line(path, out.record);
                    if !matches!(o, PostOutcome::Delivered(_)) {
                        return (o, None);
                    }
                }
                (PostOutcome::Delivered(200), None)
            }
            Target::Http {
                url,
                tid_name,
                tid_value,
            } => self.post_otlp(url, tid_name, tid_value, records, now).await,
        }
    }

    async fn post_otlp(
        &self,
        url: &str,
        tid_name: &str,
        tid_value: &str,
        records: &[Outgoing<'_>],
        now: SystemTime,
    ) -> (PostOutcome, Option<PartialSuccess>) {
        let mut headers = HeaderMap::new();
        // The `tidheader` line goes with OTLP too: a collector behind an
        // authenticating proxy can be given its `Authorization` this way.
        match header(tid_name, tid_value) {
            Ok((n, v)) => {
                headers.append(n, v);
            }
            Err(e) => return (PostOutcome::Rejected(e), None),
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let body = otlp::gzip_body(&otlp::request(records));
        let timeout = otlp::request_timeout(REQUEST_TIMEOUT, body.len());
        let resp = match self
            .client
            .post(otlp::logs_url(url))
            .headers(headers)
            .timeout(timeout)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (send_failed(&e), None),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(&resp, now);
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match read_body(resp).await {
            Ok(b) => b,
            Err(cut) => {
                debug!(
                    status,
                    "collector response body not read to its end ({cut}); connection closed"
                );
                Vec::new()
            }
        };
        let outcome = match status {
            // A 2xx from something that is not an OTLP receiver (a captive
            // portal's page) confirms nothing.
            200..=299 if !body.is_empty() && !otlp::is_otlp_answer(content_type.as_deref()) => {
                PostOutcome::Retry {
                    reason: format!(
                        "HTTP {status} with a {} body: not an OTLP receiver's answer",
                        telem_core::untrusted::escape(
                            content_type.as_deref().unwrap_or("untyped"),
                            80
                        )
                    ),
                    retry_after,
                }
            }
            200..=299 => PostOutcome::Delivered(status),
            s if otlp::retryable(s) => PostOutcome::Retry {
                reason: format!("HTTP {s}"),
                retry_after,
            },
            413 => PostOutcome::TooLarge,
            s if otlp::is_setup_fault(s) => PostOutcome::Retry {
                reason: format!(
                    "HTTP {s}: the server URL, the credentials or a proxy in between refuse every request; records kept"
                ),
                retry_after,
            },
            s => PostOutcome::Rejected(format!("HTTP {s}")),
        };
        let partial = match outcome {
            PostOutcome::Delivered(_) => otlp::partial_success(&body, records.len()),
            _ => None,
        };
        (outcome, partial)
    }

    async fn post_http(
        &self,
        url: &str,
        tid_name: &str,
        tid_value: &str,
        record: &Record,
        now: SystemTime,
    ) -> PostOutcome {
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &str| -> Result<(), String> {
            let (n, v) = header(name, value)?;
            headers.append(n, v);
            Ok(())
        };
        let built = (|| {
            add(tid_name, tid_value)?;
            match self.format {
                PostFormat::Headers => {
                    for (n, v) in record.headers.iter() {
                        add(n, v)?;
                    }
                    add(CONTENT_TYPE.as_str(), "application/text")?;
                    Ok(record.payload.clone().into_bytes())
                }
                PostFormat::Json | PostFormat::Otlp => {
                    add(CONTENT_TYPE.as_str(), "application/json")?;
                    Ok(json_body(record).into_bytes())
                }
            }
        })();
        let body = match built {
            Ok(b) => b,
            Err(e) => return PostOutcome::Rejected(e),
        };
        let resp = match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return send_failed(&e),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(&resp, now);
        // The status line has arrived, so the collector has decided; how
        // the body ends does not change the outcome (a 200 whose body is
        // cut is still a confirmation).
        if let Err(cut) = discard_body(resp).await {
            debug!(
                status,
                "collector response body not read to its end ({cut}); connection closed"
            );
        }
        classify(status, retry_after)
    }
}

/// `url` with any password replaced by `***` (it goes into logs).
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Not a URL at all: whatever stands before an `@` may be secret.
        Err(_) => match url.rsplit_once('@') {
            Some((_, rest)) => {
                let scheme = url.split_once("://").map_or("", |(s, _)| s);
                format!("{scheme}://***@{rest}")
            }
            None => url.to_owned(),
        },
    }
}

/// Says so when the client key can be read by users other than its owner
/// and group: the key is the machine's identity at the collector.
fn warn_if_others_read(key: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(key) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                "tls_client_key {} can be read by every user (mode {:o}); make it 0640, root:telemetry",
                key.display(),
                m.permissions().mode() & 0o7777
            );
        }
    }
}

/// A header line, or why HTTP cannot carry it.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("bad header name {name:?}"))?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| format!("header {name} has a value HTTP cannot carry"))?;
    Ok((n, v))
}

/// A request that got no answer: always worth another try.
fn send_failed(e: &reqwest::Error) -> PostOutcome {
    let reason = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {}", Chain(e))
    } else {
        Chain(e).to_string()
    };
    PostOutcome::Retry {
        reason,
        retry_after: None,
    }
}

/// The response's `Retry-After`, counted from `now`.
fn retry_after_of(resp: &reqwest::Response, now: SystemTime) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Why a response body was not read to its end.
#[derive(Debug, Error)]
enum BodyCut {
    /// More than [`MAX_RESPONSE_BODY`] bytes.
    #[error("more than {MAX_RESPONSE_BODY} bytes")]
    TooLarge,
    /// Not complete within [`BODY_READ_TIMEOUT`].
    #[error("not complete within {BODY_READ_TIMEOUT:?}")]
    TooSlow,
    /// The connection failed while reading it.
    #[error("{0}")]
    Failed(String),
}

/// Reads and throws away at most [`MAX_RESPONSE_BODY`] bytes of `resp`'s
/// body, chunk by chunk (never more than one chunk held), within
/// [`BODY_READ_TIMEOUT`]; dropping an unfinished response closes its
/// connection instead of returning it to the pool. `Ok` when the whole
/// body was read (the connection can be reused).
async fn discard_body(mut resp: reqwest::Response) -> Result<(), BodyCut> {
    let read = async {
        let mut len = 0usize;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    len = len.saturating_add(chunk.len());
                    if len > MAX_RESPONSE_BODY {
                        return Err(BodyCut::TooLarge);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(BodyCut::Failed(Chain(&e).to_string())),
            }
        }
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyCut::TooSlow))
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of `resp`'s body within
/// [`BODY_READ_TIMEOUT`], as [`discard_body`] does, keeping them (an OTLP
/// answer may carry a partial success).
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyCut> {
    let read = async {
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                        return Err(BodyCut::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(BodyCut::Failed(Chain(&e).to_string())),
            }
        }
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyCut::TooSlow))
}

/// The failure policy by HTTP status.
pub fn classify(status: u16, retry_after: Option<Duration>) -> PostOutcome {
    match status {
        200 | 201 => PostOutcome::Delivered(status),
        408 | 429 => PostOutcome::Retry {
            reason: format!("HTTP {status}"),
            retry_after,
        },
        // A proxy in between asks for credentials: nothing to do with
        // the record.
        407 => PostOutcome::Retry {
            reason:
                "HTTP 407: the proxy asks for credentials (proxy = http://user:password@host:port)"
                    .into(),
            retry_after,
        },
        400..=499 => PostOutcome::Rejected(format!("HTTP {status}")),
        _ => PostOutcome::Retry {
            reason: format!("HTTP {status}"),
            retry_after,
        },
    }
}

/// The `json` post body: a flat object of the 15 header names and
/// `payload`, string values written whole (the legacy client cut them at
/// the first space, a bug).
pub fn json_body(r: &Record) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("string serializes");
    let mut out = String::with_capacity(640 + r.payload.len());
    out.push('{');
    for (name, value) in r.headers.iter() {
        out.push_str(&q(name));
        out.push(':');
        out.push_str(&q(value));
        out.push(',');
    }
    out.push_str("\"payload\":");
    out.push_str(&q(&r.payload));
    out.push('}');
    out
}

fn append_json_line(path: &PathBuf, record: &Record) -> PostOutcome {
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut line = json_body(record);
        line.push('\n');
        f.write_all(line.as_bytes())?;
        f.sync_data()
    })();
    match result {
        Ok(()) => PostOutcome::Delivered(200),
        Err(e) => PostOutcome::Retry {
            reason: format!("cannot append to {}: {e}", path.display()),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telem_core::config::values::CollectorUrl;
    use telem_core::record::sample;

    #[test]
    fn a_proxy_password_never_reaches_a_message() {
        assert_eq!(
            without_password("http://u:pw@proxy:3128"),
            "http://u:***@proxy:3128/"
        );
        assert!(!without_password("http://u:pw@[bad").contains("pw"));
        assert_eq!(without_password("http://proxy:3128"), "http://proxy:3128/");
    }

    #[test]
    fn status_policy() {
        assert_eq!(classify(200, None), PostOutcome::Delivered(200));
        assert_eq!(classify(201, None), PostOutcome::Delivered(201));
        assert_eq!(
            classify(400, None),
            PostOutcome::Rejected("HTTP 400".into())
        );
        assert_eq!(
            classify(404, None),
            PostOutcome::Rejected("HTTP 404".into())
        );
        for s in [407, 408, 429, 500, 502, 503, 204, 301] {
            assert!(
                matches!(classify(s, None), PostOutcome::Retry { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn json_body_matches_the_legacy_layout_with_whole_values() {
        let body = json_body(&sample());
        assert!(body.starts_with(
            "{\"record_format_version\":\"4\",\"classification\":\"org.example/test/vec\","
        ));
        assert!(body.contains("\"build\":\"\\\"12\\\"\""));
        assert!(body.contains("\"cpu_model\":\"AMD EPYC\""));
        assert!(body.ends_with("\"event_id\":\"5de9de8d5f3c6a7d445d75ba01cc3322\",\"payload\":\"hello world payload\"}"));
    }

    #[test]
    fn targets_from_config() {
        let c = DeliveryConfig {
            server: CollectorUrl::new("file:///tmp/x.jsonl"),
            ..DeliveryConfig::default()
        };
        assert_eq!(Target::from_config(&c), Target::File("/tmp/x.jsonl".into()));
        let t = Target::from_config(&DeliveryConfig::default());
        assert_eq!(
            t,
            Target::Http {
                url: "http://localhost/v2/collector".into(),
                tid_name: "X-Telemetry-TID".into(),
                tid_value: "6907c830-eed9-4ce9-81ae-76daf8d88f0f".into()
            }
        );
    }
}
