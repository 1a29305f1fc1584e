//! S3-compatible services and plain directories, through OpenDAL.

use std::sync::Once;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};

use super::{Remote, RemoteError, Result};

/// Where a remote is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: String,
    /// S3 endpoint (`https://s3.eu-central-003.backblazeb2.com`, `http://127.0.0.1:9000`);
    /// AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region; `us-east-1` when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO, Garage and s3s need.
    #[serde(default)]
    pub path_style: bool,
    /// Access key id and secret, when not taken from the AWS environment variables.
    #[serde(skip)]
    pub access_key: Option<(String, String)>,
}

enum Kind {
    S3 { bucket: String, prefix: String },
    Dir(String),
}

impl RemoteSpec {
    /// A spec from a URL alone.
    pub fn parse(url: &str) -> Result<RemoteSpec> {
        let spec = RemoteSpec {
            url: url.to_string(),
            ..Default::default()
        };
        spec.kind()?;
        Ok(spec)
    }

    fn kind(&self) -> Result<Kind> {
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RemoteError::BadSpec(format!(
                    "{}: no bucket name (expected s3://BUCKET/PREFIX)",
                    self.url
                )));
            }
            if prefix.split('/').any(|c| c == "..") {
                return Err(RemoteError::BadSpec(format!(
                    "{}: '..' is not allowed in a prefix",
                    self.url
                )));
            }
            Ok(Kind::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else if let Some(path) = self.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(RemoteError::BadSpec(format!(
                    "{}: a file remote needs an absolute path (file:///mnt/backup)",
                    self.url
                )));
            }
            Ok(Kind::Dir(path.to_string()))
        } else {
            Err(RemoteError::BadSpec(format!(
                "{}: unsupported remote URL (use s3://BUCKET/PREFIX or file:///PATH)",
                self.url
            )))
        }
    }
}

/// A remote served by OpenDAL, with retries (exponential backoff with jitter) and timeouts.
pub struct OpendalRemote {
    rt: tokio::runtime::Runtime,
    op: Operator,
    describe: String,
}

fn service_err(what: String, e: opendal::Error) -> RemoteError {
    let text = e.to_string();
    if text.contains("NoSuchBucket") {
        return RemoteError::Service {
            what,
            detail: "the bucket does not exist".into(),
        };
    }
    if e.kind() == ErrorKind::NotFound {
        return RemoteError::NotFound(what);
    }
    // The innermost cause says what really happened ("Connection refused"); OpenDAL's own
    // message says which step failed.
    let mut cause = None;
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        cause = Some(s.to_string());
        src = s.source();
    }
    let code = [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    ]
    .into_iter()
    .find(|c| text.contains(c));
    let detail = match (e.kind(), code) {
        (_, Some(c)) => format!("access denied ({c}): check the access key and secret"),
        (ErrorKind::PermissionDenied, None) => "access denied".to_string(),
        _ => match cause {
            Some(c) => format!("{}: {c}", e.message()),
            None => e.message().to_string(),
        },
    };
    RemoteError::Service { what, detail }
}

impl OpendalRemote {
    /// Connects (lazily: no request is made until the first operation).
    pub fn new(spec: &RemoteSpec) -> Result<OpendalRemote> {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(opendal::install_default);
        let bad = |e: opendal::Error| RemoteError::BadSpec(format!("{}: {e}", spec.url));
        let (op, describe) = match spec.kind()? {
            Kind::S3 { bucket, prefix } => {
                let mut b = opendal::services::S3::default()
                    .bucket(&bucket)
                    .root(&format!("/{prefix}"))
                    .region(spec.region.as_deref().unwrap_or("us-east-1"))
                    .disable_ec2_metadata();
                if let Some(ep) = &spec.endpoint {
                    b = b.endpoint(ep);
                }
                if !spec.path_style {
                    b = b.enable_virtual_host_style();
                }
                if let Some((id, secret)) = &spec.access_key {
                    b = b.access_key_id(id).secret_access_key(secret);
                }
                let describe = match &spec.endpoint {
                    Some(ep) => format!("{} at {ep}", spec.url),
                    None => spec.url.clone(),
                };
                (Operator::new(b).map_err(bad)?, describe)
            }
            Kind::Dir(path) => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    RemoteError::BadSpec(format!("{}: cannot create {path}: {e}", spec.url))
                })?;
                // Written beside and renamed into place, so that an object a crash cut short
                // is never read as a whole one.
                let b = opendal::services::Fs::default()
                    .root(&path)
                    .atomic_write_dir(&format!("{path}/.clawfs-tmp"));
                (Operator::new(b).map_err(bad)?, spec.url.clone())
            }
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_max_times(retries())
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10)),
            );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clawfs-remote-io")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::BadSpec(format!("starting the I/O runtime: {e}")))?;
        Ok(OpendalRemote { rt, op, describe })
    }
}

/// Attempts per request before an error reaches the caller (who retries the whole push later).
fn retries() -> usize {
    std::env::var("CLAWFS_REMOTE_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

impl Remote for OpendalRemote {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let buf = opendal::Buffer::from(data.to_vec());
        self.rt
            .block_on(self.op.write(name, buf))
            .map(|_| ())
            .map_err(|e| service_err(format!("uploading {name} to {}", self.describe), e))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.rt
            .block_on(self.op.read(name))
            .map(|b| b.to_vec())
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => RemoteError::NotFound(name.to_string()),
                _ => service_err(format!("downloading {name} from {}", self.describe), e),
            })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let listed = self.rt.block_on(self.op.list_options(
            prefix,
            opendal::options::ListOptions {
                recursive: true,
                ..Default::default()
            },
        ));
        match listed {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|e| !e.path().ends_with('/'))
                .map(|e| e.path().trim_start_matches('/').to_string())
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(service_err(
                format!("listing {prefix} on {}", self.describe),
                e,
            )),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.rt
            .block_on(self.op.delete(name))
            .map_err(|e| service_err(format!("deleting {name} on {}", self.describe), e))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
