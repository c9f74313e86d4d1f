//! The probe component: for each crash the host hands over (its core
//! readable for this call only), symbolize and send one record; for
//! `telemctl crash symbolize` (a manual run), the same on the admin's core.

use std::path::PathBuf;

use telemetrics_probe_sdk::{
    debuginfo, export_probe, log, state, CrashReport, Event, Manifest, Probe, Record, Sent, Trigger,
};

use crate::frame_cache::{keep, EntryStore, EntryWriter, FrameCache, Refused};
use crate::modules::{Fetch, Lookup};
use crate::report::{analyze_cached, CrashFacts, Options};

/// The frame cache's entries, in the probe's state.
struct StateEntries;

impl EntryStore for StateEntries {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
}

impl EntryWriter for StateEntries {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Refused> {
        state::set(key, value).map_err(|e| match e {
            state::StateError::QuotaExceeded(limit) => Refused::Quota(limit),
            _ => Refused::Other,
        })
    }

    fn delete(&mut self, key: &str) {
        let _ = state::delete(key);
    }

    fn keys(&mut self) -> Vec<String> {
        state::keys()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Version of the crash payload format (the legacy one).
const PAYLOAD_VERSION: u32 = 1;

struct CrashSymbolizer;

fn send(classification: &str, severity: u8, payload: String) -> Result<(), String> {
    let sent = Record::new(classification)
        .severity(severity)
        .payload_version(PAYLOAD_VERSION)
        .payload(payload)
        .send()?;
    // A crash record the host did not store fails the call, so the daemon
    // sends its own record of the crash instead of losing it.
    match sent {
        Sent::Stored(_) => Ok(()),
        Sent::RateLimited => Err("crash record not stored: over the hourly budget".into()),
        Sent::NotKept(why) => Err(format!("crash record not stored: {why}")),
    }
}

/// Symbolizes one core and sends its record; a core that cannot be read
/// still gives an error record, so the crash is not lost.
fn report(core: &str, facts: CrashFacts, mut lookup: Lookup) -> Result<(), String> {
    // Debug files missing here, from the host's debuginfod client.
    lookup.fetch = Some(Fetch(std::rc::Rc::new(|id: &[u8]| {
        debuginfo::find(id, debuginfo::Kind::Debuginfo).map(PathBuf::from)
    })));
    let opts = Options {
        lookup,
        ..Options::default()
    };
    let mut entries = StateEntries;
    let mut cache = FrameCache::new(&mut entries);
    let result = std::fs::File::open(core)
        .map_err(|e| format!("cannot open the core {core}: {e}"))
        .and_then(|f| analyze_cached(&f, &facts, &opts, &mut cache).map_err(|e| e.to_string()));
    for why in &cache.rebuilt {
        log::info(&format!("frame cache entry rebuilt: {why}"));
    }
    log::info(&format!(
        "frame cache: {} of {} lookups answered from earlier crashes",
        cache.hits,
        cache.hits + cache.misses
    ));
    let (used, changed) = cache.finish();
    // The record first: keeping the cache must never cost it (a slow
    // state write, the call's deadline).
    let sent = match result {
        Ok(r) => {
            for p in &r.module_problems {
                log::info(&format!("module not used: {p}"));
            }
            let (class, severity) = r.classification();
            send(class, severity, r.payload())
        }
        Err(e) => {
            log::warn(&format!("{core}: {e}"));
            let p = crate::report::error_payload(&e, &facts);
            send("org.clearlinux/crash/error", 4, p)
        }
    };
    if let Some(limit) = keep(&mut StateEntries, &used, changed, now()) {
        log::info(&format!(
            "frame cache: an entry was not kept, the state quota ({limit} bytes) holds no older one to drop (raise state_quota_mib)"
        ));
    }
    sent
}

impl Probe for CrashSymbolizer {
    fn describe() -> Manifest {
        Manifest {
            name: "crash-symbolizer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Unwinds and symbolizes core dumps from the crash handler".into(),
            classifications: vec!["org.clearlinux/crash/*".into()],
            triggers: vec![Trigger::Crash, Trigger::Manual],
            read_paths: vec!["/usr".into(), "/usr/lib/debug".into()],
            max_records_per_hour: 120,
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        match event {
            Event::Crash(CrashReport {
                core_path,
                process_name,
                process_path,
                pid,
                signal,
                ..
            }) => {
                let facts = CrashFacts {
                    process_path: process_path.or(Some(process_name)),
                    // 0: the handler did not learn it (no `%P`).
                    pid: (pid != 0).then_some(pid),
                    signal,
                };
                report(&core_path, facts, Lookup::default())
            }
            Event::Manual(args) => {
                // symbolize CORE [--exe PATH] [--debug-root DIR]...
                let mut it = args.iter();
                if it.next().map(String::as_str) != Some("symbolize") {
                    return Err("usage: symbolize CORE [--exe PATH] [--debug-root DIR]".into());
                }
                let core = it.next().ok_or("symbolize needs a core file")?.clone();
                let mut lookup = Lookup::default();
                while let Some(flag) = it.next() {
                    let value = it.next().ok_or(format!("{flag} needs a value"))?;
                    match flag.as_str() {
                        "--exe" => lookup.exe = Some(PathBuf::from(value)),
                        "--debug-root" => lookup.debug_roots.push(PathBuf::from(value)),
                        other => return Err(format!("unknown option {other}")),
                    }
                }
                report(&core, CrashFacts::default(), lookup)
            }
            // Whatever else a later contract hands it.
            _ => Ok(()),
        }
    }
}

export_probe!(CrashSymbolizer);
