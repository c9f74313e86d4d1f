//! What every telemetrics program shares: the record model and its rules,
//! the legacy socket frame and spool file format, the crash inbox layout,
//! the control protocol, the config and the probe grant rules.
//!
//! This crate is linked by `telem-crash-handler`, which the kernel runs as
//! root for every crash, and by `telem-record-gen`; it must stay small and
//! synchronous. No async runtime, wasm engine or HTTP client may enter its
//! dependency tree (`tests/dependency_tree.rs` checks).
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod crash_history;
pub mod crash_inbox;
pub mod error_text;
pub mod fsutil;
pub mod grants;
pub mod journal;
pub mod machine_id;
pub mod metadata;
pub mod native_client;
pub mod probe_policy;
pub mod provenance;
pub mod record;
pub mod state_layout;
pub mod untrusted;
