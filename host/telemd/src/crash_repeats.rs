//! The daemon's half of the crash flood limit: a crash whose record
//! carries the signature of one sent within `crash_repeat_window_secs`
//! (by the crashes' own times) for the same program (its path) run by the
//! same user is kept in the history as a repeat, and its record held back.
//! The user and path are part of the key so that nobody can keep another
//! user's crash, or another program's, from being sent by crashing a
//! look-alike first. The crash handler's half drops repeats of a crash
//! site before a core is kept; this half sees what the handler cannot:
//! the whole stack. Two crashes of one program at different sites have
//! different signatures, so both are sent however many times the first
//! comes again.
//!
//! What was sent is known from the history, so a daemon started again
//! (socket activation, a restart) goes on where the last one stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use telem_core::crash_history::{signature_in, Listing};
use telem_core::record::{Header, Record};
use telem_sandbox::{IntakeError, RecordIntake};

use crate::ingest::Ingest;

/// Signatures remembered at once; the oldest are forgotten first.
const MAX_SIGNATURES: usize = 1024;

/// What a repeat is keyed on: the user, the program's path, the
/// signature.
type Key = (Option<u32>, String, String);

/// The signatures sent lately: when, and for which crash.
#[derive(Debug, Default)]
pub struct RecentSignatures {
    window: u64,
    last: HashMap<Key, (u64, String)>,
}

impl RecentSignatures {
    /// Seeded from the history: each signature's latest crash whose record
    /// was sent.
    pub fn from_history(listing: &Listing, window_secs: u64) -> RecentSignatures {
        let mut r = RecentSignatures {
            window: window_secs,
            last: HashMap::new(),
        };
        for e in &listing.entries {
            if let (Some(sig), None) = (&e.signature, &e.repeat_of) {
                r.sent(&(e.uid, e.program.clone(), sig.clone()), e.time, &e.id);
            }
        }
        r
    }

    /// The crash that sent `key` within the window of `time` (before or
    /// after: crashes are not always handled in order), if one did (not
    /// `crash` itself).
    fn repeat_of(&self, key: &Key, time: u64, crash: &str) -> Option<String> {
        let (sent, id) = self.last.get(key)?;
        let within = self.window > 0 && time.abs_diff(*sent) < self.window;
        (within && id != crash).then(|| id.clone())
    }

    fn sent(&mut self, key: &Key, time: u64, crash: &str) {
        if self.last.len() >= MAX_SIGNATURES && !self.last.contains_key(key) {
            if let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                self.last.remove(&oldest);
            }
        }
        let newer = self.last.get(key).is_none_or(|(t, _)| *t <= time);
        if newer {
            self.last.insert(key.clone(), (time, crash.to_owned()));
        }
    }
}

/// A record of this crash held back as a repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBack {
    /// Its event id.
    pub event_id: String,
    /// The crash whose record with the same signature was sent.
    pub repeat_of: String,
}

/// The intake of one crash's probe calls: records that repeat a recent
/// signature are held back (the probe is told they were taken), the rest
/// go to the daemon's ingest.
#[derive(Debug)]
pub struct RepeatFilter {
    ingest: Arc<Ingest>,
    recent: Arc<Mutex<RecentSignatures>>,
    crash: String,
    time: u64,
    uid: Option<u32>,
    program: String,
    held: Mutex<Vec<HeldBack>>,
}

impl RepeatFilter {
    /// The filter for crash `crash` of `program` (as the history names
    /// it) run by `uid`, taken by the handler at `time`.
    pub fn new(
        ingest: Arc<Ingest>,
        recent: Arc<Mutex<RecentSignatures>>,
        crash: &str,
        time: u64,
        uid: Option<u32>,
        program: &str,
    ) -> RepeatFilter {
        RepeatFilter {
            ingest,
            recent,
            crash: crash.to_owned(),
            time,
            uid,
            program: program.to_owned(),
            held: Mutex::new(Vec::new()),
        }
    }

    /// The records held back.
    pub fn held_back(&self) -> Vec<HeldBack> {
        self.held.lock().expect("held lock").clone()
    }
}

impl RecordIntake for RepeatFilter {
    fn submit(
        &self,
        record: Record,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, IntakeError>> + Send + '_>>
    {
        Box::pin(async move {
            let key = signature_in(&record.payload)
                .map(|sig| (self.uid, self.program.clone(), sig.to_owned()));
            if let Some(key) = &key {
                let repeat = self.recent.lock().expect("signatures lock").repeat_of(
                    key,
                    self.time,
                    &self.crash,
                );
                if let Some(first) = repeat {
                    let event_id = record.headers.get(Header::EventId).to_owned();
                    self.held.lock().expect("held lock").push(HeldBack {
                        event_id: event_id.clone(),
                        repeat_of: first,
                    });
                    return Ok(event_id);
                }
            }
            let id = self.ingest.submit(record).await?;
            if let Some(key) = &key {
                self.recent
                    .lock()
                    .expect("signatures lock")
                    .sent(key, self.time, &self.crash);
            }
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telem_core::crash_history::{CrashEntry, SentRecord};

    fn entry(id: &str, time: u64, signature: &str, repeat_of: Option<&str>) -> CrashEntry {
        CrashEntry {
            id: id.into(),
            time,
            program: "/usr/bin/p".into(),
            pid: 1,
            signal: Some(11),
            uid: Some(1000),
            signature: Some(signature.into()),
            repeat_of: repeat_of.map(str::to_owned),
            records: vec![SentRecord {
                classification: "org.clearlinux/crash/clr".into(),
                severity: 3,
                event_id: "e".into(),
                payload: String::new(),
                sent: repeat_of.is_none(),
            }],
        }
    }

    fn key(sig: &str) -> Key {
        (Some(1000), "/usr/bin/p".into(), sig.into())
    }

    const A: &str = "sym1:000000000000000a";
    const B: &str = "sym1:000000000000000b";

    #[test]
    fn a_signature_repeats_within_the_window_of_the_crash_that_sent_it() {
        let listing = Listing {
            entries: vec![
                entry("one", 100, A, None),
                entry("two", 130, A, Some("one")),
            ],
            unreadable: 0,
        };
        let mut r = RecentSignatures::from_history(&listing, 60);
        assert_eq!(r.repeat_of(&key(A), 159, "three"), Some("one".into()));
        assert_eq!(
            r.repeat_of(&key(A), 160, "three"),
            None,
            "the window is over"
        );
        assert_eq!(
            r.repeat_of(&key(A), 41, "early"),
            Some("one".into()),
            "handled late"
        );
        assert_eq!(r.repeat_of(&key(A), 40, "early"), None);
        assert_eq!(r.repeat_of(&key(B), 110, "three"), None, "another site");
        assert_eq!(
            r.repeat_of(&key(A), 110, "one"),
            None,
            "a crash does not repeat itself"
        );
        // Another user, or another program of the same name: not a repeat.
        let other_user = (Some(1001), "/usr/bin/p".to_owned(), A.to_owned());
        assert_eq!(r.repeat_of(&other_user, 110, "x"), None);
        let look_alike = (Some(1000), "/tmp/p".to_owned(), A.to_owned());
        assert_eq!(r.repeat_of(&look_alike, 110, "x"), None);
        r.sent(&key(A), 160, "three");
        assert_eq!(r.repeat_of(&key(A), 200, "four"), Some("three".into()));
        // A crash handled late (its time is older) does not move the window back.
        r.sent(&key(A), 150, "late");
        assert_eq!(r.repeat_of(&key(A), 215, "five"), Some("three".into()));
        let off = RecentSignatures::from_history(&listing, 0);
        assert_eq!(
            off.repeat_of(&key(A), 100, "three"),
            None,
            "window 0: no limit"
        );
    }

    #[test]
    fn the_signatures_remembered_are_bounded() {
        let mut r = RecentSignatures {
            window: 60,
            last: HashMap::new(),
        };
        for i in 0..MAX_SIGNATURES as u64 + 10 {
            r.sent(&key(&format!("sym1:{i:016x}")), i, "c");
        }
        assert_eq!(r.last.len(), MAX_SIGNATURES);
        assert!(
            r.repeat_of(&key(&format!("sym1:{:016x}", 0)), 20, "d")
                .is_none(),
            "the oldest went"
        );
        assert!(r
            .repeat_of(&key(&format!("sym1:{:016x}", 1000)), 1001, "d")
            .is_some());
    }
}
