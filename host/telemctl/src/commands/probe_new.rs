//! `telemctl probe new NAME [--lang rust|python] [--dir DIR]`: a probe
//! project ready to build and `probe test`, so that an author starts from
//! something that loads instead of from a guess. The templates are in
//! `host/telemctl/templates/`; the SDK dependency is a path to this
//! checkout when telemctl runs from one, else the published version.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::table::shown;

/// The SDK version a generated Rust probe asks for when no checkout is at
/// hand (probe-sdk/Cargo.toml's; a unit test keeps them equal).
pub const SDK_VERSION: &str = "0.2.0";

/// The componentize-py a generated Python probe is built with (the one
/// scripts/build-python-probe.sh pins).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The probe contract this telemctl speaks, copied into a Python project
/// (componentize-py reads it).
const PROBE_WIT: &str = include_str!("../../../../wit/probe.wit");

/// `telemctl probe new`.
#[derive(clap::Args, Debug)]
pub struct ProbeNew {
    /// The probe's name: 1 to 64 lowercase letters, digits and '-' (its
    /// file will be NAME.wasm).
    pub name: String,
    /// The language of the probe.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to create it (default: ./NAME); must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The languages `probe new` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// A Rust crate on telemetrics-probe-sdk.
    Rust,
    /// A Python project for componentize-py.
    Python,
}

/// Writes the project and says what to run next.
pub fn create(p: &ProbeNew) -> anyhow::Result<()> {
    let name = &p.name;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !valid {
        bail!(
            "{} is not a probe name: 1 to 64 lowercase letters, digits and '-' (its file is NAME.wasm)",
            shown(name)
        );
    }
    // Cargo refuses a package name that starts with a digit.
    if p.lang == Lang::Rust && name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!(
            "{} starts with a digit, which cargo does not take as a crate name: choose another name (or --lang python)",
            shown(name)
        );
    }
    let dir = p.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} exists and is not empty: give another --dir",
            dir.display()
        );
    }
    let files = match p.lang {
        Lang::Rust => rust_files(name, &sdk_dependency()),
        Lang::Python => python_files(name),
    };
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created {} ({}):", dir.display(), lang_name(p.lang));
    for (rel, _) in &files {
        println!("  {rel}");
    }
    println!(
        "next: cd {} and follow README.md (build, then `telemctl probe test {name}.wasm`)",
        dir.display()
    );
    Ok(())
}

fn lang_name(l: Lang) -> &'static str {
    match l {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
    }
}

/// The SDK as a dependency line: this checkout's `probe-sdk` when
/// telemctl runs from that checkout's own build (`target/` inside it),
/// else the published version. A packaged telemctl never takes a path
/// that merely exists where it was once built (another user could have
/// made it).
fn sdk_dependency() -> String {
    let in_checkout = || -> Option<PathBuf> {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .ok()?;
        let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
        let sdk = checkout.join("probe-sdk");
        // The checkout's target/, or the one CARGO_TARGET_DIR named for
        // this build.
        let built_here = exe.starts_with(checkout.join("target"))
            || option_env!("CARGO_TARGET_DIR")
                .and_then(|t| Path::new(t).canonicalize().ok())
                .is_some_and(|t| exe.starts_with(t));
        (built_here && sdk.join("Cargo.toml").is_file()).then_some(sdk)
    };
    match in_checkout() {
        Some(p) => format!(
            "telemetrics-probe-sdk = {{ path = {} }}",
            toml_string(&p.display().to_string())
        ),
        None => format!("telemetrics-probe-sdk = \"{SDK_VERSION}\""),
    }
}

/// A TOML basic string (paths may hold quotes or backslashes).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn fill(template: &str, name: &str) -> String {
    let type_name: String = name
        .split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<String>()
        // Never one of the template's imports (`Probe`, `Record`, ...) or
        // a keyword (`Self`).
        + "Probe";
    template
        .replace("{{name}}", name)
        .replace("{{type_name}}", &type_name)
        .replace("{{file_stem}}", &name.replace('-', "_"))
        .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
}

fn rust_files(name: &str, sdk: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Cargo.toml",
            fill(include_str!("../../templates/rust-Cargo.toml"), name).replace("{{sdk}}", sdk),
        ),
        (
            "src/lib.rs",
            fill(include_str!("../../templates/rust-lib.rs"), name),
        ),
        (
            "README.md",
            fill(include_str!("../../templates/rust-README.md"), name),
        ),
        (".gitignore", "/target\n*.wasm\n".to_owned()),
    ]
}

fn python_files(name: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "app.py",
            fill(include_str!("../../templates/python-app.py"), name),
        ),
        (
            "README.md",
            fill(include_str!("../../templates/python-README.md"), name),
        ),
        (
            "python-limits.toml",
            include_str!("../../templates/python-limits.toml").to_owned(),
        ),
        ("wit/probe.wit", PROBE_WIT.to_owned()),
        (".gitignore", "*.wasm\n__pycache__/\n".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_sdk_version_is_the_sdks() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../probe-sdk/Cargo.toml"),
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(v["package"]["version"].as_str(), Some(SDK_VERSION));
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-python-probe.sh"),
        )
        .unwrap();
        assert!(
            script.contains(&format!(
                "COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n"
            )),
            "build-python-probe.sh pins another componentize-py"
        );
    }

    #[test]
    fn names_fill_every_placeholder() {
        for (name, ty) in [
            ("uptime", "UptimeProbe"),
            ("disk-usage-2", "DiskUsage2Probe"),
            ("probe", "ProbeProbe"),
            ("self", "SelfProbe"),
        ] {
            for (_, text) in rust_files(name, "telemetrics-probe-sdk = \"0\"")
                .into_iter()
                .chain(python_files(name))
            {
                assert!(!text.contains("{{"), "{name}: {text}");
                if text.contains("impl Probe for") {
                    assert!(text.contains(&format!("impl Probe for {ty} ")), "{text}");
                }
            }
        }
    }

    #[test]
    fn a_bad_name_or_a_full_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "a_b", "-x", &"a".repeat(65)] {
            let e = create(&ProbeNew {
                name: bad.into(),
                lang: Lang::Rust,
                dir: Some(t.path().join("x")),
            })
            .unwrap_err();
            assert!(e.to_string().contains("is not a probe name"), "{bad}: {e}");
        }
        let e = create(&ProbeNew {
            name: "9lives".into(),
            lang: Lang::Rust,
            dir: Some(t.path().join("x")),
        })
        .unwrap_err();
        assert!(e.to_string().contains("starts with a digit"), "{e}");
        std::fs::write(t.path().join("keep"), "mine").unwrap();
        let e = create(&ProbeNew {
            name: "ok".into(),
            lang: Lang::Python,
            dir: Some(t.path().to_owned()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(
            std::fs::read_to_string(t.path().join("keep")).unwrap(),
            "mine"
        );
    }
}
