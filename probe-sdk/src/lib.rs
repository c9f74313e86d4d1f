//! The crate probe authors build on: a telemetry probe for `telemd` is a
//! type implementing [`Probe`] plus one [`export_probe!`] line, compiled
//! with `cargo build --target wasm32-wasip2`. The daemon runs it in a
//! sandbox holding only what its [`Manifest`] asked for and the admin
//! granted.
//!
//! ```no_run
//! use telemetrics_probe_sdk::{export_probe, log, Event, Manifest, Probe, Record, Sent, Trigger};
//!
//! struct DiskUsage;
//!
//! impl Probe for DiskUsage {
//!     fn describe() -> Manifest {
//!         Manifest {
//!             name: "disk-usage".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             description: "How full /var is, once a day".into(),
//!             classifications: vec!["org.example/disk/*".into()],
//!             triggers: vec![Trigger::OnStart, Trigger::Interval(24 * 3600)],
//!             read_paths: vec!["/proc/mounts".into()],
//!             max_records_per_hour: 2,
//!             ..Default::default()
//!         }
//!     }
//!
//!     fn handle(_event: Event) -> Result<(), String> {
//!         let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
//!         // `?` only on what the probe got wrong; the host's own limits
//!         // are an outcome, not a failure.
//!         let sent = Record::new("org.example/disk/usage")
//!             .severity(2)
//!             .payload(format!("{} mounts", mounts.lines().count()))
//!             .send()?;
//!         match sent {
//!             Sent::Stored(id) => log::info(&format!("sent record {id}")),
//!             Sent::RateLimited => log::debug("over the hourly budget: not sent"),
//!             Sent::NotKept(why) => log::debug(&format!("the host did not keep it: {why}")),
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_probe!(DiskUsage);
//! ```
//!
//! The contract itself is `wit/probe.wit` in the telemetrics repository.

/// Bindings generated from the WIT contract; [`Probe`] and the types below
/// are the parts probe authors need.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "probe",
        pub_export_macro: true,
        export_macro_name: "__export_probe_world",
        default_bindings_module: "telemetrics_probe_sdk::bindings",
    });
}

use bindings::telemetrics::probe::records;
use bindings::telemetrics::probe::types::SendError;
pub use bindings::telemetrics::probe::types::{
    BatchLimits, CrashReport, Event, FileNotice, FilesSource, JournalEntry, JournalSource,
    KernelLogBatch, KernelLogLine, Manifest, Source, TelemetryRecord, Trigger,
};

/// What a probe implements: `describe` says what it is and needs, `handle`
/// does the work for one event. Both run in a fresh sandbox per call, so
/// memory does not carry over between calls: what must, goes in [`state`].
///
/// A probe that asks for event sources is handed what is new in them:
///
/// ```no_run
/// use telemetrics_probe_sdk::{export_probe, BatchLimits, Event, Manifest, Probe, Record, Source};
///
/// struct Segfaults;
///
/// impl Probe for Segfaults {
///     fn describe() -> Manifest {
///         Manifest {
///             name: "segfaults".into(),
///             version: "1.0.0".into(),
///             description: "Counts segfault lines in the kernel log".into(),
///             classifications: vec!["org.example/segfaults/*".into()],
///             max_records_per_hour: 10,
///             // The admin grants it with `kernel_log = true`.
///             sources: vec![Source::KernelLog(BatchLimits::default())],
///             ..Default::default()
///         }
///     }
///
///     fn handle(event: Event) -> Result<(), String> {
///         let Event::KernelLog(batch) = event else { return Ok(()) };
///         let n = batch.lines.iter().filter(|l| l.text.contains("segfault at")).count();
///         if n > 0 {
///             // Held until `handle` returns Ok; dropped (and the batch
///             // handed again) if it fails.
///             Record::new("org.example/segfaults/count")
///                 .payload(format!("{n}"))
///                 .send()?;
///         }
///         Ok(())
///     }
/// }
///
/// export_probe!(Segfaults);
/// ```
pub use bindings::Guest as Probe;

/// Exports a type implementing [`Probe`] as the component's entry points.
#[macro_export]
macro_rules! export_probe {
    ($probe:ident) => {
        $crate::bindings::__export_probe_world!($probe with_types_in $crate::bindings);
    };
}

/// What became of a record handed to the host. Only a record the probe
/// got wrong is an error ([`RecordError`]); the host's own limits are
/// outcomes a probe may ignore or count. (A probe that returns them from
/// `handle` as errors anyway is not quarantined for them either: the host
/// knows its own refusals.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Stored durably, or held with its source batch until `handle`
    /// returns: the record's id (its event id in a batch).
    Stored(String),
    /// Over the probe's records-per-hour limit: the host dropped it. The
    /// budget refills over the hour; a later record may go.
    RateLimited,
    /// The host could not keep it: not opted in, spool full, disk error
    /// (in words); or its source batch already holds 256 records, which
    /// is the probe's doing (failing the call over it counts).
    NotKept(String),
}

impl Sent {
    /// The record's id, if it was stored.
    pub fn id(&self) -> Option<&str> {
        match self {
            Sent::Stored(id) => Some(id),
            Sent::RateLimited | Sent::NotKept(_) => None,
        }
    }

    /// Whether the host took the record.
    pub fn is_stored(&self) -> bool {
        matches!(self, Sent::Stored(_))
    }
}

/// A record the probe got wrong: a bug in the probe, to fix. Returned from
/// `handle` (as `?` does), it counts as the call's failure, and five
/// failures in a row quarantine the probe until the admin reloads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Its classification matches none of the probe's granted patterns.
    NotGranted(String),
    /// It breaks a rule of the record format (says which).
    Invalid(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::NotGranted(c) => write!(
                f,
                "record refused: classification {c} is not among the probe's granted classifications"
            ),
            RecordError::Invalid(why) => write!(f, "record refused as invalid: {why}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// So that `handle`, which returns `Result<(), String>`, can use `?` on
/// [`Record::send`].
impl From<RecordError> for String {
    fn from(e: RecordError) -> String {
        e.to_string()
    }
}

/// Every field empty, zero or off, so that a probe names only what it
/// uses and ends with `..Default::default()`: a field a later contract
/// adds then takes its default in the probe's source too, instead of
/// breaking its build. Not a manifest the host would load on its own
/// (it has no name); `max_records_per_hour` 0 means the probe sends
/// nothing, so a probe that sends says how many.
impl Default for Manifest {
    fn default() -> Manifest {
        Manifest {
            name: String::new(),
            version: String::new(),
            description: String::new(),
            classifications: Vec::new(),
            triggers: Vec::new(),
            read_paths: Vec::new(),
            max_records_per_hour: 0,
            sources: Vec::new(),
        }
    }
}

/// 0 and 0: the host's defaults (256 items, 64 KiB per call).
impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits {
            max_items: 0,
            max_bytes: 0,
        }
    }
}

/// No directory, no pattern, the host's batch limits: name the first two.
impl Default for FilesSource {
    fn default() -> FilesSource {
        FilesSource {
            dir: String::new(),
            pattern: String::new(),
            limits: BatchLimits::default(),
        }
    }
}

/// No matches (the host refuses a journal source without one), every
/// boot, no fields, the host's batch limits.
impl Default for JournalSource {
    fn default() -> JournalSource {
        JournalSource {
            matches: Vec::new(),
            privacy_gated: Vec::new(),
            this_boot: false,
            fields: Vec::new(),
            limits: BatchLimits::default(),
        }
    }
}

/// A record under construction: classification first, everything else
/// optional with the legacy defaults (severity 1, payload version 1, empty
/// payload, random event id).
#[derive(Clone, Debug)]
pub struct Record(TelemetryRecord);

impl Record {
    /// A record of this classification (`DOMAIN/PROBE/REST`).
    pub fn new(classification: impl Into<String>) -> Record {
        Record(TelemetryRecord {
            classification: classification.into(),
            severity: 1,
            payload_version: 1,
            payload: String::new(),
            event_id: None,
        })
    }

    /// 1 (lowest) to 4 (highest).
    pub fn severity(mut self, severity: u8) -> Record {
        self.0.severity = severity;
        self
    }

    /// Printable ASCII or whitespace, at most 8192 bytes.
    pub fn payload(mut self, payload: impl Into<String>) -> Record {
        self.0.payload = payload.into();
        self
    }

    /// Version of the payload's format.
    pub fn payload_version(mut self, version: u32) -> Record {
        self.0.payload_version = version;
        self
    }

    /// Ties records of one event together (32 lowercase hex digits).
    pub fn event_id(mut self, id: impl Into<String>) -> Record {
        self.0.event_id = Some(id.into());
        self
    }

    /// Hands the record to the host: [`Sent::Stored`] with its id once it
    /// is on disk, or why the host did not take it ([`Sent`]); an error
    /// only for a record the probe got wrong ([`RecordError`]).
    pub fn send(self) -> Result<Sent, RecordError> {
        match records::send(&self.0) {
            Ok(id) => Ok(Sent::Stored(id)),
            Err(SendError::RateLimited) => Ok(Sent::RateLimited),
            Err(SendError::Refused(why)) => Ok(Sent::NotKept(why)),
            Err(SendError::NotGranted(c)) => Err(RecordError::NotGranted(c)),
            Err(SendError::Invalid(why)) => Err(RecordError::Invalid(why)),
        }
    }
}

/// Logging through the daemon's log, tagged with the probe's name.
pub mod log {
    use crate::bindings::telemetrics::probe::log::{log, Level};

    /// Debug detail.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    /// Normal operation.
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    /// Something is off but the probe carries on.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    /// The probe failed at something.
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}

/// Debug files fetched by the host, in a crash call (contract 0.2.1): the
/// separate debug file or the binary of a GNU build id, from the
/// debuginfod servers the admin named (`debuginfod_urls`; none by
/// default), checked by the host to carry that build id and readable at
/// the returned path until the call ends. The call's lookups share a
/// bounded time; `None` is the answer when no server is named, outside a
/// crash call, when nothing was found in time, and on a host older than
/// 0.2.1 the probe does not load at all.
///
/// ```no_run
/// use telemetrics_probe_sdk::debuginfo;
///
/// let id = [0x93, 0xac, 0x61, 0xec];
/// if let Some(path) = debuginfo::find(&id, debuginfo::Kind::Debuginfo) {
///     let _debug_file = std::fs::read(path);
/// }
/// ```
pub mod debuginfo {
    use crate::bindings::telemetrics::probe::debuginfo as host;
    pub use crate::bindings::telemetrics::probe::debuginfo::Kind;

    /// The path of the file, readable in this call, or `None`.
    pub fn find(build_id: &[u8], kind: Kind) -> Option<String> {
        host::find(build_id, kind)
    }
}

/// The probe's private key-value store, kept by the host across calls and
/// restarts and seen by no other probe. Writes take effect together when
/// `handle` returns `Ok` and are dropped when it fails (for a source
/// event, with the batch's records). The host enforces a quota
/// (`state_quota_mib`, 16 MiB by default; each key costs 64 bytes more
/// than its key and value); `telemctl probe reset NAME` clears it.
///
/// ```no_run
/// use telemetrics_probe_sdk::state;
///
/// # fn f() -> Result<(), String> {
/// let runs = state::get("runs")
///     .and_then(|v| v.try_into().ok())
///     .map_or(0, u64::from_le_bytes);
/// state::set("runs", &(runs + 1).to_le_bytes()).map_err(|e| e.to_string())?;
/// # Ok(())
/// # }
/// ```
pub mod state {
    use crate::bindings::telemetrics::probe::state as host;
    pub use crate::bindings::telemetrics::probe::state::StateError;

    /// The value under `key`, as this call sees it (its own writes
    /// included).
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::get(key)
    }

    /// Stores `value` under `key`; refused past the quota or for a key
    /// that is not 1 to 256 bytes.
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        host::set(key, value)
    }

    /// Removes `key`.
    pub fn delete(key: &str) -> Result<(), StateError> {
        host::delete(key)
    }

    /// Every key, in byte order.
    pub fn keys() -> Vec<String> {
        host::keys()
    }
}
