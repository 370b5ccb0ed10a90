//! Request decisions (DESIGN "Request pipeline" step 4), made on the parsed
//! request before anything reaches the upstream:
//!
//! - read/vread/history of a Patient that is not visible: 404 without asking
//!   the upstream; of a compartment resource: decided on the answer (404
//!   when it is not visible, indistinguishable from a missing resource);
//! - a search naming a patient who is not visible (any parameter that can
//!   name a Patient, `_id` on Patient, the compartment path): 403, whether
//!   or not the patient exists; payer-unsafe parameters: 403; modifiers on
//!   patient parameters other than a type (`:missing`, `:not`,
//!   `:identifier`, `:above`, ...): 400;
//! - a compartment-type search naming no patient: narrowed to the visible
//!   set (at most `policy.max_narrowed_patients`, else 400 pointing to
//!   `$davinci-data-export`); an empty visible set is answered by fhirwall
//!   with an empty searchset;
//! - Group: only the caller's own attribution Groups (`managing-entity`
//!   forced to the caller's organization); the caller's stored rosters that
//!   the search matches are listed with the upstream's matches;
//! - reference types pass; other types are refused (403).
//!
//! Every patient reference the caller wrote is rewritten to `Patient/{id}`,
//! the form the upstream stores.

use super::Scope;
use super::policy::{Policy, TypeRule};
use super::refs::{RefResolver, Target};
use crate::error::{GatewayError, Kind};
use crate::fhir::search::{Modifier, SearchParam, is_fhir_id};
use crate::fhir::{FhirRequest, Interaction, Operation, SearchParams};

/// The message of every 404 the access layer gives (and of the upstream's
/// own 404s on reads, which fhirwall replaces), so the two look the same.
pub const NOT_FOUND: &str = "resource not found";

/// How the answer to the request is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// read / vread: a removed resource is a 404.
    Read,
    /// Searches and pages: Bundles with entries removed.
    Search,
    /// A follow-up page: like `Search`, but a `total` is never recomputed
    /// (the page alone cannot tell the number of matches).
    Page,
    /// history-instance: like `Search`, and a history with nothing left is a
    /// 404 (an empty history would tell that the resource exists).
    History,
    /// Operations and (where enabled) writes: filtered like the rest; a
    /// removed top-level resource is a 404.
    Other,
}

/// An answer fhirwall gives without the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// The visible set is empty: an empty searchset.
    EmptySearchset,
    /// A stored roster Group (filtered on the way out like any Group).
    Resource(String),
}

/// The outcome of the request decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub local: Option<Local>,
    /// The number of patients a patient-less search was narrowed to.
    pub narrowed_to: Option<u32>,
    /// Group searches: the caller's stored roster Groups the search matches
    /// (id, JSON text), listed after the upstream's matches.
    pub rosters: Vec<(String, std::sync::Arc<str>)>,
}

impl Plan {
    fn mode(mode: Mode) -> Plan {
        Plan { mode, local: None, narrowed_to: None, rosters: Vec::new() }
    }
}

/// Decide on one parsed request (and rewrite its parameters).
pub fn plan(
    scope: &Scope,
    policy: &Policy,
    refs: &RefResolver,
    fhir: &mut FhirRequest,
    max_narrowed: usize,
) -> Result<Plan, GatewayError> {
    let interaction = fhir.interaction.clone();
    match &interaction {
        Interaction::Capabilities => Ok(Plan::mode(Mode::Search)),
        Interaction::Page { .. } => Ok(Plan::mode(Mode::Page)),
        Interaction::Read { resource_type, id }
        | Interaction::Vread { resource_type, id, .. }
        | Interaction::HistoryInstance { resource_type, id } => {
            let read = matches!(interaction, Interaction::Read { .. });
            let mode = if matches!(interaction, Interaction::HistoryInstance { .. }) {
                Mode::History
            } else {
                Mode::Read
            };
            check_result_params(policy, resource_type, &mut fhir.params)?;
            match policy.rule(resource_type) {
                TypeRule::Patient if !scope.is_visible(id) => Err(not_found()),
                TypeRule::Patient | TypeRule::Compartment(_) | TypeRule::Reference => Ok(Plan::mode(mode)),
                TypeRule::Group if scope.owns_upstream_group(id) => Ok(Plan::mode(mode)),
                TypeRule::Group => match scope.roster(id) {
                    Some(roster) if read => Ok(Plan {
                        local: Some(Local::Resource(roster.body.to_string())),
                        ..Plan::mode(Mode::Read)
                    }),
                    _ => Err(not_found()),
                },
                TypeRule::Unlisted => Err(type_refused(resource_type)),
            }
        }
        Interaction::SearchType { resource_type } => {
            search(scope, policy, refs, resource_type, fhir, max_narrowed)
        }
        Interaction::SearchCompartment { patient_id, resource_type } => {
            if !scope.is_visible(patient_id) {
                return Err(patient_refused());
            }
            if !matches!(policy.rule(resource_type), TypeRule::Compartment(_)) {
                return Err(GatewayError::bad_request(format!(
                    "{resource_type} is not in the Patient compartment"
                )));
            }
            check_result_params(policy, resource_type, &mut fhir.params)?;
            check_params(scope, policy, refs, resource_type, &mut fhir.params, &[])?;
            Ok(Plan::mode(Mode::Search))
        }
        Interaction::Operation(Operation::DavinciDataExport { group } | Operation::GroupExport { group }) => {
            if scope.owns_group(group) {
                Ok(Plan::mode(Mode::Other))
            } else {
                Err(not_found())
            }
        }
        Interaction::Operation(Operation::SystemExport) => {
            Err(GatewayError::forbidden("system-level $export is not offered"))
        }
        Interaction::Operation(Operation::PatientExport) => Err(GatewayError::forbidden(
            "Patient-level $export is not offered: Provider Access exports a Group",
        )),
        Interaction::Operation(Operation::MemberMatch | Operation::ProviderMemberMatch) => {
            Ok(Plan::mode(Mode::Other))
        }
        Interaction::Create { resource_type }
        | Interaction::Update { resource_type, .. }
        | Interaction::Patch { resource_type, .. }
        | Interaction::Delete { resource_type, .. } => match policy.rule(resource_type) {
            TypeRule::Reference => Ok(Plan::mode(Mode::Other)),
            _ => Err(GatewayError::forbidden(format!(
                "writes to {resource_type} are not available: patient data is read-only here"
            ))),
        },
        Interaction::Batch => Err(GatewayError::forbidden(
            "batch and transaction Bundles are not available: their entries cannot be access-checked",
        )),
    }
}

fn search(
    scope: &Scope,
    policy: &Policy,
    refs: &RefResolver,
    resource_type: &str,
    fhir: &mut FhirRequest,
    max_narrowed: usize,
) -> Result<Plan, GatewayError> {
    check_result_params(policy, resource_type, &mut fhir.params)?;
    let params = &mut fhir.params;
    match policy.rule(resource_type) {
        TypeRule::Unlisted => Err(type_refused(resource_type)),
        TypeRule::Reference => {
            check_params(scope, policy, refs, resource_type, params, &[])?;
            Ok(Plan::mode(Mode::Search))
        }
        TypeRule::Group => {
            group_search(scope, params)?;
            check_params(scope, policy, refs, resource_type, params, &[])?;
            Ok(Plan { rosters: matching_rosters(scope, params), ..Plan::mode(Mode::Search) })
        }
        TypeRule::Patient => {
            let scoped = check_params(scope, policy, refs, resource_type, params, &[])?;
            narrow(scope, params, scoped, "_id", false, max_narrowed)
        }
        TypeRule::Compartment(links) => {
            let scoped = check_params(scope, policy, refs, resource_type, params, &links.scope_params)?;
            let Some(param) = links.narrow.clone() else {
                if scoped {
                    return Ok(Plan::mode(Mode::Search));
                }
                return Err(GatewayError::bad_request(format!(
                    "searches of {resource_type} must name a patient of your organization"
                )));
            };
            narrow(scope, params, scoped, &param, true, max_narrowed)
        }
    }
}

/// Add `param=Patient/a,Patient/b,...` (or `_id=a,b,...`) unless the search
/// is already scoped to visible patients.
fn narrow(
    scope: &Scope,
    params: &mut SearchParams,
    scoped: bool,
    param: &str,
    as_reference: bool,
    max_narrowed: usize,
) -> Result<Plan, GatewayError> {
    if scoped {
        return Ok(Plan::mode(Mode::Search));
    }
    let patients = scope.visible_patients(max_narrowed).map_err(|_| too_many(scope, max_narrowed))?;
    if patients.is_empty() {
        return Ok(Plan {
            local: Some(Local::EmptySearchset),
            narrowed_to: Some(0),
            ..Plan::mode(Mode::Search)
        });
    }
    let count = patients.len() as u32;
    let values =
        if as_reference { patients.into_iter().map(|p| format!("Patient/{p}")).collect() } else { patients };
    params.push(SearchParam::new(param, None, values));
    Ok(Plan { narrowed_to: Some(count), ..Plan::mode(Mode::Search) })
}

/// Group searches: `managing-entity` is forced to the caller's organization;
/// naming another organization is refused.
fn group_search(scope: &Scope, params: &mut SearchParams) -> Result<(), GatewayError> {
    let mut given = params.remove("managing-entity");
    given.extend(params.remove("managingEntity"));
    for param in &given {
        if param.modifier.is_some() {
            return Err(GatewayError::not_supported(format!(
                "modifiers are not supported on {}",
                param.name
            )));
        }
        for value in &param.values {
            let organization = if is_fhir_id(value) {
                format!("Organization/{value}")
            } else {
                match scope.refs().resolve(value) {
                    Target::Other { resource_type: "Organization", id } => format!("Organization/{id}"),
                    _ => String::new(),
                }
            };
            if organization != scope.organization() {
                return Err(GatewayError::forbidden(
                    "only the attribution Groups of your own organization are available",
                ));
            }
        }
    }
    params.push(SearchParam::single("managing-entity", scope.organization()));
    Ok(())
}

/// Parameters that shape the answer rather than select Groups.
const RESULT_PARAMS: &[&str] =
    &["_count", "_sort", "_elements", "_summary", "_format", "_pretty", "_include", "_revinclude"];

/// The caller's stored roster Groups a (checked, organization-forced) Group
/// search matches. fhirwall evaluates `_id`, `member`, `type`, `actual` and
/// `managing-entity` itself; a search with any other criterion or modifier
/// lists no roster (the upstream's answer alone: fewer Groups, never another
/// organization's).
fn matching_rosters(scope: &Scope, params: &SearchParams) -> Vec<(String, std::sync::Arc<str>)> {
    let criteria: Vec<&SearchParam> =
        params.params.iter().filter(|p| !RESULT_PARAMS.contains(&p.name.as_str())).collect();
    let evaluable = criteria.iter().all(|p| {
        p.modifier.is_none()
            && matches!(p.name.as_str(), "_id" | "member" | "type" | "actual" | "managing-entity")
    });
    if !evaluable {
        return Vec::new();
    }
    let mut out = Vec::new();
    for id in scope.roster_ids() {
        let Some(roster) = scope.roster(&id) else { continue };
        if scope.owns_upstream_group(&id) {
            continue; // the upstream's Group of that id is listed already
        }
        let Ok(group) = serde_json::from_str::<serde_json::Value>(&roster.body) else { continue };
        let matches = criteria.iter().all(|p| {
            p.values.iter().any(|value| match p.name.as_str() {
                "_id" => *value == id,
                "managing-entity" => roster.group.organization == scope.organization(),
                "member" => match scope.refs().resolve(value) {
                    Target::Patient(patient) => {
                        scope.is_visible(patient) && roster.group.active.iter().any(|m| m == patient)
                    }
                    _ => is_fhir_id(value) && roster.group.active.iter().any(|m| m == value),
                },
                "type" => {
                    let code = value.rsplit('|').next().unwrap_or(value);
                    group["type"].as_str() == Some(code)
                }
                "actual" => group["actual"].as_bool().map(|b| b.to_string()).as_deref() == Some(value),
                _ => false,
            })
        });
        if matches {
            out.push((id, roster.body.clone()));
        }
    }
    out
}

/// Check every parameter that can name a patient; returns whether one of
/// `scope_params` names only visible patients (the search is scoped).
fn check_params(
    scope: &Scope,
    policy: &Policy,
    refs: &RefResolver,
    resource_type: &str,
    params: &mut SearchParams,
    scope_params: &[String],
) -> Result<bool, GatewayError> {
    let mut scoped = false;
    for param in params.params.iter_mut() {
        if policy.is_unsafe_param(&param.name) {
            return Err(GatewayError::forbidden(format!(
                "search parameter {} is not available: it follows a payer-unsafe link (payee, subscriber, \
                 policy holder, payor)",
                param.name
            )));
        }
        if resource_type == "Patient" && param.name == "_id" {
            if param.values.iter().any(|id| !scope.is_visible(id)) {
                return Err(patient_refused());
            }
            scoped = true;
            continue;
        }
        if !policy.is_patient_param(resource_type, &param.name) {
            continue;
        }
        let patient_only = match &param.modifier {
            None => false,
            Some(Modifier::Type(t)) if t == "Patient" => true,
            Some(Modifier::Type(_)) => {
                // `subject:Group=...`: names no patient; a Patient reference here is nonsense.
                if param.values.iter().any(|v| matches!(refs.resolve(v), Target::Patient(_))) {
                    return Err(GatewayError::bad_request(format!(
                        "parameter {} names a Patient under another type modifier",
                        param.name
                    )));
                }
                continue;
            }
            Some(modifier) => {
                return Err(GatewayError::not_supported(format!(
                    "modifier :{modifier} is not allowed on the patient parameter {}",
                    param.name
                )));
            }
        };
        let mut all_patients = true;
        let mut values = Vec::with_capacity(param.values.len());
        for value in &param.values {
            let target = if patient_only {
                match refs.resolve_search_value(value) {
                    Target::Patient(id) => Target::Patient(id),
                    _ => Target::Unknown,
                }
            } else {
                refs.resolve_search_value(value)
            };
            match target {
                Target::Patient(id) if scope.is_visible(id) => values.push(format!("Patient/{id}")),
                Target::Patient(_) | Target::Unknown => return Err(patient_refused()),
                Target::Other { resource_type, id } => {
                    all_patients = false;
                    values.push(format!("{resource_type}/{id}"));
                }
            }
        }
        param.values = values;
        param.modifier = None;
        if all_patients && scope_params.contains(&param.name) {
            scoped = true;
        }
    }
    Ok(scoped)
}

/// `_summary=text` leaves nothing to check; `_elements` gets the link
/// elements added so the filter can decide (it would drop everything else).
fn check_result_params(
    policy: &Policy,
    resource_type: &str,
    params: &mut SearchParams,
) -> Result<(), GatewayError> {
    let checked = matches!(policy.rule(resource_type), TypeRule::Compartment(_) | TypeRule::Group);
    if !checked {
        return Ok(());
    }
    if params.get("_summary").any(|p| p.values.iter().any(|v| v == "text")) {
        return Err(GatewayError::not_supported(format!(
            "_summary=text is not available for {resource_type}: the answer could not be access-checked"
        )));
    }
    let links = policy.link_elements(resource_type);
    for param in params.params.iter_mut().filter(|p| p.name == "_elements") {
        for element in &links {
            if !param.values.contains(element) {
                param.values.push(element.clone());
            }
        }
    }
    Ok(())
}

pub fn not_found() -> GatewayError {
    GatewayError::not_found(NOT_FOUND)
}

fn patient_refused() -> GatewayError {
    GatewayError::forbidden("the search names a patient your organization may not access")
}

fn type_refused(resource_type: &str) -> GatewayError {
    GatewayError::forbidden(format!(
        "{resource_type} resources are not available through the Provider Access API"
    ))
}

fn too_many(scope: &Scope, max: usize) -> GatewayError {
    let group = scope.groups().into_iter().next().unwrap_or_else(|| "{id}".to_owned());
    GatewayError::of(
        Kind::TooCostly,
        format!(
            "this search names no patient and your organization has more than {max} attributed patients: \
             name a patient (patient=Patient/{{id}}) or export the data with \
             POST Group/{group}/$davinci-data-export"
        ),
    )
}

#[cfg(test)]
mod tests;
