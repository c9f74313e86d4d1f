//! The systemd journal source (not the delivery journal, `telem_core::journal`): `journalctl` as a child (`-o json --all --follow`,
//! the probe's matches, `--after-cursor` from the probe's cursor), its
//! output read line by line with a cap, each entry cut to the granted
//! fields. journalctl rather than libsystemd's sd-journal: no C library
//! linked into the daemon, no unsafe FFI, and the journal files (the
//! least trusted input here) are parsed in a separate process that can
//! crash or be killed without taking the daemon along; the JSON it
//! writes is parsed by serde.
//!
//! journalctl's `--follow` reads the journal's last boot only (this
//! version's rule): a source with `this-boot` wants exactly that; one
//! without it sees the current boot too, not earlier ones.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use telem_sandbox::JournalEntry;

use telem_core::control::ProbeState;
use telem_sandbox::{Event, LoadedProbe};
use tokio::sync::mpsc;

use super::{batch_limits, boot_id, save, BatchConsumer, CursorFile, SOURCE_RETRY};

/// Longest output line kept (an entry with every field): an entry over it
/// is skipped and counted. journald keeps fields under 64 KiB by default;
/// native clients may send more.
pub const LINE_CAP: usize = 4 << 20;
/// Longest field value handed to a probe; the rest is cut.
pub const VALUE_CAP: usize = 16 << 10;
/// Most bytes of field values one entry carries; later fields are left
/// out (so the reader's queue of entries is bounded in bytes too).
pub const ENTRY_CAP: usize = 64 << 10;

/// What the reader hands on.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// An entry and its cursor.
    Entry(String, JournalEntry),
    /// Entries that could not be read (too long, not JSON).
    Skipped(u64),
}

/// What to read.
#[derive(Clone, Debug)]
pub struct Query {
    /// A directory of journal files, or `None` for the system journal.
    pub dir: Option<PathBuf>,
    /// Match groups (ORed), each a list of `FIELD=value` terms.
    pub groups: Vec<Vec<String>>,
    /// `_BOOT_ID=` added to every group, if any.
    pub boot_id: Option<String>,
    /// Fields handed on.
    pub fields: Vec<String>,
}

/// The journalctl command line for `query`, after `cursor`.
pub fn command(query: &Query, cursor: Option<&str>) -> Command {
    let mut c = Command::new("journalctl");
    // Its own environment: no colours or debug output in what is parsed,
    // whatever the daemon was started with.
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("LC_ALL", "C.UTF-8");
    c.args([
        "--output=json",
        "--all",
        "--follow",
        "--lines=all",
        "--no-pager",
        "--quiet",
    ]);
    if let Some(d) = &query.dir {
        c.arg(format!("--directory={}", d.display()));
    }
    if let Some(cur) = cursor {
        c.arg(format!("--after-cursor={cur}"));
    }
    let mut fields = query.fields.clone();
    fields.sort();
    fields.dedup();
    c.arg(format!("--output-fields={}", fields.join(",")));
    for (i, g) in query.groups.iter().enumerate() {
        if i > 0 {
            c.arg("+");
        }
        c.args(g);
        if let Some(b) = &query.boot_id {
            c.arg(format!("_BOOT_ID={b}"));
        }
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A field value of journalctl's JSON: a string, a byte array (binary),
/// or a list of either (a field set more than once: the first is kept).
fn value_text(v: &serde_json::Value) -> Option<String> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.iter().all(|i| i.is_u64()) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|i| i.as_u64())
                .map(|b| b as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        serde_json::Value::Array(items) => return items.first().and_then(value_text),
        _ => return None,
    };
    let mut text = text;
    if text.len() > VALUE_CAP {
        let mut cut = VALUE_CAP;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(text)
}

/// One line of journalctl's output as an entry with the granted fields.
pub fn parse_line(line: &[u8], fields: &[String]) -> Option<(String, JournalEntry)> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    let cursor = map.get("__CURSOR")?.as_str()?.to_owned();
    let realtime_usec = map
        .get("__REALTIME_TIMESTAMP")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = 0;
    let fields = fields
        .iter()
        .filter_map(|f| map.get(f).and_then(value_text).map(|v| (f.clone(), v)))
        .take_while(|(_, v)| {
            total += v.len();
            total <= ENTRY_CAP
        })
        .collect();
    Some((
        cursor,
        JournalEntry {
            realtime_usec,
            fields,
        },
    ))
}

/// Kills the child when dropped (the probe stopped).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `out` (journalctl's stdout) line by line, handing on entries,
/// until it ends or `send` returns false. Lines over [`LINE_CAP`] are
/// read through and counted, never held.
pub fn read_entries(mut out: impl Read, fields: &[String], mut send: impl FnMut(Item) -> bool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    let mut overlong = false;
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut rest = &buf[..n];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let part = &rest[..nl];
            rest = &rest[nl + 1..];
            let item = if overlong || line.len() + part.len() > LINE_CAP {
                Item::Skipped(1)
            } else {
                line.extend_from_slice(part);
                match parse_line(&line, fields) {
                    Some((cursor, entry)) => Item::Entry(cursor, entry),
                    None => Item::Skipped(1),
                }
            };
            line.clear();
            overlong = false;
            if !send(item) {
                return;
            }
        }
        if line.len() + rest.len() > LINE_CAP {
            overlong = true;
            line.clear();
        } else if !overlong {
            line.extend_from_slice(rest);
        }
    }
}

/// Drains journalctl's stderr for as long as it runs (a full pipe would
/// stop it: it warns once per damaged file), keeping its first line for
/// the log line that says why it stopped, and handing each line (at most
/// [`STDERR_LINES`] per run, each cut at [`STDERR_LINE_CAP`]) to `on_line`.
pub fn drain_stderr(
    child: &mut Child,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let first = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let keep = first.clone();
        let _ = std::thread::Builder::new()
            .name("journalctl-stderr".into())
            .spawn(move || {
                let mut lines = 0usize;
                let mut said = |line: &[u8]| {
                    let text = String::from_utf8_lossy(line);
                    let mut first = keep.lock().expect("stderr lock");
                    if first.is_empty() {
                        *first = text.trim_end().to_owned();
                    }
                    drop(first);
                    if lines < STDERR_LINES {
                        lines += 1;
                        on_line(&text);
                    }
                };
                read_capped_lines(err, STDERR_LINE_CAP, &mut said);
            });
    }
    first
}

/// Most lines of journalctl's stderr looked at per run (one per damaged
/// file; a directory of thousands of them must not flood anything).
pub const STDERR_LINES: usize = 256;
/// Longest line of journalctl's stderr kept (a path and a few words).
pub const STDERR_LINE_CAP: usize = 1024;

/// Reads `from` line by line, each cut at `cap` bytes (the rest of a
/// longer line is skipped), until it ends.
fn read_capped_lines(mut from: impl Read, cap: usize, each: &mut dyn FnMut(&[u8])) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                each(&line);
                line.clear();
            } else if line.len() < cap {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        each(&line);
    }
}

/// Whether `dir` can be read as a journal directory (a clear log line
/// when not, before journalctl says less clearly).
pub fn dir_problem(dir: &Path) -> Option<String> {
    match std::fs::read_dir(dir) {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {e}", dir.display())),
    }
}

/// Hands journal entries to `probe`, batch by batch, from its cursor:
/// journalctl runs as a child, started again (after the last entry
/// handled) when it stops; a journal that cannot be read is logged once
/// and tried again every [`SOURCE_RETRY`].
pub async fn drive<C: BatchConsumer>(
    mgr: Arc<C>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    source: telem_sandbox::JournalSource,
) {
    let opts = mgr.source_options().clone();
    let Some(fields) = probe.grant.journal.clone() else {
        return;
    };
    let (max_items, max_bytes) = batch_limits(&source.limits);
    let mut said: Option<String> = None;
    let mut last_warned: Option<std::time::Instant> = None;
    let mut quick_failures = 0;
    // The last cursor delivered in this run (a failed save does not make a
    // restarted journalctl hand the batch again).
    let mut delivered: Option<String> = None;
    loop {
        let mut groups = source.matches.clone();
        let gated = opts.no_privacy_filters_file.exists();
        if gated {
            groups.extend(source.privacy_gated.iter().cloned());
        }
        if groups.is_empty() {
            // Refused at load; never read the whole journal.
            return;
        }
        let query = Query {
            dir: opts.journal_dir.clone(),
            groups,
            // The journal writes the id without its dashes.
            boot_id: source
                .this_boot
                .then(|| boot_id(&opts.boot_id_path).replace('-', "")),
            fields: fields.clone(),
        };
        let cursor = delivered
            .clone()
            .or_else(|| cursors.cursors.lock().expect("cursor lock").journal.clone());
        let problem = opts.journal_dir.as_deref().and_then(dir_problem);
        let child = match problem {
            Some(p) => Err(p),
            None => command(&query, cursor.as_deref())
                .spawn()
                .map_err(|e| format!("cannot run journalctl: {e}")),
        };
        let mut child = match child {
            Ok(c) => ChildGuard(c),
            Err(why) => {
                if said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(probe = %probe.name, "journal source: {why}; trying again every {} s", SOURCE_RETRY.as_secs());
                    said = Some(why);
                }
                tokio::time::sleep(SOURCE_RETRY).await;
                continue;
            }
        };
        let Some(out) = child.0.stdout.take() else {
            return;
        };
        let stderr_first = {
            let (cursors, probe_name) = (cursors.clone(), probe.name.clone());
            drain_stderr(&mut child.0, move |line| {
                // Each distinct warning once, however often journalctl is
                // started again; all of them in `telemctl probe info`.
                if let super::Noted::Log(new, held_back) = cursors.journal_warnings.note(line) {
                    let more = if held_back > 0 {
                        format!(" ({held_back} more held back before this; telemctl probe info shows them)")
                    } else {
                        String::new()
                    };
                    tracing::warn!(probe = %probe_name, "journal source: journalctl: {new}{more}");
                }
            })
        };
        let started = std::time::Instant::now();
        // Entries may be up to 64 KiB each: the queue holds 128 at most.
        let (tx, mut rx) = mpsc::channel::<Item>(max_items.min(128));
        let reader_fields = fields.clone();
        // What a reader before this one read and did not hand on is read
        // again by this one, which counts afresh.
        let backlog = cursors.new_journal_backlog();
        let counted = backlog.clone();
        let reader = std::thread::Builder::new()
            .name(format!("journal-{}", probe.name))
            .spawn(move || {
                read_entries(out, &reader_fields, |item| {
                    let entry = matches!(item, Item::Entry(..));
                    let sent = tx.blocking_send(item).is_ok();
                    if sent && entry {
                        counted.read(1);
                    }
                    sent
                })
            });
        if let Err(e) = reader {
            tracing::error!(probe = %probe.name, "no journal reader (cannot start a thread: {e}); the source stays off until the probe is reloaded");
            return;
        }
        let mut pending: Option<Item> = None;
        let mut gate_check = tokio::time::interval(SOURCE_RETRY);
        let mut gate_changed = false;
        loop {
            let first = match pending.take() {
                Some(item) => item,
                None => {
                    let next = tokio::select! {
                        item = rx.recv() => item,
                        _ = gate_check.tick() => {
                            // The admin turned the privacy filters on or
                            // off: journalctl starts again with the
                            // matches that now apply.
                            if opts.no_privacy_filters_file.exists() != gated {
                                tracing::info!(probe = %probe.name, "privacy filters changed; journal matches follow");
                                gate_changed = true;
                                break;
                            }
                            continue;
                        }
                    };
                    match next {
                        Some(item) => item,
                        None => break,
                    }
                }
            };
            let mut entries = Vec::new();
            let mut last_cursor = None;
            let (mut bytes, mut skipped) = (0usize, 0u64);
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Item::Skipped(n) => skipped = skipped.saturating_add(n),
                    Item::Entry(cursor, entry) => {
                        let size: usize = entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
                        if !entries.is_empty()
                            && (entries.len() >= max_items || bytes + size > max_bytes)
                        {
                            pending = Some(Item::Entry(cursor, entry));
                            break;
                        }
                        bytes += size;
                        entries.push(entry);
                        last_cursor = Some(cursor);
                    }
                }
                next = rx.try_recv().ok();
            }
            if skipped > 0 {
                let mut st = probe.stats.lock().expect("stats lock");
                st.source_skipped = st.source_skipped.saturating_add(skipped);
                drop(st);
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warned = Some(std::time::Instant::now());
                    tracing::warn!(probe = %probe.name, "{skipped} journal entries could not be read (over 4 MiB, or not journalctl's JSON)");
                }
            }
            if entries.is_empty() {
                continue;
            }
            let _commit = cursors.commit.lock().await;
            let handed = entries.len() as u64;
            if !mgr
                .deliver_batch(&probe, &state, Event::Journal(entries), &[])
                .await
            {
                return;
            }
            backlog.handled(handed);
            said = None;
            if let Some(c) = last_cursor {
                delivered = Some(c.clone());
                let saved = save(&cursors, move |cs| cs.journal = Some(c)).await;
                if let Err(e) = saved {
                    tracing::error!(probe = %probe.name, "journal cursor not saved: {e}; a restart hands this batch again");
                }
            }
        }
        // journalctl stopped (with --follow it does not on its own), or is
        // stopped here (the privacy gate changed, its output ended).
        let _ = child.0.kill();
        let status = child.0.wait();
        if gate_changed {
            continue;
        }
        let first_line = stderr_first.lock().expect("stderr lock").clone();
        // A cursor journalctl refuses (its file vacuumed and damaged, say)
        // would stop it at every start: after a second quick failure with
        // it, the source reads its matches from the start instead (a
        // repeat of what was reported beats a source stuck for good).
        if cursor.is_some() && started.elapsed() < SOURCE_RETRY {
            quick_failures += 1;
            if quick_failures >= 2 {
                tracing::warn!(probe = %probe.name, "journalctl stopped twice at once with the saved cursor ({}); reading from the start of the journal's matches", telem_core::untrusted::escape(&first_line, 256));
                let _ = save(&cursors, |cs| cs.journal = None).await;
                quick_failures = 0;
            }
        } else {
            quick_failures = 0;
        }
        let why = format!(
            "journalctl stopped ({}): {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            telem_core::untrusted::escape(&first_line, 256)
        );
        if said.as_deref() != Some(why.as_str()) {
            tracing::warn!(probe = %probe.name, "journal source: {why}; starting it again every {} s", SOURCE_RETRY.as_secs());
            said = Some(why);
        }
        tokio::time::sleep(SOURCE_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// journalctl's stderr from a hostile or broken journal: a line of
    /// megabytes and a flood of lines. Each line reaches the handler cut
    /// at its cap, at most `STDERR_LINES` of them per run, and the pipe is
    /// drained to the end (the child never blocks on a full pipe).
    #[test]
    fn journalctl_stderr_is_drained_with_lines_and_bytes_capped() {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("head -c 3000000 /dev/zero | tr '\\0' x >&2; echo >&2; seq 1 5000 >&2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let keep = seen.clone();
        let first = drain_stderr(&mut child, move |l| keep.lock().unwrap().push(l.to_owned()));
        assert!(
            child.wait().unwrap().success(),
            "the writer was not blocked"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.lock().unwrap().len() < STDERR_LINES && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), STDERR_LINES);
        assert_eq!(seen[0].len(), STDERR_LINE_CAP);
        assert_eq!(seen[1], "1");
        assert_eq!(first.lock().unwrap().len(), STDERR_LINE_CAP);
    }

    fn f(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_keep_only_granted_fields_and_binary_is_replaced() {
        let line = br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000000000","MESSAGE":[98,105,110,0,255],"_CMDLINE":"secret","UNIT":["a.service","b.service"]}"#;
        let (cursor, e) = parse_line(line, &f(&["MESSAGE", "UNIT", "EXIT_CODE"])).unwrap();
        assert_eq!(cursor, "s=1;i=2");
        assert_eq!(e.realtime_usec, 1_700_000_000_000_000);
        assert_eq!(
            e.fields,
            vec![
                ("MESSAGE".to_owned(), "bin\u{0}\u{fffd}".to_owned()),
                ("UNIT".to_owned(), "a.service".to_owned())
            ]
        );
        assert!(parse_line(b"{\"MESSAGE\":\"no cursor\"}", &f(&["MESSAGE"])).is_none());
        assert!(parse_line(b"not json", &f(&["MESSAGE"])).is_none());
    }

    #[test]
    fn long_values_are_cut_and_longer_lines_skipped_unheld() {
        let big = "x".repeat(1 << 20);
        let line = format!("{{\"__CURSOR\":\"c\",\"MESSAGE\":\"{big}\"}}\n");
        let mut out = Vec::new();
        read_entries(line.as_bytes(), &f(&["MESSAGE"]), |i| {
            out.push(i);
            true
        });
        let Item::Entry(_, e) = &out[0] else { panic!() };
        assert_eq!(e.fields[0].1.len(), VALUE_CAP);
        let huge = format!(
            "{{\"__CURSOR\":\"c\",\"MESSAGE\":\"{}\"}}\n{{\"__CURSOR\":\"d\"}}\n",
            "y".repeat(LINE_CAP)
        );
        let mut out = Vec::new();
        read_entries(huge.as_bytes(), &f(&["MESSAGE"]), |i| {
            out.push(i);
            true
        });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Item::Skipped(1));
        assert!(matches!(&out[1], Item::Entry(c, _) if c == "d"));
    }

    #[test]
    fn matches_become_journalctl_terms_with_the_boot_in_every_group() {
        let q = Query {
            dir: Some("/j".into()),
            groups: vec![
                vec!["EXIT_CODE=exited".into()],
                vec!["PRIORITY=0".into(), "PRIORITY=1".into()],
            ],
            boot_id: Some("b".into()),
            fields: f(&["MESSAGE", "UNIT"]),
        };
        let c = command(&q, Some("s=1"));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let tail: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .skip_while(|a| !a.starts_with("--output-fields"))
            .collect();
        assert_eq!(
            tail,
            [
                "--output-fields=MESSAGE,UNIT",
                "EXIT_CODE=exited",
                "_BOOT_ID=b",
                "+",
                "PRIORITY=0",
                "PRIORITY=1",
                "_BOOT_ID=b"
            ]
        );
        assert!(args.contains(&"--directory=/j".to_owned()));
        assert!(args.contains(&"--after-cursor=s=1".to_owned()));
    }
}
