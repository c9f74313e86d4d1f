//! The legacy `telemetrics.conf` (INI, `[settings]`), read into the same
//! table a TOML file gives. INI values are all text; each is read as the
//! type its key has (from the defaults), the way the legacy client read it:
//! `1`/`0` as booleans too, path lists split on `:` or `,`.

use std::path::Path;

use super::{ConfigError, Entry};

pub(super) fn parse(
    text: &str,
    path: &Path,
    defaults: &toml::Table,
    warnings: &mut Vec<String>,
) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((k, v)) = trimmed.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line,
                message: format!("expected `key=value`, found {trimmed:?}"),
            });
        };
        let key = k.trim().to_owned();
        if section != "settings" {
            warnings.push(format!(
                "{}:{line}: key {key:?} is in section [{section}], not [settings]; ignored",
                path.display(),
            ));
            continue;
        }
        let value = typed(v.trim(), defaults.get(&key));
        entries.push(Entry {
            key,
            value,
            line,
            inner_lines: Default::default(),
        });
    }
    Ok(entries)
}

/// `text` as the type of `like`; text that does not read as that type stays
/// text, and the key's own type then says what it expected.
fn typed(text: &str, like: Option<&toml::Value>) -> toml::Value {
    let s = || toml::Value::String(text.to_owned());
    match like {
        Some(toml::Value::Integer(_)) => text.parse().map_or_else(|_| s(), toml::Value::Integer),
        Some(toml::Value::Boolean(_)) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => s(),
        },
        Some(toml::Value::Array(_)) => toml::Value::Array(
            text.split([':', ','])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| toml::Value::String(p.to_owned()))
                .collect(),
        ),
        _ => s(),
    }
}
