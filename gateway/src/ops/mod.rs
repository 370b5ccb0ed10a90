//! FHIR operations fhirwall implements itself rather than pass upstream.
//!
//! - `member_match`: `POST {base}/Patient/$member-match` (HRex 1.0 and 1.1)
//!   through the configured `matcher` plugin.
//! - `throttle`: the brute-force budget every `$member-match` attempt is counted against.

pub mod member_match;
pub mod throttle;
