//! Errors as one line for people: the error and each of its causes, each
//! said once. Errors here and in the crates below them differ in whether
//! their message already quotes their cause (a `thiserror` message with
//! `{source}`, or reqwest's), so a plain chain would say some causes twice.

use std::error::Error;

/// `error: cause: cause`, skipping a cause whose text the line already
/// holds.
pub fn one_line<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for e in chain {
        let text = e.to_string();
        if text.is_empty() || out.contains(&text) {
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
    #[error("cannot read {path}: {source}")]
    struct Quoting {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading failed")]
    struct Outer(#[source] Quoting);

    #[test]
    fn each_cause_once() {
        let e = Outer(Quoting {
            path: "/x",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        });
        assert_eq!(one_line(chain(&e)), "loading failed: cannot read /x: gone");
    }
}
