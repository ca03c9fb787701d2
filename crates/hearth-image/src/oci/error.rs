//! Why an image could not be pulled or unpacked.

use std::io;
use std::path::{Path, PathBuf};

use super::unpack::UnpackError;

/// An error from a library below us (the registry client, the HTTP stack),
/// boxed so that its type stays out of our API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an image could not be pulled or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "image reference {input:?} is invalid: {reason}; write REGISTRY/NAME[:TAG|@sha256:DIGEST], \
         oci:DIR[:TAG] or docker-archive:FILE"
    )]
    InvalidReference { input: String, reason: String },
    #[error("registry {registry} is unreachable; check its address and that it is running{hint}")]
    Unreachable {
        registry: String,
        /// Set when HTTPS was tried: the registry may serve plain HTTP.
        hint: &'static str,
        #[source]
        source: BoxError,
    },
    #[error(
        "registry {registry} rejected the credentials for {image}; check the user name and \
         password, and that this user may pull the image"
    )]
    WrongCredentials {
        registry: String,
        image: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "registry {registry} requires credentials for {image} (some registries say so of \
         images that do not exist); pass a user name and password, or check the name"
    )]
    CredentialsRequired {
        registry: String,
        image: String,
        #[source]
        source: BoxError,
    },
    #[error("image {image} does not exist; check its name and tag")]
    NotFound {
        image: String,
        #[source]
        source: BoxError,
    },
    #[error("registry {registry} failed while serving {image}; try again, or check the registry")]
    Registry {
        registry: String,
        image: String,
        #[source]
        source: BoxError,
    },
    #[error("the registry client could not be set up")]
    Client(#[source] BoxError),
    #[error(
        "image {image} has a Docker schema 1 manifest, which Hearth does not read; \
         push it again with a current docker or skopeo, which write schema 2"
    )]
    Schema1 { image: String },
    #[error(
        "{what} of image {image} has media type {media_type:?}, which is neither an image \
         manifest nor an index; check that the reference names a container image"
    )]
    UnsupportedManifest {
        image: String,
        what: String,
        media_type: String,
    },
    #[error(
        "image {image} has no linux/amd64 variant (it has {offered}); use an image built for linux/amd64"
    )]
    NoPlatform { image: String, offered: String },
    #[error(
        "image {image} is built for {platform}, not linux/amd64; use an image built for linux/amd64"
    )]
    WrongPlatform { image: String, platform: String },
    #[error(
        "layer {digest} of image {image} has media type {media_type:?}, which Hearth cannot \
         unpack; it reads tar layers, plain or compressed with gzip or zstd"
    )]
    UnsupportedLayer {
        image: String,
        digest: String,
        media_type: String,
    },
    #[error(
        "{what} of image {image} is malformed: {reason}; the image is damaged or not a container image"
    )]
    Malformed {
        image: String,
        what: String,
        reason: String,
    },
    #[error(
        "blob {digest} does not match its digest (its content hashes to {actual}); the source \
         is damaged or was tampered with, and nothing was unpacked; fetch the image again from \
         a source you trust"
    )]
    DigestMismatch { digest: String, actual: String },
    #[error(
        "blob {digest} is {actual} bytes long, not the {expected} its descriptor says; the \
         source is damaged or was tampered with; fetch the image again from a source you trust"
    )]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{digest:?} is not a sha256 digest (sha256:<64 lower-case hex digits>); Hearth verifies sha256 only"
    )]
    UnsupportedDigest { digest: String },
    #[error(
        "{} is not an OCI image layout (it has no oci-layout file); write one with: \
         skopeo copy IMAGE oci:DIR:TAG",
        dir.display()
    )]
    NotALayout { dir: PathBuf },
    #[error("{image} has no image tagged {tag:?} (it has {available}); pick one of those")]
    TagNotFound {
        image: String,
        tag: String,
        available: String,
    },
    #[error("{image} holds several images ({available}); name one as oci:DIR:TAG")]
    AmbiguousLayout { image: String, available: String },
    #[error("docker archive {} holds {count} images; save a single image with: docker save IMAGE", path.display())]
    SeveralImages { path: PathBuf, count: usize },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} is not a readable tar archive; fetch the image again")]
    LayerUnreadable {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot unpack {entry:?} from layer {layer}; the layer was not applied completely")]
    Unpack {
        layer: String,
        entry: String,
        #[source]
        source: UnpackError,
    },
    #[error("the image was not fetched completely because the runtime shut down; fetch it again")]
    Interrupted,
}

/// Builds an [`OciError::Io`] for `map_err`.
pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_owned();
    move |source| OciError::Io {
        action,
        path,
        source,
    }
}

/// Builds an [`OciError::Malformed`].
pub(crate) fn malformed(image: &str, what: impl Into<String>, reason: impl ToString) -> OciError {
    OciError::Malformed {
        image: image.to_owned(),
        what: what.into(),
        reason: reason.to_string(),
    }
}
