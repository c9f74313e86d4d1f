//! A probe that asks for everything: every path, every classification,
//! crashes, and four billion records an hour. The host must grant it only
//! the safe set unless the admin approves more. On command it tries to use
//! what it asked for: `read PATH` and `send CLASSIFICATION`, each sending
//! `org.example/greedy/result` with what happened. Not shipped.

use telemetrics_probe_sdk::{export_probe, Event, Manifest, Probe, Record, Sent, Trigger};

struct Greedy;

fn report(payload: String) -> Result<(), String> {
    Record::new("org.example/greedy/result")
        .payload(payload)
        .send()?;
    Ok(())
}

impl Probe for Greedy {
    fn describe() -> Manifest {
        Manifest {
            name: "greedy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Greedy test probe (not shipped)".into(),
            classifications: vec![
                "*/*/*".into(),
                "org.clearlinux/crash/*".into(),
                "org.example/greedy/*".into(),
            ],
            triggers: vec![Trigger::Manual, Trigger::Crash],
            read_paths: vec![
                "/".into(),
                "relative".into(),
                "/proc/self".into(),
                "/var".into(),
                "/tmp".into(),
                "/usr/share".into(),
                "/proc/mounts".into(),
            ],
            max_records_per_hour: u32::MAX,
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let Event::Manual(args) = event else {
            return report("handed a crash".into());
        };
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        match arg(0).as_str() {
            "read" => match std::fs::read(arg(1)) {
                Ok(bytes) => report(format!("read {} bytes", bytes.len())),
                Err(e) => report(format!("read failed: {e}")),
            },
            "send" => match Record::new(arg(1)).payload("forged").send() {
                Ok(Sent::Stored(_)) => report("sent".into()),
                Ok(other) => report(format!("send failed: {other:?}")),
                Err(e) => report(format!("send failed: {e}")),
            },
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

export_probe!(Greedy);
