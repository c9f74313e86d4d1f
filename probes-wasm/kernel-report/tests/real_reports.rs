//! Real kernel reports from public bug reports (`tests/fixtures/kernel-log/`,
//! each citing its source) through the assembler and the payload code,
//! each against the records it must give (`NAME.expected`): the
//! classification, severity and every payload line. Lines are fed as the
//! host hands them, with the kernel time growing by 1 ms per line.
//!
//! `BLESS=1 cargo test -p kernel-report --test real_reports` writes the
//! `.expected` files from the current code; read the diff before keeping it.

use std::path::{Path, PathBuf};

use kernel_report::assemble::Assembler;
use kernel_report::repeats::Repeats;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel-log")
}

/// The lines of a fixture after its `# ---` header end.
pub fn body(text: &str) -> Vec<&str> {
    let mut lines = text.lines();
    for l in lines.by_ref() {
        if l == "# ---" {
            break;
        }
    }
    lines.collect()
}

fn render(text: &str) -> String {
    let mut asm = Assembler::default();
    let mut reports = Vec::new();
    for (i, line) in body(text).into_iter().enumerate() {
        asm.push(1_000_000 + i as u64 * 1000, line, &mut reports);
    }
    asm.finish(&mut reports);
    let mut repeats = Repeats::default();
    let mut out = String::new();
    for r in kernel_report::records_of(reports, &mut repeats, 0) {
        out.push_str(&format!(
            "=== {} {}\n{}",
            r.classification, r.severity, r.payload
        ));
    }
    out
}

#[test]
fn each_real_report_gives_exactly_its_expected_records() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "{} fixtures", names.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for path in names {
        let got = render(&std::fs::read_to_string(&path).unwrap());
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
