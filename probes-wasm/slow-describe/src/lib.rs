//! A probe whose `describe` sleeps for ten minutes in a WASI host call
//! (not in wasm code, where the epoch deadline would stop it), so a test can
//! prove that loading runs off the daemon's start-up path and that the
//! describe deadline holds inside host calls. Not shipped.

use telemetrics_probe_sdk::{export_probe, Event, Manifest, Probe};

struct SlowDescribe;

impl Probe for SlowDescribe {
    fn describe() -> Manifest {
        std::thread::sleep(std::time::Duration::from_secs(600));
        Manifest {
            name: "slow-describe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sleeps in describe (not shipped)".into(),
            classifications: vec![],
            max_records_per_hour: 0,
            ..Default::default()
        }
    }

    fn handle(_event: Event) -> Result<(), String> {
        Ok(())
    }
}

export_probe!(SlowDescribe);
