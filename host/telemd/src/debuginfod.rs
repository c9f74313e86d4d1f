//! The daemon's debuginfod client: for a crash call's `debuginfo.find`,
//! the debug file (or binary) of a build id from the servers in
//! `debuginfod_urls`, kept under `state_dir/debuginfod-cache/ID/KIND`.
//!
//! Everything a server sends is hostile: a file is taken only whole,
//! within `debuginfod_cache_mb`, within the call's time, and only if it is
//! an ELF file carrying the build id asked for; anything else is thrown
//! away and the lookup remembered as failed for [`MISS_TTL`], so a second
//! crash does not ask again. Redirects are not followed (a server could
//! send the client anywhere). The cache keeps the most recently used files
//! within `debuginfod_cache_mb`.

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
        Some(Arc::new(Debuginfod {
            client,
            urls: c
                .debuginfod_urls
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .collect(),
            cache: telem_core::state_layout::StateLayout::new(&config.host.state_dir)
                .debuginfod_cache(),
            cap: c.debuginfod_cache_mb.get().saturating_mul(1 << 20),
            budget: Duration::from_millis(c.debuginfod_timeout_ms.get()),
            misses: Mutex::new(HashMap::new()),
        }))
    }

    fn path(&self, id: &[u8], kind: DebugKind) -> PathBuf {
        self.cache.join(hex(id)).join(kind.api_name())
    }

    /// The cached file, marked as just used.
    fn cached(&self, id: &[u8], kind: DebugKind) -> Option<PathBuf> {
        let p = self.path(id, kind);
        let f = std::fs::File::options().write(true).open(&p).ok()?;
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
            m.clear();
        }
        m.insert((id.to_vec(), kind), Instant::now());
    }

    /// Asks each server in turn until `deadline`; the file, checked and
    /// kept, or none.
    async fn fetch(&self, id: &[u8], kind: DebugKind, deadline: Instant) -> Option<PathBuf> {
        for url in &self.urls {
            let within = deadline.saturating_duration_since(Instant::now());
            if within.is_zero() {
                return None;
            }
            let target = format!("{url}/buildid/{}/{}", hex(id), kind.api_name());
            match tokio::time::timeout(within, self.fetch_one(&target, id, kind)).await {
                Ok(Ok(path)) => return Some(path),
                Ok(Err(why)) => debug!("debuginfod {target}: {why}"),
                Err(_) => info!("debuginfod {target}: no answer within the crash call's time"),
            }
        }
        None
    }

    async fn fetch_one(&self, target: &str, id: &[u8], kind: DebugKind) -> Result<PathBuf, String> {
        let mut resp = self
            .client
            .get(target)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > self.cap) {
            return Err("larger than debuginfod_cache_mb".into());
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| e.to_string())?;
        let tmp = self
            .cache
            .join(format!(".fetch-{}", telem_core::record::random_id()));
        let result = async {
            let mut out = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
            let mut total = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                total += chunk.len() as u64;
                if total > self.cap {
                    return Err("larger than debuginfod_cache_mb".to_owned());
                }
                out.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            out.sync_all().map_err(|e| e.to_string())?;
            let (check, want) = (tmp.clone(), id.to_vec());
            let carries = tokio::task::spawn_blocking(move || carries_build_id(&check, &want))
                .await
                .unwrap_or(false);
            if !carries {
                return Err("not an ELF file carrying the build id asked for".to_owned());
            }
            let dest = self.path(id, kind);
            std::fs::create_dir_all(dest.parent().expect("under the cache"))
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
            Ok(dest)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let kept = result?;
        let (cache, cap) = (self.cache.clone(), self.cap);
        let keep = kept.clone();
        let _ = tokio::task::spawn_blocking(move || prune(&cache, cap, &keep)).await;
        Ok(kept)
    }
}

/// Whether `path` is an ELF file whose GNU build id is `want`.
fn carries_build_id(path: &Path, want: &[u8]) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let cache = object::read::ReadCache::new(f);
    object::File::parse(&cache)
        .ok()
        .and_then(|elf| {
            object::Object::build_id(&elf)
                .ok()
                .flatten()
                .map(<[u8]>::to_vec)
        })
        .is_some_and(|id| id == want)
}

/// Removes the least recently used files (by modification time, which a
/// use sets) until the cache holds at most `cap` bytes; `keep` stays.
fn prune(cache: &Path, cap: u64, keep: &Path) {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let Ok(ids) = std::fs::read_dir(cache) else {
        return;
    };
    for id in ids.flatten() {
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
            let found = self.fetch(build_id, kind, Instant::now() + within).await;
            if found.is_none() {
                self.miss(build_id, kind);
            }
            found
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

    #[test]
    fn only_an_elf_file_with_the_build_id_asked_for_is_taken() {
        let t = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let f = std::fs::File::open(&me).unwrap();
        let cache = object::read::ReadCache::new(f);
        let id = object::File::parse(&cache).ok().and_then(|e| {
            object::Object::build_id(&e)
                .ok()
                .flatten()
                .map(<[u8]>::to_vec)
        });
        let Some(id) = id else {
            return; // a test binary linked without a build id
        };
        assert!(carries_build_id(&me, &id));
        let mut other = id.clone();
        other[0] ^= 1;
        assert!(!carries_build_id(&me, &other), "another build id");
        let junk = t.path().join("junk");
        std::fs::write(&junk, b"<html>not found</html>").unwrap();
        assert!(!carries_build_id(&junk, &id), "not ELF");
    }
}
