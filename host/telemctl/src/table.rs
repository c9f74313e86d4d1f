//! Plain-text tables and times for the terminal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM:SS` UTC of a Unix time (`-` for one no clock holds:
/// the value came from a file, and may be anything).
pub fn format_time(unix: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(unix))
        .map_or_else(|| "-".to_owned(), utc)
}

/// `YYYY-MM-DD HH:MM:SS` UTC, without pulling in a date crate.
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Column widths fitting the header (if shown) and every row.
pub fn column_widths<const N: usize>(
    header: Option<&[String; N]>,
    rows: &[[String; N]],
) -> [usize; N] {
    let mut w = [0; N];
    for row in header.into_iter().chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.len());
        }
    }
    w
}

/// One row, cells padded to `widths`, two spaces apart.
pub fn align<const N: usize>(row: &[String; N], widths: &[usize; N]) -> String {
    let cells: Vec<String> = row
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    cells.join("  ").trim_end().to_owned()
}

/// Prints a header and rows as an aligned table.
pub fn print<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let header = header.map(String::from);
    let widths = column_widths(Some(&header), rows);
    println!("{}", align(&header, &widths));
    for r in rows {
        println!("{}", align(r, &widths));
    }
}

/// A string a probe or a client supplied, made safe for the terminal:
/// control characters escaped, length capped, so it cannot drive the
/// admin's terminal.
pub fn shown(s: &str) -> String {
    telem_core::untrusted::escape(s, 1024)
}

/// A list for a table cell, `-` when empty.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items
            .iter()
            .map(|i| shown(&i.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_795_630_177), "2026-11-25 18:09:37");
    }
}
