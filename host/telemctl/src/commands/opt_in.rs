//! `telemctl opt-in`, `telemctl opt-out`: the opt-in file, as the legacy
//! client kept it.

use telem_core::config::Config;

use super::needs_root;

pub fn opt_in(c: &Config) -> anyhow::Result<()> {
    if let Some(dir) = c.host.opt_in_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| needs_root("opt-in", dir, e))?;
    }
    std::fs::write(&c.host.opt_in_file, "")
        .map_err(|e| needs_root("opt-in", &c.host.opt_in_file, e))?;
    println!(
        "Telemetry is enabled ({} created).",
        c.host.opt_in_file.display()
    );
    Ok(())
}

pub fn opt_out(c: &Config) -> anyhow::Result<()> {
    match std::fs::remove_file(&c.host.opt_in_file) {
        Ok(()) => println!(
            "Telemetry is disabled ({} removed).",
            c.host.opt_in_file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("Telemetry was not enabled.")
        }
        Err(e) => return Err(needs_root("opt-out", &c.host.opt_in_file, e)),
    }
    Ok(())
}
