//! `telemctl config check|defaults|migrate`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use telem_core::config::{Config, ConfigFormat};

/// `telemctl config` verbs.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a config (TOML or legacy INI) and print the effective values.
    Check {
        /// The file (default: -f, else the daemon's lookup order).
        file: Option<PathBuf>,
    },
    /// Print the built-in defaults as TOML (the packaged default config).
    Defaults,
    /// Print a legacy telemetrics.conf as this daemon's TOML.
    Migrate {
        /// The legacy file (default: /etc/telemetrics/telemetrics.conf).
        file: Option<PathBuf>,
    },
}

/// Runs a config verb; `explicit` is telemctl's own `-f`.
pub fn run(explicit: Option<&Path>, cmd: ConfigCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Check { file } => check(file.as_deref().or(explicit), json),
        ConfigCmd::Defaults => defaults(),
        ConfigCmd::Migrate { file } => migrate(file.as_deref()),
    }
}

fn check(file: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let c = super::load_config(file)?;
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    let from = match (&c.source, c.format) {
        (Some(p), Some(ConfigFormat::LegacyIni)) => format!("{} (legacy INI)", p.display()),
        (Some(p), _) => p.display().to_string(),
        (None, _) => "built-in defaults (no config file found)".into(),
    };
    if json {
        /// The effective values and where they came from.
        #[derive(serde::Serialize)]
        struct Checked<'a> {
            source: Option<&'a Path>,
            format: Option<ConfigFormat>,
            #[serde(flatten)]
            config: &'a Config,
        }
        super::print_json(&Checked {
            source: c.source.as_deref(),
            format: c.format,
            config: &c,
        });
    } else {
        println!("# {from}: valid. Effective values:\n{}", c.to_toml());
    }
    Ok(())
}

fn defaults() -> anyhow::Result<()> {
    print!(
        "# telemd defaults, each key under what it means; copy to\n# /etc/telemetrics/telemd.toml and keep the keys to change.\n{}",
        telem_core::config::reference::commented_defaults()
    );
    Ok(())
}

fn migrate(file: Option<&Path>) -> anyhow::Result<()> {
    let file = file.unwrap_or(Path::new("/etc/telemetrics/telemetrics.conf"));
    let c = Config::load_file(Config::default(), file)?;
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    print!("# migrated from {}\n{}", file.display(), c.to_toml());
    Ok(())
}
