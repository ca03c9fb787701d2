//! Pulling from a registry with `oci-client`: manifests and indexes by
//! digest-checked requests, blobs streamed into the cache through our own
//! digest and size checks.

use std::net::IpAddr;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth as ClientAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncWriteExt;

use super::blobs::{BlobStore, Digest, Verifier};
use super::error::{BoxError, OciError, io_err};
use super::manifest::{
    self, ACCEPTED, Descriptor, Document, ImageConfig, MAX_INDEX_DEPTH, MAX_MANIFEST,
};
use super::{LayerBlob, PullOptions, PulledImage, short};
use crate::progress::Progress;

/// Blobs fetched at once.
const PARALLEL_DOWNLOADS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long ends a download.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A registry image to pull.
pub(super) struct Target<'a> {
    pub(super) registry: &'a str,
    pub(super) repository: &'a str,
    /// A tag or a `sha256:` digest.
    pub(super) reference: &'a str,
    /// The canonical name, for messages.
    pub(super) name: &'a str,
}

/// Whether `registry` (`host[:port]`) is reached over plain HTTP.
pub(super) fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        registry.split_once(':').map_or(registry, |(h, _)| h)
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().any(|i| i == registry || i == host)
}

/// rustls needs a process-wide crypto provider; ours is `ring` (no C
/// toolchain beyond `cc`, links statically).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

struct Session<'a> {
    client: Client,
    auth: ClientAuth,
    target: &'a Target<'a>,
    https: bool,
}

pub(super) async fn pull(
    target: &Target<'_>,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, OciError> {
    install_crypto_provider();
    let https = !plain_http(target.registry, &opts.insecure_registries);
    let config = ClientConfig {
        protocol: if https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        // We pick the platform ourselves, to name what an index offers.
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    };
    let client = Client::try_from(config).map_err(|e| OciError::Client(Box::new(e)))?;
    let auth = match &opts.auth {
        Some(a) => ClientAuth::Basic(a.username.clone(), a.password.clone()),
        None => ClientAuth::Anonymous,
    };
    let session = Session {
        client,
        auth,
        target,
        https,
    };
    let store = BlobStore::open(&opts.blobs_dir)?;

    progress.stage("resolving");
    progress.message(target.name);
    let top = session.reference(target.reference);
    session
        .client
        .auth(&top, &session.auth, RegistryOperation::Pull)
        .await
        .map_err(|e| session.error(e))?;
    let (manifest, manifest_digest) = session.resolve(top).await?;
    manifest::check_layers(&manifest, target.name)?;

    progress.stage("downloading");
    let blobs: Vec<&Descriptor> = std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .collect();
    let mut total = 0u64;
    for blob in &blobs {
        if !store.contains(&blob.digest()?) {
            total = total.saturating_add(blob.size);
        }
    }
    progress.set_total(total);
    let done = AtomicU64::new(0);
    // The config first: an image for another platform stops here.
    let config_path = session
        .fetch_blob(manifest.config.clone(), &store, &done, progress)
        .await?;
    let config_bytes = tokio::fs::read(&config_path)
        .await
        .map_err(io_err("read", &config_path))?;
    let config = ImageConfig::parse(&config_bytes, target.name)?;
    config.check_platform(target.name)?;
    // Owned descriptors: a future borrowing its argument would make this
    // one not provably `Send`.
    let paths: Vec<_> = stream::iter(manifest.layers.clone())
        .map(|blob| session.fetch_blob(blob, &store, &done, progress))
        .buffered(PARALLEL_DOWNLOADS)
        .try_collect()
        .await?;

    let layers = manifest
        .layers
        .iter()
        .zip(paths)
        .map(|(d, path)| LayerBlob {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            path,
        })
        .collect();
    Ok(PulledImage {
        source: target.name.to_owned(),
        manifest_digest: manifest_digest.to_string(),
        config: config.run_config(),
        layers,
        size: manifest.layers.iter().map(|l| l.size).sum(),
    })
}

impl Session<'_> {
    fn reference(&self, reference: &str) -> Reference {
        let (registry, repository) = (
            self.target.registry.to_owned(),
            self.target.repository.to_owned(),
        );
        if reference.contains(':') {
            Reference::with_digest(registry, repository, reference.to_owned())
        } else {
            Reference::with_tag(registry, repository, reference.to_owned())
        }
    }

    /// Follows the reference through indexes to the linux/amd64 manifest;
    /// returns it with its digest.
    async fn resolve(
        &self,
        mut reference: Reference,
    ) -> Result<(manifest::Manifest, Digest), OciError> {
        let name = self.target.name;
        for depth in 0..=MAX_INDEX_DEPTH {
            let what = if depth == 0 {
                "the manifest"
            } else {
                "a platform manifest"
            };
            let (bytes, _) = self
                .client
                .pull_manifest_raw(&reference, &self.auth, &ACCEPTED)
                .await
                .map_err(|e| self.error(e))?;
            if bytes.len() as u64 > MAX_MANIFEST {
                return Err(super::error::malformed(
                    name,
                    what,
                    "it is larger than 4 MiB",
                ));
            }
            // oci-client checks a digest reference too; this check is ours.
            let digest = Digest::of(&bytes);
            if let Some(expected) = reference.digest()
                && expected != digest.to_string()
            {
                return Err(OciError::DigestMismatch {
                    digest: expected.to_owned(),
                    actual: digest.to_string(),
                });
            }
            match manifest::parse_document(&bytes, None, name, what)? {
                Document::Manifest(m) => return Ok((m, digest)),
                Document::Index(index) => {
                    let entry = manifest::select_platform(&index, name)?;
                    let next = entry.digest()?;
                    reference = self.reference(&next.to_string());
                }
            }
        }
        Err(super::error::malformed(
            name,
            "the index",
            format!("it nests indexes more than {MAX_INDEX_DEPTH} deep"),
        ))
    }

    /// Streams one blob into the cache unless it is there already.
    async fn fetch_blob(
        &self,
        blob: Descriptor,
        store: &BlobStore,
        done: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<std::path::PathBuf, OciError> {
        let digest = blob.digest()?;
        let dest = store.path(&digest);
        if store.contains(&digest) {
            tracing::debug!(%digest, "blob already in the cache");
            return Ok(dest);
        }
        progress.message(&format!("fetching {}", short(&blob.digest)));
        let mut temp = store.temp()?;
        let temp_path = temp.path().to_owned();
        let mut file = tokio::fs::File::from_std(
            temp.file_mut()
                .try_clone()
                .map_err(io_err("open", &temp_path))?,
        );
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            urls: blob.urls.clone(),
            ..OciDescriptor::default()
        };
        let reference = self.reference(&digest.to_string());
        let mut body = self
            .client
            .pull_blob_stream(&reference, &descriptor)
            .await
            .map_err(|e| self.error(e))?;
        let mut verifier = Verifier::new(Some(&digest), Some(blob.size));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(e, &digest))?;
            verifier.update(&chunk)?;
            file.write_all(&chunk)
                .await
                .map_err(io_err("write", &temp_path))?;
            let now = done.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            progress.set_done(now);
        }
        file.flush().await.map_err(io_err("write", &temp_path))?;
        drop(file);
        verifier.finish()?;
        // Committing syncs the file: the blocking pool's work.
        let store = store.clone();
        tokio::task::spawn_blocking(move || temp.commit(&store, &digest))
            .await
            .map_err(|e| {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic())
                }
                OciError::Interrupted
            })?
    }

    /// Our error for an error of the registry client.
    fn error(&self, e: OciDistributionError) -> OciError {
        let registry = self.target.registry.to_owned();
        let image = self.target.name.to_owned();
        let has_credentials = matches!(self.auth, ClientAuth::Basic(..));
        let denied = |source: BoxError| {
            if has_credentials {
                OciError::WrongCredentials {
                    registry: registry.clone(),
                    image: image.clone(),
                    source,
                }
            } else {
                OciError::CredentialsRequired {
                    registry: registry.clone(),
                    image: image.clone(),
                    source,
                }
            }
        };
        let not_found = |source: BoxError| OciError::NotFound {
            image: image.clone(),
            source,
        };
        match e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => denied(Box::new(e)),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => denied(Box::new(e)),
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => not_found(Box::new(e)),
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let code = envelope.errors.first().map(|err| &err.code);
                match code {
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => denied(Box::new(e)),
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => not_found(Box::new(e)),
                    _ => OciError::Registry {
                        registry,
                        image,
                        source: Box::new(e),
                    },
                }
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => OciError::DigestMismatch {
                digest: expected,
                actual,
            },
            OciDistributionError::RequestError(ref r) if r.is_connect() || r.is_timeout() => {
                OciError::Unreachable {
                    registry,
                    hint: if self.https {
                        " (it was contacted over HTTPS: if it serves plain HTTP, list it as an \
                         insecure registry)"
                    } else {
                        ""
                    },
                    source: Box::new(e),
                }
            }
            other => OciError::Registry {
                registry,
                image,
                source: Box::new(other),
            },
        }
    }

    /// Our error for an error in the middle of a blob's body.
    fn stream_error(&self, e: std::io::Error, digest: &Digest) -> OciError {
        if let Some(oci_client::errors::DigestError::VerificationError { actual, .. }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        {
            return OciError::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.clone(),
            };
        }
        OciError::Registry {
            registry: self.target.registry.to_owned(),
            image: self.target.name.to_owned(),
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let none: Vec<String> = vec![];
        for local in [
            "localhost:5000",
            "localhost",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(plain_http(local, &none), "{local}");
        }
        for remote in [
            "docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!plain_http(remote, &none), "{remote}");
        }
        let insecure = vec!["reg.lan:5000".to_owned(), "other.lan".to_owned()];
        assert!(plain_http("reg.lan:5000", &insecure));
        assert!(!plain_http("reg.lan:6000", &insecure));
        assert!(plain_http("other.lan:6000", &insecure));
    }
}
