//! User-defined file metadata, kept as envd keeps it: extended attributes
//! under `user.e2b.`. An upload sets a file's whole set from its
//! `X-Metadata-<key>: <value>` headers (none clears it), and every entry
//! description reports it, keys without the prefix.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use axum::http::HeaderMap;
use xattr::FileExt;

/// Extended attribute namespace of metadata keys.
const PREFIX: &str = "user.e2b.";
/// Request headers that carry metadata, lowercase as `HeaderMap` keeps names.
const HEADER_PREFIX: &str = "x-metadata-";
/// Longest key: the kernel's 255 bytes per attribute name, less the prefix.
const MAX_KEY_LEN: usize = 255 - PREFIX.len();
/// Most bytes of metadata on one file, counting each key with its prefix and
/// each value: ext4 keeps a file's attributes in one 4 KiB block.
const MAX_TOTAL_LEN: usize = 4096;

/// Metadata for a file, by key.
pub(super) type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum MetadataError {
    #[error("Metadata key '{key}' has {len} bytes; keep keys to {MAX_KEY_LEN}")]
    KeyTooLong { key: String, len: usize },
    #[error(
        "The metadata value of '{key}' has byte {byte:#04x} at offset {offset}; use printable US-ASCII (0x20 to 0x7e)"
    )]
    NotPrintable {
        key: String,
        byte: u8,
        offset: usize,
    },
    #[error(
        "The metadata takes {0} bytes (keys with the '{PREFIX}' prefix, plus values); send at most {MAX_TOTAL_LEN}"
    )]
    TooLarge(usize),
}

/// The metadata an upload's headers set: each `X-Metadata-<key>` header's
/// first value under its lowercase key. Header names are HTTP tokens, so
/// keys need no check beyond their length.
pub(super) fn from_headers(headers: &HeaderMap) -> Result<Metadata, MetadataError> {
    let mut metadata = Metadata::new();
    let mut total = 0;
    for name in headers.keys() {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let Some(value) = headers.get(name) else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        if key.len() > MAX_KEY_LEN {
            return Err(MetadataError::KeyTooLong {
                key: key.to_owned(),
                len: key.len(),
            });
        }
        let bytes = value.as_bytes();
        if let Some(offset) = bytes.iter().position(|b| !(0x20..=0x7e).contains(b)) {
            return Err(MetadataError::NotPrintable {
                key: key.to_owned(),
                byte: bytes[offset],
                offset,
            });
        }
        // Printable ASCII, so valid UTF-8.
        let value = String::from_utf8_lossy(bytes).into_owned();
        total += PREFIX.len() + key.len() + value.len();
        metadata.insert(key.to_owned(), value);
    }
    if total > MAX_TOTAL_LEN {
        return Err(MetadataError::TooLarge(total));
    }
    Ok(metadata)
}

/// Makes `metadata` the whole metadata of `file`: keys it lacks are removed.
pub(super) fn replace(file: &File, metadata: &Metadata) -> io::Result<()> {
    for name in file.list_xattr()? {
        let Some(key) = name.as_bytes().strip_prefix(PREFIX.as_bytes()) else {
            continue;
        };
        let kept = std::str::from_utf8(key).is_ok_and(|key| metadata.contains_key(key));
        if kept {
            continue;
        }
        match file.remove_xattr(&name) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e),
            _ => {}
        }
    }
    for (key, value) in metadata {
        file.set_xattr(format!("{PREFIX}{key}"), value.as_bytes())?;
    }
    Ok(())
}

/// Whether `e` says the file system keeps no extended attributes.
pub(super) fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// The metadata of the file at `path` (of a symlink's target); none where
/// it cannot be read, as envd reports it.
pub(super) fn read(path: &Path) -> HashMap<String, String> {
    match xattr::list_deref(path) {
        Ok(names) => collect(names, |name| xattr::get_deref(path, name)),
        Err(_) => HashMap::new(),
    }
}

/// The metadata of an open file.
pub(super) fn read_open(file: &File) -> HashMap<String, String> {
    match file.list_xattr() {
        Ok(names) => collect(names, |name| file.get_xattr(name)),
        Err(_) => HashMap::new(),
    }
}

/// The metadata among attributes `names`, valued by `get`. An attribute
/// that is not UTF-8 (set inside the sandbox, e.g. with `setfattr`) or
/// vanishes meanwhile is left out.
fn collect(
    names: impl Iterator<Item = OsString>,
    get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
) -> HashMap<String, String> {
    names
        .filter_map(|name| {
            let key = name.to_str()?.strip_prefix(PREFIX)?.to_owned();
            let value = String::from_utf8(get(&name).ok()??).ok()?;
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name: axum::http::HeaderName = name.parse().unwrap();
            map.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn headers_name_lowercase_keys_and_the_first_value_wins() {
        let map = headers(&[
            ("X-Metadata-Author", b"Ann"),
            ("x-metadata-author", b"Bob"),
            ("X-Metadata-Empty", b""),
            ("X-Metadata-", b"no key"),
            ("Content-Type", b"text/plain"),
        ]);
        let metadata = from_headers(&map).unwrap();
        assert_eq!(
            metadata,
            Metadata::from([
                ("author".to_owned(), "Ann".to_owned()),
                ("empty".to_owned(), String::new()),
            ])
        );
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), Metadata::new());
    }

    #[test]
    fn headers_are_checked_as_envd_checks_them() {
        let tab = from_headers(&headers(&[("x-metadata-k", b"a\tb")]));
        assert_eq!(
            tab,
            Err(MetadataError::NotPrintable {
                key: "k".into(),
                byte: b'\t',
                offset: 1
            })
        );
        let high = from_headers(&headers(&[("x-metadata-k", b"caf\xe9")]));
        assert!(matches!(
            high,
            Err(MetadataError::NotPrintable { byte: 0xe9, .. })
        ));

        let longest = "k".repeat(MAX_KEY_LEN);
        let name = format!("x-metadata-{longest}");
        assert!(from_headers(&headers(&[(&name, b"v")])).is_ok());
        let name = format!("x-metadata-{longest}k");
        assert_eq!(
            from_headers(&headers(&[(&name, b"v")])),
            Err(MetadataError::KeyTooLong {
                key: format!("{longest}k"),
                len: MAX_KEY_LEN + 1
            })
        );

        // 4096 bytes exactly: "user.e2b." (9) + "k" (1) + 4086.
        let value = vec![b'v'; MAX_TOTAL_LEN - PREFIX.len() - 1];
        assert!(from_headers(&headers(&[("x-metadata-k", &value)])).is_ok());
        let value = vec![b'v'; MAX_TOTAL_LEN - PREFIX.len()];
        assert_eq!(
            from_headers(&headers(&[("x-metadata-k", &value)])),
            Err(MetadataError::TooLarge(MAX_TOTAL_LEN + 1))
        );
    }

    #[test]
    fn replace_sets_the_whole_set_and_leaves_other_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_xattr("user.other", b"kept").unwrap();
        let first = Metadata::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        replace(&file, &first).unwrap();
        let expected: HashMap<String, String> = first.clone().into_iter().collect();
        assert_eq!(read(&path), expected);
        assert_eq!(read_open(&file), expected);

        replace(&file, &Metadata::from([("b".into(), "3".into())])).unwrap();
        assert_eq!(read(&path), HashMap::from([("b".into(), "3".into())]));
        replace(&file, &Metadata::new()).unwrap();
        assert_eq!(read(&path), HashMap::new());
        assert_eq!(
            file.get_xattr("user.other").unwrap().as_deref(),
            Some(&b"kept"[..])
        );

        // Through a symlink, the target's; nothing for what is not there.
        replace(&file, &first).unwrap();
        std::os::unix::fs::symlink(&path, dir.path().join("l")).unwrap();
        assert_eq!(read(&dir.path().join("l")), expected);
        assert_eq!(read(&dir.path().join("missing")), HashMap::new());
    }
}
