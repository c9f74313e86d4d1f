//! The two bits of the systemd protocol the daemon speaks, through the
//! `sd-notify` crate: sockets passed by socket activation (`LISTEN_FDS`)
//! and readiness notification (`NOTIFY_SOCKET`, a path or, as sd_notify(3)
//! allows and `sd-notify` does not handle, an abstract `@name`). Both are
//! no-ops outside systemd.

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
/// The `LISTEN_*` variables are left as they are: removing them
/// (`remove_var`) is unsound once other threads may read the environment,
/// and the daemon starts no child process that could inherit them (a child
/// would ignore them anyway: `LISTEN_PID` names this process). An error (a
/// variable that does not parse, a descriptor that is not open, names not
/// matching the count) is returned for the caller to log once logging is
/// set up; the daemon then binds `socket_path` itself.
pub fn take_listen_fds() -> std::io::Result<Vec<ListenFd>> {
    let fds = sd_notify::listen_fds_with_names()?;
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

/// Tells the service manager the daemon is alive (the watchdog).
pub fn notify_watchdog() {
    notify(sd_notify::NotifyState::Watchdog);
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this
/// process), if any.
pub fn watchdog_period() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

/// Tells the service manager the daemon is stopping.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

/// Tells the service manager a reload began (`RELOADING=1` with the
/// monotonic time, as `Type=notify-reload` asks); [`notify_ready`] ends it.
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify_all(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(sd_notify::NotifyState::Reloading),
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    notify_all(&[state]);
}

fn notify_all(states: &[sd_notify::NotifyState<'_>]) {
    let abstract_name = std::env::var_os("NOTIFY_SOCKET")
        .and_then(|p| p.as_encoded_bytes().strip_prefix(b"@").map(<[u8]>::to_vec));
    let sent = match abstract_name {
        Some(name) => {
            let message: String = states.iter().map(|s| format!("{s}\n")).collect();
            notify_abstract(&name, &message)
        }
        None => sd_notify::notify(states),
    };
    if let Err(e) = sent {
        // A unit of Type=notify is killed at its start timeout without it.
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// One datagram to an abstract-namespace socket.
fn notify_abstract(name: &[u8], message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_notify_sockets_are_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("telemd-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        notify_abstract(
            name.as_bytes(),
            &format!("{}\n", sd_notify::NotifyState::Ready),
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
