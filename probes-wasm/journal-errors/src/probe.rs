//! The component: entries handed by the host's journal source, the flood
//! windows kept in the probe's state between calls (written with the
//! batch's records, so a batch handed again starts from the same counts).

use telemetrics_probe_sdk::{
    export_probe, log, state, BatchLimits, Event, JournalSource, Manifest, Probe, Record, Sent,
    Source, Trigger,
};

use crate::{Floods, Outgoing, CLASSIFICATION, SEVERITY};

const FLOODS: &str = "floods";

struct JournalErrors;

fn send(o: &Outgoing) {
    // A refusal (over the hourly budget) is logged, not a failure of the
    // batch, which would be handed back until the probe is quarantined.
    match Record::new(CLASSIFICATION)
        .severity(SEVERITY)
        .payload(o.payload.clone())
        .send()
    {
        Ok(Sent::Stored(_)) => {}
        Ok(Sent::RateLimited) => log::warn("record not taken: over the hourly budget"),
        Ok(Sent::NotKept(why)) => log::warn(&format!("record not taken: {why}")),
        Err(e) => log::warn(&format!("record not taken: {e}")),
    }
}

impl Probe for JournalErrors {
    fn describe() -> Manifest {
        Manifest {
            name: "journal-errors".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Services that failed, from the systemd journal of this boot".into(),
            classifications: vec![CLASSIFICATION.into()],
            triggers: vec![Trigger::Interval(600)],
            max_records_per_hour: 120,
            sources: vec![Source::Journal(JournalSource {
                // systemd's own (`_PID=1`, set by journald): anyone can
                // log `EXIT_CODE=exited`.
                matches: vec![vec!["EXIT_CODE=exited".into(), "_PID=1".into()]],
                privacy_gated: vec![vec![
                    "PRIORITY=0".into(),
                    "PRIORITY=1".into(),
                    "PRIORITY=2".into(),
                    "PRIORITY=3".into(),
                ]],
                this_boot: true,
                fields: vec![
                    "MESSAGE".into(),
                    "_PID".into(),
                    "UNIT".into(),
                    "_SYSTEMD_UNIT".into(),
                    "SYSLOG_IDENTIFIER".into(),
                    "PRIORITY".into(),
                    "EXIT_CODE".into(),
                    "EXIT_STATUS".into(),
                ],
                limits: BatchLimits {
                    max_items: 256,
                    max_bytes: 0,
                },
            })],
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let mut floods = Floods::decode(&state::get(FLOODS).unwrap_or_default());
        let mut out = Vec::new();
        match event {
            Event::Journal(entries) => {
                for e in &entries {
                    floods.entry(&e.fields, e.realtime_usec, &mut out);
                }
            }
            // The journal may go quiet after a flood: its windows close by
            // the wall clock then.
            Event::Timer => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                floods.expire(now, &mut out);
            }
            _ => {}
        }
        for o in &out {
            send(o);
        }
        let encoded = floods.encode();
        let saved = if encoded.is_empty() {
            state::delete(FLOODS)
        } else {
            state::set(FLOODS, &encoded)
        };
        if let Err(e) = saved {
            log::warn(&format!("flood counts not kept: {e}"));
        }
        Ok(())
    }
}

export_probe!(JournalErrors);
