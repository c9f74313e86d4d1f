//! The daemon's debuginfod client: for a crash call's `debuginfo.find`,
//! the debug file (or binary) of a build id from the servers in
//! `debuginfod_urls`, kept under `state_dir/debuginfod-cache/ID/KIND`.
//!
//! Everything a server sends is hostile: a file is taken only whole,
//! within `debuginfod_cache_mb`, within the call's time, and only if it is
//! an ELF file carrying the build id asked for (read from its
//! `.note.gnu.build-id` section alone, every read bounded); anything else
//! is thrown away. A definite no (not found, too large, not the right
//! file) is remembered for [`MISS_TTL`], so a later crash does not ask
//! again; running out of time is not (the next crash may have more).
//! Redirects are not followed (a server could send the client anywhere).
//! A download is written to a temporary file that goes unless it is kept,
//! whatever stops it; the cache keeps the most recently used files within
//! `debuginfod_cache_mb`, and leftovers of a daemon that died are removed.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use telem_core::config::Config;
use telem_sandbox::{DebugKind, DebuginfoSource};
use tracing::{debug, info};

/// How long a lookup that failed is not tried again.
pub const MISS_TTL: Duration = Duration::from_secs(600);
/// Failed lookups remembered at once.
const MAX_MISSES: usize = 4096;

/// The client and its cache.
#[derive(Debug)]
pub struct Debuginfod {
    client: reqwest::Client,
    urls: Vec<String>,
    cache: PathBuf,
    cap: u64,
    budget: Duration,
    misses: Mutex<HashMap<(Vec<u8>, DebugKind), Instant>>,
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Debuginfod {
    /// The client the config asks for; none when it names no server.
    pub fn for_config(config: &Config) -> Option<Arc<Debuginfod>> {
        let c = &config.crash;
        if c.debuginfod_urls.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let cache =
            telem_core::state_layout::StateLayout::new(&config.host.state_dir).debuginfod_cache();
        let cap = c.debuginfod_cache_mb.get().saturating_mul(1 << 20);
        // What a daemon that died left, and a cap lowered since.
        prune(&cache, cap, Path::new(""));
        Some(Arc::new(Debuginfod {
            client,
            urls: c
                .debuginfod_urls
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .collect(),
            cache,
            cap,
            budget: Duration::from_millis(c.debuginfod_timeout_ms.get()),
            misses: Mutex::new(HashMap::new()),
        }))
    }

    fn path(&self, id: &[u8], kind: DebugKind) -> PathBuf {
        self.cache.join(hex(id)).join(kind.api_name())
    }

    /// The cached file, marked as just used (no symlink is followed).
    fn cached(&self, id: &[u8], kind: DebugKind) -> Option<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.path(id, kind);
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let _ = f.set_modified(SystemTime::now());
        Some(p)
    }

    fn missed(&self, id: &[u8], kind: DebugKind) -> bool {
        let mut m = self.misses.lock().expect("misses lock");
        m.retain(|_, at| at.elapsed() < MISS_TTL);
        m.contains_key(&(id.to_vec(), kind))
    }

    fn miss(&self, id: &[u8], kind: DebugKind) {
        let mut m = self.misses.lock().expect("misses lock");
        if m.len() >= MAX_MISSES {
            // The oldest goes, not all: a flood of new ids must not make
            // the servers asked again about the ones that said no.
            if let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        m.insert((id.to_vec(), kind), Instant::now());
    }

    /// Asks each server in turn until `deadline`: the file, checked and
    /// kept; or `Err(true)` when a server said no for good, `Err(false)`
    /// when none could answer in time.
    async fn fetch(&self, id: &[u8], kind: DebugKind, deadline: Instant) -> Result<PathBuf, bool> {
        let mut definite = false;
        for url in &self.urls {
            let within = deadline.saturating_duration_since(Instant::now());
            if within.is_zero() {
                break;
            }
            let target = format!("{url}/buildid/{}/{}", hex(id), kind.api_name());
            match tokio::time::timeout(within, self.fetch_one(&target, id, kind)).await {
                Ok(Ok(path)) => return Ok(path),
                Ok(Err(Failed::No(why))) => {
                    debug!("debuginfod {target}: {why}");
                    definite = true;
                }
                Ok(Err(Failed::Unreachable(why))) => debug!("debuginfod {target}: {why}"),
                Err(_) => info!("debuginfod {target}: no answer within the crash call's time"),
            }
        }
        Err(definite)
    }

    async fn fetch_one(&self, target: &str, id: &[u8], kind: DebugKind) -> Result<PathBuf, Failed> {
        let unreachable = |e: &dyn std::fmt::Display| Failed::Unreachable(e.to_string());
        let mut resp = self
            .client
            .get(target)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(Failed::No(format!("answered {}", resp.status())));
        }
        let too_large = || Failed::No("larger than debuginfod_cache_mb".into());
        if resp.content_length().is_some_and(|n| n > self.cap) {
            return Err(too_large());
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| unreachable(&e))?;
        // Removed when dropped, whatever stops this (the deadline too),
        // unless it is kept.
        let mut tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempfile_in(&self.cache)
            .map_err(|e| unreachable(&e))?;
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            total += chunk.len() as u64;
            if total > self.cap {
                return Err(too_large());
            }
            tmp.write_all(&chunk).map_err(|e| unreachable(&e))?;
        }
        let (dest, want) = (self.path(id, kind), id.to_vec());
        let (cache, cap) = (self.cache.clone(), self.cap);
        // Synced, checked, renamed and the cache pruned off the runtime.
        tokio::task::spawn_blocking(move || {
            tmp.as_file().sync_all().map_err(|e| unreachable(&e))?;
            if !carries_build_id(tmp.as_file(), &want) {
                return Err(Failed::No(
                    "not an ELF file carrying the build id asked for".into(),
                ));
            }
            std::fs::create_dir_all(dest.parent().expect("under the cache"))
                .map_err(|e| unreachable(&e))?;
            tmp.persist(&dest).map_err(|e| unreachable(&e.error))?;
            prune(&cache, cap, &dest);
            Ok(dest)
        })
        .await
        .map_err(|e| unreachable(&e))?
    }
}

/// Why one server gave nothing.
enum Failed {
    /// It said no for good: not found, too large, not the right file.
    No(String),
    /// It could not be asked, or the answer could not be kept.
    Unreachable(String),
}

/// Most section headers read of a fetched file.
const MAX_SECTIONS: u64 = 1 << 16;
/// Most bytes of section names read.
const MAX_NAMES: u64 = 1 << 20;
/// Most bytes of the build id note read.
const MAX_NOTE: u64 = 4096;

fn read_at(f: &std::fs::File, at: u64, len: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact_at(&mut buf, at).ok()?;
    Some(buf)
}

/// Whether `f` is a little-endian ELF file whose `.note.gnu.build-id`
/// section holds the GNU build id `want`. Only the ELF header, the section
/// headers, their names and that one note are read, each bounded: a
/// hostile file costs a few reads, whatever it claims.
fn carries_build_id(f: &std::fs::File, want: &[u8]) -> bool {
    build_id_of(f).is_some_and(|id| id == want)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn build_id_of(f: &std::fs::File) -> Option<Vec<u8>> {
    let head = read_at(f, 0, 64)?;
    if head.get(..4)? != b"\x7fELF" || head[5] != 1 {
        return None;
    }
    let wide = match head[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (
            u64_at(&head, 0x28)?,
            u16_at(&head, 0x3a)?,
            u16_at(&head, 0x3c)?,
            u16_at(&head, 0x3e)?,
        )
    } else {
        (
            u64::from(u32_at(&head, 0x20)?),
            u16_at(&head, 0x2e)?,
            u16_at(&head, 0x30)?,
            u16_at(&head, 0x32)?,
        )
    };
    let (shnum, entsize) = (u64::from(shnum), u64::from(shentsize));
    if shnum == 0 || shnum > MAX_SECTIONS || entsize < if wide { 64 } else { 40 } {
        return None;
    }
    let table = read_at(f, shoff, shnum.checked_mul(entsize)?)?;
    // (name offset, file offset, size) of section `i`.
    let section = |i: u64| -> Option<(u64, u64, u64)> {
        let at = usize::try_from(i.checked_mul(entsize)?).ok()?;
        Some(if wide {
            (
                u64::from(u32_at(&table, at)?),
                u64_at(&table, at + 0x18)?,
                u64_at(&table, at + 0x20)?,
            )
        } else {
            (
                u64::from(u32_at(&table, at)?),
                u64::from(u32_at(&table, at + 0x10)?),
                u64::from(u32_at(&table, at + 0x14)?),
            )
        })
    };
    let (_, names_at, names_len) = section(u64::from(shstrndx))?;
    let names = read_at(f, names_at, names_len.min(MAX_NAMES))?;
    let wanted = b".note.gnu.build-id\0";
    let (_, note_at, note_len) = (0..shnum).filter_map(section).find(|(name, _, _)| {
        usize::try_from(*name)
            .ok()
            .and_then(|n| names.get(n..n.checked_add(wanted.len())?))
            == Some(&wanted[..])
    })?;
    let note = read_at(f, note_at, note_len.min(MAX_NOTE))?;
    // namesz, descsz, type (3: NT_GNU_BUILD_ID), "GNU\0", the id.
    let (namesz, descsz, kind) = (u32_at(&note, 0)?, u32_at(&note, 4)?, u32_at(&note, 8)?);
    if kind != 3 || namesz != 4 || note.get(12..16)? != b"GNU\0" {
        return None;
    }
    let desc = usize::try_from(descsz).ok()?;
    Some(note.get(16..16usize.checked_add(desc)?)?.to_vec())
}

/// How old a download left by a daemon that died must be to be removed.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Removes the least recently used files (by modification time, which a
/// use sets) until the cache holds at most `cap` bytes (`keep` stays),
/// and the downloads a daemon that died left behind.
pub fn prune(cache: &Path, cap: u64, keep: &Path) {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let Ok(ids) = std::fs::read_dir(cache) else {
        return;
    };
    for id in ids.flatten() {
        if id.file_name().to_string_lossy().starts_with(".fetch-") {
            let old = id
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > LEFTOVER_AGE));
            if old {
                let _ = std::fs::remove_file(id.path());
            }
            continue;
        }
        let Ok(kinds) = std::fs::read_dir(id.path()) else {
            continue;
        };
        for k in kinds.flatten() {
            if let Ok(m) = k.metadata() {
                files.push((
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    k.path(),
                ));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= cap {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl DebuginfoSource for Debuginfod {
    fn budget(&self) -> Duration {
        self.budget
    }

    fn find<'a>(
        &'a self,
        build_id: &'a [u8],
        kind: DebugKind,
        within: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<PathBuf>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(p) = self.cached(build_id, kind) {
                return Some(p);
            }
            if self.missed(build_id, kind) {
                return None;
            }
            match self.fetch(build_id, kind, Instant::now() + within).await {
                Ok(path) => Some(path),
                Err(definite) => {
                    if definite {
                        self.miss(build_id, kind);
                    }
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_files_go_past_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let put = |id: &str, len: usize, age: u64| {
            let p = t.path().join(id).join("debuginfo");
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![0; len]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(age))
                .unwrap();
            p
        };
        let old = put("aa", 100, 1);
        let mid = put("bb", 100, 2);
        let new = put("cc", 100, 3);
        prune(t.path(), 200, &new);
        assert!(!old.exists() && mid.exists() && new.exists());
        // The file just kept stays even when it alone is past the cap.
        prune(t.path(), 50, &new);
        assert!(!mid.exists() && new.exists());
        assert!(!t.path().join("aa").exists(), "empty directories go");
    }

    /// The build id `readelf -n` shows for `path`.
    fn readelf_build_id(path: &Path) -> Option<Vec<u8>> {
        let out = std::process::Command::new("readelf")
            .arg("-n")
            .arg(path)
            .output()
            .ok()?;
        let hex = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))?;
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect()
    }

    #[test]
    fn only_an_elf_file_with_the_build_id_asked_for_is_taken() {
        let t = tempfile::tempdir().unwrap();
        let open = |p: &Path| std::fs::File::open(p).unwrap();
        // libc and its debug file (libc6-dbg), as distributions ship them.
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let id = readelf_build_id(libc).expect("readelf and libc");
        assert!(carries_build_id(&open(libc), &id));
        let mut other = id.clone();
        other[0] ^= 1;
        assert!(!carries_build_id(&open(libc), &other), "another build id");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let debug = PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ));
        assert!(carries_build_id(&open(&debug), &id), "the debug file");
        let junk = t.path().join("junk");
        std::fs::write(&junk, b"<html>not found</html>").unwrap();
        assert!(!carries_build_id(&open(&junk), &id), "not ELF");
        // Hostile headers: the section table past the end, then a huge
        // count of sections: no answer, after a few bounded reads.
        let mut bytes = std::fs::read(libc).unwrap()[..4096].to_vec();
        bytes[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&junk, &bytes).unwrap();
        assert!(!carries_build_id(&open(&junk), &id));
        bytes[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
        std::fs::write(&junk, &bytes).unwrap();
        assert!(!carries_build_id(&open(&junk), &id));
    }
}
