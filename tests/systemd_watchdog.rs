//! systemd's watchdog: with `WATCHDOG_USEC` set, `telemd` sends
//! `WATCHDOG=1` to `NOTIFY_SOCKET` every quarter of the period while its
//! loops make progress, and stops when one is wedged (the test hook
//! `TELEMD_TEST_WEDGE_PROBES_AFTER_MS` blocks the probes' runtime, as a
//! probe loop stuck for good would), so systemd restarts it.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{TestDaemon, HOLD, TELEMD};

/// The datagrams `NOTIFY_SOCKET` got within `listen`, with when.
fn notifications(sock: &UnixDatagram, listen: Duration) -> Vec<(Duration, String)> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < listen {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

fn daemon_with(env: &[(&str, &str)]) -> (TestDaemon, UnixDatagram) {
    let mut d = TestDaemon::prepare(HOLD);
    std::fs::write(d.path("opt-in"), "").unwrap();
    let notify = d.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let mut cmd = Command::new(TELEMD);
    cmd.env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    d.spawn_with(cmd);
    (d, sock)
}

fn pings(got: &[(Duration, String)]) -> Vec<Duration> {
    got.iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn the_watchdog_is_pinged_while_the_loops_progress() {
    let (d, sock) = daemon_with(&[]);
    let got = notifications(&sock, Duration::from_secs(2));
    let pings = pings(&got);
    assert!(
        pings.len() >= 10,
        "{} pings in 2 s: {got:?}\n{}",
        pings.len(),
        d.log()
    );
    // systemd's contract: a ping within each period (200 ms); they come
    // every quarter of it, so a busy machine still keeps within it.
    let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        widest < Duration::from_millis(200),
        "a gap of {widest:?}: {pings:?}"
    );
}

#[test]
fn a_wedged_probe_runtime_stops_the_pings() {
    let (d, sock) = daemon_with(&[("TELEMD_TEST_WEDGE_PROBES_AFTER_MS", "800")]);
    let got = notifications(&sock, Duration::from_secs(3));
    let pings = pings(&got);
    assert!(
        !pings.is_empty(),
        "no ping before the wedge: {got:?}\n{}",
        d.log()
    );
    let last = *pings.last().unwrap();
    assert!(
        last < Duration::from_millis(1800),
        "pinged at {last:?}, after the wedge at about 0.8 s: {pings:?}"
    );
    assert!(
        d.log().contains("watchdog: no progress in probes"),
        "{}",
        d.log()
    );
}
