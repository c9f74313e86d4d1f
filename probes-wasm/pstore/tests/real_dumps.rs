//! Real pstore dumps from public reports (`tests/fixtures/pstore/`, each
//! citing its source): a dump pasted as its parts, newest first (as the
//! kernel numbers them), is split at its `PanicN#M PartK` headers, the
//! parts joined as the probe joins a dump's files, and the records
//! compared with `NAME.expected`.
//!
//! `BLESS=1 cargo test -p pstore --test real_dumps` writes the `.expected`
//! files from the current code; read the diff before keeping it.

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pstore")
}

fn body(text: &str) -> String {
    let mut out = String::new();
    let mut in_body = false;
    for l in text.split_inclusive('\n') {
        if in_body {
            out.push_str(l);
        } else if l.trim_end() == "# ---" {
            in_body = true;
        }
    }
    out
}

/// The parts of a pasted dump: (part number, text with its header).
fn parts(text: &str) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = Vec::new();
    for l in text.split_inclusive('\n') {
        let line = l.trim_end();
        if pstore::is_part_header(line) {
            let n = line.rsplit("Part").next().unwrap().parse().unwrap();
            out.push((n, String::new()));
        }
        out.last_mut()
            .expect("a dump starts with its header")
            .1
            .push_str(l);
    }
    out
}

fn render(text: &str) -> String {
    let joined = pstore::join_parts(parts(&body(text)));
    let mut out = String::new();
    for r in pstore::records(&joined) {
        out.push_str(&format!(
            "=== {} {}\n{}",
            r.classification, r.severity, r.payload
        ));
    }
    out
}

#[test]
fn each_real_dump_gives_exactly_its_expected_records() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    assert!(names.len() >= 2);
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for path in names {
        let got = render(&std::fs::read_to_string(&path).unwrap());
        assert!(!got.is_empty(), "{}: no record", path.display());
        let expected = path.with_extension("expected");
        if bless {
            std::fs::write(&expected, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
