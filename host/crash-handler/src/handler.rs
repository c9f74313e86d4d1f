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

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use telem_cli::crash_handler::Args;
use telem_core::config::Config;
use telem_core::control::client::{Client, ClientError};
use telem_core::crash_inbox::{CrashMeta, CORE_FILE, PROGRAM_CAP, PROGRAM_FILE};
use telem_core::native_client::{build_local_record, send_record, NewRecord, CLIENT_TIMEOUT};
use telem_core::state_layout::StateLayout;
use telem_core::untrusted::escape;

use crate::admission::{admit, count_low_space_drop, now, Admission};
use crate::identify::{exe_from_pattern, identify};
use crate::inbox::{copy_capped, create_in, finish_entry, open_inbox};
use crate::privacy::{privacy_filter, Filter};

/// How long `-v` waits for telemd to make the record.
const VERBOSE_WAIT: Duration = Duration::from_secs(60);
/// How long telemd may take to take note of a crash.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

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

/// Runs the handler; `Err` means the crash was lost. The steps, in order:
/// never dump ourselves; name the crash and apply the privacy filters;
/// identify the crashed process while still root; drop to the service
/// user; admit the crash against the flood limits (reserving its room);
/// send the short record, or stream the core and its metadata into the
/// entry; tell `telemd`.
pub fn run(args: &Args, config: &Config) -> anyhow::Result<Outcome> {
    // A crash in the handler would re-enter it.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let (exe, name) = names(args);
    let filter = if config.crash.no_privacy_filters_file.exists() {
        Filter::Keep
    } else {
        privacy_filter(exe.as_deref())
    };
    let crashed = match identify(
        args.pid,
        args.tid.as_deref(),
        args.pidfd.as_deref(),
        args.dump_mode.as_deref(),
    ) {
        Ok(c) => c,
        Err(why) => return Ok(refuse(&name, &why)),
    };
    drop_privileges(&config.crash.service_user)?;

    let inbox = StateLayout::new(&config.host.state_dir).crash_inbox();
    std::fs::create_dir_all(&inbox)
        .with_context(|| format!("cannot create {}", inbox.display()))?;
    let inbox_fd = open_inbox(&inbox)?;
    let short = short_record(filter, crashed.suid);
    let id = format!(
        "{}-{}-{:08x}",
        now(),
        crashed.pid.unwrap_or(0),
        rand::random::<u32>()
    );
    // A crash loop is bounded whether or not its core would be kept; a
    // repeat is the same program stopped at the same site (the program
    // alone when the kernel did not name the crashing thread).
    let what = exe.as_deref().unwrap_or(&name);
    let new_entry = short.is_none().then_some(id.as_str());
    let admission = admit(
        &inbox_fd,
        what,
        args.uid,
        args.signal,
        crashed.site.as_deref(),
        &config.crash,
        new_entry,
    )?;
    let reservation = match (admission, short) {
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
        let core = create_in(&reservation.entry, CORE_FILE)?;
        let mut input: Box<dyn Read> = match &args.core_file {
            Some(p) => Box::new(File::open(p).with_context(|| p.display().to_string())?),
            None => Box::new(io::stdin().lock()),
        };
        let (bytes, truncated) = copy_capped(&mut input, &core, reservation.core_limit)?;
        // The program, within the room reserved for the core.
        let program_kept = match &crashed.program {
            Some(program) if !truncated => keep_program(
                program,
                &reservation.entry,
                reservation.core_limit.saturating_sub(bytes),
            ),
            _ => false,
        };
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
            pid: crashed.pid.unwrap_or(0),
            global_pid: crashed.pid,
            signal: args.signal,
            uid: args.uid,
            time: now(),
            core_bytes: bytes,
            core_truncated: truncated,
            program_kept,
        };
        finish_entry(&inbox_fd, &reservation.entry, &meta)?;
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
    announce(config, &id, args.verbose);
    Ok(Outcome::Queued(id))
}

/// Copies the crashed program into the entry (`PROGRAM_FILE`) if it fits
/// in `room`; a program not kept costs its frames' names, never the crash.
fn keep_program(program: &File, entry: &cap_std::fs::Dir, room: u64) -> bool {
    let fits = program
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() <= room.min(PROGRAM_CAP));
    if !fits {
        return false;
    }
    let kept = create_in(entry, PROGRAM_FILE).and_then(|out| {
        let mut input = program;
        copy_capped(&mut input, &out, PROGRAM_CAP)
    });
    match kept {
        Ok((_, false)) => true,
        _ => {
            let _ = entry.remove_file(PROGRAM_FILE);
            false
        }
    }
}

/// The crashed executable's path (`%E`, `!` turned back into `/`) and the
/// process's name (`%e`, or the path's last part, or `???`).
fn names(args: &Args) -> (Option<String>, String) {
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
    (exe, name)
}

/// The short record sent instead of keeping the core, if one is: the
/// privacy filter's, or, for a process dumped only because
/// `fs.suid_dumpable` = 2 (its memory may hold another user's secrets),
/// one that keeps none of it.
fn short_record(filter: Filter, suid: bool) -> Option<(&'static str, u8, &'static str)> {
    match filter.short_record() {
        Some(s) => Some(s),
        None if suid => Some((
            "org.clearlinux/crash/unknown",
            2,
            "Crash of a privileged process (core not kept: fs.suid_dumpable = 2)",
        )),
        None => None,
    }
}

/// Tells `telemd` of the complete entry `id`; with `-v`, waits for the
/// records it made and prints them. A daemon that does not answer finds
/// the entry at its next start.
fn announce(config: &Config, id: &str, verbose: bool) {
    let timeout = if verbose { VERBOSE_WAIT } else { ANNOUNCE_WAIT };
    let announced = Client::connect(&config.host.control_socket, Some(timeout))
        .and_then(|mut c| c.crash(id, verbose));
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
            telem_core::error_text::Chain(&e)
        )),
    }
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

/// A crash not kept because the process it names cannot be taken for the
/// crashed one.
fn refuse(name: &str, why: &str) -> Outcome {
    let why = format!("crash of {name} not kept: {why}");
    log(&why);
    Outcome::Dropped(why)
}
