//! The engine's own tests: what a call's store may use (memory across
//! all its instances) and how a call makes way for a busy host.

use super::*;
use crate::limits;

/// A component of `instances` core instances, each with one memory of
/// `pages` 64 KiB pages.
fn many_memories(instances: usize, pages: u32) -> Vec<u8> {
    let mut text = format!("(component\n (core module $m (memory {pages}))\n");
    for i in 0..instances {
        text.push_str(&format!(" (core instance $i{i} (instantiate $m))\n"));
    }
    text.push(')');
    wat::parse_str(&text).unwrap()
}

async fn instantiate(sb: &Sandbox, bytes: &[u8], budget: usize) -> (wasmtime::Result<()>, usize) {
    let component = wasmtime::component::Component::new(&sb.engine, bytes).unwrap();
    let state = CallState::new("t".into(), WasiCtxBuilder::new().build(), budget, None);
    let mut store = sb.store(state, 2000, &MadeWay::default());
    let r = sb
        .linker
        .instantiate_async(&mut store, &component)
        .await
        .map(|_| ());
    (r, store.data().budget.memory_used())
}

/// Spins in a store of `sb` with a 300 ms deadline while `busy_for`
/// the host marks itself busy; returns the wall time the call took
/// and the time it made way.
async fn spin_beside_a_busy_host(busy_for: Duration) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let options = SandboxOptions::new(&dir.path().join("cache"));
    let pressure = options.pressure.clone();
    let sb = Sandbox::with_options(options).unwrap();
    let wasm = wat::parse_str(r#"(module (func (export "spin") (loop br 0)))"#).unwrap();
    let module = wasmtime::Module::new(&sb.engine, wasm).unwrap();
    let made_way = MadeWay::default();
    let state = CallState::new("t".into(), WasiCtxBuilder::new().build(), 16 << 20, None);
    let mut store = sb.store(state, 300, &made_way);
    let instance = wasmtime::Instance::new_async(&mut store, &module, &[])
        .await
        .unwrap();
    let spin = instance
        .get_typed_func::<(), ()>(&mut store, "spin")
        .unwrap();
    let marking = tokio::spawn(async move {
        let until = Instant::now() + busy_for;
        while Instant::now() < until {
            pressure.mark(crate::host_pressure::BUSY_RECORDS);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let t = Instant::now();
    let r = under_deadline(
        Duration::from_millis(300),
        &made_way,
        spin.call_async(&mut store, ()),
    )
    .await;
    let took = t.elapsed();
    marking.abort();
    let e = r.unwrap_err();
    assert!(e.downcast_ref::<DeadlineExceeded>().is_some(), "{e:#}");
    (took, made_way.total())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_pauses_while_the_host_is_busy_and_the_pause_is_not_its_time() {
    let (took, made_way) = spin_beside_a_busy_host(Duration::from_secs(1)).await;
    assert!(
        took >= Duration::from_secs(1),
        "the call was stopped after {took:?}: the host's time counted as the probe's"
    );
    assert!(made_way >= Duration::from_millis(600), "{made_way:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_quiet_host_a_call_runs_its_whole_time_at_once() {
    let (took, made_way) = spin_beside_a_busy_host(Duration::ZERO).await;
    assert_eq!(made_way, Duration::ZERO);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn all_memories_of_a_store_share_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(&dir.path().join("cache")).unwrap();
    // 60 instances of 16 MiB each under a 16 MiB budget: the second fails.
    let (r, used) = instantiate(&sb, &many_memories(60, 256), 16 << 20).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("memory budget of 16777216 bytes exceeded"),
        "{e}"
    );
    assert_eq!(used, 16 << 20);
    // Small memories: the count of memories is capped too.
    let (r, used) = instantiate(&sb, &many_memories(60, 1), 16 << 20).await;
    assert!(r.is_err());
    assert_eq!(used, limits::MAX_MEMORIES * (64 << 10));
    // Within both caps it instantiates.
    let (r, _) = instantiate(&sb, &many_memories(2, 16), 16 << 20).await;
    r.unwrap();
}
