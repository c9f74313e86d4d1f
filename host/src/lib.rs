//! The host side of the telemetrics client: the `telemd` daemon, its admin
//! and scripting tools, and everything they share.
//!
//! One library, thin binaries: every behaviour lives here so it can be
//! tested in-process, and the mains only parse arguments.
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod crash;
pub mod crash_handler;
pub mod daemon;
pub mod delivery;
pub mod fsutil;
pub mod ingest;
pub mod journal;
pub mod machine_id;
pub mod metadata;
pub mod record;
pub mod sandbox;
pub mod spool;
pub mod systemd;
pub mod untrusted;
