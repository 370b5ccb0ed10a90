//! The built-in sandbox FHIR server (being written; see issue #2).
