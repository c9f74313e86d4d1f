//! The probe verbs that need no daemon: `probe verify` (would this file
//! load, and signed by whom) and `probe test` (run it once in the sandbox,
//! under the daemon's limits, nothing spooled). The probe group's daemon
//! verbs are in `probe.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use serde::Serialize;
use telem_core::config::Config;
use telem_core::grants::{Grant, HostRules, ProbePolicy, Request};
use telem_core::metadata::HostMetadata;
use telem_core::native_client::{build_record, NewRecord};
use telem_core::provenance::{self, Owners, Signatures};
use telem_sandbox::offline::{test_offline, user_cache_dir, TestRequest};
use telem_sandbox::{CrashReport, Event, SandboxOptions};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

use crate::table::shown;

/// `telemctl probe test`.
#[derive(clap::Args, Debug)]
pub struct ProbeTest {
    /// The `.wasm` component.
    pub file: PathBuf,
    /// The event `handle` is called with.
    #[arg(long, value_enum, default_value_t = TestEvent::Start)]
    pub event: TestEvent,
    /// The core file of a `crash` event.
    #[arg(long, value_name = "CORE", required_if_eq("event", "crash"))]
    pub core: Option<PathBuf>,
    /// The crashed program of a `crash` event.
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,
    /// Grant this path for reading as well, beside what the probe's
    /// manifest asks for and the config grants (repeatable).
    #[arg(long = "grant-read", value_name = "PATH")]
    pub grant_read: Vec<PathBuf>,
    /// Arguments of a `manual` event.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The events `probe test` can send.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestEvent {
    /// As when it is loaded.
    Start,
    /// As when its interval elapses.
    Timer,
    /// As `telemctl probe run`, with the arguments after `--`.
    Manual,
    /// A crash, with `--core` (and `--exe`).
    Crash,
}

/// What `probe verify` found.
#[derive(Debug, Serialize)]
struct Verdict {
    file: PathBuf,
    sha256: Option<String>,
    pinned_sha256: Option<String>,
    signed_by: Option<String>,
    /// Why it would be refused; `None`: it would load.
    refused: Option<String>,
    /// What the check could not cover.
    note: Option<String>,
}

/// `telemctl probe verify FILE`.
pub fn verify(c: &Config, file: &Path, json: bool) -> anyhow::Result<()> {
    // Whom a telemd running as root or the service user accepts, whoever
    // asks.
    let owners = Owners::for_daemon(&c.crash.service_user);
    // The directories above it are checked too: from an absolute path.
    let file = &std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
    let mut v = Verdict {
        file: file.to_owned(),
        sha256: None,
        pinned_sha256: None,
        signed_by: None,
        refused: None,
        note: None,
    };
    let verdict = (|| -> Result<(), String> {
        let (f, meta) = provenance::open_probe_file(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let top = match c.probes.probes_dirs.iter().find(|d| file.starts_with(d)) {
            Some(d) => d.clone(),
            None => {
                v.note = Some(
                    "not in a probes directory: only its own directory was checked; the directories above it are checked once it is installed".into(),
                );
                file.parent().unwrap_or(file).to_owned()
            }
        };
        provenance::check_tree(file, &meta, &top, &owners).map_err(|r| r.to_string())?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(f, c.probes.max_component_bytes.get() + 1),
            &mut bytes,
        )
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        telem_sandbox::check_magic(&bytes[..bytes.len().min(8)]).map_err(|e| e.to_string())?;
        let hash = telem_sandbox::cache::sha256_hex(&bytes);
        v.sha256 = Some(hash.clone());
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default();
        v.pinned_sha256 = c
            .probes
            .probes
            .get(&stem)
            .and_then(|p| p.sha256.as_ref())
            .map(|p| p.to_string());
        provenance::check_pin(&stem, v.pinned_sha256.as_deref(), &hash)
            .map_err(|r| r.to_string())?;
        let sigs = Signatures::load(
            c.probes.require_signatures,
            &c.probes.trusted_keys_dir,
            &owners,
        );
        v.signed_by = sigs
            .check(file, &bytes, &owners)
            .map_err(|r| r.to_string())?
            .map(|k| format!("{} ({})", k.name, k.key_id));
        Ok(())
    })();
    v.refused = verdict.err();
    if json {
        super::print_json(&v);
    } else {
        println!("{}", shown(&v.file.display().to_string()));
        if let Some(h) = &v.sha256 {
            println!("  sha256: {h}");
        }
        match &v.pinned_sha256 {
            Some(p) => println!("  pinned: {}", shown(p)),
            None => println!("  pinned: no"),
        }
        // "Nobody" only when the signature was looked at and did not
        // matter: a refusal (a bad signature among them) says the rest.
        match &v.signed_by {
            Some(k) => println!("  signed by: {}", shown(k)),
            None if c.probes.require_signatures || v.refused.is_some() => {}
            None => println!("  signed by: nobody (require_signatures is off)"),
        }
        if let Some(n) = &v.note {
            println!("  note: {n}");
        }
    }
    match &v.refused {
        None => {
            if !json {
                println!("  would load: yes");
            }
            Ok(())
        }
        Some(why) => bail!("would be refused: {}", shown(why)),
    }
}

/// One line the sandbox logged during a test run.
#[derive(Clone, Debug, Serialize)]
struct LogLine {
    level: String,
    message: String,
}

/// Keeps what the sandbox logs (the probe's log lines, its output, its
/// refused records) for the report.
struct Capture(Arc<Mutex<Vec<LogLine>>>);

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        if !event.metadata().target().starts_with("telem_sandbox") {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        self.0.lock().expect("log capture lock").push(LogLine {
            level: event.metadata().level().to_string(),
            message: m.0,
        });
    }
}

/// A record as `probe test` shows it: stamped as the daemon would stamp
/// it (the machine id is the daemon's, shown as a placeholder).
#[derive(Debug, Serialize)]
struct Stamped {
    headers: Vec<(String, String)>,
    payload: String,
}

/// What `probe test --json` prints.
#[derive(Debug, Serialize)]
struct TestJson<'a> {
    name: &'a str,
    version: &'a str,
    description: &'a str,
    requested: &'a Request,
    granted: &'a Grant,
    records: Vec<Stamped>,
    records_refused: u64,
    logs: Vec<LogLine>,
    /// `null` when `handle` returned ok, else why not.
    error: Option<String>,
    /// Why the run counts as failed, if it does.
    failed: Option<String>,
}

/// `telemctl probe test FILE`.
pub fn test(c: &Config, t: ProbeTest, json: bool) -> anyhow::Result<()> {
    let mut extra_read = Vec::new();
    let event = match t.event {
        TestEvent::Start => Event::Start,
        TestEvent::Timer => Event::Timer,
        TestEvent::Manual => Event::Manual(t.args.clone()),
        TestEvent::Crash => {
            let core = t.core.as_deref().context("--event crash needs --core")?;
            let core = core
                .canonicalize()
                .with_context(|| format!("core {}", core.display()))?;
            // The daemon hands a crash probe the crash's own inbox entry;
            // here the core's directory is shown, unless it is one no probe
            // may ever read (`/`, the daemon's own).
            let rules = HostRules::for_config(c);
            extra_read.push(core.parent().unwrap_or(Path::new("/")).to_owned());
            let exe = t.exe.as_deref().map(Path::canonicalize).transpose()?;
            if let Some(e) = &exe {
                extra_read.push(e.parent().unwrap_or(Path::new("/")).to_owned());
            }
            for d in &extra_read {
                if let Some(why) = telem_core::grants::never_grantable(d, &rules) {
                    bail!("{}: {why}; put the core elsewhere", d.display());
                }
            }
            Event::Crash(CrashReport {
                core_path: core.display().to_string(),
                process_name: exe
                    .as_deref()
                    .and_then(Path::file_name)
                    .map_or("unknown".into(), |n| n.to_string_lossy().into_owned()),
                process_path: exe.map(|e| e.display().to_string()),
                pid: 0,
                signal: None,
            })
        }
    };
    // The probe keeps no state between test runs, and its views and
    // compiled form stay out of the daemon's directories.
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let options = SandboxOptions {
        cache_dir: user_cache_dir()?,
        scratch_dir: scratch.path().join("views"),
        state_dir: scratch.path().join("state"),
        rules: HostRules::for_config(c),
        max_component_bytes: c.probes.max_component_bytes.get(),
        max_function_bytes: c.probes.max_function_bytes.get(),
        // Alone on the admin's terminal: nothing to make way for.
        pressure: telem_sandbox::HostPressure::new(),
        // `probe test` asks no debuginfod server.
        debuginfo: None,
    };
    let grant_read = t.grant_read.clone();
    // Grants are keyed by name, and the name is the component's claim:
    // the daemon loads a component only from the file named after it, so
    // one claiming another name gets no admin grant here either.
    let stem = t
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', "-"))
        .unwrap_or_default();
    let policy = |name: &str| {
        if name != stem {
            return ProbePolicy::default();
        }
        let mut p: ProbePolicy = c.probes.probes.get(name).cloned().unwrap_or_default();
        p.also_read.extend(grant_read.iter().cloned());
        p
    };
    let logs = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Capture(logs.clone()));
    let is_crash = matches!(event, Event::Crash(_));
    let ran = tracing::subscriber::with_default(subscriber, || {
        test_offline(
            options,
            &policy,
            &TestRequest {
                file: t.file.clone(),
                event,
                extra_read,
            },
        )
    });
    let report = match ran {
        Ok(r) => r,
        Err(e) => {
            let why = telem_core::error_text::Chain(&e).to_string();
            if json {
                super::print_json(&serde_json::json!({ "failed": format!("not loaded: {why}") }));
            }
            bail!("not loaded: {why}");
        }
    };
    let logs = std::mem::take(&mut *logs.lock().expect("log capture lock"));
    let metadata = HostMetadata::collect(Path::new("/"));
    let records: Vec<Stamped> = report
        .records
        .iter()
        .map(|r| {
            let rec = build_record(
                &NewRecord {
                    classification: &r.classification,
                    severity: r.severity,
                    payload_version: r.payload_version,
                    payload: &r.payload,
                    event_id: Some(&r.event_id),
                    config: None,
                },
                &metadata,
                "(the daemon's)",
            );
            Stamped {
                headers: rec
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                payload: rec.payload,
            }
        })
        .collect();
    let error = report
        .outcome
        .as_ref()
        .err()
        .map(|e| telem_core::error_text::Chain(e).to_string());
    let failed = if report.manifest.name != stem {
        Some(format!(
            "the component calls itself {}: the daemon loads it only as {}.wasm",
            shown(&report.manifest.name),
            shown(&report.manifest.name)
        ))
    } else if is_crash && !report.granted.crashes {
        Some("not granted: crashes (a crash probe needs [probes.NAME] crashes = true and the crash trigger)".into())
    } else if let Some(e) = &error {
        Some(format!("handle failed: {e}"))
    } else if report.stats.records_refused > 0 {
        Some(format!(
            "{} record(s) refused",
            report.stats.records_refused
        ))
    } else if !report.granted.refused.is_empty() {
        Some(format!(
            "not granted: {}",
            report
                .granted
                .refused
                .iter()
                .map(|r| format!("{} ({})", r.item, r.reason))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        None
    };
    let m = &report.manifest;
    if json {
        super::print_json(&TestJson {
            name: &m.name,
            version: &m.version,
            description: &m.description,
            requested: &report.requested,
            granted: &report.granted,
            records,
            records_refused: report.stats.records_refused,
            logs,
            error,
            failed: failed.clone(),
        });
    } else {
        println!(
            "{} {}: {}",
            shown(&m.name),
            shown(&m.version),
            shown(&m.description)
        );
        let g = &report.granted;
        println!(
            "  granted: read {:?}, classifications {:?}, {} records/h, {} MiB, {} ms",
            g.read_paths,
            g.classifications,
            g.max_records_per_hour,
            g.memory_limit_mib,
            g.timeout_ms
        );
        for r in &g.refused {
            println!("  not granted: {}: {}", shown(&r.item), shown(&r.reason));
        }
        for l in &logs {
            println!("log {}: {}", l.level, shown(&l.message));
        }
        for r in &records {
            println!("record:");
            for (k, v) in &r.headers {
                println!("  {k}: {}", shown(v));
            }
            println!("{}", r.payload.trim_end_matches('\n'));
        }
        match &error {
            None => println!("handle: ok, {} record(s)", records.len()),
            Some(e) => {
                println!("handle: {}", shown(e));
                // What a denied read looks like from inside: the path is
                // simply not there.
                println!(
                    "  (the probe sees only its granted read paths {:?}; --grant-read PATH grants more)",
                    g.read_paths
                );
            }
        }
    }
    match failed {
        Some(why) => bail!("{}: {}", shown(&t.file.display().to_string()), shown(&why)),
        None => Ok(()),
    }
}
