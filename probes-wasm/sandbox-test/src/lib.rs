//! A hostile-on-command probe for the sandbox tests: `telemctl probe run
//! sandbox-test -- COMMAND ARGS` makes it try one thing the sandbox must
//! allow or stop. Not shipped.
//!
//! Commands: `read PATH`, `list DIR`, `connect ADDR`, `spin`, `grow MIB`,
//! `send CLASSIFICATION`, `flood N`, `print BYTES`, `env`, `state`,
//! `sleep MS` (in a WASI host call, where the epoch cannot stop it),
//! `hold FILE N MS` (open FILE up to N times, keep every handle, log how
//! many opened, then sleep MS), `log N BYTES` (N log lines of BYTES each,
//! with an embedded newline that must not start a forged line),
//! `fill-state` (64 KiB values under new keys until the quota refuses one)
//! and `pollables N` (N clock pollables held and polled at once).

use std::sync::atomic::{AtomicU32, Ordering};

use telemetrics_probe_sdk::{
    export_probe, log, state, Event, Manifest, Probe, Record, Sent, Trigger,
};

struct SandboxTest;

static CALLS: AtomicU32 = AtomicU32::new(0);

fn report(payload: String) -> Result<(), String> {
    Record::new("org.example/test/result")
        .payload(payload)
        .send()?;
    Ok(())
}

impl Probe for SandboxTest {
    fn describe() -> Manifest {
        Manifest {
            name: "sandbox-test".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sandbox test probe (not shipped)".into(),
            classifications: vec!["org.example/test/*".into()],
            triggers: vec![Trigger::Manual],
            max_records_per_hour: 50,
            ..Default::default()
        }
    }

    fn handle(event: Event) -> Result<(), String> {
        let Event::Manual(args) = event else {
            return Ok(());
        };
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        match arg(0).as_str() {
            "read" => match std::fs::read_to_string(arg(1)) {
                Ok(text) => report(format!("read: {}", text.trim())),
                Err(e) => Err(format!("read failed: {e} ({})", arg(1))),
            },
            "list" => match std::fs::read_dir(arg(1)) {
                Ok(rd) => report(format!("list: {}", rd.count())),
                Err(e) => Err(format!("list failed: {e}")),
            },
            "connect" => match std::net::TcpStream::connect(arg(1)) {
                Ok(_) => report("connect: connected".into()),
                Err(e) => Err(format!("connect failed: {e}")),
            },
            "spin" => {
                log::info("spinning forever");
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "grow" => {
                let mib: usize = arg(1).parse().map_err(|_| "grow MIB")?;
                let mut v: Vec<u8> = Vec::new();
                v.try_reserve_exact(mib << 20)
                    .map_err(|e| format!("grow failed: {e}"))?;
                v.resize(mib << 20, 1);
                report(format!("grew: {} MiB", v.len() >> 20))
            }
            "send" => match Record::new(arg(1)).payload("sent").send() {
                Ok(Sent::Stored(_)) => Ok(()),
                Ok(other) => Err(format!("send failed: {other:?}")),
                Err(e) => Err(format!("send failed: {e}")),
            },
            "flood" => {
                let n: u32 = arg(1).parse().map_err(|_| "flood N")?;
                for i in 0..n {
                    // Deliberately an error on the host's own limit too:
                    // the host must not count it toward quarantine.
                    match Record::new("org.example/test/flood")
                        .payload(format!("flood {i}"))
                        .send()
                    {
                        Ok(Sent::Stored(_)) => {}
                        Ok(Sent::RateLimited) => {
                            return Err(format!("flood stopped after {i}: rate limited"))
                        }
                        Ok(Sent::NotKept(why)) => {
                            return Err(format!("flood stopped after {i}: not kept: {why}"))
                        }
                        Err(e) => return Err(format!("flood stopped after {i}: {e}")),
                    }
                }
                Ok(())
            }
            "print" => {
                let n: usize = arg(1).parse().map_err(|_| "print BYTES")?;
                print!("{}", "p".repeat(n));
                eprintln!("to stderr");
                Ok(())
            }
            "env" => report(format!(
                "env: {} vars, {} args",
                std::env::vars().count(),
                std::env::args().count()
            )),
            "state" => report(format!(
                "state: call {}",
                CALLS.fetch_add(1, Ordering::Relaxed) + 1
            )),
            "sleep" => {
                let ms: u64 = arg(1).parse().map_err(|_| "sleep MS")?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
                report(format!("slept {ms} ms"))
            }
            "hold" => {
                let n: usize = arg(2).parse().map_err(|_| "hold FILE N MS")?;
                let ms: u64 = arg(3).parse().map_err(|_| "hold FILE N MS")?;
                let mut held = Vec::new();
                let mut stopped = String::new();
                while held.len() < n {
                    match std::fs::File::open(arg(1)) {
                        Ok(f) => held.push(f),
                        Err(e) => {
                            stopped = format!(" (stopped: {e})");
                            break;
                        }
                    }
                }
                log::info(&format!("holding {} files{stopped}", held.len()));
                std::thread::sleep(std::time::Duration::from_millis(ms));
                report(format!("held {} files", held.len()))
            }
            "log" => {
                let n: usize = arg(1).parse().map_err(|_| "log N BYTES")?;
                let bytes: usize = arg(2).parse().map_err(|_| "log N BYTES")?;
                let line = format!("x\nFORGED {}", "y".repeat(bytes.saturating_sub(9)));
                for _ in 0..n {
                    log::warn(&line);
                }
                Ok(())
            }
            "fill-state" => {
                // Values of 64 KiB under new keys until the quota refuses.
                let value = vec![7u8; 64 << 10];
                let mut n = 0;
                loop {
                    match state::set(&format!("fill-{n}"), &value) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            log::info(&format!("state full after {n} values: {e:?}"));
                            return Ok(());
                        }
                    }
                }
            }
            "pollables" => {
                let n: usize = arg(1).parse().map_err(|_| "pollables N")?;
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(wasip2::clocks::monotonic_clock::subscribe_duration(
                        1_000_000_000,
                    ));
                }
                wasip2::io::poll::poll(&held.iter().collect::<Vec<_>>());
                report(format!("polled {} pollables", held.len()))
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

export_probe!(SandboxTest);
