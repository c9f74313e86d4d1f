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

/// The signatures of a fixture's records, in order.
fn signatures(text: &str) -> Vec<String> {
    render(text)
        .lines()
        .filter_map(|l| l.strip_prefix("Signature : "))
        .map(str::to_owned)
        .collect()
}

/// The same reports on another machine, another boot: other CPU and pid
/// numbers, other addresses (KASLR, hashed pointers): every run of 8 or
/// more hex digits gets other digits, every `CPU: N` and `PID: N` another
/// number.
fn elsewhere(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = String::new();
        let mut run = String::new();
        let flush = |run: &mut String, l: &mut String| {
            if run.len() >= 8 {
                // The same length, other digits.
                l.extend(run.chars().map(|c| if c == '0' { '7' } else { '0' }));
            } else {
                l.push_str(run);
            }
            run.clear();
        };
        for c in line.chars() {
            if c.is_ascii_hexdigit() {
                run.push(c);
            } else {
                flush(&mut run, &mut l);
                l.push(c);
            }
        }
        flush(&mut run, &mut l);
        for key in ["CPU: ", "PID: "] {
            if let Some(at) = l.find(key) {
                let from = at + key.len();
                let digits = l[from..].bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 {
                    l.replace_range(from..from + digits, "4242");
                }
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn signatures_hold_across_machines_and_tell_reports_apart() {
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "txt") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let here = signatures(&text);
        let negative = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("negative");
        assert_eq!(
            here.is_empty(),
            negative,
            "{}: signatures {here:?}",
            path.display()
        );
        let moved = elsewhere(&text);
        assert!(
            negative || moved != text,
            "{}: nothing moved",
            path.display()
        );
        assert_eq!(
            here,
            signatures(&moved),
            "{}: moved addresses changed a signature",
            path.display()
        );
        for s in here {
            assert!(crash_signature::is_signature(&s), "{s}");
            seen.push((s, path.clone()));
        }
    }
    // Different real reports have different signatures, except the BERT
    // records, whose first line is all a signature can hold.
    let mut sym: Vec<&(String, PathBuf)> = seen
        .iter()
        .filter(|(s, _)| s.starts_with("sym1:"))
        .collect();
    assert!(sym.len() >= 15, "{} sym1 signatures", sym.len());
    sym.sort();
    for w in sym.windows(2) {
        assert_ne!(
            w[0].0,
            w[1].0,
            "{} and {}",
            w[0].1.display(),
            w[1].1.display()
        );
    }
}
