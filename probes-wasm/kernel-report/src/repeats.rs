//! Repeats: a report whose classification and signature (see
//! [`crate::signature`]) match one sent within the last [`WINDOW_SECS`] is
//! counted, not sent; the
//! count goes out in one record once the window is over. A warning that
//! fires on every packet thus costs one record an hour, not the probe's
//! whole hourly budget.

/// How long a report's repeats are counted before they are reported.
pub const WINDOW_SECS: u64 = 3600;
/// Most reports whose repeats are tracked; the oldest is forgotten first.
pub const MAX_TRACKED: usize = 256;

/// One report sent, and how often it came again since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// When it was sent (seconds since the epoch).
    pub since: u64,
    /// Repeats since.
    pub count: u64,
    /// Its classification.
    pub classification: String,
    /// Its signature.
    pub signature: String,
    /// Its first line.
    pub reason: String,
}

/// Reports sent within the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repeats {
    /// Oldest first.
    pub seen: Vec<Seen>,
}

impl Repeats {
    /// Whether this report repeats one sent within the window (then it is
    /// counted); if not, it is remembered as sent now.
    pub fn count(&mut self, classification: &str, signature: &str, reason: &str, now: u64) -> bool {
        if let Some(s) = self.seen.iter_mut().find(|s| {
            s.classification == classification
                && s.signature == signature
                && now.saturating_sub(s.since) < WINDOW_SECS
        }) {
            s.count += 1;
            return true;
        }
        if self.seen.len() >= MAX_TRACKED {
            self.seen.remove(0);
        }
        self.seen.push(Seen {
            since: now,
            count: 0,
            classification: classification.to_owned(),
            signature: signature.to_owned(),
            reason: reason.to_owned(),
        });
        false
    }

    /// Ends the windows that are over at `now`: the reports that came
    /// again, with their counts (the rest are forgotten).
    pub fn expire(&mut self, now: u64) -> Vec<Seen> {
        let (over, open): (Vec<Seen>, Vec<Seen>) = std::mem::take(&mut self.seen)
            .into_iter()
            .partition(|s| now.saturating_sub(s.since) >= WINDOW_SECS);
        self.seen = open;
        over.into_iter().filter(|s| s.count > 0).collect()
    }

    /// The record that reports a window's repeats.
    pub fn summary(s: &Seen) -> crate::Outgoing {
        let severity = crate::patterns::PATTERNS
            .iter()
            .find(|p| p.classification == s.classification)
            .map_or(2, |p| p.severity);
        let mut payload = String::from("Crash Report:\n");
        let reason: String = s
            .reason
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .take(4096)
            .collect();
        payload.push_str(&format!("Reason: {reason}\n"));
        if crash_signature::is_signature(&s.signature) {
            payload.push_str(&format!("Signature : {}\n", s.signature));
        }
        payload.push_str(&format!(
            "Repeated : {} more time(s) within {} s of the first report\n",
            s.count, WINDOW_SECS
        ));
        crate::Outgoing {
            classification: s.classification.clone(),
            severity,
            payload,
        }
    }

    /// As bytes, to keep between calls: one line per report, tab-separated
    /// (`since count classification signature reason`).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        for r in &self.seen {
            s.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                r.since,
                r.count,
                r.classification,
                r.signature.replace(['\t', '\n'], " "),
                r.reason.replace(['\t', '\n'], " ")
            ));
        }
        s.into_bytes()
    }

    /// What [`Self::encode`] made; damaged lines are dropped, and so are
    /// the lines of an older version, which had no signature (their
    /// reports may be sent once more).
    pub fn decode(bytes: &[u8]) -> Repeats {
        let text = String::from_utf8_lossy(bytes);
        // Split at `encode`'s `\n` only: a reason's own `\r` is part of it.
        let seen = text
            .split('\n')
            .filter_map(|l| {
                let mut f = l.splitn(5, '\t');
                let since = f.next()?.parse().ok()?;
                let count = f.next()?.parse().ok()?;
                let classification = f.next()?.to_owned();
                let signature = f.next()?.to_owned();
                let reason = f.next()?.to_owned();
                crash_signature::is_signature(&signature).then_some(Seen {
                    since,
                    count,
                    classification,
                    signature,
                    reason,
                })
            })
            .take(MAX_TRACKED)
            .collect();
        Repeats { seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crash_signature::line1;

    const W: &str = "org.clearlinux/kernel/warning";

    /// Counts a report whose signature is `line1:` of its first line.
    fn count(r: &mut Repeats, class: &str, reason: &str, now: u64) -> bool {
        r.count(class, &line1(class, reason), reason, now)
    }

    #[test]
    fn the_same_signature_is_counted_until_its_window_ends() {
        let mut r = Repeats::default();
        let a = "WARNING: CPU: 0 PID: 10 at net/core/dev.c:3244 skb_warn_bad_offload+0x7a/0x110";
        let b = "WARNING: CPU: 3 PID: 77 at net/core/dev.c:3244 skb_warn_bad_offload+0x7a/0x110";
        assert!(!count(&mut r, W, a, 1000), "the first is sent");
        assert!(count(&mut r, W, b, 1001));
        assert!(count(&mut r, W, a, 1000 + WINDOW_SECS - 1));
        assert!(!count(
            &mut r,
            W,
            "WARNING: CPU: 0 PID: 1 at other.c:1 f+0x1/0x2",
            1002
        ));
        assert!(
            !count(&mut r, "org.clearlinux/kernel/bug", a, 1002),
            "another classification"
        );
        // The same first line under another signature (another trace) is
        // another report.
        assert!(!r.count(W, "sym1:00000000000000aa", a, 1003));
        assert!(r.count(W, "sym1:00000000000000aa", "another first line", 1004));
        assert!(r.expire(1000 + WINDOW_SECS - 1).is_empty());
        let over = r.expire(1000 + WINDOW_SECS);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].count, 2);
        let s = Repeats::summary(&over[0]);
        assert_eq!((s.classification.as_str(), s.severity), (W, 2));
        assert!(s
            .payload
            .contains(&format!("Signature : {}\n", line1(W, a))));
        assert!(
            s.payload
                .ends_with("Repeated : 2 more time(s) within 3600 s of the first report\n"),
            "{}",
            s.payload
        );
        // After the window, it is sent again.
        assert!(!count(&mut r, W, a, 1000 + WINDOW_SECS + 1));
    }

    #[test]
    fn tracking_is_bounded_and_survives_encoding() {
        let mut r = Repeats::default();
        for i in 0..MAX_TRACKED + 10 {
            let reason = format!("WARNING: at {}", "x".repeat(i % 7 + 1) + &"y".repeat(i / 7));
            count(&mut r, W, &reason, 5);
        }
        assert_eq!(r.seen.len(), MAX_TRACKED);
        r.seen[0].reason.push_str("\twith a tab");
        let back = Repeats::decode(&r.encode());
        assert_eq!(back.seen.len(), MAX_TRACKED);
        assert_eq!(back.seen[1], r.seen[1]);
        assert!(Repeats::decode(b"garbage\n1\t2\n").seen.is_empty());
        // The version before signatures: dropped, not misread.
        assert!(
            Repeats::decode(b"5\t0\torg.clearlinux/kernel/warning\tWARNING: at x\n")
                .seen
                .is_empty()
        );
    }

    #[test]
    fn a_reason_ending_in_a_carriage_return_is_still_a_repeat_after_encoding() {
        let mut r = Repeats::default();
        let a = "WARNING: CPU: 0 PID: 10 at x.c:1 f+0x1/0x2\r";
        assert!(!count(&mut r, W, a, 1000));
        let mut back = Repeats::decode(&r.encode());
        assert_eq!(back, r);
        assert!(count(&mut back, W, a, 1001), "counted, not sent again");
    }
}
