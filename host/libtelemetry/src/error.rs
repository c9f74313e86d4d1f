//! Why a call failed, and the errno value the C caller is answered with.

use std::io;
use std::os::raw::c_int;
use std::path::PathBuf;

use telem_core::config::ConfigError;
use telem_core::native_client::SendError;
use telem_core::record::RecordError;
use thiserror::Error;

/// Everything a `tm_*` call can fail on. The C side only sees
/// [`TmError::errno`]; the Rust tests see the cause.
#[derive(Debug, Error)]
pub enum TmError {
    /// A pointer the call needs is NULL.
    #[error("{what} is NULL")]
    Null {
        /// The argument.
        what: &'static str,
    },
    /// The handle was not made by `tm_create_record`, or was freed: it is
    /// never dereferenced.
    #[error("not a record from tm_create_record, or one already freed")]
    UnknownRecord,
    /// A string has no terminating NUL within its limit.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// The argument.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
    /// A string is not UTF-8 (every field of a record is ASCII).
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// The argument.
        what: &'static str,
        /// Where it stops being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A field breaks the record rules `telemd` enforces.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `tm_set_config_file` was given a relative path.
    #[error("config file {0:?} is not an absolute path")]
    RelativeConfig(PathBuf),
    /// `tm_set_config_file` was given something that is not a regular file.
    #[error("config file {0:?} is not a regular file")]
    NotAFile(PathBuf),
    /// `tm_set_config_file` could not look at the file.
    #[error("config file {path:?}")]
    ConfigPath {
        /// The path as given.
        path: PathBuf,
        /// What `stat` said.
        #[source]
        source: io::Error,
    },
    /// The config file in effect cannot be read or has an error (kept
    /// and shared: every send until a file is named says so).
    #[error(transparent)]
    Config(std::sync::Arc<ConfigError>),
    /// Telemetry is not opted in on this machine.
    #[error("not opted in: {0:?} does not exist")]
    NotOptedIn(PathBuf),
    /// The daemon could not be reached or did not take the record.
    #[error(transparent)]
    Send(#[from] SendError),
    /// An allocation the call needs failed.
    #[error("out of memory")]
    NoMemory,
    /// A bug in the library: the call panicked, and the panic stopped at
    /// the C boundary.
    #[error("internal error in libtelemetry")]
    Panic,
}

impl TmError {
    /// The (positive) errno value `-errno` is returned for; the seed's
    /// header promises "a negative errno-style value on error".
    pub fn errno(&self) -> c_int {
        match self {
            TmError::Null { .. }
            | TmError::UnknownRecord
            | TmError::NotUtf8 { .. }
            | TmError::Record(_)
            | TmError::RelativeConfig(_)
            | TmError::NotAFile(_)
            | TmError::Config(_)
            | TmError::TooLong { .. }
            | TmError::Panic => libc::EINVAL,
            TmError::ConfigPath { source, .. } => os_errno(source),
            TmError::NotOptedIn(_) => libc::ECONNREFUSED,
            // A socket path too long for sun_path, and the like.
            TmError::Send(SendError::Connect { source, .. })
                if source.kind() == io::ErrorKind::InvalidInput =>
            {
                libc::EINVAL
            }
            // A full backlog: connect waited out its timeout.
            TmError::Send(SendError::Connect { source, .. })
                if source.kind() == io::ErrorKind::WouldBlock =>
            {
                libc::ETIMEDOUT
            }
            TmError::Send(SendError::Connect { source, .. })
            | TmError::Send(SendError::Send { source, .. }) => os_errno(source),
            TmError::Send(SendError::TimedOut { .. }) => libc::ETIMEDOUT,
            TmError::NoMemory => libc::ENOMEM,
        }
    }
}

/// The OS's own errno for an I/O error, `EIO` for one that has none.
fn os_errno(e: &io::Error) -> c_int {
    e.raw_os_error().filter(|&n| n > 0).unwrap_or(libc::EIO)
}
