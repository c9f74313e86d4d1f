//! The one path every record takes into the spool, whatever its source:
//! opt-in check, host-owned headers filled in, validation, durable store.
//! Native probes reach it through [`socket`]; WASM probes through the
//! sandbox's `records.send`.

mod frame_reader;
mod shares;
pub mod socket;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use thiserror::Error;

use crate::spool::{Spool, SpoolError};
use telem_core::clock::Clock;
pub use telem_core::control::IngestCounts;
use telem_core::machine_id::MachineIdCache;
use telem_core::metadata::HostMetadata;
use telem_core::record::{Header, Record, RecordError};

/// Why a record was not accepted. The message is what the sender (or the
/// log, for native probes that get no answer) is told.
#[derive(Debug, Error)]
pub enum IngestError {
    /// Telemetry is not enabled on this machine.
    #[error("not opted in: {} does not exist (run `telemctl opt-in`)", .0.display())]
    NotOptedIn(PathBuf),
    /// The record breaks a rule of the record model.
    #[error("invalid record")]
    Invalid(#[from] RecordError),
    /// The spool refused it (full, disk error, shutting down).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The machine id could not be read or created.
    #[error("cannot get the machine id")]
    MachineId(#[source] io::Error),
}

/// Counters of what happened to the records of one source (native
/// clients, or sandboxed probes).
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Records stored in the spool.
    pub accepted: AtomicU64,
    /// Records refused for breaking the record rules (including bad frames).
    pub invalid: AtomicU64,
    /// Records refused because the machine is not opted in.
    pub not_opted_in: AtomicU64,
    /// Records refused because the spool is at its cap.
    pub spool_full: AtomicU64,
    /// Records lost to a disk error (the sender is told).
    pub spool_errors: AtomicU64,
    /// Native clients dropped for not sending a whole frame in time.
    pub timed_out: AtomicU64,
    /// Native connections closed without a whole frame because their uid
    /// held its share of connections open.
    pub refused: AtomicU64,
}

impl SourceCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> IngestCounts {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IngestCounts {
            accepted: r(&self.accepted),
            invalid: r(&self.invalid),
            not_opted_in: r(&self.not_opted_in),
            spool_full: r(&self.spool_full),
            spool_errors: r(&self.spool_errors),
            timed_out: r(&self.timed_out),
            refused: r(&self.refused),
        }
    }

    fn count(&self, result: &Result<String, IngestError>) {
        let c = match result {
            Ok(_) => &self.accepted,
            Err(IngestError::Invalid(_)) => &self.invalid,
            Err(IngestError::NotOptedIn(_)) => &self.not_opted_in,
            Err(IngestError::Spool(SpoolError::Full { .. })) => &self.spool_full,
            Err(_) => &self.spool_errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of what happened to incoming records, by source; exposed by
/// the control socket and the metrics, and logged at shutdown.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Records (and connections) of native clients on the legacy socket.
    pub native: SourceCounters,
    /// Records of sandboxed probes.
    pub probes: SourceCounters,
}

impl IngestStats {
    /// Both sources together (`telemctl status`).
    pub fn snapshot(&self) -> IngestCounts {
        let (n, p) = (self.native.snapshot(), self.probes.snapshot());
        IngestCounts {
            accepted: n.accepted + p.accepted,
            invalid: n.invalid + p.invalid,
            not_opted_in: n.not_opted_in + p.not_opted_in,
            spool_full: n.spool_full + p.spool_full,
            spool_errors: n.spool_errors + p.spool_errors,
            timed_out: n.timed_out + p.timed_out,
            refused: n.refused + p.refused,
        }
    }
}

/// The shared ingest path.
#[derive(Debug)]
pub struct Ingest {
    spool: Spool,
    machine_id: Mutex<MachineIdCache>,
    metadata: HostMetadata,
    opt_in_file: PathBuf,
    clock: Arc<dyn Clock>,
    /// What happened to records so far.
    pub stats: IngestStats,
}

impl Ingest {
    /// Builds the ingest path over a spool.
    pub fn new(
        spool: Spool,
        machine_id: MachineIdCache,
        metadata: HostMetadata,
        opt_in_file: PathBuf,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Ingest {
            spool,
            machine_id: Mutex::new(machine_id),
            metadata,
            opt_in_file,
            clock,
            stats: IngestStats::default(),
        }
    }

    /// The spool records go to.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The host metadata stamped on probe records.
    pub fn metadata(&self) -> &HostMetadata {
        &self.metadata
    }

    /// Accepts a record from a native (libtelemetry) probe. Its own metadata
    /// headers are kept, as the legacy daemon did, but checked; the machine
    /// id is always the daemon's.
    pub async fn submit_native(&self, record: Record) -> Result<String, IngestError> {
        self.submit_natives(vec![record])
            .await
            .pop()
            .expect("one result per record")
    }

    /// [`Ingest::submit_native`] for records that arrived together: each is
    /// checked and refused on its own, and those that pass go to the spool
    /// in one hand-over. One result per record, in order.
    pub async fn submit_natives(&self, records: Vec<Record>) -> Vec<Result<String, IngestError>> {
        let opted_in = self.opt_in_file.exists();
        let mut results: Vec<Option<Result<String, IngestError>>> =
            Vec::with_capacity(records.len());
        let mut valid = Vec::with_capacity(records.len());
        let mut places = Vec::with_capacity(records.len());
        for mut record in records {
            let checked = if opted_in {
                self.stamp_machine_id(&mut record)
                    .and_then(|()| Ok(record.validate()?))
            } else {
                Err(IngestError::NotOptedIn(self.opt_in_file.clone()))
            };
            match checked {
                Ok(()) => {
                    places.push(results.len());
                    valid.push(record);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let stored = self.spool.store_all(&valid).await;
        for (i, r) in places.into_iter().zip(stored) {
            results[i] = Some(r.map_err(IngestError::from));
        }
        results
            .into_iter()
            .map(|r| {
                let r = r.expect("every record answered");
                self.stats.native.count(&r);
                r
            })
            .collect()
    }

    /// Accepts a record from a sandboxed probe: every host-owned header
    /// (format version, machine id, timestamp, machine metadata) is set
    /// here, so a probe can't forge them; the probe only chooses the
    /// classification, severity, payload version, payload and event id.
    pub async fn submit_probe(&self, mut record: Record) -> Result<String, IngestError> {
        let result = async {
            self.check_opt_in()?;
            let h = &mut record.headers;
            h.set(
                Header::RecordFormatVersion,
                telem_core::record::RECORD_FORMAT_VERSION,
            );
            let now = self
                .clock
                .now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            h.set(Header::CreationTimestamp, now.to_string());
            self.metadata.apply(h);
            record.config = None;
            self.stamp_machine_id(&mut record)?;
            record.validate()?;
            Ok(self.spool.store(&record).await?)
        }
        .await;
        self.stats.probes.count(&result);
        result
    }

    fn check_opt_in(&self) -> Result<(), IngestError> {
        if self.opt_in_file.exists() {
            Ok(())
        } else {
            Err(IngestError::NotOptedIn(self.opt_in_file.clone()))
        }
    }

    fn stamp_machine_id(&self, record: &mut Record) -> Result<(), IngestError> {
        let id = self
            .machine_id
            .lock()
            .expect("machine id lock")
            .get(self.clock.now())
            .map_err(IngestError::MachineId)?;
        record.headers.set(Header::MachineId, id);
        Ok(())
    }
}

/// The sandbox hands probe records to the daemon through this.
impl telem_sandbox::RecordIntake for Ingest {
    fn submit(
        &self,
        record: Record,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<String, telem_sandbox::IntakeError>>
                + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            self.submit_probe(record).await.map_err(|e| match e {
                IngestError::Invalid(e) => telem_sandbox::IntakeError::Invalid(e),
                e => telem_sandbox::IntakeError::Refused(Box::new(e)),
            })
        })
    }
}
