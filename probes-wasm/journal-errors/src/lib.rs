//! The logic of the journal-errors probe (the legacy journalprobe), as a
//! plain library for `wasm32-wasip2` and native tests.
//!
//! The legacy probe followed the journal of the current boot for entries
//! with `EXIT_CODE=exited` (a service's main process exited with an
//! error; here also `_PID=1`, which journald sets: only systemd's own
//! messages, since any process can write `EXIT_CODE`) and, only with the privacy filters off, `PRIORITY=0..3`, and
//! sent each one's `MESSAGE` as an `org.clearlinux/journal/error` record
//! of severity 2. This one does the same (the host applies the matches,
//! the privacy gate and the boot) and adds what it lacked: the unit's name
//! in the payload, and floods: a unit's messages past the first
//! [`PER_UNIT`] within [`WINDOW_USEC`] are counted, and the count goes out
//! in one record when the window is over, so a crash-looping service
//! cannot use up the probe's hourly budget.
#![warn(missing_docs)]

#[cfg(target_family = "wasm")]
mod probe;

/// The legacy classification.
pub const CLASSIFICATION: &str = "org.clearlinux/journal/error";
/// The legacy severity.
pub const SEVERITY: u8 = 2;
/// Messages of one unit sent one by one within a window.
pub const PER_UNIT: u64 = 3;
/// The window, in journal time (µs).
pub const WINDOW_USEC: u64 = 600_000_000;
/// Most units whose windows are tracked; the oldest is reported and
/// forgotten first.
pub const MAX_UNITS: usize = 256;
/// Longest payload.
pub const MAX_PAYLOAD: usize = 8192;

/// A record to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Its payload.
    pub payload: String,
}

/// One unit's window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The unit.
    pub unit: String,
    /// When the window opened (journal time, µs).
    pub since: u64,
    /// Messages seen in it.
    pub seen: u64,
}

/// The windows of the units seen lately.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floods {
    /// Oldest first.
    pub windows: Vec<Window>,
}

/// The entry's unit: `UNIT` when systemd (`_PID=1`) logged it about a
/// unit; else `_SYSTEMD_UNIT` (the unit that logged, which journald sets,
/// not the sender); else `SYSLOG_IDENTIFIER`. Any process can set `UNIT`:
/// it is trusted from systemd only, so no one can spread a flood over
/// made-up units or report under another's name.
pub fn unit_of(fields: &[(String, String)]) -> String {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    let from_systemd = get("_PID").as_deref() == Some("1");
    from_systemd
        .then(|| get("UNIT"))
        .flatten()
        .or_else(|| get("_SYSTEMD_UNIT"))
        .or_else(|| get("SYSLOG_IDENTIFIER"))
        .unwrap_or_else(|| "unknown".into())
}

/// Printable ASCII (and newlines), at most `cap` bytes: what a payload may
/// hold.
fn printable(s: &str, cap: usize) -> String {
    s.chars()
        .map(|c| {
            if c == '\n' || c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(cap)
        .collect()
}

/// The payload of one message: the legacy payload (its `MESSAGE`), then
/// the unit.
pub fn payload(message: &str, unit: &str) -> String {
    let unit_line = format!("\nUnit: {}\n", printable(unit, 256));
    let room = MAX_PAYLOAD - unit_line.len();
    format!("{}{unit_line}", printable(message, room))
}

fn summary(w: &Window) -> Outgoing {
    Outgoing {
        payload: format!(
            "{} more message(s) within {} s of the first\nUnit: {}\n",
            w.seen - PER_UNIT,
            WINDOW_USEC / 1_000_000,
            printable(&w.unit, 256)
        ),
    }
}

impl Floods {
    /// Takes one entry at journal time `now`: the records it gives (its
    /// own, unless its unit is over [`PER_UNIT`] in its window; and the
    /// counts of windows it closes).
    pub fn entry(&mut self, fields: &[(String, String)], now: u64, out: &mut Vec<Outgoing>) {
        self.expire(now, out);
        let unit = unit_of(fields);
        let message = fields
            .iter()
            .find(|(f, _)| f == "MESSAGE")
            .map_or("", |(_, v)| v.as_str());
        let w = match self.windows.iter_mut().find(|w| w.unit == unit) {
            Some(w) => w,
            None => {
                if self.windows.len() >= MAX_UNITS {
                    let oldest = self.windows.remove(0);
                    if oldest.seen > PER_UNIT {
                        out.push(summary(&oldest));
                    }
                }
                self.windows.push(Window {
                    unit: unit.clone(),
                    since: now,
                    seen: 0,
                });
                self.windows.last_mut().expect("just pushed")
            }
        };
        w.seen += 1;
        if w.seen <= PER_UNIT {
            out.push(Outgoing {
                payload: payload(message, &unit),
            });
        }
    }

    /// Closes the windows over at `now` (journal time): a count for each
    /// that went past [`PER_UNIT`].
    pub fn expire(&mut self, now: u64, out: &mut Vec<Outgoing>) {
        let (over, open): (Vec<Window>, Vec<Window>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| now.saturating_sub(w.since) >= WINDOW_USEC);
        self.windows = open;
        out.extend(over.iter().filter(|w| w.seen > PER_UNIT).map(summary));
    }

    /// As bytes, to keep between calls.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        for w in &self.windows {
            s.push_str(&format!(
                "{}\t{}\t{}\n",
                w.since,
                w.seen,
                w.unit.replace(['\t', '\n'], " ")
            ));
        }
        s.into_bytes()
    }

    /// What [`Self::encode`] made; damaged lines are dropped.
    pub fn decode(bytes: &[u8]) -> Floods {
        let text = String::from_utf8_lossy(bytes);
        let windows = text
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                Some(Window {
                    since: f.next()?.parse().ok()?,
                    seen: f.next()?.parse().ok()?,
                    unit: f.next()?.to_owned(),
                })
            })
            .take(MAX_UNITS)
            .collect();
        Floods { windows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(unit: &str, msg: &str) -> Vec<(String, String)> {
        vec![
            ("MESSAGE".into(), msg.into()),
            ("UNIT".into(), unit.into()),
            ("_PID".into(), "1".into()),
        ]
    }

    #[test]
    fn a_flood_of_one_unit_is_a_few_records_and_a_count() {
        let mut f = Floods::default();
        let mut out = Vec::new();
        for i in 0..10_000u64 {
            f.entry(
                &e(
                    "loop.service",
                    "loop.service: Main process exited, code=exited, status=1/FAILURE",
                ),
                i * 1000,
                &mut out,
            );
        }
        f.entry(
            &e("other.service", "other.service: failed"),
            20_000_000,
            &mut out,
        );
        assert_eq!(out.len(), 4, "{out:?}");
        f.expire(WINDOW_USEC + 1, &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(
            out[4].payload,
            "9997 more message(s) within 600 s of the first\nUnit: loop.service\n"
        );
        assert_eq!(
            out[3].payload,
            "other.service: failed\nUnit: other.service\n"
        );
        // Encoded and read back between calls.
        assert_eq!(Floods::decode(&f.encode()), f);
    }

    #[test]
    fn payloads_are_printable_and_bounded() {
        let p = payload(&"\u{1}x".repeat(10_000), "a\tunit");
        assert!(p.len() <= MAX_PAYLOAD);
        assert!(p.ends_with("\nUnit: a?unit\n"));
        assert!(p.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
        assert_eq!(unit_of(&[("_SYSTEMD_UNIT".into(), "u".into())]), "u");
        // `UNIT` from anyone but systemd is not believed.
        let forged = [
            ("UNIT".to_owned(), "sshd.service".to_owned()),
            ("_PID".to_owned(), "4242".to_owned()),
            ("_SYSTEMD_UNIT".to_owned(), "user@1000.service".to_owned()),
        ];
        assert_eq!(unit_of(&forged), "user@1000.service");
        assert_eq!(unit_of(&[]), "unknown");
    }
}
