//! `hearth-init unpack`: how a template build's `COPY` step lands in the
//! guest. The host uploads a tar of the files (named by their paths under
//! `--dest`) and runs this inside the build VM as root, so the files get the
//! guest's own users and groups, whatever the image's tools.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::passwd::{self, PasswdError};

/// What `hearth-init unpack` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnpackArgs {
    /// Created with its parents if missing; the archive unpacks under it.
    pub(crate) dest: PathBuf,
    /// `USER[:GROUP]`, names or numbers, given to every entry of the
    /// archive (not to `dest`); without it the archive's owners.
    pub(crate) owner: Option<String>,
    /// The tar to unpack, deleted afterwards; without it only `dest` is made.
    pub(crate) file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("Cannot create {}", .0.display())]
    Dest(PathBuf, #[source] io::Error),
    #[error("Cannot read the archive {}", .0.display())]
    Archive(PathBuf, #[source] io::Error),
    #[error("Cannot unpack {}", .0.display())]
    Entry(PathBuf, #[source] io::Error),
    #[error("The archive entry {} would land outside {}", .0.display(), .1.display())]
    Outside(PathBuf, PathBuf),
    #[error("Cannot change the owner of {}", .0.display())]
    Chown(PathBuf, #[source] nix::Error),
    #[error(transparent)]
    Passwd(#[from] PasswdError),
    #[error("Group '{0}' does not exist in /etc/group")]
    UnknownGroup(String),
}

/// Unpacks as asked; `etc` holds passwd and group (normally `/etc`).
pub(crate) fn run(args: &UnpackArgs, etc: &Path) -> Result<(), UnpackError> {
    let owner = args
        .owner
        .as_deref()
        .map(|spec| resolve_owner(etc, spec))
        .transpose()?;
    fs::create_dir_all(&args.dest).map_err(|e| UnpackError::Dest(args.dest.clone(), e))?;
    let Some(file) = &args.file else {
        return Ok(());
    };
    let tar = File::open(file).map_err(|e| UnpackError::Archive(file.clone(), e))?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owner.is_none());
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Archive(file.clone(), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Archive(file.clone(), e))?;
        let name = entry
            .path()
            .map_err(|e| UnpackError::Archive(file.clone(), e))?
            .into_owned();
        let target = args.dest.join(&name);
        let inside = entry
            .unpack_in(&args.dest)
            .map_err(|e| UnpackError::Entry(target.clone(), e))?;
        if !inside {
            return Err(UnpackError::Outside(name, args.dest.clone()));
        }
        if let Some((uid, gid)) = owner {
            chown(&target, uid, gid)?;
        }
    }
    // The archive sits in the guest's /tmp; it has done its job.
    let _ = fs::remove_file(file);
    Ok(())
}

/// `USER[:GROUP]` to numbers. Without a group, the gid is the uid, as
/// Docker's `--chown` does.
fn resolve_owner(etc: &Path, spec: &str) -> Result<(u32, u32), UnpackError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let uid = match user.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => passwd::lookup_user(etc, user)?.uid,
    };
    let gid = match group {
        None => uid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => passwd::lookup_group(etc, group)?
                .ok_or_else(|| UnpackError::UnknownGroup(group.to_owned()))?,
        },
    };
    Ok((uid, gid))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), UnpackError> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| UnpackError::Chown(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn etc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(dir.path().join("group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        dir
    }

    #[test]
    fn owners_resolve_by_name_or_number() {
        let etc = etc();
        assert_eq!(resolve_owner(etc.path(), "app").unwrap(), (1234, 1234));
        assert_eq!(resolve_owner(etc.path(), "app:staff").unwrap(), (1234, 50));
        assert_eq!(resolve_owner(etc.path(), "7:8").unwrap(), (7, 8));
        assert!(matches!(
            resolve_owner(etc.path(), "app:nogroup"),
            Err(UnpackError::UnknownGroup(g)) if g == "nogroup"
        ));
        assert!(resolve_owner(etc.path(), "ghost").is_err());
    }

    fn archive(dir: &Path) -> PathBuf {
        let path = dir.join("files.tar");
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        let header = |mode, size| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(mode);
            header.set_size(size);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header
        };
        let mut dir = header(0o750, 0);
        dir.set_entry_type(tar::EntryType::Directory);
        builder.append_data(&mut dir, "app/", io::empty()).unwrap();
        builder
            .append_data(&mut header(0o741, 5), "app/run.sh", &b"hello"[..])
            .unwrap();
        builder.finish().unwrap();
        path
    }

    #[test]
    fn unpacks_under_dest_with_modes_and_removes_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let file = archive(dir.path());
        let dest = dir.path().join("root/srv");
        let args = UnpackArgs {
            dest: dest.clone(),
            owner: None,
            file: Some(file.clone()),
        };
        run(&args, etc().path()).unwrap();
        assert_eq!(fs::read(dest.join("app/run.sh")).unwrap(), b"hello");
        let mode = fs::metadata(dest.join("app/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o741);
        assert!(!file.exists());
    }

    #[test]
    fn without_an_archive_only_the_directory_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/c");
        let args = UnpackArgs {
            dest: dest.clone(),
            owner: None,
            file: None,
        };
        run(&args, etc().path()).unwrap();
        assert!(dest.is_dir());
    }

    #[test]
    #[ignore = "needs root (chown)"]
    fn an_owner_is_applied_to_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = archive(dir.path());
        let dest = dir.path().join("srv");
        let args = UnpackArgs {
            dest: dest.clone(),
            owner: Some("app:staff".into()),
            file: Some(file),
        };
        run(&args, etc().path()).unwrap();
        for path in [dest.join("app"), dest.join("app/run.sh")] {
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1234, 50), "{}", path.display());
        }
    }
}
