//! Where an image comes from, parsed from the forms people write:
//! `debian`, `127.0.0.1:5000/python:3.11`, `ghcr.io/a/b@sha256:…`,
//! `oci:DIR[:TAG]` and `docker-archive:FILE`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::blobs::Digest;
use super::error::OciError;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const OCI_PREFIX: &str = "oci:";
const ARCHIVE_PREFIX: &str = "docker-archive:";
const DOCKER_PREFIX: &str = "docker://";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// An image to pull.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// An image in a registry, by the OCI distribution API.
    Registry {
        /// `host[:port]`; `docker.io` for Docker Hub.
        registry: String,
        /// `library/debian`, `a/b`.
        repository: String,
        /// A tag, or a digest `sha256:<hex>` (a reference giving both is
        /// pulled by its digest).
        reference: String,
    },
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    OciLayout {
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick; without it the
        /// layout must hold one image.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive { path: PathBuf },
}

impl ImageSource {
    /// Whether a registry image is named by digest rather than by tag.
    pub fn is_digest(&self) -> bool {
        matches!(self, Self::Registry { reference, .. } if reference.contains(':'))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry {
                registry,
                repository,
                reference,
            } => {
                let sep = if self.is_digest() { '@' } else { ':' };
                write!(f, "{registry}/{repository}{sep}{reference}")
            }
            Self::OciLayout { dir, tag: None } => write!(f, "{OCI_PREFIX}{}", dir.display()),
            Self::OciLayout {
                dir,
                tag: Some(tag),
            } => write!(f, "{OCI_PREFIX}{}:{tag}", dir.display()),
            Self::DockerArchive { path } => write!(f, "{ARCHIVE_PREFIX}{}", path.display()),
        }
    }
}

impl FromStr for ImageSource {
    type Err = OciError;

    fn from_str(input: &str) -> Result<Self, OciError> {
        let invalid = |reason: &str| OciError::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = input.strip_prefix(OCI_PREFIX) {
            // As skopeo: the directory ends at the first colon.
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) => (dir, Some(tag)),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(invalid("the layout directory is empty"));
            }
            if tag.is_some_and(str::is_empty) {
                return Err(invalid("the tag after the directory is empty"));
            }
            return Ok(Self::OciLayout {
                dir: dir.into(),
                tag: tag.map(str::to_owned),
            });
        }
        if let Some(path) = input.strip_prefix(ARCHIVE_PREFIX) {
            if path.is_empty() {
                return Err(invalid("the archive path is empty"));
            }
            return Ok(Self::DockerArchive { path: path.into() });
        }
        let name = input.strip_prefix(DOCKER_PREFIX).unwrap_or(input);
        parse_registry(name).map_err(invalid)
    }
}

fn parse_registry(input: &str) -> Result<ImageSource, &'static str> {
    if input.is_empty() {
        return Err("it is empty");
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (input, None),
    };
    // A tag follows the last colon after the last slash (a colon before it
    // belongs to a registry port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    let (registry, repository) = split_registry(name);
    check_registry(&registry)?;
    check_repository(&repository)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let reference = match (digest, tag) {
        (Some(d), _) => {
            if Digest::parse(d).is_err() {
                return Err("the digest is not sha256:<64 lower-case hex digits>");
            }
            d.to_owned()
        }
        (None, Some(t)) => t.to_owned(),
        (None, None) => DEFAULT_TAG.to_owned(),
    };
    Ok(ImageSource::Registry {
        registry,
        repository,
        reference,
    })
}

/// Docker's rule: the first component names a registry when it has a dot
/// or a colon, is `localhost`, or is an IPv6 address in brackets.
fn split_registry(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    let registry = if registry == DOCKER_HUB_LEGACY {
        DOCKER_HUB.to_owned()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{repository}")
    } else {
        repository
    };
    (registry, repository)
}

fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("the registry's IPv6 address lacks its closing bracket")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the registry's IPv6 address is invalid");
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("the registry address is invalid")?,
            ),
        };
        (None, port)
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err("the registry host name is invalid");
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err("the registry port is not a number from 0 to 65535");
    }
    Ok(())
}

/// Path components of lower-case letters and digits, joined by `.`, `_`,
/// `__` or runs of `-`.
fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.len() > MAX_NAME {
        return Err("the repository name is longer than 255 characters");
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("the repository name must be lower case");
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(&b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(&b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let dashes = sep.bytes().all(|x| x == b'-');
            if !(sep == "." || sep == "_" || sep == "__" || dashes) {
                return false;
            }
        }
        true
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err("the repository name has an invalid component")
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let b = tag.as_bytes();
    let word = |x: &u8| x.is_ascii_alphanumeric() || *x == b'_';
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG
        && word(&b[0])
        && b.iter().all(|x| word(x) || *x == b'.' || *x == b'-');
    if ok {
        Ok(())
    } else {
        Err("the tag is invalid (letters, digits, _ . -, at most 128, not starting with . or -)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn registry(s: &str) -> (String, String, String) {
        match s.parse::<ImageSource>().unwrap() {
            ImageSource::Registry {
                registry,
                repository,
                reference,
            } => (registry, repository, reference),
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    fn triple(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn registry_references_normalise_as_docker_does() {
        assert_eq!(
            registry("debian"),
            triple("docker.io", "library/debian", "latest")
        );
        assert_eq!(
            registry("debian:12-slim"),
            triple("docker.io", "library/debian", "12-slim")
        );
        assert_eq!(registry("a/b"), triple("docker.io", "a/b", "latest"));
        assert_eq!(
            registry("index.docker.io/x"),
            triple("docker.io", "library/x", "latest")
        );
        assert_eq!(
            registry("127.0.0.1:5000/python:3.11"),
            triple("127.0.0.1:5000", "python", "3.11")
        );
        assert_eq!(
            registry("localhost/a/b/c"),
            triple("localhost", "a/b/c", "latest")
        );
        assert_eq!(registry("[::1]:5000/x:y"), triple("[::1]:5000", "x", "y"));
        assert_eq!(
            registry("docker://quay.io/a/b:1"),
            triple("quay.io", "a/b", "1")
        );
        let digest = format!("sha256:{HEX}");
        assert_eq!(
            registry(&format!("ghcr.io/a/b@{digest}")),
            triple("ghcr.io", "a/b", &digest)
        );
        assert_eq!(
            registry(&format!("ghcr.io/a/b:1.0@{digest}")),
            triple("ghcr.io", "a/b", &digest)
        );
    }

    #[test]
    fn display_is_the_canonical_form_and_parses_back() {
        for (input, canonical) in [
            ("debian", "docker.io/library/debian:latest"),
            ("127.0.0.1:5000/python:3.11", "127.0.0.1:5000/python:3.11"),
            (
                &format!("ghcr.io/a/b@sha256:{HEX}"),
                &format!("ghcr.io/a/b@sha256:{HEX}"),
            ),
            ("oci:/tmp/lay", "oci:/tmp/lay"),
            ("oci:/tmp/lay:v1", "oci:/tmp/lay:v1"),
            ("docker-archive:/tmp/a.tar", "docker-archive:/tmp/a.tar"),
        ] {
            let source: ImageSource = input.parse().unwrap();
            assert_eq!(source.to_string(), canonical);
            assert_eq!(canonical.parse::<ImageSource>().unwrap(), source);
        }
    }

    #[test]
    fn local_sources() {
        assert_eq!(
            "oci:./lay:a:b".parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir: "./lay".into(),
                tag: Some("a:b".into())
            }
        );
        assert_eq!(
            "docker-archive:img.tar".parse::<ImageSource>().unwrap(),
            ImageSource::DockerArchive {
                path: "img.tar".into()
            }
        );
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        for (input, reason) in [
            ("", "empty"),
            ("Debian", "lower case"),
            ("a//b", "invalid component"),
            ("-a", "invalid component"),
            ("a:.x", "tag is invalid"),
            ("a@sha256:abc", "digest"),
            ("a@md5:abc", "digest"),
            ("ex ample.com/a", "host name"),
            ("example.com:99999/a", "port"),
            ("[::zz]:5000/a", "IPv6"),
            ("oci:", "directory is empty"),
            ("oci:/x:", "tag after"),
            ("docker-archive:", "archive path"),
        ] {
            let err = input.parse::<ImageSource>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input:?}: {msg}");
            assert!(msg.contains("oci:DIR[:TAG]"), "{msg}");
        }
    }
}
