//! `telemetrics:probe/state`: the probe's private key-value store. A
//! call's writes collect in the store's [`StateTxn`] and reach the probe's
//! [`crate::probe_state_file::ProbeStateFile`] only when `handle` returns `ok`; the
//! quota is checked at each write against what the state would be after
//! the call.

use crate::bindings::current::telemetrics::probe::state::{self, StateError};
use crate::call_state::CallState;
use crate::probe::LoadedProbe;
use crate::probe_state_file::{entry_cost, StateChanges, MAX_KEY_BYTES};

/// One call's pending writes and the state's size if they were applied.
#[derive(Debug)]
pub(crate) struct StateTxn {
    pub(crate) changes: StateChanges,
    projected: u64,
}

impl CallState {
    /// Cost of `key`'s committed entry (0 if absent).
    fn committed_cost(probe: &LoadedProbe, key: &str) -> u64 {
        probe
            .state
            .lock()
            .expect("state lock")
            .cost_of(key, probe.grant.state_quota_bytes)
    }

    /// Records a write, checking the quota against the state as it would
    /// be after this call. Every pending entry is paid for: a value by its
    /// cost, a removal by the committed entry it removes (a removal of a
    /// key the committed state lacks is dropped, not kept), so what a call
    /// holds in host memory is bounded by the quota.
    fn write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), StateError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(StateError::InvalidKey);
        }
        let Some(probe) = self.probe.clone() else {
            return Err(StateError::Unavailable);
        };
        let quota = probe.grant.state_quota_bytes;
        let committed = Self::committed_cost(&probe, &key);
        let txn = self.state.get_or_insert_with(|| StateTxn {
            changes: StateChanges::default(),
            projected: probe.state.lock().expect("state lock").bytes(quota),
        });
        let old = match txn.changes.writes.get(&key) {
            Some(Some(v)) => entry_cost(&key, v),
            Some(None) => 0,
            None => committed,
        };
        let new = value.as_ref().map_or(0, |v| entry_cost(&key, v));
        let projected = txn.projected.saturating_sub(old) + new;
        if new > old && projected > quota {
            return Err(StateError::QuotaExceeded(quota));
        }
        txn.projected = projected;
        if value.is_none() && committed == 0 {
            txn.changes.writes.remove(&key);
        } else {
            txn.changes.writes.insert(key, value);
        }
        Ok(())
    }
}

impl state::Host for CallState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        let probe = self.probe.clone()?;
        if let Some(v) = self.state.as_ref().and_then(|t| t.changes.writes.get(&key)) {
            return v.clone();
        }
        let value = probe
            .state
            .lock()
            .expect("state lock")
            .get(&key, probe.grant.state_quota_bytes);
        value
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        self.write(key, Some(value))
    }

    async fn delete(&mut self, key: String) -> Result<(), StateError> {
        self.write(key, None)
    }

    async fn keys(&mut self) -> Vec<String> {
        let Some(probe) = self.probe.clone() else {
            return Vec::new();
        };
        let mut keys: std::collections::BTreeSet<String> = probe
            .state
            .lock()
            .expect("state lock")
            .keys(probe.grant.state_quota_bytes)
            .into_iter()
            .collect();
        if let Some(txn) = &self.state {
            for (k, v) in &txn.changes.writes {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        keys.into_iter().collect()
    }
}
