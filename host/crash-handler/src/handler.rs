//! The crash handler: what the kernel runs (as root) for every core dump.
//! It is the only part of the client that runs with privileges, so it does
//! as little as it can: refuse to dump itself, apply the privacy filters
//! before anything is kept, read what only root can read (the crashed
//! process's credentials), drop to the service user, stream the core into a
//! fresh inbox entry, and tell `telemd`. Parsing the core is left to the
//! sandboxed crash-symbolizer probe.
//!
//! Everything it is given is hostile: the process name and path are the
//! crashed program's choice, and the core is its memory. Nothing here may
//! panic or exit early on what it is given; a crash that is not kept is
//! logged, never lost silently.
//!
//! Concurrent crashes share the inbox's limits. Under the inbox lock, a
//! crash whose core will be kept is admitted against what the inbox holds
//! plus what the crashes still being copied may write: each of those holds
//! a reservation, a `.reservation` file in its entry naming the bytes it
//! may use and locked (`flock`) while its handler lives. The reservation is
//! removed once the entry is complete, with the entry when the crash is
//! lost, and by the next handler when its own went away with a handler that
//! died (its lock is gone). So the inbox holds at most
//! `crash_inbox_max_size` plus one core, and no crash takes the free space
//! of its filesystem below `crash_min_free_mb`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use anyhow::Context;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt as _};
use rustix::fs::{flock, FlockOperation, OFlags};
use telem_core::cli::crash_handler::Args;
use telem_core::config::{Config, CrashConfig};
use telem_core::control::client::{Client, ClientError};
use telem_core::crash_inbox::{CrashMeta, CORE_FILE, META_FILE};
use telem_core::native_client::{build_local_record, send_record, NewRecord, CLIENT_TIMEOUT};
use telem_core::state_layout::StateLayout;
use telem_core::untrusted::escape;

/// Where the flood limits keep their state, inside the inbox.
const RECENT_FILE: &str = ".recent.json";
/// Largest flood state read (1024 keys of at most 512 bytes, and counts).
const RECENT_FILE_CAP: u64 = 1 << 20;
/// Executables the repeat filter remembers at once; the oldest are
/// forgotten first, so crashing copies of a program under ever new names
/// cannot grow the file every handler reads and rewrites under the lock.
const MAX_RECENT: usize = 1024;
/// Bytes of an executable's path kept as its key in the repeat filter.
const RECENT_KEY_CAP: usize = 512;
/// How long `-v` waits for telemd to make the record.
const VERBOSE_WAIT: Duration = Duration::from_secs(60);
/// How long telemd may take to take note of a crash.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);
/// The reservation of an entry being written (see the module docs).
const RESERVATION_FILE: &str = ".reservation";
/// Bytes an entry may hold besides its core (`crash.json`: a path of up
/// to 4096 bytes, escaped).
const META_RESERVE: u64 = 64 * 1024;
/// A core smaller than this is not worth keeping: the free-space floor
/// drops the crash rather than cut its core shorter.
const MIN_CORE: u64 = 64 * 1024;
const MIB: u64 = 1 << 20;

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

/// The pid a pidfd refers to, from its `/proc/self/fdinfo/FD` text: `None`
/// when the fd is not a pidfd, 0 or less once the process is gone (reaped)
/// or is not in our pid namespace.
pub fn pidfd_pid(fdinfo: &str) -> Option<i64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Checks the kernel's pidfd (`%F`) against `%P`: the pid it names now,
/// or why the process it names cannot be taken for the crashed one.
fn pidfd_check(fd: &str, pid: Option<u32>) -> Result<u32, String> {
    let n: u32 = fd
        .trim()
        .parse()
        .map_err(|_| format!("-F {fd:?} is not a pidfd number"))?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}"))
        .map_err(|e| format!("pidfd {n}: {e}"))?;
    match (pidfd_pid(&info), pid) {
        (None, _) => Err(format!("fd {n} (-F) is not a pidfd")),
        (Some(p), _) if p <= 0 => Err(format!("the process of pidfd {n} (-F) is gone")),
        (Some(p), Some(want)) if p != i64::from(want) => {
            Err(format!("pidfd {n} (-F) is pid {p}, not pid {want} (-P)"))
        }
        (Some(p), _) => u32::try_from(p).map_err(|_| format!("pidfd {n} (-F) is pid {p}")),
    }
}

/// Whether this is the dump of a process that was not dumpable (its
/// credentials changed: setuid) and was dumped for root only because
/// `fs.suid_dumpable` = 2. `%d` (`dump_mode`) is the kernel's own value for
/// this dump: 1 a plain dump, 2 such a dump (0 never reaches a handler, and
/// a value not understood is taken for 2). Without it (older kernels, or a
/// pattern without `%d`), the sysctl as read now and the process's
/// credentials decide.
pub fn suid_dump(dump_mode: Option<&str>, changed: bool, suid_dumpable: u32) -> bool {
    match dump_mode.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => d != "1",
        None => changed && suid_dumpable == 2,
    }
}

/// Reads standard input to its end (a core no one will keep), so the
/// kernel is not left writing into a pipe nobody reads.
pub fn discard_input() {
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
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
#[serde(default)]
struct Recent {
    last: BTreeMap<String, u64>,
    dropped_repeats: u64,
    dropped_full: u64,
    dropped_low_space: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs where the handler's messages can be read: stderr (a terminal when
/// run by hand) and syslog (the journal; the kernel gives the handler no
/// terminal).
pub fn log(msg: &str) {
    // Messages quote kernel-supplied names (`%e`, `%E`), which may hold
    // newlines or escapes: they must not forge lines in the journal.
    let msg = escape(msg, 4096);
    // stderr reaches the journal under systemd-coredump-like setups and
    // the terminal when run by hand; syslog reaches the journal always.
    eprintln!("telem-crash-handler: {msg}");
    if let Ok(c) = CString::new(format!("telem-crash-handler: {msg}")) {
        // SAFETY: a valid NUL-terminated format and argument.
        unsafe { libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), c.as_ptr()) };
    }
}

/// Runs the handler; `Err` means the crash was lost.
pub fn run(args: &Args, config: &Config) -> anyhow::Result<Outcome> {
    // Never dump ourselves (a crash in the handler would re-enter it).
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let exe = args
        .exe
        .as_ref()
        .map(|e| exe_from_pattern(&e.to_string_lossy()));
    let name = args
        .process_name
        .as_ref()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            exe.as_deref()
                .and_then(|e| Path::new(e).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "???".into());
    let filters_on = !config.crash.no_privacy_filters_file.exists();
    let filter = if filters_on {
        privacy_filter(exe.as_deref())
    } else {
        Filter::Keep
    };
    // Which process crashed: `%P`, held to the kernel's pidfd when it gave
    // one (an empty `-F` is a kernel that has no `%F`). Its status is read
    // while the pidfd still names it: once it is gone, its pid may be
    // another process's.
    let pidfd = args.pidfd.as_deref().filter(|f| !f.trim().is_empty());
    let identified = match pidfd {
        Some(fd) => pidfd_check(fd, args.pid).map(Some),
        None => Ok(args.pid),
    };
    let pid = match identified {
        Ok(p) => p,
        Err(why) => return Ok(refuse(&name, &why)),
    };
    // What only root can read, before privileges go.
    let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    if let Some(fd) = pidfd {
        if let Err(why) = pidfd_check(fd, pid) {
            return Ok(refuse(&name, &why));
        }
    }
    let changed = status.is_some_and(|s| credentials_changed(&s));
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let suid = suid_dump(args.dump_mode.as_deref(), changed, suid_dumpable);
    drop_privileges(&config.crash.service_user)?;

    let inbox = StateLayout::new(&config.host.state_dir).crash_inbox();
    std::fs::create_dir_all(&inbox)
        .with_context(|| format!("cannot create {}", inbox.display()))?;
    let inbox_fd = open_inbox(&inbox)?;
    // A process dumped only because fs.suid_dumpable = 2: its memory may
    // hold another user's secrets, so none of it is kept.
    let short = match filter.short_record() {
        Some(s) => Some(s),
        None if suid => Some((
            "org.clearlinux/crash/unknown",
            2,
            "Crash of a privileged process (core not kept: fs.suid_dumpable = 2)",
        )),
        None => None,
    };
    let id = format!(
        "{}-{}-{:08x}",
        now(),
        pid.unwrap_or(0),
        rand::random::<u32>()
    );
    // A crash loop is bounded whether or not its core would be kept.
    let what = exe.as_deref().unwrap_or(&name);
    let new_entry = short.is_none().then_some(id.as_str());
    let reservation = match (admit(&inbox_fd, what, &config.crash, new_entry)?, short) {
        (Admission::Dropped(why), _) => {
            log(&why);
            return Ok(Outcome::Dropped(why));
        }
        (Admission::Keep(r), _) => r,
        (Admission::NoCore, Some((class, severity, text))) => {
            send_short(config, class, severity, text, args.verbose)?;
            return Ok(Outcome::Filtered(class));
        }
        (Admission::NoCore, None) => anyhow::bail!("crash of {name} lost: no entry made"),
    };

    // Ok(false): the core would pass the free-space floor.
    let result = (|| -> anyhow::Result<bool> {
        let entry_fd = &reservation.entry;
        let core = create_in(entry_fd, CORE_FILE)?;
        let mut input: Box<dyn Read> = match &args.core_file {
            Some(p) => Box::new(File::open(p).with_context(|| p.display().to_string())?),
            None => Box::new(io::stdin().lock()),
        };
        let (bytes, truncated) = copy_capped(&mut input, &core, reservation.core_limit)?;
        if truncated && reservation.core_limit < config.crash.crash_max_core_size.get() {
            // Cut by the free-space floor, not by crash_max_core_size.
            return Ok(false);
        }
        if truncated {
            log(&format!(
                "core of {name} cut at crash_max_core_size = {} bytes",
                config.crash.crash_max_core_size.get()
            ));
        }
        let meta = CrashMeta {
            process_name: name.clone(),
            process_path: exe.clone(),
            pid: pid.unwrap_or(0),
            global_pid: pid,
            signal: args.signal,
            uid: args.uid,
            time: now(),
            core_bytes: bytes,
            core_truncated: truncated,
        };
        let text =
            serde_json::to_vec(&meta).with_context(|| format!("cannot write {META_FILE}"))?;
        let tmp = format!("{META_FILE}.tmp");
        let f = create_in(entry_fd, &tmp)?;
        (&f).write_all(&text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {META_FILE}"))?;
        entry_fd
            .rename(&tmp, entry_fd, META_FILE)
            .with_context(|| format!("cannot rename {tmp}"))?;
        sync_dir(entry_fd).context("fsync of the entry")?;
        sync_dir(&inbox_fd).context("fsync of the inbox")?;
        Ok(true)
    })();
    match result {
        Ok(true) => reservation.release(),
        Ok(false) => {
            let _ = inbox_fd.remove_dir_all(&id);
            let why = count_low_space_drop(&inbox_fd, what, &config.crash)?;
            log(&why);
            return Ok(Outcome::Dropped(why));
        }
        Err(e) => {
            let _ = inbox_fd.remove_dir_all(&id);
            return Err(e.context(format!("crash of {name} lost")));
        }
    }

    let timeout = if args.verbose {
        VERBOSE_WAIT
    } else {
        ANNOUNCE_WAIT
    };
    let announced = Client::connect(&config.host.control_socket, Some(timeout))
        .and_then(|mut c| c.crash(&id, args.verbose));
    match announced {
        Ok(records) => {
            for r in records {
                println!(
                    "{} (severity {})\n{}",
                    escape(&r.classification, 256),
                    r.severity,
                    r.payload
                );
            }
        }
        Err(e @ ClientError::Daemon(_)) => log(&format!("telemd refused crash {id}: {e}")),
        Err(e) => log(&format!(
            "crash {id} waits in the inbox: {}",
            telem_core::error_text::one_line(telem_core::error_text::chain(&e))
        )),
    }
    Ok(Outcome::Queued(id))
}

fn send_short(
    config: &Config,
    class: &str,
    severity: u8,
    text: &str,
    verbose: bool,
) -> anyhow::Result<()> {
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
    send_record(&config.socket.socket_path, &record, CLIENT_TIMEOUT)
        .with_context(|| format!("cannot send the {class} record"))?;
    if verbose {
        println!("{class} (severity {severity})\n{text}");
    }
    Ok(())
}

/// Switches to the service user for good (when running as root).
fn drop_privileges(user: &str) -> anyhow::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Uid, User};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let pw = User::from_name(user)
        .with_context(|| format!("cannot look up the service user {user}"))?
        .with_context(|| {
            format!("service user {user} does not exist; refusing to keep a core as root")
        })?;
    setgroups(&[])
        .and_then(|()| setgid(pw.gid))
        .and_then(|()| setuid(pw.uid))
        .with_context(|| format!("cannot drop privileges to {user}"))?;
    // Root must be gone for good (unless the admin made root the service
    // user, as the tests running as root do).
    if !pw.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        anyhow::bail!("cannot drop privileges to {user}: root can be regained");
    }
    Ok(())
}

/// The inbox directory, not through a symlink. Every later file operation
/// is relative to it (`cap-std`), so nothing written can land outside.
fn open_inbox(p: &Path) -> anyhow::Result<Dir> {
    use rustix::fs::Mode;
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", p.display()))?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// A new entry directory (0700) in the inbox, opened.
fn make_entry(inbox: &Dir, name: &str) -> anyhow::Result<Dir> {
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    inbox
        .create_dir_with(name, &builder)
        .with_context(|| format!("cannot create inbox entry {name}"))?;
    // One component (an id the handler made), never through a symlink.
    use rustix::fs::Mode;
    let fd = rustix::fs::openat(
        inbox,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open inbox entry {name}"))?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// Opens the regular file `name` directly in `dir` (one component): never
/// through a symlink, never blocking on a FIFO or device someone with the
/// service user's rights planted there; anything but a regular file is
/// refused.
fn open_plain(dir: &Dir, name: &str, flags: OFlags) -> io::Result<File> {
    use rustix::fs::Mode;
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is not a regular file"),
        ));
    }
    Ok(f)
}

/// Makes a directory's entries durable. cap-std holds directories as
/// `O_PATH` descriptors, which cannot be synced, so the directory itself
/// is opened (as `.`, relative to the descriptor: no path lookup) for it.
fn sync_dir(dir: &Dir) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::fsync(fd)?)
}

/// A fresh file: never an existing one, never through a symlink, 0600.
fn create_in(dir: &Dir, name: &str) -> anyhow::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let f = dir
        .open_with(name, &options)
        .with_context(|| format!("cannot create {name}"))?;
    Ok(f.into_std())
}

/// Copies at most `cap` bytes, then fsyncs; says whether input was left.
fn copy_capped(input: &mut dyn Read, out: &File, cap: u64) -> anyhow::Result<(u64, bool)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut w = out;
    loop {
        let want = (cap - total).min(buf.len() as u64) as usize;
        if want == 0 {
            let mut probe = [0u8; 1];
            let more = matches!(input.read(&mut probe), Ok(n) if n > 0);
            w.sync_all().context("cannot write the core")?;
            return Ok((total, more));
        }
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the core")),
        };
        w.write_all(&buf[..n]).context("cannot write the core")?;
        total += n as u64;
    }
    w.sync_all().context("cannot write the core")?;
    Ok((total, false))
}

/// A crash not kept because the process it names cannot be taken for the
/// crashed one.
fn refuse(name: &str, why: &str) -> Outcome {
    let why = format!("crash of {name} not kept: {why}");
    log(&why);
    Outcome::Dropped(why)
}

/// What the flood limits make of a crash.
enum Admission {
    /// Dropped, and why.
    Dropped(String),
    /// Allowed, keeping no core (a short record).
    NoCore,
    /// Allowed, its entry made and its room reserved.
    Keep(Reservation),
}

/// An inbox entry being written and the room reserved for it.
struct Reservation {
    /// The entry directory.
    entry: Dir,
    /// The reservation file, locked while this handler lives.
    file: File,
    /// Bytes of core that fit: `crash_max_core_size`, or less where the
    /// free-space floor leaves less.
    core_limit: u64,
}

impl Reservation {
    /// The entry is complete: from now on it counts at its real size.
    fn release(self) {
        let _ = self.entry.remove_file(RESERVATION_FILE);
        // Unlinked first, then unlocked (closed): a handler counting the
        // inbox never finds it unlocked while this one is still writing.
        drop(self.file);
    }
}

/// Holds the lock shared by concurrent handlers until dropped.
fn lock_inbox(inbox: &Dir) -> anyhow::Result<File> {
    let lock = open_plain(inbox, ".lock", OFlags::WRONLY | OFlags::CREATE)
        .context("cannot open the inbox lock")?;
    // Released when `lock` closes.
    flock(&lock, FlockOperation::LockExclusive).context("cannot lock the inbox")?;
    Ok(lock)
}

/// Drops the oldest entries until at most `keep` remain.
fn forget_oldest(last: &mut BTreeMap<String, u64>, keep: usize) {
    if last.len() <= keep {
        return;
    }
    let mut by_age: Vec<(u64, String)> = last.iter().map(|(k, t)| (*t, k.clone())).collect();
    by_age.sort();
    for (_, k) in by_age.into_iter().take(last.len() - keep) {
        last.remove(&k);
    }
}

/// An executable's path as the repeat filter keys it: cut at a char
/// boundary near [`RECENT_KEY_CAP`] bytes.
fn recent_key(exe: &str) -> String {
    let mut cut = exe.len().min(RECENT_KEY_CAP);
    while !exe.is_char_boundary(cut) {
        cut -= 1;
    }
    exe[..cut].to_owned()
}

fn read_recent(inbox: &Dir) -> Recent {
    let mut text = Vec::new();
    open_plain(inbox, RECENT_FILE, OFlags::RDONLY)
        .and_then(|f| (&f).take(RECENT_FILE_CAP).read_to_end(&mut text))
        .ok()
        .and_then(|_| serde_json::from_slice(&text).ok())
        .unwrap_or_default()
}

fn write_recent(inbox: &Dir, recent: &Recent) -> anyhow::Result<()> {
    let tmp = format!("{RECENT_FILE}.tmp");
    serde_json::to_vec(recent)
        .map_err(io::Error::other)
        .and_then(|text| {
            open_plain(inbox, &tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)
                .and_then(|f| (&f).write_all(&text))
        })
        .and_then(|()| inbox.rename(&tmp, inbox, RECENT_FILE))
        .context("cannot record the flood state")
}

fn low_space_message(exe: &str, crash: &CrashConfig, dropped: u64) -> String {
    format!(
        "crash of {exe} dropped: its core would leave less than crash_min_free_mb = {} MiB free on the crash inbox's filesystem ({dropped} dropped so far)",
        crash.crash_min_free_mb.get()
    )
}

/// The flood limits, under the lock shared by concurrent handlers: the
/// same executable again within `crash_repeat_window_secs`; for a crash
/// whose core would be kept (`new_entry` names its entry), an inbox at
/// `crash_inbox_max_size` or more counting what the crashes being copied
/// have reserved, or less room than a small core above the
/// `crash_min_free_mb` floor. An admitted core's entry is made and its
/// room reserved before the lock is let go.
fn admit(
    inbox: &Dir,
    exe: &str,
    crash: &CrashConfig,
    new_entry: Option<&str>,
) -> anyhow::Result<Admission> {
    let _lock = lock_inbox(inbox)?;
    let mut recent = read_recent(inbox);
    let t = now();
    let window = crash.crash_repeat_window_secs.get();
    recent
        .last
        .retain(|_, last| t.saturating_sub(*last) < window.max(1));
    forget_oldest(&mut recent.last, MAX_RECENT - 1);
    let exe = &recent_key(exe);
    let verdict = if recent.last.contains_key(exe) && window > 0 {
        recent.dropped_repeats += 1;
        Admission::Dropped(format!(
            "crash of {exe} dropped: it crashed less than {window} s ago ({} repeats dropped so far)",
            recent.dropped_repeats
        ))
    } else if let Some(id) = new_entry {
        let usage = inbox_usage(inbox, crash.crash_max_core_size.get() + META_RESERVE);
        // The floor (0: none) counts the room reserved and not yet written
        // as used.
        let room = if crash.crash_min_free_mb.get() == 0 {
            u64::MAX
        } else {
            free_bytes(inbox)?
                .saturating_sub(usage.unwritten)
                .saturating_sub(crash.crash_min_free_mb.get().saturating_mul(MIB))
                .saturating_sub(META_RESERVE)
        };
        let core_limit = room.min(crash.crash_max_core_size.get());
        if usage.bytes >= crash.crash_inbox_max_size.get() {
            recent.dropped_full += 1;
            Admission::Dropped(format!(
                "crash of {exe} dropped: the crash inbox holds crash_inbox_max_size = {} bytes or more ({} dropped so far)",
                crash.crash_inbox_max_size.get(), recent.dropped_full
            ))
        } else if core_limit < MIN_CORE.min(crash.crash_max_core_size.get()) {
            recent.dropped_low_space += 1;
            Admission::Dropped(low_space_message(exe, crash, recent.dropped_low_space))
        } else {
            let r = reserve(inbox, id, core_limit)?;
            recent.last.insert(exe.to_owned(), t);
            Admission::Keep(r)
        }
    } else {
        recent.last.insert(exe.to_owned(), t);
        Admission::NoCore
    };
    if let Err(e) = write_recent(inbox, &recent) {
        if let (Admission::Keep(_), Some(id)) = (&verdict, new_entry) {
            let _ = inbox.remove_dir_all(id);
        }
        return Err(e);
    }
    Ok(verdict)
}

/// Counts (under the inbox lock) a crash dropped once its core passed
/// what the free-space floor left it; says why.
fn count_low_space_drop(inbox: &Dir, exe: &str, crash: &CrashConfig) -> anyhow::Result<String> {
    let _lock = lock_inbox(inbox)?;
    let mut recent = read_recent(inbox);
    recent.dropped_low_space += 1;
    write_recent(inbox, &recent)?;
    Ok(low_space_message(exe, crash, recent.dropped_low_space))
}

/// Makes the entry `id` and its reservation for a core of up to
/// `core_limit` bytes (under the inbox lock).
fn reserve(inbox: &Dir, id: &str, core_limit: u64) -> anyhow::Result<Reservation> {
    let entry = make_entry(inbox, id)?;
    let made = (|| {
        let file = create_in(&entry, RESERVATION_FILE)?;
        // The lock lasts as long as `file` is open.
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("cannot lock the reservation of {id}"))?;
        (&file)
            .write_all((core_limit + META_RESERVE).to_string().as_bytes())
            .with_context(|| format!("cannot reserve room for {id}"))?;
        Ok(file)
    })();
    match made {
        Ok(file) => Ok(Reservation {
            entry,
            file,
            core_limit,
        }),
        Err(e) => {
            let _ = inbox.remove_dir_all(id);
            Err(e)
        }
    }
}

/// What the inbox's entries hold, counting each entry being written at
/// its reservation when that is more (`unwritten`: by how much).
#[derive(Debug, Default, PartialEq, Eq)]
struct Usage {
    bytes: u64,
    unwritten: u64,
}

/// [`Usage`] of the inbox (under the inbox lock); a reservation that cannot
/// be read counts as `fallback` bytes.
fn inbox_usage(inbox: &Dir, fallback: u64) -> Usage {
    let mut usage = Usage::default();
    let Ok(entries) = inbox.entries() else {
        return usage;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(entry) = e.open_dir() else { continue };
        let held: u64 = entry
            .entries()
            .into_iter()
            .flatten()
            .filter_map(|f| f.ok())
            .filter(|f| f.file_name() != RESERVATION_FILE)
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .fold(0, u64::saturating_add);
        let reserved = live_reservation(&entry, fallback).unwrap_or(0);
        usage.bytes = usage.bytes.saturating_add(held.max(reserved));
        usage.unwritten = usage
            .unwritten
            .saturating_add(reserved.saturating_sub(held));
    }
    usage
}

/// The bytes an entry being written has reserved, if its handler is
/// still at it; a reservation its handler left behind (it died: the lock
/// went with it) is removed.
fn live_reservation(entry: &Dir, fallback: u64) -> Option<u64> {
    // Someone with the service user's rights could have put a FIFO or a
    // symlink there: counted at the fallback, neither waited on nor followed.
    let f = match open_plain(entry, RESERVATION_FILE, OFlags::RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => return Some(fallback),
    };
    // A lock we get is released when `f` closes.
    if flock(&f, FlockOperation::NonBlockingLockShared).is_ok() {
        let _ = entry.remove_file(RESERVATION_FILE);
        return None;
    }
    let mut text = String::new();
    let _ = f.take(32).read_to_string(&mut text);
    Some(text.trim().parse().unwrap_or(fallback))
}

/// Bytes an unprivileged user may still write on the filesystem of `dir`.
fn free_bytes(dir: &Dir) -> anyhow::Result<u64> {
    let st = rustix::fs::fstatvfs(dir).context("cannot read the free space of the inbox")?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
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
    fn pidfd_fdinfo_and_dump_mode_are_read() {
        let live =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1063\nPid:\t4242\nNSpid:\t4242\t1\n";
        assert_eq!(pidfd_pid(live), Some(4242));
        assert_eq!(pidfd_pid("pos:\t0\nPid:\t-1\nNSpid:\t-1\n"), Some(-1));
        assert_eq!(pidfd_pid("pos:\t0\nflags:\t0100002\nmnt_id:\t1\n"), None);
        assert_eq!(pidfd_pid("NSpid:\t7\n"), None);
        assert!(pidfd_check("-1", Some(1)).is_err());
        assert!(pidfd_check("x", None).is_err());
        // Standard input is a file or pipe, never a pidfd.
        assert!(pidfd_check("0", None).is_err());

        // %d decides when given; without it, the sysctl and credentials.
        assert!(suid_dump(Some("2"), false, 0));
        assert!(!suid_dump(Some("1"), true, 2));
        assert!(
            suid_dump(Some("0"), false, 0),
            "a value not understood keeps no core"
        );
        assert!(suid_dump(Some(""), true, 2));
        assert!(!suid_dump(Some(" "), false, 2));
        assert!(suid_dump(None, true, 2));
        assert!(!suid_dump(None, true, 1));
    }

    #[test]
    fn reservations_count_while_their_handler_lives() {
        let dir = std::env::temp_dir().join(format!("telem-resv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("done")).unwrap();
        std::fs::write(dir.join("done/core"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join(".recent.json"), vec![b' '; 500]).unwrap();
        let fd = open_inbox(&dir).unwrap();
        let r = reserve(&fd, "busy", 10_000).unwrap();
        let reserved = 10_000 + META_RESERVE;
        std::fs::write(dir.join("busy/core"), vec![0u8; 4000]).unwrap();
        assert_eq!(
            inbox_usage(&fd, 1),
            Usage {
                bytes: 1000 + reserved,
                unwritten: reserved - 4000
            }
        );
        // Complete: counted at its real size.
        r.release();
        assert!(!dir.join("busy").join(RESERVATION_FILE).exists());
        assert_eq!(
            inbox_usage(&fd, 1),
            Usage {
                bytes: 5000,
                unwritten: 0
            }
        );
        // Left behind by a handler that died: unlocked, so removed.
        let r = reserve(&fd, "dead", 10_000).unwrap();
        drop(r);
        assert_eq!(inbox_usage(&fd, 1).bytes, 5000);
        assert!(!dir.join("dead").join(RESERVATION_FILE).exists());
        // Not a number: counted at the fallback.
        let r = reserve(&fd, "odd", 10_000).unwrap();
        r.file.set_len(0).unwrap();
        std::os::unix::fs::FileExt::write_at(&r.file, b"lots", 0).unwrap();
        assert_eq!(inbox_usage(&fd, 77_777).bytes, 5000 + 77_777);
        drop(r);
        assert!(free_bytes(&fd).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_repeat_filter_forgets_the_oldest_beyond_its_cap() {
        let mut last: BTreeMap<String, u64> = (0..MAX_RECENT as u64 + 10)
            .map(|i| (format!("/usr/bin/p{i}"), i))
            .collect();
        forget_oldest(&mut last, MAX_RECENT - 1);
        assert_eq!(last.len(), MAX_RECENT - 1);
        assert!(!last.contains_key("/usr/bin/p0") && last.contains_key("/usr/bin/p1033"));
        assert_eq!(recent_key(&"é".repeat(400)).len(), RECENT_KEY_CAP);
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

    // Found by scripts/mutants.sh (docs/mutants.md).

    #[test]
    fn filtered_crashes_send_the_legacy_short_records() {
        assert_eq!(Filter::Keep.short_record(), None);
        assert_eq!(
            Filter::ThirdParty.short_record(),
            Some(("org.clearlinux/crash/unknown", 2, "Crash from third party"))
        );
        assert_eq!(
            Filter::PackageBuild.short_record(),
            Some((
                "org.clearlinux/crash/clr-build",
                2,
                "Crash from Clear package build"
            ))
        );
    }

    #[test]
    fn the_repeat_key_is_cut_back_to_a_char_boundary() {
        // 512 falls inside a two-byte character here.
        let exe = format!("a{}", "é".repeat(400));
        assert_eq!(recent_key(&exe).len(), RECENT_KEY_CAP - 1);
    }

    #[test]
    fn planted_fifos_and_symlinks_are_neither_waited_on_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open_inbox(dir.path()).unwrap();
        // A FIFO as the flood state: read as empty at once, not waited on.
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.path().join(RECENT_FILE))
            .status()
            .unwrap()
            .success());
        assert_eq!(read_recent(&inbox).last.len(), 0);
        // A symlink as the lock or the temp file: refused, its target untouched.
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".lock")).unwrap();
        assert!(lock_inbox(&inbox).is_err());
        std::fs::remove_file(dir.path().join(RECENT_FILE)).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(format!("{RECENT_FILE}.tmp"))).unwrap();
        assert!(write_recent(&inbox, &Recent::default()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A symlinked reservation counts at the fallback.
        std::fs::create_dir(dir.path().join("e")).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("e").join(RESERVATION_FILE)).unwrap();
        let entry = inbox.open_dir("e").unwrap();
        assert_eq!(live_reservation(&entry, 99), Some(99));
    }

    #[test]
    fn the_flood_state_is_read_up_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open_inbox(dir.path()).unwrap();
        // Valid JSON, but padded past RECENT_FILE_CAP: not read whole, so
        // taken as no state rather than read without bound.
        let mut text = b"{\"dropped_repeats\": 7".to_vec();
        text.resize(RECENT_FILE_CAP as usize * 2, b' ');
        text.push(b'}');
        std::fs::write(dir.path().join(RECENT_FILE), &text).unwrap();
        assert_eq!(read_recent(&inbox).dropped_repeats, 0);
        std::fs::write(dir.path().join(RECENT_FILE), b"{\"dropped_repeats\": 7}").unwrap();
        assert_eq!(read_recent(&inbox).dropped_repeats, 7);
    }
}
