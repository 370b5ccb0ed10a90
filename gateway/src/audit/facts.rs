//! Filling an [`AuditRecord`] from what the pipeline already holds: the
//! principal, the parsed request, the error, the admin route. Only ids are
//! taken from a request — never search values other than patient references.

use std::collections::BTreeSet;

use http::Method;

use super::event::{Action, AuditRecord, Kind};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::fhir::search::{Modifier, is_fhir_id};
use crate::fhir::{FhirRequest, Interaction, Operation};

/// Search parameters whose values name patients (compartment links).
const PATIENT_PARAMS: [&str; 4] = ["patient", "subject", "beneficiary", "member"];

impl AuditRecord {
    /// A FHIR request, before anything is known about it.
    pub fn rest(request_id: &str) -> AuditRecord {
        AuditRecord::new(Kind::Rest { interaction: "unrouted", operation: None }, request_id)
    }

    /// A call on the admin listener: who is `admin` when the admin token was
    /// right, the action from the route, the patient or client its path names.
    /// Nothing an admin call returns is patient data, so it discloses nobody.
    pub fn admin(
        method: &Method,
        path: &str,
        authorized: bool,
        peer: Option<std::net::IpAddr>,
    ) -> AuditRecord {
        let (code, action, target) = admin_action(method, path);
        let mut record = AuditRecord::new(Kind::Admin { action: code }, super::event::new_event_id());
        record.action = action;
        record.peer = peer;
        record.who.authenticated = authorized;
        record.disclosure = Some(super::Disclosure::default());
        let method = method.as_str();
        record.detail("method", if method.len() <= 16 { method } else { "other" });
        match target {
            AdminTarget::Patient(id) => {
                record.requested_patients.insert(id);
            }
            AdminTarget::Client(id) => record.detail("client", id),
            AdminTarget::Group(id) => record.detail("group", id),
            AdminTarget::None => {}
        }
        record
    }

    /// The stage reached, for requests that end before parsing.
    pub fn set_interaction(&mut self, interaction: &'static str) {
        self.kind = Kind::Rest { interaction, operation: None };
    }

    /// Who: the verified principal of the access token.
    pub fn set_principal(&mut self, principal: &Principal) {
        self.who.client_id = Some(principal.client_id.clone());
        self.who.organization = Some(principal.organization.clone());
        self.who.npi = principal.npi.clone();
        self.who.authenticated = true;
    }

    /// What: the parsed interaction, its resource type, the resources it
    /// addresses by id and the patients it names.
    pub fn set_request(&mut self, request: &FhirRequest) {
        let interaction = &request.interaction;
        let operation = match interaction {
            Interaction::Operation(op) => Some(operation_code(op)),
            _ => None,
        };
        self.kind = Kind::Rest { interaction: interaction.name(), operation };
        self.action = match interaction {
            Interaction::Capabilities
            | Interaction::Read { .. }
            | Interaction::Vread { .. }
            | Interaction::HistoryInstance { .. } => Action::Read,
            Interaction::Create { .. } => Action::Create,
            Interaction::Update { .. } | Interaction::Patch { .. } => Action::Update,
            Interaction::Delete { .. } => Action::Delete,
            Interaction::SearchType { .. }
            | Interaction::SearchCompartment { .. }
            | Interaction::Page { .. }
            | Interaction::Operation(_)
            | Interaction::Batch => Action::Execute,
        };
        if let Some(resource_type) = interaction.resource_type() {
            self.resource_types.insert(resource_type.to_owned());
        }
        match interaction {
            Interaction::Read { resource_type, id }
            | Interaction::Vread { resource_type, id, .. }
            | Interaction::HistoryInstance { resource_type, id }
            | Interaction::Update { resource_type, id }
            | Interaction::Patch { resource_type, id }
            | Interaction::Delete { resource_type, id } => {
                self.resources.insert(format!("{resource_type}/{id}"));
                if resource_type == "Patient" {
                    self.requested_patients.insert(id.clone());
                }
            }
            Interaction::SearchCompartment { patient_id, .. } => {
                self.requested_patients.insert(patient_id.clone());
            }
            Interaction::Operation(
                Operation::DavinciDataExport { group } | Operation::GroupExport { group },
            ) => {
                self.resources.insert(format!("Group/{group}"));
            }
            _ => {}
        }
        self.requested_patients.extend(named_patients(request));
    }

    /// A token request: the client (verified, or only claimed when refused),
    /// the granted scope or the OAuth error.
    pub fn set_token(&mut self, token: crate::auth::TokenAudit) {
        self.kind = Kind::Token;
        self.action = Action::Execute;
        self.who = super::Who {
            client_id: token.client_id,
            organization: token.organization,
            npi: token.npi,
            authenticated: token.authenticated,
        };
        if let Some(scope) = token.scope {
            self.detail("scope", scope);
        }
        if let Some(error) = token.error {
            self.issue = Some(error);
        }
    }

    /// What the chain disclosed and withheld in the answer (every stage's
    /// decisions, pages and includes together).
    pub fn set_disclosure(&mut self, disclosure: &crate::chain::disclosure::Disclosure) {
        if let Some(n) = disclosure.narrowed_to {
            self.detail("narrowed-to-patients", n.to_string());
        }
        let mut d = self.disclosure.take().unwrap_or_default();
        d.merge(crate::chain::disclosure::Disclosure {
            trace: None,
            narrowed_to: None,
            ..disclosure.clone()
        });
        self.disclosure = Some(d);
    }

    /// The outcome the client received.
    pub fn set_outcome(&mut self, status: u16, error: Option<&GatewayError>) {
        self.status = status;
        if let Some(err) = error {
            self.blame = Some(err.blame);
            self.issue = Some(err.code.as_str());
        } else if status >= 400 && self.blame.is_none() {
            self.blame = Some(if status >= 500 { crate::Blame::Internal } else { crate::Blame::Caller });
        }
    }
}

/// fhirwall's code for an operation (`urn:fhirwall:operation`).
pub fn operation_code(op: &Operation) -> &'static str {
    match op {
        Operation::MemberMatch => "member-match",
        Operation::ProviderMemberMatch => "provider-member-match",
        Operation::DavinciDataExport { .. } => "davinci-data-export",
        Operation::GroupExport { .. } => "export",
        Operation::SystemExport => "system-export",
        Operation::PatientExport => "patient-export",
    }
}

/// Patient ids a search names through its patient-reference parameters
/// (`patient=Patient/1`, `subject=Patient/1`, `beneficiary=1`, `_id` on
/// Patient). Values that are not patient references are ignored, so no
/// other search value reaches the log.
pub fn named_patients(request: &FhirRequest) -> BTreeSet<String> {
    let on_patient = request.interaction.resource_type() == Some("Patient");
    let mut out = BTreeSet::new();
    for param in request.params.iter() {
        let name = param.name.as_str();
        let bare_ok = match name {
            "_id" if on_patient => true,
            n if PATIENT_PARAMS.contains(&n) => match &param.modifier {
                None => matches!(n, "patient" | "beneficiary"),
                Some(Modifier::Type(t)) if t == "Patient" => true,
                // `:missing`, `:identifier`, … carry no patient reference.
                Some(_) => false,
            },
            _ => continue,
        };
        for value in &param.values {
            if let Some(id) = patient_id(value, bare_ok) {
                out.insert(id.to_owned());
            }
        }
    }
    out
}

/// `Patient/1`, `{any base}/Patient/1` (and `…/_history/2`) → `1`; a bare
/// id only where the parameter can only mean a patient.
fn patient_id(value: &str, bare_ok: bool) -> Option<&str> {
    let id = match value.rfind("Patient/") {
        Some(i) if i == 0 || value[..i].ends_with('/') => {
            let rest = &value[i + "Patient/".len()..];
            rest.split('/').next().unwrap_or("")
        }
        _ if bare_ok => value,
        _ => return None,
    };
    is_fhir_id(id).then_some(id)
}

/// What an admin call was, for the record: its action code, AuditEvent
/// action, and the ids in its path (a patient for opt-outs, a client for
/// the registry). Query strings are never recorded.
pub fn admin_action(method: &Method, path: &str) -> (&'static str, Action, AdminTarget) {
    let tail = |prefix: &str| -> Option<String> {
        let raw = path.strip_prefix(prefix)?;
        let id = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
        (!id.is_empty() && !id.contains('/')).then(|| id.into_owned())
    };
    let m = method.as_str();
    if let Some(code) = console_action(m, path) {
        let target = match tail("/admin/console/api/patients/") {
            Some(id) if is_fhir_id(id.strip_prefix("Patient/").unwrap_or(&id)) => {
                AdminTarget::Patient(id.strip_prefix("Patient/").unwrap_or(&id).to_owned())
            }
            _ => tail("/admin/console/api/clients/").map(AdminTarget::Client).unwrap_or(AdminTarget::None),
        };
        let action = match m {
            "POST" => Action::Execute,
            "DELETE" => Action::Delete,
            _ => Action::Read,
        };
        return (code, action, target);
    }
    if let Some(id) = tail("/admin/opt-outs/") {
        let target = if is_fhir_id(&id) { AdminTarget::Patient(id) } else { AdminTarget::None };
        return match m {
            "PUT" => ("opt-out.put", Action::Update, target),
            "DELETE" => ("opt-out.delete", Action::Delete, target),
            "GET" => ("opt-out.read", Action::Read, target),
            _ => ("unknown", Action::Execute, target),
        };
    }
    if let Some(id) = tail("/admin/clients/") {
        let target = AdminTarget::Client(id);
        return match m {
            "DELETE" => ("client.delete", Action::Delete, target),
            "GET" => ("client.read", Action::Read, target),
            _ => ("unknown", Action::Execute, target),
        };
    }
    // Deleting a roster or a MatchedMembers Group, by id (`grp-1` or `Group/grp-1`).
    for (prefix, code) in [
        ("/admin/attribution/", "attribution.delete"),
        ("/admin/provider-member-match/groups/", "provider-match-group.delete"),
    ] {
        let Some(raw) = path.strip_prefix(prefix).filter(|r| !r.is_empty() && !r.contains('/')) else {
            continue;
        };
        let id = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let id = id.strip_prefix("Group/").unwrap_or(&id);
        let target = if is_fhir_id(id) { AdminTarget::Group(id.to_owned()) } else { AdminTarget::None };
        if m == "DELETE" {
            return (code, Action::Delete, target);
        }
    }
    let (code, action) = match (m, path) {
        ("GET", "/admin/opt-outs") => ("opt-out.list", Action::Read),
        ("POST", "/admin/clients") => ("client.create", Action::Create),
        ("GET", "/admin/clients") => ("client.list", Action::Read),
        ("POST", "/admin/attribution") => ("attribution.load", Action::Create),
        ("GET", "/admin/attribution") => ("attribution.list", Action::Read),
        ("POST", "/admin/attribution/refresh") => ("attribution.refresh", Action::Execute),
        ("GET", "/admin/audit/head") => ("audit.head", Action::Read),
        ("GET", "/admin/explain") => ("explain", Action::Read),
        ("GET", "/admin/provider-member-match/groups") => ("provider-match-group.list", Action::Read),
        ("POST", "/admin/plugins/reload") => ("plugins.reload", Action::Execute),
        ("GET", "/admin/keys") => ("keys.list", Action::Read),
        ("POST", "/admin/keys/rotate") => ("keys.rotate", Action::Execute),
        ("GET", "/admin/audit") => ("audit.query", Action::Read),
        _ => ("unknown", Action::Execute),
    };
    (code, action, AdminTarget::None)
}

/// The action code of a console call (`None`: not the console's path).
fn console_action(method: &str, path: &str) -> Option<&'static str> {
    if !(path == "/admin/console" || path.starts_with("/admin/console/")) {
        return None;
    }
    let api = path.strip_prefix("/admin/console/api/");
    Some(match (method, path, api) {
        ("POST", "/admin/console/session", _) => "console.sign-in",
        ("DELETE", "/admin/console/session", _) => "console.sign-out",
        ("GET", _, Some("session")) => "console.session",
        ("GET", _, Some("overview")) => "console.overview",
        ("GET", _, Some("clients")) => "console.clients",
        ("GET", _, Some("chain")) => "console.chain",
        ("POST", _, Some("rebuild")) => "console.rebuild",
        ("GET", _, Some("opt-outs")) => "console.opt-outs",
        ("GET", _, Some(p)) if p.starts_with("patients/") => "console.patient",
        ("GET", _, Some(p)) if p.starts_with("clients/") => "console.client",
        ("GET", _, None) => "console.page",
        _ => "console.unknown",
    })
}

/// An id an admin call's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTarget {
    None,
    Patient(String),
    Client(String),
    /// An attribution roster or a stored MatchedMembers Group.
    Group(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::disclosure::{Disclosure, Reason};
    use crate::fhir::{ParseOptions, RequestParts};

    fn parse(path: &str, query: Option<&str>) -> FhirRequest {
        let headers = http::HeaderMap::new();
        let parts = RequestParts { method: &Method::GET, path, query, headers: &headers, body: b"" };
        crate::fhir::request::parse(&parts, ParseOptions::default()).expect(path)
    }

    fn named(path: &str, query: Option<&str>) -> Vec<String> {
        named_patients(&parse(path, query)).into_iter().collect()
    }

    #[test]
    fn patients_named_by_reference_parameters_only() {
        let table: &[(&str, Option<&str>, &[&str])] = &[
            ("ExplanationOfBenefit", Some("patient=Patient/pat-1"), &["pat-1"]),
            ("ExplanationOfBenefit", Some("patient=pat-2"), &["pat-2"]),
            ("Coverage", Some("beneficiary=http://x.example/fhir/Patient/pat-3"), &["pat-3"]),
            ("Observation", Some("subject=Patient/pat-4,Patient/pat-5"), &["pat-4", "pat-5"]),
            ("Observation", Some("subject=Group/g1"), &[]),
            ("Observation", Some("subject=pat-6"), &[]),
            ("Observation", Some("subject:Patient=pat-6"), &["pat-6"]),
            ("Patient", Some("_id=pat-7"), &["pat-7"]),
            ("Observation", Some("_id=obs-1"), &[]),
            // Names and birth dates are search values, never patient ids.
            ("Patient", Some("family=Smith&birthdate=1970-01-01"), &[]),
            ("Observation", Some("patient=Patient/pat-8/_history/2"), &["pat-8"]),
            ("Observation", Some("patient=Patient/pat%209"), &[]),
        ];
        for (path, query, want) in table {
            assert_eq!(
                named(path, *query),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{path}?{query:?}"
            );
        }
    }

    #[test]
    fn instance_and_compartment_requests_name_their_patient() {
        let mut r = AuditRecord::rest("r1");
        r.set_request(&parse("Patient/pat-1", None));
        assert_eq!(r.requested_patients.iter().collect::<Vec<_>>(), ["pat-1"]);
        assert_eq!(r.resources.iter().collect::<Vec<_>>(), ["Patient/pat-1"]);
        assert_eq!(r.action, Action::Read);

        let mut r = AuditRecord::rest("r2");
        r.set_request(&parse("Patient/pat-2/Observation", Some("code=1234-5")));
        assert_eq!(r.requested_patients.iter().collect::<Vec<_>>(), ["pat-2"]);
        assert_eq!(r.resource_types.iter().collect::<Vec<_>>(), ["Observation"]);
        assert_eq!(r.action, Action::Execute);

        let mut r = AuditRecord::rest("r3");
        r.set_request(&parse("Observation/obs-1", None));
        assert!(r.requested_patients.is_empty());
        assert_eq!(r.resources.iter().collect::<Vec<_>>(), ["Observation/obs-1"]);
    }

    #[test]
    fn the_chains_disclosure_becomes_the_records() {
        let mut report = Disclosure::tracing();
        report.patients.insert("pat-1".into());
        report.withhold_n(Reason::Attribution, 2);
        report.withhold(Reason::OptOut);
        report.redact_n(Reason::GroupMember, 4);
        report.narrowed_to = Some(7);
        report.trace(
            "access",
            || "Observation/o1".into(),
            &crate::chain::disclosure::Verdict::Drop(Reason::OptOut),
            || None,
        );
        let mut r = AuditRecord::rest("r");
        r.requested_patients.insert("pat-2".into());
        r.set_disclosure(&report);
        r.status = 200;
        let d = r.disclosure.clone().unwrap();
        assert_eq!(d.suppressed.get(&Reason::Attribution), Some(&2));
        assert_eq!(d.suppressed.get(&Reason::OptOut), Some(&1));
        assert_eq!(d.suppressed.get(&Reason::Unlinked), None);
        assert_eq!(d.redacted.get(&Reason::GroupMember), Some(&4));
        // The filter decides who was disclosed, not what the request named.
        assert_eq!(r.disclosed_patients().into_iter().collect::<Vec<_>>(), ["pat-1"]);
        let json = r.to_json();
        for s in
            ["suppressed.attribution", "suppressed.opt-out", "redacted.group-member", "narrowed-to-patients"]
        {
            assert!(json.contains(s), "{s} in {json}");
        }
        // The trace is for explain, never for the log.
        assert!(d.trace.is_none() && !json.contains("Observation/o1"), "{json}");
    }

    #[test]
    fn every_stages_counts_add_to_the_disclosure() {
        let mut access = Disclosure::default();
        access.patients.insert("pat-1".into());
        access.withhold(Reason::Attribution);
        let mut report = Disclosure::default();
        report.withhold_n(Reason::Part2, 2);
        report.redact(Reason::Part2);
        report.redact_n(Reason::Financial, 5);
        report.withhold_n(Reason::DateFloor, 3);
        report.withhold(Reason::DrugPriorAuth);
        let mut r = AuditRecord::rest("r");
        r.set_disclosure(&access);
        r.set_disclosure(&report);
        r.status = 200;
        let d = r.disclosure.clone().unwrap();
        assert_eq!(d.suppressed.get(&Reason::Attribution), Some(&1));
        assert_eq!(d.suppressed.get(&Reason::Part2), Some(&2));
        assert_eq!(d.suppressed.get(&Reason::DateFloor), Some(&3));
        assert_eq!(d.suppressed.get(&Reason::DrugPriorAuth), Some(&1));
        assert_eq!(d.suppressed.get(&Reason::Unreadable), None);
        assert_eq!(d.redacted.get(&Reason::Part2), Some(&1));
        assert_eq!(d.redacted.get(&Reason::Financial), Some(&5));
        assert_eq!(r.disclosed_patients().into_iter().collect::<Vec<_>>(), ["pat-1"]);
        let json = r.to_json();
        for s in [
            "suppressed.part2",
            "suppressed.date-floor",
            "suppressed.drug-pa",
            "redacted.part2",
            "redacted.financial",
        ] {
            assert!(json.contains(s), "{s} in {json}");
        }
    }

    #[test]
    fn admin_routes_are_classified_without_query_values() {
        let table: &[(Method, &str, &str, Action, AdminTarget)] = &[
            (
                Method::PUT,
                "/admin/opt-outs/pat-1",
                "opt-out.put",
                Action::Update,
                AdminTarget::Patient("pat-1".into()),
            ),
            (
                Method::DELETE,
                "/admin/opt-outs/pat-1",
                "opt-out.delete",
                Action::Delete,
                AdminTarget::Patient("pat-1".into()),
            ),
            (Method::GET, "/admin/opt-outs", "opt-out.list", Action::Read, AdminTarget::None),
            (Method::POST, "/admin/clients", "client.create", Action::Create, AdminTarget::None),
            (
                Method::DELETE,
                "/admin/clients/grace%20ehr",
                "client.delete",
                Action::Delete,
                AdminTarget::Client("grace ehr".into()),
            ),
            (Method::GET, "/admin/audit", "audit.query", Action::Read, AdminTarget::None),
            (Method::POST, "/admin/attribution", "attribution.load", Action::Create, AdminTarget::None),
            (Method::POST, "/admin/plugins/reload", "plugins.reload", Action::Execute, AdminTarget::None),
            (Method::GET, "/admin/keys", "keys.list", Action::Read, AdminTarget::None),
            (Method::POST, "/admin/keys/rotate", "keys.rotate", Action::Execute, AdminTarget::None),
            (Method::GET, "/admin/attribution", "attribution.list", Action::Read, AdminTarget::None),
            (
                Method::POST,
                "/admin/attribution/refresh",
                "attribution.refresh",
                Action::Execute,
                AdminTarget::None,
            ),
            (
                Method::DELETE,
                "/admin/attribution/Group%2Fgrp-grace",
                "attribution.delete",
                Action::Delete,
                AdminTarget::Group("grp-grace".into()),
            ),
            (Method::GET, "/admin/audit/head", "audit.head", Action::Read, AdminTarget::None),
            (
                Method::GET,
                "/admin/provider-member-match/groups",
                "provider-match-group.list",
                Action::Read,
                AdminTarget::None,
            ),
            (
                Method::DELETE,
                "/admin/provider-member-match/groups/pmm-1",
                "provider-match-group.delete",
                Action::Delete,
                AdminTarget::Group("pmm-1".into()),
            ),
            (Method::GET, "/admin/nothing", "unknown", Action::Execute, AdminTarget::None),
            (Method::PUT, "/admin/opt-outs/a%2Fb", "unknown", Action::Execute, AdminTarget::None),
        ];
        for (method, path, code, action, target) in table {
            assert_eq!(admin_action(method, path), (*code, *action, target.clone()), "{method} {path}");
        }
    }
}
