//! `telemctl journal`: what happened to each record, read from the journal
//! files (the daemon need not run). Its options follow journalctl's where
//! they overlap (`-n`, `--since`, `--until`, `--follow`, `--reverse`,
//! `--output json`), except that `-f` stays the global config option and
//! `-r` the legacy record id filter: follow and reverse are long options.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use telem_core::config::Config;
use telem_core::journal::{query_dir, retained_payload, JournalEntry, JournalFilter};

use crate::table::{align, column_widths, format_time};
use crate::time_spec;

/// How often `--follow` looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// `telemctl journal`: which entries, and how to show them.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    /// Only this classification.
    #[arg(short = 'c', long = "classification")]
    pub classification: Option<String>,
    /// Only this record id (exit 1 if the journal has no entry for it).
    #[arg(short = 'r', long = "record-id", alias = "record_id")]
    pub record_id: Option<String>,
    /// Only this event id.
    #[arg(short = 'e', long = "event-id", alias = "event_id")]
    pub event_id: Option<String>,
    /// Only this boot id.
    #[arg(short = 'b', long = "boot-id", alias = "boot_id")]
    pub boot_id: Option<String>,
    /// Print each record's kept payload (needs record_retention_enabled).
    #[arg(short = 'i', long = "include-record", alias = "include_record")]
    pub include_record: bool,
    /// Add a header line and a total.
    #[arg(short = 'V', long)]
    pub verbose: bool,
    /// Only the latest N entries (after the other filters).
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<usize>,
    /// Only entries at or after this time (journalctl's forms:
    /// "2026-12-08 10:00:00", "2026-12-08", "10:00", today, yesterday,
    /// now, @UNIX-SECONDS, -1h, "2 days ago"; UTC, as printed).
    #[arg(short = 'S', long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only entries at or before this time (the forms of --since).
    #[arg(short = 'U', long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// After the entries, wait for new ones and print them as they are
    /// written (Ctrl-C ends it).
    #[arg(long)]
    pub follow: bool,
    /// Newest first.
    #[arg(long, conflicts_with = "follow")]
    pub reverse: bool,
    /// `short` (the table) or `json` (one JSON object per line, as
    /// journalctl's).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Short)]
    pub output: Output,
}

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Short,
    /// One JSON object per line.
    Json,
}

/// Prints the journal entries `query` selects (`json`: as one JSON
/// array). A filter that selects nothing is exit status 1, as
/// coredumpctl's (an empty journal without one is not); with `--follow`
/// it waits instead.
pub fn show(c: &Config, query: JournalArgs, json: bool) -> anyhow::Result<()> {
    let now = unix_now();
    let since = query
        .since
        .as_deref()
        .map(|s| time_spec::parse(s, now))
        .transpose()
        .context("--since")?;
    let until = query
        .until
        .as_deref()
        .map(|s| time_spec::parse(s, now))
        .transpose()
        .context("--until")?;
    let filter = JournalFilter {
        classification: query.classification.clone(),
        record_id: query.record_id.clone(),
        event_id: query.event_id.clone(),
        boot_id: query.boot_id.clone(),
    };
    let in_range =
        |e: &JournalEntry| since.is_none_or(|s| e.time >= s) && until.is_none_or(|u| e.time <= u);
    let read = || -> anyhow::Result<Vec<JournalEntry>> {
        let mut v = query_dir(
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
        v.retain(in_range);
        Ok(v)
    };
    let all = read()?;
    let mut entries = all.clone();
    if let Some(n) = query.lines {
        entries.drain(..entries.len().saturating_sub(n));
    }
    if query.reverse {
        entries.reverse();
    }
    let lines = query.output == Output::Json || (json && query.follow);
    if json && !lines {
        super::print_json(&entries);
    } else {
        print_entries(c, &query, &entries, lines, query.verbose);
        if query.verbose && !lines {
            println!("Total records: {}", entries.len());
        }
    }
    let filtered = query.classification.is_some()
        || query.record_id.is_some()
        || query.event_id.is_some()
        || query.boot_id.is_some()
        || since.is_some()
        || until.is_some();
    if query.follow {
        follow(c, &query, all, lines, read)
    } else if entries.is_empty() && filtered {
        Err(super::Exit::nothing(if query.record_id.is_some() {
            "the journal has no entry for this record id"
        } else {
            "no journal entries match"
        })
        .into())
    } else {
        Ok(())
    }
}

/// `--follow`: prints what is appended after `seen`, until killed. The
/// journal file is compacted (rewritten) now and then, so new entries are
/// found after the last one printed, not at a byte offset.
fn follow(
    c: &Config,
    query: &JournalArgs,
    mut seen: Vec<JournalEntry>,
    lines: bool,
    read: impl Fn() -> anyhow::Result<Vec<JournalEntry>>,
) -> anyhow::Result<()> {
    use std::io::Write;
    loop {
        std::io::stdout()
            .flush()
            .context("cannot write to stdout")?;
        std::thread::sleep(FOLLOW_POLL);
        let now = read()?;
        let new = new_since(&seen, &now);
        print_entries(c, query, &new, lines, false);
        if !new.is_empty() {
            seen = now;
        }
    }
}

/// The entries of `now` that `seen` (the journal as last read) did not
/// have. The file only grows between compactions, so `seen` is usually a
/// prefix of `now`; after a compaction (the oldest entries gone) the new
/// ones are those after the last entry seen, and entries of that same
/// second not seen before (two entries may be alike: counted, not
/// matched).
fn new_since(seen: &[JournalEntry], now: &[JournalEntry]) -> Vec<JournalEntry> {
    if now.len() >= seen.len() && now[..seen.len()] == *seen {
        return now[seen.len()..].to_vec();
    }
    let Some(last) = seen.last() else {
        return now.to_vec();
    };
    let mut same_second: Vec<&JournalEntry> = seen.iter().filter(|e| e.time == last.time).collect();
    now.iter()
        .filter(|e| e.time >= last.time)
        .filter(|e| {
            if e.time > last.time {
                return true;
            }
            match same_second.iter().position(|s| *s == *e) {
                Some(i) => {
                    same_second.swap_remove(i);
                    false
                }
                None => true,
            }
        })
        .cloned()
        .collect()
}

fn print_entries(
    c: &Config,
    query: &JournalArgs,
    entries: &[JournalEntry],
    json_lines: bool,
    header: bool,
) {
    if json_lines {
        for e in entries {
            println!("{}", serde_json::to_string(e).expect("serializes"));
        }
        return;
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
    let head = [
        "Classification",
        "Time",
        "Record ID",
        "Event ID",
        "Boot ID",
        "Outcome",
    ]
    .map(String::from);
    let widths = column_widths(header.then_some(&head), &rows);
    if header {
        println!("{}", align(&head, &widths));
    }
    for (row, e) in rows.iter().zip(entries) {
        println!("{}", align(row, &widths));
        if query.include_record {
            match retained_payload(&c.journal.journal_dir, &e.record_id) {
                Some(p) => println!("{p}"),
                None => println!("(payload not kept)"),
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use telem_core::journal::Outcome;

    fn e(id: &str, time: u64) -> JournalEntry {
        JournalEntry {
            record_id: id.into(),
            time,
            classification: "a/b/c".into(),
            event_id: "e".into(),
            boot_id: "b".into(),
            outcome: Outcome::Delivered,
            detail: String::new(),
        }
    }

    #[test]
    fn follow_finds_what_is_new_whether_the_file_grew_or_was_compacted() {
        let seen = vec![e("a", 1), e("b", 2), e("b", 2)];
        // Grew: an entry alike to the last one is new all the same.
        let grown = [seen.clone(), vec![e("b", 2), e("c", 3)]].concat();
        assert_eq!(new_since(&seen, &grown), vec![e("b", 2), e("c", 3)]);
        assert!(new_since(&seen, &seen).is_empty());
        // Compacted (the oldest gone): a new entry of the last second
        // shown is kept, the two seen are not shown again.
        let compacted = vec![e("b", 2), e("b", 2), e("d", 2), e("c", 3)];
        assert_eq!(new_since(&seen, &compacted), vec![e("d", 2), e("c", 3)]);
        assert_eq!(new_since(&[], &grown), grown);
    }
}
