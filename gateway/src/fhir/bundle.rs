//! Shallow Bundle handling (being written).
