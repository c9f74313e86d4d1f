//! Which config file the library follows, as the seed's library chose it:
//! the file named with `tm_set_config_file`, else the first of the
//! project's default paths that exists (`/etc/telemetrics/...`, then the
//! distribution's defaults), else the built-in defaults. The config gives
//! the socket path, the opt-in file and the metadata root.
//!
//! The config is read once and kept, as the seed did; naming a file again
//! makes the next call read it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use telem_core::config::Config;

use crate::error::TmError;

#[derive(Default)]
struct Settings {
    /// The file named with `tm_set_config_file`, as given (it goes on the
    /// wire in the `CFG:` prefix).
    named: Option<String>,
    /// The config in effect, once read.
    loaded: Option<Arc<Config>>,
}

static SETTINGS: Mutex<Settings> = Mutex::new(Settings {
    named: None,
    loaded: None,
});

/// What a call needs of the config in effect.
pub(crate) struct InEffect {
    /// The config read.
    pub config: Arc<Config>,
    /// The file named by the program, for the `CFG:` prefix.
    pub named: Option<String>,
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
    let mut s = SETTINGS.lock().unwrap_or_else(PoisonError::into_inner);
    s.named = Some(path.to_owned());
    s.loaded = None;
    Ok(())
}

/// The config in effect, read on first use.
pub(crate) fn in_effect() -> Result<InEffect, TmError> {
    let mut s = SETTINGS.lock().unwrap_or_else(PoisonError::into_inner);
    let config = match &s.loaded {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(Config::load(
                Config::default(),
                s.named.as_deref().map(Path::new),
            )?);
            s.loaded = Some(c.clone());
            c
        }
    };
    Ok(InEffect {
        config,
        named: s.named.clone(),
    })
}

/// The opt-in file: the config's, or the default one when the config
/// cannot be read (`tm_is_opted_in` has no way to report an error).
pub(crate) fn opt_in_file() -> PathBuf {
    match in_effect() {
        Ok(e) => e.config.host.opt_in_file.clone(),
        Err(_) => Config::default().host.opt_in_file,
    }
}
