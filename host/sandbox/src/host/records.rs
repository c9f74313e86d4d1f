//! `telemetrics:probe/records`: a probe's records are checked against its
//! grant, its hourly budget and the record rules, then handed to the
//! daemon's ingest path (or kept, for an admin's triage run).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use telem_core::control::Captured;
use telem_core::error_text::Chain;
use telem_core::record::{random_id, Record};

use crate::bindings::current::telemetrics;
use crate::bindings::current::telemetrics::probe::types::{SendError, TelemetryRecord};
use crate::bindings::v0_1;
use crate::call_state::CallState;
use crate::probe::LoadedProbe;
use crate::probe_log::{escape, FIELD_CAP};

/// The daemon's ingest path, as the sandbox sees it: validates, stamps and
/// spools a probe's record. A trait so this crate needs no spool, and so a
/// test or a benchmark can stand in for the daemon.
pub trait RecordIntake: Send + Sync + std::fmt::Debug {
    /// Takes one record; returns its id once it is stored.
    fn submit(
        &self,
        record: Record,
    ) -> Pin<Box<dyn Future<Output = Result<String, IntakeError>> + Send + '_>>;
}

/// Why the daemon did not take a probe's record.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// It breaks a rule of the record model.
    #[error(transparent)]
    Invalid(telem_core::record::RecordError),
    /// The daemon refused it (not opted in, spool full, disk error). Boxed:
    /// the daemon's own error type is not the sandbox's to name.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
}

/// Where a probe call's records go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Validated, enriched with host metadata and spooled (the daemon).
    Spool(Arc<dyn RecordIntake>),
    /// Checked against the grant and kept in memory, never sent: an admin's
    /// triage run (`telemctl crash symbolize`).
    Capture(Arc<Mutex<Vec<Captured>>>),
    /// Spooled, with a copy kept for the caller (the crash handler's `-v`
    /// prints what was recorded).
    SpoolAndCopy(Arc<dyn RecordIntake>, Arc<Mutex<Vec<Captured>>>),
    /// Checked, then held until the call returns: spooled if it returned
    /// `ok`, dropped if it failed (a source batch, handed again after a
    /// failure, is reported once).
    Staged(Arc<dyn RecordIntake>, Arc<Mutex<Vec<Record>>>),
}

/// Most copies of stored records a [`Sink::SpoolAndCopy`] keeps (what
/// `telemctl probe run` and the crash handler's `-v` show): the records
/// are all stored, only the copies stop.
pub const MAX_COPIES: usize = 100;

/// Most records one source batch may hold until its call returns.
pub const MAX_STAGED_RECORDS: usize = 256;

impl telemetrics::probe::records::Host for CallState {
    async fn send(&mut self, r: TelemetryRecord) -> Result<String, SendError> {
        let (Some(probe), Some(sink)) = (self.probe.clone(), self.sink.clone()) else {
            return Err(SendError::Refused(
                "describe runs without capabilities".into(),
            ));
        };
        let result = send_record(&probe, &sink, r).await;
        let by_host = matches!(&result, Err(Refused { by_host: true, .. }));
        let result = result.map_err(|r| r.error);
        let mut st = probe.stats.lock().expect("stats lock");
        match &result {
            // A source batch's record is counted when it is spooled
            // (`store_staged`), not when it is held: a failed batch's
            // records were never sent.
            Ok(_) if matches!(sink, Sink::Staged(..)) => {}
            Ok(_) => st.records_sent += 1,
            Err(e) => {
                st.records_refused += 1;
                drop(st);
                let words = refusal_words(&probe, e);
                if by_host {
                    self.host_refusal.get_or_insert_with(|| words.clone());
                }
                log_refusal(&probe, "record refused", &words);
            }
        }
        result
    }
}

/// Why a record was refused, in words for the admin (never a type name).
fn refusal_words(probe: &LoadedProbe, e: &SendError) -> String {
    match e {
        SendError::NotGranted(c) => format!("classification {c} is not granted"),
        SendError::RateLimited => format!(
            "over its limit of {} records per hour",
            probe.grant.max_records_per_hour
        ),
        SendError::Invalid(why) => format!("invalid: {why}"),
        SendError::Refused(why) => format!("not kept: {why}"),
    }
}

/// A record refused, and whether for a reason of the host's own (its
/// budget, its spool), which is never the probe's failure, or the probe's
/// (what it sent, how many in one batch).
struct Refused {
    error: SendError,
    by_host: bool,
}

impl Refused {
    fn probe(error: SendError) -> Refused {
        Refused {
            error,
            by_host: false,
        }
    }

    fn host(error: SendError) -> Refused {
        Refused {
            error,
            by_host: true,
        }
    }
}

/// A record a batch has no room for: the probe chose to send that many.
fn batch_full() -> Refused {
    Refused::probe(SendError::Refused(format!(
        "at most {MAX_STAGED_RECORDS} records per batch"
    )))
}

async fn send_record(
    probe: &LoadedProbe,
    sink: &Sink,
    r: TelemetryRecord,
) -> Result<String, Refused> {
    if !probe.grant.allows_classification(&r.classification) {
        return Err(Refused::probe(SendError::NotGranted(escape(
            &r.classification,
            FIELD_CAP,
        ))));
    }
    // Invalid records are refused before they count against the hourly
    // budget: a probe's mistakes must not use up its allowance.
    check_probe_record(&r).map_err(|e| {
        Refused::probe(SendError::Invalid(escape(
            &Chain(&e).to_string(),
            FIELD_CAP,
        )))
    })?;
    // A batch already full refuses before the budget is spent on it.
    if let Sink::Staged(_, held) = sink {
        if held.lock().expect("staged lock").len() >= MAX_STAGED_RECORDS {
            return Err(batch_full());
        }
    }
    let spent = probe
        .budget
        .lock()
        .expect("budget lock")
        .try_spend(SystemTime::now(), probe.grant.max_records_per_hour);
    if !spent {
        return Err(Refused::host(SendError::RateLimited));
    }
    let severity = r.severity;
    let record = Record::from_probe(
        r.classification,
        r.severity,
        r.payload_version,
        r.payload,
        r.event_id,
    );
    let captured = |record: &Record| Captured {
        classification: record
            .headers
            .get(telem_core::record::Header::Classification)
            .to_owned(),
        severity,
        payload: record.payload.clone(),
        payload_version: record
            .headers
            .get(telem_core::record::Header::PayloadFormatVersion)
            .parse()
            .unwrap_or(1),
        event_id: record
            .headers
            .get(telem_core::record::Header::EventId)
            .to_owned(),
    };
    let (ingest, copy) = match sink {
        Sink::Spool(ingest) => (ingest, None),
        // Copies for the caller to show, at most MAX_COPIES of a call's.
        Sink::SpoolAndCopy(ingest, kept) => {
            let room = kept.lock().expect("copy lock").len() < MAX_COPIES;
            (ingest, room.then(|| (kept, captured(&record))))
        }
        Sink::Capture(kept) => {
            kept.lock().expect("capture lock").push(captured(&record));
            return Ok(random_id());
        }
        Sink::Staged(_, held) => {
            let mut held = held.lock().expect("staged lock");
            if held.len() >= MAX_STAGED_RECORDS {
                return Err(batch_full());
            }
            let id = record
                .headers
                .get(telem_core::record::Header::EventId)
                .to_owned();
            held.push(record);
            return Ok(id);
        }
    };
    match ingest.submit(record).await {
        Ok(id) => {
            if let Some((kept, c)) = copy {
                kept.lock().expect("copy lock").push(c);
            }
            Ok(id)
        }
        Err(IntakeError::Invalid(e)) => {
            Err(Refused::probe(SendError::Invalid(Chain(&e).to_string())))
        }
        Err(IntakeError::Refused(e)) => {
            Err(Refused::host(SendError::Refused(Chain(&*e).to_string())))
        }
    }
}

impl v0_1::telemetrics::probe::records::Host for CallState {
    async fn send(
        &mut self,
        r: v0_1::telemetrics::probe::types::TelemetryRecord,
    ) -> Result<String, v0_1::telemetrics::probe::types::SendError> {
        telemetrics::probe::records::Host::send(self, r.into())
            .await
            .map_err(Into::into)
    }
}

/// The rules of the record model a probe's record can break (the rest the
/// host fills in).
fn check_probe_record(r: &TelemetryRecord) -> Result<(), telem_core::record::RecordError> {
    telem_core::record::validate_classification(&r.classification)?;
    telem_core::record::validate_severity_str(&r.severity.to_string())?;
    if let Some(id) = &r.event_id {
        telem_core::record::validate_event_id(id)?;
    }
    telem_core::record::validate_payload(r.payload.as_bytes())
}

/// Logs why a record was refused, escaped and within the probe's log
/// allowance (a probe must not flood the daemon's log with refusals).
fn log_refusal(probe: &LoadedProbe, what: &str, why: &str) {
    let why = escape(why, FIELD_CAP);
    let admit = probe
        .log_gate
        .lock()
        .expect("log gate lock")
        .admit(Instant::now(), why.len());
    if admit.is_some() {
        tracing::warn!(probe = %probe.name, "{what}: {why}");
    }
}

/// Spools the records a source batch held, once its call returned `ok`. A
/// refusal now (not opted in, spool full) is logged and counted: the probe
/// was told the record was taken and the batch is not handed again.
pub(crate) async fn store_staged(
    probe: &LoadedProbe,
    intake: &dyn RecordIntake,
    held: Vec<Record>,
) {
    for record in held {
        if let Err(e) = intake.submit(record).await {
            probe.stats.lock().expect("stats lock").records_refused += 1;
            log_refusal(
                probe,
                "record of a handled batch refused",
                &Chain(&e).to_string(),
            );
        } else {
            probe.stats.lock().expect("stats lock").records_sent += 1;
        }
    }
}
