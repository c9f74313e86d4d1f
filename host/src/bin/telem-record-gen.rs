//! `telem-record-gen`: create and send a telemetry record from a script,
//! with the legacy tool's options and messages.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use telem::client::{build_record, send_record, NewRecord, CLIENT_TIMEOUT};
use telem::config::Config;
use telem::machine_id::MachineIdStore;
use telem::metadata::HostMetadata;
use telem::record::{
    validate_classification, validate_event_id, validate_payload, MAX_PAYLOAD_LEN,
};

/// Create and send a custom telemetry record.
#[derive(Parser, Debug)]
#[command(
    name = "telem-record-gen",
    version,
    about,
    after_help = "The payload comes from -p, else -P, else standard input; it is cut to 8192 bytes.\n\
                  Exit status: 0 sent (or printed with -n), 1 the record was invalid or could not be sent, 2 bad usage."
)]
struct Args {
    /// Severity level (1-4).
    #[arg(short = 's', long, default_value = "1", value_name = "N")]
    severity: String,
    /// Classification DOMAIN/PROBE/REST (required).
    #[arg(short = 'c', long = "class", value_name = "CLASS")]
    class: Option<String>,
    /// Record body (at most 8192 bytes).
    #[arg(short = 'p', long, value_name = "TEXT")]
    payload: Option<String>,
    /// File to read the payload from.
    #[arg(short = 'P', long = "payload-file", value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// Version number of the payload's format.
    #[arg(
        short = 'R',
        long = "record-version",
        default_value = "1",
        value_name = "N"
    )]
    record_version: String,
    /// Event id to use (32 characters of 0-9a-f); random if not given.
    #[arg(short = 'e', long = "event-id", value_name = "ID")]
    event_id: Option<String>,
    /// Echo the record to stdout.
    #[arg(short = 'o', long)]
    echo: bool,
    /// Do not send the record, only print it.
    #[arg(short = 'n', long = "no-post")]
    no_post: bool,
    /// Use this configuration file (its socket_path and opt-in file); the
    /// daemon delivers the record with this file's server.
    #[arg(
        short = 'f',
        long = "config-file",
        alias = "config_file",
        value_name = "FILE"
    )]
    config_file: Option<PathBuf>,
    /// Native socket to send to (overrides the config's socket_path).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("Error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let class = args
        .class
        .as_deref()
        .ok_or("Classification required. See --help.")?;
    validate_classification(class).map_err(|e| e.to_string())?;
    let severity = match args.severity.parse::<u8>() {
        Ok(s @ 1..=4) => s,
        _ => {
            return Err(format!(
                "Valid range for severity is 1-4 (got {:?})",
                args.severity
            ))
        }
    };
    let payload_version: u32 = args.record_version.parse().map_err(|_| {
        format!(
            "Invalid record-version number {:?}. Must be an integer",
            args.record_version
        )
    })?;
    if let Some(e) = &args.event_id {
        validate_event_id(e).map_err(|e| e.to_string())?;
    }

    let (config, cfg_path) = match &args.config_file {
        Some(p) => {
            let abs = p
                .canonicalize()
                .map_err(|e| format!("Configuration file path not valid: {}: {e}", p.display()))?;
            let c = Config::load_file(Config::default(), &abs).map_err(|e| e.to_string())?;
            (c, Some(abs))
        }
        None => (
            Config::load(Config::default(), None).map_err(|e| e.to_string())?,
            None,
        ),
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.socket_path.clone());

    let mut payload = Vec::new();
    if let Some(p) = &args.payload {
        payload.extend_from_slice(p.as_bytes());
    } else if let Some(f) = &args.payload_file {
        let file = std::fs::File::open(f)
            .map_err(|e| format!("file {} could not be opened for reading: {e}", f.display()))?;
        file.take(MAX_PAYLOAD_LEN as u64)
            .read_to_end(&mut payload)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
    } else {
        std::io::stdin()
            .take(MAX_PAYLOAD_LEN as u64)
            .read_to_end(&mut payload)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    }
    payload.truncate(MAX_PAYLOAD_LEN);
    validate_payload(&payload).map_err(|e| e.to_string())?;
    let payload = String::from_utf8(payload).expect("validated ASCII");

    let metadata = HostMetadata::collect(&config.metadata_root);
    let machine_id = MachineIdStore::new(&config.state_dir, &config.static_machine_id_file)
        .peek()
        .unwrap_or_else(|| "FFFFFFFF".into());
    let cfg_str = cfg_path.as_ref().map(|p| p.display().to_string());
    let record = build_record(
        &NewRecord {
            classification: class,
            severity,
            payload_version,
            payload: &payload,
            event_id: args.event_id.as_deref(),
            config: cfg_str.as_deref(),
        },
        &metadata,
        &machine_id,
    );
    record.validate().map_err(|e| e.to_string())?;

    if args.echo || args.no_post {
        println!("{}{}", record.headers.to_block(), record.payload);
    }
    if args.no_post {
        return Ok(());
    }
    if !config.opt_in_file.exists() {
        return Err(format!(
            "Unable to send record. Make sure to opt-in to telemetry first 'telemctl opt-in' ({} does not exist)",
            config.opt_in_file.display()
        ));
    }
    send_record(&socket, &record, CLIENT_TIMEOUT).map_err(|e| e.to_string())
}
