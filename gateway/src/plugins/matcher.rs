//! Calling a `matcher` plugin: a fresh instance per call, the host's
//! `candidates` import answered by a [`CandidateSource`], and the answer
//! checked against the contract (a matched member must be a candidate the
//! host offered during this call).

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::matcher::fhirwall::plugin::matching as wit;
/// A matcher's answer as it crosses the boundary (for [`check_answer`]).
pub use super::bindings::matcher::fhirwall::plugin::matching::{Ambiguity, MatchResult, Matched};
use super::bindings::matcher::{Matcher, MatcherPre};
use super::sandbox::{self, HostState};
use super::{CandidateQuery, CandidateSource, Host, OfferedCandidate, PluginError, PluginSpec};

/// Most `candidates` calls one `match-member` call may make.
pub const MAX_QUERIES: u32 = 16;
/// Most reasons (and bytes per reason) kept from a plugin's answer.
const MAX_REASONS: usize = 16;
const MAX_REASON_BYTES: usize = 512;

pub struct MatcherPlugin {
    pub spec: PluginSpec,
    engine: wasmtime::Engine,
    pre: MatcherPre<HostState>,
}

/// A provider's `$member-match` input, as FHIR JSON text.
#[derive(Debug, Clone)]
pub struct MatchInput {
    pub member_patient: String,
    pub coverage_to_match: String,
    pub coverage_to_link: Option<String>,
}

/// The plugin's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchAnswer {
    Match { member: String, score: f64, reasons: Vec<String> },
    NoMatch { reasons: Vec<String> },
    Ambiguous { members: Vec<String>, reasons: Vec<String> },
}

/// The decision and the candidates it was made from.
#[derive(Debug, Clone)]
pub struct MatchOutcome {
    pub answer: MatchAnswer,
    pub offered: HashMap<String, OfferedCandidate>,
    pub queries: u32,
}

impl wit::Host for HostState {}
impl super::bindings::matcher::fhirwall::plugin::types::Host for HostState {}

impl super::bindings::matcher::MatcherImports for HostState {
    fn candidates(&mut self, query: wit::CandidateQuery) -> Result<wit::CandidatePage, String> {
        let started = super::sandbox::thread_cpu_time();
        let result = self.answer_query(query);
        self.host_time += super::sandbox::thread_cpu_time().saturating_sub(started);
        result
    }
}

impl HostState {
    fn answer_query(&mut self, query: wit::CandidateQuery) -> Result<wit::CandidatePage, String> {
        self.call.queries += 1;
        if self.call.queries > MAX_QUERIES {
            return Err(format!("more than {MAX_QUERIES} candidate queries in one call"));
        }
        let query = CandidateQuery {
            identifier: clean(query.identifier),
            birth_date: clean(query.birth_date),
            family: clean(query.family),
            given: clean(query.given),
        };
        if query == CandidateQuery::default() {
            return Err("a candidate query needs at least one field".into());
        }
        let Some(source) = self.call.source.clone() else {
            return Err("no candidate source".into());
        };
        match source.candidates(&query, self.call.max_candidates) {
            Ok((found, truncated)) => {
                let mut candidates = Vec::with_capacity(found.len());
                for c in found {
                    candidates.push(wit::Candidate {
                        id: c.id.clone(),
                        patient: c.patient.clone(),
                        coverages: c.coverages.clone(),
                    });
                    self.call.offered.insert(c.id.clone(), c);
                }
                Ok(wit::CandidatePage { candidates, truncated })
            }
            Err(e) => {
                self.call.host_error.get_or_insert_with(|| e.clone());
                Err("the host could not search members".into())
            }
        }
    }
}

/// Empty or oversized query fields are dropped (a 4 KiB name is no name).
fn clean(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty() && v.len() <= 256)
}

impl MatcherPlugin {
    pub(super) fn new(
        host: &Host,
        spec: PluginSpec,
        component: &Component,
    ) -> Result<MatcherPlugin, PluginError> {
        let engine = host.engine().clone();
        let mut linker: Linker<HostState> = Linker::new(&engine);
        let link = |e: anyhow::Error| spec.error_load(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;
        Matcher::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(link)?;
        let pre = linker.instantiate_pre(component).map_err(|e| {
            spec.error_load(format!(
                "not a fhirwall:plugin matcher, or imports what the host does not offer: {e:#}"
            ))
        })?;
        let pre = MatcherPre::new(pre).map_err(|e| {
            spec.error_load(format!("does not export the fhirwall:plugin/matcher world: {e:#}"))
        })?;
        Ok(MatcherPlugin { spec, engine, pre })
    }

    pub fn name(&self) -> &str {
        &self.spec.config.name
    }

    /// Run one match in a fresh instance (blocking: call from a blocking
    /// thread; the source may block on the upstream).
    pub fn match_member(
        &self,
        input: &MatchInput,
        source: Arc<dyn CandidateSource>,
    ) -> Result<MatchOutcome, PluginError> {
        let mut store: Store<HostState> = sandbox::new_store(&self.engine, &self.spec)?;
        store.data_mut().call.source = Some(source);
        sandbox::start_call(&mut store);
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(self.instantiate_error(&store, e)),
        };
        let request = wit::MatchRequest {
            member_patient: input.member_patient.clone(),
            coverage_to_match: input.coverage_to_match.clone(),
            coverage_to_link: input.coverage_to_link.clone(),
        };
        sandbox::start_call(&mut store);
        let result = instance.call_match_member(&mut store, &request);
        let state = store.data();
        if let Some(e) = &state.call.host_error {
            return Err(PluginError::Host { plugin: self.name().to_owned(), message: e.clone() });
        }
        let result = result.map_err(|e| sandbox::classify(&self.spec, &store, e))?;
        let output = sandbox::output(&store);
        if !output.is_empty() {
            tracing::debug!(plugin = %self.name(), output = %output.trim(), "plugin output");
        }
        let call = std::mem::take(&mut store.data_mut().call);
        let answer = self.check(result, &call.offered)?;
        Ok(MatchOutcome { answer, offered: call.offered, queries: call.queries })
    }

    fn instantiate_error(&self, store: &Store<HostState>, e: anyhow::Error) -> PluginError {
        let text = format!("{e:#}");
        if text.contains("maximum concurrent") || text.contains("pooling allocator") {
            return PluginError::Busy { plugin: self.name().to_owned() };
        }
        sandbox::classify(&self.spec, store, e)
    }

    fn check(
        &self,
        result: wit::MatchResult,
        offered: &HashMap<String, OfferedCandidate>,
    ) -> Result<MatchAnswer, PluginError> {
        check_answer(self.name(), result, offered)
    }
}

/// The host's check of a matcher's answer: a match must name a candidate
/// the host offered during the call, with a finite score (else malformed
/// output); an ambiguity keeps only offered members; reasons are capped.
/// Public for the fuzz target (`fuzz/fuzz_targets/plugin_output.rs`).
pub fn check_answer(
    plugin: &str,
    result: MatchResult,
    offered: &HashMap<String, OfferedCandidate>,
) -> Result<MatchAnswer, PluginError> {
    let malformed = |message: String| PluginError::Malformed { plugin: plugin.to_owned(), message };
    Ok(match result {
        wit::MatchResult::Match(m) => {
            if !offered.contains_key(&m.member) {
                return Err(malformed(format!(
                    "matched {:?}, which was not among the candidates offered",
                    short(&m.member)
                )));
            }
            if !m.score.is_finite() {
                return Err(malformed("score is not a finite number".into()));
            }
            MatchAnswer::Match { member: m.member, score: m.score, reasons: reasons(m.reasons) }
        }
        wit::MatchResult::NoMatch(r) => MatchAnswer::NoMatch { reasons: reasons(r) },
        wit::MatchResult::Ambiguous(a) => {
            let members: Vec<String> =
                a.members.into_iter().filter(|m| offered.contains_key(m)).take(MAX_REASONS).collect();
            MatchAnswer::Ambiguous { members, reasons: reasons(a.reasons) }
        }
    })
}

fn reasons(list: Vec<String>) -> Vec<String> {
    list.into_iter().take(MAX_REASONS).map(|r| short(&r)).collect()
}

fn short(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
