//! An in-memory member index: the candidate source of `fhirwall match` and
//! `fhirwall plugin test` (the live `$member-match` asks the upstream
//! instead, with the same query semantics).
//!
//! Members are Patient lines plus Coverage lines (Coverage.beneficiary ->
//! Patient); only Patients with a Coverage are members. Query fields AND
//! together: `identifier` equals (after upper-case alphanumeric
//! normalisation) a Patient identifier, a Coverage identifier or a
//! subscriberId; `birth-date` is a prefix of the birth date (`1998`,
//! `1998-03`, `1998-03-31`); `family` / `given` are prefixes of a name word
//! after folding case and diacritics (FHIR string search).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{CandidateQuery, CandidateSource, OfferedCandidate};

struct Member {
    id: String,
    patient: String,
    coverages: Vec<String>,
    birth_date: String,
    family: Vec<String>,
    given: Vec<String>,
}

#[derive(Default)]
pub struct MemberIndex {
    members: Vec<Member>,
    by_identifier: HashMap<String, Vec<u32>>,
    by_birth_date: HashMap<String, Vec<u32>>,
    /// Birth years (the first four characters of the birth date): the
    /// matcher's name-within-the-birth-year queries.
    by_birth_year: HashMap<String, Vec<u32>>,
    /// Family-name and given-name words, for prefix ranges.
    by_family: BTreeMap<String, Vec<u32>>,
    by_given: BTreeMap<String, Vec<u32>>,
}

impl MemberIndex {
    /// Build from NDJSON text (other resource types are skipped).
    pub fn from_ndjson(text: &str) -> anyhow::Result<MemberIndex> {
        let mut patients: Vec<(String, Value, String)> = Vec::new();
        let mut coverages: HashMap<String, Vec<(String, Value)>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| anyhow::anyhow!("members line {}: {e}", n + 1))?;
            match value["resourceType"].as_str() {
                Some("Patient") => {
                    let id = value["id"].as_str().unwrap_or_default().to_owned();
                    anyhow::ensure!(!id.is_empty(), "members line {}: Patient without id", n + 1);
                    patients.push((id, value, line.to_owned()));
                }
                Some("Coverage") => {
                    let target = value["beneficiary"]["reference"].as_str().unwrap_or_default();
                    if let Some(id) = target.strip_prefix("Patient/") {
                        coverages.entry(id.to_owned()).or_default().push((line.to_owned(), value.clone()));
                    }
                }
                _ => {}
            }
        }
        let mut index = MemberIndex::default();
        for (id, patient, line) in patients {
            let Some(covs) = coverages.remove(&id) else { continue };
            let n = index.members.len() as u32;
            let mut ids: Vec<String> = ids_of(&patient["identifier"]);
            for (_, c) in &covs {
                ids.extend(ids_of(&c["identifier"]));
                ids.extend(c["subscriberId"].as_str().map(normalize_identifier));
            }
            ids.sort();
            ids.dedup();
            for i in ids.into_iter().filter(|i| !i.is_empty()) {
                index.by_identifier.entry(i).or_default().push(n);
            }
            let birth_date = patient["birthDate"].as_str().unwrap_or_default().to_owned();
            if birth_date.len() >= 4 {
                index.by_birth_date.entry(birth_date.clone()).or_default().push(n);
                if let Some(year) = birth_date.get(..4) {
                    index.by_birth_year.entry(year.to_owned()).or_default().push(n);
                }
            }
            let mut family = Vec::new();
            let mut given = Vec::new();
            for name in patient["name"].as_array().into_iter().flatten() {
                family.extend(name["family"].as_str().map(name_words).unwrap_or_default());
                for g in name["given"].as_array().into_iter().flatten() {
                    given.extend(g.as_str().map(name_words).unwrap_or_default());
                }
            }
            family.sort();
            family.dedup();
            given.sort();
            given.dedup();
            for f in &family {
                index.by_family.entry(f.clone()).or_default().push(n);
            }
            for g in &given {
                index.by_given.entry(g.clone()).or_default().push(n);
            }
            index.members.push(Member {
                id,
                patient: line,
                coverages: covs.into_iter().map(|(l, _)| l).collect(),
                birth_date,
                family,
                given,
            });
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn matches(&self, m: &Member, q: &Query) -> bool {
        if let Some(id) = &q.identifier
            && !self
                .by_identifier
                .get(id)
                .is_some_and(|list| list.iter().any(|&i| self.members[i as usize].id == m.id))
        {
            return false;
        }
        if let Some(b) = &q.birth_date
            && !m.birth_date.starts_with(b.as_str())
        {
            return false;
        }
        if let Some(f) = &q.family
            && !m.family.iter().any(|w| w.starts_with(f.as_str()))
        {
            return false;
        }
        if let Some(g) = &q.given
            && !m.given.iter().any(|w| w.starts_with(g.as_str()))
        {
            return false;
        }
        true
    }
}

/// A query with its values normalised as the index stores them.
struct Query {
    identifier: Option<String>,
    birth_date: Option<String>,
    family: Option<String>,
    given: Option<String>,
}

impl CandidateSource for MemberIndex {
    fn candidates(
        &self,
        query: &CandidateQuery,
        limit: usize,
    ) -> Result<(Vec<OfferedCandidate>, bool), String> {
        let first_word = |v: &Option<String>| v.as_deref().map(name_words).and_then(|w| w.into_iter().next());
        let q = Query {
            identifier: query.identifier.as_deref().map(normalize_identifier).filter(|i| !i.is_empty()),
            birth_date: query.birth_date.clone(),
            family: first_word(&query.family),
            given: first_word(&query.given),
        };
        // The most selective index, then filter by the rest.
        let pool: Vec<u32> = if let Some(id) = &q.identifier {
            self.by_identifier.get(id).cloned().unwrap_or_default()
        } else if let Some(b) = q.birth_date.as_ref().filter(|b| b.len() == 10) {
            self.by_birth_date.get(b).cloned().unwrap_or_default()
        } else {
            let year = q
                .birth_date
                .as_ref()
                .filter(|b| b.len() >= 4)
                .map(|b| self.by_birth_year.get(&b[..4]).map(Vec::as_slice).unwrap_or_default());
            let family = q.family.as_ref().map(|f| prefix_hits(&self.by_family, f));
            let given = q.given.as_ref().map(|g| prefix_hits(&self.by_given, g));
            let smallest =
                [year.map(|y| y.len()), family.as_ref().map(Vec::len), given.as_ref().map(Vec::len)]
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (n, i)))
                    .min();
            match smallest {
                None => return Err("empty query".into()),
                Some((_, 0)) => year.unwrap_or_default().to_vec(),
                Some((_, 1)) => family.unwrap_or_default(),
                Some(_) => given.unwrap_or_default(),
            }
        };
        let mut out = Vec::new();
        let mut truncated = false;
        for i in pool {
            let m = &self.members[i as usize];
            if !self.matches(m, &q) {
                continue;
            }
            if out.len() == limit {
                truncated = true;
                break;
            }
            out.push(OfferedCandidate {
                id: m.id.clone(),
                patient: m.patient.clone(),
                coverages: m.coverages.clone(),
            });
        }
        Ok((out, truncated))
    }
}

/// Members with a word starting with `prefix`, in index order, each once.
fn prefix_hits(words: &BTreeMap<String, Vec<u32>>, prefix: &str) -> Vec<u32> {
    let mut hits: Vec<u32> = words
        .range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    hits.sort_unstable();
    hits.dedup();
    hits
}

fn ids_of(identifiers: &Value) -> Vec<String> {
    identifiers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["value"].as_str())
        .map(normalize_identifier)
        .collect()
}

/// Upper-case ASCII letters and digits only.
pub fn normalize_identifier(value: &str) -> String {
    value.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect()
}

/// Lower-case words with diacritics folded (`García-López` -> `garcia`, `lopez`).
pub fn name_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in value.chars() {
        if c == '\'' || c == '’' || c == '.' {
            continue;
        }
        match fold(c) {
            Some(f) => word.push_str(f),
            None => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn fold(c: char) -> Option<&'static str> {
    const ASCII: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t",
        "u", "v", "w", "x", "y", "z",
    ];
    if c.is_ascii_alphabetic() {
        return Some(ASCII[(c.to_ascii_lowercase() as u8 - b'a') as usize]);
    }
    Some(match c {
        'à'..='å' | 'À'..='Å' | 'ā' | 'ă' | 'ą' | 'Ā' | 'Ă' | 'Ą' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'Ç' | 'ć' | 'č' | 'Ć' | 'Č' => "c",
        'ð' | 'Ð' | 'ď' | 'đ' | 'Ď' | 'Đ' => "d",
        'è'..='ë' | 'È'..='Ë' | 'ē' | 'ė' | 'ę' | 'ě' | 'Ē' | 'Ė' | 'Ę' | 'Ě' => "e",
        'ğ' | 'Ğ' => "g",
        'ì'..='ï' | 'Ì'..='Ï' | 'ī' | 'į' | 'ı' | 'Ī' | 'Į' | 'İ' => "i",
        'ł' | 'Ł' | 'ľ' | 'Ľ' => "l",
        'ñ' | 'Ñ' | 'ń' | 'ň' | 'Ń' | 'Ň' => "n",
        'ò'..='ö' | 'Ò'..='Ö' | 'ø' | 'Ø' | 'ō' | 'ő' | 'Ō' | 'Ő' => "o",
        'œ' | 'Œ' => "oe",
        'ř' | 'Ř' => "r",
        'ś' | 'ş' | 'š' | 'Ś' | 'Ş' | 'Š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'Ţ' | 'Ť' => "t",
        'ù'..='ü' | 'Ù'..='Ü' | 'ū' | 'ů' | 'ű' | 'ų' | 'Ū' | 'Ů' | 'Ű' | 'Ų' => "u",
        'ý' | 'ÿ' | 'Ý' | 'Ÿ' => "y",
        'ź' | 'ż' | 'ž' | 'Ź' | 'Ż' | 'Ž' => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: &str = r#"{"resourceType":"Patient","id":"p1","identifier":[{"value":"FW1-01"}],"name":[{"family":"García-López","given":["María"]}],"birthDate":"1980-04-03"}
{"resourceType":"Coverage","id":"c1","subscriberId":"FW1","identifier":[{"value":"FW1-01"}],"beneficiary":{"reference":"Patient/p1"}}
{"resourceType":"Patient","id":"p2","name":[{"family":"Nobody"}],"birthDate":"1980-04-03"}"#;

    #[test]
    fn finds_covered_members_only() {
        let index = MemberIndex::from_ndjson(MEMBERS).unwrap();
        assert_eq!(index.len(), 1);
        let q = |identifier: Option<&str>, birth: Option<&str>, family: Option<&str>| CandidateQuery {
            identifier: identifier.map(str::to_owned),
            birth_date: birth.map(str::to_owned),
            family: family.map(str::to_owned),
            given: None,
        };
        let ids = |query: CandidateQuery| -> Vec<String> {
            index.candidates(&query, 10).unwrap().0.into_iter().map(|c| c.id).collect()
        };
        assert_eq!(ids(q(Some("fw1 01"), None, None)), vec!["p1"]);
        assert_eq!(ids(q(Some("FW1"), None, None)), vec!["p1"]);
        assert_eq!(ids(q(None, Some("1980"), Some("LOPEZ"))), vec!["p1"]);
        assert_eq!(ids(q(None, Some("1980-04-03"), None)), vec!["p1"]);
        assert!(ids(q(None, Some("1981"), Some("garc"))).is_empty());
        // Given name within the birth year, and the year alone (their own
        // indexes, not a scan).
        let given =
            |g: &str, birth: &str| CandidateQuery { given: Some(g.into()), ..q(None, Some(birth), None) };
        assert_eq!(ids(given("mar", "1980")), vec!["p1"]);
        assert!(ids(given("mar", "1979")).is_empty());
        assert!(ids(given("jo", "1980")).is_empty());
        assert_eq!(ids(q(None, Some("1980"), None)), vec!["p1"]);
        assert_eq!(ids(q(None, Some("1980-04"), None)), vec!["p1"]);
    }
}
