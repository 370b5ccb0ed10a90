//! A job's output as it is written: each type's lines buffered into
//! segments of at most [`SEGMENT_MAX_BYTES`], every resource once (by
//! `Type/id`, across batches and members).

use std::collections::HashSet;

use bytes::Bytes;

use super::files::{Files, SEGMENT_MAX_BYTES};
use super::manifest::Segment;
use super::runner::Exported;
use crate::error::GatewayError;

/// Lines of one type buffered into segments of at most [`SEGMENT_MAX_BYTES`].
pub(super) struct SegmentWriter<'a> {
    pub files: &'a Files,
    /// Segment keys are `{prefix}-{n:03}.ndjson`.
    pub prefix: String,
    pub resource_type: String,
    pub buffer: Vec<u8>,
    /// Lines in `buffer`.
    pub count: u64,
    pub segments: Vec<Segment>,
    /// Keys written so far (this job, this type).
    pub seen: HashSet<u128>,
    /// Keys this batch added to `seen`.
    pub added: Vec<u128>,
}

impl SegmentWriter<'_> {
    pub async fn write(&mut self, page: Vec<Exported>) -> Result<(), GatewayError> {
        for exported in page {
            let hash = key_hash(&exported.key);
            if !self.seen.insert(hash) {
                continue; // reached from another member already
            }
            self.added.push(hash);
            // NDJSON: one resource per line. Raw line breaks in valid JSON
            // are whitespace between tokens (strings escape theirs).
            self.buffer.extend(exported.resource.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
            self.buffer.push(b'\n');
            self.count += 1;
            if self.buffer.len() >= SEGMENT_MAX_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Forget this batch's writing (a failed attempt): its keys leave
    /// `seen`, its segments are not listed (the next attempt writes them
    /// again under the same names).
    pub fn undo(&mut self) {
        for key in self.added.drain(..) {
            self.seen.remove(&key);
        }
        self.segments.clear();
        self.buffer.clear();
        self.count = 0;
    }

    pub async fn flush(&mut self) -> Result<(), GatewayError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let key = format!("{}-{:03}.ndjson", self.prefix, self.segments.len());
        let bytes = Bytes::from(std::mem::take(&mut self.buffer));
        let size = bytes.len() as u64;
        self.files.put(&key, bytes).await.map_err(|e| GatewayError::internal(e.to_string()))?;
        self.segments.push(Segment {
            resource_type: self.resource_type.clone(),
            key,
            count: self.count,
            bytes: size,
        });
        self.count = 0;
        Ok(())
    }
}

/// 128 bits of SHA-256 of a `Type/id`: the dedup set holds these.
pub(super) fn key_hash(key: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_apart() {
        assert_ne!(key_hash("Patient/1"), key_hash("Patient/11"));
        assert_eq!(key_hash("Observation/a"), key_hash("Observation/a"));
    }
}
