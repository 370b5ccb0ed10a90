//! The audit log: one tamper-evident record per request (DESIGN.md "Audit").
//!
//! Every request — FHIR reads and searches, refusals, failures, token
//! requests, admin calls — ends in an [`AuditRecord`] (a FHIR R4 AuditEvent
//! in the IHE BALP style, see [`event`]) that is appended to `audit.dir` as
//! one NDJSON line wrapped with `seq`, `prev` and `hash` ([`chain`]) and made
//! durable before the response leaves ([`writer`]: one writer thread, group
//! commit, one fdatasync per batch). If the record cannot be written, the
//! request fails closed with a 500 OperationOutcome: no data leaves
//! unaudited.
//!
//! - [`event`]: the AuditEvent builder; takes plain facts, never bodies.
//! - [`facts`]: filling a record from the principal, the parsed request,
//!   the error and the admin route.
//! - [`chain`]: the line format, the hash, file names.
//! - [`writer`]: group commit, rotation, crash recovery.
//! - [`verify`]: `fhirwall audit verify`.
//! - [`query`]: `fhirwall audit query` and `GET /admin/audit`.
//! - [`index`]: the audit console's index, built from the log and following it.
//! - [`time`]: RFC 3339 without a date-time dependency.
//!
//! Crash semantics: a record is acknowledged (and the response sent) only
//! after its line, newline included, is synced. A crash can leave at most a
//! partly written batch of records no client was answered for: complete
//! lines of it stay (they verify), an incomplete last line is moved aside to
//! a hidden `.torn-…` file at the next start, so the log verifies again.

pub mod chain;
pub mod event;
pub mod facts;
pub mod index;
pub mod query;
pub mod time;
pub mod verify;
pub mod writer;

pub use event::{Action, AuditRecord, Disclosure, Kind, Reason, Who};
pub use query::{Filter, QueryStats};
pub use verify::{Broken, Intact};
pub use writer::{AuditLog, AuditStats, Recovery};

/// Why a record could not be written. The request it belongs to fails closed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log write failed: {0}")]
    Io(String),
    #[error("the audit writer has stopped")]
    Closed,
    #[error("audit log unusable until restart: {0}")]
    Poisoned(String),
    #[error("audit.dir: {0}")]
    Recovery(String),
}

impl AuditLog {
    /// Render and append a record; returns its seq once it is durable.
    pub async fn record(&self, record: &AuditRecord) -> Result<u64, AuditError> {
        self.append_json(record.to_json()).await
    }
}

/// The 500 a request gets when its record cannot be written.
pub fn fail_closed(err: &AuditError) -> crate::GatewayError {
    // 503: the answer may be given once the log accepts records again
    // (space returns, the disk recovers); nothing leaves before that.
    crate::GatewayError::of(
        crate::error::Kind::Unavailable,
        "the request could not be recorded in the audit log",
    )
    .with_detail(format!("audit: {err}"))
}

#[cfg(test)]
mod tests;
