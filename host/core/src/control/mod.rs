//! The control protocol: how `telemctl` and the crash handler talk to a
//! running `telemd` over its control socket (`control_socket`, mode 0660).
//!
//! One JSON object per line in each direction; a request line holds at most
//! [`MAX_REQUEST`] bytes. A connection starts with [`Request::Hello`], which
//! the daemon answers with its own [`PROTOCOL_VERSION`]: a client and a
//! daemon that do not speak the same version say so in one line instead of
//! misreading each other. After that the client sends a request, reads one
//! [`Response`], and may send another.
//!
//! Both directions are typed here, once: the daemon builds replies from
//! these types and every client reads them back into the same types
//! ([`client::Client`]). A field added to a reply is added to its struct.

pub mod client;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::grants::{Grant, Request as ProbeRequest};

/// The version of this protocol. It changes when a request or a reply
/// changes incompatibly; a new request kind alone does not change it (an
/// older daemon answers an unknown request with an error).
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon accepts.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The first request of every connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// Program and version, for the daemon's log.
        client: String,
    },
    /// The probes and their grants.
    List,
    /// Run a probe now (`handle(manual(args))`).
    Run {
        /// Its name.
        probe: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Answer with the records the run stored ([`Response::Ran`]); a
        /// daemon that predates it answers [`Response::Done`].
        #[serde(default)]
        report: bool,
    },
    /// Read the probe directories again.
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
    /// Clear a probe's private state (its source cursors stay).
    Reset {
        /// Its name.
        probe: String,
    },
    /// Opt-in, spool, delivery, ingest and probe summary.
    Status,
    /// Try delivery at once, forgetting any backoff.
    Flush,
    /// The self-metrics, as OpenMetrics text (`telemctl metrics`).
    Metrics,
    /// Read the config again and apply it (`telemctl reload`, systemd's
    /// `ExecReload=`); refused whole if it does not load.
    ReloadConfig,
    /// The crash handler left a crash in the inbox.
    Crash {
        /// The inbox entry.
        id: String,
        /// Answer only once the crash was handled, with its records.
        #[serde(default)]
        wait: bool,
    },
}

/// What the daemon answers: one variant per kind of reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// To [`Request::Hello`].
    Hello(Hello),
    /// To [`Request::List`].
    Probes(ProbeList),
    /// To [`Request::Status`].
    Status(Box<Status>),
    /// To [`Request::Metrics`]: the OpenMetrics text, as `metrics_listen`
    /// serves it.
    Metrics {
        /// The exposition.
        text: String,
    },
    /// To [`Request::ReloadConfig`]: what changed.
    ConfigReloaded {
        /// Parts applied in place (`delivery`, `probes`).
        changed: Vec<String>,
        /// Parts that changed but wait for a restart.
        restart_needed: Vec<String>,
    },
    /// To [`Request::Reload`]: probes loaded afterwards.
    Reloaded {
        /// How many.
        probes: usize,
    },
    /// To [`Request::Crash`] with `wait`: what the probes recorded.
    CrashHandled {
        /// The records, as sent.
        records: Vec<Captured>,
    },
    /// To [`Request::Run`] with `report`: what the run stored.
    Ran(RunReport),
    /// Done, nothing to report (run, enable, disable, flush, crash).
    Done,
    /// The request was refused or failed.
    Error {
        /// Why, in words for the admin.
        message: String,
    },
}

/// What a manual run stored (`telemctl probe run`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunReport {
    /// The first records it stored (at most 100: the rest are stored,
    /// not copied here).
    pub records: Vec<Captured>,
    /// How many it stored.
    pub stored: u64,
    /// Records the host refused while it ran (the reasons are in the
    /// daemon's log).
    pub refused: u64,
}

/// The daemon's side of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The daemon's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Program and version (`telemd 0.1.0`).
    pub server: String,
}

/// The probes the daemon knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeList {
    /// One entry per loaded probe.
    pub probes: Vec<ProbeInfo>,
    /// Components compiled since start (cache misses).
    pub compilations: u64,
    /// Probe files found and not loaded, with why (their ownership,
    /// digest or signature refused, or their load failed).
    #[serde(default)]
    pub refused: Vec<RefusedProbe>,
    /// Probes the admin disabled (`telemctl probe disable`).
    #[serde(default)]
    pub disabled: Vec<String>,
    /// Probes the config disables (`[probes.NAME] enabled = false`).
    #[serde(default)]
    pub disabled_in_config: Vec<String>,
}

/// A probe file that is not running, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedProbe {
    /// The file.
    pub file: PathBuf,
    /// Why, in words for the admin.
    pub reason: String,
}

/// One probe: what it is, what it asked for, what it got, how it fares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// Manifest description.
    pub description: String,
    /// Component file.
    pub file: PathBuf,
    /// What runs it, in words (`on start`, `every 3600 s`, `crashes`);
    /// its event sources are in `sources`.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Running or quarantined.
    pub state: ProbeState,
    /// What its manifest asked for.
    pub requested: ProbeRequest,
    /// What it runs with.
    pub granted: Grant,
    /// Counters and last error.
    pub stats: ProbeStats,
    /// Bytes of private state it keeps (keys, values and overhead; the
    /// quota is `granted.state_quota_bytes`).
    #[serde(default)]
    pub state_bytes: u64,
    /// Keys of private state it keeps.
    #[serde(default)]
    pub state_keys: usize,
    /// Its event sources and where it is in each.
    #[serde(default)]
    pub sources: Vec<SourceInfo>,
    /// The file's SHA-256, hex.
    #[serde(default)]
    pub sha256: String,
    /// The digest `[probes.NAME] sha256` pins it to, if any.
    #[serde(default)]
    pub pinned_sha256: Option<String>,
    /// The trusted key whose signature it carries (`NAME (KEY ID)`), if any.
    #[serde(default)]
    pub signed_by: Option<String>,
}

/// One event source of a probe and its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `kernel-log`, or `files DIR PATTERN`.
    pub source: String,
    /// How far the probe got, in words.
    pub position: String,
    /// What the reader of the source warned of lately (journalctl's "...
    /// is truncated, ignoring file."), escaped: data the source skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Items the source's reader took and queued for the probe, not yet
    /// handled (kernel log records, journal entries): how far the probe
    /// lags, up to the queue's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u64>,
}

/// Where a probe is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum ProbeState {
    /// Loaded, triggers armed.
    Running,
    /// Failed too often; runs again only after a reload.
    Quarantined(String),
}

/// A probe's counters since it was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStats {
    /// Calls of `handle`.
    pub runs: u64,
    /// Traps (memory cap included).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Records stored.
    pub records_sent: u64,
    /// Records refused (classification, hourly cap, invalid, host refusal).
    pub records_refused: u64,
    /// Unix time of the last run.
    pub last_run: Option<u64>,
    /// Unix time its interval trigger fires next, if it has one.
    #[serde(default)]
    pub next_run: Option<u64>,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// Failures in a row (reset by a success).
    pub failures_in_a_row: u32,
    /// Source items the probe never saw (kernel log records lost in the
    /// ring or malformed).
    #[serde(default)]
    pub source_skipped: u64,
}

/// `telemctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The opt-in file exists.
    pub opted_in: bool,
    /// What waits in the spool.
    pub spool: SpoolSummary,
    /// How delivery fares.
    pub delivery: DeliveryStatus,
    /// What happened to incoming records.
    pub ingest: IngestCounts,
    /// The probes in numbers.
    pub probes: ProbesSummary,
}

/// What waits in the spool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolSummary {
    /// Records.
    pub records: usize,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Unix time the oldest was spooled.
    pub oldest: Option<u64>,
}

/// How delivery fares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// Unix time of the last post attempt.
    pub last_attempt: Option<u64>,
    /// Its result, in words.
    pub last_result: Option<String>,
    /// Unix time before which no post is tried (backoff or rate limit).
    pub next_try: Option<u64>,
    /// Failed posts in a row.
    pub failures_in_a_row: u32,
    /// Records the collector took, since start.
    pub delivered: u64,
    /// Records the collector refused for good, or unreadable in the spool
    /// (moved aside).
    pub rejected: u64,
    /// Records older than `record_expiry`, removed unsent.
    pub expired: u64,
    /// Records dropped by the rate limit (`rate_limit_strategy = drop`).
    pub dropped: u64,
    /// Records kept in a local file instead of posted (`record_server_delivery_enabled = false`).
    pub kept_local: u64,
    /// Posts that failed and were kept for a retry (network errors,
    /// timeouts, retryable statuses), since start.
    #[serde(default)]
    pub failed_attempts: u64,
}

/// What happened to incoming records since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounts {
    /// Stored in the spool.
    pub accepted: u64,
    /// Refused for breaking the record rules (bad frames included).
    pub invalid: u64,
    /// Refused because the machine is not opted in.
    pub not_opted_in: u64,
    /// Refused because the spool is at its cap.
    pub spool_full: u64,
    /// Refused for a spool error (disk, shutdown).
    pub spool_errors: u64,
    /// Native connections that sent too slowly and were dropped.
    pub timed_out: u64,
    /// Native connections closed without a whole frame because their uid
    /// held its share of connections open while the daemon was busy.
    #[serde(default)]
    pub refused: u64,
}

/// The probes in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbesSummary {
    /// Loaded (running or quarantined).
    pub loaded: usize,
    /// Of those, quarantined.
    pub quarantined: usize,
    /// Turned off by `telemctl probe disable`.
    pub disabled: Vec<String>,
    /// The first scan of the probe directories is still under way.
    pub loading: bool,
}

/// A record as a probe sent it, before the host stamped it: what a crash
/// triage run shows and what `telemctl crash symbolize` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// Classification.
    pub classification: String,
    /// Severity.
    pub severity: u8,
    /// Payload.
    pub payload: String,
    /// Version of the payload's own format.
    #[serde(default)]
    pub payload_version: u32,
    /// Its event id (the probe's, or the random one it was given).
    #[serde(default)]
    pub event_id: String,
}
