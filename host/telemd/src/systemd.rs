//! The two bits of the systemd protocol the daemon speaks, through the
//! `sd-notify` crate: sockets passed by socket activation (`LISTEN_FDS`)
//! and readiness notification (`NOTIFY_SOCKET`). Both are no-ops outside
//! systemd.

use std::os::fd::{FromRawFd, OwnedFd};

/// A socket passed by the service manager, with its `FileDescriptorName=`.
#[derive(Debug)]
pub struct ListenFd {
    /// The descriptor, now owned by this process.
    pub fd: OwnedFd,
    /// Its name (`LISTEN_FDNAMES`; `unknown` if none was given).
    pub name: String,
}

/// Takes the sockets systemd passed to this process, if any. Call it once,
/// first thing in `main`, before any thread starts: it takes ownership of
/// descriptors 3.. and nothing else may have opened them by then.
///
/// The `LISTEN_*` variables are left as they are (`unset_env = false`):
/// removing them (`remove_var`) is unsound once other threads may read the
/// environment, and the daemon starts no child process that could inherit
/// them (a child would ignore them anyway: `LISTEN_PID` names this
/// process). An error (a variable that does not parse, a descriptor that is
/// not open) is returned for the caller to log once logging is set up.
pub fn take_listen_fds() -> std::io::Result<Vec<ListenFd>> {
    let fds = sd_notify::listen_fds_with_names(false)?;
    Ok(fds
        .map(|(raw, name)| ListenFd {
            // SAFETY: systemd passed these descriptors to this process, and
            // `listen_fds_with_names` checked each is open (it set
            // FD_CLOEXEC on it). Nothing else in the process owns them: this
            // runs once, first thing in `main`, before any other code could
            // open or adopt descriptor 3 and up.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            name,
        })
        .collect())
}

/// Tells the service manager the daemon is ready (sockets bound).
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Tells the service manager the daemon is stopping.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState<'_>) {
    // `unset_env = false`: other threads run by now (see `take_listen_fds`).
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::debug!("sd_notify failed: {e}");
    }
}
