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

/// Prints `telemd.socket : active` style lines, as the legacy telemctl did.
pub fn is_active() -> anyhow::Result<()> {
    systemd_running()?;
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
        bail!("telemd is not active")
    }
}
