//! The JSON documents of an image: indexes (manifest lists), manifests and
//! the image config, in their OCI and Docker schema 2 forms. One reader
//! serves registries, layouts and archives; it is lenient where Docker
//! writes `null` and strict where a mistake would change what is unpacked.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::blobs::{Compression, Digest};
use super::error::{OciError, malformed};
use crate::recipe::RunConfig;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The annotation an OCI layout's `index.json` names images by.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a registry is asked for: every manifest kind we read.
pub(crate) const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The only platform Hearth's guests run.
const OS: &str = "linux";
const ARCH: &str = "amd64";
/// Indexes pointing at indexes: how deep we follow.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;
/// Manifests and indexes larger than this are refused (registries cap
/// them at 4 MiB).
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Image configs larger than this are refused.
pub(crate) const MAX_CONFIG: u64 = 16 << 20;

/// A pointer to a blob.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) urls: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
    #[serde(default)]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub(crate) fn digest(&self) -> Result<Digest, OciError> {
        Digest::parse(&self.digest)
    }

    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

impl Platform {
    fn describe(&self) -> String {
        let part = |s: &str| if s.is_empty() { "unknown" } else { s }.to_owned();
        let mut out = format!("{}/{}", part(&self.os), part(&self.architecture));
        if let Some(variant) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            out.push('/');
            out.push_str(variant);
        }
        out
    }
}

/// An index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
}

/// An image manifest (OCI, or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

/// A document a reference or descriptor led to.
#[derive(Debug, Clone)]
pub(crate) enum Document {
    Index(Index),
    Manifest(Manifest),
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Reads a manifest or an index. `declared` is the media type the
/// registry or the pointing descriptor gave; the document's own
/// `mediaType` wins, then its shape decides.
pub(crate) fn parse_document(
    bytes: &[u8],
    declared: Option<&str>,
    image: &str,
    what: &str,
) -> Result<Document, OciError> {
    let head: Head = serde_json::from_slice(bytes).map_err(|e| malformed(image, what, e))?;
    let media_type = head
        .media_type
        .as_deref()
        .or(declared)
        .filter(|m| !m.is_empty());
    if head.schema_version == Some(1)
        || matches!(media_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
    {
        return Err(OciError::Schema1 {
            image: image.to_owned(),
        });
    }
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // Media types are optional in OCI documents; the shape tells.
        _ if head.manifests.is_some() => true,
        _ if head.config.is_some() && head.layers.is_some() => false,
        other => {
            return Err(OciError::UnsupportedManifest {
                image: image.to_owned(),
                what: what.to_owned(),
                media_type: other.unwrap_or("(none)").to_owned(),
            });
        }
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(|e| malformed(image, what, e))
    } else {
        serde_json::from_slice(bytes)
            .map(Document::Manifest)
            .map_err(|e| malformed(image, what, e))
    }
}

/// Picks the linux/amd64 entry of an index (the CPU variant is ignored).
/// An index with a single entry that names no platform is taken as is:
/// its config is checked for the platform later.
pub(crate) fn select_platform<'a>(
    index: &'a Index,
    image: &str,
) -> Result<&'a Descriptor, OciError> {
    let matching = index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == OS && p.architecture == ARCH)
    });
    if let Some(found) = matching {
        return Ok(found);
    }
    if let [only] = index.manifests.as_slice()
        && only.platform.is_none()
    {
        return Ok(only);
    }
    let offered: BTreeSet<String> = index
        .manifests
        .iter()
        .map(|d| {
            d.platform.as_ref().map_or_else(
                || "an entry without a platform".to_owned(),
                Platform::describe,
            )
        })
        .collect();
    let offered = if offered.is_empty() {
        "no images at all".to_owned()
    } else {
        offered.into_iter().collect::<Vec<_>>().join(", ")
    };
    Err(OciError::NoPlatform {
        image: image.to_owned(),
        offered,
    })
}

/// How a layer of this media type is compressed; `None` for media types
/// that are not tar layers.
pub(crate) fn layer_compression(media_type: &str) -> Option<Compression> {
    const TAR_TYPES: [&str; 4] = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    ];
    let (base, suffix) = TAR_TYPES
        .iter()
        .find_map(|t| media_type.strip_prefix(t).map(|rest| (*t, rest)))?;
    let docker = base.starts_with("application/vnd.docker");
    match suffix {
        "" => Some(Compression::None),
        "+gzip" if !docker => Some(Compression::Gzip),
        ".gzip" if docker => Some(Compression::Gzip),
        "+zstd" if !docker => Some(Compression::Zstd),
        ".zstd" if docker => Some(Compression::Zstd),
        _ => None,
    }
}

/// Checks every layer of `manifest` is a kind we unpack, before anything
/// is fetched.
pub(crate) fn check_layers(manifest: &Manifest, image: &str) -> Result<(), OciError> {
    for layer in &manifest.layers {
        layer.digest()?;
        if layer_compression(&layer.media_type).is_none() {
            return Err(OciError::UnsupportedLayer {
                image: image.to_owned(),
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
    }
    manifest.config.digest()?;
    if manifest.config.size > MAX_CONFIG {
        return Err(malformed(
            image,
            "the config",
            format!(
                "it is {} bytes long, more than Hearth reads",
                manifest.config.size
            ),
        ));
    }
    Ok(())
}

/// The image config (`application/vnd.oci.image.config.v1+json` and
/// Docker's container config), the parts Hearth uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageConfig {
    pub(crate) fn parse(bytes: &[u8], image: &str) -> Result<Self, OciError> {
        serde_json::from_slice(bytes).map_err(|e| malformed(image, "the config", e))
    }

    /// An image for another OS or CPU is refused; a config that names none
    /// is accepted.
    pub(crate) fn check_platform(&self, image: &str) -> Result<(), OciError> {
        let os = self.os.as_deref().unwrap_or_default();
        let arch = self.architecture.as_deref().unwrap_or_default();
        if (os.is_empty() || os == OS) && (arch.is_empty() || arch == ARCH) {
            return Ok(());
        }
        Err(OciError::WrongPlatform {
            image: image.to_owned(),
            platform: format!("{os}/{arch}"),
        })
    }

    /// The digests of the uncompressed layers, in order.
    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs.as_ref().map_or(&[], |r| r.diff_ids.as_slice())
    }

    /// What the image says about how to run it.
    pub(crate) fn run_config(&self) -> RunConfig {
        let Some(c) = &self.config else {
            return RunConfig::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let env = c
            .env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        RunConfig {
            env,
            workdir: non_empty(&c.working_dir),
            user: non_empty(&c.user),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            stop_signal: non_empty(&c.stop_signal),
            exposed_ports: c
                .exposed_ports
                .iter()
                .flat_map(BTreeMap::keys)
                .cloned()
                .collect(),
            labels: c.labels.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> serde_json::Value {
        let mut platform = serde_json::json!({ "os": os, "architecture": arch });
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": D, "size": 1, "platform": platform,
        })
    }

    fn index(entries: Vec<serde_json::Value>) -> Index {
        let doc = serde_json::json!({ "schemaVersion": 2, "manifests": entries });
        match parse_document(doc.to_string().as_bytes(), None, "img", "the index").unwrap() {
            Document::Index(index) => index,
            Document::Manifest(_) => panic!("an index parsed as a manifest"),
        }
    }

    #[test]
    fn linux_amd64_is_picked_whatever_the_variant() {
        let idx = index(vec![
            entry("linux", "arm64", Some("v8")),
            entry("linux", "amd64", Some("v3")),
            entry("windows", "amd64", None),
        ]);
        let picked = select_platform(&idx, "img").unwrap();
        assert_eq!(
            picked.platform.as_ref().unwrap().variant.as_deref(),
            Some("v3")
        );
    }

    #[test]
    fn no_linux_amd64_lists_what_is_offered() {
        let idx = index(vec![
            entry("linux", "arm64", Some("v8")),
            entry("linux", "arm", Some("v7")),
            entry("unknown", "unknown", None),
        ]);
        let err = select_platform(&idx, "docker.io/library/x:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image docker.io/library/x:1 has no linux/amd64 variant (it has linux/arm/v7, \
             linux/arm64/v8, unknown/unknown); use an image built for linux/amd64"
        );
    }

    #[test]
    fn a_single_entry_without_platform_is_taken() {
        let idx = index(vec![serde_json::json!({ "digest": D, "size": 3 })]);
        assert_eq!(select_platform(&idx, "img").unwrap().size, 3);
    }

    #[test]
    fn schema1_is_refused_with_advice() {
        let doc = br#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[]}"#;
        let err = parse_document(doc, None, "r/x:1", "the manifest").unwrap_err();
        assert!(matches!(err, OciError::Schema1 { .. }));
        assert!(err.to_string().contains("schema 1"));
    }

    #[test]
    fn documents_are_told_apart_by_media_type_or_shape() {
        let docker = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 2 },
            "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D, "size": 5 }],
        });
        let Document::Manifest(m) =
            parse_document(docker.to_string().as_bytes(), None, "i", "m").unwrap()
        else {
            panic!("not a manifest");
        };
        assert_eq!(m.layers[0].size, 5);
        check_layers(&m, "i").unwrap();

        let untyped = serde_json::json!({ "schemaVersion": 2, "config": { "digest": D, "size": 2 }, "layers": [] });
        assert!(matches!(
            parse_document(untyped.to_string().as_bytes(), None, "i", "m").unwrap(),
            Document::Manifest(_)
        ));
        let artifact = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.cncf.helm.chart" });
        let err = parse_document(artifact.to_string().as_bytes(), None, "i", "m").unwrap_err();
        assert!(matches!(err, OciError::UnsupportedManifest { .. }), "{err}");
    }

    #[test]
    fn layer_media_types_of_both_families() {
        use Compression::*;
        for (media_type, want) in [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
            (
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                Option::None,
            ),
            ("application/vnd.oci.image.layer.v1.tar.gzip", Option::None),
        ] {
            assert_eq!(layer_compression(media_type), want, "{media_type}");
        }
    }

    #[test]
    fn a_layer_of_another_kind_is_refused_before_fetching() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "config": { "digest": D, "size": 2 },
            "layers": [{ "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": D, "size": 5 }],
        }))
        .unwrap();
        let err = check_layers(&m, "i").unwrap_err();
        assert!(matches!(err, OciError::UnsupportedLayer { .. }), "{err}");
    }

    #[test]
    fn run_config_from_an_image_config() {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "EMPTY=", "EQ=a=b", "BARE"],
                "Entrypoint": ["/entry"], "Cmd": null, "WorkingDir": "/app", "User": "",
                "StopSignal": "SIGINT", "ExposedPorts": { "8080/tcp": {}, "53/udp": {} },
                "Labels": { "a": "b" },
            },
            "rootfs": { "type": "layers", "diff_ids": [D] },
        });
        let c = ImageConfig::parse(config.to_string().as_bytes(), "i").unwrap();
        c.check_platform("i").unwrap();
        assert_eq!(c.diff_ids(), [D]);
        let run = c.run_config();
        assert_eq!(
            run.env,
            [
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("EMPTY".into(), String::new()),
                ("EQ".into(), "a=b".into()),
                ("BARE".into(), String::new()),
            ]
        );
        assert_eq!(run.entrypoint, ["/entry"]);
        assert!(run.cmd.is_empty());
        assert_eq!(run.workdir.as_deref(), Some("/app"));
        assert_eq!(run.user, None);
        assert_eq!(run.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(run.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(run.labels.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn a_config_for_another_platform_is_refused() {
        let c = ImageConfig::parse(br#"{"architecture":"arm64","os":"linux"}"#, "i").unwrap();
        let err = c.check_platform("i").unwrap_err();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        ImageConfig::parse(b"{}", "i")
            .unwrap()
            .check_platform("i")
            .unwrap();
    }
}
