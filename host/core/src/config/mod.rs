//! Configuration: a TOML file whose top-level keys are the legacy
//! `telemetrics.conf` keys plus the paths and knobs this daemon adds, or a
//! legacy INI file (`[settings]`), read as is so an existing deployment
//! keeps its settings (`docs/legacy-protocol.md` §5).
//!
//! Every key is a field of one subsystem's struct ([`sections`]), written
//! once with its doc comment, its default and its type; the structs are
//! flattened, so the file stays flat. Both syntaxes become one TOML table
//! laid over the base config's and go through serde once, so a value means
//! the same in either, and a bad value is reported with its file, line and
//! key and, from its type, what is accepted. Values the legacy client
//! clamped are clamped the same way, with a warning.

mod ini;
#[cfg(feature = "reference")]
pub mod reference;
pub mod sections;
pub mod values;

use std::path::{Path, PathBuf};

#[cfg(feature = "reference")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use sections::{
    CrashConfig, DeliveryConfig, HostConfig, JournalConfig, ProbesConfig, SocketConfig, SpoolConfig,
};

/// Where the daemon looks for a config when none is given, in order.
pub const DEFAULT_CONFIG_PATHS: [&str; 4] = [
    "/etc/telemetrics/telemd.toml",
    "/etc/telemetrics/telemetrics.conf",
    "/usr/share/defaults/telemetrics/telemd.toml",
    "/usr/share/defaults/telemetrics/telemetrics.conf",
];

/// The legacy default `tidheader`: the public collector checks this TID.
pub const DEFAULT_TIDHEADER: &str = "X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f";

/// What to do with records over the rate limit (any case in the file, as
/// the legacy client read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStrategy {
    /// Keep them in the spool for a later window.
    Spool,
    /// Remove them (journaled as dropped).
    Drop,
}

/// Body format of a POST to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
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

/// The effective configuration: one part per subsystem, each handed only
/// its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "reference", derive(JsonSchema))]
pub struct Config {
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub delivery: DeliveryConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub spool: SpoolConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub journal: JournalConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub socket: SocketConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub host: HostConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub crash: CrashConfig,
    #[allow(missing_docs)]
    #[serde(flatten)]
    pub probes: ProbesConfig,

    /// The file these values came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Its syntax.
    #[serde(skip)]
    pub format: Option<ConfigFormat>,
    /// Values that were clamped or ignored, as the legacy client did.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The name of the effective user.
fn current_user() -> Option<String> {
    let uid = nix::unistd::Uid::effective();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// One top-level `key = value` of a file, with the line it was on.
#[derive(Debug)]
struct Entry {
    key: String,
    value: toml::Value,
    line: usize,
}

impl Config {
    /// Defaults for a rootless developer setup: every path under `dir`,
    /// records appended to a local file instead of posted.
    pub fn dev(dir: &Path) -> Config {
        let mut c = Config::default();
        let url = format!("file://{}", dir.join("collector/records.jsonl").display());
        c.delivery.server = values::CollectorUrl::new(&url);
        c.socket.socket_path = dir.join("telem-0");
        c.spool.spool_dir = dir.join("spool");
        c.host.state_dir = dir.join("state");
        c.journal.journal_dir = dir.join("journal");
        c.host.opt_in_file = dir.join("opt-in");
        c.host.static_machine_id_file = dir.join("opt-in-static-machine-id");
        c.crash.no_privacy_filters_file = dir.join("opt-in-no-privacy-filters");
        // The crash handler keeps inbox files as whoever runs dev mode.
        let user = current_user().unwrap_or_else(|| "telemetry".into());
        c.crash.service_user = values::UserName::new(&user);
        c.probes.probes_dirs = vec![dir.join("probes")];
        // The kernel log and pstore of a dev setup are files under `dir`
        // (reading the real /dev/kmsg takes CAP_SYSLOG on most systems).
        c.probes.kernel_log_path = dir.join("kmsg");
        c.probes.sources_root = dir.join("sources");
        c.host.control_socket = dir.join("control.sock");
        c
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_str(base, &text, path)
    }

    /// Parses config text (either syntax) on top of `base`; `path` is only
    /// used in messages.
    pub fn parse_str(base: Config, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let format = detect_format(text);
        let mut warnings = Vec::new();
        let defaults = toml::Table::try_from(Config::default()).expect("config serializes");
        let entries = match format {
            ConfigFormat::Toml => parse_toml(text, path)?,
            ConfigFormat::LegacyIni => ini::parse(text, path, &defaults, &mut warnings)?,
        };
        let mut table = toml::Table::try_from(&base).expect("config serializes");
        for mut e in entries {
            if !defaults.contains_key(&e.key) {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    line: e.line,
                    key: e.key,
                });
            }
            legacy_normalize(&mut e, path, &mut warnings);
            if e.key == "probes" {
                merge_probe_tables(&mut table, &e, path)?;
            } else {
                // Tried alone on top of the base, so an error names its key
                // and line.
                let mut trial = table.clone();
                trial.insert(e.key.clone(), e.value.clone());
                if let Err(err) = toml::Value::Table(trial).try_into::<Config>() {
                    return Err(value_error(path, &e, &e.key, &e.value, &err));
                }
                table.insert(e.key, e.value);
            }
        }
        let mut cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Internal { source })?;
        cfg.source = Some(path.to_owned());
        cfg.format = Some(format);
        cfg.warnings = warnings;
        Ok(cfg)
    }

    /// The config as TOML: `config check` output and `config migrate`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

/// `[probes.NAME]` tables laid over the base's, key by key: a key the file
/// does not name keeps its base value.
fn merge_probe_tables(table: &mut toml::Table, e: &Entry, path: &Path) -> Result<(), ConfigError> {
    let toml::Value::Table(names) = &e.value else {
        return Err(value_error_text(
            path,
            e,
            "probes",
            &e.value,
            "[probes.NAME] tables",
        ));
    };
    for (name, keys) in names {
        let key = format!("probes.{name}");
        // A probe's name is its file's (`NAME.wasm`, `_` read as `-`): a
        // table under another spelling would never apply, and a pin in it
        // would be silently ignored.
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(value_error_text(
                path,
                e,
                &key,
                keys,
                "a probe name: 1 to 64 lowercase letters, digits and '-'",
            ));
        }
        let toml::Value::Table(keys) = keys else {
            return Err(value_error_text(
                path,
                e,
                &key,
                keys,
                &format!("a table [{key}]"),
            ));
        };
        for (k, v) in keys {
            let mut trial = table.clone();
            let probes = trial
                .entry("probes")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(probes) = probes else {
                unreachable!("the base serializes probes as a table")
            };
            let entry = probes
                .entry(name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(entry) = entry else {
                unreachable!("the base serializes each probe as a table")
            };
            entry.insert(k.clone(), v.clone());
            if let Err(err) = toml::Value::Table(trial.clone()).try_into::<Config>() {
                let full = format!("{key}.{k}");
                if err.message().contains("unknown field") {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        line: e.line,
                        key: full,
                    });
                }
                return Err(value_error(path, e, &full, v, &err));
            }
            *table = trial;
        }
    }
    Ok(())
}

/// What the legacy client clamped, clamped the same way; what it read in
/// any case, lowered.
fn legacy_normalize(e: &mut Entry, path: &Path, warnings: &mut Vec<String>) {
    if let ("rate_limit_strategy", toml::Value::String(s)) = (e.key.as_str(), &mut e.value) {
        *s = s.to_ascii_lowercase();
    }
    let toml::Value::Integer(n) = e.value else {
        return;
    };
    let mut warn = |c: i64, why: &str| {
        warnings.push(format!(
            "{}:{}: {} = {n} {why}; using {c}, as the legacy client did",
            path.display(),
            e.line,
            e.key
        ))
    };
    let clamped = match e.key.as_str() {
        "spool_process_time" => {
            let (lo, hi) = (
                sections::SpoolProcessTime::MIN as i64,
                sections::SpoolProcessTime::MAX as i64,
            );
            let c = n.clamp(lo, hi);
            if c != n {
                warn(c, &format!("is outside {lo}..{hi}"));
            }
            c
        }
        "record_expiry" | "spool_max_size" if n < -1 => {
            warn(-1, "is negative (-1: no limit)");
            -1
        }
        // Minutes and KiB, kept as seconds and bytes later: the caps keep
        // those in range.
        "record_expiry" => n.min(i64::MAX / 60),
        "spool_max_size" => n.min(i64::MAX / 1024),
        _ => return,
    };
    e.value = toml::Value::Integer(clamped);
}

fn value_error(
    path: &Path,
    e: &Entry,
    key: &str,
    value: &toml::Value,
    err: &toml::de::Error,
) -> ConfigError {
    // serde says "invalid value: integer `75`, expected an integer in
    // 0..59"; the value is shown already, the rest is what is accepted.
    let msg = err.message();
    let expected = msg.rsplit_once("expected ").map_or(msg, |(_, x)| x);
    let expected = match expected.trim_end_matches('.') {
        "a boolean" => "true or false",
        "u64" | "u32" | "usize" => "a non-negative integer",
        "i64" | "i32" => "an integer",
        other => other,
    };
    value_error_text(path, e, key, value, expected)
}

fn value_error_text(
    path: &Path,
    e: &Entry,
    key: &str,
    value: &toml::Value,
    expected: &str,
) -> ConfigError {
    ConfigError::Value {
        path: path.to_owned(),
        line: e.line,
        key: key.to_owned(),
        value: value.to_string(),
        expected: expected.trim_end_matches('.').to_owned(),
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
    let table: std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
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
            value: v.into_inner(),
        })
        .collect();
    entries.sort_by_key(|e| e.line);
    Ok(entries)
}

/// Paths that must not be empty (an empty one would mean the working
/// directory).
pub(crate) mod non_empty {
    use std::path::PathBuf;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    /// One path.
    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(D::Error::custom("expected a non-empty path"));
        }
        Ok(s.into())
    }

    /// A list of paths.
    pub fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        let v = strings(d)?;
        Ok(v.into_iter().map(PathBuf::from).collect())
    }

    /// A list of non-empty strings.
    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.iter().any(String::is_empty) {
            return Err(D::Error::custom("expected a list without empty items"));
        }
        Ok(v)
    }

    /// An optional list of paths (`[probes.NAME]` keys).
    pub fn opt_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
        paths(d).map(Some)
    }

    /// An optional list of non-empty strings.
    pub fn opt_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        strings(d).map(Some)
    }
}

/// A config that cannot be used, with what to fix and where.
#[derive(Debug, Error)]
#[allow(missing_docs)]
pub enum ConfigError {
    #[error("cannot read config {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// Each key was accepted alone but the whole was not: a bug here.
    #[error("the config's keys do not fit together")]
    Internal {
        #[source]
        source: toml::de::Error,
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
        assert_eq!(c.socket.socket_path, Path::new("/run/telem-0"));
        assert_eq!(c.delivery.record_expiry, 1200);
        assert_eq!(c.spool.spool_max_size, 5120);
        assert_eq!(c.delivery.spool_process_time, 120);
        assert_eq!(c.delivery.record_burst_limit, 1000);
        assert_eq!(c.delivery.record_window_length, 15);
        assert_eq!(c.delivery.byte_burst_limit, -1);
        assert_eq!(c.delivery.byte_window_length, 20);
        assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Spool);
        assert!(
            c.delivery.rate_limit_enabled
                && c.host.daemon_recycling_enabled
                && c.delivery.record_server_delivery_enabled
        );
        assert!(!c.delivery.record_retention_enabled);
        assert_eq!(c.delivery.tidheader, DEFAULT_TIDHEADER);
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
        assert_eq!(c.delivery.server, "https://collector.example/v2/collector");
        assert_eq!(c.spool.spool_dir, Path::new("/tmp/spool"));
        assert_eq!(c.delivery.record_burst_limit, -1);
        assert_eq!(c.delivery.byte_burst_limit, 4096);
        assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
        assert_eq!(c.socket.socket_mode, 0o660);
        assert_eq!(
            c.probes.probes_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.delivery.post_format, PostFormat::Json);
        assert!(c.delivery.record_retention_enabled);
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
        assert!(
            matches!(
                &e,
                ConfigError::UnknownKey { path, line: 2, key }
                    if path == Path::new("/etc/telemetrics/telemd.toml") && key == "spool_dirr"
            ),
            "{e}"
        );
        let e = parse("a = 1\nserver = = 2\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn a_probe_table_must_be_named_as_probes_are() {
        let e = parse("[probes.my_probe]\nsha256 = \"00\"\n").unwrap_err();
        assert!(e.to_string().contains("probes.my_probe"), "{e}");
        assert!(
            e.to_string().contains("lowercase letters, digits and '-'"),
            "{e}"
        );
        assert!(parse("[probes.my-probe]\nenabled = false\n").is_ok());
    }

    #[test]
    fn legacy_clamping() {
        let c =
            parse("spool_process_time = 30\nrecord_expiry = -7\nspool_max_size = -3\n").unwrap();
        assert_eq!(c.delivery.spool_process_time, 120);
        assert_eq!(c.delivery.record_expiry, -1);
        assert_eq!(c.spool.spool_max_size, -1);
        // Each clamp is said, with its line and key.
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains(":1:") && c.warnings[0].contains("120..300"),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[1].contains(":2: record_expiry = -7"),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[2].contains(":3: spool_max_size = -3"),
            "{:?}",
            c.warnings
        );
        let c = parse("spool_process_time = 9000\n").unwrap();
        assert_eq!(c.delivery.spool_process_time, 300);
        let c = parse(&format!("record_expiry = {}\n", i64::MAX)).unwrap();
        assert_eq!(c.delivery.record_expiry, i64::MAX / 60);
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
        assert_eq!(c.spool.spool_max_size, 1024);
        assert_eq!(
            c.delivery.spool_process_time, 300,
            "clamped like the legacy client"
        );
        assert_eq!(c.delivery.record_burst_limit, 100);
        assert_eq!(c.delivery.record_window_length, 5);
        assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
        assert!(c.delivery.rate_limit_enabled);
        assert!(!c.host.daemon_recycling_enabled);
        assert!(c.delivery.record_retention_enabled);
        assert_eq!(c.delivery.cainfo, None);
        assert_eq!(c.delivery.tidheader, DEFAULT_TIDHEADER);
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
        assert_eq!(back.spool.spool_max_size, c.spool.spool_max_size);
        assert_eq!(
            back.delivery.rate_limit_strategy,
            c.delivery.rate_limit_strategy
        );
        assert_eq!(back.socket.socket_mode, c.socket.socket_mode);
        assert_eq!(back.delivery.cainfo, None);
        assert_eq!(back.probes.probes_dirs, c.probes.probes_dirs);
    }

    #[test]
    fn shipped_grants_are_kept_unless_a_key_replaces_them() {
        let c = parse("").unwrap();
        let cs = &c.probes.probes["crash-symbolizer"];
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
        let cs = &c.probes.probes["crash-symbolizer"];
        assert_eq!(cs.crashes, Some(false), "the admin's key wins");
        assert!(cs.read_paths.is_some(), "keys not named stay as shipped");
        let back = parse(&Config::default().to_toml()).unwrap();
        assert_eq!(
            back.probes.probes,
            Config::default().probes.probes,
            "the shipped default config carries them"
        );
    }

    #[test]
    fn security_keys_are_parsed_and_checked() {
        let c = parse("cfg_allowed_dirs = [\"/etc/a\"]\nmax_records_per_hour = 60\nmax_component_bytes = 1048576\n").unwrap();
        assert_eq!(c.delivery.cfg_allowed_dirs, [PathBuf::from("/etc/a")]);
        assert_eq!(c.probes.max_records_per_hour, 60);
        assert_eq!(c.probes.max_component_bytes, 1 << 20);
        let d = Config::default();
        assert_eq!(
            d.delivery.cfg_allowed_dirs,
            [PathBuf::from("/etc/telemetrics")]
        );
        assert_eq!(d.probes.max_records_per_hour, 1000);
        assert_eq!(d.probes.max_component_bytes, 16 << 20);
        assert!(parse("max_component_bytes = 10\n").is_err());
        assert_eq!(
            parse("probe_min_interval_secs = 5\n")
                .unwrap()
                .probes
                .probe_min_interval_secs,
            5
        );
        assert_eq!(d.probes.probe_min_interval_secs, 60);
        assert!(parse("probe_min_interval_secs = 0\n").is_err());
    }

    #[test]
    fn probe_tables_are_parsed_and_checked() {
        let c = parse(
            "spool_dir = \"/s\"\n\n[probes.hello]\nenabled = false\n\n[probes.disk]\nread_paths = [\"/proc/mounts\"]\nclassifications = [\"org.example/disk/*\"]\nmemory_limit_mib = 16\ntimeout_ms = 500\nmax_records_per_hour = 3\n",
        )
        .unwrap();
        assert_eq!(c.probes.probes["hello"].enabled, Some(false));
        let d = &c.probes.probes["disk"];
        assert_eq!(
            d.read_paths.as_deref(),
            Some(&[PathBuf::from("/proc/mounts")][..])
        );
        assert_eq!(
            d.classifications.as_deref(),
            Some(&["org.example/disk/*".to_string()][..])
        );
        assert_eq!(
            (
                d.memory_limit_mib.map(|n| n.get()),
                d.timeout_ms.map(|n| n.get()),
                d.max_records_per_hour.map(|n| n.get())
            ),
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
            &c.socket.socket_path,
            &c.spool.spool_dir,
            &c.host.state_dir,
            &c.journal.journal_dir,
            &c.host.opt_in_file,
            &c.host.control_socket,
        ] {
            assert!(p.starts_with("/tmp/dev"), "{}", p.display());
        }
        assert!(c.delivery.server.starts_with("file:///tmp/dev/"));
    }

    #[test]
    fn review_findings_hold() {
        // Any case, as the legacy client read it.
        let c = parse("rate_limit_strategy = \"dRoP\"\n").unwrap();
        assert_eq!(c.delivery.rate_limit_strategy, RateLimitStrategy::Drop);
        // Integer keys say so in words, with their range.
        let e = parse("spool_process_time = \"soon\"\n").unwrap_err();
        assert!(
            e.to_string().contains("expected an integer in 120..300"),
            "{e}"
        );
        // Empty items in a probe's lists are refused.
        let e = parse("[probes.disk]\nread_paths = [\"\"]\n").unwrap_err();
        assert!(e.to_string().contains("probes.disk.read_paths"), "{e}");
        let e = parse("[probes.disk]\nclassifications = [\"\"]\n").unwrap_err();
        assert!(e.to_string().contains("probes.disk.classifications"), "{e}");
        // And an I/O error keeps its cause.
        let e = Config::load_file(Config::default(), Path::new("/nonexistent/x.toml")).unwrap_err();
        let text = crate::error_text::Chain(&e).to_string();
        assert!(
            text.contains("cannot read config") && text.contains("No such file"),
            "{text}"
        );
    }
}
