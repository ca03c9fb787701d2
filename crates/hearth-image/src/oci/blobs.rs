//! Digests and the content-addressed blob cache: `<blobs_dir>/sha256/<hex>`
//! holds only blobs whose content was hashed and found to match their name.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::error::{OciError, io_err};

const SHA256_PREFIX: &str = "sha256:";
const COPY_BUFFER: usize = 256 * 1024;

/// A sha256 digest, validated: 64 lower-case hex digits. Only such names
/// ever become file names, so a digest cannot point outside a blob folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`.
    pub(crate) fn parse(s: &str) -> Result<Self, OciError> {
        s.strip_prefix(SHA256_PREFIX)
            .and_then(Self::from_hex)
            .ok_or_else(|| OciError::UnsupportedDigest {
                digest: s.to_owned(),
            })
    }

    /// Accepts exactly 64 lower-case hex digits.
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Self {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex)
    }
}

/// Hashes and counts bytes as they arrive, and checks them against what
/// a descriptor promised.
pub(crate) struct Verifier {
    expected: Option<Digest>,
    size: Option<u64>,
    hasher: Sha256,
    seen: u64,
}

impl Verifier {
    /// `expected` and `size` are checked when given.
    pub(crate) fn new(expected: Option<&Digest>, size: Option<u64>) -> Self {
        Self {
            expected: expected.cloned(),
            size,
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    /// Adds bytes; more bytes than the promised size is an error at once,
    /// so an endless stream cannot fill the disk.
    pub(crate) fn update(&mut self, bytes: &[u8]) -> Result<(), OciError> {
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        if let Some(size) = self.size
            && self.seen > size
        {
            return Err(self.size_error(size));
        }
        self.hasher.update(bytes);
        Ok(())
    }

    fn size_error(&self, size: u64) -> OciError {
        OciError::SizeMismatch {
            digest: self
                .expected
                .as_ref()
                .map_or_else(|| "(unnamed)".to_owned(), ToString::to_string),
            expected: size,
            actual: self.seen,
        }
    }

    /// The digest of everything seen, once it matches what was expected.
    pub(crate) fn finish(self) -> Result<(Digest, u64), OciError> {
        if let Some(size) = self.size
            && self.seen != size
        {
            return Err(self.size_error(size));
        }
        let actual = Digest::from_hasher(self.hasher);
        match self.expected {
            Some(expected) if expected != actual => Err(OciError::DigestMismatch {
                digest: expected.to_string(),
                actual: actual.to_string(),
            }),
            _ => Ok((actual, self.seen)),
        }
    }
}

/// Copies `reader` to `writer` through `verifier`, calling `on_bytes` with
/// each chunk's length.
pub(crate) fn copy_verified(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    verifier: &mut Verifier,
    on_bytes: &mut dyn FnMut(u64),
) -> io::Result<Result<(), OciError>> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = verifier.update(&buf[..n]) {
            return Ok(Err(e));
        }
        writer.write_all(&buf[..n])?;
        on_bytes(n as u64);
    }
}

/// The digest of everything `reader` yields.
pub(crate) fn digest_of(reader: &mut dyn Read) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    io::copy(reader, &mut hasher)?;
    Ok(Digest::from_hasher(hasher))
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Tells by the first bytes of a blob.
    pub(crate) fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// Tells by the first bytes of a file.
    pub(crate) fn sniff_file(path: &Path) -> io::Result<Self> {
        let mut head = Vec::with_capacity(4);
        File::open(path)?.take(4).read_to_end(&mut head)?;
        Ok(Self::sniff(&head))
    }

    /// The OCI layer media type of a tar stream compressed this way.
    pub(crate) fn oci_media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The uncompressed stream of `reader`.
    pub(crate) fn decoder<'a>(self, reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(reader),
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        })
    }
}

/// The blob cache: `<dir>/sha256/<hex>`, plus `<dir>/tmp/` for blobs
/// still being fetched (on the same file system, so they move in by rename).
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Creates the cache's folders if needed.
    pub(crate) fn open(dir: &Path) -> Result<Self, OciError> {
        let store = Self {
            dir: dir.to_owned(),
        };
        for sub in [store.dir.join("sha256"), store.tmp_dir()] {
            fs::create_dir_all(&sub).map_err(io_err("create the blob cache", &sub))?;
        }
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where the blob named `digest` lives once verified.
    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    /// Whether a verified blob named `digest` is already here.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file())
    }

    /// A fresh temporary file, removed again unless committed.
    pub(crate) fn temp(&self) -> Result<TempBlob, OciError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .tmp_dir()
            .join(format!("{}-{n}.partial", std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create a file in the blob cache", &path))?;
        Ok(TempBlob {
            path,
            file: Some(file),
        })
    }

    /// Copies `reader` into the cache, checking `digest` and `size`; the
    /// blob appears under its name only if both match.
    pub(crate) fn ingest(
        &self,
        reader: &mut dyn Read,
        digest: &Digest,
        size: Option<u64>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, OciError> {
        let (temp, actual, _) = self.ingest_unnamed(reader, Some(digest), size, on_bytes)?;
        temp.commit(self, &actual)
    }

    /// Copies `reader` into a temporary file of the cache and hashes it;
    /// the caller decides whether to commit it.
    pub(crate) fn ingest_unnamed(
        &self,
        reader: &mut dyn Read,
        digest: Option<&Digest>,
        size: Option<u64>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(TempBlob, Digest, u64), OciError> {
        let mut temp = self.temp()?;
        let mut verifier = Verifier::new(digest, size);
        let path = temp.path.clone();
        let file = temp.file_mut();
        copy_verified(reader, file, &mut verifier, on_bytes)
            .map_err(io_err("copy a blob into", &path))??;
        let (actual, len) = verifier.finish()?;
        Ok((temp, actual, len))
    }
}

/// A blob being written into the cache's `tmp/`; deleted on drop unless
/// [`TempBlob::commit`]ted.
#[derive(Debug)]
pub(crate) struct TempBlob {
    path: PathBuf,
    file: Option<File>,
}

impl TempBlob {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file_mut(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("a temporary blob keeps its file open until committed")
    }

    /// Moves the blob to its name in `store`; `digest` must be what its
    /// content was verified to hash to.
    pub(crate) fn commit(
        mut self,
        store: &BlobStore,
        digest: &Digest,
    ) -> Result<PathBuf, OciError> {
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_err("write", &self.path))?;
        }
        let dest = store.path(digest);
        fs::rename(&self.path, &dest).map_err(io_err("move a blob into", &dest))?;
        // Renamed: nothing left to delete.
        self.path = PathBuf::new();
        Ok(dest)
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_are_sha256_with_64_lower_hex_digits() {
        assert_eq!(Digest::of(b"").hex(), EMPTY);
        assert_eq!(
            Digest::parse(&format!("sha256:{EMPTY}")).unwrap(),
            Digest::of(b"")
        );
        for bad in [
            "sha512:abcd",
            EMPTY,
            "sha256:../../etc/passwd",
            &format!("sha256:{}", EMPTY.to_uppercase()),
            &format!("sha256:{EMPTY}0"),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(matches!(err, OciError::UnsupportedDigest { .. }), "{bad}");
        }
    }

    #[test]
    fn a_blob_enters_the_cache_only_when_its_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        let path = store
            .ingest(&mut &b"hello"[..], &good, Some(5), &mut |_| {})
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert!(store.contains(&good));

        let claimed = Digest::of(b"other");
        let err = store
            .ingest(&mut &b"hello"[..], &claimed, None, &mut |_| {})
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&claimed.to_string()) && msg.contains(&good.to_string()),
            "{msg}"
        );
        assert!(!store.contains(&claimed));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_blob_longer_than_promised_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello");
        let err = store
            .ingest(&mut &b"hello"[..], &digest, Some(3), &mut |_| {})
            .unwrap_err();
        assert!(matches!(
            err,
            OciError::SizeMismatch {
                expected: 3,
                actual: 5,
                ..
            }
        ));
    }

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
