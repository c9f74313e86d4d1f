//! Configuration: a TOML file whose top-level keys are the legacy
//! `telemetrics.conf` keys plus the paths and knobs this daemon adds, or a
//! legacy INI file (`[settings]`), read as is so an existing deployment keeps
//! its settings (`docs/legacy-protocol.md` §5).
//!
//! Both formats go through one typed pass, so a value means the same thing
//! in either and every bad value is reported with its file, line, key and
//! the accepted range. Values the legacy client clamped are clamped the same
//! way, with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// Where the daemon looks for a config when none is given, in order.
pub const DEFAULT_CONFIG_PATHS: [&str; 4] = [
    "/etc/telemetrics/telemd.toml",
    "/etc/telemetrics/telemetrics.conf",
    "/usr/share/defaults/telemetrics/telemd.toml",
    "/usr/share/defaults/telemetrics/telemetrics.conf",
];

/// The legacy default `tidheader`: the public collector checks this TID.
pub const DEFAULT_TIDHEADER: &str = "X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f";

/// Legacy bounds of `spool_process_time` (seconds).
pub const SPOOL_PROCESS_TIME_RANGE: (i64, i64) = (120, 300);

/// What to do with records over the rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStrategy {
    /// Keep them in the spool for a later window.
    Spool,
    /// Remove them (journaled as dropped).
    Drop,
}

/// Body format of a POST to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PostFormat {
    /// Headers as HTTP headers, raw payload body: what the public collector validates.
    Headers,
    /// A flat JSON object, as the newest legacy client sent.
    Json,
}

/// Which syntax a config file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConfigFormat {
    /// This project's TOML.
    Toml,
    /// The legacy `telemetrics.conf` INI (`[settings]`).
    LegacyIni,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Collector URL (`http://`, `https://`, or `file://` for a local JSON-lines file).
    pub server: String,
    /// The native probe socket.
    pub socket_path: PathBuf,
    /// CA bundle for TLS to the collector; `None` uses the system roots.
    pub cainfo: Option<PathBuf>,
    /// Extra header line sent with every post (`Name: value`).
    pub tidheader: String,
    /// Minutes a spooled record lives; -1: forever.
    pub record_expiry: i64,
    /// Where accepted records wait for delivery.
    pub spool_dir: PathBuf,
    /// KiB the spool may hold; -1: no limit.
    pub spool_max_size: i64,
    /// Seconds between spool runs (120..300).
    pub spool_process_time: u64,
    /// Whether the rate limits below apply.
    pub rate_limit_enabled: bool,
    /// Records per record window; -1: off.
    pub record_burst_limit: i64,
    /// Minutes (0..59).
    pub record_window_length: u32,
    /// Bytes per byte window; -1: off.
    pub byte_burst_limit: i64,
    /// Minutes (0..59).
    pub byte_window_length: u32,
    /// What happens to records over a limit.
    pub rate_limit_strategy: RateLimitStrategy,
    /// Exit when idle (socket activation brings the daemon back).
    pub daemon_recycling_enabled: bool,
    /// false: keep records local only.
    pub record_server_delivery_enabled: bool,
    /// Keep payload copies of journaled records.
    pub record_retention_enabled: bool,

    /// Machine id, compiled-probe cache, crash inbox.
    pub state_dir: PathBuf,
    /// The delivery journal and retained records.
    pub journal_dir: PathBuf,
    /// Nothing is accepted or sent unless this file exists.
    pub opt_in_file: PathBuf,
    /// If it exists, its first line is the machine id.
    pub static_machine_id_file: PathBuf,
    /// Directories scanned for `.wasm` probes.
    pub probes_dirs: Vec<PathBuf>,
    /// The daemon's control socket (telemctl, crash handler).
    pub control_socket: PathBuf,
    /// Permission bits of the native socket.
    pub socket_mode: u32,
    /// A native client must deliver its whole frame within this many ms.
    pub socket_timeout_ms: u64,
    /// Native connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Body format of collector posts.
    pub post_format: PostFormat,
    /// Journal entries kept.
    pub journal_limit: usize,
    /// Root of the filesystem host metadata is read from (tests use a fake one).
    pub metadata_root: PathBuf,
    /// How often the probe directories are scanned for added, replaced or
    /// removed components.
    pub probe_scan_interval_ms: u64,
    /// Largest core kept from a crash; the rest is cut (the notes and the
    /// first mappings come first in a core, so a cut core still names the
    /// crash).
    pub crash_max_core_size: u64,
    /// Largest total size of the crash inbox; crashes beyond it are dropped
    /// with a count in the log.
    pub crash_inbox_max_size: u64,
    /// Repeats of one executable's crash within this many seconds are
    /// dropped (a crash loop must not flood the machine or the collector).
    pub crash_repeat_window_secs: u64,
    /// MiB the crash handler leaves free on the inbox's filesystem: a crash
    /// whose core would leave less is dropped with a count in the log (0:
    /// no floor).
    pub crash_min_free_mb: u64,
    /// The file whose presence turns the crash privacy filters off (the
    /// legacy client's `opt-in-no-privacy-filters`).
    pub no_privacy_filters_file: PathBuf,
    /// The user the crash handler drops to and owns inbox files as.
    pub service_user: String,
    /// Directories whose config files a native record's `CFG:` line may
    /// name (the file must also be root-owned and writable by no one else).
    pub cfg_allowed_dirs: Vec<PathBuf>,
    /// Host ceiling on any probe's records per hour.
    pub max_records_per_hour: u32,
    /// Larger probe component files are not compiled.
    pub max_component_bytes: u64,
    /// Shortest interval trigger a probe gets; shorter ones are raised.
    pub probe_min_interval_secs: u64,
    /// The admin's per-probe grants (`[probes.NAME]`). The defaults approve
    /// what the shipped probes need; a table in a config file changes only
    /// the keys it names.
    pub probes: BTreeMap<String, crate::probe_policy::ProbePolicy>,

    /// The file these values came from, if any.
    pub source: Option<PathBuf>,
    /// Its syntax.
    pub format: Option<ConfigFormat>,
    /// Values that were clamped or ignored, as the legacy client did.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "http://localhost/v2/collector".into(),
            socket_path: "/run/telem-0".into(),
            cainfo: None,
            tidheader: DEFAULT_TIDHEADER.into(),
            record_expiry: 1200,
            spool_dir: "/var/spool/telemetry".into(),
            spool_max_size: 5120,
            spool_process_time: 120,
            rate_limit_enabled: true,
            record_burst_limit: 1000,
            record_window_length: 15,
            byte_burst_limit: -1,
            byte_window_length: 20,
            rate_limit_strategy: RateLimitStrategy::Spool,
            daemon_recycling_enabled: true,
            record_server_delivery_enabled: true,
            record_retention_enabled: false,
            state_dir: "/var/lib/telemetry".into(),
            journal_dir: "/var/log/telemetry".into(),
            opt_in_file: "/etc/telemetrics/opt-in".into(),
            static_machine_id_file: "/etc/telemetrics/opt-in-static-machine-id".into(),
            probes_dirs: vec![
                "/usr/lib/telemetry/probes".into(),
                "/etc/telemetrics/probes".into(),
            ],
            control_socket: "/run/telemd/control".into(),
            socket_mode: 0o666,
            socket_timeout_ms: 10_000,
            max_connections: 64,
            post_format: PostFormat::Headers,
            journal_limit: 100,
            metadata_root: "/".into(),
            probe_scan_interval_ms: 2000,
            crash_max_core_size: 1 << 30,
            crash_inbox_max_size: 4 << 30,
            crash_repeat_window_secs: 60,
            crash_min_free_mb: 256,
            no_privacy_filters_file: "/etc/telemetrics/opt-in-no-privacy-filters".into(),
            service_user: "telemetry".into(),
            cfg_allowed_dirs: vec!["/etc/telemetrics".into()],
            max_records_per_hour: crate::probe_policy::DEFAULT_MAX_RECORDS_PER_HOUR,
            max_component_bytes: crate::probe_policy::DEFAULT_MAX_COMPONENT_BYTES,
            probe_min_interval_secs: crate::probe_policy::DEFAULT_MIN_INTERVAL_SECS,
            probes: shipped_probe_grants(),
            source: None,
            format: None,
            warnings: Vec::new(),
        }
    }
}

/// What the shipped probes need beyond the safe set: the crash-symbolizer
/// reads the programs and libraries under `/usr` and their debug files,
/// is handed crashes, and sends the crash classifications.
fn shipped_probe_grants() -> BTreeMap<String, crate::probe_policy::ProbePolicy> {
    let crash_symbolizer = crate::probe_policy::ProbePolicy {
        read_paths: Some(vec!["/usr".into(), "/usr/lib/debug".into()]),
        classifications: Some(vec!["org.clearlinux/crash/*".into()]),
        crashes: Some(true),
        ..Default::default()
    };
    BTreeMap::from([("crash-symbolizer".to_owned(), crash_symbolizer)])
}

/// The name of the effective user.
fn current_user() -> Option<String> {
    let uid = nix::unistd::Uid::effective();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
}

impl Config {
    /// Defaults for a rootless developer setup: every path under `dir`,
    /// records appended to a local file instead of posted.
    pub fn dev(dir: &Path) -> Config {
        Config {
            server: format!("file://{}", dir.join("collector/records.jsonl").display()),
            socket_path: dir.join("telem-0"),
            spool_dir: dir.join("spool"),
            state_dir: dir.join("state"),
            journal_dir: dir.join("journal"),
            opt_in_file: dir.join("opt-in"),
            static_machine_id_file: dir.join("opt-in-static-machine-id"),
            no_privacy_filters_file: dir.join("opt-in-no-privacy-filters"),
            // The crash handler keeps inbox files as whoever runs dev mode.
            service_user: current_user().unwrap_or_else(|| "telemetry".into()),
            probes_dirs: vec![dir.join("probes")],
            control_socket: dir.join("control.sock"),
            spool_process_time: 120,
            ..Config::default()
        }
    }

    /// Loads the config the daemon should use: `explicit` if given (it must
    /// exist), else the first of [`DEFAULT_CONFIG_PATHS`] that exists, else
    /// the built-in defaults on top of `base`.
    pub fn load(base: Config, explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Config::load_file(base, p);
        }
        for p in DEFAULT_CONFIG_PATHS {
            let p = Path::new(p);
            if p.exists() {
                return Config::load_file(base, p);
            }
        }
        Ok(base)
    }

    /// Reads one file (either syntax) on top of `base`.
    pub fn load_file(base: Config, path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Config::parse_str(base, &text, path)
    }

    /// Parses config text (either syntax) on top of `base`; `path` is only
    /// used in messages.
    pub fn parse_str(base: Config, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let format = detect_format(text);
        let mut warnings = Vec::new();
        let entries = match format {
            ConfigFormat::Toml => parse_toml(text, path)?,
            ConfigFormat::LegacyIni => parse_ini(text, path, &mut warnings)?,
        };
        let mut cfg = base;
        cfg.warnings = warnings;
        for e in entries {
            cfg.apply(&e, path)?;
        }
        cfg.source = Some(path.to_owned());
        cfg.format = Some(format);
        Ok(cfg)
    }

    fn apply(&mut self, e: &Entry, path: &Path) -> Result<(), ConfigError> {
        let v = Typed { e, path };
        match e.key.as_str() {
            "server" => {
                let s = v.string()?;
                if !["http://", "https://", "file://"]
                    .iter()
                    .any(|p| s.starts_with(p))
                {
                    return Err(v.bad("an http://, https:// or file:// URL"));
                }
                self.server = s;
            }
            "socket_path" => self.socket_path = v.path()?,
            "cainfo" => {
                let s = v.string()?;
                self.cainfo = (!s.is_empty()).then(|| PathBuf::from(s));
            }
            "tidheader" => {
                let s = v.string()?;
                match s.split_once(':') {
                    Some((name, _)) if !name.trim().is_empty() && !name.contains(' ') => {
                        self.tidheader = s
                    }
                    _ => return Err(v.bad("a header line `Name: value`")),
                }
            }
            "record_expiry" => {
                let n = v.int()?;
                self.record_expiry = if n < 0 { -1 } else { n.min(i64::MAX / 60) };
            }
            "spool_dir" => self.spool_dir = v.path()?,
            "spool_max_size" => {
                let n = v.int()?;
                self.spool_max_size = if n < 0 { -1 } else { n.min(i64::MAX / 1024) };
            }
            "spool_process_time" => {
                let n = v.int()?;
                let (lo, hi) = SPOOL_PROCESS_TIME_RANGE;
                let clamped = n.clamp(lo, hi);
                if clamped != n {
                    self.warnings.push(format!(
                        "{}:{}: spool_process_time = {n} is outside {lo}..{hi}; using {clamped}, as the legacy client did",
                        path.display(),
                        e.line
                    ));
                }
                self.spool_process_time = clamped as u64;
            }
            "rate_limit_enabled" => self.rate_limit_enabled = v.boolean()?,
            "record_burst_limit" => self.record_burst_limit = v.limit()?,
            "record_window_length" => self.record_window_length = v.int_in(0, 59)? as u32,
            "byte_burst_limit" => self.byte_burst_limit = v.limit()?,
            "byte_window_length" => self.byte_window_length = v.int_in(0, 59)? as u32,
            "rate_limit_strategy" => {
                self.rate_limit_strategy = match v.string()?.to_ascii_lowercase().as_str() {
                    "spool" => RateLimitStrategy::Spool,
                    "drop" => RateLimitStrategy::Drop,
                    _ => return Err(v.bad("\"spool\" or \"drop\"")),
                }
            }
            "daemon_recycling_enabled" => self.daemon_recycling_enabled = v.boolean()?,
            "record_server_delivery_enabled" => {
                self.record_server_delivery_enabled = v.boolean()?
            }
            "record_retention_enabled" => self.record_retention_enabled = v.boolean()?,
            "state_dir" => self.state_dir = v.path()?,
            "journal_dir" => self.journal_dir = v.path()?,
            "opt_in_file" => self.opt_in_file = v.path()?,
            "static_machine_id_file" => self.static_machine_id_file = v.path()?,
            "probes_dirs" => self.probes_dirs = v.path_list()?,
            "control_socket" => self.control_socket = v.path()?,
            "socket_mode" => self.socket_mode = v.mode()?,
            "socket_timeout_ms" => self.socket_timeout_ms = v.int_in(100, 600_000)? as u64,
            "max_connections" => self.max_connections = v.int_in(1, 65_536)? as usize,
            "post_format" => {
                self.post_format = match v.string()?.as_str() {
                    "headers" => PostFormat::Headers,
                    "json" => PostFormat::Json,
                    _ => return Err(v.bad("\"headers\" or \"json\"")),
                }
            }
            "journal_limit" => self.journal_limit = v.int_in(1, 1_000_000)? as usize,
            "metadata_root" => self.metadata_root = v.path()?,
            "probe_scan_interval_ms" => {
                self.probe_scan_interval_ms = v.int_in(100, 3_600_000)? as u64
            }
            "crash_max_core_size" => self.crash_max_core_size = v.int_in(1 << 16, i64::MAX)? as u64,
            "crash_inbox_max_size" => {
                self.crash_inbox_max_size = v.int_in(1 << 16, i64::MAX)? as u64
            }
            "crash_repeat_window_secs" => {
                self.crash_repeat_window_secs = v.int_in(0, 86_400)? as u64
            }
            "crash_min_free_mb" => self.crash_min_free_mb = v.int_in(0, 1 << 30)? as u64,
            "no_privacy_filters_file" => self.no_privacy_filters_file = v.path()?,
            "service_user" => {
                let u = v.string()?;
                if u.is_empty() || u.contains([':', '/', '\n']) {
                    return Err(v.bad("a user name"));
                }
                self.service_user = u
            }
            "cfg_allowed_dirs" => self.cfg_allowed_dirs = v.path_list()?,
            "max_records_per_hour" => self.max_records_per_hour = v.int_in(0, 1_000_000)? as u32,
            "max_component_bytes" => self.max_component_bytes = v.int_in(1 << 16, 1 << 30)? as u64,
            "probe_min_interval_secs" => self.probe_min_interval_secs = v.int_in(1, 86_400)? as u64,
            "probes" => {
                for (name, p) in v.probe_tables(&self.probes)? {
                    self.probes.insert(name, p);
                }
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    line: e.line,
                    key: e.key.clone(),
                })
            }
        }
        Ok(())
    }

    /// The config as TOML: `config check` output and `config migrate`.
    pub fn to_toml(&self) -> String {
        let mut v = toml::Table::try_from(self).expect("config serializes");
        for k in ["source", "format"] {
            v.remove(k);
        }
        if self.cainfo.is_none() {
            v.insert("cainfo".into(), toml::Value::String(String::new()));
        }
        v.insert(
            "socket_mode".into(),
            toml::Value::String(format!("{:04o}", self.socket_mode)),
        );
        toml::to_string(&v).expect("toml table serializes")
    }
}

/// One `key = value` from either syntax, with the line it was on.
#[derive(Debug)]
struct Entry {
    key: String,
    value: RawValue,
    line: usize,
}

#[derive(Debug)]
enum RawValue {
    /// INI: always text, interpreted per key as the legacy client did.
    Text(String),
    Toml(toml::Value),
}

impl fmt::Display for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawValue::Text(s) => write!(f, "{s:?}"),
            RawValue::Toml(v) => write!(f, "{v}"),
        }
    }
}

struct Typed<'a> {
    e: &'a Entry,
    path: &'a Path,
}

impl Typed<'_> {
    fn bad(&self, expected: &str) -> ConfigError {
        ConfigError::Value {
            path: self.path.to_owned(),
            line: self.e.line,
            key: self.e.key.clone(),
            value: self.e.value.to_string(),
            expected: expected.to_owned(),
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        match &self.e.value {
            RawValue::Text(s) => Ok(s.clone()),
            RawValue::Toml(toml::Value::String(s)) => Ok(s.clone()),
            _ => Err(self.bad("a string")),
        }
    }

    fn path(&self) -> Result<PathBuf, ConfigError> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.bad("a non-empty path"));
        }
        Ok(PathBuf::from(s))
    }

    fn path_list(&self) -> Result<Vec<PathBuf>, ConfigError> {
        match &self.e.value {
            RawValue::Text(s) => Ok(s
                .split([':', ','])
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().into())
                .collect()),
            RawValue::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) if !s.is_empty() => Ok(PathBuf::from(s)),
                    _ => Err(self.bad("a list of paths")),
                })
                .collect(),
            _ => Err(self.bad("a list of paths")),
        }
    }

    fn int(&self) -> Result<i64, ConfigError> {
        match &self.e.value {
            RawValue::Text(s) => s.trim().parse().map_err(|_| self.bad("an integer")),
            RawValue::Toml(toml::Value::Integer(n)) => Ok(*n),
            _ => Err(self.bad("an integer")),
        }
    }

    fn int_in(&self, lo: i64, hi: i64) -> Result<i64, ConfigError> {
        let n = self.int()?;
        if n < lo || n > hi {
            return Err(self.bad(&format!("an integer in {lo}..{hi}")));
        }
        Ok(n)
    }

    /// A burst limit: -1 (off) or a count.
    fn limit(&self) -> Result<i64, ConfigError> {
        let n = self.int()?;
        if n < -1 {
            return Err(self.bad("-1 (off) or an integer in 0..9223372036854775807"));
        }
        Ok(n)
    }

    /// `[probes.NAME]` tables, each key checked; errors name `probes.NAME.key`.
    fn probe_tables(
        &self,
        base: &BTreeMap<String, crate::probe_policy::ProbePolicy>,
    ) -> Result<BTreeMap<String, crate::probe_policy::ProbePolicy>, ConfigError> {
        let RawValue::Toml(toml::Value::Table(t)) = &self.e.value else {
            return Err(self.bad("[probes.NAME] tables"));
        };
        let mut out = BTreeMap::new();
        for (name, v) in t {
            let toml::Value::Table(keys) = v else {
                return Err(self.bad(&format!("a table [probes.{name}]")));
            };
            let mut p = base.get(name).cloned().unwrap_or_default();
            for (k, v) in keys {
                let sub = Entry {
                    key: format!("probes.{name}.{k}"),
                    value: RawValue::Toml(v.clone()),
                    line: self.e.line,
                };
                let t = Typed {
                    e: &sub,
                    path: self.path,
                };
                match k.as_str() {
                    "enabled" => p.enabled = Some(t.boolean()?),
                    "crashes" => p.crashes = Some(t.boolean()?),
                    "read_paths" => p.read_paths = Some(t.path_list()?),
                    "classifications" => {
                        let list = t.path_list()?;
                        p.classifications =
                            Some(list.into_iter().map(|c| c.display().to_string()).collect())
                    }
                    "memory_limit_mib" => p.memory_limit_mib = Some(t.int_in(1, 4096)? as u64),
                    "timeout_ms" => p.timeout_ms = Some(t.int_in(10, 3_600_000)? as u64),
                    "max_records_per_hour" => {
                        p.max_records_per_hour = Some(t.int_in(0, 1_000_000)? as u32)
                    }
                    _ => {
                        return Err(ConfigError::UnknownKey {
                            path: self.path.to_owned(),
                            line: self.e.line,
                            key: sub.key,
                        })
                    }
                }
            }
            out.insert(name.clone(), p);
        }
        Ok(out)
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match &self.e.value {
            RawValue::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.bad("true or false")),
            },
            RawValue::Toml(toml::Value::Boolean(b)) => Ok(*b),
            _ => Err(self.bad("true or false")),
        }
    }

    fn mode(&self) -> Result<u32, ConfigError> {
        let expected = "an octal file mode in 0000..0777, e.g. \"0666\"";
        let n = match &self.e.value {
            RawValue::Text(s) | RawValue::Toml(toml::Value::String(s)) => {
                u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
                    .map_err(|_| self.bad(expected))?
            }
            RawValue::Toml(toml::Value::Integer(n)) => {
                u32::try_from(*n).map_err(|_| self.bad(expected))?
            }
            _ => return Err(self.bad(expected)),
        };
        if n > 0o777 {
            return Err(self.bad(expected));
        }
        Ok(n)
    }
}

fn detect_format(text: &str) -> ConfigFormat {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
    match first {
        Some(l) if l.eq_ignore_ascii_case("[settings]") => ConfigFormat::LegacyIni,
        _ => ConfigFormat::Toml,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn parse_toml(text: &str, path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
    let mut entries: Vec<Entry> = table
        .into_iter()
        .map(|(k, v)| Entry {
            line: line_of(text, k.span().start),
            key: k.into_inner(),
            value: RawValue::Toml(v.into_inner()),
        })
        .collect();
    entries.sort_by_key(|e| e.line);
    Ok(entries)
}

fn parse_ini(
    text: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: line_no,
                message: format!("expected `key=value`, found {line:?}"),
            });
        };
        if section != "settings" {
            warnings.push(format!(
                "{}:{line_no}: key {:?} is in section [{section}], not [settings]; ignored",
                path.display(),
                k.trim()
            ));
            continue;
        }
        entries.push(Entry {
            key: k.trim().to_owned(),
            value: RawValue::Text(v.trim().to_owned()),
            line: line_no,
        });
    }
    Ok(entries)
}

/// A config that cannot be used, with what to fix and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ConfigError {
    #[error("cannot read config {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}:{line}: syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: {key} = {value} is not valid; expected {expected}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        expected: String,
    },
    #[error("{}:{line}: unknown key {key:?}", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_str(
            Config::default(),
            text,
            Path::new("/etc/telemetrics/telemd.toml"),
        )
    }

    #[test]
    fn defaults_match_the_legacy_table() {
        let c = Config::default();
        assert_eq!(c.socket_path, Path::new("/run/telem-0"));
        assert_eq!(c.record_expiry, 1200);
        assert_eq!(c.spool_max_size, 5120);
        assert_eq!(c.spool_process_time, 120);
        assert_eq!((c.record_burst_limit, c.record_window_length), (1000, 15));
        assert_eq!((c.byte_burst_limit, c.byte_window_length), (-1, 20));
        assert_eq!(c.rate_limit_strategy, RateLimitStrategy::Spool);
        assert!(
            c.rate_limit_enabled && c.daemon_recycling_enabled && c.record_server_delivery_enabled
        );
        assert!(!c.record_retention_enabled);
        assert_eq!(c.tidheader, DEFAULT_TIDHEADER);
    }

    #[test]
    fn toml_keys_are_applied() {
        let c = parse(
            r#"
server = "https://collector.example/v2/collector"
spool_dir = "/tmp/spool"
record_burst_limit = -1
byte_burst_limit = 4096
rate_limit_strategy = "DROP"
socket_mode = "0660"
probes_dirs = ["/a", "/b"]
post_format = "json"
record_retention_enabled = true
"#,
        )
        .unwrap();
        assert_eq!(c.server, "https://collector.example/v2/collector");
        assert_eq!(c.spool_dir, Path::new("/tmp/spool"));
        assert_eq!(c.record_burst_limit, -1);
        assert_eq!(c.byte_burst_limit, 4096);
        assert_eq!(c.rate_limit_strategy, RateLimitStrategy::Drop);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(
            c.probes_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.post_format, PostFormat::Json);
        assert!(c.record_retention_enabled);
        assert_eq!(c.format, Some(ConfigFormat::Toml));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn bad_value_names_key_line_and_range() {
        let e = parse("server = \"http://x/\"\n\nrecord_window_length = 75\n").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Value { line: 3, .. }), "{msg}");
        assert!(
            msg.contains("record_window_length") && msg.contains("0..59") && msg.contains(":3:"),
            "{msg}"
        );

        let e = parse("rate_limit_enabled = \"yes\"\n").unwrap_err();
        assert!(
            e.to_string().contains("rate_limit_enabled") && e.to_string().contains("true or false")
        );
        let e = parse("socket_mode = \"0999\"").unwrap_err();
        assert!(e.to_string().contains("0000..0777"), "{e}");
        let e = parse("record_burst_limit = -5").unwrap_err();
        assert!(e.to_string().contains("-1 (off)"), "{e}");
        let e = parse("server = \"ftp://x\"").unwrap_err();
        assert!(e.to_string().contains("server"), "{e}");
        let e = parse("tidheader = \"nocolon\"").unwrap_err();
        assert!(e.to_string().contains("tidheader"), "{e}");
    }

    #[test]
    fn unknown_key_and_syntax_errors_have_lines() {
        let e = parse("# comment\nspool_dirr = \"/x\"\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::UnknownKey {
                path: "/etc/telemetrics/telemd.toml".into(),
                line: 2,
                key: "spool_dirr".into()
            }
        );
        let e = parse("a = 1\nserver = = 2\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn legacy_clamping() {
        let c =
            parse("spool_process_time = 30\nrecord_expiry = -7\nspool_max_size = -3\n").unwrap();
        assert_eq!(c.spool_process_time, 120);
        assert_eq!(c.record_expiry, -1);
        assert_eq!(c.spool_max_size, -1);
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains(":1:") && c.warnings[0].contains("120..300"),
            "{:?}",
            c.warnings
        );
        let c = parse("spool_process_time = 9000\n").unwrap();
        assert_eq!(c.spool_process_time, 300);
        let c = parse(&format!("record_expiry = {}\n", i64::MAX)).unwrap();
        assert_eq!(c.record_expiry, i64::MAX / 60);
    }

    const LEGACY_INI: &str = "\
[settings]
server=http://localhost/v2/collector
socket_path=/run/telem-0
spool_dir=/var/spool/telemetry
record_expiry=1200
spool_max_size=1024
spool_process_time=900
rate_limit_enabled=TRUE
record_burst_limit=100
record_window_length=5
byte_burst_limit=-1
byte_window_length=20
rate_limit_strategy=drop
tidheader=X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f
cainfo=
daemon_recycling_enabled=0
record_retention_enabled=true
";

    #[test]
    fn legacy_ini_is_read() {
        let c = parse(LEGACY_INI).unwrap();
        assert_eq!(c.format, Some(ConfigFormat::LegacyIni));
        assert_eq!(c.spool_max_size, 1024);
        assert_eq!(c.spool_process_time, 300, "clamped like the legacy client");
        assert_eq!(c.record_burst_limit, 100);
        assert_eq!(c.record_window_length, 5);
        assert_eq!(c.rate_limit_strategy, RateLimitStrategy::Drop);
        assert!(c.rate_limit_enabled);
        assert!(!c.daemon_recycling_enabled);
        assert!(c.record_retention_enabled);
        assert_eq!(c.cainfo, None);
        assert_eq!(c.tidheader, DEFAULT_TIDHEADER);
    }

    #[test]
    fn legacy_ini_errors_name_key_and_line() {
        let bad = LEGACY_INI.replace("record_window_length=5", "record_window_length=60");
        let e = parse(&bad).unwrap_err();
        assert!(
            matches!(e, ConfigError::Value { line: 10, ref key, .. } if key == "record_window_length"),
            "{e}"
        );
        let bad = LEGACY_INI.replace("rate_limit_enabled=TRUE", "rate_limit_enabled=maybe");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains(":8: rate_limit_enabled"));
        let bad = format!("{LEGACY_INI}garbage line\n");
        assert!(matches!(
            parse(&bad).unwrap_err(),
            ConfigError::Syntax { line: 18, .. }
        ));
        let other = format!("{LEGACY_INI}[other]\nfoo=bar\n");
        let c = parse(&other).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("foo")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn toml_round_trips_through_to_toml() {
        let c = parse(LEGACY_INI).unwrap();
        let text = c.to_toml();
        let back = parse(&text).unwrap();
        assert_eq!(back.spool_max_size, c.spool_max_size);
        assert_eq!(back.rate_limit_strategy, c.rate_limit_strategy);
        assert_eq!(back.socket_mode, c.socket_mode);
        assert_eq!(back.cainfo, None);
        assert_eq!(back.probes_dirs, c.probes_dirs);
    }

    #[test]
    fn shipped_grants_are_kept_unless_a_key_replaces_them() {
        let c = parse("").unwrap();
        let cs = &c.probes["crash-symbolizer"];
        assert_eq!(cs.crashes, Some(true));
        assert_eq!(
            cs.classifications.as_deref(),
            Some(&["org.clearlinux/crash/*".to_string()][..])
        );
        let c = parse(
            "[probes.crash-symbolizer]
crashes = false
",
        )
        .unwrap();
        let cs = &c.probes["crash-symbolizer"];
        assert_eq!(cs.crashes, Some(false), "the admin's key wins");
        assert!(cs.read_paths.is_some(), "keys not named stay as shipped");
        let back = parse(&Config::default().to_toml()).unwrap();
        assert_eq!(
            back.probes,
            Config::default().probes,
            "the shipped default config carries them"
        );
    }

    #[test]
    fn security_keys_are_parsed_and_checked() {
        let c = parse("cfg_allowed_dirs = [\"/etc/a\"]\nmax_records_per_hour = 60\nmax_component_bytes = 1048576\n").unwrap();
        assert_eq!(c.cfg_allowed_dirs, [PathBuf::from("/etc/a")]);
        assert_eq!(
            (c.max_records_per_hour, c.max_component_bytes),
            (60, 1 << 20)
        );
        let d = Config::default();
        assert_eq!(d.cfg_allowed_dirs, [PathBuf::from("/etc/telemetrics")]);
        assert_eq!(
            (d.max_records_per_hour, d.max_component_bytes),
            (1000, 16 << 20)
        );
        assert!(parse("max_component_bytes = 10\n").is_err());
        assert_eq!(
            parse("probe_min_interval_secs = 5\n")
                .unwrap()
                .probe_min_interval_secs,
            5
        );
        assert_eq!(d.probe_min_interval_secs, 60);
        assert!(parse("probe_min_interval_secs = 0\n").is_err());
    }

    #[test]
    fn probe_tables_are_parsed_and_checked() {
        let c = parse(
            "spool_dir = \"/s\"\n\n[probes.hello]\nenabled = false\n\n[probes.disk]\nread_paths = [\"/proc/mounts\"]\nclassifications = [\"org.example/disk/*\"]\nmemory_limit_mib = 16\ntimeout_ms = 500\nmax_records_per_hour = 3\n",
        )
        .unwrap();
        assert_eq!(c.probes["hello"].enabled, Some(false));
        let d = &c.probes["disk"];
        assert_eq!(
            d.read_paths.as_deref(),
            Some(&[PathBuf::from("/proc/mounts")][..])
        );
        assert_eq!(
            d.classifications.as_deref(),
            Some(&["org.example/disk/*".to_string()][..])
        );
        assert_eq!(
            (d.memory_limit_mib, d.timeout_ms, d.max_records_per_hour),
            (Some(16), Some(500), Some(3))
        );
        let e = parse("[probes.disk]\nmemory_limit_mib = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("probes.disk.memory_limit_mib")
                && e.to_string().contains("1..4096"),
            "{e}"
        );
        let e = parse("[probes.disk]\nreadpaths = []\n").unwrap_err();
        assert!(e.to_string().contains("probes.disk.readpaths"), "{e}");
    }

    #[test]
    fn dev_config_keeps_everything_under_one_dir() {
        let c = Config::dev(Path::new("/tmp/dev"));
        for p in [
            &c.socket_path,
            &c.spool_dir,
            &c.state_dir,
            &c.journal_dir,
            &c.opt_in_file,
            &c.control_socket,
        ] {
            assert!(p.starts_with("/tmp/dev"), "{}", p.display());
        }
        assert!(c.server.starts_with("file:///tmp/dev/"));
    }
}
