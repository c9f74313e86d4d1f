//! The keys, one struct per subsystem, each key written once: its doc
//! comment (what it means), its type (what it accepts) and its
//! `#[default]` side by side. The doc comments are the key reference:
//! `telemctl config defaults` prints them and the README's table is
//! checked against them.
//! The file stays flat: the structs are flattened into [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

#[cfg(feature = "reference")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::values::{
    optional_path, optional_string, Bounded, CollectorUrl, DebuginfodUrl, FileMode, HeaderLine,
    Limit, MetricsListen, UserName,
};
use super::{non_empty, PostFormat, RateLimitStrategy, DEFAULT_TIDHEADER};
use crate::probe_policy::ProbePolicy;

/// `spool_process_time`: the legacy client's bounds, which it clamped to
/// (and so does this one, in the file reader).
pub type SpoolProcessTime = Bounded<120, 300>;

/// Posting records to the collector, the rate limits and the journal of
/// what was sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct DeliveryConfig {
    /// The collector: an `http://` or `https://` URL, or `file://PATH` to
    /// append records to a local JSON-lines file.
    #[default(CollectorUrl::new("http://localhost/v2/collector"))]
    pub server: CollectorUrl,
    /// CA bundle for TLS to the collector; empty: the system roots.
    #[serde(with = "optional_path")]
    #[cfg_attr(feature = "reference", schemars(with = "String"))]
    #[default(None)]
    pub cainfo: Option<PathBuf>,
    /// PEM certificate (chain) telemd shows a collector that asks for
    /// one (mutual TLS); with `tls_client_key`, or neither.
    #[serde(with = "optional_path")]
    #[cfg_attr(feature = "reference", schemars(with = "String"))]
    #[default(None)]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of `tls_client_cert` (readable by the service user
    /// only: mode 0640, root:telemetry).
    #[serde(with = "optional_path")]
    #[cfg_attr(feature = "reference", schemars(with = "String"))]
    #[default(None)]
    pub tls_client_key: Option<PathBuf>,
    /// Proxy for every post (`http://HOST:PORT`); empty: `HTTPS_PROXY`,
    /// `HTTP_PROXY` and `NO_PROXY` from the environment, if set.
    #[serde(with = "optional_string")]
    #[cfg_attr(feature = "reference", schemars(with = "String"))]
    #[default(None)]
    pub proxy: Option<String>,
    /// Header line sent with every post (`Name: value`); the public
    /// collector checks this TID.
    #[default(HeaderLine::new(DEFAULT_TIDHEADER))]
    pub tidheader: HeaderLine,
    /// Minutes a spooled record lives before it is removed unsent; -1:
    /// forever (other negative values are read as -1 with a warning, as
    /// the legacy client read them).
    #[default(Limit::at(1200))]
    pub record_expiry: Limit,
    /// Seconds between spool runs; values outside the range are clamped
    /// into it with a warning, as the legacy client did.
    #[default(Bounded::new(120))]
    pub spool_process_time: SpoolProcessTime,
    /// Whether the rate limits (`record_burst_limit`, `byte_burst_limit`)
    /// apply.
    #[default(true)]
    pub rate_limit_enabled: bool,
    /// Records posted per record window; -1: no limit.
    #[default(Limit::at(1000))]
    pub record_burst_limit: Limit,
    /// Minutes of the record window.
    #[default(Bounded::new(15))]
    pub record_window_length: Bounded<0, 59>,
    /// Bytes posted per byte window; -1: no limit.
    #[default(Limit::OFF)]
    pub byte_burst_limit: Limit,
    /// Minutes of the byte window.
    #[default(Bounded::new(20))]
    pub byte_window_length: Bounded<0, 59>,
    /// What happens to records over a limit: `spool` (they wait for a later
    /// window) or `drop` (removed, journaled as dropped).
    #[default(RateLimitStrategy::Spool)]
    pub rate_limit_strategy: RateLimitStrategy,
    /// false: records are journaled and kept local, never posted.
    #[default(true)]
    pub record_server_delivery_enabled: bool,
    /// Keep a copy of each journaled record's payload
    /// (`telemctl journal --include-record`).
    #[default(false)]
    pub record_retention_enabled: bool,
    /// Body format of a post: `headers` (headers as HTTP headers, the
    /// payload as body: what the public collector validates), `json`, or
    /// `otlp` (OTLP/HTTP log records, up to 1000 to a request, to an
    /// OpenTelemetry Collector; `server` is its base URL or its logs URL).
    #[default(PostFormat::Headers)]
    pub post_format: PostFormat,
    /// Directories a native record's `CFG:` config file may be in (it must
    /// also be root-owned and writable by no one else); other records go
    /// to `server`.
    #[serde(deserialize_with = "non_empty::paths")]
    #[default(vec!["/etc/telemetrics".into()])]
    pub cfg_allowed_dirs: Vec<PathBuf>,
}

/// Where accepted records wait for delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct SpoolConfig {
    /// The spool directory (the legacy staged format).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/var/spool/telemetry".into())]
    pub spool_dir: PathBuf,
    /// KiB the spool may hold; new records are refused beyond it; -1: no
    /// limit (other negative values are read as -1 with a warning).
    #[default(Limit::at(5120))]
    pub spool_max_size: Limit,
}

/// The journal of what happened to each record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct JournalConfig {
    /// The delivery journal and retained payloads.
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/var/log/telemetry".into())]
    pub journal_dir: PathBuf,
    /// Journal entries kept.
    #[default(Bounded::new(100))]
    pub journal_limit: Bounded<1, 1_000_000>,
}

/// The legacy socket native probes send records to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct SocketConfig {
    /// The socket (systemd's socket unit passes it instead when it runs
    /// the daemon).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/run/telem-0".into())]
    pub socket_path: PathBuf,
    /// Permission bits of the socket.
    #[default(FileMode::new(0o666))]
    pub socket_mode: FileMode,
    /// Milliseconds a native client has to deliver its whole frame.
    #[default(Bounded::new(10_000))]
    pub socket_timeout_ms: Bounded<100, 600_000>,
    /// Native clients whose frame was not whole when accepted, read at
    /// once, a quarter of them at most for one uid (a connection takes a
    /// slot when its first byte arrives); more wait. A whole frame is read
    /// at once, whatever the uid. The daemon keeps `max_connections` +
    /// 4096 connections open (at most half its descriptor limit, whose
    /// soft value it raises to the hard one); once half of those are
    /// taken, a uid holding over a quarter has its new connections closed
    /// unless their frame is whole within a second; beyond the total, or
    /// with 1024 records waiting for the disk, clients wait in the
    /// backlog.
    #[default(Bounded::new(64))]
    pub max_connections: Bounded<1, 65_536>,
}

/// The daemon's own files and what identifies the machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct HostConfig {
    /// Machine id, compiled-probe cache, crash inbox, probe state.
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/var/lib/telemetry".into())]
    pub state_dir: PathBuf,
    /// Nothing is accepted or sent unless this file exists
    /// (`telemctl opt-in` creates it).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/etc/telemetrics/opt-in".into())]
    pub opt_in_file: PathBuf,
    /// If it exists, its first line (32 characters at most) is the machine
    /// id, instead of one that rotates every three days.
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/etc/telemetrics/opt-in-static-machine-id".into())]
    pub static_machine_id_file: PathBuf,
    /// The control socket (telemctl, the crash handler).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/run/telemd/control".into())]
    pub control_socket: PathBuf,
    /// Root of the filesystem host metadata is read from (tests use a fake
    /// one).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/".into())]
    pub metadata_root: PathBuf,
    /// Exit when idle; socket activation brings the daemon back.
    #[default(true)]
    pub daemon_recycling_enabled: bool,
    /// Serve the self-metrics (OpenMetrics text at `/metrics`) here: a
    /// loopback `ADDRESS:PORT` or a unix socket path (mode 0660); empty:
    /// not served (`telemctl metrics` prints them anyway).
    #[cfg_attr(feature = "reference", schemars(with = "String"))]
    #[default(MetricsListen::new(""))]
    pub metrics_listen: MetricsListen,
}

/// The crash handler: what it keeps, and the limits on crash floods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct CrashConfig {
    /// Bytes of a core kept; the rest is cut and the cut logged (the notes
    /// and first mappings come first, so a cut core still names the crash).
    #[default(Bounded::new(1 << 30))]
    pub crash_max_core_size: Bounded<65_536, { i64::MAX as u64 }>,
    /// Crashes arriving while the crash inbox holds this many bytes are
    /// dropped, with a count in the log.
    #[default(Bounded::new(4 << 30))]
    pub crash_inbox_max_size: Bounded<65_536, { i64::MAX as u64 }>,
    /// A crash at the same site of the same executable within this many
    /// seconds of the last is dropped by the crash handler, and a crash
    /// whose signature was sent within as many seconds is kept in the
    /// crash history but not sent (0: neither).
    #[default(Bounded::new(60))]
    pub crash_repeat_window_secs: Bounded<0, 86_400>,
    /// MiB the crash handler leaves free on the inbox's filesystem: a crash
    /// whose core would leave less is dropped, with a count in the log (0:
    /// no floor).
    #[default(Bounded::new(256))]
    pub crash_min_free_mb: Bounded<0, { 1 << 30 }>,
    /// If this file exists, the crash privacy filters are off (the legacy
    /// `opt-in-no-privacy-filters`).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/etc/telemetrics/opt-in-no-privacy-filters".into())]
    pub no_privacy_filters_file: PathBuf,
    /// The user the crash handler drops to before keeping anything.
    #[default(UserName::new("telemetry"))]
    pub service_user: UserName,
    /// debuginfod servers telemd asks, in order, for the debug files (or
    /// binaries) a crash probe lacks: `https://`, or `http://` to this
    /// machine. None (the default): no server is ever asked.
    #[default(Vec::new())]
    pub debuginfod_urls: Vec<DebuginfodUrl>,
    /// Milliseconds a crash call's debuginfod lookups may take together
    /// (never more than half the crash probe's `timeout_ms`).
    #[default(Bounded::new(4000))]
    pub debuginfod_timeout_ms: Bounded<100, 600_000>,
    /// MiB of fetched files kept under `state_dir` (the least recently
    /// used removed past it); no single file larger is taken.
    #[default(Bounded::new(1024))]
    pub debuginfod_cache_mb: Bounded<1, 1_048_576>,
}

/// The WASM probes: where they are found and the host's ceilings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, SmartDefault)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct ProbesConfig {
    /// Directories scanned for `.wasm` probes.
    #[serde(deserialize_with = "non_empty::paths")]
    #[default(vec!["/usr/lib/telemetry/probes".into(), "/etc/telemetrics/probes".into()])]
    pub probes_dirs: Vec<PathBuf>,
    /// Milliseconds between scans of the probe directories for added,
    /// replaced or removed components: the fallback, since the directories
    /// are also watched (a change is seen at once).
    #[default(Bounded::new(2000))]
    pub probe_scan_interval_ms: Bounded<100, 3_600_000>,
    /// Host ceiling on any probe's records per hour.
    #[default(Bounded::new( crate::probe_policy::DEFAULT_MAX_RECORDS_PER_HOUR as u64, ))]
    pub max_records_per_hour: Bounded<0, 1_000_000>,
    /// Larger probe component files are not compiled.
    #[default(Bounded::new(crate::probe_policy::DEFAULT_MAX_COMPONENT_BYTES))]
    pub max_component_bytes: Bounded<65_536, { 1 << 30 }>,
    /// Shortest interval trigger, in seconds; a probe asking for less gets
    /// this.
    #[default(Bounded::new(crate::probe_policy::DEFAULT_MIN_INTERVAL_SECS))]
    pub probe_min_interval_secs: Bounded<1, 86_400>,
    /// The kernel log probes granted `kernel_log` are handed: `/dev/kmsg`,
    /// or a file or FIFO in its record format (containers, tests).
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/dev/kmsg".into())]
    pub kernel_log_path: PathBuf,
    /// Where the directories of probes' `files` sources are found: `/`, or
    /// the host's tree mounted elsewhere (a container). A probe still sees
    /// them at the path its manifest names.
    #[serde(deserialize_with = "non_empty::path")]
    #[default("/".into())]
    pub sources_root: PathBuf,
    /// Where the journal source reads: a directory of journal files, or
    /// empty for the system journal (`/var/log/journal` and
    /// `/run/log/journal`).
    #[default(PathBuf::new())]
    pub journal_source_dir: PathBuf,
    /// Larger functions (bytes of wasm code) make a component be refused
    /// before it is compiled: compiling takes memory in proportion to the
    /// largest function. Python components (componentize-py) need 524288.
    #[default(Bounded::new(128 * 1024))]
    pub max_function_bytes: Bounded<4096, { 4 << 20 }>,
    /// true: a probe loads only with a minisign signature beside it
    /// (`NAME.wasm.sig`, or minisign's `NAME.wasm.minisig`) that verifies
    /// with a key in `trusted_keys_dir`. A signature that is there is
    /// checked either way.
    #[default(false)]
    pub require_signatures: bool,
    /// The minisign public keys (`*.pub`) probes may be signed with. It
    /// and each key must be owned by root (or the service user) and
    /// writable by no one else, or the key is not used.
    #[default(PathBuf::from("/etc/telemetrics/trusted-keys"))]
    pub trusted_keys_dir: PathBuf,
    /// The admin's word on each probe: `[probes.NAME]` tables, whose keys
    /// follow. The defaults approve what the shipped probes need; a table
    /// in a file changes only the keys it names.
    #[default(shipped_probe_grants())]
    pub probes: BTreeMap<String, ProbePolicy>,
}

/// What the shipped probes need beyond the safe set: the crash-symbolizer
/// reads the programs and libraries under `/usr` and their debug files,
/// is handed crashes, and sends the crash classifications; kernel-oops is
/// handed the kernel log and sends the legacy kernel and BERT
/// classifications; pstore is told of the oops logs systemd-pstore
/// archived (or the kernel left in `/sys/fs/pstore`) and sends the kernel
/// classifications too; journal-errors is handed the journal and sends
/// `org.clearlinux/journal/*`.
fn shipped_probe_grants() -> BTreeMap<String, ProbePolicy> {
    let crash_symbolizer = ProbePolicy {
        read_paths: Some(vec!["/usr".into(), "/usr/lib/debug".into()]),
        classifications: Some(vec!["org.clearlinux/crash/*".into()]),
        crashes: Some(true),
        ..Default::default()
    };
    let kernel_oops = ProbePolicy {
        classifications: Some(vec![
            "org.clearlinux/kernel/*".into(),
            "org.clearlinux/bert/*".into(),
            "org.clearlinux/kernel-oops/*".into(),
        ]),
        kernel_log: Some(true),
        ..Default::default()
    };
    let pstore = ProbePolicy {
        read_paths: Some(vec![
            "/var/lib/systemd/pstore".into(),
            "/sys/fs/pstore".into(),
        ]),
        classifications: Some(vec![
            "org.clearlinux/kernel/*".into(),
            "org.clearlinux/pstore/*".into(),
        ]),
        ..Default::default()
    };
    let journal_errors = ProbePolicy {
        classifications: Some(vec![
            "org.clearlinux/journal/*".into(),
            "org.clearlinux/journal-errors/*".into(),
        ]),
        journal: Some(true),
        ..Default::default()
    };
    BTreeMap::from([
        ("crash-symbolizer".to_owned(), crash_symbolizer),
        ("journal-errors".to_owned(), journal_errors),
        ("kernel-oops".to_owned(), kernel_oops),
        ("pstore".to_owned(), pstore),
    ])
}
