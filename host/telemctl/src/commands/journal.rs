//! `telemctl journal`: what happened to each record, read from the journal
//! files (the daemon need not run).

use anyhow::Context;
use telem_core::config::Config;
use telem_core::journal::{query_dir, retained_payload, JournalFilter};

use crate::table::{align, column_widths, format_time};

/// `telemctl journal`: which entries, and how to show them.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    /// Only this classification.
    #[arg(short = 'c', long = "classification")]
    pub classification: Option<String>,
    /// Only this record id.
    #[arg(short = 'r', long = "record_id", alias = "record-id")]
    pub record_id: Option<String>,
    /// Only this event id.
    #[arg(short = 'e', long = "event_id", alias = "event-id")]
    pub event_id: Option<String>,
    /// Only this boot id.
    #[arg(short = 'b', long = "boot_id", alias = "boot-id")]
    pub boot_id: Option<String>,
    /// Print each record's kept payload (needs record_retention_enabled).
    #[arg(short = 'i', long = "include_record", alias = "include-record")]
    pub include_record: bool,
    /// Add a header line and a total.
    #[arg(short = 'V', long)]
    pub verbose: bool,
}

/// Prints the journal entries `query` selects (`json`: as JSON).
pub fn show(c: &Config, query: JournalArgs, json: bool) -> anyhow::Result<()> {
    let filter = JournalFilter {
        classification: query.classification,
        record_id: query.record_id,
        event_id: query.event_id,
        boot_id: query.boot_id,
    };
    let entries = query_dir(
        &c.journal.journal_dir,
        c.journal.journal_limit.get() as usize,
        &filter,
    )
    .with_context(|| {
        format!(
            "cannot read the journal in {}",
            c.journal.journal_dir.display()
        )
    })?;
    if json {
        super::print_json(&entries);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.classification.clone(),
                format_time(e.time),
                e.record_id.clone(),
                e.event_id.clone(),
                e.boot_id.clone(),
                e.outcome.as_str().to_owned(),
            ]
        })
        .collect();
    let header = [
        "Classification",
        "Time",
        "Record ID",
        "Event ID",
        "Boot ID",
        "Outcome",
    ]
    .map(String::from);
    let widths = column_widths(query.verbose.then_some(&header), &rows);
    if query.verbose {
        println!("{}", align(&header, &widths));
    }
    for (row, e) in rows.iter().zip(&entries) {
        println!("{}", align(row, &widths));
        if query.include_record {
            match retained_payload(&c.journal.journal_dir, &e.record_id) {
                Some(p) => println!("{p}"),
                None => println!("(payload not kept)"),
            }
        }
    }
    if query.verbose {
        println!("Total records: {}", rows.len());
    }
    Ok(())
}
