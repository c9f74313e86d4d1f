//! The record of a report, in the legacy klogscanner's payload layout:
//!
//! ```text
//! Crash Report:
//! Reason: <the report's first line>
//! Kernel Version : <version>        (when a CPU/PID line names it)
//! Tainted : <taint flags>           (idem)
//! Signature : <sym1:|line1:...>     (see `crate::signature`)
//! Modules : <modules>               (when `Modules linked in:` lists any)
//! Backtrace :                       (when the trace has frames)
//! Register <NAME>: Zero|Non-zero    (RIP, pc, lr: the symbol)
//! #<N> <function> - [<module>]
//! ```
//!
//! BERT reports carry their `[Hardware Error]:` lines as they are. The
//! payload stays within the record limit (8192 bytes): frames that do not
//! fit are left out, whole.

use crate::assemble::{is_arm32_frame, is_frame, is_register_line, Kind, Report};

/// Most payload bytes of a record.
pub const MAX_PAYLOAD: usize = 8192;

/// Registers whose value is shown as zero or not (never the value: it may
/// hold an address or data).
const REGISTERS: &[&str] = &[
    "RSP", "EFLAGS", "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R08", "R09", "R10", "R11",
    "R12", "R13", "R14", "R15", "FS", "GS", "knlGS", "CS", "DS", "ES", "CR0", "CR2", "CR3", "CR4",
    "DR0", "DR1", "DR2", "DR3", "DR6", "DR7", "PKRU", "sp", "pstate",
];

/// The kernel version and taint of a `CPU: ... Comm: x Tainted: G W 6.6.0 #1`
/// line (or `... Not tainted 6.6.0 #1 ...`).
pub fn version_and_taint(line: &str) -> (Option<String>, Option<String>) {
    // The version is the word before ` #<digit>`, to the end of the line.
    let hash = line
        .match_indices(" #")
        .find(|(i, _)| line[i + 2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|(i, _)| i);
    let version_start = hash.and_then(|h| {
        line[..h]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, c)| i + c.len_utf8())
    });
    let version = version_start.map(|s| line[s..].trim_end().to_owned());
    let end = version_start.unwrap_or(line.len());
    let taint = if line[..end].contains(" Not tainted") || line[..end].ends_with("Not tainted ") {
        Some("Not tainted".to_owned())
    } else {
        line[..end]
            .find("Tainted: ")
            .map(|i| line[i + "Tainted: ".len()..end].trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    (version, taint)
}

/// `#N function - [module]` of one trace line, if it is a frame.
pub fn frame(line: &str) -> Option<(String, String)> {
    if line.starts_with("[<") && is_arm32_frame(line) {
        return arm32_frame(line);
    }
    if is_arm32_frame(line) {
        // ` func [mod] from caller+0x104/0x160 [mod]`: the frame is the
        // callee, with its own module (the line ends with the caller's).
        let callee = line.trim_start().split_once(" from ")?.0;
        let (func, module) = callee.split_once(' ').unwrap_or((callee, "[kernel]"));
        let module = module.trim_start_matches('[').trim_end_matches(']');
        return Some((func.to_owned(), module.to_owned()));
    }
    if !is_frame(line) {
        return None;
    }
    let mut t = line.trim();
    // 32-bit ARM prints the registers of each frame between frames
    // (` r6:bf062134 r5:00000009 ...`): no frame.
    if t.split_whitespace()
        .next()
        .and_then(|w| w.split_once(':'))
        .is_some_and(|(name, _)| name.len() <= 3 && name.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    // Older kernels print a context marker before the first frame of a
    // context, on its line: ` <IRQ>  [<ffffffff81641dc0>] dump_stack+...`.
    if let Some((first, rest)) = t.split_once(char::is_whitespace) {
        if first.starts_with('<') && crate::assemble::is_marker(first) {
            t = rest.trim_start();
        }
    }
    let unreliable = t.starts_with("? ");
    if unreliable {
        t = t[2..].trim_start();
    }
    // Old kernels: ` [<ffffffff81234567>] func+0x1/0x2`.
    if t.starts_with("[<") {
        t = t.split_once(char::is_whitespace)?.1.trim_start();
        if let Some(rest) = t.strip_prefix("? ") {
            t = rest;
        }
    }
    let func_end = t.find(['+', ' ', '\t']).unwrap_or(t.len());
    let func = &t[..func_end];
    if func.is_empty() || func.starts_with('<') {
        return None;
    }
    let module = t
        .rsplit_once('[')
        .map(|(_, m)| m.trim_end().trim_end_matches(']'))
        .filter(|m| {
            t.trim_end().ends_with(']')
                && !m.is_empty()
                && *m != "inline"
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .unwrap_or("kernel");
    let func = if unreliable {
        format!("? {func}")
    } else {
        func.to_owned()
    };
    Some((func, module.to_owned()))
}

/// A register's symbol (`func+0x1b5/0x3fb`) as it is; a value the kernel
/// could not name (`0xb6f1c3a0`, a user address) only as zero or not.
fn symbol_or_class(sym: &str) -> String {
    let named = sym.contains('+') && !sym.starts_with("0x")
        || sym
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
    if named {
        sym.to_owned()
    } else {
        zero_or_not(sym.trim_start_matches("0x"))
    }
}

/// `[<pc>] (func+off/size [module]) from [<lr>] (caller+...)`: the frame
/// is the first function; its caller is the next line's.
fn arm32_frame(line: &str) -> Option<(String, String)> {
    let inner = line.split_once(">] (")?.1;
    let inner = &inner[..inner.find(") from [<")?];
    let end = inner.find(['+', ' ']).unwrap_or(inner.len());
    let func = &inner[..end];
    if func.is_empty() {
        return None;
    }
    let module = inner
        .rsplit_once(" [")
        .map(|(_, m)| m.trim_end_matches(']'))
        .filter(|m| {
            !m.is_empty()
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .unwrap_or("kernel");
    Some((func.to_owned(), module.to_owned()))
}

/// The registers of one dump line, as `(name, shown value)`.
fn registers(line: &str, out: &mut Vec<(String, String)>) {
    // 32-bit ARM: `PC is at seq_vprintf+0x18/0x64`, `LR is at ...`; its
    // `pc : [<c01f3218>]    lr : [<c01f32a0>]` line then adds nothing.
    for (prefix, name) in [("PC is at ", "PC"), ("LR is at ", "LR")] {
        if let Some(sym) = line.strip_prefix(prefix) {
            out.push((
                name.to_owned(),
                symbol_or_class(sym.split_whitespace().next().unwrap_or("")),
            ));
            return;
        }
    }
    if (line.starts_with("pc :") || line.starts_with("lr :"))
        && line[4..].trim_start().starts_with("[<")
    {
        return;
    }
    for sym in ["RIP:", "pc :", "lr :"] {
        if let Some(rest) = line.strip_prefix(sym) {
            // `RIP: 0010:func+0x1b5/0x3fb`, `pc : func+0x2a0/0x2e4 file:line`
            let rest = rest.trim_start();
            let rest = rest
                .split_once(':')
                .filter(|(seg, _)| seg.len() == 4 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
                .map_or(rest, |(_, r)| r);
            // 3.x: `RIP: 0010:[<ffffffff836a5774>]  [<ffffffff836a5774>] func+0x9b/0x155`:
            // the symbol follows the addresses.
            let sym_text = rest
                .split_whitespace()
                .find(|w| !w.starts_with("[<"))
                .filter(|_| rest.starts_with("[<"))
                .or_else(|| rest.split_whitespace().next())
                .unwrap_or("");
            let name = sym.trim_end_matches(':').trim().to_owned();
            out.push((name.to_uppercase(), symbol_or_class(sym_text)));
            return;
        }
    }
    // `NAME: value` pairs, `RSP: 0018:ffff...` (segment:offset: the offset),
    // `FS:  0000...(0000)`, `x9 : ffff...`.
    let mut rest = line;
    while let Some((name, after)) = rest.split_once(':') {
        let name = name.trim();
        let after = after.trim_start();
        let value_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let mut value = &after[..value_end];
        if let Some((_, off)) = value.split_once(':') {
            value = off;
        }
        let value = value.split('(').next().unwrap_or("");
        let known = REGISTERS.contains(&name)
            || (name.starts_with('x')
                && name.len() <= 3
                && name[1..].bytes().all(|b| b.is_ascii_digit()));
        if !known || value.is_empty() || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return;
        }
        out.push((name.to_owned(), zero_or_not(value)));
        rest = &after[value_end..];
    }
}

fn zero_or_not(hex: &str) -> String {
    if hex.bytes().all(|b| b == b'0') {
        "Zero".into()
    } else {
        "Non-zero".into()
    }
}

/// What a report's lines say, read once for its payload and signature.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Kernel version, from the first CPU/PID line.
    pub version: Option<String>,
    /// Taint flags, from the same line.
    pub taint: Option<String>,
    /// `Modules linked in:`, continuation lines joined.
    pub modules: Option<String>,
    /// Registers as `(name, shown value)`, each once.
    pub regs: Vec<(String, String)>,
    /// Frames as `(function, module)`; unreliable ones start with `? `.
    pub frames: Vec<(String, String)>,
}

/// Reads a report's lines (BERT reports have nothing of this).
pub fn parse(report: &Report) -> Parsed {
    let mut p = Parsed::default();
    if crate::patterns::is_bert(report.pattern) {
        return p;
    }
    let mut in_modules = false;
    for (kind, l) in &report.lines[1..] {
        if *kind == Kind::Trace {
            in_modules = false;
            p.frames.extend(frame(l));
            continue;
        }
        if let Some(m) = l.strip_prefix("Modules linked in:") {
            if p.modules.is_none() {
                p.modules = Some(m.trim().to_owned());
                in_modules = true;
            }
            continue;
        }
        if in_modules && l.starts_with(' ') {
            let m = p.modules.get_or_insert_with(String::new);
            m.push(' ');
            m.push_str(l.trim());
            continue;
        }
        in_modules = false;
        if (l.starts_with("CPU: ") || l.starts_with("PID: ") || l.starts_with("Pid: "))
            && p.version.is_none()
        {
            (p.version, p.taint) = version_and_taint(l);
        } else if l.starts_with("RIP:")
            || l.starts_with("PC is at ")
            || l.starts_with("LR is at ")
            || l.starts_with("pc :")
            || l.starts_with("lr :")
            || is_register_line(l)
        {
            let mut found = Vec::new();
            registers(l, &mut found);
            for (name, v) in found {
                if !p.regs.iter().any(|(n, _)| *n == name) {
                    p.regs.push((name, v));
                }
            }
        }
    }
    p
}

/// The payload of a report.
pub fn payload(report: &Report) -> String {
    let mut out = String::from("Crash Report:\n");
    push_line(&mut out, &format!("Reason: {}", report.lines[0].1));
    let signature = crate::signature::signature(report);
    if crate::patterns::is_bert(report.pattern) {
        push_line(&mut out, &format!("Signature : {signature}"));
        for (_, l) in &report.lines[1..] {
            push_line(&mut out, l);
        }
        return out;
    }
    let p = parse(report);
    if let Some(v) = p.version {
        push_line(&mut out, &format!("Kernel Version : {v}"));
    }
    if let Some(t) = p.taint {
        push_line(&mut out, &format!("Tainted : {t}"));
    }
    // Before the modules: a long module list is cut, the signature never.
    push_line(&mut out, &format!("Signature : {signature}"));
    if let Some(m) = p.modules.filter(|m| !m.is_empty()) {
        push_line(&mut out, &format!("Modules : {m}"));
    }
    if !p.frames.is_empty() {
        push_line(&mut out, "Backtrace :");
    }
    for (name, v) in p.regs {
        push_line(&mut out, &format!("Register {name}: {v}"));
    }
    for (i, (func, module)) in p.frames.iter().enumerate() {
        push_line(&mut out, &format!("#{} {func} - [{module}]", i + 1));
    }
    out
}

/// Appends `line` and a newline if it fits in [`MAX_PAYLOAD`]; a line
/// that does not fit is left out whole (a long `Modules` line is cut).
fn push_line(out: &mut String, line: &str) {
    // The record format takes printable ASCII only: anything else (a
    // non-ASCII hostname, a replaced byte) becomes `?`.
    let line: String = line
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let line = line.as_str();
    let room = MAX_PAYLOAD.saturating_sub(out.len() + 1);
    if line.len() <= room {
        out.push_str(line);
        out.push('\n');
    } else if line.starts_with("Modules : ") && room > 16 {
        let mut cut = room;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::Assembler;

    fn report(lines: &[&str]) -> Report {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        for l in lines {
            a.push(0, l, &mut out);
        }
        a.finish(&mut out);
        out.remove(0)
    }

    #[test]
    fn versions_and_taints_of_each_kernel_generation() {
        let cases = [
            ("CPU: 1 PID: 42 Comm: insmod Tainted: G           O    4.14.0-clear #1", "4.14.0-clear #1", "G           O"),
            ("CPU: 3 PID: 1 Comm: swapper/0 Not tainted 6.6.31-o4 #1", "6.6.31-o4 #1", "Not tainted"),
            ("CPU: 2 PID: 0 Comm: swapper/2 Not tainted 6.4.0-1-amd64 #1  Debian 6.4.4-2", "6.4.0-1-amd64 #1  Debian 6.4.4-2", "Not tainted"),
            ("CPU: 0 UID: 0 PID: 1 Comm: init Tainted: G        W          6.14.0 #1 PREEMPT(voluptuous)", "6.14.0 #1 PREEMPT(voluptuous)", "G        W"),
        ];
        for (line, v, t) in cases {
            assert_eq!(
                version_and_taint(line),
                (Some(v.into()), Some(t.into())),
                "{line}"
            );
        }
        assert_eq!(version_and_taint("CPU: 0 PID: 1 Comm: x"), (None, None));
        // Whitespace of more than one byte (a process name is any bytes).
        assert_eq!(
            version_and_taint("CPU: 0 PID: 1 Comm: a\u{3000}6.1.0 #1"),
            (Some("6.1.0 #1".into()), None)
        );
    }

    #[test]
    fn a_register_the_kernel_could_not_name_shows_no_value() {
        // `%pS` of an address it cannot name prints the address (a user
        // PC on 32-bit ARM): only whether it is zero is shown.
        let mut out = Vec::new();
        registers("PC is at 0xb6f1c3a0", &mut out);
        registers("LR is at seq_printf+0x3c/0x5c", &mut out);
        registers("RIP: 0010:0x0", &mut out);
        assert_eq!(
            out,
            [
                ("PC".to_owned(), "Non-zero".to_owned()),
                ("LR".to_owned(), "seq_printf+0x3c/0x5c".to_owned()),
                ("RIP".to_owned(), "Zero".to_owned())
            ]
        );
    }

    #[test]
    fn frames_of_every_form() {
        assert_eq!(
            frame(" do_one_initcall+0x4e/0x190"),
            Some(("do_one_initcall".into(), "kernel".into()))
        );
        assert_eq!(
            frame(" ? foo_probe+0x1c/0x30 [foo]"),
            Some(("? foo_probe".into(), "foo".into()))
        );
        assert_eq!(
            frame(" [<ffffffff810a1234>] warn_slowpath+0x12/0x34"),
            Some(("warn_slowpath".into(), "kernel".into()))
        );
        assert_eq!(
            frame(" spin_lock include/linux/spinlock.h:351 [inline]"),
            Some(("spin_lock".into(), "kernel".into()))
        );
        assert_eq!(frame(" <TASK>"), None);
        // 32-bit ARM, up to 5.x (https://github.com/lwfinger/rtl8192du/issues/33,
        // https://github.com/raspberrypi/linux/issues/2794 and
        // https://github.com/raspberrypi/linux/issues/3318): the frame is the
        // first function, with its module; the registers between frames
        // are no frame.
        assert_eq!(
            frame(
                "[<c0011da8>] (dump_backtrace+0x0/0x10c) from [<c0011fbc>] (show_stack+0x18/0x1c)"
            ),
            Some(("dump_backtrace".into(), "kernel".into()))
        );
        assert_eq!(
            frame("[<8010ff30>] (unwind_backtrace) from [<8010c174>] (show_stack+0x20/0x24)"),
            Some(("unwind_backtrace".into(), "kernel".into()))
        );
        assert_eq!(
            frame("[<bf3cbef4>] (__cfg80211_connect_result [cfg80211]) from [<bf397f60>] (cfg80211_process_wdev_events+0x104/0x160 [cfg80211])"),
            Some(("__cfg80211_connect_result".into(), "cfg80211".into()))
        );
        assert_eq!(
            frame(" r6:bf062134 r5:00000009 r4:00000000 r3:00000000"),
            None
        );
        // From 5.x, indented (https://github.com/openwrt/openwrt/pull/13294).
        assert_eq!(
            frame(" unwind_backtrace from show_stack+0x10/0x14"),
            Some(("unwind_backtrace".into(), "kernel".into()))
        );
        // A module's function (`%ps` gives `func [mod]`): its own module,
        // not the caller's.
        assert_eq!(
            frame(" __cfg80211_connect_result [cfg80211] from cfg80211_process_wdev_events+0x104/0x160 [cfg80211]"),
            Some(("__cfg80211_connect_result".into(), "cfg80211".into()))
        );
        assert_eq!(
            frame(" brcmf_cfg80211_escan [brcmfmac] from brcmf_run_escan+0x2c/0x30"),
            Some(("brcmf_cfg80211_escan".into(), "brcmfmac".into()))
        );
        // A 4.x trace's context marker before its first frame
        // (https://github.com/IRATI/stack/issues/106, 3.x; the issue's
        // own example is 4.x's `dump_stack` line).
        assert_eq!(
            frame(" <IRQ>  [<ffffffff81641dc0>] dump_stack+0x55/0x86"),
            Some(("dump_stack".into(), "kernel".into()))
        );
        assert_eq!(
            frame(" <EOI>  [<ffffffff8106b980>] ? __hrtimer_start_range_ns+0x1c0/0x400"),
            Some(("__hrtimer_start_range_ns".into(), "kernel".into()))
        );
        assert_eq!(frame("not indented+0x1/0x2"), None);
    }

    #[test]
    fn the_payload_stays_printable_and_within_the_record_limit() {
        let mut lines = vec![
            "WARNING: CPU: 0 PID: 1 at f.c:1 f+0x1/0x2 — naïve".to_owned(),
            "Call Trace:".to_owned(),
        ];
        lines.extend((0..150).map(|i| {
            format!(
                " a_rather_long_function_name_number_{i:04}_of_the_trace+0x10/0x20 [some_module]"
            )
        }));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let p = payload(&report(&refs));
        assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
        assert!(p.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
        assert!(
            p.contains("Reason: WARNING: CPU: 0 PID: 1 at f.c:1 f+0x1/0x2 ? na?ve\n"),
            "{p}"
        );
        assert!(p.ends_with(" - [some_module]\n"), "whole frames only");
    }
}
