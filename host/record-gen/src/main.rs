//! `telem-record-gen`: create and send a telemetry record from a script,
//! with the legacy tool's options and messages.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use telem_cli::record_gen::Args;
use telem_core::config::Config;
use telem_core::native_client::{build_local_record, send_record, NewRecord, CLIENT_TIMEOUT};
use telem_core::record::{
    validate_classification, validate_event_id, validate_payload, MAX_PAYLOAD_LEN,
};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("Error: {}", telem_core::error_text::one_line(msg.chain()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let class = args
        .class
        .as_deref()
        .ok_or_else(|| anyhow!("Classification required. See --help."))?;
    validate_classification(class)?;
    let severity = match args.severity.parse::<u8>() {
        Ok(s @ 1..=4) => s,
        _ => {
            bail!("Valid range for severity is 1-4 (got {:?})", args.severity)
        }
    };
    let payload_version: u32 = args.record_version.parse().map_err(|_| {
        anyhow!(
            "Invalid record-version number {:?}. Must be an integer",
            args.record_version
        )
    })?;
    if let Some(e) = &args.event_id {
        validate_event_id(e)?;
    }

    let (config, cfg_path) = match &args.config_file {
        Some(p) => {
            let abs = p
                .canonicalize()
                .with_context(|| format!("Configuration file path not valid: {}", p.display()))?;
            let c = Config::load_file(Config::default(), &abs)?;
            (c, Some(abs))
        }
        None => (Config::load(Config::default(), None)?, None),
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.socket.socket_path.clone());

    let mut payload = Vec::new();
    if let Some(p) = &args.payload {
        payload.extend_from_slice(p.as_bytes());
    } else if let Some(f) = &args.payload_file {
        let file = std::fs::File::open(f)
            .with_context(|| format!("file {} could not be opened for reading", f.display()))?;
        file.take(MAX_PAYLOAD_LEN as u64)
            .read_to_end(&mut payload)
            .with_context(|| format!("cannot read {}", f.display()))?;
    } else {
        std::io::stdin()
            .take(MAX_PAYLOAD_LEN as u64)
            .read_to_end(&mut payload)
            .context("cannot read standard input")?;
    }
    payload.truncate(MAX_PAYLOAD_LEN);
    validate_payload(&payload)?;
    let payload = String::from_utf8(payload).expect("validated ASCII");

    let cfg_str = cfg_path.as_ref().map(|p| p.display().to_string());
    let record = build_local_record(
        &NewRecord {
            classification: class,
            severity,
            payload_version,
            payload: &payload,
            event_id: args.event_id.as_deref(),
            config: cfg_str.as_deref(),
        },
        &config,
    );
    record.validate()?;

    if args.echo || args.no_post {
        println!("{}{}", record.headers.to_block(), record.payload);
    }
    if args.no_post {
        return Ok(());
    }
    if !config.host.opt_in_file.exists() {
        bail!(
            "Unable to send record. Make sure to opt-in to telemetry first 'telemctl opt-in' ({} does not exist)",
            config.host.opt_in_file.display()
        );
    }
    Ok(send_record(&socket, &record, CLIENT_TIMEOUT)?)
}
