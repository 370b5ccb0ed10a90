//! A misbehaving `matcher` plugin for fhirwall's sandbox tests (never
//! deploy it). The behaviour is chosen by MemberPatient's family name:
//!
//! | family      | behaviour                                                 |
//! |-------------|-----------------------------------------------------------|
//! | `Loop`      | spins forever                                             |
//! | `Oom`       | allocates until memory runs out                           |
//! | `Trap`      | panics                                                    |
//! | `Liar`      | claims a match on a member it was never offered           |
//! | `Flood`     | asks for candidates far more often than allowed           |
//! | `First`     | matches the first candidate of a birth-date query (a bad matcher: the host still refuses opted-out or uncovered members) |
//! | other       | no match                                                  |

use fhirwall_plugin_sdk::fhir::Patient;
use fhirwall_plugin_sdk::matcher::{CandidateQuery, Candidates, MatchRequest, MatchResult, Matched, Matcher};

pub struct HostileMatcher;

impl Matcher for HostileMatcher {
    fn match_member(request: &MatchRequest, candidates: &dyn Candidates) -> MatchResult {
        let patient = Patient::parse(&request.member_patient).unwrap_or_default();
        let family = patient.main_name().and_then(|n| n.family.clone()).unwrap_or_default();
        let q = |birth: Option<String>| CandidateQuery {
            identifier: None,
            birth_date: birth,
            family: None,
            given: None,
        };
        match family.as_str() {
            "Loop" => loop {
                std::hint::black_box(&family);
            },
            "Oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "Trap" => panic!("test matcher trapped on purpose"),
            "Liar" => MatchResult::Match(Matched { member: "pat-0001".into(), score: 99.0, reasons: vec![] }),
            "Flood" => {
                for _ in 0..1000 {
                    let _ = candidates.candidates(&q(patient.birth_date.clone()));
                }
                MatchResult::NoMatch(vec!["flooded".into()])
            }
            "First" => match candidates.candidates(&q(patient.birth_date.clone())) {
                Ok(page) => match page.candidates.first() {
                    Some(c) => {
                        MatchResult::Match(Matched { member: c.id.clone(), score: 1.0, reasons: vec![] })
                    }
                    None => MatchResult::NoMatch(vec!["none".into()]),
                },
                Err(e) => MatchResult::NoMatch(vec![e]),
            },
            _ => MatchResult::NoMatch(vec!["hostile matcher".into()]),
        }
    }
}

fhirwall_plugin_sdk::export_matcher!(HostileMatcher);
