//! Where export output lives: an object store (`object_store`), a local
//! directory by default or an S3-compatible bucket that every node reads.
//!
//! A job writes *segments*, objects of at most [`SEGMENT_MAX_BYTES`] holding
//! whole NDJSON lines of one type, each named by batch, fence, type and
//! sequence, so a runner that lost its lease can never overwrite the new
//! runner's segments. A downloadable file is a run of consecutive segments
//! of one type (cut at `export.file_max_bytes`) served back to back; a
//! segment is written once and never appended to, so what a checkpoint
//! names survives kill -9 as it was.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use crate::config::ExportConfig;

/// Largest segment: a type's lines are buffered up to this, then stored.
pub const SEGMENT_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("export storage: {0}")]
pub struct FilesError(String);

impl From<object_store::Error> for FilesError {
    fn from(e: object_store::Error) -> Self {
        FilesError(e.to_string())
    }
}

/// The export object store.
#[derive(Clone)]
pub struct Files {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Files({})", self.store)
    }
}

impl Files {
    /// Open the store `export.storage` names (creating a local directory).
    pub fn open(config: &ExportConfig) -> anyhow::Result<Files> {
        if let Some(rest) = config.storage.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&config.s3_region)
                .with_allow_http(config.s3_allow_http);
            if let Some(endpoint) = &config.s3_endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let env = |name: &Option<String>| name.as_deref().and_then(|n| std::env::var(n).ok());
            if let Some(key) = env(&config.s3_access_key_env) {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = env(&config.s3_secret_key_env) {
                builder = builder.with_secret_access_key(secret);
            }
            let store = builder.build()?;
            return Ok(Files { store: Arc::new(store), prefix: ObjectPath::from(prefix.trim_matches('/')) });
        }
        std::fs::create_dir_all(&config.storage)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&config.storage)?;
        Ok(Files { store: Arc::new(store), prefix: ObjectPath::default() })
    }

    fn path(&self, key: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in key.split('/') {
            path = path.child(part);
        }
        path
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), FilesError> {
        self.store.put(&self.path(key), PutPayload::from_bytes(bytes)).await?;
        Ok(())
    }

    /// One segment, whole (segments are small; used when a job resumes).
    pub async fn read(&self, key: &str) -> Result<Bytes, FilesError> {
        Ok(self.store.get(&self.path(key)).await?.bytes().await?)
    }

    /// One segment as a stream of chunks.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, FilesError>>, FilesError> {
        let got = self.store.get(&self.path(key)).await?;
        Ok(got.into_stream().map(|chunk| chunk.map_err(FilesError::from)).boxed())
    }

    /// Remove every object of a job (its segments, finished or orphaned).
    pub async fn delete_job(&self, job_id: &str) -> Result<usize, FilesError> {
        let dir = self.path(job_id);
        let mut listed = self.store.list(Some(&dir));
        let mut paths = Vec::new();
        while let Some(meta) = listed.next().await {
            paths.push(meta?.location);
        }
        for path in &paths {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(paths.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn segments_are_written_read_and_removed_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let config = ExportConfig { storage: dir.path().display().to_string(), ..ExportConfig::default() };
        let files = Files::open(&config).unwrap();
        files.put("job1/000000-1-Patient-000.ndjson", Bytes::from_static(b"{}\n")).await.unwrap();
        files.put("job1/000001-1-Patient-000.ndjson", Bytes::from_static(b"{}\n{}\n")).await.unwrap();
        files.put("job2/000000-1-Patient-000.ndjson", Bytes::from_static(b"x\n")).await.unwrap();
        assert_eq!(&files.read("job1/000001-1-Patient-000.ndjson").await.unwrap()[..], b"{}\n{}\n");
        let mut chunks = files.stream("job1/000000-1-Patient-000.ndjson").await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = chunks.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"{}\n");
        assert_eq!(files.delete_job("job1").await.unwrap(), 2);
        assert!(files.read("job1/000000-1-Patient-000.ndjson").await.is_err());
        assert!(files.read("job2/000000-1-Patient-000.ndjson").await.is_ok());
        assert_eq!(files.delete_job("job1").await.unwrap(), 0);
    }
}
