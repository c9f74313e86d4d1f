//! The state of one call's store: its WASI context, resource table and
//! memory budget, and what the host interfaces need (the probe, where its
//! records go, its log allowance).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{current, v0_1};
use crate::host::records::Sink;
use crate::host::state::StateTxn;
use crate::limits::{StoreBudget, MAX_HOST_RESOURCES};
use crate::probe::LoadedProbe;
use crate::probe_log::{probe_log_limit, LogLimit};

pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) budget: StoreBudget,
    pub(crate) probe: Option<Arc<LoadedProbe>>,
    pub(crate) sink: Option<Sink>,
    pub(crate) name: String,
    /// `describe`'s own log allowance (a loaded probe uses its shared one).
    pub(crate) describe_log: LogLimit,
    /// This call's state writes, kept until it returns.
    pub(crate) state: Option<StateTxn>,
    /// A crash call's debug file lookups (none in other calls, or when no
    /// debuginfod server is named).
    pub(crate) debuginfo: Option<crate::host::debuginfo::DebuginfoCall>,
    /// The first record this call sent that the host did not take for a
    /// reason of its own (budget, spool), in words.
    pub(crate) host_refusal: Option<String>,
}

impl CallState {
    pub(crate) fn new(
        name: String,
        wasi: WasiCtx,
        memory: usize,
        probe: Option<(Arc<LoadedProbe>, Sink)>,
    ) -> CallState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let (probe, sink) = probe.unzip();
        CallState {
            wasi,
            table,
            budget: StoreBudget::new(memory),
            probe,
            sink,
            name,
            describe_log: probe_log_limit(),
            state: None,
            debuginfo: None,
            host_refusal: None,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl current::telemetrics::probe::types::Host for CallState {}
impl v0_1::telemetrics::probe::types::Host for CallState {}
