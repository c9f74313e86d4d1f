//! The heartbeat: tells the collector this machine is alive, with the
//! legacy hprobe's record (`org.clearlinux/hello/world`, severity 1,
//! payload `hello`), at start and every 24 hours. The host adds a random
//! splay to the interval so a fleet does not report in the same second.

use telemetrics_probe_sdk::{export_probe, Event, Manifest, Probe, Record, Trigger};

struct Hello;

impl Probe for Hello {
    fn describe() -> Manifest {
        Manifest {
            name: "hello".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Heartbeat: org.clearlinux/hello/world at start and daily".into(),
            classifications: vec!["org.clearlinux/hello/world".into()],
            triggers: vec![
                Trigger::OnStart,
                Trigger::Interval(24 * 3600),
                Trigger::Manual,
            ],
            max_records_per_hour: 4,
            ..Default::default()
        }
    }

    fn handle(_event: Event) -> Result<(), String> {
        Record::new("org.clearlinux/hello/world")
            .severity(1)
            .payload("hello")
            .send()?;
        Ok(())
    }
}

export_probe!(Hello);
