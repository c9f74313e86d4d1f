//! Where probe work runs: a runtime of its own, apart from the one that
//! serves the native socket, the spool and the control socket. It has one
//! worker thread (fewer than this kind of machine's two cores) and a
//! bounded blocking pool, and every one of its threads runs at a lower
//! CPU priority (nice 10: a tenth of the weight of the daemon's threads). Probe calls, their WASI file I/O, compiling
//! components and the crash queue run here, so ten probes spinning to
//! their deadlines or growing their memory take only the CPU that ingest
//! and delivery leave: a record of a native probe is read and spooled at
//! the same pace as on a quiet machine. Nice is a weight, not a ban: on a
//! busy machine a probe is slowed. On a virtual machine that is not
//! enough, so calls also make way while the daemon is busy
//! (`telem_sandbox::host_pressure`), and that time is not the probe's.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::{Handle, Runtime};
use tracing::warn;

/// The nice value of every probe thread: lower than the daemon's other
/// threads (a tenth of the weight of a nice-0 thread), not the lowest. At
/// 19 a probe gets 1.5% of a core beside any busy process (a compile on a
/// workstation, other daemons), and a call that needs a tenth of a
/// second of CPU then takes seven of its ten seconds.
pub const PROBE_NICE: i32 = 10;

/// Blocking threads for probe work (WASI file I/O, compiling, state
/// commits): a call dropped at its deadline can leave a blocking read
/// behind, and those must queue, not pile up.
pub const PROBE_BLOCKING_THREADS: usize = 32;

/// The probes' runtime; shut down (without waiting for its threads) when
/// dropped.
#[derive(Debug)]
pub struct ProbeRuntime {
    runtime: Option<Runtime>,
}

impl ProbeRuntime {
    /// Starts the runtime's threads.
    pub fn start() -> io::Result<ProbeRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(PROBE_BLOCKING_THREADS)
            .thread_name("probe")
            .on_thread_start(lower_this_thread)
            .enable_all()
            .build()?;
        Ok(ProbeRuntime {
            runtime: Some(runtime),
        })
    }

    /// Where to spawn probe work.
    pub fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("present until dropped")
            .handle()
            .clone()
    }
}

impl Drop for ProbeRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking threads, which is not
        // allowed from inside another runtime; calls still running were
        // given their chance by the daemon's shutdown already.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Gives the calling thread the probes' lower CPU priority (per thread on Linux:
/// `setpriority` on its thread id). Said once if it cannot.
fn lower_this_thread() {
    static SAID: AtomicBool = AtomicBool::new(false);
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), PROBE_NICE) {
        if !SAID.swap(true, Ordering::Relaxed) {
            warn!("cannot lower the probe threads' priority: {e}; probes compete with ingest");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        let tid = rustix::thread::gettid();
        rustix::process::getpriority_process(Some(tid)).unwrap()
    }

    #[test]
    fn probe_work_runs_at_the_lower_priority_and_the_callers_thread_keeps_its_own() {
        let before = nice_of_this_thread();
        let rt = ProbeRuntime::start().unwrap();
        let handle = rt.handle();
        let worker = handle.block_on(async { handle_nice().await });
        assert_eq!(worker, PROBE_NICE, "a worker thread");
        let blocking = handle.block_on(async {
            tokio::task::spawn_blocking(nice_of_this_thread)
                .await
                .unwrap()
        });
        assert_eq!(blocking, PROBE_NICE, "a blocking thread");
        assert_eq!(nice_of_this_thread(), before);
        drop(rt);
    }

    async fn handle_nice() -> i32 {
        tokio::spawn(async { nice_of_this_thread() }).await.unwrap()
    }
}
