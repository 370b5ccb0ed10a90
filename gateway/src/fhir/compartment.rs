//! The R4 Patient compartment as data (`policies/patient-compartment.json`):
//! which search parameter scopes a resource type to one patient. The payer-
//! unsafe links (`payee`, `subscriber`, `policy-holder`, `payor`) are listed
//! there and never used to make a resource visible.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

const BUILTIN: &str = include_str!("../../../policies/patient-compartment.json");

#[derive(Debug, Deserialize)]
pub struct CompartmentTable {
    pub unsafe_params: Vec<String>,
    pub resources: HashMap<String, CompartmentEntry>,
}

#[derive(Debug, Deserialize)]
pub struct CompartmentEntry {
    /// Every R4 compartment parameter of the type (informational).
    pub params: Vec<String>,
    /// The parameter fhirwall uses to scope a search to one patient.
    pub narrow: Option<String>,
}

impl CompartmentTable {
    /// The table shipped with fhirwall.
    pub fn builtin() -> &'static CompartmentTable {
        static TABLE: OnceLock<CompartmentTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            serde_json::from_str(BUILTIN).expect("policies/patient-compartment.json is valid")
        })
    }

    /// The parameter that scopes `resource_type` to one patient, if the type
    /// is in the Patient compartment through a patient-owned link.
    pub fn narrowing_param(&self, resource_type: &str) -> Option<&str> {
        self.resources.get(resource_type)?.narrow.as_deref()
    }

    pub fn is_unsafe_param(&self, name: &str) -> bool {
        self.unsafe_params.iter().any(|p| p == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_scopes_payer_types_by_safe_params() {
        let t = CompartmentTable::builtin();
        assert_eq!(t.narrowing_param("ExplanationOfBenefit"), Some("patient"));
        assert_eq!(t.narrowing_param("Coverage"), Some("beneficiary"));
        assert_eq!(t.narrowing_param("Observation"), Some("subject"));
        assert_eq!(t.narrowing_param("Claim"), Some("patient"));
        assert_eq!(t.narrowing_param("Organization"), None);
        for p in ["payee", "subscriber", "policy-holder"] {
            assert!(t.is_unsafe_param(p));
            assert!(t.resources.values().all(|e| e.narrow.as_deref() != Some(p)));
        }
    }
}
