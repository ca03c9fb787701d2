//! OCI image layout directories: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`. Blocking; [`super::pull`] runs it off the runtime.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::blobs::{BlobStore, Verifier};
use super::error::{OciError, io_err, malformed};
use super::manifest::{
    self, Descriptor, Document, ImageConfig, Index, MAX_INDEX_DEPTH, MAX_MANIFEST, OCI_INDEX,
    REF_NAME,
};
use super::{LayerBlob, PulledImage, short};
use crate::progress::Progress;

pub(super) fn pull(
    dir: &Path,
    tag: Option<&str>,
    name: &str,
    store: &BlobStore,
    progress: &dyn Progress,
) -> Result<PulledImage, OciError> {
    progress.stage("resolving");
    progress.message(name);
    if !dir.join("oci-layout").is_file() {
        return Err(OciError::NotALayout {
            dir: dir.to_owned(),
        });
    }
    let index_path = dir.join("index.json");
    let bytes = read_capped(&index_path, MAX_MANIFEST).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => malformed(name, "the layout", "it has no index.json"),
        _ => io_err("read", &index_path)(e),
    })?;
    let index = match manifest::parse_document(&bytes, Some(OCI_INDEX), name, "index.json")? {
        Document::Index(index) => index,
        Document::Manifest(_) => {
            return Err(malformed(
                name,
                "index.json",
                "it is a manifest, not an index",
            ));
        }
    };
    let entry = pick_entry(&index, tag, name)?;
    let (manifest, manifest_digest) = resolve(dir, entry, name)?;
    manifest::check_layers(&manifest, name)?;

    progress.stage("copying");
    let mut total = 0u64;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if !store.contains(&blob.digest()?) {
            total = total.saturating_add(blob.size);
        }
    }
    progress.set_total(total);
    let mut done = 0u64;
    let mut on_bytes = |n: u64| {
        done += n;
        progress.set_done(done);
    };
    let config_path = copy_blob(dir, &manifest.config, store, name, &mut on_bytes)?;
    let config_bytes = std::fs::read(&config_path).map_err(io_err("read", &config_path))?;
    let config = ImageConfig::parse(&config_bytes, name)?;
    config.check_platform(name)?;

    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        progress.message(&format!("copying {}", short(&layer.digest)));
        let path = copy_blob(dir, layer, store, name, &mut on_bytes)?;
        layers.push(LayerBlob {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            path,
        });
    }
    Ok(PulledImage {
        source: name.to_owned(),
        manifest_digest: manifest_digest.to_string(),
        config: config.run_config(),
        layers,
        size: manifest.layers.iter().map(|l| l.size).sum(),
    })
}

/// The entry of `index.json` to use: the one named `tag`, or the only one.
fn pick_entry<'a>(
    index: &'a Index,
    tag: Option<&str>,
    name: &str,
) -> Result<&'a Descriptor, OciError> {
    let names = || {
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotation(REF_NAME))
            .collect();
        if names.is_empty() {
            "no named images".to_owned()
        } else {
            names.join(", ")
        }
    };
    let Some(tag) = tag else {
        if let [only] = index.manifests.as_slice() {
            return Ok(only);
        }
        if !index.manifests.is_empty() && index.manifests.iter().all(|d| d.platform.is_some()) {
            // One image for several platforms, listed right in index.json.
            return manifest::select_platform(index, name);
        }
        return Err(OciError::AmbiguousLayout {
            image: name.to_owned(),
            available: names(),
        });
    };
    let matching: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.annotation(REF_NAME) == Some(tag))
        .collect();
    match matching.as_slice() {
        [] => Err(OciError::TagNotFound {
            image: name.to_owned(),
            tag: tag.to_owned(),
            available: names(),
        }),
        [only] => Ok(only),
        // Several platforms under one name: pick ours among them.
        several => {
            let digest = {
                let subset = Index {
                    manifests: several.iter().map(|d| (*d).clone()).collect(),
                };
                manifest::select_platform(&subset, name)?.digest.clone()
            };
            Ok(several
                .iter()
                .find(|d| d.digest == digest)
                .copied()
                .unwrap_or(several[0]))
        }
    }
}

/// Follows `entry` through nested indexes to the linux/amd64 manifest.
fn resolve(
    dir: &Path,
    entry: &Descriptor,
    name: &str,
) -> Result<(manifest::Manifest, super::blobs::Digest), OciError> {
    let mut entry = entry.clone();
    for _ in 0..=MAX_INDEX_DEPTH {
        let digest = entry.digest()?;
        let bytes = read_blob(dir, &entry, name)?;
        let declared = Some(entry.media_type.as_str()).filter(|m| !m.is_empty());
        match manifest::parse_document(&bytes, declared, name, "the manifest")? {
            Document::Manifest(m) => return Ok((m, digest)),
            Document::Index(index) => entry = manifest::select_platform(&index, name)?.clone(),
        }
    }
    Err(malformed(
        name,
        "the index",
        format!("it nests indexes more than {MAX_INDEX_DEPTH} deep"),
    ))
}

fn blob_path(dir: &Path, descriptor: &Descriptor) -> Result<PathBuf, OciError> {
    Ok(dir
        .join("blobs")
        .join("sha256")
        .join(descriptor.digest()?.hex()))
}

fn open_blob(dir: &Path, descriptor: &Descriptor, name: &str) -> Result<(File, PathBuf), OciError> {
    let path = blob_path(dir, descriptor)?;
    match File::open(&path) {
        Ok(f) => Ok((f, path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(malformed(
            name,
            "the layout",
            format!("blob {} is missing", descriptor.digest),
        )),
        Err(e) => Err(io_err("open", &path)(e)),
    }
}

/// A small blob (manifest, index) read into memory and verified.
fn read_blob(dir: &Path, descriptor: &Descriptor, name: &str) -> Result<Vec<u8>, OciError> {
    if descriptor.size > MAX_MANIFEST {
        return Err(malformed(name, "the manifest", "it is larger than 4 MiB"));
    }
    let (file, path) = open_blob(dir, descriptor, name)?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &path))?;
    let mut verifier = Verifier::new(Some(&descriptor.digest()?), Some(descriptor.size));
    verifier.update(&bytes)?;
    verifier.finish()?;
    Ok(bytes)
}

/// Copies a blob into the cache, verified, unless it is there already.
fn copy_blob(
    dir: &Path,
    descriptor: &Descriptor,
    store: &BlobStore,
    name: &str,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<PathBuf, OciError> {
    let digest = descriptor.digest()?;
    if store.contains(&digest) {
        return Ok(store.path(&digest));
    }
    let (mut file, _) = open_blob(dir, descriptor, name)?;
    store.ingest(&mut file, &digest, Some(descriptor.size), on_bytes)
}

/// Reads a file of at most `cap` bytes.
pub(super) fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {cap} bytes"),
        ));
    }
    Ok(bytes)
}
