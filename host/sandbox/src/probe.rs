//! A loaded probe and why a call of it failed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use telem_core::control::ProbeStats;
use telem_core::grants::{Grant, Request};
use thiserror::Error;

use crate::bindings::ProbePre;
use crate::probe_log::LogLimit;
use crate::probe_state_file::ProbeStateFile;
use crate::record_budget::RecordBudget;
use crate::Manifest;

/// Why a probe call failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// The call ran past its deadline and was stopped.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The guest trapped (including a memory grow past its cap).
    #[error("trapped: {0}")]
    Trap(String),
    /// `handle` returned an error.
    #[error("probe error: {0}")]
    Guest(String),
    /// `handle` returned an error after the host did not take one of its
    /// records for a reason of the host's (the probe's hourly budget
    /// spent, the spool full, not opted in): not counted as the probe's
    /// failure.
    #[error("probe error after the host did not take a record ({refusal}): {error}")]
    AfterHostRefusal {
        /// Why the host did not take the record, in words.
        refusal: String,
        /// What `handle` returned.
        error: String,
    },
    /// The sandbox could not be set up (e.g. a granted path is missing).
    #[error("sandbox setup failed: {what}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why it failed.
        #[source]
        source: wasmtime::Error,
    },
    /// The call's task ended without an answer: the daemon is shutting
    /// down, or the host panicked while running it.
    #[error("the call was stopped: {0}")]
    Stopped(String),
}

impl CallError {
    /// Whether the call was stopped at its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::Timeout(_))
    }

    /// Whether the call failed after the host refused a record for a
    /// reason of its own: the supervisor does not count it toward
    /// quarantine.
    pub fn after_host_refusal(&self) -> bool {
        matches!(self, CallError::AfterHostRefusal { .. })
    }
}

/// A loaded probe.
pub struct LoadedProbe {
    /// Manifest name.
    pub name: String,
    /// The component file.
    pub file: PathBuf,
    /// sha256 of the file, hex.
    pub hash: String,
    /// What `describe` returned.
    pub manifest: Manifest,
    /// What it asked for.
    pub request: Request,
    /// What it runs with.
    pub grant: Grant,
    /// The component linked once, at load: each call only instantiates it
    /// in its fresh store.
    pub(crate) pre: ProbePre,
    /// Its private state, committed by calls that succeeded. One per
    /// probe name for the sandbox's life, shared by every load of it, so
    /// a call of a replaced component still running cannot overwrite
    /// what the new one wrote.
    pub state: Arc<Mutex<ProbeStateFile>>,
    /// Held for the whole of each call: calls of one probe (by name,
    /// across reloads) never overlap, so one call's state writes never
    /// interleave with another's.
    pub call_lock: Arc<tokio::sync::Mutex<()>>,
    /// Counters.
    pub stats: Mutex<ProbeStats>,
    /// Its hourly record budget: one per probe name, shared by every load
    /// of it and kept in the state directory, so no reload, enable or
    /// restart starts it afresh.
    pub(crate) budget: Arc<Mutex<RecordBudget>>,
    pub(crate) log_gate: Mutex<LogLimit>,
}

impl std::fmt::Debug for LoadedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedProbe")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish()
    }
}
