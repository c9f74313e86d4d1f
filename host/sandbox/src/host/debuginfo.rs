//! The `debuginfo` interface (contract 0.2.1): a crash call asks for the
//! debug file (or the binary) of a build id, the host's
//! [`DebuginfoSource`] (the daemon's debuginfod client and cache) finds
//! it, and the call is shown that one file in a private directory
//! preopened at [`DEBUGINFO_GUEST_DIR`] for this call only.
//!
//! The probe never talks to a server. Its lookups share a bounded time
//! (the source's, at most half the call's timeout) and are bounded in
//! number, so a server that is down, slow, huge or wrong costs the call
//! that time at most, and leaves it the other half. (A server that sends
//! the right build id with hostile DWARF is as hostile as a debug file on
//! disk: the probe's own limits hold it.)

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::current::telemetrics::probe::debuginfo::{Host, Kind};
use crate::call_state::CallState;

/// Where a crash call sees the files it was given.
pub const DEBUGINFO_GUEST_DIR: &str = "/var/cache/telemd-debuginfo";
/// Lookups one call may make.
pub const MAX_LOOKUPS_PER_CALL: usize = 64;
/// Longest build id asked for.
pub const MAX_BUILD_ID: usize = 64;

/// What is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DebugKind {
    /// The separate debug file.
    Debuginfo,
    /// The binary itself.
    Executable,
}

impl DebugKind {
    /// The name debuginfod's API gives it (`/buildid/ID/debuginfo`).
    pub fn api_name(self) -> &'static str {
        match self {
            DebugKind::Debuginfo => "debuginfo",
            DebugKind::Executable => "executable",
        }
    }
}

/// Where the host finds debug files: the daemon's debuginfod client.
pub trait DebuginfoSource: Send + Sync + std::fmt::Debug {
    /// How long one crash call's lookups may take together.
    fn budget(&self) -> Duration;

    /// A local file holding `kind` of `build_id`, checked to carry that
    /// build id, found within `within`; none otherwise.
    fn find<'a>(
        &'a self,
        build_id: &'a [u8],
        kind: DebugKind,
        within: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<PathBuf>> + Send + 'a>>;
}

/// One crash call's lookups and the directory it is shown them in.
pub(crate) struct DebuginfoCall {
    source: Arc<dyn DebuginfoSource>,
    view: PathBuf,
    deadline: Instant,
    asked: usize,
}

impl DebuginfoCall {
    /// Lookups for a call whose files go into `view` (preopened at
    /// [`DEBUGINFO_GUEST_DIR`]), ending by `deadline`.
    pub(crate) fn new(
        source: Arc<dyn DebuginfoSource>,
        view: &Path,
        deadline: Instant,
    ) -> DebuginfoCall {
        DebuginfoCall {
            source,
            view: view.to_owned(),
            deadline,
            asked: 0,
        }
    }
}

/// A crash call's private directory of fetched files; removed on drop.
#[derive(Debug)]
pub(crate) struct DebuginfoView(pub(crate) PathBuf);

impl DebuginfoView {
    /// A fresh directory under `scratch` for `probe`'s call.
    pub(crate) fn create(scratch: &Path, probe: &str) -> std::io::Result<DebuginfoView> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scratch)?;
        let dir = scratch.join(format!(
            "{probe}-debuginfo-{}",
            telem_core::record::random_id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(DebuginfoView(dir))
    }
}

impl Drop for DebuginfoView {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("cannot remove the debuginfo view {}: {e}", self.0.display());
        }
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Host for CallState {
    async fn find(&mut self, build_id: Vec<u8>, kind: Kind) -> Option<String> {
        let call = self.debuginfo.as_mut()?;
        if build_id.is_empty()
            || build_id.len() > MAX_BUILD_ID
            || call.asked >= MAX_LOOKUPS_PER_CALL
        {
            return None;
        }
        call.asked += 1;
        let kind = match kind {
            Kind::Debuginfo => DebugKind::Debuginfo,
            Kind::Executable => DebugKind::Executable,
        };
        let name = format!("{}.{}", hex(&build_id), kind.api_name());
        let shown = call.view.join(&name);
        let guest = format!("{DEBUGINFO_GUEST_DIR}/{name}");
        if shown.exists() {
            return Some(guest);
        }
        let within = call.deadline.saturating_duration_since(Instant::now());
        if within.is_zero() {
            return None;
        }
        let found = call.source.find(&build_id, kind, within).await?;
        // A hard link (the cache may drop its name while the call reads),
        // never a copy of up to the cache's size on the probe's time: the
        // cache and the views are both under `state_dir`.
        std::fs::hard_link(&found, &shown).ok()?;
        Some(guest)
    }
}
