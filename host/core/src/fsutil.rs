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

/// Files another user can write, read by someone with more rights: root's
/// `telemctl` reads the spool and the journal the service user owns. Each
/// file is an entry of a directory opened once (`cap_std`), opened without
/// following a symlink in its place and without blocking on a FIFO or a
/// device, taken only if it is a regular file, and read up to a cap.
pub mod beneath {
    use std::io::{self, Read};
    use std::path::Path;

    use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};

    /// Opens the directory at `path` (an admin-configured path: symlinks in
    /// it are the admin's own).
    pub fn open_dir(path: &Path) -> io::Result<Dir> {
        Dir::open_ambient_dir(path, cap_std::ambient_authority())
    }

    /// Opens the subdirectory `name` of `dir`, refusing a symlink there.
    pub fn open_subdir(dir: &Dir, name: &str) -> io::Result<Dir> {
        check_name(name)?;
        let mut o = OpenOptions::new();
        o.read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NOCTTY);
        Ok(Dir::from_std_file(dir.open_with(name, &o)?.into_std()))
    }

    /// Opens the regular file `name` of `dir` for reading.
    pub fn open_file(dir: &Dir, name: &str) -> io::Result<std::fs::File> {
        check_name(name)?;
        let mut o = OpenOptions::new();
        o.read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
        let f = dir.open_with(name, &o)?.into_std();
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not a regular file"),
            ));
        }
        Ok(f)
    }

    /// Reads the regular file `name` of `dir`; longer than `cap` bytes is
    /// an error, not a cut (a file that long is not what it should be).
    pub fn read_file(dir: &Dir, name: &str, cap: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        open_file(dir, name)?
            .take(cap + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is longer than {cap} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// One path component: no separator, not `.` or `..`, not empty.
    fn check_name(name: &str) -> io::Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a file name"),
            ));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_regular_files_by_their_own_name_within_the_cap_are_read() {
            let t = tempfile::tempdir().unwrap();
            std::fs::write(t.path().join("rec"), "payload").unwrap();
            std::fs::write(t.path().join("secret"), "root's").unwrap();
            std::os::unix::fs::symlink(t.path().join("secret"), t.path().join("link")).unwrap();
            rustix::fs::mkfifoat(rustix::fs::CWD, t.path().join("fifo"), 0o600.into()).unwrap();
            std::fs::create_dir(t.path().join("sub")).unwrap();
            std::os::unix::fs::symlink(t.path(), t.path().join("sublink")).unwrap();
            let d = open_dir(t.path()).unwrap();
            assert_eq!(read_file(&d, "rec", 7).unwrap(), b"payload");
            assert!(read_file(&d, "rec", 6).is_err(), "over the cap");
            assert!(
                read_file(&d, "link", 100).is_err(),
                "a symlink in its place"
            );
            // A FIFO with no writer would block a plain open for ever.
            assert!(read_file(&d, "fifo", 100).is_err(), "a FIFO");
            assert!(read_file(&d, "sub", 100).is_err(), "a directory");
            assert!(read_file(&d, "../rec", 100).is_err(), "not one component");
            assert!(open_subdir(&d, "sub").is_ok());
            assert!(open_subdir(&d, "sublink").is_err(), "a symlinked directory");
            // A relative link within the cap would be followed without
            // O_NOFOLLOW; a file would open as a directory without
            // O_DIRECTORY.
            std::os::unix::fs::symlink("sub", t.path().join("sibling")).unwrap();
            assert!(open_subdir(&d, "sibling").is_err(), "a link to a sibling");
            assert!(open_subdir(&d, "rec").is_err(), "a file");
            // One component only, even where cap-std would allow more.
            std::fs::write(t.path().join("sub/inner"), "inner").unwrap();
            assert!(read_file(&d, "sub/inner", 100).is_err(), "two components");
            assert!(open_subdir(&d, ".").is_err(), "the directory itself");
            assert!(read_file(&d, "", 100).is_err(), "no name");
        }
    }
}

#[cfg(test)]
mod sync_tests {
    use super::*;

    /// Set in the child process the test below starts: it syncs and exits.
    const CHILD: &str = "TELEM_FSYNC_TEST_DIR";

    /// The shipped `Fsync` makes the real system calls: this test runs
    /// itself again with the sync-logging shim (`tests/c/sync_log.c`)
    /// preloaded and reads what the shim saw. Tests that inject their own
    /// `Durability` cannot tell a no-op `Fsync`, nor can a `kill -9` (the
    /// page cache survives it).
    #[test]
    fn the_real_durability_syncs_the_file_data_and_the_directory() {
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            let f = File::create(dir.join("rec")).unwrap();
            Fsync.sync_file("rec", &f).unwrap();
            Fsync.sync_dir(dir).unwrap();
            write_atomic(&dir.join("sub/atomic"), b"whole", 0o600).unwrap();
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        let shim = dir.join("sync_log.so");
        let built = std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&shim)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/c/sync_log.c"
            ))
            .arg("-ldl")
            .status()
            .expect("gcc (the test builds its shim)");
        assert!(built.success());
        let log = dir.join("sync.log");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fsutil::sync_tests::the_real_durability_syncs_the_file_data_and_the_directory",
                "--test-threads=1",
            ])
            .env(CHILD, &dir)
            .env("LD_PRELOAD", &shim)
            .env("SYNC_LOG", &log)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(child.success());
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        let d = dir.display();
        assert!(
            seen.lines().any(|l| l == format!("fdatasync {d}/rec")),
            "the file's data was not synced: {seen}"
        );
        assert!(
            seen.lines().any(|l| l.starts_with(&format!("dirsync {d} "))
                && l.split(' ').skip(2).any(|name| name == "rec")),
            "the directory was not synced: {seen}"
        );
        // An atomic write syncs its temp file in the target's directory,
        // then that directory with the new name in it.
        assert!(
            seen.lines()
                .any(|l| l.starts_with(&format!("fsync {d}/sub/.atomic.tmp-"))),
            "the temp file was not synced beside its target: {seen}"
        );
        assert!(
            seen.lines()
                .any(|l| l.starts_with(&format!("dirsync {d}/sub "))
                    && l.split(' ').skip(2).any(|name| name == "atomic")),
            "the target's directory was not synced after the rename: {seen}"
        );
        assert_eq!(std::fs::read(dir.join("sub/atomic")).unwrap(), b"whole");
    }
}
