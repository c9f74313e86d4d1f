//! Why a probe file was not loaded, or an admin's request about a probe
//! was not carried out.

use std::path::PathBuf;

use telem_core::provenance;
use telem_sandbox::CallError;

/// Why a probe file was not loaded, or an admin's request about a probe
/// was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read.
    #[error("{}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Over `max_component_bytes`, by its size on disk.
    #[error("{}: {size} bytes is over max_component_bytes ({cap}); not compiled", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The sandbox refused it.
    #[error(transparent)]
    Load(#[from] telem_sandbox::LoadError),
    /// Its ownership, digest or signature says it is not the admin's: it
    /// was neither compiled nor asked to describe itself.
    #[error("{}: refused", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        refusal: provenance::FileRefusal,
    },
    /// Its name is not its file's: grants are keyed by name.
    #[error("{}: the component calls itself {name}, but a probe's file must be named after it ({name}.wasm); not loaded", path.display())]
    NameNotFile {
        /// The file.
        path: PathBuf,
        /// The name it claims.
        name: String,
    },
    /// `telemctl probe disable` turned it off.
    #[error("{}: probe {name} is disabled (telemctl probe enable {name} turns it back on)", path.display())]
    DisabledByAdmin {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
    },
    /// `[probes.NAME] enabled = false`.
    #[error("{}: probe {name} is disabled by [probes.{name}] enabled = false", path.display())]
    DisabledByConfig {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
    },
    /// Another file holds a probe of that name.
    #[error("{}: a probe named {name} is already loaded from {}", path.display(), other.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The probe.
        name: String,
        /// The file already loaded.
        other: PathBuf,
    },
    /// No loaded probe has that name.
    #[error("no probe named {0} is loaded")]
    NotLoaded(String),
    /// Enabled, but nothing by that name loaded.
    #[error("probe {0} is enabled but no component by that name loaded (see the log)")]
    EnabledNotLoaded(String),
    /// Quarantined until reload.
    #[error("probe {name} is quarantined ({why}); run `telemctl probe reload` first")]
    Quarantined {
        /// The probe.
        name: String,
        /// Why.
        why: String,
    },
    /// Its private state could not be cleared.
    #[error("cannot clear the state of probe {name}")]
    Reset {
        /// The probe.
        name: String,
        /// Why.
        #[source]
        source: telem_sandbox::probe_state_file::StateError,
    },
    /// The disabled-probes file could not be written.
    #[error("cannot record the choice in {}", path.display())]
    RecordChoice {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A scan (compiling, say) held the probes for longer than
    /// [`FIRST_SCAN_WAIT`].
    #[error("the probes are being loaded (a scan is under way); try again")]
    Busy,
}
