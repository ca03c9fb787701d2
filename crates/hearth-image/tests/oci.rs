//! OCI images end to end with real parts: an image layout written here
//! (three layers: gzip, zstd, plain; whiteouts, an opaque directory,
//! links), pushed by `skopeo` into Debian's `docker-registry` started on a
//! free loopback port, pulled and unpacked by hearth-image; the same image
//! as a `docker-archive:` written by skopeo and as the `oci:` layout itself.
//!
//! Needs `/usr/bin/docker-registry` and `skopeo` (`scripts/deps` installs
//! both); a missing tool fails the test, it is never skipped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hearth_image::{
    ImageSource, OciError, Progress, PullOptions, PulledImage, RegistryAuth, pull, unpack,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

// ---------------------------------------------------------------- layout

/// An OCI image layout written by hand: blobs, manifests, `index.json`.
struct Layout {
    dir: PathBuf,
    index: Vec<serde_json::Value>,
}

struct Blob {
    digest: String,
    size: usize,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self {
            dir: dir.to_owned(),
            index: Vec::new(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> Blob {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").unwrap();
        fs::write(self.dir.join("blobs/sha256").join(hex), bytes).unwrap();
        Blob {
            digest,
            size: bytes.len(),
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Writes config and layers and the manifest; returns the manifest's
    /// descriptor.
    fn image(&self, config: &serde_json::Value, layers: &[(Vec<u8>, &str)]) -> serde_json::Value {
        let config = self.blob(config.to_string().as_bytes());
        let layers: Vec<_> = layers
            .iter()
            .map(|(bytes, media_type)| {
                let b = self.blob(bytes);
                json!({ "mediaType": media_type, "digest": b.digest, "size": b.size })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size },
            "layers": layers,
        });
        let m = self.blob(manifest.to_string().as_bytes());
        json!({ "mediaType": OCI_MANIFEST, "digest": m.digest, "size": m.size })
    }

    /// An index over platform manifests; returns its descriptor.
    fn platform_index(&self, entries: &[(serde_json::Value, &str)]) -> serde_json::Value {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(descriptor, arch)| {
                let mut d = descriptor.clone();
                d["platform"] = json!({ "os": "linux", "architecture": arch });
                d
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let b = self.blob(index.to_string().as_bytes());
        json!({ "mediaType": OCI_INDEX, "digest": b.digest, "size": b.size })
    }

    fn tag(&mut self, descriptor: &serde_json::Value, tag: &str) {
        let mut d = descriptor.clone();
        d["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        self.index.push(d);
        let index = json!({ "schemaVersion": 2, "manifests": self.index });
        fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// A tar layer.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(EntryType::Directory, 0o755);
        h.set_size(0);
        self.0.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    fn file_mode(mut self, path: &str, data: &str, mode: u32) -> Self {
        let mut h = Self::header(EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
        self
    }

    fn file(self, path: &str, data: &str) -> Self {
        self.file_mode(path, data, 0o644)
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777);
        h.set_size(0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(tar).unwrap();
    enc.finish().unwrap()
}

fn config(arch: &str, diff_ids: Vec<String>) -> serde_json::Value {
    json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello=world"],
            "Cmd": ["python3", "/app/main.py"],
            "WorkingDir": "/app",
            "ExposedPorts": { "8000/tcp": {} },
            "StopSignal": "SIGINT",
            "Labels": { "org.example": "yes" },
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
}

/// The test image, tagged `t`; `multi` is an index of it (amd64) and an
/// arm64 image; `armonly` an index of the arm64 image alone. Returns the
/// manifest digest of `t`.
fn write_layout(dir: &Path) -> String {
    let base = Layer::new()
        .dir("etc/")
        .file("etc/os-release", "ID=hearth-test\n")
        .dir("app/")
        .file("app/main.py", "print('v1')\n")
        .file("app/old.txt", "old\n")
        .dir("app/cache/")
        .file("app/cache/x", "x\n")
        .file("app/cache/y", "y\n")
        .dir("bin/")
        .file_mode("bin/tool", "#!/bin/sh\necho tool\n", 0o755)
        .link(EntryType::Link, "bin/tool-alias", "bin/tool")
        .link(EntryType::Symlink, "bin/python3", "/usr/bin/python3.11")
        .link(EntryType::Symlink, "app/os", "../etc/os-release");
    let middle = Layer::new()
        .file("app/.wh.old.txt", "")
        .file("app/cache/.wh..wh..opq", "")
        .file("app/cache/z", "z\n")
        .file("app/new.txt", "new\n");
    let top = Layer::new().file("app/main.py", "print('v2')\n");
    let (base_tar, middle_tar, top_tar) = (base.tar(), middle.tar(), top.tar());
    let diff_ids = vec![sha256(&base_tar), sha256(&middle_tar), sha256(&top_tar)];
    // The same tar streams, compressed three ways.
    let layers = [
        (
            gzip(&base_tar),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            zstd::encode_all(&middle_tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (top_tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
    ];
    let mut layout = Layout::new(dir);
    let amd64 = layout.image(&config("amd64", diff_ids.clone()), &layers);
    layout.tag(&amd64, "t");
    // Docker archives cannot carry zstd: the same image with gzip instead.
    let gzip_only = [
        layers[0].clone(),
        (
            gzip(&middle_tar),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        layers[2].clone(),
    ];
    let docker = layout.image(&config("amd64", diff_ids), &gzip_only);
    layout.tag(&docker, "docker");

    let arm_layer = Layer::new().file("arch", "arm64\n").tar();
    let arm64 = layout.image(
        &config("arm64", vec![sha256(&arm_layer)]),
        &[(arm_layer, "application/vnd.oci.image.layer.v1.tar")],
    );
    let multi = layout.platform_index(&[(arm64.clone(), "arm64"), (amd64.clone(), "amd64")]);
    layout.tag(&multi, "multi");
    let arm_only = layout.platform_index(&[(arm64, "arm64")]);
    layout.tag(&arm_only, "armonly");
    amd64["digest"].as_str().unwrap().to_owned()
}

// ------------------------------------------------------------- registry

/// Debian's docker-registry on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `htpasswd`: a line `user:bcrypt-hash` to require basic auth.
    fn start(htpasswd: Option<&str>) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/deps)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some(line) = htpasswd {
            let file = dir.path().join("htpasswd");
            fs::write(&file, format!("{line}\n")).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n",
                file.display()
            ));
        }
        let config = dir.path().join("config.yml");
        fs::write(&config, yaml).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of `src` to `REGISTRY/name`.
    /// The digest of the manifest the registry serves for `name` (skopeo
    /// may re-encode a manifest as it copies it).
    fn manifest_digest(&self, name: &str, creds: Option<&str>) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.args(["--creds", creds]);
        }
        cmd.arg(format!("docker://{}/{name}", self.addr()));
        sha256(&run(&mut cmd))
    }

    fn push(&self, src: &str, name: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.args(["--dest-creds", creds]);
        }
        cmd.arg(src).arg(format!("docker://{}/{name}", self.addr()));
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------- checks

/// Records progress, to see which blobs were fetched.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn stage(&self, name: &str) {
        self.0.lock().unwrap().push(format!("stage {name}"));
    }
    fn set_total(&self, _: u64) {}
    fn set_done(&self, _: u64) {}
    fn message(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_owned());
    }
}

impl Recorder {
    fn fetched(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.starts_with("fetching ") || m.starts_with("copying "))
            .count()
    }
}

struct Env {
    tmp: tempfile::TempDir,
    layout: PathBuf,
    manifest_digest: String,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest_digest = write_layout(&layout);
        Self {
            tmp,
            layout,
            manifest_digest,
        }
    }

    fn opts(&self) -> PullOptions {
        PullOptions {
            auth: None,
            insecure_registries: Vec::new(),
            blobs_dir: self.tmp.path().join("blobs"),
        }
    }

    fn root(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

async fn pull_str(source: &str, opts: &PullOptions) -> Result<PulledImage, OciError> {
    let source: ImageSource = source.parse().unwrap();
    pull(&source, opts, &Recorder::default()).await
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The unpacked test image, all three layers applied.
fn check_tree(root: &Path) {
    assert_eq!(read(&root.join("etc/os-release")), "ID=hearth-test\n");
    assert_eq!(read(&root.join("app/main.py")), "print('v2')\n");
    assert_eq!(read(&root.join("app/new.txt")), "new\n");
    assert!(!exists(&root.join("app/old.txt")), "whiteout not applied");
    assert!(!exists(&root.join("app/.wh.old.txt")));
    let mut cache: Vec<String> = fs::read_dir(root.join("app/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    cache.sort();
    assert_eq!(cache, ["z"], "opaque directory not applied");
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        fs::metadata(root.join("bin/tool-alias")).unwrap().ino(),
        tool.ino()
    );
    assert_eq!(
        fs::read_link(root.join("bin/python3")).unwrap(),
        Path::new("/usr/bin/python3.11")
    );
    assert_eq!(
        fs::read_link(root.join("app/os")).unwrap(),
        Path::new("../etc/os-release")
    );
    assert_eq!(tool.mtime(), 1_700_000_000);
}

fn check_config(image: &PulledImage) {
    let c = &image.config;
    assert_eq!(
        c.env,
        [
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("GREETING".to_owned(), "hello=world".to_owned()),
        ]
    );
    assert_eq!(c.cmd, ["python3", "/app/main.py"]);
    assert_eq!(c.workdir.as_deref(), Some("/app"));
    assert_eq!(c.exposed_ports, ["8000/tcp"]);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        c.labels,
        BTreeMap::from([("org.example".to_owned(), "yes".to_owned())])
    );
    assert_eq!(image.layers.len(), 3);
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn pulls_from_a_registry_verifies_caches_and_unpacks() {
    let env = Env::new();
    let registry = Registry::start(None);
    let src = format!("oci:{}:t", env.layout.display());
    registry.push(&src, "test/img:t", None);

    let source: ImageSource = format!("{}/test/img:t", registry.addr()).parse().unwrap();
    let opts = env.opts();
    let first = Recorder::default();
    let image = pull(&source, &opts, &first).await.unwrap();
    assert_eq!(image.source, format!("{}/test/img:t", registry.addr()));
    let served = registry.manifest_digest("test/img:t", None);
    assert_eq!(image.manifest_digest, served);
    assert_eq!(first.fetched(), 4, "config and three layers");
    check_config(&image);
    for layer in &image.layers {
        assert!(layer.path.starts_with(&opts.blobs_dir));
        assert_eq!(sha256(&fs::read(&layer.path).unwrap()), layer.digest);
    }
    assert_eq!(
        image.layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    // Everything is cached now: nothing is fetched again.
    let again = Recorder::default();
    let cached = pull(&source, &opts, &again).await.unwrap();
    assert_eq!(again.fetched(), 0);
    assert_eq!(cached, image);

    // By digest, the same image.
    let by_digest = pull_str(&format!("{}/test/img@{served}", registry.addr()), &opts)
        .await
        .unwrap();
    assert_eq!(by_digest.layers, image.layers);

    let root = env.root("rootfs");
    let image_for_unpack = image.clone();
    let target = root.clone();
    tokio::task::spawn_blocking(move || unpack(&image_for_unpack, &target))
        .await
        .unwrap()
        .unwrap();
    check_tree(&root);
}

#[tokio::test]
async fn an_index_yields_linux_amd64_or_names_what_it_offers() {
    let env = Env::new();
    let registry = Registry::start(None);
    let src = format!("oci:{}:multi", env.layout.display());
    registry.push(&src, "test/multi:1", None);
    registry.push(
        &format!("oci:{}:armonly", env.layout.display()),
        "test/arm:1",
        None,
    );

    let image = pull_str(&format!("{}/test/multi:1", registry.addr()), &env.opts())
        .await
        .unwrap();
    check_config(&image);
    let arch = image
        .layers
        .iter()
        .find(|l| fs::read(&l.path).unwrap().windows(5).any(|w| w == b"arm64"));
    assert!(arch.is_none(), "the arm64 image was picked");

    let err = pull_str(&format!("{}/test/arm:1", registry.addr()), &env.opts())
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("(it has linux/arm64)"), "{err}");

    // The same from the layout itself: nested indexes are followed.
    let local = pull_str(&src, &env.opts()).await.unwrap();
    assert_eq!(local.manifest_digest, env.manifest_digest);
}

#[tokio::test]
async fn an_unknown_tag_is_not_found() {
    let env = Env::new();
    let registry = Registry::start(None);
    registry.push(
        &format!("oci:{}:t", env.layout.display()),
        "test/img:t",
        None,
    );
    for name in ["test/img:nope", "test/none:t"] {
        let err = pull_str(&format!("{}/{name}", registry.addr()), &env.opts())
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::NotFound { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let env = Env::new();
    let port = free_port();
    let err = pull_str(&format!("127.0.0.1:{port}/test/img:t"), &env.opts())
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry 127.0.0.1:{port} is unreachable; check its address and that it is running"
        )
    );
}

#[tokio::test]
async fn credentials_are_checked() {
    let env = Env::new();
    let hash = bcrypt::hash_with_result("s3cret", 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    let registry = Registry::start(Some(&format!("hearth:{hash}")));
    registry.push(
        &format!("oci:{}:t", env.layout.display()),
        "test/img:t",
        Some("hearth:s3cret"),
    );
    let name = format!("{}/test/img:t", registry.addr());

    let err = pull_str(&name, &env.opts()).await.unwrap_err();
    assert!(
        matches!(err, OciError::CredentialsRequired { .. }),
        "{err:?}"
    );

    let mut opts = env.opts();
    opts.auth = Some(RegistryAuth {
        username: "hearth".into(),
        password: "wrong".into(),
    });
    let err = pull_str(&name, &opts).await.unwrap_err();
    assert!(matches!(err, OciError::WrongCredentials { .. }), "{err:?}");
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );

    opts.auth = Some(RegistryAuth {
        username: "hearth".into(),
        password: "s3cret".into(),
    });
    let image = pull_str(&name, &opts).await.unwrap();
    check_config(&image);
}

#[tokio::test]
async fn a_docker_archive_from_skopeo() {
    let env = Env::new();
    let archive = env.tmp.path().join("img.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:docker", env.layout.display()),
        &format!("docker-archive:{}:test/img:t", archive.display()),
    ]));
    let image = pull_str(
        &format!("docker-archive:{}", archive.display()),
        &env.opts(),
    )
    .await
    .unwrap();
    check_config(&image);
    assert!(image.manifest_digest.starts_with("sha256:"));
    let root = env.root("from-archive");
    unpack(&image, &root).unwrap();
    check_tree(&root);

    // A layer of the archive altered: its diff_id no longer matches.
    let tampered = env.tmp.path().join("tampered.tar");
    let mut bytes = fs::read(&archive).unwrap();
    let needle = b"print('v2')";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + 7] = b'3';
    fs::write(&tampered, bytes).unwrap();
    let mut opts = env.opts();
    opts.blobs_dir = env.tmp.path().join("other-blobs");
    let err = pull_str(&format!("docker-archive:{}", tampered.display()), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn an_oci_layout_directly() {
    let env = Env::new();
    let image = pull_str(&format!("oci:{}:t", env.layout.display()), &env.opts())
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, env.manifest_digest);
    check_config(&image);
    let root = env.root("from-layout");
    unpack(&image, &root).unwrap();
    check_tree(&root);

    let err = pull_str(&format!("oci:{}:nope", env.layout.display()), &env.opts())
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::TagNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("(it has t, docker, multi, armonly)"),
        "{err}"
    );

    let err = pull_str(&format!("oci:{}", env.layout.display()), &env.opts())
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::AmbiguousLayout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_tampered_layout_blob_is_refused_and_nothing_is_unpacked() {
    let env = Env::new();
    let source = format!("oci:{}:t", env.layout.display());
    let image = pull_str(&source, &env.opts()).await.unwrap();
    // Alter the top layer (plain tar) in the layout, and pull into a fresh
    // cache.
    let top = &image.layers[2];
    let path = Layout {
        dir: env.layout.clone(),
        index: Vec::new(),
    }
    .blob_path(&top.digest);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(2).position(|w| w == b"v2").unwrap();
    bytes[at + 1] = b'9';
    fs::write(&path, bytes).unwrap();

    let mut opts = env.opts();
    opts.blobs_dir = env.tmp.path().join("fresh-blobs");
    let root = env.root("never");
    fs::create_dir(&root).unwrap();
    let err = pull_str(&source, &opts).await.unwrap_err();
    match &err {
        OciError::DigestMismatch { digest, .. } => assert_eq!(digest, &top.digest),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&top.digest), "{err}");
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    let hex = top.digest.strip_prefix("sha256:").unwrap();
    assert!(!opts.blobs_dir.join("sha256").join(hex).exists());
    assert_eq!(fs::read_dir(opts.blobs_dir.join("tmp")).unwrap().count(), 0);

    // A cached blob altered after the pull: unpack refuses before it
    // touches the root.
    let cached = &image.layers[0];
    let mut bytes = fs::read(&cached.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&cached.path, bytes).unwrap();
    let err = unpack(&image, &root).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
}
