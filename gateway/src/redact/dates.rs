//! The service-date floor: which date a resource is "of" (the per-type
//! table in `policies/service-dates.toml`) and whether it is before
//! `policy.service_date_floor`.

use std::borrow::Cow;

/// The service date found for a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceDate {
    /// No date at any watched path: kept.
    None,
    /// The decisive date as `YYYY-MM-DD` (partial dates at their first day).
    Date(String),
    /// A watched value that is not a FHIR date: treated as before the floor.
    Invalid,
}

/// The service date from the dates a scan collected. `watches[w]` says which
/// (type, tier) watch id `w` belongs to; the first tier of `resource_type`
/// with any value decides, its earliest date counts.
pub fn service_date<'a>(
    dates: &[(u32, Cow<'a, str>)],
    resource_type: &str,
    watches: &[(String, usize)],
    tiers: usize,
) -> ServiceDate {
    for tier in 0..tiers {
        let mut earliest: Option<String> = None;
        for (watch, value) in dates {
            let Some((t, n)) = watches.get(*watch as usize) else { continue };
            if t != resource_type || *n != tier {
                continue;
            }
            let Some(date) = first_day(value) else { return ServiceDate::Invalid };
            if earliest.as_ref().is_none_or(|e| date < *e) {
                earliest = Some(date);
            }
        }
        if let Some(date) = earliest {
            return ServiceDate::Date(date);
        }
    }
    ServiceDate::None
}

/// A FHIR date, dateTime or instant as the `YYYY-MM-DD` of its first
/// possible day, as written (no time-zone shift: a service date is the
/// local date of service). `None` when it is not one.
pub fn first_day(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if !digits(0..4) {
        return None;
    }
    let year = &value[..4];
    match b.len() {
        4 => return Some(format!("{year}-01-01")),
        7 if b[4] == b'-' && digits(5..7) => {
            let month = &value[5..7];
            return valid_month(month).then(|| format!("{year}-{month}-01"));
        }
        _ => {}
    }
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || !digits(5..7) || !digits(8..10) {
        return None;
    }
    if b.len() > 10 && b[10] != b'T' {
        return None;
    }
    let (month, day) = (&value[5..7], &value[8..10]);
    let day_ok = day.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d));
    (valid_month(month) && day_ok).then(|| value[..10].to_owned())
}

fn valid_month(month: &str) -> bool {
    month.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_days() {
        for (value, day) in [
            ("2015", Some("2015-01-01")),
            ("2015-12", Some("2015-12-01")),
            ("2015-12-31", Some("2015-12-31")),
            ("2015-12-31T23:30:00-05:00", Some("2015-12-31")),
            ("2016-01-01T00:00:00Z", Some("2016-01-01")),
            ("2015-13", None),
            ("2015-12-32", None),
            ("15-12-31", None),
            ("2015/12/31", None),
            ("2015-12-31 10:00", None),
            ("", None),
            ("yesterday", None),
        ] {
            assert_eq!(first_day(value).as_deref(), day, "{value}");
        }
    }

    #[test]
    fn first_tier_with_a_date_decides_earliest_wins() {
        let watches = vec![("ExplanationOfBenefit".to_owned(), 0), ("ExplanationOfBenefit".to_owned(), 1)];
        let d = |w: u32, v: &'static str| (w, Cow::Borrowed(v));
        let eob = "ExplanationOfBenefit";
        assert_eq!(
            service_date(&[d(1, "2015-06-01"), d(0, "2017-01-01")], eob, &watches, 2),
            ServiceDate::Date("2017-01-01".into()),
            "billablePeriod.start beats the items"
        );
        assert_eq!(
            service_date(&[d(1, "2016-02-10"), d(1, "2015-11-30")], eob, &watches, 2),
            ServiceDate::Date("2015-11-30".into()),
            "earliest item"
        );
        assert_eq!(service_date(&[], eob, &watches, 2), ServiceDate::None);
        assert_eq!(service_date(&[d(0, "someday")], eob, &watches, 2), ServiceDate::Invalid);
        assert_eq!(
            service_date(&[d(0, "2010-01-01")], "Encounter", &watches, 1),
            ServiceDate::None,
            "other type"
        );
    }
}
