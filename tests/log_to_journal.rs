//! The daemon's log when systemd connects its stderr to the journal
//! (`JOURNAL_STREAM`): native journal datagrams, each line with its
//! priority and its fields by name, read here on a stand-in for
//! `/run/systemd/journal/socket` (bind-mounted in a mount namespace of the
//! daemon's own, so a real journald is neither needed nor touched).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use support::{probe_wasm, wait_until, TestDaemon, HOLD, TELEMD};

/// One journal entry: `KEY=value` lines, or `KEY`, a 64-bit length and
/// the value for values holding a line break.
fn parse(mut d: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    while !d.is_empty() {
        let end = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let line = &d[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = &d[(end + 1).min(d.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &d[end + 9..end + 9 + len];
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            d = &d[(end + 10 + len).min(d.len())..];
        }
    }
    out
}

#[test]
#[ignore = "needs root: the daemon runs in a mount namespace of its own"]
fn the_log_goes_to_the_journal_with_priorities_and_fields() {
    support::assert_root("it bind-mounts a stand-in journal socket");
    let d = TestDaemon::prepare(HOLD);
    std::fs::write(d.path("opt-in"), "").unwrap();
    std::fs::create_dir_all(d.path("probes")).unwrap();
    std::fs::copy(probe_wasm("hello"), d.path("probes/hello.wasm")).unwrap();
    // Not WebAssembly: refused, a warning.
    std::fs::write(d.path("probes/broken.wasm"), b"not wasm").unwrap();
    let standin = d.path("journal.socket");
    let journal = UnixDatagram::bind(&standin).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // stderr is this file, and JOURNAL_STREAM names it: the journal's.
    let stderr_path = d.path("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let m = stderr.metadata().unwrap();
    let script = format!(
        "mount -t tmpfs none /run && mkdir -p /run/systemd/journal && \
         touch /run/systemd/journal/socket && \
         mount --bind {standin} /run/systemd/journal/socket && exec {TELEMD} -f {config}",
        standin = standin.display(),
        config = d.config_path.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(stderr)
        .spawn()
        .expect("unshare (util-linux)");
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let got = wait_until(Duration::from_secs(30), || {
        while let Ok(n) = journal.recv(&mut buf) {
            entries.push(parse(&buf[..n]));
        }
        let hello = entries
            .iter()
            .any(|e| e.get("PROBE").map(String::as_str) == Some("hello"));
        let refused = entries.iter().any(|e| {
            e.get("MESSAGE")
                .is_some_and(|m| m.starts_with("probe not loaded"))
        });
        hello && refused
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(got, "no entry with PROBE=hello or no refusal: {entries:#?}");
    let refused = entries
        .iter()
        .find(|e| {
            e.get("MESSAGE")
                .is_some_and(|m| m.starts_with("probe not loaded"))
        })
        .unwrap();
    assert_eq!(refused["PRIORITY"], "4", "a warning is priority 4");
    let ready = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains("telemd ready")))
        .unwrap_or_else(|| panic!("no ready line: {entries:#?}"));
    assert_eq!(ready["PRIORITY"], "6", "info is priority 6");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "telemd");
    let loaded = entries
        .iter()
        .find(|e| e.get("PROBE").map(String::as_str) == Some("hello"))
        .unwrap();
    assert!(loaded["MESSAGE"].starts_with("loaded "), "{loaded:?}");
    assert!(
        !loaded
            .keys()
            .any(|k| k.starts_with("F_") || k.starts_with("FPROBE")),
        "fields by their own names: {loaded:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&stderr_path).unwrap(),
        "",
        "nothing written twice to stderr"
    );
}
