//! Config reload (`systemctl reload telemd`, which runs `telemctl reload`,
//! or SIGHUP): the config is read again from where it came from and
//! applied in place, without dropping a connection or a spooled record. A
//! config that does not load, or whose delivery client cannot be built (a
//! missing key, a bad proxy), is refused whole and the one in force stays.
//!
//! What changes in place: the whole `delivery` part (server, format, TLS,
//! proxy, rate limits, expiry; the worker takes it between two spool
//! runs), and the probes' grants and trust (every probe is loaded again
//! under them). The rest (paths, sockets, the sandbox's caps) is named in
//! the log as waiting for a restart.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tracing::{error, info, warn};

use telem_core::config::{Config, ConfigError};
use telem_core::error_text::Chain;

use crate::delivery::post::PosterError;
use crate::delivery::NewDelivery;
use crate::supervisor::{ProbeError, ProbeManager, Trust};

/// Where the config came from, so a reload reads it the same way.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// `-f FILE`, or the default paths when `None`.
    Files(Option<PathBuf>),
    /// `--dev DIR`: the dev defaults under `dir`, with `extra` over them.
    Dev {
        /// The dev directory (canonical).
        dir: PathBuf,
        /// `-f FILE` given with `--dev`.
        extra: Option<PathBuf>,
    },
}

impl ConfigSource {
    /// Reads the config again.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::Files(path) => Config::load(Config::default(), path.as_deref()),
            ConfigSource::Dev { dir, extra } => match extra {
                Some(p) => Config::load_file(Config::dev(dir), p),
                None => Ok(Config::dev(dir)),
            },
        }
    }
}

/// Why a reload was refused (the config in force stays).
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new config does not load.
    #[error("the new config is refused; the one in force stays")]
    Config(#[source] ConfigError),
    /// Its delivery client cannot be built.
    #[error("the new config's delivery settings are refused; the config in force stays")]
    Delivery(#[source] PosterError),
    /// The delivery worker is gone (the daemon is stopping).
    #[error("the delivery worker has stopped")]
    DeliveryStopped,
    /// The probes could not be loaded again under the new grants (nothing
    /// changed).
    #[error(
        "the probes could not be loaded again under the new grants; the config in force stays"
    )]
    Probes(#[source] ProbeError),
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The delivery settings changed.
    pub delivery: bool,
    /// The probes' grants or trust changed (they were loaded again).
    pub probes: bool,
    /// Parts that changed but take effect only at a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Reloads the config; one reload at a time.
pub struct Reloader {
    source: ConfigSource,
    /// The config the daemon started with: what only a restart changes is
    /// compared with it.
    started: Config,
    /// The config in force.
    current: tokio::sync::Mutex<Config>,
    delivery: tokio::sync::mpsc::UnboundedSender<NewDelivery>,
    probes: Arc<ProbeManager>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The trust inputs of a config.
fn trust_of(c: &Config) -> (&str, bool, &std::path::Path) {
    (
        c.crash.service_user.as_str(),
        c.probes.require_signatures,
        &c.probes.trusted_keys_dir,
    )
}

/// The parts of `new` that differ from `old` and only a restart applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut parts = Vec::new();
    let mut probes = new.probes.clone();
    probes.probes = old.probes.probes.clone();
    probes.require_signatures = old.probes.require_signatures;
    probes.trusted_keys_dir = old.probes.trusted_keys_dir.clone();
    if probes != old.probes {
        parts.push("probes (directories, sources, the sandbox's caps)");
    }
    if new.spool != old.spool {
        parts.push("spool");
    }
    if new.journal != old.journal {
        parts.push("journal");
    }
    if new.delivery.record_retention_enabled != old.delivery.record_retention_enabled {
        parts.push("record_retention_enabled");
    }
    if new.socket != old.socket {
        parts.push("socket");
    }
    if new.host != old.host {
        parts.push("host (paths, control socket, metrics_listen)");
    }
    let mut crash = new.crash.clone();
    crash.service_user = old.crash.service_user.clone();
    if crash != old.crash {
        parts.push("crash");
    }
    parts
}

impl Reloader {
    /// A reloader for the daemon started with `config`, read from `source`.
    pub fn new(
        source: ConfigSource,
        config: Config,
        delivery: tokio::sync::mpsc::UnboundedSender<NewDelivery>,
        probes: Arc<ProbeManager>,
    ) -> Reloader {
        Reloader {
            source,
            started: config.clone(),
            current: tokio::sync::Mutex::new(config),
            delivery,
            probes,
        }
    }

    /// Reads the config again and applies it, telling systemd
    /// (`RELOADING=1`, then `READY=1`) and the log how it went.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut current = self.current.lock().await;
        crate::systemd::notify_reloading();
        info!("reloading the config");
        let result = self.apply(&mut current).await;
        crate::systemd::notify_ready();
        match &result {
            Ok(r) => {
                info!(delivery = r.delivery, probes = r.probes, "config reloaded");
                if !r.restart_needed.is_empty() {
                    warn!(
                        "config reloaded; changes to {} take effect at the next restart",
                        r.restart_needed.join(", ")
                    );
                }
            }
            Err(e) => error!("config reload refused: {}", Chain(e)),
        }
        result
    }

    /// All or nothing: every check first (the config loads, its delivery
    /// client builds), then the probes (which may find the scan lock
    /// held: then nothing has changed), then delivery, which cannot fail
    /// but by the worker being gone at shutdown.
    async fn apply(&self, current: &mut Config) -> Result<Reloaded, ReloadError> {
        let new = self.source.load().map_err(ReloadError::Config)?;
        for w in &new.warnings {
            warn!("config: {w}");
        }
        // Built on every reload, changed or not: a certificate, key or CA
        // bundle renewed at the same path is read again.
        let checked = NewDelivery::check(new.delivery.clone()).map_err(ReloadError::Delivery)?;
        let mut done = Reloaded {
            restart_needed: restart_needed(&self.started, &new),
            delivery: new.delivery != current.delivery,
            ..Default::default()
        };
        if new.probes.probes != current.probes.probes || trust_of(&new) != trust_of(current) {
            self.probes
                .reconfigure(new.probes.probes.clone(), Trust::for_config(&new))
                .await
                .map_err(ReloadError::Probes)?;
            done.probes = true;
        }
        self.delivery
            .send(checked)
            .map_err(|_| ReloadError::DeliveryStopped)?;
        *current = new;
        Ok(done)
    }
}
