//! The component: told of new dump files by the host, it reads the whole
//! dump (every part of it, for the kernel's own files), reports it once
//! (its digest kept in state: the same dump under `/sys/fs/pstore` and in
//! systemd-pstore's archive is one dump) and leaves the files alone:
//! removing them, which frees the firmware's space, is systemd-pstore's
//! job.

use std::collections::BTreeMap;

use telemetrics_probe_sdk::{
    export_probe, log, state, BatchLimits, Event, FileNotice, FilesSource, Manifest, Probe, Record,
    Sent, Source,
};

use crate::{digest, join_parts, parse_name, records, DumpKey};

/// Digests of the dumps reported, kept to tell a dump seen again.
const SEEN: &str = "seen";
/// Most digests kept (the oldest go first).
const MAX_SEEN: usize = 1024;
const ARCHIVE: &str = "/var/lib/systemd/pstore";
const KERNEL: &str = "/sys/fs/pstore";

struct Pstore;

fn files(dir: &str, pattern: &str) -> Source {
    Source::Files(FilesSource {
        dir: dir.into(),
        pattern: pattern.into(),
        limits: BatchLimits {
            max_items: 64,
            max_bytes: 0,
        },
    })
}

fn seen() -> Vec<u64> {
    state::get(SEEN)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// A dump's text: bytes that are not UTF-8 (a task name may be any bytes)
/// are replaced, not a reason to skip the dump.
fn read_text(path: &str) -> std::io::Result<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The dumps these notices belong to: `dmesg.txt` files as they are, the
/// kernel's part files joined with their siblings (read from the
/// directory, which the call may read).
fn dumps(dir: &str, notices: &[FileNotice]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut keys: BTreeMap<DumpKey, String> = BTreeMap::new();
    for n in notices {
        let name = n.path.rsplit('/').next().unwrap_or("");
        if name == "dmesg.txt" {
            match read_text(&n.path) {
                Ok(text) => out.push((n.path.clone(), text)),
                Err(e) => log::warn(&format!("{}: {e}", n.path)),
            }
        } else if let Some((key, _)) = parse_name(name) {
            let parent = n.path.rsplit_once('/').map_or(dir, |(p, _)| p).to_owned();
            keys.insert(key, parent);
        }
    }
    for (key, parent) in keys {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            log::warn(&format!(
                "{parent}: cannot list the parts of dump {}",
                key.dump
            ));
            continue;
        };
        let mut parts = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((k, part)) = parse_name(&name) {
                if k == key {
                    // A part removed since the notice is missing, one this
                    // user may not read (an archived part of mode 0600)
                    // too: the rest of the dump is still reported.
                    match read_text(&e.path().to_string_lossy()) {
                        Ok(text) => parts.push((part, text)),
                        Err(err) => log::warn(&format!("{parent}/{name}: {err}")),
                    }
                }
            }
        }
        if !parts.is_empty() {
            out.push((
                format!("{parent}/dmesg-{}-{}", key.backend, key.dump),
                join_parts(parts),
            ));
        }
    }
    out
}

impl Probe for Pstore {
    fn describe() -> Manifest {
        Manifest {
            name: "pstore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Oopses and panics of earlier boots, from pstore".into(),
            classifications: vec![
                "org.clearlinux/kernel/*".into(),
                "org.clearlinux/pstore/*".into(),
            ],
            max_records_per_hour: 120,
            sources: vec![
                // systemd 253 and later: EFI dumps joined per dump.
                files(ARCHIVE, "*/*/dmesg.txt"),
                // systemd 243 to 252.
                files(ARCHIVE, "*/dmesg.txt"),
                // ramoops and other backends, moved flat.
                files(ARCHIVE, "dmesg-*"),
                // No systemd-pstore: the kernel's own files.
                files(KERNEL, "dmesg-*"),
            ],
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let Event::Files((dir, notices)) = event else {
            return Ok(());
        };
        let mut seen = seen();
        let mut sent = 0;
        for (origin, text) in dumps(&dir, &notices) {
            let d = digest(&text);
            if seen.contains(&d) {
                continue;
            }
            let recs = records(&text);
            if recs.is_empty() {
                log::info(&format!("{origin}: no oops or panic in this dump"));
            }
            for r in recs {
                // A refusal (over the hourly budget) is logged, not a
                // failure: failing would hand the batch back until the
                // probe is quarantined.
                match Record::new(r.classification)
                    .severity(r.severity)
                    .payload(r.payload)
                    .send()
                {
                    Ok(Sent::Stored(_)) => sent += 1,
                    Ok(Sent::RateLimited) => log::warn(&format!(
                        "{origin}: record not taken: over the hourly budget"
                    )),
                    Ok(Sent::NotKept(why)) => {
                        log::warn(&format!("{origin}: record not taken: {why}"))
                    }
                    Err(e) => log::warn(&format!("{origin}: record not taken: {e}")),
                }
            }
            seen.push(d);
        }
        if seen.len() > MAX_SEEN {
            seen.drain(..seen.len() - MAX_SEEN);
        }
        let bytes: Vec<u8> = seen.iter().flat_map(|d| d.to_le_bytes()).collect();
        state::set(SEEN, &bytes).map_err(|e| format!("state: {e}"))?;
        if sent > 0 {
            log::info(&format!("{sent} record(s) from pstore"));
        }
        Ok(())
    }
}

export_probe!(Pstore);
