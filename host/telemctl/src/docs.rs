//! Man pages and shell completions, generated from the same clap
//! definitions the programs parse with, so they never drift.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

/// Writes `man/man{1,8}/*` and `completions/{bash,zsh,fish}/*` under `dir`.
pub fn generate(dir: &Path) -> io::Result<()> {
    let programs = [
        (telem_cli::telemd::Args::command().name("telemd"), "8"),
        (crate::cli::Args::command().name("telemctl"), "1"),
        (
            telem_cli::record_gen::Args::command().name("telem-record-gen"),
            "1",
        ),
        (
            telem_cli::crash_handler::Args::command().name("telem-crash-handler"),
            "8",
        ),
    ];
    for (cmd, section) in programs {
        let name = cmd.get_name().to_owned();
        let man_dir = dir.join(format!("man/man{section}"));
        std::fs::create_dir_all(&man_dir)?;
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section(section)
            .render(&mut page)?;
        // clap_mangen renders `after_long_help` under EXTRA; telemctl's
        // is its exit statuses, the section man pages call EXIT STATUS.
        if name == "telemctl" {
            page = String::from_utf8_lossy(&page)
                .replacen(".SH EXTRA", ".SH \"EXIT STATUS\"", 1)
                .into_bytes();
        }
        std::fs::write(man_dir.join(format!("{name}.{section}")), page)?;
        for (shell, sub, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let d = dir.join("completions").join(sub);
            std::fs::create_dir_all(&d)?;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut out);
            std::fs::write(d.join(file), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_man_page_lists_the_exit_statuses() {
        let t = tempfile::tempdir().unwrap();
        super::generate(t.path()).unwrap();
        let page = std::fs::read_to_string(t.path().join("man/man1/telemctl.1")).unwrap();
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        assert!(!page.contains(".SH EXTRA"), "{page}");
        for status in [
            "not running",
            "no such probe",
            "selected nothing",
            "SIGPIPE",
        ] {
            assert!(page.contains(status), "{status}: {page}");
        }
    }
}
