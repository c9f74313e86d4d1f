//! Where the daemon's log goes: the journal, natively, when systemd
//! connected stderr to it (`JOURNAL_STREAM` names stderr's device and
//! inode), so each line keeps its priority and its fields (`PROBE=`,
//! ...): `journalctl -u telemd PROBE=hello -p warning` works. Anywhere
//! else (a terminal, a file, a test), text on stderr.

use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// A value for a log field (`PEER_UID=1000`), `?` when unknown: a
/// field's value, not Rust's `Some(1000)`.
pub fn or_unknown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// Whether `journal_stream` (`JOURNAL_STREAM`'s `DEVICE:INODE`) names
/// the file whose device and inode are `dev` and `ino`.
pub fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Whether stderr is the journal's stream for this process.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    names_stream(&stream.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Sets up the log with `filter`: to the journal when stderr is the
/// journal (info at priority 6, as `journalctl -p info` expects; fields by
/// their own names, upper-cased), else to stderr.
pub fn init(filter: EnvFilter) {
    if stderr_is_journal() {
        use tracing_journald::{Priority, PriorityMappings};
        let journal = tracing_journald::layer().map(|l| {
            l.with_field_prefix(None)
                .with_syslog_identifier("telemd".into())
                .with_priority_mappings(PriorityMappings {
                    error: Priority::Error,
                    warn: Priority::Warning,
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    trace: Priority::Debug,
                })
        });
        match journal {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => {
                eprintln!("telemd: the journal's socket cannot be used ({e}); logging to stderr")
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(names_stream("8:1234567", 8, 1234567));
        assert!(!names_stream("8:1234567", 8, 1234568), "another inode");
        assert!(!names_stream("9:1234567", 8, 1234567), "another device");
        for bad in ["", "8", "8:", ":1", "x:1", "8:1:2", " 8:1"] {
            assert!(!names_stream(bad, 8, 1), "{bad:?}");
        }
    }
}
