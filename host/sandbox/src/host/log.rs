//! `telemetrics:probe/log`: a probe's log lines go to the daemon's log,
//! escaped, capped per line and rate-limited per probe.

use std::time::Instant;

use crate::bindings::current::telemetrics;
use crate::bindings::v0_1;
use crate::call_state::CallState;
use crate::probe_log::{escape, LOG_LINE_CAP};

impl telemetrics::probe::log::Host for CallState {
    async fn log(&mut self, level: telemetrics::probe::log::Level, message: String) {
        use telemetrics::probe::log::Level;
        let m = escape(&message, LOG_LINE_CAP);
        let probe = self.name.as_str();
        let admit = match &self.probe {
            Some(p) => p
                .log_gate
                .lock()
                .expect("log gate lock")
                .admit(Instant::now(), m.len()),
            None => self.describe_log.admit(Instant::now(), m.len()),
        };
        match admit {
            None => return,
            Some(0) => {}
            Some(suppressed) => {
                tracing::warn!(
                    probe,
                    "{suppressed} log lines of this probe suppressed (rate limit)"
                )
            }
        }
        match level {
            Level::Debug => tracing::debug!(probe, "{m}"),
            Level::Info => tracing::info!(probe, "{m}"),
            Level::Warn => tracing::warn!(probe, "{m}"),
            Level::Error => tracing::error!(probe, "{m}"),
        }
    }
}

impl v0_1::telemetrics::probe::log::Host for CallState {
    async fn log(&mut self, level: v0_1::telemetrics::probe::log::Level, message: String) {
        use telemetrics::probe::log::{Host, Level};
        use v0_1::telemetrics::probe::log::Level as Old;
        let level = match level {
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        };
        Host::log(self, level, message).await
    }
}
