//! Assembling reports from kernel log lines: a start line (see
//! [`crate::patterns`]) opens a report, the lines that belong to it are
//! kept, and it ends at the kernel's end marker, when its call trace is
//! over and an unrelated line follows, at a new report, at a quiet gap, at
//! [`MAX_LINES`], or, for a log that went quiet, at the next timer tick.
//!
//! Where the legacy parser stopped: it ended a call trace at any line
//! shorter than 8 bytes (` <TASK>`, ` <IRQ>`, so today's traces had no
//! frames), read only `Call Trace:` (not arm64's `Call trace:`), lost the
//! report that followed a `WARNING:` inside another, and never reported a
//! panic (its end marker is not `[ end trace`). Here markers are skipped,
//! both spellings start a trace, a new start closes the open report and
//! opens its own, and `---[ end Kernel panic` ends one.

use crate::patterns::{self, Pattern};

/// Most lines kept of one report (the legacy cap was 100; today's reports
/// with two contexts and a repeated register dump run longer).
pub const MAX_LINES: usize = 200;
/// Lines that do not belong in a row after which a report without a call
/// trace is taken to be over.
pub const MAX_STRAY: u32 = 20;
/// Kernel time (µs) between two lines after which the open report is over.
pub const QUIET_GAP_USEC: u64 = 5_000_000;
/// The version of the saved state: it names its pattern by its place in
/// [`patterns::PATTERNS`], so a table that changed makes an older state
/// unreadable (the one report open across the upgrade is lost, never
/// told under another pattern's name).
const STATE_VERSION: u64 = 2;

/// What a kept line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A line of a call trace (a frame or a context marker).
    Trace,
    /// Any other line of the report.
    Other,
}

/// A finished report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What it is.
    pub pattern: &'static Pattern,
    /// Its lines, the start line first.
    pub lines: Vec<(Kind, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Open {
    pattern: usize,
    lines: Vec<(Kind, String)>,
    in_trace: bool,
    trace_over: bool,
    stray: u32,
    last_usec: u64,
    idle_ticks: u32,
}

/// The assembler's state between lines (and, encoded, between calls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assembler {
    open: Option<Open>,
}

fn pattern_index(p: &'static Pattern) -> usize {
    patterns::PATTERNS
        .iter()
        .position(|q| std::ptr::eq(q, p))
        .expect("a pattern of the table")
}

/// Starts of a call trace: x86 and most others, arm64, and 32-bit ARM
/// (`Backtrace:`, with the frame-pointer unwinder).
fn is_trace_start(line: &str) -> bool {
    line.starts_with("Call Trace:")
        || line.starts_with("Call trace:")
        || line.starts_with("Backtrace:")
}

/// A frame of a 32-bit ARM backtrace, in either of its forms: up to 5.x,
/// `[<c0011da8>] (dump_backtrace+0x0/0x10c) from [<c0011fbc>] (show_stack+0x18/0x1c)`
/// at the start of the line; from 5.x, ` unwind_backtrace from
/// show_stack+0x10/0x14`, indented and with no header before it.
pub fn is_arm32_frame(line: &str) -> bool {
    if line.starts_with("[<") {
        return line.contains(">] (") && line.contains(") from [<");
    }
    let t = line.trim_start();
    line.len() > t.len()
        && t.split_once(" from ").is_some_and(|(callee, caller)| {
            // `func`, or a module's `func [mod]` (`%ps`).
            let (name, module) = callee.split_once(' ').unwrap_or((callee, ""));
            !name.is_empty()
                && !name.contains(char::is_whitespace)
                && (module.is_empty() || module.starts_with('[') && module.ends_with(']'))
                && caller.contains("+0x")
        })
}

/// A context marker inside a trace (` <TASK>`, ` </IRQ>`, ...).
pub fn is_marker(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('<') && t.ends_with('>') && !t.contains(' ') && t.len() <= 12
}

/// A frame of a call trace: indented, not a marker.
pub fn is_frame(line: &str) -> bool {
    line.starts_with([' ', '\t']) && !line.trim().is_empty() && !is_marker(line)
}

/// `NAME: hexdigits` at the start (a register dump line: `RSP: 0018:...`,
/// `FS:  0000...`, `x29: ffff...`, `x9 : ffff...`, `sp : ffff...`).
pub fn is_register_line(line: &str) -> bool {
    let Some((name, rest)) = line.split_once(':') else {
        return false;
    };
    let name = name.trim_end();
    !name.is_empty()
        && name.len() <= 8
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && rest.trim_start().len() >= 4
        && rest
            .trim_start()
            .bytes()
            .take(4)
            .all(|b| b.is_ascii_hexdigit())
}

/// Lines of a report outside its trace, besides register dumps.
const BODY_PREFIXES: &[&str] = &[
    "Modules linked in:",
    "CPU:",
    "PID:",
    // 3.x and older: `Pid: 0, comm: swapper Not tainted 3.5.0 #447`.
    "Pid: ",
    "Hardware name:",
    "Workqueue:",
    "RIP:",
    "EIP:",
    "Code:",
    "Oops:",
    "Internal error:",
    "invalid opcode:",
    "#PF:",
    "PGD ",
    "pc :",
    "lr :",
    // 32-bit ARM's symbols of pc and lr.
    "PC is at ",
    "LR is at ",
    "Mem abort info:",
    "Data abort info:",
    "user pgtable:",
    "irq event stamp:",
    "hardirqs last",
    "softirqs last",
    "Tainted:",
    "Stack:",
    "in_atomic():",
    "preempt_count:",
    "RCU nest depth:",
    "Preemption disabled at:",
    "task:",
    "Kernel Offset:",
    "---[ end",
];

/// Lines that may follow a finished trace and still belong to the report.
const TRAILER_PREFIXES: &[&str] = &[
    "Modules linked in:",
    "CR2:",
    "Kernel Offset:",
    "---[ end",
    "Dumping ftrace buffer:",
    "note:",
];

fn belongs(line: &str) -> bool {
    line.starts_with([' ', '\t', '['])
        || is_register_line(line)
        || BODY_PREFIXES.iter().any(|p| line.starts_with(p))
}

fn is_end_marker(line: &str) -> bool {
    line.contains("---[ end trace") || line.starts_with("---[ end Kernel panic")
}

impl Assembler {
    /// Whether a report is open (waiting for more lines).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one line logged at `usec` (kernel time); finished reports go
    /// to `out`.
    pub fn push(&mut self, usec: u64, line: &str, out: &mut Vec<Report>) {
        if let Some(open) = &self.open {
            if usec.saturating_sub(open.last_usec) > QUIET_GAP_USEC {
                self.finish(out);
            }
        }
        let Some(open) = self.open.as_mut() else {
            self.start(usec, line, out);
            return;
        };
        open.last_usec = usec;
        open.idle_ticks = 0;
        let pattern = &patterns::PATTERNS[open.pattern];
        if patterns::is_bert(pattern) {
            if line.contains("[Hardware Error]:") {
                open.lines.push((Kind::Other, line.to_owned()));
                self.cap(out);
            } else {
                self.finish(out);
                self.start(usec, line, out);
            }
            return;
        }
        if is_end_marker(line) {
            self.finish(out);
            return;
        }
        if let Some(next) = patterns::start_of(line).filter(|p| !p.only_when_idle) {
            // A warning's message line is followed by the WARNING that
            // carries its trace (`NETDEV WATCHDOG: ...` then `WARNING: CPU:
            // ...`): one report, under the first line. So is a stack
            // overflow's first line (`BUG: stack guard page was hit`)
            // followed by the double fault that reports it, and x86's
            // `PANIC: double fault` by its `double fault: 0000 [#1]`.
            let prelude = !open.in_trace && !open.trace_over && open.lines.len() <= 3;
            // Kernels before 4.15 print a WARN()'s `WARNING: CPU: ... at`
            // line first and its message after: a graver message right
            // after the carrier line makes the report its own, under the
            // message.
            let after_carrier = open.lines.len() == 1 && {
                let first = &open.lines[0].1;
                first.starts_with("WARNING: CPU: ") || first.starts_with("WARNING: at ")
            };
            if prelude && after_carrier && next.severity > pattern.severity {
                open.pattern = pattern_index(next);
                open.lines.insert(0, (Kind::Other, line.to_owned()));
                return;
            }
            // A graver start always opens its own report: an
            // oops right after a short warning (a one-line `NETDEV
            // WATCHDOG`) is not told under the warning's name.
            // The `WARNING:` line of a WARN() (`WARNING: CPU: N PID: N at
            // FILE:LINE`, 3.x `WARNING: at FILE:LINE`) that carries a
            // message's trace belongs to the message, whatever its report.
            let carrier = line.starts_with("WARNING: CPU: ") || line.starts_with("WARNING: at ");
            let absorbs = prelude
                && !line.starts_with("Kernel panic")
                && !std::ptr::eq(pattern, next)
                && next.severity <= pattern.severity
                && (pattern.severity < 4
                    || carrier
                    || (open.lines.len() == 1 && pattern.classification == next.classification));
            if !absorbs {
                self.finish(out);
                self.start(usec, line, out);
                return;
            }
            open.lines.push((Kind::Other, line.to_owned()));
            return;
        }
        if is_trace_start(line) {
            open.in_trace = true;
            open.trace_over = false;
            open.lines.push((Kind::Other, line.to_owned()));
        } else if open.in_trace {
            if is_frame(line) || is_marker(line) || is_arm32_frame(line) {
                open.lines.push((Kind::Trace, line.to_owned()));
            } else if is_register_line(line)
                || line.starts_with("RIP:")
                || line.starts_with("Code:")
            {
                // The registers of an interrupted context, inside the trace.
                open.lines.push((Kind::Other, line.to_owned()));
            } else {
                open.in_trace = false;
                open.trace_over = true;
                return self.after_trace(usec, line, out);
            }
        } else if open.trace_over {
            return self.after_trace(usec, line, out);
        } else if is_arm32_frame(line) {
            // 32-bit ARM's unwinder prints its frames with no header.
            open.in_trace = true;
            open.lines.push((Kind::Trace, line.to_owned()));
        } else if belongs(line) {
            open.stray = 0;
            open.lines.push((Kind::Other, line.to_owned()));
        } else {
            open.stray += 1;
            if open.stray >= MAX_STRAY {
                self.finish(out);
                return;
            }
        }
        self.cap(out);
    }

    fn after_trace(&mut self, usec: u64, line: &str, out: &mut Vec<Report>) {
        let open = self.open.as_mut().expect("open report");
        let modules_tail = line.starts_with(' ')
            && open
                .lines
                .last()
                .is_some_and(|(_, l)| l.starts_with("Modules linked in:") || l.starts_with(' '))
            && !line.contains("+0x");
        if TRAILER_PREFIXES.iter().any(|p| line.starts_with(p)) || modules_tail {
            open.lines.push((Kind::Other, line.to_owned()));
            self.cap(out);
        } else if is_trace_start(line) {
            open.in_trace = true;
            open.trace_over = false;
            open.lines.push((Kind::Other, line.to_owned()));
        } else {
            self.finish(out);
            self.start(usec, line, out);
        }
    }

    fn start(&mut self, usec: u64, line: &str, out: &mut Vec<Report>) {
        let Some(p) = patterns::start_of(line) else {
            return;
        };
        self.open = Some(Open {
            pattern: pattern_index(p),
            lines: vec![(Kind::Other, line.to_owned())],
            in_trace: false,
            trace_over: false,
            stray: 0,
            last_usec: usec,
            idle_ticks: 0,
        });
        if p.single_line {
            self.finish(out);
        }
    }

    fn cap(&mut self, out: &mut Vec<Report>) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.lines.len() >= MAX_LINES)
        {
            self.finish(out);
        }
    }

    /// Ends the open report, if any.
    pub fn finish(&mut self, out: &mut Vec<Report>) {
        if let Some(open) = self.open.take() {
            out.push(Report {
                pattern: &patterns::PATTERNS[open.pattern],
                lines: open.lines,
            });
        }
    }

    /// A timer tick: a report that saw no line since the previous tick is
    /// taken to be over (a log that went quiet after it).
    pub fn tick(&mut self, out: &mut Vec<Report>) {
        if let Some(open) = self.open.as_mut() {
            open.idle_ticks += 1;
            if open.idle_ticks >= 2 {
                self.finish(out);
            }
        }
    }

    /// The state as bytes, to keep between calls.
    pub fn encode(&self) -> Vec<u8> {
        let Some(o) = &self.open else {
            return Vec::new();
        };
        let mut s = format!(
            "{STATE_VERSION} {} {} {} {} {} {}\n",
            o.pattern, o.in_trace as u8, o.trace_over as u8, o.stray, o.last_usec, o.idle_ticks
        );
        for (kind, line) in &o.lines {
            s.push(if *kind == Kind::Trace { 'T' } else { 'O' });
            s.push_str(line);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// The state [`Self::encode`] made; anything else is an empty state
    /// (a damaged state loses at most the one open report).
    pub fn decode(bytes: &[u8]) -> Assembler {
        Self::try_decode(bytes).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<Assembler> {
        if bytes.is_empty() {
            return Some(Assembler::default());
        }
        let text = std::str::from_utf8(bytes).ok()?;
        // Split at the `\n` that `encode` wrote, and only there: a line's
        // own `\r` (a log read from a file can carry one) is part of it.
        let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
        let head: Vec<u64> = lines
            .next()?
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let [STATE_VERSION, pattern, in_trace, trace_over, stray, last_usec, idle_ticks] = head[..]
        else {
            return None;
        };
        if pattern as usize >= patterns::PATTERNS.len() {
            return None;
        }
        let kept = lines
            .map(|l| match l.split_at_checked(1)? {
                ("T", rest) => Some((Kind::Trace, rest.to_owned())),
                ("O", rest) => Some((Kind::Other, rest.to_owned())),
                _ => None,
            })
            .take(MAX_LINES)
            .collect::<Option<Vec<_>>>()?;
        // An open report holds at least the line that started it.
        if kept.is_empty() {
            return None;
        }
        Some(Assembler {
            open: Some(Open {
                pattern: pattern as usize,
                lines: kept,
                in_trace: in_trace == 1,
                trace_over: trace_over == 1,
                stray: stray as u32,
                last_usec,
                idle_ticks: idle_ticks as u32,
            }),
        })
    }
}

/// Removes what the kernel puts before a message in a dump (pstore) or a
/// `dmesg` copy: `<N>`, `[ seconds.micros]`, the caller id of kernels
/// built with `CONFIG_PRINTK_CALLER` (`[    C2]`, `[  T123]`) and one
/// space after them. Only bracket groups of those forms are removed, so
/// `[Hardware Error]:` stays.
pub fn strip_prefix(line: &str) -> &str {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix('<') {
        if let Some((level, r)) = r.split_once('>') {
            if !level.is_empty() && level.len() <= 3 && level.bytes().all(|b| b.is_ascii_digit()) {
                rest = r;
            }
        }
    }
    if let Some(r) = rest.strip_prefix('[') {
        if let Some((ts, r)) = r.split_once(']') {
            let t = ts.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                rest = r;
                if let Some((caller, r)) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
                    let c = caller.trim();
                    if c.len() >= 2
                        && (c.starts_with('C') || c.starts_with('T'))
                        && c[1..].bytes().all(|b| b.is_ascii_digit())
                    {
                        rest = r;
                    }
                }
                rest = rest.strip_prefix(' ').unwrap_or(rest);
            }
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARN: [&str; 7] = [
        "WARNING: CPU: 1 PID: 42 at drivers/foo/foo.c:99 foo_probe+0x1c/0x30 [foo]",
        "CPU: 1 PID: 42 Comm: insmod Not tainted 6.1.0 #1",
        "Call Trace:",
        " <TASK>",
        " do_one_initcall+0x4e/0x190",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ];

    fn feed(asm: &mut Assembler, lines: &[&str], out: &mut Vec<Report>) {
        for (i, l) in lines.iter().enumerate() {
            asm.push(1_000_000 + i as u64, l, out);
        }
    }

    /// Kernels before 4.15 print the `WARNING:` carrier line before its
    /// message (fixture 19's lines, which a 4.19-era kernel printed the
    /// other way round): one stack overflow report either way.
    #[test]
    fn a_graver_message_after_its_warning_line_takes_the_report_over() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        feed(
            &mut asm,
            &[
                "WARNING: CPU: 0 PID: 0 at arch/x86/kernel/irq_64.c:73 handle_irq+0x102/0x110",
                "do_IRQ(): swapper/0 has overflown the kernel stack (cur:ffffffffb5400000,sp:fffffe0000007c48,",
                "Call Trace:",
                " do_IRQ+0x49/0xe0",
            ],
            &mut out,
        );
        asm.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].pattern.classification,
            "org.clearlinux/kernel/stackoverflow"
        );
        assert!(out[0].lines[0].1.starts_with("do_IRQ(): swapper/0"));
        assert_eq!(out[0].lines.len(), 4);
    }

    /// 32-bit ARM from 5.x prints its frames indented and with no header
    /// (the lines of https://github.com/openwrt/openwrt/pull/13294, 6.1,
    /// after a `WARNING:` start): they are the report's trace.
    #[test]
    fn arm32_frames_without_a_header_are_a_trace() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        feed(
            &mut asm,
            &[
                "WARNING: CPU: 0 PID: 42 at net/wireless/sme.c:752 __cfg80211_connect_result+0x398/0x3e4 [cfg80211]",
                "CPU: 1 PID: 0 Comm: swapper/1 Tainted: G      D W          6.1.45 #0",
                "Hardware name: Generic DT based system",
                " unwind_backtrace from show_stack+0x10/0x14",
                " show_stack from dump_stack_lvl+0x40/0x4c",
                " dump_stack_lvl from do_handle_IPI+0xf0/0x124",
            ],
            &mut out,
        );
        asm.finish(&mut out);
        let kinds: Vec<Kind> = out[0].lines.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                Kind::Other,
                Kind::Other,
                Kind::Other,
                Kind::Trace,
                Kind::Trace,
                Kind::Trace
            ]
        );
    }

    /// A short warning without a trace (the NETDEV WATCHDOG line of
    /// tests/fixtures/kernel-log/10-netdev-watchdog-6x.txt, which a kernel
    /// prints alone once its WARN_ONCE has fired) and, within the quiet
    /// gap, an oops (the first lines of 04-null-deref-new.txt): two
    /// reports, each under its own name and severity.
    #[test]
    fn an_oops_right_after_a_short_warning_is_its_own_report() {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        feed(
            &mut asm,
            &[
                "NETDEV WATCHDOG: enp3s0 (r8169): transmit queue 0 timed out 9028 ms",
                "BUG: kernel NULL pointer dereference, address: 0000000000000000",
                "#PF: supervisor read access in kernel mode",
                "Oops: 0000 [#1] SMP PTI",
            ],
            &mut out,
        );
        asm.finish(&mut out);
        let got: Vec<(&str, u8, usize)> = out
            .iter()
            .map(|r| (r.pattern.classification, r.pattern.severity, r.lines.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("org.clearlinux/kernel/warning", 2, 1),
                ("org.clearlinux/kernel/bug", 4, 3)
            ]
        );
    }

    #[test]
    fn a_report_split_across_calls_is_the_report_read_in_one() {
        let mut whole = Vec::new();
        feed(&mut Assembler::default(), &WARN, &mut whole);
        for cut in 1..WARN.len() {
            let mut out = Vec::new();
            let mut a = Assembler::default();
            feed(&mut a, &WARN[..cut], &mut out);
            let mut b = Assembler::decode(&a.encode());
            assert_eq!(a, b, "cut at {cut}");
            feed(&mut b, &WARN[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 1);
        assert_eq!(
            whole[0]
                .lines
                .iter()
                .filter(|(k, _)| *k == Kind::Trace)
                .count(),
            3
        );
    }

    #[test]
    fn a_report_the_log_went_quiet_after_ends_at_the_second_tick() {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        feed(&mut a, &WARN[..5], &mut out);
        a.tick(&mut out);
        assert!(out.is_empty() && a.is_open());
        a.tick(&mut out);
        assert_eq!(out.len(), 1);
        assert!(!a.is_open());
    }

    #[test]
    fn reports_end_at_the_line_cap_at_strays_and_at_a_quiet_gap() {
        let mut out = Vec::new();
        let mut a = Assembler::default();
        a.push(0, "Call Trace:", &mut out);
        assert!(!a.is_open(), "a trace alone starts nothing");
        a.push(0, "BUG: soft lockup - CPU#0 stuck for 22s!", &mut out);
        for i in 0..MAX_LINES * 2 {
            a.push(
                i as u64,
                "RAX: 0000000000000000 RBX: 0000000000000001",
                &mut out,
            );
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines.len(), MAX_LINES);
        out.clear();
        a.push(0, "BUG: scheduling while atomic: x/1/0x2", &mut out);
        for _ in 0..MAX_STRAY {
            a.push(1, "usb 1-1: new high-speed USB device", &mut out);
        }
        assert_eq!(out.len(), 1, "{MAX_STRAY} unrelated lines in a row end it");
        assert_eq!(out[0].lines.len(), 1);
        out.clear();
        a.push(0, "BUG: scheduling while atomic: x/1/0x2", &mut out);
        a.push(
            QUIET_GAP_USEC + 1,
            "CPU: 0 PID: 1 Comm: x Not tainted 6.1.0 #1",
            &mut out,
        );
        assert_eq!(out.len(), 1, "a line after a quiet gap is not part of it");
        assert!(!a.is_open());
    }

    #[test]
    fn one_line_reports_and_bert_blocks() {
        let mut out = Vec::new();
        let mut a = Assembler::default();
        a.push(
            0,
            "ACPI Error: AE_NOT_FOUND, While resolving a named reference",
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(!a.is_open());
        a.push(0, "BERT: Error records from previous boot:", &mut out);
        a.push(0, "[Hardware Error]: event severity: fatal", &mut out);
        a.push(
            0,
            "BUG: unable to handle page fault for address: 0",
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].lines.len(), 2);
        assert!(
            a.is_open(),
            "the line that ended the BERT block starts its own report"
        );
    }

    #[test]
    fn the_netdev_watchdog_line_of_later_6x_kernels_is_a_warning() {
        // `netdev_crit(dev, "NETDEV WATCHDOG: CPU: %d: transmit queue %u
        // timed out %u ms\n", ...)`: the device comes first, no stack.
        let line = "r8169 0000:03:00.0 enp3s0: NETDEV WATCHDOG: CPU: 1: transmit queue 0 timed out 5812 ms";
        let mut out = Vec::new();
        let mut a = Assembler::default();
        a.push(0, line, &mut out);
        a.push(
            QUIET_GAP_USEC + 1,
            "r8169 0000:03:00.0 enp3s0: Link is Up",
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].pattern.classification,
            "org.clearlinux/kernel/warning"
        );
        assert_eq!(out[0].lines, vec![(Kind::Other, line.to_owned())]);
    }

    #[test]
    fn damaged_state_is_an_empty_state() {
        for bad in [
            &b"2 0 0 0 0 0 0\n"[..],
            b"1 9999 0 0 0 0 0\n",
            b"1 0 0\n",
            b"\xff",
            b"1 0 0 0 0 0 0\nXline\n",
            // An open report with no line (found by fuzzing: finishing it
            // panicked where its first line was read).
            b"1 0 0 0 0 0 0\n",
        ] {
            assert_eq!(Assembler::decode(bad), Assembler::default(), "{bad:?}");
        }
        let mut a = Assembler::decode(b"1 0 0 0 0 0 0\n");
        let mut out = Vec::new();
        a.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_line_ending_in_a_carriage_return_keeps_it_through_the_state() {
        // Found by fuzzing: the state's lines were split with `lines()`,
        // which also eats a `\r` before the `\n`, so the report depended on
        // where the batches were cut.
        let lines: Vec<String> = WARN.iter().map(|l| format!("{l}\r")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mut whole = Vec::new();
        feed(&mut Assembler::default(), &lines, &mut whole);
        let mut out = Vec::new();
        let mut a = Assembler::default();
        feed(&mut a, &lines[..2], &mut out);
        let mut b = Assembler::decode(&a.encode());
        assert_eq!(a, b);
        feed(&mut b, &lines[2..], &mut out);
        assert_eq!(out, whole);
    }

    #[test]
    fn prefixes_of_dumps_go_and_bracketed_words_stay() {
        assert_eq!(strip_prefix("<4>[  100.000100] text"), "text");
        assert_eq!(
            strip_prefix("<4>[  100.000100]  frame+0x1/0x2"),
            " frame+0x1/0x2"
        );
        assert_eq!(
            strip_prefix("[Hardware Error]: event"),
            "[Hardware Error]: event"
        );
        assert_eq!(strip_prefix("<12345>x"), "<12345>x");
        assert_eq!(
            strip_prefix("<4>[  105.480943][    C2] RSP: 0018"),
            "RSP: 0018"
        );
        assert_eq!(
            strip_prefix("<4>[  105.480943][  T412]  frame+0x1/0x2"),
            " frame+0x1/0x2"
        );
        assert_eq!(
            strip_prefix("<4>[  105.480943][Hardware Error]: x"),
            "[Hardware Error]: x"
        );
    }
}
