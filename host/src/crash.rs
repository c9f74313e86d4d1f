//! The crash inbox: where the crash handler leaves each crash for `telemd`,
//! one directory per crash (`state_dir/crash-inbox/<id>/`) holding the core
//! (`core`) and what the kernel said about it (`crash.json`). A directory is
//! the unit because the sandbox grants read access by directory: a probe
//! handling a crash can read that crash's entry and nothing else of the
//! inbox. `crash.json` is written last (atomically), so an entry without it
//! is still being written or was abandoned.
//!
//! The daemon side is a single worker: it takes entries left at start and
//! ones the handler announces over the control socket, hands each to every
//! probe granted the crash trigger, and removes the entry afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::ingest::Ingest;
use crate::record::Record;
use crate::sandbox::supervisor::ProbeManager;
use crate::sandbox::{Captured, CrashReport};

/// A queued crash and, when someone waits for it, where its records go.
type Job = (String, Option<oneshot::Sender<Vec<Captured>>>);

/// The inbox directory under `state_dir`.
pub const INBOX: &str = "crash-inbox";
/// The core inside an entry.
pub const CORE_FILE: &str = "core";
/// The metadata inside an entry.
pub const META_FILE: &str = "crash.json";
/// An entry with no metadata this old was abandoned by a handler that died.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What is known of a crash besides its core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashMeta {
    /// `%e`: the process (thread) name.
    pub process_name: String,
    /// `%E` with `!` turned back into `/`.
    pub process_path: Option<String>,
    /// `%p`: pid in the crashed process's namespace.
    pub pid: u32,
    /// `%P`: pid in the initial namespace, when given.
    pub global_pid: Option<u32>,
    /// `%s`.
    pub signal: Option<u32>,
    /// `%u`: the crashed process's uid, when given.
    pub uid: Option<u32>,
    /// Seconds since the epoch when the handler ran.
    pub time: u64,
    /// Bytes of core kept.
    pub core_bytes: u64,
    /// The core was cut at `crash_max_core_size`.
    pub core_truncated: bool,
}

/// The inbox directory of a config's `state_dir`.
pub fn inbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(INBOX)
}

/// Entry ids are made by the handler: letters, digits, `-`; nothing that
/// could step out of the inbox.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Entries whose metadata is complete, oldest first.
pub fn pending(inbox: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return Vec::new();
    };
    let mut v: Vec<(SystemTime, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = std::fs::metadata(e.path().join(META_FILE)).ok()?;
            valid_id(&name).then_some((meta.modified().ok()?, name))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Bytes the inbox holds (what the handler checks against its cap).
pub fn inbox_bytes(inbox: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .flatten()
        .filter_map(|f| f.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Removes entries whose handler never finished them.
pub fn remove_abandoned(inbox: &Path) {
    let Ok(rd) = std::fs::read_dir(inbox) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.join(META_FILE).exists() {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old {
            warn!("removing abandoned crash entry {}", p.display());
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// Hands crashes to the probes, one at a time.
#[derive(Clone, Debug)]
pub struct CrashQueue {
    tx: mpsc::UnboundedSender<Job>,
}

impl CrashQueue {
    /// Starts the worker; entries already in the inbox are queued first.
    pub fn start(inbox: PathBuf, probes: Arc<ProbeManager>, ingest: Arc<Ingest>) -> CrashQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let _ = std::fs::create_dir_all(&inbox);
        remove_abandoned(&inbox);
        for id in pending(&inbox) {
            let _ = tx.send((id, None));
        }
        tokio::spawn(async move {
            let mut done = Recent::default();
            loop {
                tokio::select! {
                    job = rx.recv() => {
                        let Some((id, reply)) = job else { break };
                        // Handed over already by a rescan: answer with
                        // what that made.
                        let records = match done.get(&id) {
                            Some(r) if !inbox.join(&id).exists() => r,
                            _ => process(&inbox, &id, &probes, &ingest).await,
                        };
                        done.put(&id, &records);
                        if let Some(r) = reply {
                            let _ = r.send(records);
                        }
                    }
                    () = probes.crash_probe_loaded() => {
                        // Crashes that waited for a crash probe (none was
                        // loaded, or it was quarantined) go to it now.
                        for id in pending(&inbox) {
                            let records = process(&inbox, &id, &probes, &ingest).await;
                            done.put(&id, &records);
                        }
                    }
                }
            }
        });
        CrashQueue { tx }
    }

    /// Queues an entry the handler announced; the receiver, when asked
    /// for, gets the records made from it.
    pub fn announce(
        &self,
        id: &str,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Vec<Captured>>>, String> {
        if !valid_id(id) {
            return Err(format!("bad crash id {id:?}"));
        }
        let (reply, rx) = if wait {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.tx
            .send((id.to_owned(), reply))
            .map_err(|_| "the crash worker stopped".to_string())?;
        Ok(rx)
    }
}

/// The records of the last few crashes handled, so an announcement that
/// arrives after a rescan already handled its entry still gets them.
#[derive(Default)]
struct Recent(std::collections::VecDeque<(String, Vec<Captured>)>);

impl Recent {
    const KEEP: usize = 16;

    fn get(&self, id: &str) -> Option<Vec<Captured>> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, r)| r.clone())
    }

    fn put(&mut self, id: &str, records: &[Captured]) {
        self.0.retain(|(i, _)| i != id);
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back((id.to_owned(), records.to_vec()));
    }
}

async fn process(inbox: &Path, id: &str, probes: &ProbeManager, ingest: &Ingest) -> Vec<Captured> {
    // At start-up the probes load after the sockets are bound; a crash that
    // waited while the daemon was down goes to them once they are loaded.
    probes
        .first_scan_done(crate::sandbox::supervisor::FIRST_SCAN_WAIT)
        .await;
    let entry = inbox.join(id);
    let meta: CrashMeta = match std::fs::read(entry.join(META_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            // Announced twice, or broken: nothing to hand over.
            if entry.exists() {
                warn!("crash entry {id}: unreadable {META_FILE} ({e}); removed");
                let _ = std::fs::remove_dir_all(&entry);
            }
            return Vec::new();
        }
    };
    let report = CrashReport {
        core_path: entry.join(CORE_FILE).to_string_lossy().into_owned(),
        process_name: meta.process_name.clone(),
        process_path: meta.process_path.clone(),
        pid: meta.pid,
        signal: meta.signal,
    };
    let (results, mut records) = probes.crash(report, &entry).await;
    if results.is_empty() {
        warn!(
            "crash of {} (pid {}) waits in the inbox until a probe that handles crashes is loaded",
            crate::untrusted::escape(
                meta.process_path.as_deref().unwrap_or(&meta.process_name),
                crate::untrusted::FIELD_CAP
            ),
            meta.pid
        );
        return records;
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    if failures.len() == results.len() {
        // No probe produced a record: keep the crash's facts at least.
        let mut payload = format!("Error: crash symbolizer failed: {}\n", failures.join("; "));
        payload.push_str(&format!(
            "Process: {}\nPID: {}\n",
            meta.process_path.as_deref().unwrap_or(&meta.process_name),
            meta.pid
        ));
        if let Some(s) = meta.signal {
            payload.push_str(&format!("Signal: {s}\n"));
        }
        let payload: String = payload
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' || c == '\n' {
                    c
                } else {
                    '?'
                }
            })
            .take(8192)
            .collect();
        let rec = Record::from_probe("org.clearlinux/crash/error", 4, 1, payload.clone(), None);
        match ingest.submit_probe(rec).await {
            Ok(rid) => {
                info!("crash {id}: every probe failed; error record {rid} kept");
                records.push(Captured {
                    classification: "org.clearlinux/crash/error".into(),
                    severity: 4,
                    payload,
                });
            }
            Err(e) => warn!("crash {id}: every probe failed and the error record was refused: {e}"),
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&entry) {
        warn!("crash entry {}: cannot remove: {e}", entry.display());
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_inbox() {
        assert!(valid_id("1764100000-4242-ab12"));
        for bad in ["", "..", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn pending_lists_complete_entries_oldest_first() {
        let dir = std::env::temp_dir().join(format!("telem-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (id, meta) in [("b", true), ("a", true), ("half", false)] {
            std::fs::create_dir_all(dir.join(id)).unwrap();
            std::fs::write(dir.join(id).join(CORE_FILE), b"core").unwrap();
            if meta {
                std::fs::write(dir.join(id).join(META_FILE), b"{}").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(pending(&dir), ["b", "a"]);
        assert_eq!(inbox_bytes(&dir), 3 * 4 + 2 * 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// What `telemctl crash symbolize` asks for.
#[derive(Clone, Debug)]
pub struct SymbolizeRequest {
    /// The core file.
    pub core: PathBuf,
    /// The crashed program's binary, if it is not where the core says.
    pub exe: Option<PathBuf>,
    /// More debug-file trees (`DIR/.build-id/...`).
    pub debug_roots: Vec<PathBuf>,
    /// The component; default: `crash-symbolizer.wasm` in the probe dirs.
    pub probe: Option<PathBuf>,
}

/// Runs the crash-symbolizer component on an admin's core, in the same
/// sandbox and with the same limits as for a live crash, and returns the
/// records it would have sent (nothing is spooled or sent; no privacy
/// filter). It reads the core, the `--exe` binary and the debug trees
/// through read-only grants of their directories, as the invoking user.
pub fn symbolize_offline(
    config: &crate::config::Config,
    req: &SymbolizeRequest,
) -> Result<Vec<Captured>, String> {
    let abs = |p: &Path| {
        p.canonicalize()
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let core = abs(&req.core)?;
    let exe = req.exe.as_deref().map(abs).transpose()?;
    let file = match &req.probe {
        Some(p) => p.clone(),
        None => config
            .probes_dirs
            .iter()
            .map(|d| d.join("crash-symbolizer.wasm"))
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "no crash-symbolizer.wasm in {:?} (give one with --probe)",
                    config.probes_dirs
                )
            })?,
    };
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // The compiled component is cached per user: a shared cache writable by
    // someone else would let them plant native code this process loads.
    let cache = match std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    {
        Some(d) => d.join("telemctl/probe-cache"),
        None => {
            return Err(
                "neither XDG_CACHE_HOME nor HOME is set (needed for the compile cache)".into(),
            )
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let sandbox = crate::sandbox::Sandbox::new(&cache).map_err(|e| format!("{e:#}"))?;
        let probe = sandbox
            .load(&file, &bytes, |name| {
                config.probes.get(name).cloned().unwrap_or_default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let probe = Arc::new(probe);
        let mut args = vec!["symbolize".to_string(), core.to_string_lossy().into_owned()];
        let mut extra = vec![core.parent().unwrap_or(Path::new("/")).to_owned()];
        if let Some(e) = &exe {
            args.extend(["--exe".into(), e.to_string_lossy().into_owned()]);
            extra.push(e.parent().unwrap_or(Path::new("/")).to_owned());
        }
        for d in &req.debug_roots {
            let d = abs(d)?;
            args.extend(["--debug-root".into(), d.to_string_lossy().into_owned()]);
            extra.push(d);
        }
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        sandbox
            .run(
                &probe,
                crate::sandbox::Sink::Capture(kept.clone()),
                crate::sandbox::Event::Manual(args),
                &extra,
            )
            .await
            .map_err(|e| format!("{}: {e}", probe.name))?;
        let out = std::mem::take(&mut *kept.lock().expect("capture lock"));
        Ok(out)
    })
}
