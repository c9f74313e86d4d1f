//! What starts a kernel report, and what it is. Every start the legacy
//! oops parser knew (in its order: the first match wins), with its
//! classification and severity, and the forms of today's kernels it
//! missed, classified as their older forms.

/// How a start line is recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The line starts with this.
    Prefix(&'static str),
    /// The line contains this anywhere.
    Contains(&'static str),
    /// The line starts with the first and contains the second.
    Both(&'static str, &'static str),
}

/// One kind of report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// How its first line looks.
    pub start: Match,
    /// The record's classification.
    pub classification: &'static str,
    /// The record's severity.
    pub severity: u8,
    /// Whether the report is this one line only.
    pub single_line: bool,
    /// Whether the legacy parser knew it.
    pub legacy: bool,
    /// Whether it starts a report only when none is open (arm64's
    /// `Internal error: Oops: ...` line follows `Unable to handle kernel
    /// ...` inside one report, and heads one of its own otherwise).
    pub only_when_idle: bool,
}

const WARNING: &str = "org.clearlinux/kernel/warning";
const BUG: &str = "org.clearlinux/kernel/bug";
const STACKOVERFLOW: &str = "org.clearlinux/kernel/stackoverflow";
const PANIC: &str = "org.clearlinux/kernel/panic";
const BERT: &str = "org.clearlinux/bert/debug";

const fn p(start: Match, classification: &'static str, severity: u8, legacy: bool) -> Pattern {
    Pattern {
        start,
        classification,
        severity,
        single_line: false,
        legacy,
        only_when_idle: false,
    }
}

use Match::{Both, Contains, Prefix};

/// The starts, in the order they are tried. The ones the legacy parser
/// missed come before the legacy ones they would otherwise fall under.
pub static PATTERNS: &[Pattern] = &[
    // 6.x prints the device first: `r8169 0000:03:00.0 enp3s0: NETDEV
    // WATCHDOG: CPU: 1: transmit queue 0 timed out 5812 ms`.
    p(Contains("NETDEV WATCHDOG: "), WARNING, 2, true),
    p(Prefix("sysctl table check failed: "), WARNING, 2, true),
    p(
        Prefix("IRQ handler type mismatch for IRQ"),
        WARNING,
        2,
        true,
    ),
    // The legacy `^ALSA (.*): BUG(.*)` and `irq N: nobody cared` carried
    // the unprefixed classifications `crash/kernel/bug` and
    // `crash/kernel/warning`; they are given the kernel ones here.
    p(Both("ALSA ", ": BUG"), BUG, 2, true),
    p(Both("irq ", ": nobody cared"), WARNING, 2, true),
    p(Prefix("WARNING: "), WARNING, 2, true),
    // Stack overflows of today's kernels (`BUG: stack guard page was hit`,
    // `kernel stack overflow (double-fault)`), before `BUG:`.
    p(
        Prefix("BUG: stack guard page was hit"),
        STACKOVERFLOW,
        4,
        false,
    ),
    p(Prefix("kernel stack overflow"), STACKOVERFLOW, 4, false),
    p(Prefix("general protection fault"), BUG, 4, true),
    p(Prefix("Oops: general protection fault"), BUG, 4, false),
    p(Prefix("BUG: unable to handle kernel "), BUG, 4, true),
    p(Prefix("BUG:"), BUG, 4, true),
    // `watchdog: BUG: soft lockup - CPU#1 stuck for 143s!`
    p(Prefix("watchdog: BUG:"), BUG, 4, false),
    p(Prefix("kernel BUG at"), BUG, 4, true),
    // arm64 and other architectures: `Unable to handle kernel NULL pointer
    // dereference at virtual address ...`.
    p(Prefix("Unable to handle kernel "), BUG, 4, false),
    // arm64 and others: `Internal error: undefined instruction: 0 [#1]`
    // (a BUG() or an undefined instruction).
    Pattern {
        start: Prefix("Internal error: "),
        classification: BUG,
        severity: 4,
        single_line: false,
        legacy: false,
        only_when_idle: true,
    },
    p(Prefix("do_IRQ: stack overflow:"), STACKOVERFLOW, 4, true),
    // x86-64's wording, a WARN_ONCE message printed before the `WARNING:`
    // line that carries its trace: `do_IRQ(): swapper/0 has overflown the
    // kernel stack (cur:...,sp:...,irq stk top-bottom:...)`.
    p(
        Both("do_IRQ(): ", "has overflown the kernel stack"),
        STACKOVERFLOW,
        4,
        false,
    ),
    p(Prefix("RTNL: assertion failed"), WARNING, 2, true),
    p(
        Prefix("Eeek! page_mapcount(page) went negative!"),
        BUG,
        4,
        true,
    ),
    p(Prefix("near stack overflow (cur:"), BUG, 4, true),
    p(Prefix("double fault"), BUG, 4, true),
    // x86's double fault handler: `traps: PANIC: double fault,
    // error_code: 0x0` (the `traps: ` prefix is its pr_fmt), then
    // `double fault: 0000 [#1] ...` (`Oops: double fault: ...` from 6.10).
    p(Contains("PANIC: double fault"), BUG, 4, false),
    p(Prefix("Badness"), BUG, 4, true),
    p(Prefix("list_del corruption."), WARNING, 2, true),
    p(Prefix("list_add corruption."), WARNING, 2, true),
    Pattern {
        start: Prefix("ACPI Error:"),
        classification: WARNING,
        severity: 2,
        single_line: true,
        legacy: true,
        only_when_idle: false,
    },
    p(Prefix("Kernel panic - not syncing:"), PANIC, 4, true),
    p(
        Prefix("BERT: Error records from previous boot:"),
        BERT,
        2,
        true,
    ),
];

/// The kind of report `line` starts, if any.
pub fn start_of(line: &str) -> Option<&'static Pattern> {
    PATTERNS.iter().find(|p| match p.start {
        Prefix(s) => line.starts_with(s),
        Contains(s) => line.contains(s),
        Both(a, b) => line.starts_with(a) && line[a.len()..].contains(b),
    })
}

/// Whether a report of this pattern is a BERT report.
pub fn is_bert(p: &Pattern) -> bool {
    p.classification == BERT
}
