//! The key reference, made from the one definition of each key (its field,
//! doc comment, type and default): `telemctl config defaults` prints it as
//! comments above each default, and the README's key table is checked
//! against [`markdown_table`] by a test.

use schemars::Schema;

use super::sections::{
    CrashConfig, DeliveryConfig, HostConfig, JournalConfig, ProbesConfig, SocketConfig, SpoolConfig,
};
use super::Config;
use crate::probe_policy::ProbePolicy;

/// One key as documented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key.
    pub key: String,
    /// Its doc comment, as one paragraph.
    pub doc: String,
    /// Its accepted range, when its type has one (`0..59`).
    pub range: Option<String>,
    /// Its default, as TOML.
    pub default: String,
}

/// Every key, by subsystem, in the order of their structs' fields' names.
pub fn keys() -> Vec<(&'static str, Vec<KeyDoc>)> {
    let defaults = toml::Table::try_from(Config::default()).expect("config serializes");
    let sections = [
        ("delivery", schemars::schema_for!(DeliveryConfig)),
        ("spool", schemars::schema_for!(SpoolConfig)),
        ("journal", schemars::schema_for!(JournalConfig)),
        ("native socket", schemars::schema_for!(SocketConfig)),
        ("daemon", schemars::schema_for!(HostConfig)),
        ("crash handler", schemars::schema_for!(CrashConfig)),
        ("probes", schemars::schema_for!(ProbesConfig)),
    ];
    sections
        .into_iter()
        .map(|(name, schema)| (name, section_keys(&schema, &defaults)))
        .collect()
}

fn section_keys(schema: &Schema, defaults: &toml::Table) -> Vec<KeyDoc> {
    documented(schema, |key| {
        let default = match defaults.get(key) {
            Some(toml::Value::Table(_)) => "(tables)".to_owned(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        (key.to_owned(), default)
    })
}

/// Each property of a struct's schema as a [`KeyDoc`]: its doc comment
/// (required) and range from the schema, its name and default from `name`.
fn documented(schema: &Schema, name: impl Fn(&str) -> (String, String)) -> Vec<KeyDoc> {
    let props = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .expect("a struct's schema has properties");
    props
        .iter()
        .map(|(key, p)| {
            let doc = p
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or_else(|| panic!("config key {key} has no doc comment"));
            let (key, default) = name(key);
            KeyDoc {
                key,
                doc: doc.split_whitespace().collect::<Vec<_>>().join(" "),
                range: range_of(schema, p),
                default,
            }
        })
        .collect()
}

/// The accepted range of a property, from its type's schema (also when
/// the type is optional: `anyOf` the type and null).
fn range_of(schema: &Schema, p: &serde_json::Value) -> Option<String> {
    let resolve = |v: &serde_json::Value| -> Option<serde_json::Value> {
        let target = match v
            .get("$ref")
            .and_then(|r| r.as_str())
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            Some(name) => schema.get("$defs")?.get(name)?,
            None => v,
        };
        match (target.get("minimum"), target.get("maximum")) {
            (Some(lo), Some(hi)) => Some(format!("{lo}..{hi}").into()),
            _ => None,
        }
    };
    let found = resolve(p).or_else(|| p.get("anyOf")?.as_array()?.iter().find_map(resolve))?;
    found.as_str().map(str::to_owned)
}

/// The keys of a `[probes.NAME]` table, as `probes.NAME.KEY`. Every one is
/// optional: absent, the probe's manifest and the host's defaults decide.
pub fn probe_table_keys() -> Vec<KeyDoc> {
    documented(&schemars::schema_for!(ProbePolicy), |key| {
        (format!("probes.NAME.{key}"), "(unset)".to_owned())
    })
}

/// The README's key table.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| part | key | default | meaning |\n|------|-----|---------|---------|\n");
    for (section, keys) in keys() {
        for k in keys {
            let range = k.range.map(|r| format!(" ({r})")).unwrap_or_default();
            out.push_str(&format!(
                "| {section} | `{}` | `{}` | {}{range} |\n",
                k.key,
                k.default.replace('|', "\\|"),
                k.doc.replace('|', "\\|")
            ));
        }
    }
    for k in probe_table_keys() {
        let range = k.range.map(|r| format!(" ({r})")).unwrap_or_default();
        out.push_str(&format!(
            "| probe table | `{}` | {} | {}{range} |\n",
            k.key,
            k.default,
            k.doc.replace('|', "\\|")
        ));
    }
    out
}

/// The defaults as a config file, each key under its doc comment.
pub fn commented_defaults() -> String {
    let c = Config::default();
    let defaults = toml::Table::try_from(&c).expect("config serializes");
    let mut out = String::new();
    for (section, keys) in keys() {
        out.push_str(&format!("\n# ---- {section} ----\n"));
        for k in keys {
            if k.key == "probes" {
                continue;
            }
            out.push('\n');
            for line in wrap(&k.doc, 76) {
                out.push_str(&format!("# {line}\n"));
            }
            if let Some(r) = &k.range {
                out.push_str(&format!("# Range: {r}.\n"));
            }
            out.push_str(&format!("{} = {}\n", k.key, k.default));
        }
    }
    // The tables last: TOML puts nothing at top level after a table.
    if let Some(probes) = defaults.get("probes") {
        let doc = keys()
            .into_iter()
            .flat_map(|(_, k)| k)
            .find(|k| k.key == "probes")
            .map(|k| k.doc)
            .unwrap_or_default();
        out.push('\n');
        for line in wrap(&doc, 76) {
            out.push_str(&format!("# {line}\n"));
        }
        for k in probe_table_keys() {
            let key = k.key.trim_start_matches("probes.NAME.");
            let range = k.range.map(|r| format!(" Range: {r}.")).unwrap_or_default();
            let text = format!("{key}: {}{range}", k.doc);
            for (i, line) in wrap(&text, 74).into_iter().enumerate() {
                let indent = if i == 0 { "" } else { "  " };
                out.push_str(&format!("#   {indent}{line}\n"));
            }
        }
        let mut t = toml::Table::new();
        t.insert("probes".into(), probes.clone());
        out.push_str(&toml::to_string(&t).expect("tables serialize"));
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_once() {
        let all: Vec<String> = keys()
            .into_iter()
            .flat_map(|(_, k)| k)
            .map(|k| k.key)
            .collect();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a key in two sections: {all:?}");
        let mut keys_of_file: Vec<&String> = defaults.keys().collect();
        keys_of_file.sort();
        assert_eq!(sorted.iter().collect::<Vec<_>>(), keys_of_file);
    }

    #[test]
    fn commented_defaults_are_the_defaults() {
        let text = commented_defaults();
        let c =
            Config::parse_str(Config::default(), &text, std::path::Path::new("defaults")).unwrap();
        assert_eq!(c.delivery, Config::default().delivery);
        assert_eq!(c.probes, Config::default().probes);
        assert_eq!(c.crash, Config::default().crash);
        assert!(
            text.contains("# Range: 0..59.\nrecord_window_length = 15\n"),
            "{text}"
        );
    }

    #[test]
    fn the_readme_table_is_the_definition() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let begin = "<!-- config-keys: begin (generated from host/core/src/config/sections.rs; a test checks it) -->\n";
        let end = "<!-- config-keys: end -->";
        let start = readme
            .find(begin)
            .expect("README has the key table markers")
            + begin.len();
        let stop = readme[start..].find(end).expect("end marker") + start;
        let table = markdown_table();
        assert!(
            readme[start..stop] == table,
            "README.md's key table is out of date; replace it with:\n{table}"
        );
    }
}
