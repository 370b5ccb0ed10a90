//! Bulk export of a Group's visible members (`Group/{id}/$export`,
//! `Group/{id}/$davinci-data-export`), run by fhirwall itself against any
//! FHIR R4 server through the same response chain as on-demand reads.
//!
//! - `kickoff`: the kick-off's parameters, read and checked into one
//!   request before any job exists.
//! - `jobs`: jobs in the store, claimed by one node at a time under a lease
//!   and a fencing token, checkpointed, resumable after a crash.
//!
//! Not yet wired: the operations still answer 501 until the runner, the
//! file storage and the status/download endpoints exist.

pub mod jobs;
pub mod kickoff;
