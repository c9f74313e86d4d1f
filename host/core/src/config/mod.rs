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
    /// OTLP/HTTP protobuf log records, many to a request, for an
    /// OpenTelemetry Collector.
    Otlp,
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
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    value: toml::Value,
    line: usize,
    /// The lines of the keys of a `[probes.NAME]` table, by `NAME.key`
    /// (an error names the key's own line, not the table's).
    inner_lines: std::collections::HashMap<String, usize>,
}

impl Entry {
    /// This entry, its line that of its inner key `inner` if known.
    fn at(&self, inner: &str) -> Entry {
        Entry {
            line: self.inner_lines.get(inner).copied().unwrap_or(self.line),
            ..self.clone()
        }
    }
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
        // An author can try signing without root: a key of their own in
        // a directory of their own.
        c.probes.trusted_keys_dir = dir.join("trusted-keys");
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
                let at = e.at(&format!("{name}.{k}"));
                if err.message().contains("unknown field") {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        line: at.line,
                        key: full,
                    });
                }
                return Err(value_error(path, &at, &full, v, &err));
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
            inner_lines: if k.get_ref() == "probes" {
                probe_key_lines(text)
            } else {
                Default::default()
            },
            key: k.into_inner(),
            value: v.into_inner(),
        })
        .collect();
    entries.sort_by_key(|e| e.line);
    Ok(entries)
}

/// The line of each key of the `[probes.NAME]` tables, by `NAME.key`;
/// empty if they are not all tables (that error is the entry's own).
fn probe_key_lines(text: &str) -> std::collections::HashMap<String, usize> {
    type Keys = std::collections::BTreeMap<toml::Spanned<String>, toml::Value>;
    #[derive(serde::Deserialize)]
    struct Probes {
        probes: std::collections::BTreeMap<String, Keys>,
    }
    let Ok(p) = toml::from_str::<Probes>(text) else {
        return Default::default();
    };
    p.probes
        .into_iter()
        .flat_map(|(name, keys)| {
            keys.into_keys()
                .map(|k| {
                    (
                        format!("{name}.{}", k.get_ref()),
                        line_of(text, k.span().start),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
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
mod tests;
