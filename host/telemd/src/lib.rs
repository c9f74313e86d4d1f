//! `telemd`, the telemetry daemon: the native socket and the probes feed
//! one ingest path into a durable spool; delivery posts what the spool
//! holds and journals the outcome; the control socket answers `telemctl`
//! and the crash handler; the supervisor loads, triggers and quarantines
//! probes; the crash queue hands each crash to the crash probes.
//!
//! Everything lives in this library so it can be tested in-process; the
//! binary only parses arguments and starts the runtime.
#![warn(missing_docs)]

pub mod control;
pub mod crash_exe;
pub mod crash_queue;
pub mod crash_repeats;
pub mod daemon;
pub mod debuginfod;
pub mod delivery;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod probe_runtime;
pub mod reload;
pub mod sources;
pub mod spool;
pub mod state_lock;
pub mod supervisor;
pub mod systemd;
pub mod watchdog;
