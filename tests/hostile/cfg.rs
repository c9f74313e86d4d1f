//! `CFG:` injection: a native client names a config file; the daemon must
//! not read it whole, block on it, or post the record (with that file's
//! TID header) to that file's server.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use telem_core::record::wire::encode_frame;

use support::collector::{Collector, Mode};
use support::*;

fn frame_naming(config: &str, payload: &str) -> Vec<u8> {
    let mut r = test_record(payload);
    r.config = Some(config.to_owned());
    encode_frame(&r)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn named_configs_outside_the_rules_are_not_followed() {
    let ours = Collector::start(Mode::Status(200, None));
    let attacker = Collector::start(Mode::Status(200, None));
    let d = TestDaemon::prepare(&format!("server = \"{}\"\n", ours.url()));
    let allowed = d.path("etc-telemetrics");
    std::fs::create_dir_all(&allowed).unwrap();
    let planted_file = d.path("state/planted.jsonl");
    let evil = format!(
        "[settings]\nserver={}\ntidheader=Authorization: Bearer stolen\n",
        attacker.url()
    );
    // An attacker's config outside the allowed directory...
    std::fs::write(d.path("evil.conf"), &evil).unwrap();
    // ...one inside it but writable by anyone...
    let writable = allowed.join("writable.conf");
    std::fs::write(&writable, &evil).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    // ...one with a file:// server, and a FIFO.
    let file_server = allowed.join("file.conf");
    std::fs::write(
        &file_server,
        format!("[settings]\nserver=file://{}\n", planted_file.display()),
    )
    .unwrap();
    let fifo = allowed.join("fifo.conf");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    crate::append_config(
        &d,
        &format!("cfg_allowed_dirs = [\"{}\"]\n", allowed.display()),
    );
    // A record left in the spool naming the attacker's config is treated
    // the same way as one arriving on the socket.
    let mut spooled = test_record("from the spool");
    spooled.config = Some(d.path("evil.conf").display().to_string());
    preload_spool(&d.path("spool"), &[spooled]);
    std::fs::write(d.path("opt-in"), "").unwrap();
    let d = d.spawn();

    let named = [
        "/dev/zero".to_owned(),
        d.path("evil.conf").display().to_string(),
        writable.display().to_string(),
        file_server.display().to_string(),
        fifo.display().to_string(),
    ];
    for (i, path) in named.iter().enumerate() {
        send_raw(&d.socket(), &frame_naming(path, &format!("cfg {i}")));
    }
    assert!(
        wait_until(Duration::from_secs(20), || ours.accepted_count()
            == named.len() + 1),
        "{} of {} records reached the daemon's own server\n{}",
        ours.accepted_count(),
        named.len() + 1,
        d.log()
    );
    assert_eq!(
        attacker.connections(),
        0,
        "nothing connects to a named server"
    );
    assert!(!planted_file.exists(), "no file:// target is written");
    assert!(
        ours.accepted()
            .iter()
            .all(|r| r.header("Authorization").is_none()),
        "no header from a named config is sent"
    );
    let rss = rss_kib(d.pid());
    eprintln!("telemd RSS after CFG:/dev/zero and friends: {rss} KiB");
    assert!(
        rss < 200 * 1024,
        "telemd RSS {rss} KiB after naming /dev/zero"
    );
    let log = d.log();
    let mut reasons = vec![
        "outside cfg_allowed_dirs",
        "must be root's",
        "not a regular file",
    ];
    if is_root() {
        // As another user the file is refused for its owner before its
        // server is looked at.
        reasons.push("file:// target");
    }
    for why in reasons {
        assert!(log.contains(why), "the log says {why:?}:\n{log}");
    }
}

#[test]
fn a_trusted_named_config_is_honoured() {
    let ours = Collector::start(Mode::Status(200, None));
    let other = Collector::start(Mode::Status(200, None));
    let d = TestDaemon::prepare(&format!("server = \"{}\"\n", ours.url()));
    let allowed = d.path("etc-telemetrics");
    std::fs::create_dir_all(&allowed).unwrap();
    let conf = allowed.join("custom.conf");
    std::fs::write(
        &conf,
        format!(
            "[settings]\nserver={}\ntidheader=X-Telemetry-TID: custom\n",
            other.url()
        ),
    )
    .unwrap();
    crate::append_config(
        &d,
        &format!("cfg_allowed_dirs = [\"{}\"]\n", allowed.display()),
    );
    std::fs::write(d.path("opt-in"), "").unwrap();
    let d = d.spawn();
    send_raw(&d.socket(), &frame_naming(conf.to_str().unwrap(), "custom"));
    if is_root() {
        // Root-owned, mode 0644, inside the allowed directory: the legacy
        // behaviour holds.
        assert!(
            wait_until(Duration::from_secs(20), || other.accepted_count() == 1),
            "{}",
            d.log()
        );
        assert_eq!(
            other.accepted()[0].header("X-Telemetry-TID"),
            Some("custom")
        );
        assert_eq!(ours.accepted_count(), 0);
    } else {
        // The file is this user's, not root's: refused.
        assert!(
            wait_until(Duration::from_secs(20), || ours.accepted_count() == 1),
            "{}",
            d.log()
        );
        assert_eq!(other.connections(), 0);
    }
}
