//! `POST {base}/Patient/$member-match` (Da Vinci HRex 1.0 and 1.1).
//!
//! 1. Parse the `Parameters` body: `MemberPatient` (Patient),
//!    `CoverageToMatch` (Coverage), optional `CoverageToLink` (Coverage) and
//!    `Consent` (optional since HRex 1.1; accepted in both shapes). A
//!    malformed body, an unknown or repeated parameter, or a reference that
//!    is not the local `Patient/{MemberPatient.id}` (HRex: "SHALL be local
//!    references") is a 400.
//!    A Consent fhirwall cannot honour is a 422 (`ops::consent`).
//! 2. Run the configured `matcher` plugin in a fresh instance; it asks for
//!    candidates, which fhirwall answers from the upstream: Patient and
//!    Coverage searches (`Coverage?identifier=`, `Patient?identifier=`,
//!    `Patient?birthdate=&family=&given=`, with the members' Coverages
//!    included). Only covered members are candidates (every member the
//!    payer covers, not only the caller's attributed ones: the answer is an
//!    identifier, data access still needs attribution).
//! 3. One confident match on a covered member who has not opted out: 200
//!    `Parameters` with `MemberIdentifier` (type v2-0203 `MB`, or HRex 1.1
//!    `UMB` by config) and `MemberId` (a reference to the Patient; off by
//!    config for strict HRex 1.0 clients). No match, an opted-out or
//!    uncovered member: 422 OperationOutcome (the same answer, so an opt-out
//!    is not revealed). Ambiguous: 422 with issue code `multiple-matches`.
//!
//! A plugin failure fails closed (500/503); an upstream failure while
//! searching is a 502.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::config::{MemberIdentifierType, MemberMatchConfig};
use crate::error::{GatewayError, Kind};
use crate::plugins::matcher::MatchInput;
use crate::plugins::{CandidateQuery, CandidateSource, MatchAnswer, OfferedCandidate, Plugins};
use crate::proxy::{Upstream, UpstreamRequest};

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const HREX_TEMP: &str = "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp";
/// The 422 answer for no match, an opted-out and an uncovered member alike.
const NO_MATCH: &str = "No unique member match found";

/// Parse and check an HRex `$member-match` request body (the Consent, if
/// any, is checked by the operation: see `ops::consent`).
pub fn parse_request(body: &[u8]) -> Result<MatchInput, GatewayError> {
    parse(body).map(|request| request.input)
}

/// A parsed request: what the matcher gets, and the resources the host checks
/// itself (the MemberPatient for the brute-force budget, the Consent).
pub struct MatchRequest {
    pub input: MatchInput,
    pub member_patient: Value,
    pub consent: Option<Value>,
}

/// [`parse_request`], keeping the MemberPatient and the `Consent` as values.
pub fn parse(body: &[u8]) -> Result<MatchRequest, GatewayError> {
    let bad = |m: &str| GatewayError::bad_request(format!("$member-match: {m}"));
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("the body is not JSON"))?;
    if value["resourceType"] != "Parameters" {
        return Err(bad("the body must be a Parameters resource"));
    }
    let params = value["parameter"].as_array().ok_or_else(|| bad("Parameters.parameter is missing"))?;
    let (mut patient, mut to_match, mut to_link, mut consent) = (None, None, None, None);
    for p in params {
        let name = p["name"].as_str().unwrap_or("");
        let (slot, expected) = match name {
            "MemberPatient" => (&mut patient, "Patient"),
            "CoverageToMatch" => (&mut to_match, "Coverage"),
            "CoverageToLink" => (&mut to_link, "Coverage"),
            "Consent" => (&mut consent, "Consent"),
            _ => {
                return Err(bad(
                    "unknown parameter (expected MemberPatient, CoverageToMatch, CoverageToLink, Consent)",
                ));
            }
        };
        if slot.is_some() {
            return Err(bad(&format!("parameter {name} given more than once")));
        }
        let resource = &p["resource"];
        if resource["resourceType"] != expected {
            return Err(bad(&format!("parameter {name} must carry a {expected} resource")));
        }
        *slot = Some(resource.clone());
    }
    let patient = patient.ok_or_else(|| bad("MemberPatient is required"))?;
    let to_match = to_match.ok_or_else(|| bad("CoverageToMatch is required"))?;
    let local = patient["id"].as_str().map(|id| format!("Patient/{id}"));
    let check_ref = |what: &str, reference: &Value| -> Result<(), GatewayError> {
        let Some(r) = reference["reference"].as_str() else { return Ok(()) };
        let ok = match &local {
            Some(local) => r == local,
            None => r.starts_with("Patient/") && !r.contains("://"),
        };
        if ok {
            Ok(())
        } else {
            Err(bad(&format!(
                "{what} must be the local reference to MemberPatient (Patient/{{MemberPatient.id}})"
            )))
        }
    };
    check_ref("CoverageToMatch.beneficiary", &to_match["beneficiary"])?;
    if let Some(link) = &to_link {
        check_ref("CoverageToLink.beneficiary", &link["beneficiary"])?;
    }
    if let Some(consent) = &consent {
        check_ref("Consent.patient", &consent["patient"])?;
    }
    let input = MatchInput {
        member_patient: patient.to_string(),
        coverage_to_match: to_match.to_string(),
        coverage_to_link: to_link.map(|v| v.to_string()),
    };
    Ok(MatchRequest { input, member_patient: patient, consent })
}

/// Is this Coverage in force as a membership (not entered in error or a draft)?
fn coverage_counts(coverage: &Value) -> bool {
    !matches!(coverage["status"].as_str(), Some("entered-in-error" | "draft"))
}

/// A covered member: at least one Coverage that counts.
pub fn is_covered(candidate: &OfferedCandidate) -> bool {
    candidate.coverages.iter().any(|c| serde_json::from_str::<Value>(c).is_ok_and(|v| coverage_counts(&v)))
}

/// The matched member's identifier, typed `MB` or `UMB`.
pub fn member_identifier(candidate: &OfferedCandidate, config: &MemberMatchConfig) -> Option<Value> {
    let patient: Value = serde_json::from_str(&candidate.patient).ok()?;
    let coverages: Vec<Value> =
        candidate.coverages.iter().filter_map(|c| serde_json::from_str(c).ok()).collect();
    let is_mb = |i: &&Value| {
        i["type"]["coding"].as_array().into_iter().flatten().any(|c| c["code"] == "MB" || c["code"] == "UMB")
    };
    let patient_ids = patient["identifier"].as_array().cloned().unwrap_or_default();
    let coverage_ids: Vec<Value> =
        coverages.iter().flat_map(|c| c["identifier"].as_array().cloned().unwrap_or_default()).collect();
    let source = patient_ids
        .iter()
        .find(is_mb)
        .or_else(|| coverage_ids.iter().find(is_mb))
        .or_else(|| coverage_ids.first())
        .or_else(|| patient_ids.first())
        .cloned()
        .or_else(|| {
            coverages.iter().find_map(|c| c["subscriberId"].as_str()).map(|s| json!({ "value": s }))
        })?;
    let value = source["value"].as_str().filter(|v| !v.is_empty())?;
    let (system, code, display) = match config.identifier_type {
        MemberIdentifierType::Mb => (V2_0203, "MB", "Member Number"),
        MemberIdentifierType::Umb => (HREX_TEMP, "UMB", "Member Match"),
    };
    let mut identifier = json!({
        "type": { "coding": [{ "system": system, "code": code, "display": display }] },
        "value": value,
    });
    if let Some(s) = source["system"].as_str().map(str::to_owned).or_else(|| config.identifier_system.clone())
    {
        identifier["system"] = json!(s);
    }
    if source["assigner"].is_object() {
        identifier["assigner"] = source["assigner"].clone();
    }
    Some(identifier)
}

/// The 200 answer.
pub fn response_body(member: &str, identifier: Value, config: &MemberMatchConfig) -> Bytes {
    let mut parameter = vec![json!({ "name": "MemberIdentifier", "valueIdentifier": identifier })];
    if config.member_id {
        parameter.push(
            json!({ "name": "MemberId", "valueReference": { "reference": format!("Patient/{member}") } }),
        );
    }
    let body = json!({
        "resourceType": "Parameters",
        "meta": { "profile": ["http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-parameters-member-match-out"] },
        "parameter": parameter,
    });
    Bytes::from(body.to_string())
}

fn no_match(detail: impl Into<String>) -> GatewayError {
    GatewayError::of(Kind::Unprocessable, NO_MATCH)
        .with_code(crate::error::IssueCode::NotFound)
        .with_detail(detail)
}

fn ambiguous(detail: impl Into<String>) -> GatewayError {
    GatewayError::of(Kind::Unprocessable, "More than one member matches: no unique member match found")
        .with_code(crate::error::IssueCode::MultipleMatches)
        .with_detail(detail)
}

/// Everything the operation needs.
pub struct MemberMatch<'a> {
    pub upstream: &'a Upstream,
    pub plugins: &'a Plugins,
    pub config: &'a MemberMatchConfig,
    pub request_id: &'a str,
}

/// The matched member (bare id) and the response body.
pub struct Matched {
    pub member: String,
    pub body: Bytes,
}

impl MemberMatch<'_> {
    /// Run the operation on a parsed request ([`parse_request`]). `opted_out`
    /// is the opt-out check (access layer).
    pub async fn run<F, Fut>(&self, input: MatchInput, opted_out: F) -> Result<Matched, GatewayError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<bool, GatewayError>>,
    {
        let set = self.plugins.current();
        let Some(matcher) = set.matcher.clone() else {
            return Err(GatewayError::of(
                Kind::NotImplemented,
                "$member-match needs a matcher plugin ([[plugins]] world = \"matcher\"), and none is configured",
            ));
        };
        let source: Arc<dyn CandidateSource> = Arc::new(UpstreamCandidates {
            upstream: self.upstream.clone(),
            handle: tokio::runtime::Handle::current(),
            request_id: self.request_id.to_owned(),
        });
        let permit = self.plugins.host().permit(matcher.name()).await?;
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            matcher.match_member(&input, source)
        })
        .await
        .map_err(|e| GatewayError::internal(format!("member match task: {e}")))??;
        match outcome.answer {
            MatchAnswer::NoMatch { reasons } => Err(no_match(format!("matcher: {}", reasons.join("; ")))),
            MatchAnswer::Ambiguous { members, reasons } => {
                Err(ambiguous(format!("matcher: {} tied; {}", members.len(), reasons.join("; "))))
            }
            MatchAnswer::Match { member, score, .. } => {
                let candidate = &outcome.offered[&member];
                if !is_covered(candidate) {
                    return Err(no_match("matched member has no coverage in force"));
                }
                if opted_out(member.clone()).await? {
                    return Err(no_match("matched member opted out"));
                }
                let identifier = member_identifier(candidate, self.config)
                    .ok_or_else(|| no_match("matched member has no member identifier"))?;
                tracing::debug!(request_id = %self.request_id, score, queries = outcome.queries, "member matched");
                Ok(Matched { body: response_body(&member, identifier, self.config), member })
            }
        }
    }
}

/// Candidates from the upstream FHIR server (blocking: runs on the plugin's
/// blocking thread and waits on the runtime for each search).
pub struct UpstreamCandidates {
    pub upstream: Upstream,
    pub handle: tokio::runtime::Handle,
    pub request_id: String,
}

impl UpstreamCandidates {
    fn search(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<Value>, String> {
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let request = UpstreamRequest {
            method: http::Method::GET,
            path_and_query: format!("{path}?{query}"),
            body: None,
            headers: vec![(
                http::HeaderName::from_static("prefer"),
                http::HeaderValue::from_static("handling=strict"),
            )],
            request_id: self.request_id.clone(),
        };
        let response = self.handle.block_on(self.upstream.send(request)).map_err(|e| e.to_string())?;
        if !response.status.is_success() {
            return Err(format!("upstream answered {} to a {path} search", response.status));
        }
        let bundle: Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("{path} search: {e}"))?;
        if bundle["resourceType"] != "Bundle" {
            return Err(format!("{path} search did not answer a Bundle"));
        }
        let mut out: Vec<Value> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect();
        if bundle["link"].as_array().into_iter().flatten().any(|l| l["relation"] == "next") {
            out.push(json!({ "resourceType": "fhirwall-truncated" }));
        }
        Ok(out)
    }

    /// The bare Patient id a Coverage's beneficiary points to.
    fn beneficiary(&self, coverage: &Value) -> Option<String> {
        let reference = coverage["beneficiary"]["reference"].as_str()?;
        let local = self.upstream.rewriter().strip_upstream_base(reference).unwrap_or(reference);
        local.strip_prefix("Patient/").filter(|id| !id.contains('/')).map(str::to_owned)
    }
}

impl CandidateSource for UpstreamCandidates {
    fn candidates(
        &self,
        query: &CandidateQuery,
        limit: usize,
    ) -> Result<(Vec<OfferedCandidate>, bool), String> {
        let count = (limit + 1).to_string();
        let mut resources = Vec::new();
        let mut demographics: Vec<(&str, String)> = Vec::new();
        if let Some(b) = &query.birth_date {
            demographics.push(("birthdate", b.clone()));
        }
        if let Some(f) = &query.family {
            demographics.push(("family", f.clone()));
        }
        if let Some(g) = &query.given {
            demographics.push(("given", g.clone()));
        }
        if let Some(id) = &query.identifier {
            // Members by their Coverage's identifier, and by their own.
            resources.extend(self.search(
                "Coverage",
                &[
                    ("identifier", id.clone()),
                    ("_include", "Coverage:beneficiary".into()),
                    ("_count", count.clone()),
                ],
            )?);
            let mut params = vec![("identifier", id.clone())];
            params.extend(demographics.iter().cloned());
            params.push(("_revinclude", "Coverage:beneficiary".into()));
            params.push(("_count", count.clone()));
            resources.extend(self.search("Patient", &params)?);
        } else {
            let mut params = demographics.clone();
            params.push(("_revinclude", "Coverage:beneficiary".into()));
            params.push(("_count", count.clone()));
            resources.extend(self.search("Patient", &params)?);
        }
        let truncated_upstream = resources.iter().any(|r| r["resourceType"] == "fhirwall-truncated");
        let mut order: Vec<String> = Vec::new();
        let mut patients: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut coverages: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        let mut seen_coverage = std::collections::HashSet::new();
        for r in &resources {
            match r["resourceType"].as_str() {
                Some("Patient") => {
                    let Some(id) = r["id"].as_str() else { continue };
                    if !patients.contains_key(id) {
                        order.push(id.to_owned());
                        patients.insert(id.to_owned(), r.to_string());
                    }
                }
                Some("Coverage") => {
                    let key = r["id"].as_str().unwrap_or_default().to_owned();
                    if !seen_coverage.insert(key) {
                        continue;
                    }
                    if let Some(patient) = self.beneficiary(r) {
                        coverages.entry(patient).or_default().push(r.to_string());
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for id in order {
            let Some(covs) = coverages.remove(&id) else { continue };
            // Every given field must hold, also for members found through
            // their Coverage's identifier (that search cannot filter them).
            if !patient_fits(patients.get(&id).map(String::as_str).unwrap_or(""), query) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let patient = patients.remove(&id).unwrap_or_default();
            out.push(OfferedCandidate { id, patient, coverages: covs });
        }
        Ok((out, truncated_upstream))
    }
}

/// Does a Patient (JSON) satisfy the demographic fields of `query`
/// (birth-date prefix; family / given word prefixes, case and diacritics
/// folded)? The upstream already applied them to its Patient searches.
fn patient_fits(patient: &str, query: &CandidateQuery) -> bool {
    use crate::plugins::index::name_words;
    let Ok(p) = serde_json::from_str::<Value>(patient) else { return false };
    if let Some(b) = &query.birth_date
        && !p["birthDate"].as_str().is_some_and(|d| d.starts_with(b.as_str()))
    {
        return false;
    }
    let names = p["name"].as_array().cloned().unwrap_or_default();
    let words = |field: &str| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| match &n[field] {
                Value::String(s) => name_words(s),
                Value::Array(a) => a.iter().filter_map(Value::as_str).flat_map(name_words).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    for (field, want) in [("family", &query.family), ("given", &query.given)] {
        if let Some(want) = want {
            let want = name_words(want).into_iter().next().unwrap_or_default();
            if !words(field).iter().any(|w| w.starts_with(want.as_str())) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn params(parts: Value) -> Vec<u8> {
        json!({ "resourceType": "Parameters", "parameter": parts }).to_string().into_bytes()
    }

    #[test]
    fn hrex_examples_parse() {
        for file in
            ["hrex-1.0.0/parameters-member-match-in.json", "hrex-1.1.0/parameters-member-match-in.json"]
        {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/data/hl7-examples")
                .join(file);
            let Ok(body) = std::fs::read(&path) else { continue };
            let input = parse_request(&body).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(input.member_patient.contains("Patricia"));
        }
    }

    #[test]
    fn malformed_requests_are_400() {
        let patient =
            json!({ "name": "MemberPatient", "resource": { "resourceType": "Patient", "id": "1" } });
        let coverage = |r: &str| json!({ "name": "CoverageToMatch", "resource": { "resourceType": "Coverage", "beneficiary": { "reference": r } } });
        assert!(parse_request(&params(json!([patient, coverage("Patient/1")]))).is_ok());
        for body in [
            params(json!([patient])),
            params(json!([coverage("Patient/1")])),
            params(json!([patient, coverage("Patient/2")])),
            params(json!([patient, coverage("https://example.org/Patient/1")])),
            params(json!([patient, patient, coverage("Patient/1")])),
            params(json!([patient, coverage("Patient/1"), { "name": "Extra", "valueString": "x" }])),
            b"{\"resourceType\":\"Patient\"}".to_vec(),
            b"not json".to_vec(),
        ] {
            let err = parse_request(&body).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn identifier_is_typed_by_config() {
        let candidate = OfferedCandidate {
            id: "pat-1".into(),
            patient: json!({ "resourceType": "Patient", "id": "pat-1", "identifier": [{
                "type": { "coding": [{ "system": V2_0203, "code": "MB" }] },
                "system": "http://example.org/member-id", "value": "FW1-01" }] })
            .to_string(),
            coverages: vec![json!({ "resourceType": "Coverage", "status": "active" }).to_string()],
        };
        let mut config = MemberMatchConfig::default();
        let id = member_identifier(&candidate, &config).unwrap();
        assert_eq!(id["type"]["coding"][0]["code"], "MB");
        assert_eq!(id["value"], "FW1-01");
        assert_eq!(id["system"], "http://example.org/member-id");
        config.identifier_type = MemberIdentifierType::Umb;
        assert_eq!(member_identifier(&candidate, &config).unwrap()["type"]["coding"][0]["code"], "UMB");
        let body: Value = serde_json::from_slice(&response_body("pat-1", id, &config)).unwrap();
        assert_eq!(body["parameter"][1]["valueReference"]["reference"], "Patient/pat-1");
        assert!(is_covered(&candidate));
    }
}
