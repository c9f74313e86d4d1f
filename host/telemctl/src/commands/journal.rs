//! `telemctl journal`: what happened to each record, read from the journal
//! files (the daemon need not run).

use anyhow::Context;
use telem_core::config::Config;
use telem_core::journal::{query_dir, retained_payload, JournalFilter};

use crate::table::{align, column_widths, format_time};

/// How to show the entries.
pub struct Show {
    pub include_record: bool,
    pub verbose: bool,
    pub json: bool,
}

pub fn show(c: &Config, filter: JournalFilter, how: Show) -> anyhow::Result<()> {
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
    if how.json {
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
    let widths = column_widths(how.verbose.then_some(&header), &rows);
    if how.verbose {
        println!("{}", align(&header, &widths));
    }
    for (row, e) in rows.iter().zip(&entries) {
        println!("{}", align(row, &widths));
        if how.include_record {
            match retained_payload(&c.journal.journal_dir, &e.record_id) {
                Some(p) => println!("{p}"),
                None => println!("(payload not kept)"),
            }
        }
    }
    if how.verbose {
        println!("Total records: {}", rows.len());
    }
    Ok(())
}
