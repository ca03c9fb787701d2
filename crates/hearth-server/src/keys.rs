//! API keys: their format, their hash, and the key made on first start.
//!
//! A key is `e2b_` followed by 40 lowercase hex characters, the shape E2B
//! issues and its SDKs send in `X-API-Key`. The store keeps only the
//! SHA-256 of a key and a short display prefix; the plaintext is shown once,
//! when the key is made.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// What every key starts with.
pub const KEY_PREFIX: &str = "e2b_";

/// Random bytes in a key: 20 bytes are the 40 hex characters after `e2b_`.
const KEY_BYTES: usize = 20;

/// Hex characters after `e2b_` kept as a key's display prefix.
const DISPLAY_CHARS: usize = 8;

/// The name of the key [`ensure_first_key`] makes.
pub const FIRST_KEY_NAME: &str = "default";

/// Errors of the first-key bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the API key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The SHA-256 of a key as 64 lowercase hex characters: what the store
/// keeps and looks keys up by.
pub fn hash_key(plaintext: &str) -> String {
    format!("{:x}", Sha256::digest(plaintext.as_bytes()))
}

/// A new random key, `e2b_` and 40 lowercase hex characters.
pub(crate) fn new_key() -> io::Result<String> {
    Ok(format!("{KEY_PREFIX}{}", random_hex::<KEY_BYTES>()?))
}

/// What a key is shown as once made: `e2b_` and its next 8 characters.
pub(crate) fn display_prefix(plaintext: &str) -> String {
    plaintext
        .chars()
        .take(KEY_PREFIX.len() + DISPLAY_CHARS)
        .collect()
}

/// Characters at the end of a key kept to show it (E2B's mask).
const SUFFIX_CHARS: usize = 4;

/// A key's last 4 characters, which E2B's mask of it shows.
pub(crate) fn display_suffix(plaintext: &str) -> String {
    let skip = plaintext.chars().count().saturating_sub(SUFFIX_CHARS);
    plaintext.chars().skip(skip).collect()
}

pub(crate) use hearth_node::random_hex;

/// Makes the first API key if the store has no active one.
///
/// The key is named [`FIRST_KEY_NAME`], and its plaintext is written to
/// `key_file` (mode 0600, parent directories created, replaced atomically)
/// and returned so the caller can print it once. Returns `None`, touching
/// nothing, when an active key already exists.
pub fn ensure_first_key(store: &Store, key_file: &Path) -> Result<Option<String>, KeysError> {
    if store.count_active_keys()? > 0 {
        return Ok(None);
    }
    let (info, plaintext) = store.create_key(FIRST_KEY_NAME)?;
    if let Err(err) = write_private(key_file, &plaintext) {
        // Nobody could ever use a key whose plaintext is lost; drop it so
        // the next start makes a fresh one.
        store.delete_key(&info.id)?;
        return Err(err);
    }
    Ok(Some(plaintext))
}

/// Writes `contents` and a newline to `path` with mode 0600 via a temporary
/// file in the same directory and a rename, so readers never see a partial
/// key.
fn write_private(path: &Path, contents: &str) -> Result<(), KeysError> {
    let fail = |source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(fail)?;
    let name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A crash may have left one behind; it holds nothing worth keeping.
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(fail(err)),
        _ => {}
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail(err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_have_the_e2b_shape_and_differ() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        let hex = a.strip_prefix("e2b_").unwrap();
        assert_eq!(hex.len(), 40);
        assert!(
            hex.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_eq!(display_prefix(&a), a[..12]);
        assert_eq!(random_hex::<6>().unwrap().len(), 12);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn first_key_is_made_once_and_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hearth.db")).unwrap();
        let key_file = dir.path().join("etc/hearth/api-key");

        let key = ensure_first_key(&store, &key_file).unwrap().unwrap();
        assert_eq!(fs::read_to_string(&key_file).unwrap(), format!("{key}\n"));
        assert_eq!(mode(&key_file), 0o600);
        let info = store.check_key(&key).unwrap().unwrap();
        assert_eq!(info.name, FIRST_KEY_NAME);
        assert_eq!(
            fs::read_dir(key_file.parent().unwrap()).unwrap().count(),
            1,
            "the temporary file is gone"
        );

        assert_eq!(ensure_first_key(&store, &key_file).unwrap(), None);
        assert_eq!(fs::read_to_string(&key_file).unwrap(), format!("{key}\n"));
        assert_eq!(store.list_keys().unwrap().len(), 1);
    }

    #[test]
    fn first_key_is_made_again_once_all_are_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hearth.db")).unwrap();
        let key_file = dir.path().join("api-key");
        let first = ensure_first_key(&store, &key_file).unwrap().unwrap();
        let id = store.check_key(&first).unwrap().unwrap().id;
        assert!(store.revoke_key(&id).unwrap());

        let second = ensure_first_key(&store, &key_file).unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(
            fs::read_to_string(&key_file).unwrap(),
            format!("{second}\n")
        );
        assert_eq!(store.count_active_keys().unwrap(), 1);
    }

    #[test]
    fn an_unwritable_key_file_leaves_no_key_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hearth.db")).unwrap();
        // A regular file where the parent directory should be.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "").unwrap();

        let err = ensure_first_key(&store, &blocker.join("api-key")).unwrap_err();
        assert!(matches!(err, KeysError::Write { .. }), "{err}");
        assert!(store.list_keys().unwrap().is_empty());
    }
}
