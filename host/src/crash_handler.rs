//! The crash handler: what the kernel runs (as root) for every core dump.
//! It is the only part of the client that runs with privileges, so it does
//! as little as it can: refuse to dump itself, apply the privacy filters
//! before anything is kept, read what only root can read (the crashed
//! process's credentials), drop to the service user, stream the core into a
//! fresh inbox entry, and tell `telemd`. Parsing the core is left to the
//! sandboxed crash-symbolizer probe.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::crash_handler::Args;
use crate::client::{build_local_record, send_record, NewRecord, CLIENT_TIMEOUT};
use crate::config::Config;
use crate::crash::{inbox_bytes, inbox_dir, CrashMeta, CORE_FILE, META_FILE};

/// Where the flood limits keep their state, inside the inbox.
const RECENT_FILE: &str = ".recent.json";
/// How long `-v` waits for telemd to make the record.
const VERBOSE_WAIT: Duration = Duration::from_secs(60);
/// How long telemd may take to take note of a crash.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// What the privacy filters make of an executable path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// A distribution binary: the core is kept and symbolized.
    Keep,
    /// Outside `/usr/` or under `/usr/local/`: only a short record.
    ThirdParty,
    /// Under the package build root: only a short record.
    PackageBuild,
}

impl Filter {
    /// The short record a filtered crash sends instead of its backtrace.
    pub fn short_record(self) -> Option<(&'static str, u8, &'static str)> {
        match self {
            Filter::Keep => None,
            Filter::ThirdParty => {
                Some(("org.clearlinux/crash/unknown", 2, "Crash from third party"))
            }
            Filter::PackageBuild => Some((
                "org.clearlinux/crash/clr-build",
                2,
                "Crash from Clear package build",
            )),
        }
    }
}

/// The legacy privacy filters on `%E` (with `!` already turned into `/`).
/// An unknown path is third party: nothing says it came from the system.
pub fn privacy_filter(exe: Option<&str>) -> Filter {
    match exe {
        Some(p) if p.starts_with("/builddir/build/BUILD/") => Filter::PackageBuild,
        Some(p)
            if p.starts_with("/usr/") && !p.starts_with("/usr/local/") && !p.contains("/../") =>
        {
            Filter::Keep
        }
        _ => Filter::ThirdParty,
    }
}

/// `%E` writes `/` as `!`.
pub fn exe_from_pattern(e: &str) -> String {
    e.replace('!', "/")
}

/// Whether `/proc/PID/status` shows a process whose credentials changed
/// (setuid/setgid): real, effective, saved and filesystem ids differ.
pub fn credentials_changed(status: &str) -> bool {
    ["Uid:", "Gid:"].iter().any(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                let ids: Vec<&str> = rest.split_whitespace().collect();
                ids.windows(2).any(|w| w[0] != w[1])
            })
            .unwrap_or(false)
    })
}

/// What happened to one crash.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept in the inbox as this entry; `telemd` was told (or will find it).
    Queued(String),
    /// A filter sent the short record instead.
    Filtered(&'static str),
    /// Dropped by a flood limit.
    Dropped(String),
}

#[derive(Default, Serialize, Deserialize)]
struct Recent {
    last: BTreeMap<String, u64>,
    dropped_repeats: u64,
    dropped_full: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn log(msg: &str) {
    // stderr reaches the journal under systemd-coredump-like setups and
    // the terminal when run by hand; syslog reaches the journal always.
    eprintln!("telem-crash-handler: {msg}");
    if let Ok(c) = CString::new(format!("telem-crash-handler: {msg}")) {
        // SAFETY: a valid NUL-terminated format and argument.
        unsafe { libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), c.as_ptr()) };
    }
}

/// Runs the handler; `Err` means the crash was lost.
pub fn run(args: &Args, config: &Config) -> Result<Outcome, String> {
    // Never dump ourselves (a crash in the handler would re-enter it).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let exe = args.exe.as_deref().map(exe_from_pattern);
    let name = args
        .process_name
        .clone()
        .or_else(|| {
            exe.as_deref()
                .and_then(|e| Path::new(e).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "???".into());
    let filters_on = !config.no_privacy_filters_file.exists();
    let filter = if filters_on {
        privacy_filter(exe.as_deref())
    } else {
        Filter::Keep
    };
    // What only root can read, before privileges go.
    let changed = args
        .pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .is_some_and(|s| credentials_changed(&s));
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    drop_privileges(&config.service_user)?;

    let inbox = inbox_dir(&config.state_dir);
    std::fs::create_dir_all(&inbox)
        .map_err(|e| format!("cannot create {}: {e}", inbox.display()))?;
    let inbox_fd = open_dir(&inbox)?;
    // fs.suid_dumpable = 2 hands us cores of setuid programs; their memory
    // may hold another user's secrets, so none of it is kept.
    let short = match filter.short_record() {
        Some(s) => Some(s),
        None if changed && suid_dumpable == 2 => Some((
            "org.clearlinux/crash/unknown",
            2,
            "Crash of a privileged process (core not kept: fs.suid_dumpable = 2)",
        )),
        None => None,
    };
    // A crash loop is bounded whether or not its core would be kept.
    let what = exe.as_deref().unwrap_or(&name);
    if let Some(why) = flood_check(&inbox, what, config, short.is_none())? {
        log(&why);
        return Ok(Outcome::Dropped(why));
    }
    if let Some((class, severity, text)) = short {
        send_short(config, class, severity, text, args.verbose)?;
        return Ok(Outcome::Filtered(class));
    }

    let id = format!(
        "{}-{}-{:08x}",
        now(),
        args.pid.unwrap_or(0),
        rand::random::<u32>()
    );
    let entry_fd = mkdir_at(&inbox_fd, &id)?;
    let result = (|| -> Result<(), String> {
        let core = create_at(&entry_fd, CORE_FILE)?;
        let mut input: Box<dyn Read> = match &args.core_file {
            Some(p) => Box::new(File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => Box::new(io::stdin().lock()),
        };
        let (bytes, truncated) = copy_capped(&mut input, &core, config.crash_max_core_size)?;
        if truncated {
            log(&format!(
                "core of {name} cut at crash_max_core_size = {} bytes",
                config.crash_max_core_size
            ));
        }
        let meta = CrashMeta {
            process_name: name.clone(),
            process_path: exe.clone(),
            pid: args.pid.unwrap_or(0),
            global_pid: args.pid,
            signal: args.signal,
            uid: args.uid,
            time: now(),
            core_bytes: bytes,
            core_truncated: truncated,
        };
        let text = serde_json::to_vec(&meta).expect("meta serializes");
        let tmp = format!("{META_FILE}.tmp");
        let f = create_at(&entry_fd, &tmp)?;
        (&f).write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {META_FILE}: {e}"))?;
        rename_at(&entry_fd, &tmp, META_FILE)?;
        fsync_fd(&entry_fd)?;
        fsync_fd(&inbox_fd)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(inbox.join(&id));
        return Err(format!("crash of {name} lost: {e}"));
    }

    let req = json!({"op": "crash", "id": id, "wait": args.verbose});
    let timeout = if args.verbose {
        VERBOSE_WAIT
    } else {
        ANNOUNCE_WAIT
    };
    match crate::control::request_with_timeout(&config.control_socket, &req, Some(timeout)) {
        Ok(resp) if resp["ok"] == true => {
            if args.verbose {
                for r in resp["records"].as_array().into_iter().flatten() {
                    println!(
                        "{} (severity {})\n{}",
                        r["classification"].as_str().unwrap_or(""),
                        r["severity"],
                        r["payload"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Ok(resp) => log(&format!("telemd refused crash {id}: {}", resp["error"])),
        Err(e) => log(&format!("crash {id} waits in the inbox: {e}")),
    }
    Ok(Outcome::Queued(id))
}

fn send_short(
    config: &Config,
    class: &str,
    severity: u8,
    text: &str,
    verbose: bool,
) -> Result<(), String> {
    let record = build_local_record(
        &NewRecord {
            classification: class,
            severity,
            payload_version: 1,
            payload: text,
            event_id: None,
            config: None,
        },
        config,
    );
    send_record(&config.socket_path, &record, CLIENT_TIMEOUT)
        .map_err(|e| format!("cannot send the {class} record: {e}"))?;
    if verbose {
        println!("{class} (severity {severity})\n{text}");
    }
    Ok(())
}

/// Switches to the service user for good (when running as root).
fn drop_privileges(user: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let c = CString::new(user).map_err(|_| format!("bad service user {user:?}"))?;
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(format!(
            "service user {user} does not exist; refusing to keep a core as root"
        ));
    }
    // SAFETY: pw is non-null and points to a static passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: plain credential syscalls; each result is checked.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    // Root must be gone for good (unless the admin made root the service
    // user, as the tests running as root do).
    // SAFETY: as above.
    if !ok || (uid != 0 && unsafe { libc::setuid(0) } == 0) {
        return Err(format!("cannot drop privileges to {user}"));
    }
    Ok(())
}

fn cpath(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("bad name {s:?}"))
}

fn open_dir(p: &Path) -> Result<OwnedFd, String> {
    let c = cpath(&p.to_string_lossy())?;
    // SAFETY: valid C string; the fd is owned on success.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open {}: {}",
            p.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdir_at(dir: &OwnedFd, name: &str) -> Result<OwnedFd, String> {
    let c = cpath(name)?;
    // SAFETY: valid fd and C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
        return Err(format!(
            "cannot create inbox entry {name}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: as above; the fd is owned on success.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open inbox entry {name}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A fresh file: never an existing one, never through a symlink, 0600.
fn create_at(dir: &OwnedFd, name: &str) -> Result<File, String> {
    let c = cpath(name)?;
    // SAFETY: valid fd and C string; the fd is owned on success.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot create {name}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just opened and is ours.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> Result<(), String> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid fds and C strings.
    if unsafe { libc::renameat(dir.as_raw_fd(), a.as_ptr(), dir.as_raw_fd(), b.as_ptr()) } != 0 {
        return Err(format!(
            "cannot rename {from}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn fsync_fd(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: valid fd.
    if unsafe { libc::fsync(fd.as_raw_fd()) } != 0 {
        return Err(format!("fsync: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Copies at most `cap` bytes, then fsyncs; says whether input was left.
fn copy_capped(input: &mut dyn Read, out: &File, cap: u64) -> Result<(u64, bool), String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut w = out;
    loop {
        let want = (cap - total).min(buf.len() as u64) as usize;
        if want == 0 {
            let mut probe = [0u8; 1];
            let more = matches!(input.read(&mut probe), Ok(n) if n > 0);
            w.sync_all()
                .map_err(|e| format!("cannot write the core: {e}"))?;
            return Ok((total, more));
        }
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read the core: {e}")),
        };
        w.write_all(&buf[..n])
            .map_err(|e| format!("cannot write the core: {e}"))?;
        total += n as u64;
    }
    w.sync_all()
        .map_err(|e| format!("cannot write the core: {e}"))?;
    Ok((total, false))
}

/// The flood limits, under a lock shared by concurrent handlers: the same
/// executable again within `crash_repeat_window_secs`, or (for a crash
/// whose core would be kept) an inbox over `crash_inbox_max_size`. Returns
/// why the crash is dropped, if it is.
fn flood_check(
    inbox: &Path,
    exe: &str,
    config: &Config,
    keeps_core: bool,
) -> Result<Option<String>, String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(inbox.join(".lock"))
        .map_err(|e| format!("cannot open the inbox lock: {e}"))?;
    // SAFETY: valid fd; the lock is released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock the inbox: {}",
            io::Error::last_os_error()
        ));
    }
    let path = inbox.join(RECENT_FILE);
    let mut recent: Recent = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let t = now();
    let window = config.crash_repeat_window_secs;
    recent
        .last
        .retain(|_, last| t.saturating_sub(*last) < window.max(1));
    let verdict = if recent.last.contains_key(exe) && window > 0 {
        recent.dropped_repeats += 1;
        Some(format!(
            "crash of {exe} dropped: it crashed less than {window} s ago ({} repeats dropped so far)",
            recent.dropped_repeats
        ))
    } else if keeps_core && inbox_bytes(inbox) >= config.crash_inbox_max_size {
        recent.dropped_full += 1;
        Some(format!(
            "crash of {exe} dropped: the crash inbox holds crash_inbox_max_size = {} bytes or more ({} dropped so far)",
            config.crash_inbox_max_size, recent.dropped_full
        ))
    } else {
        recent.last.insert(exe.to_owned(), t);
        None
    };
    let tmp = inbox.join(format!("{RECENT_FILE}.tmp"));
    let text = serde_json::to_vec(&recent).expect("recent serializes");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot record the flood state: {e}"))?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_filters_follow_the_legacy_rules() {
        assert_eq!(privacy_filter(Some("/usr/bin/crashme")), Filter::Keep);
        assert_eq!(privacy_filter(Some("/usr/local/bin/x")), Filter::ThirdParty);
        assert_eq!(privacy_filter(Some("/home/u/a.out")), Filter::ThirdParty);
        assert_eq!(privacy_filter(Some("/usr/../home/u/a")), Filter::ThirdParty);
        assert_eq!(privacy_filter(None), Filter::ThirdParty);
        assert_eq!(
            privacy_filter(Some("/builddir/build/BUILD/pkg/test")),
            Filter::PackageBuild
        );
        assert_eq!(exe_from_pattern("!usr!bin!crashme"), "/usr/bin/crashme");
    }

    #[test]
    fn changed_credentials_are_seen() {
        let plain = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
        let setuid = "Name:\tpasswd\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert!(!credentials_changed(plain));
        assert!(credentials_changed(setuid));
    }

    #[test]
    fn cores_are_cut_at_the_cap() {
        let dir = std::env::temp_dir().join(format!("telem-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = File::create(dir.join("c")).unwrap();
        let data = vec![7u8; 3000];
        assert_eq!(copy_capped(&mut &data[..], &f, 1000).unwrap(), (1000, true));
        let f = File::create(dir.join("d")).unwrap();
        assert_eq!(
            copy_capped(&mut &data[..], &f, 3000).unwrap(),
            (3000, false)
        );
        assert_eq!(std::fs::metadata(dir.join("c")).unwrap().len(), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
