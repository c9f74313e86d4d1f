//! The crashed program, shown to a crash call whose grant does not reach
//! it (a program outside `/usr`, or one deleted while it ran): a private
//! directory at the program's own directory path holding just that file,
//! so the probe can unwind and name its frames and sees nothing beside it.
//!
//! The file is the one the handler kept in the crash's entry, copied as
//! root from `/proc/PID/exe` (the very file the process ran, whatever is
//! at its path now); the path it is shown at is the kernel's (`%E`). The
//! view is a hard link (a copy when the link cannot be made) and goes when
//! the call ends.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use telem_sandbox::ExtraDir;

/// Why the crashed program is not shown.
#[derive(Debug, thiserror::Error)]
pub enum ExeViewError {
    /// A path that is not absolute, has no file name or steps up (`..`).
    #[error("not a plain absolute file path")]
    NotAFilePath,
    /// The view could not be made.
    #[error("cannot make the view")]
    View(#[source] io::Error),
}

/// A view of the crashed program for one call; removed when dropped.
#[derive(Debug)]
pub struct ExeView {
    root: PathBuf,
    guest_dir: PathBuf,
}

impl ExeView {
    /// Shows `kept` (the program the handler kept) at `path` (the
    /// kernel's path of it), through a fresh directory under `scratch`.
    pub fn build(scratch: &Path, kept: &Path, path: &Path) -> Result<ExeView, ExeViewError> {
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let (Some(guest_dir), Some(name), true) = (path.parent(), path.file_name(), plain) else {
            return Err(ExeViewError::NotAFilePath);
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scratch)
            .map_err(ExeViewError::View)?;
        let root = scratch.join(format!("crash-exe-{}", telem_core::record::random_id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(ExeViewError::View)?;
        let view = ExeView {
            root,
            guest_dir: guest_dir.to_owned(),
        };
        let shown = view.root.join(name);
        if std::fs::hard_link(kept, &shown).is_err() {
            // Another filesystem: a copy (the handler bounded its size).
            std::fs::copy(kept, &shown).map_err(ExeViewError::View)?;
        }
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

    #[test]
    fn the_kept_program_is_shown_alone_at_its_path() {
        let t = tempfile::tempdir().unwrap();
        let entry = t.path().join("entry");
        std::fs::create_dir_all(&entry).unwrap();
        let kept = entry.join("program");
        std::fs::write(&kept, b"\x7fELF program").unwrap();
        std::fs::write(entry.join("core"), b"core").unwrap();
        let scratch = t.path().join("views");
        let path = Path::new("/home/user/scratch dir/crashme");
        let view = ExeView::build(&scratch, &kept, path).unwrap();
        let extra = view.extra_dir();
        assert_eq!(extra.guest, Path::new("/home/user/scratch dir"));
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
        assert!(kept.exists(), "the entry's copy stays with the entry");

        for bad in ["crashme", "/a/../etc/shadow", "/", "./a/b"] {
            assert!(
                matches!(
                    ExeView::build(&scratch, &kept, Path::new(bad)),
                    Err(ExeViewError::NotAFilePath)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ExeView::build(&scratch, &entry.join("missing"), path),
            Err(ExeViewError::View(_))
        ));
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "nothing left behind"
        );
    }
}
