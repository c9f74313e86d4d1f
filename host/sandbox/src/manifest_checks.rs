//! What a manifest and a component must be before the host keeps them:
//! lists and strings no larger than any real probe needs, sources the
//! host can serve, and a contract version it speaks. Beside `shape.rs`,
//! which checks the component's code before it is compiled.

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::load_error::LoadFailure;
use crate::probe_log::{escape, FIELD_CAP};
use crate::{grants, Manifest, Source, ACCEPTED_MINORS, MAX_MANIFEST_ITEMS, MAX_MANIFEST_STRING};

/// Refuses a manifest whose lists or strings are larger than any real
/// probe needs: it is kept in memory and shown in logs and `telemctl`.
pub(crate) fn check_manifest_size(m: &Manifest) -> Result<(), LoadFailure> {
    let lists = [
        ("read paths", m.read_paths.len()),
        ("classifications", m.classifications.len()),
        ("triggers", m.triggers.len()),
        ("sources", m.sources.len()),
    ];
    if let Some(&(what, count)) = lists.iter().find(|(_, n)| *n > MAX_MANIFEST_ITEMS) {
        return Err(LoadFailure::ManifestList { what, count });
    }
    let longest = [&m.version, &m.description]
        .into_iter()
        .chain(&m.read_paths)
        .chain(&m.classifications)
        .chain(m.sources.iter().flat_map(|s| {
            match s {
                Source::Files(f) => vec![&f.dir, &f.pattern],
                Source::Journal(j) => j
                    .matches
                    .iter()
                    .chain(&j.privacy_gated)
                    .flatten()
                    .chain(&j.fields)
                    .collect(),
                Source::KernelLog(_) => vec![],
            }
        }))
        .map(String::len)
        .max()
        .unwrap_or(0);
    if longest > MAX_MANIFEST_STRING {
        return Err(LoadFailure::ManifestString(longest));
    }
    check_sources(&m.sources)
}

/// A journal field name: upper-case letters, digits and `_`, not starting
/// with a digit, at most 64 bytes (journald's own rule).
fn is_journal_field(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 64
        && !f.starts_with(|c: char| c.is_ascii_digit())
        && f.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// One kernel log source at most (two would read the log twice and share
/// one cursor), each `files` source once, each pattern one the host takes.
fn check_sources(sources: &[Source]) -> Result<(), LoadFailure> {
    let refuse = |why: String| Err(LoadFailure::ManifestSources(why));
    let logs = sources
        .iter()
        .filter(|s| matches!(s, Source::KernelLog(_)))
        .count();
    if logs > 1 {
        return refuse(format!("{logs} kernel-log sources (at most one)"));
    }
    let journals: Vec<&crate::JournalSource> = sources
        .iter()
        .filter_map(|s| match s {
            Source::Journal(j) => Some(j),
            _ => None,
        })
        .collect();
    if journals.len() > 1 {
        return refuse(format!("{} journal sources (at most one)", journals.len()));
    }
    for j in journals {
        let terms = j.matches.iter().chain(&j.privacy_gated).flatten();
        let count = terms.clone().count() + j.fields.len();
        if count > MAX_MANIFEST_ITEMS {
            return refuse(format!(
                "the journal source names {count} terms and fields (at most {MAX_MANIFEST_ITEMS})"
            ));
        }
        for t in terms {
            let field = t.split_once('=').map(|(f, _)| f);
            if !field.is_some_and(is_journal_field) {
                return refuse(format!(
                    "journal match {}: not FIELD=value",
                    escape(t, FIELD_CAP)
                ));
            }
        }
        if j.matches.is_empty() || j.matches.iter().chain(&j.privacy_gated).any(Vec::is_empty) {
            return refuse(
                "a journal source without matches, or an empty match group (it would match every entry)".into(),
            );
        }
        if let Some(f) = j.fields.iter().find(|f| !is_journal_field(f)) {
            return refuse(format!(
                "journal field {}: not a field name",
                escape(f, FIELD_CAP)
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in sources {
        if let Source::Files(f) = s {
            if let Some(why) = grants::files_pattern_refusal(&f.pattern) {
                return refuse(format!("{}: {why}", escape(&f.pattern, FIELD_CAP)));
            }
            if !seen.insert((&f.dir, &f.pattern)) {
                return refuse(format!(
                    "files {} {} named twice",
                    escape(&f.dir, FIELD_CAP),
                    escape(&f.pattern, FIELD_CAP)
                ));
            }
        }
    }
    Ok(())
}

/// Refuses components built against a contract this host does not speak.
pub(crate) fn check_contract(engine: &Engine, component: &Component) -> Result<(), LoadFailure> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("telemetrics:probe/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            let accepted = ACCEPTED_MINORS
                .iter()
                .any(|m| version == *m || version.starts_with(&format!("{m}.")));
            if !accepted {
                return Err(LoadFailure::Contract {
                    import: name.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_larger_than_any_real_probe_needs_are_refused() {
        let ok = Manifest {
            name: "p".into(),
            version: "1".into(),
            description: "d".into(),
            classifications: vec!["a/p/*".into(); MAX_MANIFEST_ITEMS],
            triggers: vec![],
            read_paths: vec!["/usr/share".into(); MAX_MANIFEST_ITEMS],
            max_records_per_hour: 1,
            sources: vec![],
        };
        check_manifest_size(&ok).unwrap();
        let mut long_list = ok.clone();
        long_list.read_paths.push("/usr/share".into());
        assert!(matches!(
            check_manifest_size(&long_list),
            Err(LoadFailure::ManifestList {
                what: "read paths",
                count: 65
            })
        ));
        let kmsg = || {
            Source::KernelLog(crate::BatchLimits {
                max_items: 0,
                max_bytes: 0,
            })
        };
        let files = |p: &str| {
            Source::Files(crate::FilesSource {
                dir: "/var/x".into(),
                pattern: p.into(),
                limits: crate::BatchLimits {
                    max_items: 0,
                    max_bytes: 0,
                },
            })
        };
        let with = |sources: Vec<Source>| Manifest {
            sources,
            ..ok.clone()
        };
        let journal = |matches: Vec<Vec<&str>>, fields: Vec<&str>| {
            Source::Journal(crate::JournalSource {
                matches: matches
                    .into_iter()
                    .map(|g| g.into_iter().map(String::from).collect())
                    .collect(),
                privacy_gated: vec![],
                this_boot: true,
                fields: fields.into_iter().map(String::from).collect(),
                limits: crate::BatchLimits {
                    max_items: 0,
                    max_bytes: 0,
                },
            })
        };
        let good_journal = || journal(vec![vec!["EXIT_CODE=exited"]], vec!["MESSAGE"]);
        check_manifest_size(&with(vec![
            kmsg(),
            files("a/*"),
            files("*"),
            good_journal(),
        ]))
        .unwrap();
        for bad in [
            vec![good_journal(), good_journal()],
            vec![journal(vec![vec![]], vec!["MESSAGE"])],
            vec![journal(vec![], vec!["MESSAGE"])],
            vec![journal(vec![vec!["exit_code=exited"]], vec!["MESSAGE"])],
            vec![journal(vec![vec!["NO_EQUALS"]], vec!["MESSAGE"])],
            vec![journal(vec![vec!["A=b"]], vec!["message"])],
        ] {
            assert!(
                matches!(
                    check_manifest_size(&with(bad.clone())),
                    Err(LoadFailure::ManifestSources(_))
                ),
                "{bad:?}"
            );
        }
        for bad in [
            vec![kmsg(), kmsg()],
            vec![files("*"), files("*")],
            vec![files("a/b/c/d")],
            vec![files("../*")],
            vec![files("")],
        ] {
            assert!(
                matches!(
                    check_manifest_size(&with(bad.clone())),
                    Err(LoadFailure::ManifestSources(_))
                ),
                "{bad:?}"
            );
        }
        let mut long_string = ok.clone();
        long_string.description = "x".repeat(MAX_MANIFEST_STRING + 1);
        assert!(matches!(
            check_manifest_size(&long_string),
            Err(LoadFailure::ManifestString(1025))
        ));
    }
}
