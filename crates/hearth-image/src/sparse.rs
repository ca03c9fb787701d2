//! Sparse files sent whole: their data regions only, and a digest of the
//! whole content.
//!
//! A template's root filesystem is mostly holes (the free space left for
//! the sandbox's writes). [`SparseReader`] encodes the data regions as a
//! stream of records; [`SparseWriter`] writes them back at their offsets,
//! leaving holes holes, and hashes what it writes as it goes, so the copy
//! is checked without reading it again. The digest is the SHA-256 of the
//! file's logical content (holes read as zeros), which `sha256sum` gives
//! too.
//!
//! A record is the offset (8 bytes, big-endian), the length (4 bytes,
//! big-endian) and that many bytes of data. Records come in order of
//! offset and do not overlap; the file's size travels on its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::tool::hex;

/// The most data one record carries.
pub const RECORD_DATA: usize = 1 << 20;
const HEADER: usize = 12;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A file's size and the SHA-256 of its content, as hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

/// The data regions of `file` as `(start, end)` byte ranges, in order
/// (`SEEK_DATA`, `SEEK_HOLE`).
pub fn data_regions(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = i64::try_from(file.metadata()?.len()).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    while pos < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // Only a hole remains.
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let to_u64 = |n: i64| u64::try_from(n).map_err(|_| io::ErrorKind::InvalidData);
        regions.push((to_u64(data)?, to_u64(hole.min(len))?));
        pos = hole;
    }
    Ok(regions)
}

/// Feeds `n` zero bytes to `hasher`.
fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    while n > 0 {
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(ZEROS.len());
        hasher.update(&ZEROS[..take]);
        n -= take as u64;
    }
}

/// The size and SHA-256 of the file at `path`; its holes are hashed as
/// zeros without being read.
pub fn digest(path: &std::path::Path) -> io::Result<FileDigest> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0; RECORD_DATA];
    let mut pos = 0;
    for (start, end) in data_regions(&file)? {
        hash_zeros(&mut hasher, start - pos);
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            file.read_exact_at(&mut buf[..want], at)?;
            hasher.update(&buf[..want]);
            at += want as u64;
        }
        pos = end;
    }
    hash_zeros(&mut hasher, size - pos);
    Ok(FileDigest {
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// The records of a file's data regions, one at a time.
pub struct SparseReader {
    file: File,
    regions: std::vec::IntoIter<(u64, u64)>,
    current: Option<(u64, u64)>,
}

impl SparseReader {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let regions = data_regions(&file)?.into_iter();
        Ok(Self {
            file,
            regions,
            current: None,
        })
    }

    /// The next record, or `None` after the last.
    pub fn next_record(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (at, end) = match self.current.take() {
            Some(region) => region,
            None => match self.regions.next() {
                Some(region) => region,
                None => return Ok(None),
            },
        };
        let len = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(RECORD_DATA);
        let mut record = Vec::with_capacity(HEADER + len);
        record.extend_from_slice(&at.to_be_bytes());
        record.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        record.resize(HEADER + len, 0);
        self.file.read_exact_at(&mut record[HEADER..], at)?;
        let next = at + len as u64;
        if next < end {
            self.current = Some((next, end));
        }
        Ok(Some(record))
    }
}

/// Writes a stream of records into a file of a known size, checking that
/// they stay in order and within it.
pub struct SparseWriter {
    file: File,
    size: u64,
    /// Where the last record ended: nothing may be written before it.
    pos: u64,
    hasher: Sha256,
    /// Bytes of a record not complete yet.
    pending: Vec<u8>,
}

impl SparseWriter {
    /// Writes into `file` (empty), which will be `size` bytes long.
    pub fn new(file: File, size: u64) -> io::Result<Self> {
        file.set_len(0)?;
        Ok(Self {
            file,
            size,
            pos: 0,
            hasher: Sha256::new(),
            pending: Vec::new(),
        })
    }

    /// Takes the next bytes of the stream, however it was cut.
    pub fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let need = match self.header() {
                Some((_, len)) => HEADER + len,
                None => HEADER,
            };
            let take = (need - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let Some((at, len)) = self.header() else {
                continue;
            };
            if self.pending.len() == HEADER {
                self.check(at, len)?;
            }
            if self.pending.len() == HEADER + len {
                self.write(at)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// The offset and length of the record being read, once its header is.
    fn header(&self) -> Option<(u64, usize)> {
        let header: &[u8; HEADER] = self.pending.get(..HEADER)?.try_into().ok()?;
        let at = u64::from_be_bytes(header[..8].try_into().ok()?);
        let len = u32::from_be_bytes(header[8..].try_into().ok()?);
        Some((at, len as usize))
    }

    /// Refuses a record, by its header, that is too long, out of order or
    /// past the end.
    fn check(&self, at: u64, len: usize) -> io::Result<()> {
        let bad = |what: String| Err(io::Error::new(io::ErrorKind::InvalidData, what));
        if len > RECORD_DATA {
            return bad(format!("a record of {len} bytes is too long"));
        }
        if at < self.pos {
            return bad(format!(
                "a record at {at} overlaps or precedes the one before (which ended at {})",
                self.pos
            ));
        }
        if at.saturating_add(len as u64) > self.size {
            return bad(format!(
                "a record ends at {}, past the file's {} bytes",
                at.saturating_add(len as u64),
                self.size
            ));
        }
        Ok(())
    }

    /// Writes the complete record in `pending`, which starts at `at`.
    fn write(&mut self, at: u64) -> io::Result<()> {
        let data = &self.pending[HEADER..];
        self.file.write_all_at(data, at)?;
        hash_zeros(&mut self.hasher, at - self.pos);
        self.hasher.update(data);
        self.pos = at + data.len() as u64;
        Ok(())
    }

    /// Ends the stream: gives the file its size and returns its digest.
    pub fn finish(mut self) -> io::Result<FileDigest> {
        if !self.pending.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a record",
            ));
        }
        self.file.set_len(self.size)?;
        self.file.sync_all()?;
        hash_zeros(&mut self.hasher, self.size - self.pos);
        Ok(FileDigest {
            size: self.size,
            sha256: hex(&self.hasher.finalize()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn read_all(mut reader: impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        out
    }

    /// Sends everything `reader` has to `writer`, in pieces of `piece`
    /// bytes.
    fn copy_stream(reader: &mut SparseReader, writer: &mut SparseWriter, piece: usize) {
        while let Some(record) = reader.next_record().unwrap() {
            for chunk in record.chunks(piece) {
                writer.push(chunk).unwrap();
            }
        }
    }

    /// A 40 MiB file with data at 0, in the middle (crossing a record
    /// boundary) and at the very end; the rest holes.
    fn sparse_file(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("src.img");
        let file = File::create(&path).unwrap();
        file.set_len(40 << 20).unwrap();
        file.write_all_at(b"start", 0).unwrap();
        let middle: Vec<u8> = (0..3 * RECORD_DATA + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        file.write_all_at(&middle, 10 << 20).unwrap();
        file.write_all_at(b"end", (40 << 20) - 3).unwrap();
        path
    }

    fn plain_sha256(path: &std::path::Path) -> String {
        hex(&Sha256::digest(read_all(File::open(path).unwrap())))
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = sparse_file(dir.path());
        let digest = digest(&path).unwrap();
        assert_eq!(digest.size, 40 << 20);
        assert_eq!(digest.sha256, plain_sha256(&path));
        // An empty file, and one that is all hole.
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert_eq!(digest_of(&empty), plain_sha256(&empty));
        let hole = dir.path().join("hole");
        File::create(&hole).unwrap().set_len(3 << 20).unwrap();
        assert_eq!(digest_of(&hole), plain_sha256(&hole));
    }

    fn digest_of(path: &std::path::Path) -> String {
        digest(path).unwrap().sha256
    }

    #[test]
    fn a_copy_through_records_keeps_content_holes_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_file(dir.path());
        let expected = digest(&src).unwrap();
        // Pieces that cut records anywhere, as a network does.
        for piece in [1 << 16, 7, RECORD_DATA + HEADER] {
            let dst = dir.path().join("dst.img");
            let mut reader = SparseReader::open(&src).unwrap();
            let mut writer = SparseWriter::new(File::create(&dst).unwrap(), expected.size).unwrap();
            copy_stream(&mut reader, &mut writer, piece);
            assert_eq!(writer.finish().unwrap(), expected, "pieces of {piece}");
            assert_eq!(plain_sha256(&dst), expected.sha256);
            let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
            assert!(allocated < 8 << 20, "holes stay holes: {allocated} bytes");
        }
    }

    fn record(at: u64, data: &[u8]) -> Vec<u8> {
        let mut r = at.to_be_bytes().to_vec();
        r.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn bad_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let new = |size| SparseWriter::new(File::create(dir.path().join("f")).unwrap(), size);
        // Out of order.
        let mut w = new(100).unwrap();
        w.push(&record(50, b"abc")).unwrap();
        let e = w.push(&record(10, b"abc")).unwrap_err();
        assert!(e.to_string().contains("precedes"), "{e}");
        // Overlapping.
        let mut w = new(100).unwrap();
        w.push(&record(50, b"abc")).unwrap();
        assert!(w.push(&record(52, b"x")).is_err());
        // Past the end.
        let mut w = new(100).unwrap();
        let e = w.push(&record(98, b"abc")).unwrap_err();
        assert!(e.to_string().contains("past the file"), "{e}");
        // Cut short.
        let mut w = new(100).unwrap();
        let r = record(0, b"abcdef");
        w.push(&r[..r.len() - 1]).unwrap();
        assert_eq!(w.finish().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // A record longer than any reader makes.
        let mut w = new(u64::MAX).unwrap();
        let mut header = 0u64.to_be_bytes().to_vec();
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(w.push(&header).is_err());
    }
}
