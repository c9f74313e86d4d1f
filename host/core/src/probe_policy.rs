//! The admin's word on one probe (`[probes.NAME]`) and the defaults the
//! host applies when it says nothing. Here rather than in the sandbox crate
//! because the config file holds them: every program reads the config, and
//! only the daemon and telemctl run probes.

use std::path::PathBuf;

#[cfg(feature = "reference")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::values::{Bounded, Sha256Hex};

/// Default cap on a probe's memory (all of its linear memories together).
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// Default wall-time cap of one call.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default host ceiling on any probe's records per hour
/// (`max_records_per_hour`); a manifest or an admin table asking for more
/// gets this.
pub const DEFAULT_MAX_RECORDS_PER_HOUR: u32 = 1000;

/// Default of `state_quota_mib`: a probe's private state (keys and values
/// together).
pub const DEFAULT_STATE_QUOTA_MIB: u64 = 16;

/// Default of `probe_min_interval_secs`: the shortest interval trigger.
pub const DEFAULT_MIN_INTERVAL_SECS: u64 = 60;

/// Default of `max_component_bytes`: larger probe files are not compiled.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 16 << 20;

/// The admin's `[probes.NAME]` table; every key optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProbePolicy {
    /// false: the probe is not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Host paths readable by the probe (replaces the manifest's request;
    /// this is how a path outside the safe set is approved).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::non_empty::opt_paths"
    )]
    pub read_paths: Option<Vec<PathBuf>>,
    /// Host paths readable beside the rest (what the manifest was granted
    /// or `read_paths` approved): `telemctl probe test --grant-read`.
    /// Never read from a config file.
    #[serde(skip)]
    #[cfg_attr(feature = "reference", schemars(skip))]
    pub also_read: Vec<PathBuf>,
    /// Classification patterns it may emit (replaces the manifest's).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::non_empty::opt_strings"
    )]
    pub classifications: Option<Vec<String>>,
    /// Memory cap (all linear memories of a call together).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<Bounded<1, 4096>>,
    /// Wall-time cap per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Bounded<10, 3_600_000>>,
    /// Records per hour (replaces the manifest's; the host ceiling still holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_records_per_hour: Option<Bounded<0, 1_000_000>>,
    /// true: the probe is handed crashes (cores hold the crashed process's
    /// memory) if its manifest asks for them. Absent or false: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crashes: Option<bool>,
    /// true: the probe is handed the kernel log (`/dev/kmsg`) if its
    /// manifest asks for it. Absent or false: never (the log holds kernel
    /// addresses and every driver's messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_log: Option<bool>,
    /// true: the probe is handed the journal entries its manifest asks for.
    /// Absent or false: never (the journal holds every service's messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<bool>,
    /// The journal fields it may see (narrows the manifest's list).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::non_empty::opt_strings"
    )]
    pub journal_fields: Option<Vec<String>>,
    /// MiB of private state the probe may keep (keys and values together).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_quota_mib: Option<Bounded<0, 1024>>,
    /// The only SHA-256 the probe's file (`NAME.wasm`) may have: a file with
    /// another is refused before it runs (`refused: digest mismatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
}
