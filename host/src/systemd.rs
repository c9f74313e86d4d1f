//! The two bits of the systemd protocol the daemon speaks: sockets passed
//! by socket activation (`LISTEN_FDS`) and readiness notification
//! (`NOTIFY_SOCKET`). Both are no-ops outside systemd.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// First passed descriptor, per `sd_listen_fds(3)`.
const SD_LISTEN_FDS_START: RawFd = 3;

/// A socket passed by the service manager, with its `FileDescriptorName=`.
#[derive(Debug)]
pub struct ListenFd {
    /// The descriptor, now owned by this process.
    pub fd: OwnedFd,
    /// Its name (`LISTEN_FDNAMES`), empty if none was given.
    pub name: String,
}

/// Takes the sockets systemd passed to this process, if any. Call it once,
/// first thing in `main`, before any thread starts: it takes ownership of
/// descriptors 3.. and nothing else may have opened them by then.
///
/// The `LISTEN_*` variables are left as they are: removing them
/// (`remove_var`) is unsound once other threads may read the environment,
/// and the daemon starts no child process that could inherit them (a
/// child would ignore them anyway: `LISTEN_PID` names this process).
pub fn take_listen_fds() -> Vec<ListenFd> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..count)
        .filter_map(|i| {
            let raw = SD_LISTEN_FDS_START + i;
            let name = names.next().unwrap_or("").to_owned();
            // SAFETY: systemd passed these descriptors to this process and
            // nothing else owns them; one that is not open is skipped rather
            // than owned (closing it later would close someone else's fd).
            // (Not logged: this runs before logging is set up; the daemon
            // says which socket it uses.)
            if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return None;
            }
            Some(ListenFd {
                fd: unsafe { OwnedFd::from_raw_fd(raw) },
                name,
            })
        })
        .collect()
}

/// Sends a state string (`READY=1`, `STOPPING=1`, `STATUS=...`) to the
/// service manager. Returns quietly when not run by systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!("sd_notify {state:?} failed: {e}");
    }
}
