//! Errors as one line for people: the error, then each of its causes.
//!
//! The convention every error type of this workspace keeps: a message
//! says what failed at its own level and never repeats its cause; the
//! cause is exposed as `source()` (or, for an error that only forwards
//! another, `#[error(transparent)]`). So the chain says each cause once,
//! and whoever shows an error to a person shows the chain: [`Chain`] in
//! a log line or a reply, [`one_line`] for `anyhow`'s chain in a `main`.

use std::error::Error;
use std::fmt;

/// Shows an error and its causes as `error: cause: cause`.
///
/// Use it wherever an error meets a person (a log line, a control
/// reply, a status field): `{e}` alone would drop the causes.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&one_line(chain(self.0)))
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `error: cause: cause`, each error of `chain` in turn (an empty message,
/// such as a bare wrapper's, is skipped).
pub fn one_line<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for e in chain {
        let text = e.to_string();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The causes of `e`, itself first.
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Reading {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading failed")]
    struct Outer(#[source] Reading);

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct Forwarding(Outer);

    fn outer() -> Outer {
        Outer(Reading {
            path: "/x",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        })
    }

    #[test]
    fn each_cause_once_in_order() {
        let e = outer();
        assert_eq!(
            Chain(&e).to_string(),
            "loading failed: cannot read /x: gone"
        );
        let f = Forwarding(outer());
        assert_eq!(
            Chain(&f).to_string(),
            "loading failed: cannot read /x: gone"
        );
        assert_eq!(one_line(chain(&e)), Chain(&e).to_string());
    }

    #[test]
    fn a_cause_whose_text_the_message_holds_is_still_shown() {
        // No guessing by substring: a cause is said however its text looks.
        #[derive(Debug, thiserror::Error)]
        #[error("gone")]
        struct Same(#[source] std::io::Error);
        let e = Same(std::io::Error::other("gone"));
        assert_eq!(Chain(&e).to_string(), "gone: gone");
    }

    /// The fields of the error a `#[error(...)]` attribute at `lines[at]`
    /// describes that are its source: a tuple field or a named field
    /// marked `#[source]` or `#[from]`, or a field named `source`.
    fn source_fields(lines: &[&str], at: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut marked = false;
        for line in lines.iter().skip(at + 1).take(24) {
            let t = line.trim();
            if t.starts_with("#[error(") {
                break;
            }
            if let Some(open) = t.find('(') {
                let inner = &t[open + 1..];
                if inner.starts_with("#[source]") || inner.starts_with("#[from]") {
                    out.push("0".to_owned());
                }
            }
            let after_attr = t
                .strip_prefix("#[source]")
                .or_else(|| t.strip_prefix("#[from]"))
                .map(str::trim);
            match after_attr {
                Some("") => {
                    marked = true;
                    continue;
                }
                Some(rest) => {
                    if let Some((name, _)) = rest.split_once(':') {
                        out.push(name.trim_start_matches("pub ").trim().to_owned());
                    }
                }
                None => {}
            }
            // `name: Type,` or, on the variant's line, `V { a: A, source: B },`.
            let fields = t.rsplit_once('{').map_or(t, |(_, f)| f);
            for (n, part) in fields.split(',').enumerate() {
                let Some((name, _)) = part.split_once(':') else {
                    continue;
                };
                let name = name.trim().trim_start_matches("pub ").trim();
                let is_field = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if is_field && ((marked && n == 0) || name == "source") {
                    out.push(name.to_owned());
                }
            }
            marked = false;
            if t == "}" || t == "}," || t.ends_with("),") && !t.starts_with("#[") {
                break;
            }
        }
        out
    }

    /// The convention, checked on the workspace's sources: no `#[error]`
    /// message quotes the error's own source field (named `source`, or
    /// marked `#[source]` or `#[from]`, named or tuple), since [`Chain`]
    /// prints it after the message.
    #[test]
    fn no_error_message_quotes_its_source() {
        let host = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut offenders = Vec::new();
        let mut dirs = vec![host];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                // This file's own test text shows the forbidden forms.
                if path.extension().is_none_or(|x| x != "rs") || path.ends_with("error_text.rs") {
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    let Some(at) = line.find("#[error(\"") else {
                        continue;
                    };
                    let message = &line[at..];
                    for field in source_fields(&lines, i) {
                        let quoted = [format!("{{{field}}}"), format!("{{{field}:")];
                        if quoted.iter().any(|q| message.contains(q.as_str())) {
                            offenders.push(format!(
                                "{}:{}: {} (quotes its source `{field}`)",
                                path.display(),
                                i + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(files > 100, "only {files} sources found under host/");
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }

    /// The check sees the forms it forbids.
    #[test]
    fn the_source_fields_are_found_in_every_form() {
        let text = r#"
#[error("{file}: {reason}")]
pub struct LoadError {
    pub file: String,
    #[source]
    pub reason: Failure,
}
enum E {
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Named { what: String, source: std::io::Error },
    #[error("{path}")]
    Quiet {
        path: String,
        #[source] inner: Failure,
    },
}"#;
        let lines: Vec<&str> = text.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
        assert_eq!(source_fields(&lines, at("{file}: {reason}")), ["reason"]);
        assert_eq!(source_fields(&lines, at("read: {0}")), ["0"]);
        assert_eq!(source_fields(&lines, at("{what}: {source}")), ["source"]);
        assert_eq!(source_fields(&lines, at("\"{path}\"")), ["inner"]);
    }
}
