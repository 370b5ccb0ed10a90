//! FHIR operations fhirwall implements itself rather than pass upstream.
//!
//! - `member_match`: `POST {base}/Patient/$member-match` (HRex 1.0 and 1.1)
//!   through the configured `matcher` plugin.
//! - `consent`: whether the Consent a request carries can be honoured (HRex).
//! - `throttle`: the brute-force budget every `$member-match` attempt is counted against.
//! - `export`: bulk export of a Group (kick-off, jobs, files).
//! - `provider_match`: `POST {base}/Group/$provider-member-match` (PDex 2.2):
//!   attested members matched into a Group the caller may export.

pub mod consent;
pub mod export;
pub mod member_match;
pub mod provider_match;
pub mod throttle;
