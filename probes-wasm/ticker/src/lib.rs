//! Test probe for the interval trigger: sends `tick` every second (plus the
//! host's splay) and `start` when loaded. Not shipped.

use telemetrics_probe_sdk::{export_probe, Event, Manifest, Probe, Record, Trigger};

struct Ticker;

impl Probe for Ticker {
    fn describe() -> Manifest {
        Manifest {
            name: "ticker".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Interval trigger test probe (not shipped)".into(),
            classifications: vec!["org.example/test/tick".into()],
            triggers: vec![Trigger::OnStart, Trigger::Interval(1)],
            max_records_per_hour: 1000,
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let what = match event {
            Event::Start => "start",
            Event::Timer => "tick",
            _ => return Ok(()),
        };
        Record::new("org.example/test/tick").payload(what).send()?;
        Ok(())
    }
}

export_probe!(Ticker);
