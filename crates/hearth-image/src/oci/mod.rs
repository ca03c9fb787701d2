//! OCI and Docker images: fetching them (registry, `oci:` layout,
//! `docker-archive:` tarball) and unpacking their layers into a directory.
//!
//! [`pull`] resolves a source to one linux/amd64 image, copies its layers
//! into a content-addressed cache and verifies every blob by its sha256
//! digest on the way in; [`unpack`] checks the cached layers again and
//! only then applies them, in order, to a root directory, keeping every
//! path inside it.

mod archive;
mod blobs;
mod error;
mod layout;
mod manifest;
mod registry;
mod source;
mod unpack;

use std::fmt;
use std::path::PathBuf;

use tokio::sync::mpsc;

pub use error::OciError;
pub use source::ImageSource;
pub use unpack::{UnpackError, unpack};

use crate::progress::Progress;
use crate::recipe::RunConfig;
use blobs::BlobStore;

/// Credentials for a registry (HTTP basic auth, or the token service the
/// registry sends us to).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Anonymous access when `None`.
    pub auth: Option<RegistryAuth>,
    /// Registries (`host` or `host:port`) reached over plain HTTP;
    /// `localhost`, `127.0.0.1` and `[::1]` always are. HTTPS otherwise.
    pub insecure_registries: Vec<String>,
    /// The content-addressed cache: `<blobs_dir>/sha256/<hex>` holds only
    /// blobs whose digest was verified.
    pub blobs_dir: PathBuf,
}

/// A pulled image: its layers verified and in the blob cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The source, in canonical form.
    pub source: String,
    /// `sha256:…` of the linux/amd64 image manifest; for a docker archive,
    /// which has no manifest, the digest of the image config (Docker's
    /// image ID). Identifies the image for caching.
    pub manifest_digest: String,
    /// How the image says to run it.
    pub config: RunConfig,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// Bytes of all layer blobs, as stored (compressed).
    pub size: u64,
}

/// One layer of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:…` of the blob as stored.
    pub digest: String,
    /// Tells how the tar stream is compressed.
    pub media_type: String,
    /// The verified blob in the cache.
    pub path: PathBuf,
}

/// Fetches `source`'s linux/amd64 image into `opts.blobs_dir`, verifying
/// every blob (config and layers) by digest. Blobs already in the cache
/// are not fetched again. Reading local sources runs on the blocking pool.
pub async fn pull(
    source: &ImageSource,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, OciError> {
    let name = source.to_string();
    match source {
        ImageSource::Registry {
            registry,
            repository,
            reference,
        } => {
            let target = registry::Target {
                registry,
                repository,
                reference,
                name: &name,
            };
            registry::pull(&target, opts, progress).await
        }
        ImageSource::OciLayout { dir, tag } => {
            let (dir, tag, blobs_dir) = (dir.clone(), tag.clone(), opts.blobs_dir.clone());
            run_blocking(progress, move |progress| {
                let store = BlobStore::open(&blobs_dir)?;
                layout::pull(&dir, tag.as_deref(), &name, &store, progress)
            })
            .await
        }
        ImageSource::DockerArchive { path } => {
            let (path, blobs_dir) = (path.clone(), opts.blobs_dir.clone());
            run_blocking(progress, move |progress| {
                let store = BlobStore::open(&blobs_dir)?;
                archive::pull(&path, &name, &store, progress)
            })
            .await
        }
    }
}

/// A progress report made on the blocking pool, replayed on the caller's
/// task.
enum Report {
    Stage(String),
    Total(u64),
    Done(u64),
    Message(String),
}

struct ForwardProgress(mpsc::UnboundedSender<Report>);

impl Progress for ForwardProgress {
    fn stage(&self, name: &str) {
        let _ = self.0.send(Report::Stage(name.to_owned()));
    }
    fn set_total(&self, total: u64) {
        let _ = self.0.send(Report::Total(total));
    }
    fn set_done(&self, done: u64) {
        let _ = self.0.send(Report::Done(done));
    }
    fn message(&self, msg: &str) {
        let _ = self.0.send(Report::Message(msg.to_owned()));
    }
}

/// Runs blocking file work on tokio's blocking pool, forwarding its
/// progress to `progress`, which need not be `'static`.
async fn run_blocking<T: Send + 'static>(
    progress: &dyn Progress,
    work: impl FnOnce(&dyn Progress) -> Result<T, OciError> + Send + 'static,
) -> Result<T, OciError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::task::spawn_blocking(move || work(&ForwardProgress(tx)));
    // The channel closes when the work ends and drops its sender.
    while let Some(report) = rx.recv().await {
        match report {
            Report::Stage(s) => progress.stage(&s),
            Report::Total(n) => progress.set_total(n),
            Report::Done(n) => progress.set_done(n),
            Report::Message(m) => progress.message(&m),
        }
    }
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(OciError::Interrupted),
    }
}

/// Short form of a digest for progress messages.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_can_run_on_a_multithreaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let source: ImageSource = "debian".parse().unwrap();
        let opts = PullOptions {
            auth: None,
            insecure_registries: Vec::new(),
            blobs_dir: PathBuf::from("/nonexistent"),
        };
        let fut = pull(&source, &opts, &crate::NoProgress);
        assert_send(&fut);
    }

    #[test]
    fn credentials_stay_out_of_debug_output() {
        let auth = RegistryAuth {
            username: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
