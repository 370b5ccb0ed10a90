//! The access policy as data: `policies/patient-compartment.json` (written by
//! `policies/generate_patient_compartment.py` from the R4 Patient
//! CompartmentDefinition and the R4 SearchParameter expressions). For every
//! resource type it says which elements link a resource to a patient and what
//! each link means (see the generator's doc and [`Links`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

const BUILTIN: &str = include_str!("../../../policies/patient-compartment.json");

/// How fhirwall treats one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRule {
    /// `Patient`: visible iff its id is visible.
    Patient,
    /// `Group`: only the caller's own attribution Groups, members filtered.
    Group,
    /// A patient-owned type (the R4 compartment plus a few extras).
    Compartment(Links),
    /// Supporting data without a patient-owned element (Organization, ...).
    Reference,
    /// Anything else: refused on request, dropped from responses.
    Unlisted,
}

/// The patient links of a compartment type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The search parameter added to scope a patient-less search.
    pub narrow: Option<String>,
    /// Parameters on the owner element: naming only visible patients in one
    /// of them scopes a search.
    pub scope_params: Vec<String>,
    /// Element paths (dotted) of whose record it is.
    pub owner: Vec<Vec<String>>,
    /// Other compartment links: never grant, but a Patient named here must be visible.
    pub participant: Vec<Vec<String>>,
    /// Payer-unsafe links: ignored both ways.
    pub unsafe_paths: Vec<Vec<String>>,
    /// Paths whose non-Patient targets decide visibility (Provenance.target).
    pub follows: Vec<Vec<String>>,
}

/// The loaded policy table.
#[derive(Debug)]
pub struct Policy {
    rules: HashMap<String, TypeRule>,
    /// Per type, every reference search parameter that can name a Patient.
    patient_params: HashMap<String, HashSet<String>>,
    unsafe_params: HashSet<String>,
    /// First path segments of every link of every type: the only top-level
    /// members the response filter needs to read.
    link_members: HashSet<String>,
}

#[derive(Deserialize)]
struct RawTable {
    unsafe_params: Vec<String>,
    reference_types: Vec<String>,
    resources: HashMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    narrow: Option<String>,
    #[serde(default)]
    special: Option<String>,
    #[serde(default)]
    scope_params: Vec<String>,
    #[serde(default)]
    owner: Vec<String>,
    #[serde(default)]
    participant: Vec<String>,
    #[serde(default, rename = "unsafe")]
    unsafe_links: Vec<String>,
    #[serde(default)]
    follows: Vec<String>,
    #[serde(default)]
    patient_params: Vec<String>,
}

impl Policy {
    /// The table shipped with fhirwall.
    pub fn builtin() -> Arc<Policy> {
        static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
        POLICY
            .get_or_init(|| {
                Arc::new(Policy::parse(BUILTIN).expect("policies/patient-compartment.json is valid"))
            })
            .clone()
    }

    /// `{dir}/patient-compartment.json` when the operator keeps the policy
    /// data elsewhere (`policy.dir`), else the built-in table.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Arc<Policy>> {
        let Some(dir) = dir else { return Ok(Policy::builtin()) };
        let path = dir.join("patient-compartment.json");
        if !path.is_file() {
            return Ok(Policy::builtin());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("policy.dir: cannot read {}: {e}", path.display()))?;
        Ok(Arc::new(Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?))
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let raw: RawTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let split = |paths: &[String]| -> Vec<Vec<String>> {
            paths.iter().map(|p| p.split('.').map(str::to_owned).collect()).collect()
        };
        let mut rules = HashMap::new();
        let mut patient_params = HashMap::new();
        let mut link_members = HashSet::new();
        for (name, entry) in raw.resources {
            patient_params.insert(name.clone(), entry.patient_params.iter().cloned().collect());
            let rule = match (name.as_str(), entry.special.is_some()) {
                ("Patient", _) => TypeRule::Patient,
                ("Group", _) => TypeRule::Group,
                (_, true) => return Err(format!("{name}: unknown special rule")),
                _ => {
                    let links = Links {
                        narrow: entry.narrow,
                        scope_params: entry.scope_params,
                        owner: split(&entry.owner),
                        participant: split(&entry.participant),
                        unsafe_paths: split(&entry.unsafe_links),
                        follows: split(&entry.follows),
                    };
                    if links.owner.is_empty() {
                        return Err(format!("{name}: a compartment type needs an owner path"));
                    }
                    if links.narrow.as_deref().is_some_and(|n| raw.unsafe_params.iter().any(|u| u == n)) {
                        return Err(format!("{name}: narrowing by a payer-unsafe parameter"));
                    }
                    for path in links.owner.iter().chain(&links.participant).chain(&links.follows) {
                        if let Some(first) = path.first() {
                            link_members.insert(first.clone());
                        }
                    }
                    TypeRule::Compartment(links)
                }
            };
            rules.insert(name, rule);
        }
        for name in raw.reference_types {
            if rules.contains_key(&name) {
                return Err(format!("{name} is both a compartment and a reference type"));
            }
            rules.insert(name, TypeRule::Reference);
        }
        link_members.insert("contained".into());
        Ok(Policy {
            rules,
            patient_params,
            unsafe_params: raw.unsafe_params.into_iter().collect(),
            link_members,
        })
    }

    /// The rule for `resource_type` (unknown names are `Unlisted`).
    pub fn rule(&self, resource_type: &str) -> &TypeRule {
        static UNLISTED: TypeRule = TypeRule::Unlisted;
        self.rules.get(resource_type).unwrap_or(&UNLISTED)
    }

    /// The search parameter that scopes `resource_type` to patients for a
    /// bulk export (`_id` for Patient); `None`: not exportable.
    pub fn export_link(&self, resource_type: &str) -> Option<String> {
        match self.rule(resource_type) {
            TypeRule::Patient => Some("_id".into()),
            TypeRule::Compartment(links) => links.narrow.clone(),
            _ => None,
        }
    }

    /// Every exportable type, sorted (Patient first).
    pub fn exportable_types(&self) -> Vec<String> {
        let mut types: Vec<String> =
            self.rules.keys().filter(|t| self.export_link(t).is_some()).cloned().collect();
        types.sort_by(|a, b| (a != "Patient", a).cmp(&(b != "Patient", b)));
        types
    }

    /// Can search parameter `name` of `resource_type` name a Patient? `patient`
    /// and `subject` count everywhere, whatever the table says.
    pub fn is_patient_param(&self, resource_type: &str, name: &str) -> bool {
        matches!(name, "patient" | "subject")
            || self.patient_params.get(resource_type).is_some_and(|params| params.contains(name))
    }

    pub fn is_unsafe_param(&self, name: &str) -> bool {
        self.unsafe_params.contains(name)
    }

    /// Is `name` a top-level member the filter must read?
    pub fn is_link_member(&self, name: &str) -> bool {
        self.link_members.contains(name)
    }

    /// The top-level elements a resource of `resource_type` must keep for the
    /// filter to decide on it (added to a caller's `_elements`).
    pub fn link_elements(&self, resource_type: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let TypeRule::Compartment(links) = self.rule(resource_type) {
            for path in links.owner.iter().chain(&links.participant).chain(&links.follows) {
                if let Some(first) = path.first()
                    && !out.contains(first)
                {
                    out.push(first.clone());
                }
            }
        }
        if matches!(self.rule(resource_type), TypeRule::Group) {
            out.extend(["managingEntity".to_owned(), "member".to_owned()]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn builtin_table_has_the_payer_rules() {
        let p = Policy::builtin();
        let TypeRule::Compartment(eob) = p.rule("ExplanationOfBenefit") else { panic!("EOB") };
        assert_eq!(eob.owner, vec![path("patient")]);
        assert_eq!(eob.unsafe_paths, vec![path("payee.party")]);
        assert!(eob.participant.is_empty());
        let TypeRule::Compartment(cov) = p.rule("Coverage") else { panic!("Coverage") };
        assert_eq!(cov.narrow.as_deref(), Some("beneficiary"));
        assert_eq!(cov.owner, vec![path("beneficiary")]);
        assert_eq!(cov.unsafe_paths.len(), 3);
        assert!(cov.scope_params.contains(&"patient".to_owned()));
        let TypeRule::Compartment(obs) = p.rule("Observation") else { panic!("Observation") };
        assert_eq!(obs.owner, vec![path("subject")]);
        assert_eq!(obs.participant, vec![path("performer")]);
        assert_eq!(obs.scope_params, vec!["patient".to_owned(), "subject".to_owned()]);
        let TypeRule::Compartment(prov) = p.rule("Provenance") else { panic!("Provenance") };
        assert_eq!(prov.follows, vec![path("target")]);
        assert!(matches!(p.rule("Device"), TypeRule::Compartment(_)));
        assert_eq!(p.rule("Patient"), &TypeRule::Patient);
        assert_eq!(p.rule("Group"), &TypeRule::Group);
        for t in ["Organization", "Practitioner", "PractitionerRole", "Location", "Medication"] {
            assert_eq!(p.rule(t), &TypeRule::Reference, "{t}");
        }
        for t in ["Task", "Binary", "Contract", "Bundle", "NoSuchType"] {
            assert_eq!(p.rule(t), &TypeRule::Unlisted, "{t}");
        }
    }

    #[test]
    fn unsafe_params_never_scope_or_own() {
        let p = Policy::builtin();
        for u in ["payee", "subscriber", "policy-holder", "payor"] {
            assert!(p.is_unsafe_param(u));
        }
        for name in ["Coverage", "ExplanationOfBenefit", "Claim"] {
            let TypeRule::Compartment(links) = p.rule(name) else { panic!() };
            for u in ["payee", "subscriber", "policy-holder", "payor"] {
                assert!(!links.scope_params.iter().any(|s| s == u), "{name} scoped by {u}");
                assert_ne!(links.narrow.as_deref(), Some(u));
            }
            for path in &links.owner {
                assert!(!["payee", "subscriber", "policyHolder", "payor"].contains(&path[0].as_str()));
            }
        }
    }

    #[test]
    fn every_compartment_type_of_the_r4_definition_is_covered() {
        let definition: serde_json::Value = serde_json::from_str(include_str!(
            "../../../policies/CompartmentDefinition-patient-R4-4.0.1.json"
        ))
        .unwrap();
        let p = Policy::builtin();
        for resource in definition["resource"].as_array().unwrap() {
            let code = resource["code"].as_str().unwrap();
            let in_compartment = resource["param"].as_array().is_some_and(|a| !a.is_empty());
            let rule = p.rule(code);
            if in_compartment {
                assert!(
                    matches!(rule, TypeRule::Compartment(_) | TypeRule::Patient | TypeRule::Group),
                    "{code}: {rule:?}"
                );
            } else {
                assert!(!matches!(rule, TypeRule::Compartment(_)) || code == "Device", "{code}");
            }
        }
    }

    #[test]
    fn patient_params_and_link_elements() {
        let p = Policy::builtin();
        for (t, name) in [
            ("Observation", "focus"),
            ("Observation", "performer"),
            ("Coverage", "beneficiary"),
            ("Patient", "link"),
        ] {
            assert!(p.is_patient_param(t, name), "{t} {name}");
        }
        assert!(p.is_patient_param("Organization", "patient"));
        assert!(!p.is_patient_param("Observation", "code"));
        assert_eq!(p.link_elements("Observation"), vec!["subject".to_owned(), "performer".to_owned()]);
        assert!(p.is_link_member("subject") && p.is_link_member("contained") && !p.is_link_member("code"));
    }
}
