//! The attacks of the security review, each run against a real `telemd`
//! and each asserting the bound that stops it (SECURITY.md lists them).
//! Every test here fails on a build without its limit.

mod cfg;
mod collector;
mod deadlines;
mod grants;
mod limits;
mod logs;
mod socket;

use support::*;
use telem_core::control::ProbeInfo;

/// Starts a daemon with `probes` (file names under probes-wasm's target)
/// in its probes directory and `extra` config.
pub fn daemon_with(probes: &[&str], extra: &str) -> TestDaemon {
    prepared_with(probes, extra).spawn()
}

/// [`daemon_with`], not started yet: for tests that add files or config
/// first.
pub fn prepared_with(probes: &[&str], extra: &str) -> TestDaemon {
    let d = TestDaemon::prepare(extra);
    std::fs::create_dir_all(d.path("probes")).unwrap();
    for p in probes {
        std::fs::copy(probe_wasm(p), d.path(&format!("probes/{p}.wasm"))).unwrap();
    }
    std::fs::write(d.path("opt-in"), "").unwrap();
    d
}

/// Appends `text` to a prepared daemon's config (tables go last in TOML).
pub fn append_config(d: &TestDaemon, text: &str) {
    let mut config = std::fs::read_to_string(&d.config_path).unwrap();
    config.push_str(text);
    std::fs::write(&d.config_path, config).unwrap();
}

/// `telemctl probe run NAME -- ARGS` over the control socket.
/// `Err` is the daemon's refusal or the probe's failure, in words.
pub fn run(d: &TestDaemon, probe: &str, args: &[&str]) -> Result<(), String> {
    run_probe(d, probe, args)
}

/// Payloads of the spooled records.
pub fn payloads(d: &TestDaemon) -> Vec<String> {
    d.spool_records().into_iter().map(|r| r.payload).collect()
}

/// The loaded probe `name` as `telemctl probe list --json` shows it.
pub fn probe_info(d: &TestDaemon, name: &str) -> ProbeInfo {
    let list = probe_list(d);
    list.probes
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not loaded: {list:?}\n{}", d.log()))
}
