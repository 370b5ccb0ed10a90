//! Tuning aid: run the default matcher natively over benchmark files and
//! explain chosen queries.
//!
//!     cargo run --release -p default-matcher --example explain -- MEMBERS QUERIES [ID...]
//!
//! With ids: what the matcher did for each of those queries. Without: every
//! query's answer as `fhirwall match` prints it (and the time taken).

use std::cell::Cell;

use fhirwall_plugin_sdk::matcher::{CandidatePage, CandidateQuery, Candidates, MatchResult, Matcher};
use fhirwall_plugin_sdk::testing::{MemberIndex, request};

/// Counts what the matcher asks and gets.
struct Counting<'a> {
    index: &'a MemberIndex,
    queries: Cell<usize>,
    candidates: Cell<usize>,
    stage_two: Cell<usize>,
}

impl Candidates for Counting<'_> {
    fn candidates(&self, query: &CandidateQuery) -> Result<CandidatePage, String> {
        self.queries.set(self.queries.get() + 1);
        if query.birth_date.as_deref().is_some_and(|b| b.len() == 4) {
            self.stage_two.set(self.stage_two.get() + 1);
        }
        let page = self.index.candidates(query)?;
        self.candidates.set(self.candidates.get() + page.candidates.len());
        Ok(page)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let members = std::fs::read_to_string(&args[1]).expect("members");
    let members = MemberIndex::from_ndjson(&members);
    let index = Counting {
        index: &members,
        queries: Cell::new(0),
        candidates: Cell::new(0),
        stage_two: Cell::new(0),
    };
    let wanted: Vec<&String> = args[3..].iter().collect();
    let started = std::time::Instant::now();
    let mut n = 0;
    for line in std::fs::read_to_string(&args[2]).expect("queries").lines() {
        let q: serde_json::Value = serde_json::from_str(line).expect("query");
        let id = q["id"].as_str().unwrap_or_default().to_owned();
        if !wanted.is_empty() && !wanted.contains(&&id) {
            continue;
        }
        let param = |name: &str| {
            q["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .map(|p| p["resource"].to_string())
                .unwrap_or_default()
        };
        let req = request(&param("MemberPatient"), &param("CoverageToMatch"));
        n += 1;
        if wanted.is_empty() {
            let line = match default_matcher::DefaultMatcher::match_member(&req, &index) {
                MatchResult::Match(m) => {
                    serde_json::json!({"id": id, "result": "match", "member": format!("Patient/{}", m.member), "score": m.score})
                }
                MatchResult::NoMatch(_) => serde_json::json!({"id": id, "result": "no-match"}),
                MatchResult::Ambiguous(a) => serde_json::json!({"id": id, "result": "ambiguous",
                    "members": a.members.iter().map(|m| format!("Patient/{m}")).collect::<Vec<_>>()}),
            };
            println!("{line}");
        } else {
            println!("== {id}\n{}", default_matcher::explain(&req, &index));
        }
    }
    eprintln!(
        "{n} queries in {:.2} s: {} candidate queries ({} by birth year), {} candidates",
        started.elapsed().as_secs_f64(),
        index.queries.get(),
        index.stage_two.get(),
        index.candidates.get()
    );
}
