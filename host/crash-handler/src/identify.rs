//! Which process crashed, read while the handler is still root: `%E`
//! turned back into a path, `%P` held to the kernel's pidfd (`%F`),
//! whether the dump is of a process whose credentials changed (setuid),
//! whose memory may hold another user's secrets, and where it crashed.

use std::io::{BufRead, BufReader, Read};

/// Most bytes of `/proc/PID/maps` read to find the crash site.
const MAPS_CAP: u64 = 16 << 20;
/// Most bytes of a module path kept in a crash site.
const SITE_PATH_CAP: usize = 256;

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

/// The crashed process as the kernel and `/proc` name it.
#[derive(Debug)]
pub(crate) struct Crashed {
    /// `%P`, held to the pidfd when the kernel gave one.
    pub pid: Option<u32>,
    /// A dump kept for root only because of `fs.suid_dumpable` = 2.
    pub suid: bool,
    /// Where the crashing thread stopped, as `MODULE+0xOFFSET` (see
    /// [`crash_site`]), when the kernel named the thread (`%I`).
    pub site: Option<String>,
    /// The program it was running, opened through `/proc/PID/exe` while
    /// root (the very file, even deleted or replaced since, even in a
    /// directory the service user cannot read), when it lies outside
    /// `/usr` (where the crash probe's grant does not reach): kept beside
    /// the core.
    pub program: Option<std::fs::File>,
}

/// Where the crash probe's shipped grant reaches: programs elsewhere are
/// kept with their core.
const GRANTED_PROGRAMS: &str = "/usr/";

/// Identifies the crashed process (as root, before privileges go): its
/// pid, checked against the pidfd before and after its status is read
/// (once it is gone its pid may be another process's), and whether it is
/// a setuid dump. `Err` says why it cannot be taken for the crashed one.
pub(crate) fn identify(
    pid: Option<u32>,
    tid: Option<&str>,
    pidfd: Option<&str>,
    dump_mode: Option<&str>,
) -> Result<Crashed, String> {
    // An empty `-F` is a kernel that has no `%F`.
    let pidfd = pidfd.filter(|f| !f.trim().is_empty());
    let pid = match pidfd {
        Some(fd) => Some(pidfd_check(fd, pid)?),
        None => pid,
    };
    let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    // A kernel without `%I` gives nothing.
    let tid = tid.and_then(|t| t.trim().parse::<u32>().ok());
    let site = pid.zip(tid).and_then(|(p, t)| crash_site(p, t));
    let program = pid.and_then(|p| {
        let link = std::fs::read_link(format!("/proc/{p}/exe")).ok()?;
        // `/usr/bin/x (deleted)`: upgraded while it ran; the file on disk
        // is another one.
        let deleted = link.to_string_lossy().ends_with(" (deleted)");
        if link.starts_with(GRANTED_PROGRAMS) && !deleted {
            return None;
        }
        std::fs::File::open(format!("/proc/{p}/exe")).ok()
    });
    if let Some(fd) = pidfd {
        pidfd_check(fd, pid)?;
    }
    let changed = status.is_some_and(|s| credentials_changed(&s));
    let suid_dumpable = std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    Ok(Crashed {
        pid,
        suid: suid_dump(dump_mode, changed, suid_dumpable),
        site,
        program,
    })
}

/// Where thread `tid` of process `pid` stopped, as the module mapped there
/// and the offset in its file: `/usr/lib/libc.so.6+0x8f3b2`. The same
/// crash gives the same site whatever the address layout (ASLR); another
/// site of the same program gives another. The kernel shows a thread's
/// instruction pointer in `/proc` only while it dumps core (to root):
/// that is now, and no byte of the core is read for it.
fn crash_site(pid: u32, tid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let pc = instruction_pointer(&stat)?;
    let maps = std::fs::File::open(format!("/proc/{pid}/maps")).ok()?;
    site_in_maps(BufReader::new(maps.take(MAPS_CAP)), pc)
}

/// `kstkeip` (field 30) of a `/proc/PID/task/TID/stat` line; 0 (not
/// dumping, not permitted) is none.
pub fn instruction_pointer(stat: &str) -> Option<u64> {
    // The name (field 2) is in parentheses and may hold spaces and `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let pc: u64 = after_name.split_whitespace().nth(30 - 3)?.parse().ok()?;
    (pc != 0).then_some(pc)
}

/// The site of `pc` in a `/proc/PID/maps` listing: the mapped file (or
/// `[anon]`, `[stack]`, ...) and the offset of `pc` in it.
pub fn site_in_maps(maps: impl BufRead, pc: u64) -> Option<String> {
    // A path need not be UTF-8: read bytes, show them lossily.
    for line in maps.split(b'\n') {
        let line = String::from_utf8_lossy(&line.ok()?).into_owned();
        let mut f = line.split_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        if !(start..end).contains(&pc) {
            continue;
        }
        let offset = u64::from_str_radix(f.nth(1)?, 16).ok()?;
        // dev and inode, then the path (which may hold spaces).
        let path = line
            .splitn(6, char::is_whitespace)
            .nth(5)
            .map(str::trim_start);
        let module = match path {
            Some(p) if !p.is_empty() => {
                let mut cut = p.len().min(SITE_PATH_CAP);
                while !p.is_char_boundary(cut) {
                    cut -= 1;
                }
                &p[..cut]
            }
            _ => "[anon]",
        };
        return Some(format!("{module}+0x{:x}", pc - start + offset));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_credentials_are_seen() {
        let plain = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";
        let setuid = "Name:\tpasswd\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert!(!credentials_changed(plain));
        assert!(credentials_changed(setuid));
        assert_eq!(exe_from_pattern("!usr!bin!crashme"), "/usr/bin/crashme");
    }

    #[test]
    fn the_crash_site_is_read_from_proc() {
        let stat = "4242 (a (b) c) S 1 2 3 0 -1 4 5 6 7 8 9 10 11 12 20 0 1 0 99 1000 50 18446744073709551615 1 1 0 0 94405731991946 0 0 0";
        assert_eq!(instruction_pointer(stat), Some(94405731991946));
        let not_dumping = "4242 (cat) S 1 2 3 0 -1 4 5 6 7 8 9 10 11 12 20 0 1 0 99 1000 50 18446744073709551615 1 1 0 0 0 0 0 0";
        assert_eq!(instruction_pointer(not_dumping), None);
        assert_eq!(instruction_pointer("garbage"), None);
        let maps = "55dc8c1eb000-55dc8c1ec000 r--p 00000000 08:01 1234 /tmp/my dir/segv\n\
                    55dc8c1ec000-55dc8c1ed000 r-xp 00001000 08:01 1234 /tmp/my dir/segv\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
        let site = |pc| site_in_maps(maps.as_bytes(), pc);
        assert_eq!(
            site(0x55dc8c1ec18a).as_deref(),
            Some("/tmp/my dir/segv+0x118a")
        );
        assert_eq!(site(0x7f0000000010).as_deref(), Some("[anon]+0x10"));
        assert_eq!(site(0x1000), None);
        // The same code mapped elsewhere (ASLR) is the same site.
        let moved = maps.replace("55dc8c1e", "5600001e");
        assert_eq!(
            site_in_maps(moved.as_bytes(), 0x5600001ec18a).as_deref(),
            Some("/tmp/my dir/segv+0x118a")
        );
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
}
