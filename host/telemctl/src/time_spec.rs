//! The times `telemctl journal --since/--until` take, spelled as
//! journalctl(1) and systemd.time(7) spell them, so an admin's habits
//! carry over: `2026-12-08 10:00:00`, `2026-12-08`, `10:00` (today),
//! `today`, `yesterday`, `tomorrow`, `now`, `@1765188000`, `-1h`,
//! `+30min`, `2 days ago`. Absolute times are UTC (an optional ` UTC` may
//! say so), as every time telemctl prints is; spans are systemd's
//! (`1h 30min`, `2 days`), parsed by `humantime`.

use std::fmt;

/// A time spec that is none of the accepted forms.
#[derive(Debug, PartialEq, Eq)]
pub struct BadTime(String);

impl fmt::Display for BadTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a time: use \"YYYY-MM-DD [HH:MM[:SS]]\", \"HH:MM[:SS]\", today, yesterday, tomorrow, now, @UNIX-SECONDS, -SPAN, +SPAN or \"SPAN ago\" (SPAN as 1h, 30min, 2 days); times are UTC",
            self.0
        )
    }
}

impl std::error::Error for BadTime {}

/// Unix seconds `spec` names, with `now` the current unix time.
pub fn parse(spec: &str, now: u64) -> Result<u64, BadTime> {
    let bad = || BadTime(spec.to_owned());
    let s = spec.trim();
    let s = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix('Z'))
        .unwrap_or(s)
        .trim();
    let midnight = now - now % 86_400;
    let span = |t: &str| {
        humantime::parse_duration(t.trim())
            .map(|d| d.as_secs())
            .map_err(|_| bad())
    };
    match s {
        "now" => return Ok(now),
        "today" => return Ok(midnight),
        "yesterday" => return Ok(midnight.saturating_sub(86_400)),
        "tomorrow" => return Ok(midnight + 86_400),
        _ => {}
    }
    if let Some(unix) = s.strip_prefix('@') {
        return unix.parse().map_err(|_| bad());
    }
    if let Some(t) = s.strip_prefix('-') {
        return Ok(now.saturating_sub(span(t)?));
    }
    if let Some(t) = s.strip_prefix('+') {
        return now.checked_add(span(t)?).ok_or_else(bad);
    }
    if let Some(t) = s.strip_suffix(" ago") {
        return Ok(now.saturating_sub(span(t)?));
    }
    let (date, clock) = match s.split_once(' ') {
        Some((d, c)) => (Some(d), Some(c)),
        None if s.contains(':') => (None, Some(s)),
        None => (Some(s), None),
    };
    let day = match date {
        Some(d) => days_from_civil(d).ok_or_else(bad)? * 86_400,
        None => midnight,
    };
    let secs = match clock {
        Some(c) => seconds_of_day(c).ok_or_else(bad)?,
        None => 0,
    };
    Ok(day + secs)
}

/// `YYYY-MM-DD` as days since 1970-01-01 (Hinnant's days-from-civil).
fn days_from_civil(date: &str) -> Option<u64> {
    let mut it = date.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// `HH:MM` or `HH:MM:SS` as seconds since midnight.
fn seconds_of_day(clock: &str) -> Option<u64> {
    let parts: Vec<&str> = clock.split(':').collect();
    let [h, m, s] = match parts.as_slice() {
        [h, m] => [*h, *m, "0"],
        [h, m, s] => [*h, *m, *s],
        _ => return None,
    };
    let (h, m, s): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    (h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::format_time;

    // 2026-12-08 10:20:30 UTC.
    const NOW: u64 = 1_796_725_230;

    #[test]
    fn absolute_forms_read_back_as_printed() {
        assert_eq!(format_time(NOW), "2026-12-08 10:20:30");
        for (spec, want) in [
            ("2026-12-08 10:20:30", "2026-12-08 10:20:30"),
            ("2026-12-08 10:20:30 UTC", "2026-12-08 10:20:30"),
            ("2026-12-08 10:20", "2026-12-08 10:20:00"),
            ("2026-12-08", "2026-12-08 00:00:00"),
            ("2000-02-29", "2000-02-29 00:00:00"),
            ("1970-01-01", "1970-01-01 00:00:00"),
            ("09:05", "2026-12-08 09:05:00"),
            ("today", "2026-12-08 00:00:00"),
            ("yesterday", "2026-12-07 00:00:00"),
            ("tomorrow", "2026-12-09 00:00:00"),
            ("now", "2026-12-08 10:20:30"),
            ("@0", "1970-01-01 00:00:00"),
        ] {
            assert_eq!(format_time(parse(spec, NOW).unwrap()), want, "{spec}");
        }
    }

    #[test]
    fn spans_count_from_now() {
        assert_eq!(parse("-1h", NOW), Ok(NOW - 3600));
        assert_eq!(parse("+30min", NOW), Ok(NOW + 1800));
        assert_eq!(parse("2 days ago", NOW), Ok(NOW - 2 * 86_400));
        assert_eq!(parse("1h 30min ago", NOW), Ok(NOW - 5400));
    }

    #[test]
    fn nonsense_is_refused_with_the_forms() {
        for bad in [
            "",
            "last tuesday",
            "2026-02-30",
            "2026-13-01",
            "25:00",
            "10:61",
            "-1 fortnight",
            "@x",
            "1969-12-31",
        ] {
            let e = parse(bad, NOW).unwrap_err().to_string();
            assert!(
                e.contains("is not a time") && e.contains("SPAN ago"),
                "{bad}: {e}"
            );
        }
    }
}
