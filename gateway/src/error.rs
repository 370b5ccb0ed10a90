//! The one gateway error: who is at fault, which HTTP status, which
//! OperationOutcome issue code. Every module's own error converts into it, and it
//! is turned into a response at exactly one edge (`server::respond_error`).

use http::StatusCode;

/// Who caused a failure. Decides the log level and the status family, and lets
/// the audit record say whether the caller, the upstream or fhirwall failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    /// The request was malformed, unauthenticated or not allowed.
    Caller,
    /// The upstream FHIR server failed, was slow, or answered something unusable.
    Upstream,
    /// A policy step (access, redaction, plugin) refused or failed; fails closed.
    Policy,
    /// A bug or resource problem inside fhirwall.
    Internal,
}

/// FHIR `OperationOutcome.issue.code` values used by fhirwall (IssueType value set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Security,
    Login,
    Forbidden,
    Expired,
    Processing,
    NotSupported,
    NotFound,
    TooCostly,
    Exception,
    Timeout,
    Transient,
    Throttled,
    BusinessRule,
    MultipleMatches,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Expired => "expired",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::NotFound => "not-found",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Exception => "exception",
            IssueCode::Timeout => "timeout",
            IssueCode::Transient => "transient",
            IssueCode::Throttled => "throttled",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::Informational => "informational",
        }
    }
}

/// A failure that ends a request. Carries everything the edge needs to answer
/// with an OperationOutcome; the message is shown to the caller, so it never
/// holds upstream URLs, PHI or internal details (those go to `detail`, logged).
#[derive(Debug, thiserror::Error)]
#[error("{blame:?} {status}: {message}")]
pub struct GatewayError {
    pub blame: Blame,
    pub status: StatusCode,
    pub code: IssueCode,
    /// Safe to show to the caller.
    pub message: String,
    /// For logs only (may name the upstream, the underlying error, ...).
    pub detail: Option<String>,
    /// Extra response headers (e.g. `WWW-Authenticate`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl GatewayError {
    pub fn new(blame: Blame, status: StatusCode, code: IssueCode, message: impl Into<String>) -> Self {
        GatewayError { blame, status, code, message: message.into(), detail: None, headers: Vec::new() }
    }

    /// 400: a request fhirwall does not understand or will not pass on.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::BAD_REQUEST, IssueCode::Invalid, message)
    }

    /// 400 for syntax fhirwall deliberately refuses (`_filter`, `_has`, ...).
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::BAD_REQUEST, IssueCode::NotSupported, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::FORBIDDEN, IssueCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::NOT_FOUND, IssueCode::NotFound, message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::METHOD_NOT_ALLOWED, IssueCode::NotSupported, message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(Blame::Caller, StatusCode::NOT_ACCEPTABLE, IssueCode::NotSupported, message)
    }

    /// 502: the upstream could not be reached or answered something unusable.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(Blame::Upstream, StatusCode::BAD_GATEWAY, IssueCode::Transient, message)
    }

    /// 504: the upstream did not answer within its deadline.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(Blame::Upstream, StatusCode::GATEWAY_TIMEOUT, IssueCode::Timeout, message)
    }

    /// 500 from a policy step: fail closed, say nothing about why to the caller.
    pub fn policy_failure(detail: impl Into<String>) -> Self {
        Self::new(
            Blame::Policy,
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueCode::Exception,
            "the request could not be completed safely",
        )
        .with_detail(detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Blame::Internal, StatusCode::INTERNAL_SERVER_ERROR, IssueCode::Exception, "internal error")
            .with_detail(detail)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_code(mut self, code: IssueCode) -> Self {
        self.code = code;
        self
    }
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
