//! Reading the kernel log in `/dev/kmsg`'s record format, on the probes'
//! behalf: `PRI,SEQ,USEC,FLAGS[,...];text` per record, followed by
//! `KEY=value` continuation lines that start with a space. The same reader
//! follows the real device (one record per `read`, `EPIPE` when the ring
//! overwrote unread records, `EAGAIN` at the end) and a file or FIFO in
//! the same format (tests, containers), so a line is only ever cut at
//! [`LINE_CAP`] and memory stays bounded whatever arrives.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::{Arc, Mutex};
use telem_sandbox::KernelLogLine;

use telem_core::control::ProbeState;
use telem_sandbox::{BatchLimits, Event, KernelLogBatch, LoadedProbe};
use tokio::sync::mpsc;

use super::{
    batch_limits, boot_id, save, BatchConsumer, CursorFile, KernelLogCursor, SOURCE_RETRY,
};

/// Longest text handed to a probe; the rest of a longer line is dropped.
pub const TEXT_CAP: usize = 4096;
/// Longest raw line kept while reading (a record's header, its text and
/// room for escapes); the rest is read and thrown away.
pub const LINE_CAP: usize = 8192;
/// How often a source at its end (a file, a FIFO without writer) is looked
/// at again, and how long the device is waited on before the reader checks
/// whether anyone still listens.
pub const POLL: Duration = Duration::from_millis(100);

/// What the reader hands on.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// A record of the log.
    Line(KernelLogLine),
    /// Records that will never arrive: lost in the kernel's ring before
    /// they were read, or not in the record format.
    Skipped(u64),
}

/// Parses one record's first line (`PRI,SEQ,USEC,FLAGS;text`).
pub fn parse_record(line: &[u8]) -> Option<KernelLogLine> {
    let semi = line.iter().position(|&b| b == b';')?;
    let head = std::str::from_utf8(&line[..semi]).ok()?;
    let mut fields = head.split(',');
    let pri: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let mut text = String::from_utf8_lossy(&line[semi + 1..]).into_owned();
    if text.len() > TEXT_CAP {
        let mut cut = TEXT_CAP;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(KernelLogLine {
        seq,
        usec,
        level: (pri & 7) as u8,
        facility: ((pri >> 3) & 0xff) as u8,
        text,
    })
}

/// Splits a byte stream into lines of at most [`LINE_CAP`] bytes (the rest
/// of a longer line is dropped) and turns records into [`Item`]s, counting
/// sequence gaps. Keeps at most one partial line between reads.
#[derive(Debug)]
pub struct Parser {
    partial: Vec<u8>,
    overlong: bool,
    /// The sequence number the next record should have, once known.
    expect: Option<u64>,
    /// Records at or below this were handled before (the cursor).
    after: Option<u64>,
}

impl Parser {
    /// A parser that skips records up to and including `after` (the
    /// cursor of this boot) and counts a gap from `after + 1`, or from 0
    /// on a boot with no cursor.
    pub fn new(after: Option<u64>) -> Parser {
        Parser {
            partial: Vec::new(),
            overlong: false,
            expect: Some(after.map_or(0, |a| a + 1)),
            after,
        }
    }

    /// Feeds bytes; complete lines become items.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Item>) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..nl]);
            let line = std::mem::take(&mut self.partial);
            let cut = std::mem::replace(&mut self.overlong, false);
            self.line(&line, cut, out);
            bytes = &bytes[nl + 1..];
        }
        self.push(bytes);
    }

    /// The reader is at the end of what is there: a partial line is a
    /// whole record (`/dev/kmsg` hands whole records; a file's writer may
    /// not end its last line).
    pub fn flush(&mut self, out: &mut Vec<Item>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let cut = std::mem::replace(&mut self.overlong, false);
            self.line(&line, cut, out);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = LINE_CAP.saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.overlong = true;
        }
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line(&mut self, line: &[u8], _cut: bool, out: &mut Vec<Item>) {
        if line.is_empty() || line[0] == b' ' {
            return; // a continuation line (KEY=value) or padding
        }
        let Some(record) = parse_record(line) else {
            // Not a record: lost, and taken to have used one sequence
            // number (a gap after it is not counted twice).
            out.push(Item::Skipped(1));
            if let Some(e) = self.expect.as_mut() {
                *e = e.saturating_add(1);
            }
            return;
        };
        if self.after.is_some_and(|a| record.seq <= a) {
            return;
        }
        if let Some(expect) = self.expect {
            if record.seq > expect {
                out.push(Item::Skipped(record.seq - expect));
            }
        }
        self.expect = Some(record.seq.saturating_add(1));
        // Handed on: after a reopen (the file replaced, the device read
        // again from its oldest record) it is not handed on twice.
        self.after = Some(record.seq);
        out.push(Item::Line(record));
    }
}

/// An open source and what it is.
struct Open {
    file: std::fs::File,
    ino: (u64, u64),
}

fn open(path: &Path) -> std::io::Result<Open> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let m = file.metadata()?;
    Ok(Open {
        file,
        ino: (m.dev(), m.ino()),
    })
}

/// Follows the kernel log at `path`, handing items to `send` until it
/// returns false (no one listens any more). Never returns otherwise: a
/// missing or vanished source is logged once and opened again every
/// `retry`.
pub fn follow(
    path: PathBuf,
    after: Option<u64>,
    retry: Duration,
    mut send: impl FnMut(Item) -> bool,
    alive: impl Fn() -> bool,
) {
    let mut parser = Parser::new(after);
    let mut buf = vec![0u8; LINE_CAP * 2];
    let mut items = Vec::new();
    let mut said_missing = false;
    'reopen: while alive() {
        let mut src = match open(&path) {
            Ok(s) => {
                if said_missing {
                    tracing::info!("kernel log source {} is back", path.display());
                    said_missing = false;
                }
                s
            }
            Err(e) => {
                if !said_missing {
                    tracing::warn!(
                        "kernel log source {} cannot be opened ({e}); trying again every {} s",
                        path.display(),
                        retry.as_secs()
                    );
                    said_missing = true;
                }
                std::thread::sleep(retry);
                continue;
            }
        };
        // A file's writer may be between the two halves of a line: its
        // last line is taken as whole only once a second look finds
        // nothing more.
        let mut at_end = false;
        loop {
            if !alive() {
                return;
            }
            match src.file.read(&mut buf) {
                Ok(0) => {
                    if at_end {
                        parser.flush(&mut items);
                    }
                    at_end = true;
                    // A file at its end or a FIFO without a writer: look
                    // again later, and open it afresh if it was replaced.
                    if !hand_on(&mut items, &mut send) {
                        return;
                    }
                    std::thread::sleep(POLL);
                    let now = std::fs::metadata(&path).map(|m| (m.dev(), m.ino()));
                    if now.as_ref().ok() != Some(&src.ino) {
                        if now.is_err() {
                            tracing::warn!(
                                "kernel log source {} vanished; waiting for it",
                                path.display()
                            );
                            said_missing = true;
                        }
                        continue 'reopen;
                    }
                }
                Ok(n) => {
                    at_end = false;
                    parser.feed(&buf[..n], &mut items);
                    if !hand_on(&mut items, &mut send) {
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    // The ring overwrote records we had not read; the next
                    // read starts at the oldest one left and the gap in
                    // sequence numbers counts what was lost.
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    parser.flush(&mut items);
                    if !hand_on(&mut items, &mut send) {
                        return;
                    }
                    wait_readable(&src.file, POLL);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(
                        "reading kernel log source {}: {e}; opening it again",
                        path.display()
                    );
                    std::thread::sleep(retry);
                    continue 'reopen;
                }
            }
        }
    }
}

fn hand_on(items: &mut Vec<Item>, send: &mut impl FnMut(Item) -> bool) -> bool {
    for item in items.drain(..) {
        if !send(item) {
            return false;
        }
    }
    true
}

fn wait_readable(file: &std::fs::File, timeout: Duration) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    let t = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    });
    let _ = poll(&mut fds, Some(&t));
}

/// Hands the kernel log to `probe`, batch by batch, from its cursor.
/// Returns when the probe is quarantined (the cursor stays where it was)
/// or its task is dropped.
pub async fn drive<C: BatchConsumer>(
    mgr: Arc<C>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
    limits: BatchLimits,
) {
    let opts = mgr.source_options().clone();
    let boot = boot_id(&opts.boot_id_path);
    let after = cursors
        .cursors
        .lock()
        .expect("cursor lock")
        .kernel_log
        .as_ref()
        .filter(|k| k.boot_id == boot)
        .map(|k| k.seq);
    let (max_items, max_bytes) = batch_limits(&limits);
    // The reader blocks once this many lines wait: it holds no more, and
    // the kernel's ring (or the FIFO's writer) waits, or loses lines,
    // which the next batch counts.
    let (tx, mut rx) = mpsc::channel::<Item>(max_items);
    let path = opts.kernel_log_path.clone();
    let backlog = cursors.new_kernel_log_backlog();
    let name = probe.name.clone();
    let counted = backlog.clone();
    let reader = std::thread::Builder::new()
        .name(format!("kmsg-{name}"))
        .spawn(move || {
            let alive = {
                let tx = tx.clone();
                move || !tx.is_closed()
            };
            follow(
                path,
                after,
                SOURCE_RETRY,
                |item| {
                    let line = matches!(item, Item::Line(_));
                    let sent = tx.blocking_send(item).is_ok();
                    if sent && line {
                        counted.read(1);
                    }
                    sent
                },
                alive,
            );
        });
    if let Err(e) = reader {
        tracing::error!(probe = %probe.name, "no kernel log reader (cannot start a thread: {e}); the source stays off until the probe is reloaded");
        return;
    }
    let mut pending: Option<Item> = None;
    // One warning a minute at most about skipped lines: a flood of them
    // must not flood the daemon's log too (the count is in `probe info`).
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let first = match pending.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = KernelLogBatch {
            boot_id: boot.clone(),
            skipped: 0,
            lines: Vec::new(),
        };
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Skipped(n) => batch.skipped = batch.skipped.saturating_add(n),
                Item::Line(line) => {
                    if !batch.lines.is_empty()
                        && (batch.lines.len() >= max_items || bytes + line.text.len() > max_bytes)
                    {
                        pending = Some(Item::Line(line));
                        break;
                    }
                    bytes += line.text.len();
                    batch.lines.push(line);
                }
            }
            next = rx.try_recv().ok();
        }
        let last = batch.lines.last().map(|l| l.seq);
        let lines = batch.lines.len() as u64;
        if batch.skipped > 0 {
            let mut st = probe.stats.lock().expect("stats lock");
            st.source_skipped = st.source_skipped.saturating_add(batch.skipped);
            drop(st);
            if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_warned = Some(std::time::Instant::now());
                tracing::warn!(probe = %probe.name, "{} kernel log record(s) skipped before this batch (lost in the ring or malformed; telemctl probe info counts them all)", batch.skipped);
            }
        }
        if batch.lines.is_empty() && batch.skipped == 0 {
            continue;
        }
        let _commit = cursors.commit.lock().await;
        if !mgr
            .deliver_batch(&probe, &state, Event::KernelLog(batch), &[])
            .await
        {
            return;
        }
        backlog.handled(lines);
        if let Some(seq) = last {
            let next = KernelLogCursor {
                boot_id: boot.clone(),
                seq,
            };
            // Forward only (a replaced probe's late save must not undo its
            // successor's).
            let saved = save(&cursors, move |c| {
                let behind = c
                    .kernel_log
                    .as_ref()
                    .is_some_and(|k| k.boot_id == next.boot_id && k.seq >= next.seq);
                if !behind {
                    c.kernel_log = Some(next);
                }
            })
            .await;
            if let Err(e) = saved {
                tracing::error!(probe = %probe.name, "kernel log cursor not saved: {e}; a restart hands this batch again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(after: Option<u64>, input: &[&[u8]]) -> Vec<Item> {
        let mut p = Parser::new(after);
        let mut out = Vec::new();
        for chunk in input {
            p.feed(chunk, &mut out);
        }
        p.flush(&mut out);
        out
    }

    fn line(seq: u64, text: &str) -> Item {
        Item::Line(KernelLogLine {
            seq,
            usec: 1000 + seq,
            level: 4,
            facility: 0,
            text: text.into(),
        })
    }

    #[test]
    fn records_continuations_and_split_reads() {
        let got = items(
            None,
            &[
                b"4,0,1000,-;first\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:01.0\n4,1,10",
                b"01,c;sec",
                b"ond\n",
            ],
        );
        assert_eq!(got, vec![line(0, "first"), line(1, "second")]);
    }

    #[test]
    fn level_and_facility_come_from_the_priority() {
        let Some(l) = parse_record(b"30,7,5,-;systemd[1]: hi") else {
            panic!()
        };
        assert_eq!((l.level, l.facility, l.seq, l.usec), (6, 3, 7, 5));
    }

    #[test]
    fn the_cursor_skips_handled_records_and_gaps_are_counted() {
        let got = items(
            Some(4),
            &[b"4,3,1003,-;old\n4,4,1004,-;old\n4,5,1005,-;new\n4,9,1009,-;after a gap\n"],
        );
        assert_eq!(
            got,
            vec![line(5, "new"), Item::Skipped(3), line(9, "after a gap")]
        );
        // No cursor: a ring that starts past 0 lost its first records.
        let got = items(None, &[b"4,2,1002,-;x\n"]);
        assert_eq!(got, vec![Item::Skipped(2), line(2, "x")]);
    }

    #[test]
    fn hostile_lines_are_cut_or_counted_never_kept_whole() {
        let mut huge = b"4,0,1000,-;".to_vec();
        huge.extend(std::iter::repeat_n(b'A', 1 << 20));
        huge.push(b'\n');
        huge.extend_from_slice(b"garbage without header\n4,1,1001,-;\xff\xfe bin\x00ary\n");
        let mut p = Parser::new(None);
        let mut out = Vec::new();
        for chunk in huge.chunks(4096) {
            p.feed(chunk, &mut out);
            assert!(
                p.partial.len() <= LINE_CAP,
                "held {} bytes",
                p.partial.len()
            );
        }
        p.flush(&mut out);
        let Item::Line(first) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(first.text.len(), TEXT_CAP);
        // Bytes replaced by U+FFFD (three bytes each) are cut after the
        // replacement: the text stays within the cap.
        let mut bad = b"4,0,1,-;".to_vec();
        bad.extend(std::iter::repeat_n(0xffu8, TEXT_CAP));
        let Some(l) = parse_record(&bad) else {
            panic!()
        };
        assert!(l.text.len() <= TEXT_CAP, "{}", l.text.len());
        assert_eq!(out[1], Item::Skipped(1));
        let Item::Line(bin) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(bin.text, "\u{fffd}\u{fffd} bin\u{0}ary");
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_truncated_last_line_is_read_at_the_end() {
        assert_eq!(
            items(None, &[b"4,0,1000,-;no newline"]),
            vec![line(0, "no newline")]
        );
        // A header cut short is not a record.
        assert_eq!(items(None, &[b"4,0,10"]), vec![Item::Skipped(1)]);
    }
}
