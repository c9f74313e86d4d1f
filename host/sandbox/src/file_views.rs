//! File grants. WASI preopens whole directories, so a probe granted one
//! file (`/proc/mounts`, `/etc/os-release`) is shown a private directory
//! at the file's parent path holding a copy of just that file, taken when
//! the call starts and cut at [`FILE_GRANT_CAP`]. Nothing else in the real
//! directory is visible, and the copy goes when the call ends.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes of a granted file shown to the probe.
pub const FILE_GRANT_CAP: u64 = 1 << 20;

/// The private directories of one call; removed on drop.
#[derive(Debug)]
pub struct FileViews {
    root: Option<PathBuf>,
    /// (host view directory, guest path) pairs to preopen.
    pub preopens: Vec<(PathBuf, String)>,
}

impl FileViews {
    /// Copies each of `files` into a view of its guest path's parent
    /// directory under a fresh directory in `scratch`. A file that cannot
    /// be read is left out (the probe then sees it missing), with the
    /// reason logged.
    pub fn build(scratch: &Path, probe: &str, files: &[GrantedFile]) -> io::Result<FileViews> {
        if files.is_empty() {
            return Ok(FileViews {
                root: None,
                preopens: Vec::new(),
            });
        }
        let mut by_parent: BTreeMap<&Path, Vec<&GrantedFile>> = BTreeMap::new();
        for f in files {
            if let (Some(parent), Some(_)) = (f.guest.parent(), f.guest.file_name()) {
                by_parent.entry(parent).or_default().push(f);
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scratch)?;
        let root = scratch.join(format!("{probe}-{}", telem_core::record::random_id()));
        std::fs::DirBuilder::new().mode(0o700).create(&root)?;
        let mut views = FileViews {
            root: Some(root.clone()),
            preopens: Vec::new(),
        };
        for (i, (parent, files)) in by_parent.into_iter().enumerate() {
            let dir = root.join(i.to_string());
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            for f in files {
                let name = f.guest.file_name().expect("checked above");
                if let Err(e) = copy_capped(f, &dir.join(name)) {
                    tracing::debug!(probe, "granted file {} not shown: {e}", f.guest.display());
                }
            }
            views
                .preopens
                .push((dir, parent.to_string_lossy().into_owned()));
        }
        Ok(views)
    }
}

/// One granted file: where the host reads it and where the probe sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedFile {
    /// The file on the host, symlinks already resolved (opened with
    /// `O_NOFOLLOW`, so a link swapped in since is not followed), or a safe
    /// `/proc` file by name (`/proc/mounts` is itself a link).
    pub host: PathBuf,
    /// Its path in the guest: the granted path.
    pub guest: PathBuf,
    /// Whether `host` may be a symlink (the safe `/proc` files only).
    pub follow: bool,
}

/// Opens a granted file for reading without blocking on a FIFO or device.
/// Unless it is one of the safe `/proc` files, no component of its
/// resolved path may be a symlink (`openat2` with `RESOLVE_NO_SYMLINKS`):
/// a directory on the way swapped for a link since the grant was resolved
/// is refused, not followed. Kernels before 5.6 lack `openat2`; there only
/// the last component is checked (`O_NOFOLLOW`).
fn open_granted(from: &GrantedFile) -> io::Result<std::fs::File> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    if !from.follow {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match openat2(
            CWD,
            &from.host,
            flags,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(fd) => return Ok(std::fs::File::from(fd)),
            Err(rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let nofollow = if from.follow { 0 } else { libc::O_NOFOLLOW };
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | nofollow)
        .open(&from.host)
}

/// Copies a regular file (never a FIFO or device: opened non-blocking and
/// checked before reading) up to the cap.
fn copy_capped(from: &GrantedFile, to: &Path) -> io::Result<()> {
    let f = open_granted(from)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(FILE_GRANT_CAP).read_to_end(&mut bytes)?;
    let mut out = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(to)?;
    io::Write::write_all(&mut out, &bytes)
}

impl Drop for FileViews {
    fn drop(&mut self) {
        if let Some(root) = self.root.take() {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                tracing::warn!("cannot remove the file view {}: {e}", root.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_file_behind_a_swapped_directory_link_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("os-release"), "root's").unwrap();
        // The grant was resolved to real/os-release; then `real` became a
        // link to the secret directory.
        std::os::unix::fs::symlink(&secret, t.path().join("real")).unwrap();
        let f = GrantedFile {
            host: t.path().join("real/os-release"),
            guest: "/etc/os-release".into(),
            follow: false,
        };
        let err = open_granted(&f).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    }

    #[test]
    fn a_view_holds_only_the_granted_files() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("os-release"), "NAME=x\n").unwrap();
        std::fs::write(etc.join("shadow"), "secret").unwrap();
        let scratch = t.path().join("scratch");
        let file = |p: PathBuf| GrantedFile {
            host: p.clone(),
            guest: p,
            follow: false,
        };
        let views = FileViews::build(&scratch, "p", &[file(etc.join("os-release"))]).unwrap();
        assert_eq!(views.preopens.len(), 1);
        let (dir, guest) = &views.preopens[0];
        assert_eq!(guest, &etc.to_string_lossy());
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["os-release"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("os-release")).unwrap(),
            "NAME=x\n"
        );
        drop(views);
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "removed after the call"
        );
    }

    #[test]
    fn a_granted_file_is_shown_up_to_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big");
        std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
        let file = GrantedFile {
            host: big.clone(),
            guest: big,
            follow: false,
        };
        let views = FileViews::build(&t.path().join("s"), "p", &[file]).unwrap();
        let (dir, _) = &views.preopens[0];
        let shown = std::fs::metadata(dir.join("big")).unwrap().len();
        assert_eq!(shown, FILE_GRANT_CAP);
    }

    #[test]
    fn a_fifo_or_a_swapped_in_symlink_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("target"), &link).unwrap();
        std::fs::write(t.path().join("target"), "x").unwrap();
        let files = [fifo, link].map(|p| GrantedFile {
            host: p.clone(),
            guest: p,
            follow: false,
        });
        let views = FileViews::build(&t.path().join("s"), "p", &files).unwrap();
        let (dir, _) = &views.preopens[0];
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }
}
