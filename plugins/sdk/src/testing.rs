//! A native test harness for matchers: [`MemberIndex`] answers
//! `candidates` queries from Patient and Coverage JSON the way fhirwall's
//! offline index does (`fhirwall match`), so a matcher's logic runs under
//! plain `cargo test`.
//!
//! ```ignore
//! let index = MemberIndex::from_ndjson(include_str!("members.ndjson"));
//! let result = MyMatcher::match_member(&request, &index);
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::fhir::{self, Coverage, Patient};
use crate::matcher::{Candidate, CandidatePage, CandidateQuery, Candidates, MatchRequest};

/// Members in memory, searchable like the host searches them.
#[derive(Default)]
pub struct MemberIndex {
    members: BTreeMap<String, Member>,
    /// Member ids by normalised identifier and by birth date / year, so that
    /// a query reads a few members rather than all of them.
    by_identifier: HashMap<String, Vec<String>>,
    by_birth_date: HashMap<String, Vec<String>>,
    /// Most candidates one query returns.
    pub max_candidates: usize,
    queries: std::cell::Cell<usize>,
}

struct Member {
    patient_json: String,
    patient: Patient,
    coverages: Vec<(String, Coverage)>,
}

impl MemberIndex {
    /// Patient and Coverage lines (Coverage.beneficiary -> Patient); other
    /// resource types are skipped. Members without a Coverage are not
    /// candidates (only covered members are).
    pub fn from_ndjson(text: &str) -> MemberIndex {
        let mut index = MemberIndex { max_candidates: 100, ..MemberIndex::default() };
        let mut coverages = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line).expect("member line is JSON");
            match value["resourceType"].as_str() {
                Some("Patient") => {
                    let patient = Patient::parse(line).expect("Patient");
                    let id = patient.id.clone().expect("Patient.id");
                    index
                        .members
                        .insert(id, Member { patient_json: line.to_owned(), patient, coverages: Vec::new() });
                }
                Some("Coverage") => coverages.push(line.to_owned()),
                _ => {}
            }
        }
        for line in coverages {
            let coverage = Coverage::parse(&line).expect("Coverage");
            let Some(target) = coverage.beneficiary.as_ref().and_then(|b| b.reference.as_deref()) else {
                continue;
            };
            if let Some(member) = target.strip_prefix("Patient/").and_then(|id| index.members.get_mut(id)) {
                member.coverages.push((line, coverage));
            }
        }
        index.members.retain(|_, m| !m.coverages.is_empty());
        for (id, m) in &index.members {
            let mut ids: Vec<String> = m
                .patient
                .identifier
                .iter()
                .filter_map(|i| i.value.as_deref())
                .chain(m.coverages.iter().flat_map(|(_, c)| {
                    c.identifier.iter().filter_map(|i| i.value.as_deref()).chain(c.subscriber_id.as_deref())
                }))
                .map(fhir::normalize_identifier)
                .filter(|i| !i.is_empty())
                .collect();
            ids.sort();
            ids.dedup();
            for i in ids {
                index.by_identifier.entry(i).or_default().push(id.clone());
            }
            if let Some(b) = m.patient.birth_date.as_deref().filter(|b| b.len() >= 10) {
                index.by_birth_date.entry(b[..10].to_owned()).or_default().push(id.clone());
                index.by_birth_date.entry(b[..4].to_owned()).or_default().push(id.clone());
            }
        }
        index
    }

    /// How many `candidates` calls were answered.
    pub fn queries(&self) -> usize {
        self.queries.get()
    }
}

impl Candidates for MemberIndex {
    fn candidates(&self, query: &CandidateQuery) -> Result<CandidatePage, String> {
        self.queries.set(self.queries.get() + 1);
        if query.identifier.is_none()
            && query.birth_date.is_none()
            && query.family.is_none()
            && query.given.is_none()
        {
            return Err("empty query".into());
        }
        // The narrowest index the query allows (ids are in order), else all.
        let pool: Box<dyn Iterator<Item = (&String, &Member)>> = if let Some(value) = &query.identifier {
            let ids = self.by_identifier.get(&fhir::normalize_identifier(value));
            Box::new(ids.into_iter().flatten().filter_map(|id| self.members.get_key_value(id)))
        } else if let Some(date) = query.birth_date.as_deref().filter(|d| d.len() == 10 || d.len() == 4) {
            let ids = self.by_birth_date.get(date);
            Box::new(ids.into_iter().flatten().filter_map(|id| self.members.get_key_value(id)))
        } else {
            Box::new(self.members.iter())
        };
        let mut out = Vec::new();
        let mut truncated = false;
        for (id, m) in pool {
            if !matches_query(m, query) {
                continue;
            }
            if out.len() == self.max_candidates {
                truncated = true;
                break;
            }
            out.push(Candidate {
                id: id.clone(),
                patient: m.patient_json.clone(),
                coverages: m.coverages.iter().map(|(j, _)| j.clone()).collect(),
            });
        }
        Ok(CandidatePage { candidates: out, truncated })
    }
}

fn matches_query(m: &Member, q: &CandidateQuery) -> bool {
    if let Some(value) = &q.identifier {
        let want = fhir::normalize_identifier(value);
        let ids = m.patient.identifier.iter().filter_map(|i| i.value.as_deref()).chain(
            m.coverages.iter().flat_map(|(_, c)| {
                c.identifier.iter().filter_map(|i| i.value.as_deref()).chain(c.subscriber_id.as_deref())
            }),
        );
        if want.is_empty() || !ids.into_iter().any(|v| fhir::normalize_identifier(v) == want) {
            return false;
        }
    }
    if let Some(date) = &q.birth_date
        && !m.patient.birth_date.as_deref().is_some_and(|b| b.starts_with(date.as_str()))
    {
        return false;
    }
    if let Some(family) = &q.family {
        let want = fhir::normalize_name(family);
        if want.is_empty()
            || !m
                .patient
                .name
                .iter()
                .any(|n| n.family.as_deref().is_some_and(|f| fhir::normalize_name(f).starts_with(&want)))
        {
            return false;
        }
    }
    if let Some(given) = &q.given {
        let want = fhir::normalize_name(given);
        if want.is_empty()
            || !m
                .patient
                .name
                .iter()
                .flat_map(|n| n.given.iter())
                .any(|g| fhir::normalize_name(g).starts_with(&want))
        {
            return false;
        }
    }
    true
}

/// A match request from JSON text of the three resources.
pub fn request(member_patient: &str, coverage_to_match: &str) -> MatchRequest {
    MatchRequest {
        member_patient: member_patient.to_owned(),
        coverage_to_match: coverage_to_match.to_owned(),
        coverage_to_link: None,
    }
}
