//! Example policy plugin: honour confidential-communication requests.
//!
//! A member may ask the plan to keep certain care confidential (HIPAA
//! confidential communications; state laws for minors and sensitive
//! services). The payer flags those records in its FHIR server with a
//! security label; this plugin makes sure Provider Access never sends them:
//!
//! - a resource whose `meta.security` carries one of the configured codes
//!   (default: v3-Confidentiality `R` and `V`, and the payer's own
//!   `confidential-communication` tag) is withheld (`drop`);
//! - a Patient flagged that way is not withheld (the provider needs to
//!   know whom the data is about) but narrowed (`replace`): its address and
//!   telephone numbers are removed, since the member asked that the plan not
//!   reveal where and how to reach them.
//!
//! Configuration through the environment the operator grants in the
//! `[[plugins]]` entry (`env = { FHIRWALL_CCR_CODES = "R,V,confidential-communication" }`);
//! without a grant the defaults apply.

use fhirwall_plugin_sdk::fhir::ResourceHead;
use fhirwall_plugin_sdk::policy::{Decision, Policy, RequestContext, Verdict};

pub struct ConfidentialCommunications;

const DEFAULT_CODES: &str = "R,V,confidential-communication";

/// The configured codes, read once per instance (an instance serves one request).
fn codes() -> &'static [String] {
    static CODES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CODES.get_or_init(|| {
        std::env::var("FHIRWALL_CCR_CODES")
            .unwrap_or_else(|_| DEFAULT_CODES.to_owned())
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    })
}

impl Policy for ConfidentialCommunications {
    fn on_request(_ctx: &RequestContext) -> Decision {
        Decision::Allow
    }

    fn on_resource(_ctx: &RequestContext, resource: &str) -> Verdict {
        // Fast path: a resource without any security label is kept without
        // a parse (most are). Escaped key names would hide the key from
        // this check, so any `\u` escape takes the full path.
        if !resource.contains("\"security\"") && !resource.contains("\\u") {
            return Verdict::Keep;
        }
        let Ok(head) = ResourceHead::parse(resource) else {
            // Not something we can read: withhold rather than guess.
            return Verdict::Drop("unreadable resource".into());
        };
        if !codes().iter().any(|c| head.has_security_code(c)) {
            return Verdict::Keep;
        }
        if head.resource_type != "Patient" {
            return Verdict::Drop("confidential-communication".into());
        }
        let Ok(mut patient) = serde_json::from_str::<serde_json::Value>(resource) else {
            return Verdict::Drop("unreadable Patient".into());
        };
        if let Some(obj) = patient.as_object_mut() {
            obj.remove("address");
            obj.remove("telecom");
            obj.remove("contact");
        }
        Verdict::Replace(patient.to_string())
    }
}

fhirwall_plugin_sdk::export_policy!(ConfidentialCommunications);

#[cfg(test)]
mod tests {
    use fhirwall_plugin_sdk::policy::test_context;

    use super::*;

    #[test]
    fn unflagged_resources_pass() {
        let ctx = test_context("grace-ehr", "read", Some("Observation"));
        let obs = r#"{"resourceType":"Observation","id":"o1","meta":{"security":[{"code":"N"}]}}"#;
        assert!(matches!(ConfidentialCommunications::on_resource(&ctx, obs), Verdict::Keep));
    }

    #[test]
    fn flagged_resources_are_withheld_and_patients_narrowed() {
        let ctx = test_context("grace-ehr", "search-type", Some("Observation"));
        let obs = r#"{"resourceType":"Observation","id":"o1","meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]}}"#;
        assert!(matches!(ConfidentialCommunications::on_resource(&ctx, obs), Verdict::Drop(_)));
        let pat = r#"{"resourceType":"Patient","id":"p1","meta":{"security":[{"code":"R"}]},"address":[{"city":"X"}],"telecom":[{"value":"1"}],"gender":"female"}"#;
        match ConfidentialCommunications::on_resource(&ctx, pat) {
            Verdict::Replace(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                assert_eq!(v["id"], "p1");
                assert!(v.get("address").is_none() && v.get("telecom").is_none());
                assert_eq!(v["gender"], "female");
            }
            other => panic!("expected replace, got {other:?}"),
        }
    }
}
