//! The one gateway error: who is at fault, which HTTP status, which
//! OperationOutcome issue code. Every module's own error converts into it, and it
//! is turned into a response at exactly one edge (`respond::error`).

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

/// What went wrong, as the client sees it. The HTTP status, who is at
/// fault and the default issue code follow from the kind here and nowhere
/// else: a call site names what happened, never a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: malformed or unusable request.
    Invalid,
    /// 400: a parameter, media type or feature fhirwall does not serve.
    NotSupported,
    /// 400: the request would cost too much (a search naming no patient).
    TooCostly,
    /// 401: no valid credentials.
    Unauthenticated,
    /// 403: authenticated, not allowed.
    Forbidden,
    /// 404: no such resource, or one the caller may not see.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 406.
    NotAcceptable,
    /// 409: conflicts with what exists.
    Conflict,
    /// 412: a condition of the request does not hold.
    PreconditionFailed,
    /// 413.
    PayloadTooLarge,
    /// 414.
    UriTooLong,
    /// 415.
    UnsupportedMediaType,
    /// 422: well formed, but cannot be processed (no unique match, consent refused).
    Unprocessable,
    /// 429.
    Throttled,
    /// 501: an operation this deployment does not offer.
    NotImplemented,
    /// 403: payer policy (a policy plugin) refused the request.
    PolicyRefused,
    /// 422: policy configuration the operator sent is unusable.
    PolicyInvalid,
    /// 500: a policy step failed; the request fails closed.
    PolicyFailed,
    /// 503: a policy step could not finish in time.
    PolicyBusy,
    /// 502: the upstream failed or answered something unusable.
    UpstreamFailed,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 500: a bug or resource problem inside fhirwall.
    Internal,
    /// 503: state fhirwall needs is not available yet or any more.
    Unavailable,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::Invalid | Kind::NotSupported | Kind::TooCostly => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden | Kind::PolicyRefused => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UriTooLong => StatusCode::URI_TOO_LONG,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unprocessable | Kind::PolicyInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Kind::PolicyFailed | Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::PolicyBusy | Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn blame(self) -> Blame {
        match self {
            Kind::PolicyRefused | Kind::PolicyInvalid | Kind::PolicyFailed | Kind::PolicyBusy => {
                Blame::Policy
            }
            Kind::UpstreamFailed | Kind::UpstreamTimeout => Blame::Upstream,
            Kind::Internal | Kind::Unavailable => Blame::Internal,
            _ => Blame::Caller,
        }
    }

    /// The kind for a 4xx the upstream gave a request fhirwall relayed
    /// (a write): the caller's fault, told in fhirwall's own terms.
    pub fn refused_by_upstream(status: StatusCode) -> Kind {
        match status.as_u16() {
            401 | 403 => Kind::Forbidden,
            405 => Kind::MethodNotAllowed,
            409 => Kind::Conflict,
            412 => Kind::PreconditionFailed,
            413 => Kind::PayloadTooLarge,
            415 => Kind::UnsupportedMediaType,
            422 => Kind::Unprocessable,
            _ => Kind::Invalid,
        }
    }

    /// The issue code unless the call site names a more precise one.
    pub fn code(self) -> IssueCode {
        match self {
            Kind::Invalid => IssueCode::Invalid,
            Kind::NotSupported
            | Kind::MethodNotAllowed
            | Kind::NotAcceptable
            | Kind::UnsupportedMediaType
            | Kind::NotImplemented => IssueCode::NotSupported,
            Kind::TooCostly | Kind::PayloadTooLarge | Kind::UriTooLong => IssueCode::TooCostly,
            Kind::Unauthenticated => IssueCode::Login,
            Kind::Forbidden | Kind::PolicyRefused => IssueCode::Forbidden,
            Kind::NotFound => IssueCode::NotFound,
            Kind::Conflict | Kind::PreconditionFailed => IssueCode::BusinessRule,
            Kind::Unprocessable | Kind::PolicyInvalid => IssueCode::Processing,
            Kind::Throttled => IssueCode::Throttled,
            Kind::PolicyFailed | Kind::Internal => IssueCode::Exception,
            Kind::PolicyBusy | Kind::Unavailable | Kind::UpstreamFailed => IssueCode::Transient,
            Kind::UpstreamTimeout => IssueCode::Timeout,
        }
    }
}

/// A failure that ends a request. Carries everything the edge needs to answer
/// with an OperationOutcome; the message is shown to the caller, so it never
/// holds upstream URLs, PHI or internal details (those go to `detail`, logged).
/// `status` and `blame` are the kind's (read them; they are set only by [`GatewayError::of`]).
#[derive(Debug, thiserror::Error)]
#[error("{blame:?} {status}: {message}")]
pub struct GatewayError {
    pub kind: Kind,
    pub blame: Blame,
    pub status: StatusCode,
    pub code: IssueCode,
    pub message: String,
    pub detail: Option<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl GatewayError {
    pub fn of(kind: Kind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            blame: kind.blame(),
            status: kind.status(),
            code: kind.code(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::of(Kind::Invalid, message)
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::of(Kind::NotSupported, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::of(Kind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::of(Kind::NotFound, message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::of(Kind::MethodNotAllowed, message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::of(Kind::NotAcceptable, message)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::of(Kind::UpstreamFailed, message)
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::of(Kind::UpstreamTimeout, message)
    }

    pub fn policy_failure(detail: impl Into<String>) -> Self {
        Self::of(Kind::PolicyFailed, "the request could not be completed safely").with_detail(detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::of(Kind::Internal, "internal error").with_detail(detail)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A more precise issue code than the kind's.
    pub fn with_code(mut self, code: IssueCode) -> Self {
        self.code = code;
        self
    }
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Kind] = &[
        Kind::Invalid,
        Kind::NotSupported,
        Kind::TooCostly,
        Kind::Unauthenticated,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::NotAcceptable,
        Kind::Conflict,
        Kind::PreconditionFailed,
        Kind::PayloadTooLarge,
        Kind::UriTooLong,
        Kind::UnsupportedMediaType,
        Kind::Unprocessable,
        Kind::Throttled,
        Kind::NotImplemented,
        Kind::PolicyRefused,
        Kind::PolicyInvalid,
        Kind::PolicyFailed,
        Kind::PolicyBusy,
        Kind::UpstreamFailed,
        Kind::UpstreamTimeout,
        Kind::Internal,
        Kind::Unavailable,
    ];

    #[test]
    fn the_status_family_follows_who_is_at_fault() {
        for &kind in ALL {
            let status = kind.status();
            match kind.blame() {
                // 501: the caller asked for what this deployment does not offer.
                Blame::Caller => {
                    assert!(status.is_client_error() || kind == Kind::NotImplemented, "{kind:?}")
                }
                Blame::Upstream | Blame::Internal => assert!(status.is_server_error(), "{kind:?}"),
                Blame::Policy => assert!(status.is_client_error() || status.is_server_error(), "{kind:?}"),
            }
            let error = GatewayError::of(kind, "m");
            assert_eq!((error.status, error.blame, error.code), (status, kind.blame(), kind.code()));
        }
    }

    #[test]
    fn an_upstreams_refusal_is_told_in_fhirwalls_terms() {
        for (upstream, status) in
            [(400, 400), (401, 403), (403, 403), (409, 409), (412, 412), (418, 400), (422, 422)]
        {
            let kind = Kind::refused_by_upstream(StatusCode::from_u16(upstream).unwrap());
            assert_eq!(kind.status().as_u16(), status, "{upstream}");
            assert_eq!(kind.blame(), Blame::Caller);
        }
    }
}
