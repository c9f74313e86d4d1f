//! `telemctl start|stop|restart|is-active`: the systemd units, as the
//! legacy telemctl drove them.

use std::path::Path;

use anyhow::{bail, Context};

const UNITS: [&str; 2] = ["telemd.socket", "telemd.service"];

fn systemd_running() -> anyhow::Result<()> {
    if Path::new("/run/systemd/system").exists() {
        Ok(())
    } else {
        bail!("systemd is not running on this machine; run telemd directly (telemd -f CONFIG)")
    }
}

pub fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    systemd_running()?;
    let st = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if st.success() {
        Ok(())
    } else if !rustix::process::geteuid().is_root() {
        bail!(
            "systemctl {} failed; it needs root: try `sudo telemctl {}`",
            args.join(" "),
            args[0]
        )
    } else {
        bail!("systemctl {} failed", args.join(" "))
    }
}

/// `is-active -f CONFIG`, and `is-active` without systemd: whether a
/// daemon answers on the config's control socket (a dev daemon, or one run
/// by hand), printed as systemctl prints a unit's state; exit 3 if not.
pub fn answers(c: &telem_core::config::Config) -> anyhow::Result<()> {
    // The handshake is the answer: nothing more is asked of the daemon.
    match super::connect(c) {
        Ok(_) => {
            println!("active");
            Ok(())
        }
        Err(e) if super::NotRunning::is(&e) => {
            println!("inactive");
            Err(super::Exit::not_running(format!("{e:#}")).into())
        }
        // It may well run: unknown, not "inactive".
        Err(e) => {
            println!("unknown");
            Err(e)
        }
    }
}

/// Prints `telemd.socket : active` style lines, as the legacy telemctl
/// did; exit 3 (systemctl's) if a unit is not active. Without systemd, as
/// [`answers`] with the default config.
pub fn is_active() -> anyhow::Result<()> {
    if systemd_running().is_err() {
        return answers(&super::load_config(None)?);
    }
    let mut all = true;
    for u in UNITS {
        let out = std::process::Command::new("systemctl")
            .args(["is-active", u])
            .output()
            .context("cannot run systemctl")?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        all &= out.status.success();
        println!(
            "{u} : {}",
            if state.is_empty() { "unknown" } else { &state }
        );
    }
    if all {
        Ok(())
    } else {
        Err(super::Exit::not_running("telemd is not active".into()).into())
    }
}
