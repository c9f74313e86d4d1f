//! Host-side bindings of both contract versions the host speaks:
//! `wit/probe.wit` (0.2.x, current) and `wit/frozen/0.1.0/probe.wit`
//! (0.1.x, kept so components built against it load unchanged), and the
//! conversions between them. Everything past loading works in 0.2 terms: a
//! 0.1 manifest becomes a 0.2 manifest with no sources, and a 0.1 probe is
//! only ever handed the events 0.1 has (it cannot ask for a source).

#![allow(missing_docs)]

/// The current contract, `telemetrics:probe@0.2.x`.
pub mod current {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "probe",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

/// The frozen first contract, `telemetrics:probe@0.1.x`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/frozen/0.1.0",
        world: "probe",
        imports: { default: async },
        exports: { default: async },
    });
}

use current::telemetrics::probe::types as now;
use v0_1::telemetrics::probe::types as old;

/// A component linked once at load, in the version of the contract it was
/// built against.
pub(crate) enum ProbePre {
    /// Built against 0.2.x.
    Current(current::ProbePre<crate::call_state::CallState>),
    /// Built against 0.1.x.
    V0_1(v0_1::ProbePre<crate::call_state::CallState>),
}

impl From<old::Trigger> for now::Trigger {
    fn from(t: old::Trigger) -> Self {
        match t {
            old::Trigger::OnStart => now::Trigger::OnStart,
            old::Trigger::Interval(s) => now::Trigger::Interval(s),
            old::Trigger::Crash => now::Trigger::Crash,
            old::Trigger::Manual => now::Trigger::Manual,
        }
    }
}

impl From<old::Manifest> for now::Manifest {
    fn from(m: old::Manifest) -> Self {
        now::Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            classifications: m.classifications,
            triggers: m.triggers.into_iter().map(Into::into).collect(),
            read_paths: m.read_paths,
            max_records_per_hour: m.max_records_per_hour,
            sources: Vec::new(),
        }
    }
}

impl From<old::TelemetryRecord> for now::TelemetryRecord {
    fn from(r: old::TelemetryRecord) -> Self {
        now::TelemetryRecord {
            classification: r.classification,
            severity: r.severity,
            payload_version: r.payload_version,
            payload: r.payload,
            event_id: r.event_id,
        }
    }
}

impl From<now::SendError> for old::SendError {
    fn from(e: now::SendError) -> Self {
        match e {
            now::SendError::NotGranted(c) => old::SendError::NotGranted(c),
            now::SendError::RateLimited => old::SendError::RateLimited,
            now::SendError::Invalid(w) => old::SendError::Invalid(w),
            now::SendError::Refused(w) => old::SendError::Refused(w),
        }
    }
}

/// The 0.1 form of an event, if 0.1 has it. Source events have none: a 0.1
/// manifest cannot ask for a source, so the host never has one to hand.
pub(crate) fn event_v0_1(e: &now::Event) -> Option<old::Event> {
    Some(match e {
        now::Event::Start => old::Event::Start,
        now::Event::Timer => old::Event::Timer,
        now::Event::Manual(args) => old::Event::Manual(args.clone()),
        now::Event::Crash(c) => old::Event::Crash(old::CrashReport {
            core_path: c.core_path.clone(),
            process_name: c.process_name.clone(),
            process_path: c.process_path.clone(),
            pid: c.pid,
            signal: c.signal,
        }),
        now::Event::KernelLog(_) | now::Event::Files(_) | now::Event::Journal(_) => return None,
    })
}
