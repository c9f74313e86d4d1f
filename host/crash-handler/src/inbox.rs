//! Writing an inbox entry as the service user: every file opened
//! relative to the inbox's descriptor (never through a symlink, never
//! blocking on a FIFO), the core streamed up to its cap and synced, the
//! metadata written under a temporary name and renamed, the entry and the
//! inbox synced, so `telemd` finds either a whole entry or none.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::Context;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt as _};
use rustix::fs::OFlags;
use telem_core::crash_inbox::{CrashMeta, META_FILE};

/// The inbox directory, not through a symlink. Every later file operation
/// is relative to it (`cap-std`), so nothing written can land outside.
pub(crate) fn open_inbox(p: &Path) -> anyhow::Result<Dir> {
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
pub(crate) fn make_entry(inbox: &Dir, name: &str) -> anyhow::Result<Dir> {
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
pub(crate) fn open_plain(dir: &Dir, name: &str, flags: OFlags) -> io::Result<File> {
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
pub(crate) fn create_in(dir: &Dir, name: &str) -> anyhow::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let f = dir
        .open_with(name, &options)
        .with_context(|| format!("cannot create {name}"))?;
    Ok(f.into_std())
}

/// Copies at most `cap` bytes, then fsyncs; says whether input was left.
pub(crate) fn copy_capped(
    input: &mut dyn Read,
    out: &File,
    cap: u64,
) -> anyhow::Result<(u64, bool)> {
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

/// Writes the entry's metadata (`crash.json`) under a temporary name,
/// renames it into place and syncs the entry, then the inbox: the entry
/// is complete once this returns.
pub(crate) fn finish_entry(inbox: &Dir, entry: &Dir, meta: &CrashMeta) -> anyhow::Result<()> {
    let text = serde_json::to_vec(meta).with_context(|| format!("cannot write {META_FILE}"))?;
    let tmp = format!("{META_FILE}.tmp");
    let f = create_in(entry, &tmp)?;
    (&f).write_all(&text)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {META_FILE}"))?;
    entry
        .rename(&tmp, entry, META_FILE)
        .with_context(|| format!("cannot rename {tmp}"))?;
    sync_dir(entry).context("fsync of the entry")?;
    sync_dir(inbox).context("fsync of the inbox")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
