//! OperationOutcome: the body of every error fhirwall returns.

use serde::Serialize;

use crate::error::{GatewayError, IssueCode};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    resource_type: &'static str,
    issue: Vec<Issue>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Issue {
    severity: &'static str,
    code: &'static str,
    diagnostics: String,
}

impl OperationOutcome {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            resource_type: "OperationOutcome",
            issue: vec![Issue { severity: "error", code: code.as_str(), diagnostics: diagnostics.into() }],
        }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            resource_type: "OperationOutcome",
            issue: vec![Issue {
                severity: "information",
                code: IssueCode::Informational.as_str(),
                diagnostics: diagnostics.into(),
            }],
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl From<&GatewayError> for OperationOutcome {
    fn from(err: &GatewayError) -> Self {
        OperationOutcome::error(err.code, err.message.clone())
    }
}
