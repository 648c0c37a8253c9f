//! Buckets through `object_store`: a local directory per bucket (default) or any S3-compatible
//! server, globally or per bucket. Writes are create-only and durable when they return.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

/// On the local store, an object's user metadata (S3's `x-amz-meta-*`) is kept in
/// `<bucket dir>/.opentrail-metadata/<key>.json` as a JSON object of strings.
pub const METADATA_DIR: &str = ".opentrail-metadata";

/// The sidecar file of `key`'s metadata in a local bucket.
pub fn metadata_path(bucket_dir: &std::path::Path, key: &str) -> PathBuf {
    bucket_dir.join(METADATA_DIR).join(format!("{key}.json"))
}

/// Reads a local object's metadata sidecar (empty when there is none).
pub fn read_metadata_sidecar(
    bucket_dir: &std::path::Path,
    key: &str,
) -> std::io::Result<BTreeMap<String, String>> {
    match std::fs::read(metadata_path(bucket_dir, key)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Writes a metadata sidecar whole (temporary file, fsync, rename, fsync of the directory).
fn write_metadata_sidecar(
    bucket_dir: &std::path::Path,
    key: &str,
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    use std::io::Write;
    let path = metadata_path(bucket_dir, key);
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("metadata path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec(metadata).map_err(std::io::Error::other)?;
    let mut tmp_name = path.clone().into_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// An S3-compatible endpoint and how to sign for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    /// `http(s)://host:port`; AWS S3 itself when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted_style: bool,
    /// Server-side encryption asked of the store on every write (`x-amz-server-side-encryption`:
    /// `AES256`, `aws:kms` or `aws:kms:dsse`), for stores that encrypt at rest.
    pub server_side_encryption: Option<String>,
    /// The store's own KMS key for `aws:kms` (`x-amz-server-side-encryption-aws-kms-key-id`).
    pub sse_kms_key_id: Option<String>,
}

/// The server-side encryption values an S3 store may be asked for.
pub const SSE_VALUES: [&str; 3] = ["AES256", "aws:kms", "aws:kms:dsse"];

/// Where a bucket's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Bucket NAME is the directory `<root>/NAME`.
    LocalRoot(PathBuf),
    /// This bucket is exactly this directory.
    LocalDir(PathBuf),
    S3(S3Target),
}

/// Why a bucket operation failed. `code` is what GetTrailStatus reports (S3's error codes where
/// the store gave one).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BucketError {
    pub code: String,
    pub message: String,
}

impl BucketError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn from_store(bucket: &str, e: &object_store::Error) -> Self {
        let text = e.to_string();
        let code = text
            .split("<Code>")
            .nth(1)
            .and_then(|rest| rest.split("</Code>").next())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                match e {
                    object_store::Error::NotFound { .. } => "NoSuchKey",
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. } => "AccessDenied",
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. } => "PreconditionFailed",
                    _ if text.contains("error sending request")
                        || text.contains("connect")
                        || text.contains("timed out") =>
                    {
                        "ServiceUnavailable"
                    }
                    _ => "InternalError",
                }
                .to_owned()
            });
        Self {
            code,
            message: format!("bucket {bucket}: {text}"),
        }
    }
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    /// The key was already there: an earlier attempt of the same plan wrote it.
    AlreadyThere,
}

/// The bucket stores, built on first use.
pub struct Buckets {
    default: Target,
    overrides: HashMap<String, Target>,
    s3_cache: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(Duration::from_secs(60))
        .with_connect_timeout(Duration::from_secs(5))
        .with_allow_http(true)
}

fn path(key: &str) -> Result<StorePath, BucketError> {
    StorePath::parse(key)
        .map_err(|e| BucketError::new("InvalidObjectName", format!("object key {key:?}: {e}")))
}

impl Buckets {
    pub fn new(default: Target, overrides: HashMap<String, Target>) -> Self {
        Self {
            default,
            overrides,
            s3_cache: Mutex::new(HashMap::new()),
        }
    }

    fn target(&self, bucket: &str) -> &Target {
        self.overrides.get(bucket).unwrap_or(&self.default)
    }

    /// The local directory of a bucket, for buckets on the local store.
    pub fn local_dir(&self, bucket: &str) -> Option<PathBuf> {
        match self.target(bucket) {
            Target::LocalRoot(root) => Some(root.join(bucket)),
            Target::LocalDir(dir) => Some(dir.clone()),
            Target::S3(_) => None,
        }
    }

    fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, BucketError> {
        match self.target(bucket) {
            Target::LocalRoot(_) | Target::LocalDir(_) => {
                let dir = self.local_dir(bucket).unwrap_or_default();
                if !dir.is_dir() {
                    return Err(BucketError::new(
                        "NoSuchBucket",
                        format!(
                            "bucket {bucket} does not exist (no directory {})",
                            dir.display()
                        ),
                    ));
                }
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| BucketError::from_store(bucket, &e))?
                    .with_fsync(true);
                Ok(Arc::new(fs))
            }
            Target::S3(s3) => {
                let mut cache = self
                    .s3_cache
                    .lock()
                    .map_err(|_| BucketError::new("InternalError", "bucket cache poisoned"))?;
                if let Some(s) = cache.get(bucket) {
                    return Ok(Arc::clone(s));
                }
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                    .with_client_options(client_options())
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        // The delivery worker retries with its own backoff and reports each
                        // failure; the client only smooths over a blip.
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(20),
                    });
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e);
                }
                if let (Some(k), Some(s)) = (&s3.access_key_id, &s3.secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                for (name, value) in [
                    ("aws_server_side_encryption", &s3.server_side_encryption),
                    ("aws_sse_kms_key_id", &s3.sse_kms_key_id),
                ] {
                    if let Some(v) = value {
                        let key = name.parse().map_err(|e: object_store::Error| {
                            BucketError::from_store(bucket, &e)
                        })?;
                        b = b.with_config(key, v);
                    }
                }
                let store: Arc<dyn ObjectStore> =
                    Arc::new(b.build().map_err(|e| BucketError::from_store(bucket, &e))?);
                cache.insert(bucket.to_owned(), Arc::clone(&store));
                Ok(store)
            }
        }
    }

    /// Whether the bucket exists and can be listed.
    pub async fn exists(&self, bucket: &str) -> Result<bool, BucketError> {
        let store = match self.store(bucket) {
            Ok(s) => s,
            Err(e) if e.code == "NoSuchBucket" => return Ok(false),
            Err(e) => return Err(e),
        };
        match store.list_with_delimiter(None).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = BucketError::from_store(bucket, &e);
                if e.code == "NoSuchBucket" {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Writes `body` under `key` unless the key exists. On the local store the object is
    /// published whole (staged, then linked into place) and synced before this returns.
    pub async fn put_create(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
    ) -> Result<Written, BucketError> {
        let store = self.store(bucket)?;
        if let Some(dir) = self.local_dir(bucket) {
            remove_staging_leftovers(&dir, key);
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match store
            .put_opts(&path(key)?, PutPayload::from_bytes(body), opts)
            .await
        {
            Ok(_) => Ok(Written::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Written::AlreadyThere),
            Err(e) => Err(BucketError::from_store(bucket, &e)),
        }
    }

    /// [`Buckets::put_create`] with user metadata: `x-amz-meta-*` headers on S3, a sidecar file
    /// on the local store (written first, so an object is never seen without its metadata; a
    /// replay rewrites the same sidecar).
    pub async fn put_create_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Written, BucketError> {
        if let Some(dir) = self.local_dir(bucket) {
            // Fails with NoSuchBucket before the sidecar could create directories.
            self.store(bucket)?;
            let (d, k, m) = (dir.clone(), key.to_owned(), metadata.clone());
            tokio::task::spawn_blocking(move || write_metadata_sidecar(&d, &k, &m))
                .await
                .map_err(|e| BucketError::new("InternalError", e.to_string()))?
                .map_err(|e| {
                    BucketError::new(
                        "InternalError",
                        format!("bucket {bucket}: writing the metadata of {key}: {e}"),
                    )
                })?;
            return self.put_create(bucket, key, body).await;
        }
        let store = self.store(bucket)?;
        let mut attributes = Attributes::new();
        for (k, v) in metadata {
            attributes.insert(
                Attribute::Metadata(k.clone().into()),
                AttributeValue::from(v.clone()),
            );
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: attributes.clone(),
            ..PutOptions::default()
        };
        let p = path(key)?;
        match store
            .put_opts(&p, PutPayload::from_bytes(body.clone()), opts)
            .await
        {
            Ok(_) => Ok(Written::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // An earlier attempt wrote the object; a server that failed after storing the
                // body may have lost the metadata. The body is the same (a replay writes the
                // same bytes), so a missing or different metadata is written again.
                let (_, have) = self.get_with_metadata(bucket, key).await?;
                if metadata.iter().all(|(k, v)| have.get(k) == Some(v)) {
                    return Ok(Written::AlreadyThere);
                }
                tracing::warn!(
                    bucket,
                    key,
                    "object metadata missing after an earlier attempt; writing it again"
                );
                let opts = PutOptions {
                    mode: PutMode::Overwrite,
                    attributes,
                    ..PutOptions::default()
                };
                store
                    .put_opts(&p, PutPayload::from_bytes(body), opts)
                    .await
                    .map_err(|e| BucketError::from_store(bucket, &e))?;
                Ok(Written::AlreadyThere)
            }
            Err(e) => Err(BucketError::from_store(bucket, &e)),
        }
    }

    /// An object with its user metadata.
    pub async fn get_with_metadata(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(Bytes, BTreeMap<String, String>), BucketError> {
        if let Some(dir) = self.local_dir(bucket) {
            let body = self.get(bucket, key).await?;
            let k = key.to_owned();
            let meta = tokio::task::spawn_blocking(move || read_metadata_sidecar(&dir, &k))
                .await
                .map_err(|e| BucketError::new("InternalError", e.to_string()))?
                .map_err(|e| {
                    BucketError::new(
                        "InternalError",
                        format!("bucket {bucket}: reading the metadata of {key}: {e}"),
                    )
                })?;
            return Ok((body, meta));
        }
        let store = self.store(bucket)?;
        let r = store
            .get_opts(&path(key)?, GetOptions::default())
            .await
            .map_err(|e| BucketError::from_store(bucket, &e))?;
        let mut meta = BTreeMap::new();
        for (k, v) in r.attributes.iter() {
            if let Attribute::Metadata(name) = k {
                meta.insert(name.to_string(), v.to_string());
            }
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| BucketError::from_store(bucket, &e))?;
        Ok((body, meta))
    }

    /// Every object under `prefix`.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, BucketError> {
        let store = self.store(bucket)?;
        let prefix = prefix.trim_end_matches('/');
        let p = if prefix.is_empty() {
            None
        } else {
            Some(path(prefix)?)
        };
        let mut objects: Vec<ObjectMeta> = store
            .list(p.as_ref())
            .try_collect()
            .await
            .map_err(|e| BucketError::from_store(bucket, &e))?;
        if self.local_dir(bucket).is_some() {
            objects.retain(|o| !o.location.as_ref().starts_with(METADATA_DIR));
        }
        Ok(objects)
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BucketError> {
        let store = self.store(bucket)?;
        let r = store
            .get(&path(key)?)
            .await
            .map_err(|e| BucketError::from_store(bucket, &e))?;
        r.bytes()
            .await
            .map_err(|e| BucketError::from_store(bucket, &e))
    }
}

/// The local store stages an object as `<name>#<n>` beside its final name and links it into
/// place; a process killed in between leaves the staging file behind. Before (re)writing a key,
/// its leftovers are removed so that only whole objects are ever seen in the bucket.
fn remove_staging_leftovers(bucket_dir: &std::path::Path, key: &str) {
    let path = bucket_dir.join(key);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let mut staged = name.to_os_string();
    staged.push("#");
    let Some(staged) = staged.to_str() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        if n.to_str().is_some_and(|n| {
            n.strip_prefix(staged)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        }) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed a staging file left by an interrupted write")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a leftover staging file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_buckets_are_create_only_and_report_missing_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let buckets = Buckets::new(Target::LocalRoot(dir.path().to_owned()), HashMap::new());
        assert!(!buckets.exists("b").await.expect("exists"));
        let err = buckets
            .put_create("b", "AWSLogs/x.json.gz", Bytes::from_static(b"1"))
            .await
            .expect_err("no bucket");
        assert_eq!(err.code, "NoSuchBucket");
        std::fs::create_dir(dir.path().join("b")).expect("mkdir");
        assert!(buckets.exists("b").await.expect("exists"));
        let key = "AWSLogs/1/CloudTrail/us-east-1/2026/01/02/f.json.gz";
        assert_eq!(
            buckets
                .put_create("b", key, Bytes::from_static(b"first"))
                .await
                .expect("put"),
            Written::Created
        );
        assert_eq!(
            buckets
                .put_create("b", key, Bytes::from_static(b"second"))
                .await
                .expect("put again"),
            Written::AlreadyThere
        );
        assert_eq!(
            std::fs::read(dir.path().join("b").join(key)).expect("read"),
            b"first"
        );
        let listed = buckets.list("b", "AWSLogs/1").await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location.as_ref(), key);
        assert_eq!(
            buckets.get("b", key).await.expect("get"),
            Bytes::from_static(b"first")
        );
        // No staging files are left behind.
        let names: Vec<_> = std::fs::read_dir(
            dir.path()
                .join("b/AWSLogs/1/CloudTrail/us-east-1/2026/01/02"),
        )
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
        assert_eq!(names.len(), 1);

        // A write interrupted after staging leaves `<name>#1`; the next write of that key
        // removes it.
        let other = "AWSLogs/1/CloudTrail/us-east-1/2026/01/02/g.json.gz";
        let day = dir
            .path()
            .join("b/AWSLogs/1/CloudTrail/us-east-1/2026/01/02");
        std::fs::write(day.join("g.json.gz#1"), b"torn").expect("leftover");
        buckets
            .put_create("b", other, Bytes::from_static(b"whole"))
            .await
            .expect("put");
        let mut names: Vec<String> = std::fs::read_dir(&day)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["f.json.gz", "g.json.gz"]);
    }
}
