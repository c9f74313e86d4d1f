//! Which config the library follows, as the seed's library chose it: the
//! file named with `tm_set_config_file`, else the first of the default
//! paths (`/etc/telemetrics/...`, then the distribution's defaults) this
//! process can read, else the built-in defaults.
//!
//! The library runs inside other people's programs, some privileged, and
//! programs pass `tm_set_config_file` whatever their users gave them. So a
//! named file decides only the socket (as in the seed), unless root owns
//! it and no one else can write it: only then does it also move the
//! opt-in file and the root host metadata is read from. In a set-uid or
//! set-gid program an untrusted named file decides nothing at all.
//!
//! The config is read on first use and kept; naming a file makes the next
//! call read that one. It is read without holding the lock, so a `fork`
//! in another thread never leaves the child waiting on it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use telem_core::config::{Config, ConfigError, DEFAULT_CONFIG_PATHS};

use crate::error::TmError;

/// The config in effect, as far as the library uses it.
#[derive(Debug)]
pub(crate) struct InEffect {
    /// The socket records are sent to.
    pub socket_path: PathBuf,
    /// Nothing is sent unless this file exists.
    pub opt_in_file: PathBuf,
    /// Where host metadata is read (`/` but in tests).
    pub metadata_root: PathBuf,
    /// The file named by the program, for the `CFG:` prefix.
    pub named: Option<String>,
}

/// A config as read: kept and shared, error or not.
type Read = Result<Arc<InEffect>, Arc<ConfigError>>;

#[derive(Default)]
struct Settings {
    /// The file named with `tm_set_config_file`, as given (it goes on the
    /// wire in the `CFG:` prefix).
    named: Option<String>,
    /// What was read, for which named file; `Err` keeps a config that
    /// could not be read (each send says so).
    loaded: Option<(Option<String>, Read)>,
}

static SETTINGS: Mutex<Settings> = Mutex::new(Settings {
    named: None,
    loaded: None,
});

fn settings() -> std::sync::MutexGuard<'static, Settings> {
    SETTINGS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Names the config file to use from now on. Checked as the seed checked
/// it: an absolute path to a regular file (symlinks followed). On error the
/// file in effect is unchanged.
pub(crate) fn name_config_file(path: &str) -> Result<(), TmError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(TmError::RelativeConfig(p.to_owned()));
    }
    let meta = std::fs::metadata(p).map_err(|source| TmError::ConfigPath {
        path: p.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(TmError::NotAFile(p.to_owned()));
    }
    settings().named = Some(path.to_owned());
    Ok(())
}

/// The config in effect, read on first use (and after a file is named).
pub(crate) fn in_effect() -> Result<Arc<InEffect>, TmError> {
    let named = {
        let s = settings();
        if let Some((for_named, result)) = &s.loaded {
            if *for_named == s.named {
                return result.clone().map_err(TmError::Config);
            }
        }
        s.named.clone()
    };
    // Read with the lock released.
    let result = read(named.as_deref()).map(Arc::new).map_err(Arc::new);
    let mut s = settings();
    if s.named == named {
        s.loaded = Some((named, result.clone()));
    }
    result.map_err(TmError::Config)
}

/// Reads the config: the named file (trusted or not), else the default
/// lookup.
fn read(named: Option<&str>) -> Result<InEffect, ConfigError> {
    let defaults = default_config()?;
    let base = |c: &Config, named: Option<&str>| InEffect {
        socket_path: c.socket.socket_path.clone(),
        opt_in_file: c.host.opt_in_file.clone(),
        metadata_root: c.host.metadata_root.clone(),
        named: named.map(str::to_owned),
    };
    let Some(path) = named else {
        return Ok(base(&defaults, None));
    };
    let p = Path::new(path);
    let trusted = std::fs::metadata(p)
        .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
        .unwrap_or(false);
    if !trusted && is_set_id() {
        // A set-id program's caller chose this file: it decides nothing.
        return Ok(base(&defaults, Some(path)));
    }
    let c = Config::load_file(defaults.clone(), p)?;
    if trusted {
        return Ok(base(&c, Some(path)));
    }
    Ok(InEffect {
        socket_path: c.socket.socket_path,
        ..base(&defaults, Some(path))
    })
}

/// The first default config file this process can read, parsed; the
/// built-in defaults when there is none. A file it may not read (the
/// daemon's own, mode 0600) is skipped, as the seed skipped it.
fn default_config() -> Result<Config, ConfigError> {
    for p in DEFAULT_CONFIG_PATHS {
        let p = Path::new(p);
        match std::fs::read_to_string(p) {
            Ok(text) => return Config::parse_str(Config::default(), &text, p),
            Err(_) => continue,
        }
    }
    Ok(Config::default())
}

/// Whether this is a set-uid or set-gid program run by someone else.
fn is_set_id() -> bool {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    getuid() != geteuid() || getgid() != getegid()
}

/// The opt-in file: the config's, or the default one when the config
/// cannot be read (`tm_is_opted_in` has no way to report an error).
pub(crate) fn opt_in_file() -> PathBuf {
    match in_effect() {
        Ok(e) => e.opt_in_file.clone(),
        Err(_) => Config::default().host.opt_in_file,
    }
}

/// Where host metadata is read when a record is created: the config's, or
/// `/` when the config cannot be read (creating a record does not depend
/// on the config, as in the seed; sending reports the config's error).
pub(crate) fn metadata_root() -> PathBuf {
    match in_effect() {
        Ok(e) => e.metadata_root.clone(),
        Err(_) => PathBuf::from("/"),
    }
}
