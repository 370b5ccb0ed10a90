//! Candidate retrieval by blocking (as record-linkage systems do, e.g.
//! Splink's blocking rules): several narrow `candidates` queries, each on a
//! key a perturbed record is still likely to share with the member, so that
//! no single field (the card above all) has to be right.
//!
//! Stage 1 (every request): each identifier sent, and the exact birth date
//! (a block of about 3 members among 100,000).
//! Stage 2 (only when stage 1 cannot settle the answer, see `lib.rs`): the
//! birth date with day and month swapped and one day either side. A
//! candidate is eligible only with a compatible birth date (`scoring`), so
//! after stage 2 every eligible candidate has been seen, however its names
//! differ (typos, nicknames, swapped, married names): each of these blocks
//! holds about 3 members among 100,000.
//! Stage 3 (only when nothing acceptable was found and something beyond the
//! name could corroborate a match): a birth date with a typo in month or day
//! (eligible only with the full name agreeing): the family name, a former
//! name sent and the given name, each within the birth year.
//!
//! Every query names a birth date or year, or an identifier: none asks for
//! a name alone (hundreds of members), and at most 16 are made per request
//! (the host's limit).

use fhirwall_plugin_sdk::matcher::CandidateQuery;

use crate::record::Probe;

/// The host answers at most this many queries per request.
pub const MAX_QUERIES: usize = 16;

/// What one query is for: the identifier and exact-birth-date blocks let
/// the matcher bound what unseen candidates can score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Identifier,
    /// The same identifier, normalised (asked only when the value as sent
    /// found nobody: a live upstream compares identifiers exactly).
    IdentifierNormalised,
    BirthDate,
    Other,
}

fn query() -> CandidateQuery {
    CandidateQuery { identifier: None, birth_date: None, family: None, given: None }
}

/// Stage 1: identifiers as sent, and the exact birth date.
pub fn stage_one(probe: &Probe) -> Vec<(Block, CandidateQuery)> {
    let mut out = Vec::new();
    for id in &probe.ids {
        out.push((Block::Identifier, CandidateQuery { identifier: Some(id.raw.clone()), ..query() }));
    }
    if let Some((y, m, d)) = probe.person.birth {
        out.push((Block::BirthDate, CandidateQuery { birth_date: Some(date(y, m, d)), ..query() }));
    }
    out
}

/// Stage 2: the other birth dates an eligible candidate can have (day and
/// month swapped, one day either side). With stage 1 this finds every
/// candidate whose birth date is compatible, whatever the names.
pub fn stage_two(probe: &Probe) -> Vec<CandidateQuery> {
    let Some((y, m, d)) = probe.person.birth else { return Vec::new() };
    let mut out = Vec::new();
    if d <= 12 && d != m {
        out.push(CandidateQuery { birth_date: Some(date(y, d, m)), ..query() });
    }
    for delta in [-1i64, 1] {
        if let Some((y2, m2, d2)) = shift(y, m, d, delta) {
            out.push(CandidateQuery { birth_date: Some(date(y2, m2, d2)), ..query() });
        }
    }
    out
}

/// Stage 3, the last resort (nothing acceptable found): a birth date with
/// a typo in month or day, found by name within the birth year: the first
/// family name word (and a former name sent), the first given name.
pub fn stage_three(probe: &Probe) -> Vec<CandidateQuery> {
    let p = &probe.person;
    let Some((y, _, _)) = p.birth else { return Vec::new() };
    let year = format!("{y:04}");
    let mut out: Vec<CandidateQuery> = Vec::new();
    let mut push = |family: Option<&String>, given: Option<&String>| {
        let q = CandidateQuery {
            birth_date: Some(year.clone()),
            family: family.cloned(),
            given: given.cloned(),
            ..query()
        };
        if !out.contains(&q) {
            out.push(q);
        }
    };
    for family in p.family.first().into_iter().chain(p.former_family.iter().filter_map(|f| f.first())) {
        if family.len() >= 2 {
            push(Some(family), None);
        }
    }
    if let Some(given) = p.given.first().filter(|g| g.len() >= 2) {
        push(None, Some(given));
    }
    out
}

fn date(y: u16, m: u8, d: u8) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// The civil date `delta` days away.
fn shift(y: u16, m: u8, d: u8, delta: i64) -> Option<(u16, u8, u8)> {
    let days = fhirwall_plugin_sdk::fhir::days_from_civil(y, m, d) + delta;
    // Inverse of days_from_civil (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some((u16::try_from(year).ok()?, month as u8, day as u8))
}

#[cfg(test)]
mod tests {
    use super::shift;

    #[test]
    fn days_either_side() {
        assert_eq!(shift(2000, 3, 1, -1), Some((2000, 2, 29)));
        assert_eq!(shift(1999, 12, 31, 1), Some((2000, 1, 1)));
        assert_eq!(shift(1975, 1, 15, 1), Some((1975, 1, 16)));
    }
}
