//! One daemon per state directory. A second `telemd` started on the same
//! directories would take over the sockets (and remove them when it
//! exits), leaving the first running but unreachable, and two spool
//! writers would delete each other's temporary files. So the daemon takes
//! an exclusive `flock` on `<state_dir>/telemd.lock` before it touches
//! anything else and holds it for its whole life; the kernel releases it
//! when the process ends however it ends, so a daemon killed with SIGKILL
//! leaves nothing stale behind. The file holds the holder's pid, for the
//! refusal to name.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use telem_core::state_layout::LOCK_FILE;

/// Why the state directory could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another telemd ({}) is running on the state directory {}; stop it first",
        holder.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")),
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The state directory, held until dropped (the process's end).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes `dir` (which exists) for this process, or says who has it.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        use rustix::fs::{flock, FlockOperation};
        let path = dir.join(LOCK_FILE);
        let io_err = |source: io::Error| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                // The holder may not have written its pid yet.
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io_err(e.into())),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_a_released_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            format!("{pid}\n")
        );
        // flock locks belong to the open file description: a second open,
        // even in this process, is refused.
        match StateLock::acquire(dir.path()) {
            Err(e @ LockError::Held { holder, .. }) => {
                assert_eq!(holder, Some(pid));
                assert!(e.to_string().contains(&format!("pid {pid}")), "{e}");
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
