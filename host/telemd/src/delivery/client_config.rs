//! The `CFG:` line of a native record: the legacy library let a probe name
//! another config file, and the poster sent that record to the file's
//! `server` with its `tidheader`. Any local user can send a native frame,
//! so the name is hostile. It is honoured only for a regular file under one
//! of `cfg_allowed_dirs` (opened beneath it with cap-std, so no symlink
//! leads out), owned by root and
//! writable by no one else, read with a size cap, and never for a
//! `file://` server. Anything else sends the record to the daemon's own
//! server. Spool files carry the same line and get the same rule.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use cap_std::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::post::Target;
use telem_core::config::Config;

/// Bytes of a named config file read at most.
pub const CLIENT_CONFIG_CAP: u64 = 64 * 1024;

/// Why a named config is not used.
#[derive(Debug, Error)]
pub enum CfgRefusal {
    /// Not absolute, or with `.`/`..` parts.
    #[error("not a plain absolute path")]
    NotPlain,
    /// Outside every allowed directory, as written or once its symlinks
    /// are followed.
    #[error("{0} is outside cfg_allowed_dirs")]
    Outside(PathBuf),
    /// Opening or reading it failed.
    #[error("cannot read it")]
    Io(#[from] std::io::Error),
    /// A FIFO, device, directory...
    #[error("not a regular file")]
    NotRegular,
    /// Not root's, or writable by others.
    #[error("owned by uid {uid} with mode {mode:o}: must be root's and writable by no one else")]
    Untrusted {
        /// Owner.
        uid: u32,
        /// Permission bits.
        mode: u32,
    },
    /// Larger than [`CLIENT_CONFIG_CAP`].
    #[error("larger than {CLIENT_CONFIG_CAP} bytes")]
    TooLarge,
    /// Not a valid config.
    #[error(transparent)]
    Invalid(#[from] telem_core::config::ConfigError),
    /// Its server is a local file.
    #[error("its server is a file:// target, which a named config may not use")]
    FileServer,
}

/// The target `path` names, if the rules above allow it.
pub fn target_of(path: &str, allowed_dirs: &[PathBuf]) -> Result<Target, CfgRefusal> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(CfgRefusal::NotPlain);
    }
    // Nothing outside the allowed directories is touched, not even to
    // resolve it (a path on a hung network mount would stall delivery).
    let Some((dir, rel)) = allowed_dirs.iter().find_map(|d| {
        p.strip_prefix(d)
            .ok()
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(|rel| (d, rel))
    }) else {
        return Err(CfgRefusal::Outside(p.to_owned()));
    };
    // Opened beneath the allowed directory (cap-std): a symlink or a
    // rename that would lead out of it fails instead of being followed.
    let dir = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
    let mut options = cap_std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let f = match dir.open_with(rel, &options) {
        Ok(f) => f.into_std(),
        // cap-std's answer to a path that leads outside (a real EACCES
        // carries its OS error number).
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied && e.raw_os_error().is_none() =>
        {
            return Err(CfgRefusal::Outside(p.to_owned()))
        }
        Err(e) => return Err(e.into()),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(CfgRefusal::NotRegular);
    }
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(CfgRefusal::Untrusted {
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    f.take(CLIENT_CONFIG_CAP + 1).read_to_end(&mut bytes)?;
    target_of_contents(&bytes, p)
}

/// The target the contents of a named config (`bytes`, read from `path`
/// after the checks of [`target_of`], at most one byte over the cap)
/// give, if the rules allow it: within the cap, a config that parses, not
/// a `file://` server. Apart from the filesystem so that it can be fuzzed
/// on its own (fuzz/fuzz_targets/cfg_config.rs).
pub fn target_of_contents(bytes: &[u8], path: &Path) -> Result<Target, CfgRefusal> {
    if bytes.len() as u64 > CLIENT_CONFIG_CAP {
        return Err(CfgRefusal::TooLarge);
    }
    let text = String::from_utf8_lossy(bytes);
    let config = Config::parse_str(Config::default(), &text, path)?;
    match Target::from_config(&config.delivery) {
        Target::File(_) => Err(CfgRefusal::FileServer),
        t => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A temporary allowed directory holding `custom.conf`, which names a
    /// server and a TID header.
    fn allowed_dir_with_a_config() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let allowed = t.path().join("etc-telemetrics");
        std::fs::create_dir(&allowed).unwrap();
        let good = allowed.join("custom.conf");
        std::fs::write(
            &good,
            "[settings]\nserver=http://127.0.0.1:9/x\ntidheader=X-Telemetry-TID: abc\n",
        )
        .unwrap();
        (t, allowed, good)
    }

    #[test]
    fn only_trusted_files_in_allowed_dirs_are_honoured() {
        let (t, allowed, good) = allowed_dir_with_a_config();
        let dirs = [allowed.clone()];
        let outside = t.path().join("evil.conf");
        std::fs::write(&outside, "[settings]\nserver=http://127.0.0.1:9/evil\n").unwrap();
        let link = allowed.join("link.conf");
        std::os::unix::fs::symlink(&outside, &link).unwrap();

        let s = |p: &Path| p.to_str().unwrap().to_owned();
        assert!(matches!(
            target_of("relative.conf", &dirs),
            Err(CfgRefusal::NotPlain)
        ));
        assert!(matches!(
            target_of(&format!("{}/../evil.conf", allowed.display()), &dirs),
            Err(CfgRefusal::NotPlain)
        ));
        assert!(matches!(
            target_of(&s(&outside), &dirs),
            Err(CfgRefusal::Outside(_))
        ));
        assert!(matches!(
            target_of(&s(&link), &dirs),
            Err(CfgRefusal::Outside(_))
        ));
        assert!(matches!(
            target_of("/dev/zero", &dirs),
            Err(CfgRefusal::Outside(_))
        ));
        assert!(matches!(
            target_of(&s(&allowed), &dirs),
            Err(CfgRefusal::Outside(_))
        ));
        if !is_root() {
            // Not root's: refused before anything else is looked at (the
            // checks of root's files are the test below).
            assert!(matches!(
                target_of(&s(&good), &dirs),
                Err(CfgRefusal::Untrusted { .. })
            ));
        }
        let fifo = allowed.join("fifo.conf");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(
            target_of(&s(&fifo), &dirs),
            Err(CfgRefusal::NotRegular)
        ));
    }

    #[test]
    #[ignore = "needs root: only root-owned files are honoured"]
    fn root_owned_files_are_honoured_unless_they_name_a_file_or_are_too_big_or_writable() {
        assert!(is_root(), "needs root; #[ignore]d for that reason");
        let (_t, allowed, good) = allowed_dir_with_a_config();
        let dirs = [allowed.clone()];
        let file_server = allowed.join("file.conf");
        std::fs::write(&file_server, "[settings]\nserver=file:///tmp/x\n").unwrap();
        let big = allowed.join("big.conf");
        std::fs::write(&big, vec![b'#'; 100_000]).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        assert_eq!(
            target_of(&s(&good), &dirs).unwrap(),
            Target::Http {
                url: "http://127.0.0.1:9/x".into(),
                tid_name: "X-Telemetry-TID".into(),
                tid_value: "abc".into()
            }
        );
        assert!(matches!(
            target_of(&s(&file_server), &dirs),
            Err(CfgRefusal::FileServer)
        ));
        assert!(matches!(
            target_of(&s(&big), &dirs),
            Err(CfgRefusal::TooLarge)
        ));
        // Another user's file, however tight its mode, is not honoured.
        let theirs = allowed.join("theirs.conf");
        std::fs::copy(&good, &theirs).unwrap();
        rustix::fs::chown(
            &theirs,
            Some(rustix::process::Uid::from_raw(65534)),
            Some(rustix::process::Gid::from_raw(65534)),
        )
        .unwrap();
        assert!(matches!(
            target_of(&s(&theirs), &dirs),
            Err(CfgRefusal::Untrusted { uid: 65534, .. })
        ));
        // The documented cap is 64 KiB: a long commented config is fine.
        let commented = allowed.join("commented.conf");
        std::fs::write(
            &commented,
            "[settings]\n".to_owned()
                + &"# a comment line\n".repeat(3800)
                + "server=http://127.0.0.1:9/x\n",
        )
        .unwrap();
        assert!(
            target_of(&s(&commented), &dirs).is_ok(),
            "a {} byte config",
            std::fs::metadata(&commented).unwrap().len()
        );
        // Up to the cap, every byte is read; one more is too large.
        let settings = "[settings]\nserver=http://127.0.0.1:9/x\ntidheader=X-Telemetry-TID: abc";
        let cap = CLIENT_CONFIG_CAP as usize;
        let at_cap = allowed.join("at-cap.conf");
        let padding = "#".repeat(cap - settings.len() - 1) + "\n";
        std::fs::write(&at_cap, padding.clone() + settings).unwrap();
        assert_eq!(std::fs::metadata(&at_cap).unwrap().len(), CLIENT_CONFIG_CAP);
        assert!(
            matches!(target_of(&s(&at_cap), &dirs), Ok(Target::Http { ref tid_value, .. }) if tid_value == "abc"),
            "a config of exactly the cap is read whole"
        );
        let over = allowed.join("over-cap.conf");
        std::fs::write(&over, "#".to_owned() + &padding + settings).unwrap();
        assert!(matches!(
            target_of(&s(&over), &dirs),
            Err(CfgRefusal::TooLarge)
        ));
        // Missing: a read error, not "outside".
        assert!(matches!(
            target_of(&s(&allowed.join("missing.conf")), &dirs),
            Err(CfgRefusal::Io(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            target_of(&s(&good), &dirs),
            Err(CfgRefusal::Untrusted {
                uid: 0,
                mode: 0o666
            })
        ));
        // A real permission error (another user, a root-only directory)
        // is a read error too: only cap-std's refusal of a path leading
        // out means outside. setuid here changes this thread only (the
        // raw system call, not glibc's process-wide one).
        let private = allowed.join("private");
        std::fs::create_dir(&private).unwrap();
        for open in [allowed.parent().unwrap(), &allowed] {
            std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(&theirs, private.join("custom.conf")).unwrap();
        let denied = s(&private.join("custom.conf"));
        let (reaches_allowed, as_nobody) = std::thread::spawn(move || {
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).unwrap();
            // The allowed directory itself must be open to nobody, or the
            // refusal would come from there and not from the file.
            let reaches = std::fs::read_dir(&dirs[0]).is_ok();
            (reaches, target_of(&denied, &dirs))
        })
        .join()
        .unwrap();
        assert!(
            reaches_allowed,
            "uid 65534 cannot reach {}",
            allowed.display()
        );
        assert!(
            matches!(&as_nobody, Err(CfgRefusal::Io(e)) if e.raw_os_error() == Some(libc::EACCES)),
            "{as_nobody:?}"
        );
    }
}
