//! The client side of the native socket, as libtelemetry does it: build a
//! complete record with this machine's metadata, frame it, send it in one
//! connection. `telem-record-gen` and the tests use it; frames it sends are
//! accepted by the legacy daemon too.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::metadata::HostMetadata;
use crate::record::wire::encode_frame;
use crate::record::{random_id, Header, Headers, Record, RECORD_FORMAT_VERSION};

/// libtelemetry's connect and send timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a probe chooses about its record; the rest comes from the machine.
#[derive(Clone, Debug)]
pub struct NewRecord<'a> {
    /// `DOMAIN/PROBE/REST`.
    pub classification: &'a str,
    /// 1..4.
    pub severity: u8,
    /// Version of the payload's own format.
    pub payload_version: u32,
    /// The payload.
    pub payload: &'a str,
    /// A chosen event id, else a random one.
    pub event_id: Option<&'a str>,
    /// `CFG:` path to send along.
    pub config: Option<&'a str>,
}

/// Fills in a complete record as libtelemetry would: machine metadata,
/// current time, and `machine_id` (a placeholder the daemon replaces).
pub fn build_record(r: &NewRecord<'_>, metadata: &HostMetadata, machine_id: &str) -> Record {
    let mut h = Headers::default();
    h.set(Header::RecordFormatVersion, RECORD_FORMAT_VERSION);
    h.set(Header::Classification, r.classification);
    h.set(Header::Severity, r.severity.to_string());
    h.set(Header::MachineId, machine_id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    h.set(Header::CreationTimestamp, now.to_string());
    metadata.apply(&mut h);
    h.set(Header::PayloadFormatVersion, r.payload_version.to_string());
    h.set(
        Header::EventId,
        r.event_id.map_or_else(random_id, str::to_owned),
    );
    Record {
        config: r.config.map(str::to_owned),
        headers: h,
        payload: r.payload.to_owned(),
    }
}

/// Why a frame could not be handed to the daemon.
#[derive(Debug, Error)]
pub enum SendError {
    /// Nothing listens at the socket path.
    #[error("cannot connect to {path}: {source} (is telemd running?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon stopped reading.
    #[error("cannot send to {path}: {source}")]
    Send {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// [`build_record`] with this machine's metadata and machine id as
/// `config` locates them (the placeholder id when there is none yet): what
/// a native client on this machine sends.
pub fn build_local_record(r: &NewRecord<'_>, config: &crate::config::Config) -> Record {
    let metadata = HostMetadata::collect(&config.host.metadata_root);
    let machine_id = crate::machine_id::MachineIdStore::new(
        &config.host.state_dir,
        &config.host.static_machine_id_file,
    )
    .peek()
    .unwrap_or_else(|| "FFFFFFFF".into());
    build_record(r, &metadata, &machine_id)
}

/// Sends one record over the native socket at `socket`.
pub fn send_record(socket: &Path, record: &Record, timeout: Duration) -> Result<(), SendError> {
    send_frame(socket, &encode_frame(record), timeout)
}

/// Sends raw frame bytes in one connection, with libtelemetry's timeouts
/// (connect waits at most `timeout` for a backlog slot).
pub fn send_frame(socket: &Path, frame: &[u8], timeout: Duration) -> Result<(), SendError> {
    let path = socket.display().to_string();
    let connect = || -> io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        // SO_SNDTIMEO also bounds how long connect() waits on a full backlog.
        s.set_write_timeout(Some(timeout))?;
        s.connect(&socket2::SockAddr::unix(socket)?)?;
        Ok(s)
    };
    let mut s = connect().map_err(|source| SendError::Connect {
        path: path.clone(),
        source,
    })?;
    s.write_all(frame)
        .and_then(|()| s.flush())
        .map_err(|source| SendError::Send { path, source })?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}
