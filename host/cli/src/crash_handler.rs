//! Command-line definition of `telem-crash-handler`, the program the kernel
//! runs for every core dump (`kernel.core_pattern`).
//!
//! Every value the kernel fills in may begin with `-` (`%e` is the crashed
//! program's own choice of thread name), so each is taken as a value
//! whatever it looks like (`allow_hyphen_values`), and names and paths
//! need not be UTF-8. `%d` and `%F` are kept as text: a kernel that does
//! not know them expands them to nothing, which means "not given".

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// Receive a core dump from the kernel and hand it to telemd.
#[derive(Parser, Debug)]
#[command(
    name = "telem-crash-handler",
    version,
    after_help = "Installed as: kernel.core_pattern = |/usr/bin/telem-crash-handler -p %e -E %E -s %s -P %P -I %I -u %u -d %d -F %F\n\
                  The core comes on standard input (or from -c FILE). Exit status: 0 the crash was handled \
                  (recorded, queued, or dropped by a filter or a limit, which is logged), 1 it was lost (logged)."
)]
pub struct Args {
    /// Process name (`%e`); taken as a name even when it begins with `-`.
    #[arg(
        short = 'p',
        long = "process-name",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    pub process_name: Option<OsString>,
    /// Executable path with `/` written as `!` (`%E`).
    #[arg(
        short = 'E',
        long = "exe",
        value_name = "PATH",
        allow_hyphen_values = true
    )]
    pub exe: Option<OsString>,
    /// Signal number (`%s`).
    #[arg(short = 's', long, value_name = "N", allow_hyphen_values = true)]
    pub signal: Option<u32>,
    /// Pid in the initial pid namespace (`%P`).
    #[arg(
        short = 'P',
        long = "pid",
        value_name = "PID",
        allow_hyphen_values = true
    )]
    pub pid: Option<u32>,
    /// Thread that crashed, in the initial pid namespace (`%I`): where it
    /// stopped keys the repeat filter. Empty or absent (older kernels):
    /// the program alone does.
    #[arg(
        short = 'I',
        long = "tid",
        value_name = "TID",
        allow_hyphen_values = true
    )]
    pub tid: Option<String>,
    /// Dump mode of the crashed process as the kernel saw it (`%d`): 1 a
    /// normal dump, 2 a process that was not dumpable (setuid) dumped
    /// because `fs.suid_dumpable` = 2, whose core is not kept. Empty or
    /// absent (older kernels): `fs.suid_dumpable` and the process's
    /// credentials decide.
    #[arg(
        short = 'd',
        long = "dump-mode",
        value_name = "MODE",
        allow_hyphen_values = true
    )]
    pub dump_mode: Option<String>,
    /// Pidfd of the crashed process (`%F`, newer kernels): it must still
    /// be the process `-P` names, or no core is kept. Empty or absent:
    /// the process is identified by `-P` alone.
    #[arg(
        short = 'F',
        long = "pidfd",
        value_name = "FD",
        allow_hyphen_values = true
    )]
    pub pidfd: Option<String>,
    /// Real uid of the crashed process (`%u`).
    #[arg(
        short = 'u',
        long = "uid",
        value_name = "UID",
        allow_hyphen_values = true
    )]
    pub uid: Option<u32>,
    /// Read the core from this file instead of standard input.
    #[arg(short = 'c', long = "core-file", value_name = "FILE")]
    pub core_file: Option<PathBuf>,
    /// Configuration file (the telemd one).
    #[arg(short = 'f', long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Wait for the record and print its payload.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn parse(args: &[&[u8]]) -> Result<Args, clap::Error> {
        let argv = std::iter::once(OsString::from("telem-crash-handler"))
            .chain(args.iter().map(|a| std::ffi::OsStr::from_bytes(a).into()));
        Args::try_parse_from(argv)
    }

    #[test]
    fn kernel_values_are_never_options() {
        for name in [&b"-x --help"[..], b"--help", b"-V", b"--", b"-\xff", b""] {
            let a = parse(&[b"-p", name, b"-E", b"-!x", b"-P", b"7", b"-d", b"1"]).unwrap();
            assert_eq!(a.process_name.unwrap().as_bytes(), name);
            assert_eq!(a.exe.unwrap().as_bytes(), b"-!x");
            assert_eq!((a.pid, a.dump_mode.as_deref()), (Some(7), Some("1")));
        }
        // Kernels that do not know %d / %F expand them to nothing.
        let a = parse(&[b"-d", b"", b"-F", b""]).unwrap();
        assert_eq!(
            (a.dump_mode.as_deref(), a.pidfd.as_deref()),
            (Some(""), Some(""))
        );
    }

    #[test]
    fn the_installed_pattern_is_the_documented_one() {
        let sysctl = include_str!("../../../systemd/60-telem-crash-handler.conf.in");
        let cmd = <Args as clap::CommandFactory>::command();
        let help = cmd
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let line = help.lines().next().unwrap_or_default();
        let pattern = line.strip_prefix("Installed as: ").unwrap_or(line);
        let installed = pattern.replace("/usr/bin/", "@bindir@/");
        assert!(sysctl.contains(&format!("\n{installed}\n")), "{sysctl}");
    }
}
