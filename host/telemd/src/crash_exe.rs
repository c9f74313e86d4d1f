//! The crashed program, shown to a crash call whose grant does not reach
//! it (a program in a scratch or home directory): a private directory at
//! the program's own directory path holding a copy of just that file, so
//! the probe can unwind and name its frames and sees nothing beside it.
//!
//! The path is the kernel's (`%E`); the file is shown only if it is still
//! the one the process ran (device and inode, read by the handler from
//! `/proc/PID/exe` as root): a file swapped in since, or a symlink on the
//! way, is not shown. Copies are bounded by [`EXE_VIEW_CAP`] and leave
//! `crash_min_free_mb` free; the copy goes when the call ends.

use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use telem_core::crash_inbox::FileId;
use telem_sandbox::file_views::{open_granted, GrantedFile};
use telem_sandbox::ExtraDir;

/// Largest program copied for a crash call.
pub const EXE_VIEW_CAP: u64 = 256 << 20;

/// Why the crashed program is not shown.
#[derive(Debug, thiserror::Error)]
pub enum ExeViewError {
    /// The handler could not say which file the process ran.
    #[error("the crash handler did not record which file the process ran")]
    Unknown,
    /// A path that is not absolute or has no file name.
    #[error("not an absolute file path")]
    NotAFilePath,
    /// It could not be opened (gone, or a symlink on the way).
    #[error("cannot open it")]
    Open(#[source] io::Error),
    /// Not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// Another file is at the path now.
    #[error("the file at its path is no longer the one that crashed")]
    Replaced,
    /// Larger than [`EXE_VIEW_CAP`].
    #[error("{0} bytes is over the {EXE_VIEW_CAP} bytes a crash call is shown")]
    TooLarge(u64),
    /// The copy would take the free space below the floor.
    #[error("copying it would leave less than crash_min_free_mb free")]
    NoRoom,
    /// The copy failed.
    #[error("cannot copy it")]
    Copy(#[source] io::Error),
}

/// A copy of the crashed program for one call; removed when dropped.
#[derive(Debug)]
pub struct ExeView {
    root: PathBuf,
    guest_dir: PathBuf,
}

impl ExeView {
    /// Copies `exe` (which must still be the file `ran`) into a fresh
    /// directory under `scratch`, leaving `min_free` bytes free there.
    pub fn build(
        scratch: &Path,
        exe: &Path,
        ran: Option<FileId>,
        min_free: u64,
    ) -> Result<ExeView, ExeViewError> {
        let ran = ran.ok_or(ExeViewError::Unknown)?;
        let (Some(guest_dir), Some(name)) = (exe.parent(), exe.file_name()) else {
            return Err(ExeViewError::NotAFilePath);
        };
        if !exe.is_absolute() {
            return Err(ExeViewError::NotAFilePath);
        }
        let f = open_granted(&GrantedFile {
            host: exe.to_owned(),
            guest: exe.to_owned(),
            follow: false,
        })
        .map_err(ExeViewError::Open)?;
        let m = f.metadata().map_err(ExeViewError::Open)?;
        if !m.is_file() {
            return Err(ExeViewError::NotAFile);
        }
        if FileId::of(&m) != ran {
            return Err(ExeViewError::Replaced);
        }
        if m.len() > EXE_VIEW_CAP {
            return Err(ExeViewError::TooLarge(m.len()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scratch)
            .map_err(ExeViewError::Copy)?;
        let st = rustix::fs::statvfs(scratch).map_err(|e| ExeViewError::Copy(e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < m.len().saturating_add(min_free) {
            return Err(ExeViewError::NoRoom);
        }
        let root = scratch.join(format!("crash-exe-{}", telem_core::record::random_id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(ExeViewError::Copy)?;
        let view = ExeView {
            root,
            guest_dir: guest_dir.to_owned(),
        };
        let mut out = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(view.root.join(name))
            .map_err(ExeViewError::Copy)?;
        // The file may grow while it is copied: never past the cap.
        io::copy(&mut f.take(EXE_VIEW_CAP), &mut out).map_err(ExeViewError::Copy)?;
        Ok(view)
    }

    /// The directory to show the call, at the program's directory path.
    pub fn extra_dir(&self) -> ExtraDir {
        ExtraDir::host_owned(&self.root).shown_at(&self.guest_dir)
    }
}

impl Drop for ExeView {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(
                "cannot remove the crash program view {}: {e}",
                self.root.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(p: &Path) -> Option<FileId> {
        Some(FileId::of(&std::fs::metadata(p).unwrap()))
    }

    #[test]
    fn the_program_is_shown_alone_and_only_while_it_is_the_one_that_ran() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("scratch dir");
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("crashme");
        std::fs::write(&exe, b"\x7fELF program").unwrap();
        std::fs::write(dir.join("secret"), b"neighbour").unwrap();
        let scratch = t.path().join("views");
        let view = ExeView::build(&scratch, &exe, id_of(&exe), 0).unwrap();
        let extra = view.extra_dir();
        assert_eq!(extra.guest, dir);
        let shown: Vec<_> = std::fs::read_dir(&extra.host)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(shown, ["crashme"], "only the program");
        assert_eq!(
            std::fs::read(extra.host.join("crashme")).unwrap(),
            b"\x7fELF program"
        );
        let root = extra.host.clone();
        drop(view);
        assert!(!root.exists(), "removed after the call");

        // Unknown, replaced, a symlink, a directory, too little room.
        assert!(matches!(
            ExeView::build(&scratch, &exe, None, 0),
            Err(ExeViewError::Unknown)
        ));
        let ran = id_of(&exe);
        // Moved aside (still open by the crashed process, as it would be),
        // another file in its place.
        std::fs::rename(&exe, dir.join("crashme.old")).unwrap();
        std::fs::write(&exe, b"another").unwrap();
        assert!(matches!(
            ExeView::build(&scratch, &exe, ran, 0),
            Err(ExeViewError::Replaced)
        ));
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("secret"), &link).unwrap();
        assert!(matches!(
            ExeView::build(&scratch, &link, id_of(&dir.join("secret")), 0),
            Err(ExeViewError::Open(_))
        ));
        assert!(matches!(
            ExeView::build(&scratch, &dir, id_of(&dir), 0),
            Err(ExeViewError::NotAFile)
        ));
        assert!(matches!(
            ExeView::build(&scratch, &exe, id_of(&exe), u64::MAX / 2),
            Err(ExeViewError::NoRoom)
        ));
        assert!(matches!(
            ExeView::build(&scratch, Path::new("crashme"), id_of(&exe), 0),
            Err(ExeViewError::NotAFilePath)
        ));
        let huge = dir.join("huge");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(EXE_VIEW_CAP + 1)
            .unwrap();
        assert!(matches!(
            ExeView::build(&scratch, &huge, id_of(&huge), 0),
            Err(ExeViewError::TooLarge(_))
        ));
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "nothing left behind"
        );
    }
}
