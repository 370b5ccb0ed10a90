//! fhirwall's default member matcher (`matcher` world): deterministic
//! demographic matching that prefers no match to a wrong match.
//!
//! 1. Gather candidates with a few narrow queries: each identifier the
//!    provider sent (member id, subscriber id, card number; as sent and
//!    normalised), the exact birth date, and each family-name word (and,
//!    for swapped names, each given name) within the birth year.
//! 2. Score every candidate on identifiers, birth date (exact; off by one
//!    day or day/month swapped), family and given names (diacritics folded,
//!    hyphenated and compound names split, nicknames, one typo, swapped
//!    family/given), gender and postal code.
//! 3. Decide with two thresholds and a margin: the best candidate matches
//!    only when its score reaches [`MATCH`] (the acceptance threshold) and
//!    no runner-up reaches it too or comes within [`MARGIN`] of the best
//!    (the ambiguity threshold); otherwise ambiguous or no match.
//!
//! The weights are conservative: demographics alone need an exact name and
//! birth date to reach the threshold; a perturbed name or birth date needs
//! a matching identifier as well.

use std::collections::BTreeMap;

use fhirwall_plugin_sdk::fhir::{self, Coverage, Patient};
use fhirwall_plugin_sdk::matcher::{
    Ambiguity, Candidate, CandidateQuery, Candidates, MatchRequest, MatchResult, Matched, Matcher,
};

mod nicknames;

/// A candidate matches at or above this score...
pub const MATCH: f64 = 10.5;
/// ...and only when no runner-up also reaches `MATCH` or comes within
/// this margin of the best score; otherwise the answer is ambiguous.
pub const MARGIN: f64 = 3.0;
/// At most this many `candidates` queries per request.
const MAX_QUERIES: usize = 12;

pub struct DefaultMatcher;

impl Matcher for DefaultMatcher {
    fn match_member(request: &MatchRequest, candidates: &dyn Candidates) -> MatchResult {
        let probe = match Probe::from_request(request) {
            Ok(p) => p,
            Err(why) => return MatchResult::NoMatch(vec![why]),
        };
        let found = match gather(&probe, candidates) {
            Ok(found) => found,
            Err(why) => return MatchResult::NoMatch(vec![why]),
        };
        decide(&probe, &found)
    }
}

fhirwall_plugin_sdk::export_matcher!(DefaultMatcher);

/// What the provider sent, normalised once.
#[derive(Debug, Default)]
struct Probe {
    family: Vec<String>,
    given: Vec<String>,
    birth: Option<(u16, u8, u8)>,
    birth_text: Option<String>,
    gender: Option<String>,
    /// Raw and normalised identifier values.
    ids: Vec<String>,
    ids_norm: Vec<String>,
    postal: Option<String>,
}

impl Probe {
    fn from_request(request: &MatchRequest) -> Result<Probe, String> {
        let patient = Patient::parse(&request.member_patient)
            .map_err(|_| "MemberPatient is not a Patient".to_owned())?;
        let coverage = Coverage::parse(&request.coverage_to_match)
            .map_err(|_| "CoverageToMatch is not a Coverage".to_owned())?;
        let mut probe = Probe::default();
        if let Some(name) = patient.main_name() {
            probe.family = name.family.as_deref().map(fhir::name_tokens).unwrap_or_default();
            probe.given = name.given.iter().flat_map(|g| fhir::name_tokens(g)).collect();
        }
        probe.birth_text = patient.birth_date.clone().filter(|b| fhir::parse_date(b).is_some());
        probe.birth = patient.birth_date.as_deref().and_then(fhir::parse_date);
        probe.gender = patient.gender.clone().filter(|g| g == "male" || g == "female");
        let mut raw: Vec<&str> = Vec::new();
        raw.extend(coverage.subscriber_id.as_deref());
        raw.extend(coverage.identifier.iter().filter_map(|i| i.value.as_deref()));
        raw.extend(patient.identifier.iter().filter_map(|i| i.value.as_deref()));
        for value in raw {
            let value = value.trim();
            let norm = fhir::normalize_identifier(value);
            if norm.len() < 4 || probe.ids_norm.contains(&norm) {
                continue;
            }
            probe.ids.push(value.to_owned());
            probe.ids_norm.push(norm);
        }
        probe.postal = patient.address.iter().find_map(|a| a.postal_code.as_deref()).map(postal5);
        if probe.family.is_empty() && probe.ids.is_empty() {
            return Err("no family name and no identifier to match on".into());
        }
        Ok(probe)
    }
}

fn postal5(p: &str) -> String {
    p.chars().filter(char::is_ascii_digit).take(5).collect()
}

/// A candidate with its parsed fields.
struct Found {
    id: String,
    patient: Patient,
    coverages: Vec<Coverage>,
}

fn gather(probe: &Probe, source: &dyn Candidates) -> Result<Vec<Found>, String> {
    let mut queries: Vec<CandidateQuery> = Vec::new();
    let mut push = |q: CandidateQuery| {
        if queries.len() < MAX_QUERIES && !queries.contains(&q) {
            queries.push(q);
        }
    };
    let empty = CandidateQuery { identifier: None, birth_date: None, family: None, given: None };
    for (raw, norm) in probe.ids.iter().zip(&probe.ids_norm).take(3) {
        push(CandidateQuery { identifier: Some(raw.clone()), ..empty.clone() });
        if raw != norm {
            push(CandidateQuery { identifier: Some(norm.clone()), ..empty.clone() });
        }
    }
    if let Some(b) = &probe.birth_text {
        push(CandidateQuery { birth_date: Some(b.clone()), ..empty.clone() });
    }
    if let Some((year, month, day)) = probe.birth {
        let year_text = format!("{year:04}");
        for word in probe.family.iter().chain(probe.given.iter().take(1)).filter(|w| w.len() >= 2) {
            push(CandidateQuery {
                family: Some(word.clone()),
                birth_date: Some(year_text.clone()),
                ..empty.clone()
            });
        }
        // Day and month swapped (03-04 for 04-03).
        if day <= 12 && day != month {
            push(CandidateQuery {
                birth_date: Some(format!("{year:04}-{day:02}-{month:02}")),
                ..empty.clone()
            });
        }
    }
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for query in &queries {
        let page = source.candidates(query)?;
        for Candidate { id, patient, coverages } in page.candidates {
            if found.contains_key(&id) {
                continue;
            }
            let Ok(patient) = Patient::parse(&patient) else { continue };
            let coverages = coverages.iter().filter_map(|c| Coverage::parse(c).ok()).collect();
            found.insert(id.clone(), Found { id, patient, coverages });
        }
    }
    Ok(found.into_values().collect())
}

/// How a name part compares.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Fit {
    Different,
    Initial,
    Typo,
    Nickname,
    Partial,
    Exact,
}

fn score(probe: &Probe, cand: &Found) -> (f64, Vec<&'static str>) {
    let mut s = 0.0;
    let mut why = Vec::new();

    // Identifiers: the member id is one person; a subscriber id is shared
    // by a household, so it counts less.
    let mut member_ids: Vec<String> = cand
        .patient
        .identifier
        .iter()
        .filter_map(|i| i.value.as_deref())
        .map(fhir::normalize_identifier)
        .collect();
    let mut subscriber_ids = Vec::new();
    for c in &cand.coverages {
        member_ids
            .extend(c.identifier.iter().filter_map(|i| i.value.as_deref()).map(fhir::normalize_identifier));
        subscriber_ids.extend(c.subscriber_id.as_deref().map(fhir::normalize_identifier));
    }
    if probe.ids_norm.iter().any(|p| member_ids.contains(p)) {
        s += 7.0;
        why.push("member id");
    } else if probe
        .ids_norm
        .iter()
        .any(|p| subscriber_ids.iter().any(|s| s.len() >= 6 && p.starts_with(s.as_str())))
    {
        // The subscriber id, or a member id built on it (`FW1000123-02`).
        s += 4.0;
        why.push("subscriber id");
    } else if !probe.ids_norm.is_empty() {
        // An id was sent and none fits: a different plan membership or a
        // typo; weigh against, without ruling out.
        s -= 2.0;
    }

    // Birth date.
    let cand_birth = cand.patient.birth_date.as_deref().and_then(fhir::parse_date);
    match (probe.birth, cand_birth) {
        (Some(p), Some(c)) if p == c => {
            s += 4.0;
            why.push("birth date");
        }
        (Some(p), Some(c)) => {
            let days = (fhir::days_from_civil(p.0, p.1, p.2) - fhir::days_from_civil(c.0, c.1, c.2)).abs();
            if days == 1 || (p.0 == c.0 && p.1 == c.2 && p.2 == c.1) {
                s += 1.5;
                why.push("birth date near");
            } else {
                s -= 8.0;
            }
        }
        _ => s -= 2.0,
    }

    // Names, and swapped family/given.
    let name = cand.patient.main_name();
    let c_family: Vec<String> =
        name.and_then(|n| n.family.as_deref()).map(fhir::name_tokens).unwrap_or_default();
    let c_given: Vec<String> =
        name.map(|n| n.given.iter().flat_map(|g| fhir::name_tokens(g)).collect()).unwrap_or_default();
    let family = family_fit(&probe.family, &c_family);
    let given = given_fit(&probe.given, &c_given);
    let swapped = family_fit(&probe.given, &c_family) >= Fit::Partial
        && given_fit(&probe.family, &c_given) >= Fit::Nickname;
    let (f, g) = if swapped && (family < Fit::Typo || given < Fit::Typo) {
        why.push("names swapped");
        (Fit::Partial, Fit::Partial)
    } else {
        (family, given)
    };
    s += match f {
        Fit::Exact => 3.0,
        Fit::Partial => 2.5,
        Fit::Nickname | Fit::Typo => 1.5,
        Fit::Initial => -3.0,
        Fit::Different => -6.0,
    };
    // A nickname alone (no card) stays below the threshold even with a
    // matching birth date, family name, gender and postal code.
    s += match g {
        Fit::Exact => 3.0,
        Fit::Partial => 2.5,
        Fit::Nickname => 2.0,
        Fit::Typo => 1.5,
        Fit::Initial => 0.0,
        Fit::Different => -5.0,
    };
    if f == Fit::Exact && g == Fit::Exact {
        why.push("name");
    }

    match (&probe.gender, &cand.patient.gender) {
        (Some(p), Some(c)) if p == c => s += 0.5,
        (Some(_), Some(c)) if c == "male" || c == "female" => s -= 4.0,
        _ => {}
    }
    if let Some(p) = &probe.postal
        && p.len() == 5
        && cand.patient.address.iter().filter_map(|a| a.postal_code.as_deref()).any(|c| postal5(c) == *p)
    {
        s += 0.5;
        why.push("postal code");
    }
    (s, why)
}

/// Family names: equal words; a hyphenated or compound name sharing a word
/// (and a provider who put the middle name into family); one typo.
fn family_fit(probe: &[String], cand: &[String]) -> Fit {
    if probe.is_empty() || cand.is_empty() {
        return Fit::Different;
    }
    if probe == cand || probe.concat() == cand.concat() {
        return Fit::Exact;
    }
    // "Garcia Lopez" vs "Garcia-Lopez" is caught above; "Garcia" vs "Garcia Lopez",
    // "Ann Person" (middle name in family) vs "Person":
    if probe.iter().any(|w| w.len() >= 2 && cand.contains(w)) {
        return Fit::Partial;
    }
    if probe.len() == 1
        && cand.len() == 1
        && probe[0].len() >= 4
        && fhir::edit_distance(&probe[0], &cand[0], 1) <= 1
    {
        return Fit::Typo;
    }
    if probe.concat().len() >= 5 && fhir::edit_distance(&probe.concat(), &cand.concat(), 1) <= 1 {
        return Fit::Typo;
    }
    Fit::Different
}

/// Given names: the first given name against any of the candidate's, with
/// nicknames, one typo, or an initial.
fn given_fit(probe: &[String], cand: &[String]) -> Fit {
    let Some(first) = probe.first() else { return Fit::Different };
    let Some(cfirst) = cand.first() else { return Fit::Different };
    if first == cfirst {
        return Fit::Exact;
    }
    if nicknames::same_person(first, cfirst) {
        return Fit::Nickname;
    }
    // The provider's first given is the candidate's middle name, or the
    // provider has the name written together ("Mary Ann" / "Maryann").
    if probe.concat() == cand.concat()
        || (cand.len() > 1 && cand[1..].contains(first) && probe.len() > 1 && probe.contains(cfirst))
    {
        return Fit::Partial;
    }
    if first.len() >= 4 && cfirst.len() >= 4 && fhir::edit_distance(first, cfirst, 1) <= 1 {
        return Fit::Typo;
    }
    if (first.len() == 1 && cfirst.starts_with(first.as_str()))
        || (cfirst.len() == 1 && first.starts_with(cfirst.as_str()))
    {
        return Fit::Initial;
    }
    Fit::Different
}

fn decide(probe: &Probe, found: &[Found]) -> MatchResult {
    if found.is_empty() {
        return MatchResult::NoMatch(vec!["no candidates".into()]);
    }
    let mut scored: Vec<(f64, &Found, Vec<&'static str>)> = found
        .iter()
        .map(|c| {
            let (s, why) = score(probe, c);
            (s, c, why)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let (best, cand, why) = &scored[0];
    if *best < MATCH {
        return MatchResult::NoMatch(vec![format!("best score {best:.1} below {MATCH:.1}")]);
    }
    let rivals: Vec<String> = scored[1..]
        .iter()
        .filter(|(s, _, _)| *s >= MATCH || *s > best - MARGIN)
        .map(|(_, c, _)| c.id.clone())
        .collect();
    if !rivals.is_empty() {
        let mut members = vec![cand.id.clone()];
        members.extend(rivals);
        return MatchResult::Ambiguous(Ambiguity {
            members,
            reasons: vec![format!(
                "{} candidates score within {MARGIN:.1} of the threshold",
                scored.len().min(9)
            )],
        });
    }
    MatchResult::Match(Matched {
        member: cand.id.clone(),
        score: *best,
        reasons: why.iter().map(|w| (*w).to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests;
