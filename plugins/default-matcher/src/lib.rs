//! fhirwall's default member matcher (`matcher` world): probabilistic
//! record linkage that finds members without their card and still prefers
//! no match to a wrong match.
//!
//! 1. Retrieve candidates by blocking ([`blocking`]): the identifiers sent
//!    and the exact birth date first; only when those cannot settle the
//!    answer, the birth date swapped or a day off, family-name prefixes,
//!    the given name and former names within the birth year.
//! 2. Score every candidate ([`scoring`]): per-field evidence weights
//!    (Fellegi–Sunter log-likelihood ratios) for identifiers (own id,
//!    subscriber id, one typo away, another id of this plan, none or another
//!    payer's), birth date (exact, day/month swapped, one day off,
//!    different), family and given names (exact, compound, former name,
//!    nickname, typo, phonetic, different; swapped family/given), gender,
//!    address (street, postal code, city), phone and e-mail. Household
//!    fields only corroborate: a candidate whose birth date, given name,
//!    gender or Jr/Sr suffix contradicts the provider's is not *eligible*.
//! 3. Decide: the best eligible candidate matches when its score reaches
//!    [`MATCH`] and no other eligible candidate comes within [`MARGIN`] of
//!    it (then: ambiguous). Name and birth date alone (no card, no
//!    address, phone or e-mail that agrees) stay below [`MATCH`]: someone
//!    else with the same name and birth date may be asking.

use std::collections::BTreeMap;

use fhirwall_plugin_sdk::matcher::{
    Ambiguity, Candidate, CandidateQuery, Candidates, MatchRequest, MatchResult, Matched, Matcher,
};

mod blocking;
mod given_names;
mod nicknames;
mod phonetic;
mod record;
mod scoring;

use blocking::Block;
use record::{Cand, Probe};
use scoring::{Assessment, DobFit, IdFit};

/// A candidate matches at or above this score (when corroborated, see
/// [`scoring::Assessment::corroborated`], and its names, birth date and
/// gender reach [`IDENTITY`])...
pub const MATCH: f64 = 16.0;
/// The least evidence names, birth date and gender must give on their own
/// (unless the member's own id agrees).
pub const IDENTITY: f64 = 6.5;
/// ...and only when no other eligible candidate comes within this margin
/// of it; otherwise the answer is ambiguous.
pub const MARGIN: f64 = 5.0;
/// Below [`MATCH`], two or more eligible candidates at least this good and
/// within [`MARGIN`] of each other make the answer ambiguous rather than no
/// match (for instance two members with the same name and birth date).
pub const PLAUSIBLE: f64 = 18.0;

pub struct DefaultMatcher;

impl Matcher for DefaultMatcher {
    fn match_member(request: &MatchRequest, candidates: &dyn Candidates) -> MatchResult {
        let probe = match Probe::from_json(&request.member_patient, &request.coverage_to_match) {
            Ok(p) => p,
            Err(why) => return MatchResult::NoMatch(vec![why]),
        };
        let mut search = Search::new(&probe, candidates);
        match search.run() {
            Ok(()) => decide(&search.scored()),
            Err(why) => MatchResult::NoMatch(vec![why]),
        }
    }
}

fhirwall_plugin_sdk::export_matcher!(DefaultMatcher);

/// A candidate seen during this request.
enum Seen {
    Scored(Box<(Cand, Assessment)>),
    /// Its birth date rules it out (and it carries no identifier sent).
    RuledOut,
}

struct Search<'a> {
    probe: &'a Probe,
    source: &'a dyn Candidates,
    seen: BTreeMap<String, Seen>,
    queries: Vec<CandidateQuery>,
    /// Stage 3 asked: candidates with a birth date one digit off are read.
    typo_stage: bool,
}

impl<'a> Search<'a> {
    fn new(probe: &'a Probe, source: &'a dyn Candidates) -> Search<'a> {
        Search { probe, source, seen: BTreeMap::new(), queries: Vec::new(), typo_stage: false }
    }

    fn run(&mut self) -> Result<(), String> {
        // Stage 1: identifiers and the exact birth date.
        let mut ids_complete = true;
        let mut dob_complete = false;
        for (block, query) in blocking::stage_one(self.probe) {
            let Some((found, truncated)) = self.ask(query.clone(), block)? else { continue };
            match block {
                Block::Identifier => {
                    let raw = query.identifier.clone().unwrap_or_default();
                    let norm = fhirwall_plugin_sdk::fhir::normalize_identifier(&raw);
                    if found == 0 && norm != raw {
                        let again = CandidateQuery { identifier: Some(norm), ..query };
                        match self.ask(again, Block::IdentifierNormalised)? {
                            Some((_, t)) => ids_complete &= !t,
                            None => ids_complete = false,
                        }
                    } else {
                        ids_complete &= !truncated;
                    }
                }
                Block::BirthDate => dob_complete = !truncated,
                _ => {}
            }
        }
        if self.settled(ids_complete, dob_complete) {
            return Ok(());
        }
        // Stage 2: the other compatible birth dates.
        for query in blocking::stage_two(self.probe) {
            self.ask(query, Block::Other)?;
        }
        // Stage 3: a birth date with a typo, when nothing else fits.
        if self.scored().first().is_none_or(|(_, (_, a))| !acceptable(a))
            && scoring::can_corroborate(self.probe)
        {
            self.typo_stage = true;
            for query in blocking::stage_three(self.probe) {
                self.ask(query, Block::Other)?;
            }
        }
        Ok(())
    }

    /// Ask one query (unless asked already or over the limit): how many
    /// candidates came back and whether the page was truncated.
    fn ask(&mut self, query: CandidateQuery, block: Block) -> Result<Option<(usize, bool)>, String> {
        if self.queries.len() >= blocking::MAX_QUERIES || self.queries.contains(&query) {
            return Ok(None);
        }
        self.queries.push(query.clone());
        let page = self.source.candidates(&query)?;
        let count = page.candidates.len();
        let by_id = matches!(block, Block::Identifier | Block::IdentifierNormalised);
        for Candidate { id, patient, coverages } in page.candidates {
            if let Some(Seen::Scored(_)) = self.seen.get(&id) {
                continue;
            }
            // Found by a demographic key only: it carries none of the
            // identifiers sent (the identifier blocks would have found it),
            // so a contradicting birth date makes it ineligible; skip the
            // parse. Found by identifier: always look.
            if !by_id {
                if self.seen.contains_key(&id) {
                    continue;
                }
                if let (Some(p), Some(c)) = (self.probe.person.birth, record::quick_birth_date(&patient))
                    && !scoring::dob_compatible(Some(p), Some(c), self.typo_stage)
                {
                    self.seen.insert(id, Seen::RuledOut);
                    continue;
                }
            }
            let Some(cand) = Cand::parse(id.clone(), &patient, &coverages) else { continue };
            let assessment = scoring::assess(self.probe, &cand);
            self.seen.insert(id, Seen::Scored(Box::new((cand, assessment))));
        }
        Ok(Some((count, page.truncated)))
    }

    /// Can stage 1's answer stand? When no candidate it has not seen could
    /// change it: an unseen candidate has neither the exact birth date nor
    /// an identifier sent (when those blocks came back complete), which
    /// bounds its score.
    fn settled(&self, ids_complete: bool, dob_complete: bool) -> bool {
        if !scoring::can_corroborate(self.probe) {
            // Nothing but name and birth date: no match is possible (the
            // exact-birth-date block shows ambiguity).
            return true;
        }
        let dob_max = if dob_complete { DobFit::Swapped } else { DobFit::Exact };
        let id_max = if ids_complete { IdFit::Near } else { IdFit::Member };
        let bound = scoring::upper_bound(self.probe, dob_max, id_max);
        match self.scored().first() {
            Some((best, (_, a))) if acceptable(a) => bound <= best - MARGIN,
            _ => bound < MATCH,
        }
    }

    /// Eligible candidates, best first.
    fn scored(&self) -> Vec<(f64, &(Cand, Assessment))> {
        let mut out: Vec<(f64, &(Cand, Assessment))> = self
            .seen
            .values()
            .filter_map(|s| match s {
                Seen::Scored(b) if b.1.eligible => Some((b.1.score, &**b)),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.0.id.cmp(&b.1.0.id)));
        out
    }
}

/// What the matcher did for one request, in words (for tuning: the
/// queries asked, every candidate scored and its field levels). Not used by
/// the component's export.
#[doc(hidden)]
pub fn explain(request: &MatchRequest, candidates: &dyn Candidates) -> String {
    let probe = match Probe::from_json(&request.member_patient, &request.coverage_to_match) {
        Ok(p) => p,
        Err(why) => return why,
    };
    let mut search = Search::new(&probe, candidates);
    let mut out = String::new();
    if let Err(e) = search.run() {
        out.push_str(&format!("error {e}\n"));
    }
    out.push_str(&format!("probe {:?}\n", probe));
    for q in &search.queries {
        out.push_str(&format!("query {:?} {:?} {:?} {:?}\n", q.identifier, q.birth_date, q.family, q.given));
    }
    for (id, seen) in &search.seen {
        if let Seen::Scored(b) = seen {
            out.push_str(&format!(
                "cand {id} score {:.1} eligible {} {:?}\n",
                b.1.score, b.1.eligible, b.1.levels
            ));
        }
    }
    out.push_str(&format!(
        "ruled out by birth date: {}\n",
        search.seen.values().filter(|s| matches!(s, Seen::RuledOut)).count()
    ));
    out.push_str(&format!("answer {:?}\n", decide(&search.scored())));
    out
}

fn decide(scored: &[(f64, &(Cand, Assessment))]) -> MatchResult {
    let Some(&(best, (cand, assessment))) = scored.first() else {
        return MatchResult::NoMatch(vec!["no eligible candidate".into()]);
    };
    let close: Vec<String> =
        scored[1..].iter().filter(|(s, _)| *s > best - MARGIN).map(|(_, (c, _))| c.id.clone()).collect();
    if acceptable(assessment) {
        if close.is_empty() {
            return MatchResult::Match(Matched {
                member: cand.id.clone(),
                score: best,
                reasons: assessment.reasons.iter().map(|r| (*r).to_owned()).collect(),
            });
        }
        return ambiguous(cand, close, format!("another candidate scores within {MARGIN:.1} of the best"));
    }
    let plausible: Vec<String> = scored[1..]
        .iter()
        .filter(|(s, _)| *s >= PLAUSIBLE && *s > best - MARGIN)
        .map(|(_, (c, _))| c.id.clone())
        .collect();
    if best >= PLAUSIBLE && !plausible.is_empty() {
        return ambiguous(cand, plausible, "several candidates fit equally, none well enough".into());
    }
    if best >= MATCH && !assessment.corroborated {
        return MatchResult::NoMatch(vec!["name and birth date only: nothing else agrees".into()]);
    }
    if best >= MATCH && assessment.identity < IDENTITY {
        return MatchResult::NoMatch(vec![format!(
            "names, birth date and gender give {:.1}, below {IDENTITY:.1}",
            assessment.identity
        )]);
    }
    MatchResult::NoMatch(vec![format!("best score {best:.1} below {MATCH:.1}")])
}

/// Good enough to be matched, if no other candidate comes close.
fn acceptable(a: &Assessment) -> bool {
    a.eligible
        && a.corroborated
        && (a.identity >= IDENTITY || a.levels.id == IdFit::Member)
        && a.score >= MATCH
}

fn ambiguous(best: &Cand, others: Vec<String>, reason: String) -> MatchResult {
    let mut members = vec![best.id.clone()];
    members.extend(others.into_iter().take(8));
    MatchResult::Ambiguous(Ambiguity { members, reasons: vec![reason] })
}

#[cfg(test)]
mod tests;
