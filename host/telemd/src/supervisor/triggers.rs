//! Running the probes: their triggers, source batches handed over until
//! taken, retries with growing delays, quarantine after repeated failures.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::sources::{BatchConsumer, CursorFile, SourceOptions};
use telem_core::control::ProbeState;
use telem_core::error_text::Chain;
use telem_sandbox::{CallError, Event, ExtraDir, LoadedProbe, Source, Trigger};

use super::*;

impl ProbeManager {
    /// One supervised call: counts it, logs a failure with the probe's name,
    /// and quarantines the probe after [`QUARANTINE_AFTER`] failures in a row.
    pub(super) async fn call(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
    ) -> Result<(), CallError> {
        let sink = telem_sandbox::Sink::Spool(self.ingest.clone());
        self.call_with(probe, state, event, extra, sink, Quarantine::Counts)
            .await
    }

    pub(super) async fn call_with(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
        sink: telem_sandbox::Sink,
        quarantine: Quarantine,
    ) -> Result<(), CallError> {
        let result = {
            let (sandbox, probe, extra) = (self.sandbox.clone(), probe.clone(), extra.to_vec());
            self.on_probe_runtime(async move { sandbox.run(&probe, sink, event, &extra).await })
                .await
                .unwrap_or_else(Err)
        };
        let mut st = probe.stats.lock().expect("stats lock");
        st.runs += 1;
        st.last_run = Some(unix_now());
        match &result {
            Ok(()) => st.failures_in_a_row = 0,
            Err(e) => {
                match e {
                    CallError::Timeout(_) => st.timeouts += 1,
                    CallError::Trap(_) => st.traps += 1,
                    _ => {}
                }
                st.last_error = Some(Chain(e).to_string());
                // The host's own limits (the hourly budget, a full spool)
                // are not the probe's failure, whatever it made of them.
                if e.after_host_refusal() {
                    warn!(probe = %probe.name, "probe call failed after the host did not take its record (the host's limit, not the probe's failure): {}", Chain(e));
                    return result;
                }
                if quarantine == Quarantine::Exempt {
                    warn!(probe = %probe.name, "probe call failed on its input (not counted toward quarantine): {}", Chain(e));
                    return result;
                }
                st.failures_in_a_row += 1;
                warn!(probe = %probe.name, failures_in_a_row = st.failures_in_a_row, "probe call failed: {}", Chain(e));
                if st.failures_in_a_row >= QUARANTINE_AFTER {
                    let why = format!(
                        "{} failures in a row, last: {}",
                        st.failures_in_a_row,
                        Chain(e)
                    );
                    // One of a probe's locks at a time: `list` reads the
                    // state and then the counters.
                    drop(st);
                    warn!(probe = %probe.name, "probe quarantined until reload: {why}");
                    *state.lock().expect("state lock") = ProbeState::Quarantined(why);
                }
            }
        }
        result
    }
}

/// Whether the probe is quarantined (its triggers and sources stop).
fn quarantined(state: &Mutex<ProbeState>) -> bool {
    matches!(
        *state.lock().expect("state lock"),
        ProbeState::Quarantined(_)
    )
}

/// How long one source batch's failures after the host's own refusals
/// go uncounted: the hourly budget's window and a little more, after
/// which the budget was whole again and the failure is the probe's.
const HOST_REFUSAL_PATIENCE: Duration = Duration::from_secs(3900);

/// Whether a failed call counts toward quarantine. Crash calls do not: a
/// hostile core makes the probe fail through no fault of its own, the
/// daemon records that crash itself, and real crashes must not then wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Quarantine {
    Counts,
    Exempt,
}

/// Runs a probe's triggers and event sources side by side until the probe
/// is stopped (its slot dropped: every part with it).
pub(super) async fn drive(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
    cursors: Arc<CursorFile>,
) {
    let mut parts = tokio::task::JoinSet::new();
    // Directories its `files` sources found missing, said once for all.
    let missing = Arc::new(Mutex::new(std::collections::HashSet::new()));
    parts.spawn(drive_triggers(mgr.clone(), probe.clone(), state.clone()));
    for source in &probe.manifest.sources {
        match source {
            Source::KernelLog(limits) if probe.grant.kernel_log => {
                parts.spawn(crate::sources::kmsg::drive(
                    mgr.clone(),
                    probe.clone(),
                    state.clone(),
                    cursors.clone(),
                    *limits,
                ));
            }
            Source::Files(f) => {
                let granted = probe
                    .grant
                    .files
                    .iter()
                    .find(|w| w.dir == Path::new(&f.dir) && w.pattern == f.pattern);
                if let Some(w) = granted {
                    parts.spawn(crate::sources::files::drive(
                        mgr.clone(),
                        probe.clone(),
                        state.clone(),
                        cursors.clone(),
                        w.clone(),
                        f.limits,
                        missing.clone(),
                    ));
                }
            }
            Source::Journal(j) if probe.grant.journal.is_some() => {
                parts.spawn(crate::sources::systemd_journal::drive(
                    mgr.clone(),
                    probe.clone(),
                    state.clone(),
                    cursors.clone(),
                    j.clone(),
                ));
            }
            Source::KernelLog(_) | Source::Journal(_) => {}
        }
    }
    while parts.join_next().await.is_some() {}
}

/// Fires a probe's triggers: on start, then every interval plus a random
/// splay. A failed call is retried with doubling delays until it succeeds
/// or the probe is quarantined.
pub(super) async fn drive_triggers(
    mgr: Arc<ProbeManager>,
    probe: Arc<LoadedProbe>,
    state: Arc<Mutex<ProbeState>>,
) {
    let on_start = probe
        .manifest
        .triggers
        .iter()
        .any(|t| matches!(t, Trigger::OnStart));
    let interval = probe.grant.interval_secs.map(Duration::from_secs);
    if on_start && !supervised(&mgr, &probe, &state, Event::Start).await {
        return;
    }
    let Some(every) = interval else { return };
    loop {
        let splay_cap = (every / 10).min(MAX_SPLAY);
        let splay = Duration::from_millis(rand::random_range(0..=splay_cap.as_millis() as u64));
        probe.stats.lock().expect("stats lock").next_run =
            Some(unix_now() + (every + splay).as_secs());
        tokio::time::sleep(every + splay).await;
        // Running (and retrying) now; none once quarantined.
        probe.stats.lock().expect("stats lock").next_run = None;
        if !supervised(&mgr, &probe, &state, Event::Timer).await {
            return;
        }
    }
}

/// Calls until success (true) or quarantine (false).
pub(super) async fn supervised(
    mgr: &ProbeManager,
    probe: &Arc<LoadedProbe>,
    state: &Mutex<ProbeState>,
    event: Event,
) -> bool {
    let mut delay = RETRY_BASE;
    loop {
        // Quarantined meanwhile (by a source batch, or manual runs): the
        // triggers stop until a reload.
        if quarantined(state) {
            return false;
        }
        match mgr.call(probe, state, event.clone(), &[]).await {
            Ok(()) => return true,
            // Trying again before the budget refills or the spool drains
            // only fails again: the next trigger tries.
            Err(e) if e.after_host_refusal() => return true,
            Err(_) => {}
        }
        if quarantined(state) {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// The source drivers' view of the manager (`sources/`).
impl BatchConsumer for ProbeManager {
    fn source_options(&self) -> &SourceOptions {
        &self.sources
    }

    /// Why a probe's source directory may not be read now, if it may
    /// not: checked like a granted path, before every scan (so not even a
    /// file name is shown): never into the daemon's own directories, and,
    /// when the safe set granted it (no admin's `read_paths`), still in
    /// the safe set once resolved, relative to `sources_root`.
    fn source_dir_refusal(&self, probe: &LoadedProbe, dir: &Path) -> Option<String> {
        let real = dir.canonicalize().ok()?;
        if let Some(why) = telem_core::grants::never_grantable(&real, self.sandbox.host_rules()) {
            return Some(format!("it resolves to {}: {why}", real.display()));
        }
        if probe.grant.read_paths_by_admin {
            return None;
        }
        let root = self
            .sources
            .sources_root
            .canonicalize()
            .unwrap_or_else(|_| self.sources.sources_root.clone());
        let logical = real
            .strip_prefix(&root)
            .map(|rest| Path::new("/").join(rest))
            .ok();
        match logical {
            Some(l) if telem_core::grants::is_safe_path(&l) => None,
            _ => Some(format!(
                "it resolves to {}, outside the safe set it was granted from",
                real.display()
            )),
        }
    }

    /// Hands a source batch to the probe until it takes it (true) or is
    /// quarantined (false). Its records are held until the call returns
    /// `ok`, so a failed try reports nothing and the next try starts clean.
    async fn deliver_batch(
        &self,
        probe: &Arc<LoadedProbe>,
        state: &Mutex<ProbeState>,
        event: Event,
        extra: &[ExtraDir],
    ) -> bool {
        let mut delay = RETRY_BASE;
        // This batch's own failures: a probe whose timer calls succeed in
        // between (which reset its count) is quarantined all the same when
        // one batch keeps failing, so its source does not stall unseen.
        let mut failures = 0;
        // When this batch first failed after the host refused one of its
        // records for the host's reasons: such failures are not counted
        // for a full budget window, then they are (a probe that spends its
        // budget and fails the batch every time must not stall its source
        // unseen forever).
        let mut held_back_since: Option<std::time::Instant> = None;
        loop {
            if quarantined(state) {
                return false;
            }
            let held = Arc::new(Mutex::new(Vec::new()));
            let sink = telem_sandbox::Sink::Staged(self.ingest.clone(), held);
            let r = self
                .call_with(probe, state, event.clone(), extra, sink, Quarantine::Counts)
                .await;
            let Err(e) = r else { return true };
            // Handed again after the delay, not counted: the host's limit
            // held it back, not the probe (for one budget window).
            let excused = e.after_host_refusal()
                && held_back_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    < HOST_REFUSAL_PATIENCE;
            if !excused {
                if e.after_host_refusal() && failures == 0 {
                    warn!(probe = %probe.name, "the same source batch still fails after the host's refusals, a budget window on: counted toward quarantine from now");
                }
                failures += 1;
            }
            if failures >= QUARANTINE_AFTER {
                if !quarantined(state) {
                    let why = format!(
                        "the same source batch failed {failures} times, last: {}",
                        Chain(&e)
                    );
                    warn!(probe = %probe.name, "probe quarantined until reload: {why}");
                    *state.lock().expect("state lock") = ProbeState::Quarantined(why);
                }
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BATCH_RETRY);
        }
    }
}
