//! RFC 3339 timestamps (UTC out, any offset in) without a date-time
//! dependency: `recorded` is written as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, and
//! `--since` / `?since=` accept a date or an instant.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::{civil_from_days, days_from_civil};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Microseconds since the Unix epoch (negative before 1970).
pub fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// `2025-06-30T12:00:00.123456Z`: fixed width, so UTC instants also sort as text.
pub fn format_micros(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// An RFC 3339 date (`2025-06-30`, midnight UTC) or date-time with `Z` or a
/// numeric offset and an optional fraction, as microseconds since the epoch.
/// A space in place of the offset's `+` is read as `+` (an unencoded `+` in
/// a URL query arrives as a space).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let date = days_from_civil(y, m, d) * MICROS_PER_DAY;
    if b.len() == 10 {
        return Some(date);
    }
    if !matches!(b[10], b'T' | b't') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Microsecond precision: more digits are truncated.
        let digits = &text[start..i.min(start + 6)];
        frac = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        // A space where the sign goes is a `+` that a URL query decoded.
        sign @ (b'+' | b'-' | b' ') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let secs = hh * 3600 + mm * 60 + ss.min(59) - offset_s;
    Some(date + secs * 1_000_000 + frac)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc() {
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_micros(1_751_284_800_123_456), "2025-06-30T12:00:00.123456Z");
        assert_eq!(format_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(format_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn parses_dates_and_instants() {
        let noon = 1_751_284_800_000_000;
        let table: &[(&str, Option<i64>)] = &[
            ("2025-06-30", Some(noon - 12 * 3_600_000_000)),
            ("2025-06-30T12:00:00Z", Some(noon)),
            ("2025-06-30T12:00:00.5Z", Some(noon + 500_000)),
            ("2025-06-30T12:00:00.123456789Z", Some(noon + 123_456)),
            ("2025-06-30T14:00:00+02:00", Some(noon)),
            ("2025-06-30T07:30:00-04:30", Some(noon)),
            ("2025-06-30T14:00:00 02:00", Some(noon)),
            ("2025-06-30t12:00:00z", Some(noon)),
            ("2024-02-29", Some(1_709_164_800_000_000)),
            ("2025-02-29", None),
            ("2025-13-01", None),
            ("2025-06-30T12:00", None),
            ("2025-06-30T12:00:00", None),
            ("2025-06-30T25:00:00Z", None),
            ("2025-06-30T12:00:00.Z", None),
            ("2025-06-30T12:00:00+0200", None),
            ("2025-6-30", None),
            ("yesterday", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_rfc3339(text), *want, "{text}");
        }
    }

    #[test]
    fn round_trips() {
        for micros in [0, 1, 86_399_999_999, 1_751_284_800_123_456, 4_102_444_800_000_000] {
            assert_eq!(parse_rfc3339(&format_micros(micros)), Some(micros));
        }
    }
}
