//! The host side of the WIT interfaces a probe imports, one file per
//! interface and named as it is: `records` (sending records), `log`
//! (the probe's log lines), `state` (its kept state), `debuginfo` (debug
//! files fetched for a crash call). Each implements the
//! interface's `Host` trait for [`crate::call_state::CallState`], the data
//! of one call's store, in both contract versions.

pub mod debuginfo;
pub(crate) mod log;
pub(crate) mod records;
pub(crate) mod state;
