//! `docker save` tarballs: `manifest.json`, the config and one tar per
//! layer, in the old layout (`<id>/layer.tar`, `<hex>.tar`) or the one of
//! Docker 25 and later (an OCI layout inside, `blobs/sha256/<hex>`).
//! Blocking; [`super::pull`] runs it off the runtime.
//!
//! The tarball is indexed once (seeking over file data), then the files
//! that `manifest.json` names are read in place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::blobs::{BlobStore, Compression, Digest, digest_of};
use super::error::{OciError, io_err, malformed};
use super::manifest::{ImageConfig, MAX_CONFIG, MAX_MANIFEST};
use super::{LayerBlob, PulledImage, short};
use crate::progress::Progress;

/// Symbolic links followed inside the archive before giving up.
const MAX_LINKS: usize = 16;

#[derive(Debug, Clone)]
enum Item {
    File { offset: u64, size: u64 },
    Symlink(PathBuf),
    HardLink(PathBuf),
}

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// Where each file of the tarball is.
struct Index {
    items: HashMap<String, Item>,
}

/// The archive path as `a/b/c`, with `.` and `..` resolved lexically
/// (never above the top).
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or("\u{fffd}")),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.join("/")
}

impl Index {
    fn read(file: &mut File, path: &Path) -> Result<Self, OciError> {
        let mut archive = tar::Archive::new(file);
        let mut items = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .map_err(io_err("read the docker archive", path))?
        {
            let entry = entry.map_err(io_err("read the docker archive", path))?;
            let name = normalize(
                &entry
                    .path()
                    .map_err(io_err("read the docker archive", path))?,
            );
            let kind = entry.header().entry_type();
            let item = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => Item::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry
                        .link_name()
                        .map_err(io_err("read the docker archive", path))?
                    else {
                        continue;
                    };
                    if kind == tar::EntryType::Symlink {
                        Item::Symlink(target.into_owned())
                    } else {
                        Item::HardLink(target.into_owned())
                    }
                }
                _ => continue,
            };
            items.insert(name, item);
        }
        Ok(Self { items })
    }

    /// The file at `path`, following links inside the archive; returns its
    /// resolved name too.
    fn lookup(&self, path: &str, image: &str) -> Result<(String, u64, u64), OciError> {
        let mut current = normalize(Path::new(path));
        for _ in 0..MAX_LINKS {
            match self.items.get(&current) {
                Some(Item::File { offset, size }) => return Ok((current, *offset, *size)),
                Some(Item::Symlink(target)) => {
                    let base = Path::new(&current).parent().unwrap_or(Path::new(""));
                    current = if target.is_absolute() {
                        normalize(target)
                    } else {
                        normalize(&base.join(target))
                    };
                }
                Some(Item::HardLink(target)) => current = normalize(target),
                None => {
                    return Err(malformed(
                        image,
                        "the docker archive",
                        format!("it has no file {path}"),
                    ));
                }
            }
        }
        Err(malformed(
            image,
            "the docker archive",
            format!("{path} is a chain of more than {MAX_LINKS} links"),
        ))
    }
}

/// A reader of `size` bytes at `offset` of `file`.
fn section<'f>(
    file: &'f mut File,
    offset: u64,
    size: u64,
    path: &Path,
) -> Result<impl Read + 'f, OciError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("read the docker archive", path))?;
    Ok(file.take(size))
}

fn read_small(
    file: &mut File,
    (offset, size): (u64, u64),
    cap: u64,
    path: &Path,
    image: &str,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    if size > cap {
        return Err(malformed(
            image,
            what,
            format!("it is larger than {cap} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    section(file, offset, size, path)?
        .read_to_end(&mut bytes)
        .map_err(io_err("read the docker archive", path))?;
    Ok(bytes)
}

/// The digest a file's name promises: `blobs/sha256/<hex>` anywhere;
/// `<hex>.json` too for configs (Docker names them by their digest).
fn named_digest(resolved: &str, config: bool) -> Option<Digest> {
    let path = Path::new(resolved);
    let file_name = path.file_name()?.to_str()?;
    let parent = path.parent()?;
    if parent.ends_with("blobs/sha256") {
        return Digest::from_hex(file_name);
    }
    if config {
        return file_name.strip_suffix(".json").and_then(Digest::from_hex);
    }
    None
}

pub(super) fn pull(
    path: &Path,
    name: &str,
    store: &BlobStore,
    progress: &dyn Progress,
) -> Result<PulledImage, OciError> {
    progress.stage("reading");
    progress.message(name);
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let index = Index::read(&mut file, path)?;
    if !index.items.contains_key("manifest.json") {
        return Err(malformed(
            name,
            "the docker archive",
            "it has no manifest.json; write it with docker save or skopeo copy ... docker-archive:FILE",
        ));
    }
    let (_, offset, size) = index.lookup("manifest.json", name)?;
    let bytes = read_small(
        &mut file,
        (offset, size),
        MAX_MANIFEST,
        path,
        name,
        "manifest.json",
    )?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&bytes).map_err(|e| malformed(name, "manifest.json", e))?;
    let image = match images.as_slice() {
        [one] => one,
        [] => return Err(malformed(name, "manifest.json", "it lists no image")),
        several => {
            return Err(OciError::SeveralImages {
                path: path.to_owned(),
                count: several.len(),
            });
        }
    };

    let (config_name, offset, size) = index.lookup(&image.config, name)?;
    let config_bytes = read_small(
        &mut file,
        (offset, size),
        MAX_CONFIG,
        path,
        name,
        "the config",
    )?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(named) = named_digest(&config_name, true)
        && named != config_digest
    {
        return Err(OciError::DigestMismatch {
            digest: named.to_string(),
            actual: config_digest.to_string(),
        });
    }
    let config = ImageConfig::parse(&config_bytes, name)?;
    config.check_platform(name)?;
    let diff_ids = config.diff_ids();
    if diff_ids.len() != image.layers.len() {
        return Err(malformed(
            name,
            "the config",
            format!(
                "it lists {} layers and manifest.json {}",
                diff_ids.len(),
                image.layers.len()
            ),
        ));
    }

    let mut located = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        located.push(index.lookup(layer, name)?);
    }
    progress.stage("copying");
    progress.set_total(located.iter().map(|(_, _, size)| size).sum());
    let mut done = 0u64;
    let mut layers = Vec::with_capacity(located.len());
    for ((resolved, offset, size), diff_id) in located.into_iter().zip(diff_ids) {
        let diff_id = Digest::parse(diff_id)?;
        progress.message(&format!("copying {}", short(diff_id.hex())));
        let layer = copy_layer(
            &mut file,
            path,
            store,
            (&resolved, offset, size),
            &diff_id,
            &mut |n| {
                done += n;
                progress.set_done(done);
            },
        )?;
        layers.push(layer);
    }
    let size = layers
        .iter()
        .map(|l| std::fs::metadata(&l.path).map_or(0, |m| m.len()))
        .sum();
    Ok(PulledImage {
        source: name.to_owned(),
        manifest_digest: config_digest.to_string(),
        config: config.run_config(),
        layers,
        size,
    })
}

/// Copies one layer into the cache, verified against its name (when it is
/// a digest) and against the config's `diff_id` (the digest of the
/// uncompressed tar).
fn copy_layer(
    file: &mut File,
    path: &Path,
    store: &BlobStore,
    (resolved, offset, size): (&str, u64, u64),
    diff_id: &Digest,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<LayerBlob, OciError> {
    let named = named_digest(resolved, false);
    let cached = [Some(diff_id), named.as_ref()]
        .into_iter()
        .flatten()
        .find(|d| store.contains(d));
    if let Some(digest) = cached {
        let blob = store.path(digest);
        let compression = Compression::sniff_file(&blob).map_err(io_err("read", &blob))?;
        return Ok(LayerBlob {
            digest: digest.to_string(),
            media_type: compression.oci_media_type().to_owned(),
            path: blob,
        });
    }
    let mut reader = section(file, offset, size, path)?;
    let (temp, digest, _) =
        store.ingest_unnamed(&mut reader, named.as_ref(), Some(size), on_bytes)?;
    let compression = Compression::sniff_file(temp.path()).map_err(io_err("read", temp.path()))?;
    if &digest != diff_id {
        let uncompressed = match compression {
            Compression::None => digest.clone(),
            _ => uncompressed_digest(temp.path(), compression)
                .map_err(io_err("decompress", temp.path()))?,
        };
        if &uncompressed != diff_id {
            return Err(OciError::DigestMismatch {
                digest: diff_id.to_string(),
                actual: uncompressed.to_string(),
            });
        }
    }
    let blob = temp.commit(store, &digest)?;
    Ok(LayerBlob {
        digest: digest.to_string(),
        media_type: compression.oci_media_type().to_owned(),
        path: blob,
    })
}

fn uncompressed_digest(path: &Path, compression: Compression) -> io::Result<Digest> {
    digest_of(&mut compression.decoder(File::open(path)?)?)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;
    use crate::NoProgress;

    fn layer_tar(name: &str, data: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn config(diff_ids: &[&Digest]) -> Vec<u8> {
        let ids: Vec<String> = diff_ids.iter().map(ToString::to_string).collect();
        serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": ids },
        })
        .to_string()
        .into_bytes()
    }

    /// A docker archive with these files (`->` makes a symlink).
    fn archive(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            if let Some(target) = std::str::from_utf8(data)
                .ok()
                .and_then(|s| s.strip_prefix("-> "))
            {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        let path = dir.join("image.tar");
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        path
    }

    fn pull_archive(path: &Path, blobs: &Path) -> Result<PulledImage, OciError> {
        let store = BlobStore::open(blobs).unwrap();
        pull(path, "docker-archive:test", &store, &NoProgress)
    }

    #[test]
    fn the_docker_25_format_with_blobs_named_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let plain = layer_tar("a", "1");
        let compressed = gzip(&layer_tar("b", "2"));
        let (plain_d, gz_d) = (Digest::of(&plain), Digest::of(&compressed));
        let diff_b = Digest::of(&layer_tar("b", "2"));
        let config = config(&[&plain_d, &diff_b]);
        let config_d = Digest::of(&config);
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", config_d.hex()),
            "RepoTags": ["x:1"],
            "Layers": [format!("blobs/sha256/{}", plain_d.hex()), format!("blobs/sha256/{}", gz_d.hex())],
        }])
        .to_string();
        let path = archive(
            dir.path(),
            &[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                (&format!("blobs/sha256/{}", config_d.hex()), &config),
                (&format!("blobs/sha256/{}", plain_d.hex()), &plain),
                (&format!("blobs/sha256/{}", gz_d.hex()), &compressed),
                ("manifest.json", manifest.as_bytes()),
            ],
        );
        let image = pull_archive(&path, &dir.path().join("blobs")).unwrap();
        assert_eq!(image.manifest_digest, config_d.to_string());
        assert_eq!(image.config.cmd, ["/bin/sh"]);
        assert_eq!(image.layers[0].digest, plain_d.to_string());
        assert_eq!(
            image.layers[0].media_type,
            Compression::None.oci_media_type()
        );
        assert_eq!(image.layers[1].digest, gz_d.to_string());
        assert_eq!(
            image.layers[1].media_type,
            Compression::Gzip.oci_media_type()
        );
        assert_eq!(fs::read(&image.layers[1].path).unwrap(), compressed);

        let root = dir.path().join("root");
        crate::oci::unpack::unpack_layers(&image, &root, false).unwrap();
        assert_eq!(fs::read_to_string(root.join("b")).unwrap(), "2");
    }

    #[test]
    fn the_old_format_with_layer_tar_checked_against_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let layer = layer_tar("a", "1");
        let diff = Digest::of(&layer);
        let config = config(&[&diff]);
        let config_d = Digest::of(&config);
        let manifest = serde_json::json!([{
            "Config": format!("{}.json", config_d.hex()),
            "RepoTags": null,
            "Layers": ["0123abcd/layer.tar"],
        }])
        .to_string();
        let config_name = format!("{}.json", config_d.hex());
        let good = archive(
            dir.path(),
            &[
                ("0123abcd/layer.tar", &layer),
                (&config_name, &config),
                ("manifest.json", manifest.as_bytes()),
            ],
        );
        let image = pull_archive(&good, &dir.path().join("blobs")).unwrap();
        assert_eq!(image.layers[0].digest, diff.to_string());

        let other = layer_tar("a", "2");
        let bad = archive(
            dir.path(),
            &[
                ("0123abcd/layer.tar", &other),
                (&config_name, &config),
                ("manifest.json", manifest.as_bytes()),
            ],
        );
        let err = pull_archive(&bad, &dir.path().join("fresh")).unwrap_err();
        match err {
            OciError::DigestMismatch { digest, actual } => {
                assert_eq!(digest, diff.to_string());
                assert_eq!(actual, Digest::of(&other).to_string());
            }
            other => panic!("expected a digest mismatch, got {other}"),
        }
        assert!(
            !dir.path()
                .join("fresh/sha256")
                .join(Digest::of(&other).hex())
                .exists()
        );
    }

    #[test]
    fn a_config_whose_name_is_not_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layer = layer_tar("a", "1");
        let config = config(&[&Digest::of(&layer)]);
        let wrong = Digest::of(b"something else");
        let manifest = serde_json::json!([{
            "Config": format!("{}.json", wrong.hex()), "Layers": ["l.tar"],
        }])
        .to_string();
        let path = archive(
            dir.path(),
            &[
                ("l.tar", &layer),
                (&format!("{}.json", wrong.hex()), &config),
                ("manifest.json", manifest.as_bytes()),
            ],
        );
        let err = pull_archive(&path, &dir.path().join("blobs")).unwrap_err();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn symlinked_layers_and_several_images() {
        let dir = tempfile::tempdir().unwrap();
        let layer = layer_tar("a", "1");
        let diff = Digest::of(&layer);
        let config = config(&[&diff]);
        let manifest =
            serde_json::json!([{ "Config": "c.json", "Layers": ["id/layer.tar"] }]).to_string();
        let path = archive(
            dir.path(),
            &[
                (&format!("{}.tar", diff.hex()), &layer),
                (
                    "id/layer.tar",
                    format!("-> ../{}.tar", diff.hex()).as_bytes(),
                ),
                ("c.json", &config),
                ("manifest.json", manifest.as_bytes()),
            ],
        );
        let image = pull_archive(&path, &dir.path().join("blobs")).unwrap();
        assert_eq!(image.layers[0].digest, diff.to_string());

        let two = serde_json::json!([
            { "Config": "c.json", "Layers": [] }, { "Config": "c.json", "Layers": [] },
        ])
        .to_string();
        let path = archive(
            dir.path(),
            &[("c.json", &config), ("manifest.json", two.as_bytes())],
        );
        let err = pull_archive(&path, &dir.path().join("blobs")).unwrap_err();
        assert!(
            matches!(err, OciError::SeveralImages { count: 2, .. }),
            "{err}"
        );

        let path = archive(dir.path(), &[("c.json", &config)]);
        let err = pull_archive(&path, &dir.path().join("blobs")).unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
    }

    #[test]
    fn archive_paths_normalise_lexically() {
        assert_eq!(normalize(Path::new("./a/../b/./c")), "b/c");
        assert_eq!(normalize(Path::new("../../x")), "x");
        assert_eq!(normalize(Path::new("/manifest.json")), "manifest.json");
    }

    #[test]
    fn only_content_addressed_names_promise_a_digest() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            named_digest(&format!("blobs/sha256/{hex}"), false)
                .unwrap()
                .hex(),
            hex
        );
        assert!(named_digest(&format!("{hex}.tar"), false).is_none());
        assert!(named_digest(&format!("{hex}/layer.tar"), false).is_none());
        assert_eq!(
            named_digest(&format!("{hex}.json"), true).unwrap().hex(),
            hex
        );
        assert!(named_digest("config.json", true).is_none());
    }
}
