//! Small durable-file helpers shared by the spool, the journal, the
//! machine id and caches, and the [`Durability`] seam through which the
//! spool and the journal make their commits durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` so that a reader sees either the old file or the
/// whole new one, never a part: temp file in the same directory, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The syncs a commit rests on: a file's data (`fdatasync`) and a
/// directory's entries (`fsync` of the directory). The spool acknowledges
/// a record only after both; the journal's file is synced before the
/// records its entries finished leave the spool. A trait so a test can
/// observe every call, in order, with the state of the files at that
/// moment; [`Fsync`] is the only implementation outside tests.
pub trait Durability: Send + Sync {
    /// Makes the data of `file` durable; `name` says which file it is (a
    /// spool record's name, or `journal`).
    fn sync_file(&self, name: &str, file: &File) -> io::Result<()>;
    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real syncs.
#[derive(Debug, Clone, Copy)]
pub struct Fsync;

impl Durability for Fsync {
    fn sync_file(&self, _name: &str, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }
}
