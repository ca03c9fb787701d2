//! Named volumes: ext4 images under `<data>/volumes/<name>/`, created
//! sparse, kept across sandboxes, mounted by one running or paused sandbox
//! at a time (an ext4 file system is not safe to mount twice), and removed
//! only when none mounts them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use hearth_node::VolumeAttachment;

use crate::error::ApiError;
use crate::manager::now_ms;
use crate::store::{SandboxState, Store, VolumeMount, VolumeRecord};

/// The only file system a volume can have.
pub const FS: &str = "ext4";
/// A volume's size when its creator names none.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest volume: room for an ext4 journal and some files.
pub const MIN_SIZE: u64 = 16 << 20;
/// The most volumes one sandbox mounts.
pub const MAX_MOUNTS: usize = hearth_node::VOLUME_SLOTS;

/// Where a guest may not mount a volume: it would hide what the system
/// needs.
const SYSTEM_PATHS: [&str; 12] = [
    "/", "/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/boot",
    "/run",
];

/// A volume and what uses it.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub record: VolumeRecord,
    /// Host bytes its image holds (it is sparse).
    pub used_bytes: u64,
    /// The running or paused sandbox that mounts it.
    pub mounted_by: Option<String>,
}

pub struct Volumes {
    store: Arc<Store>,
    dir: PathBuf,
    /// Volumes of creates under way (see [`Volumes::reserve`]).
    reserved: Mutex<BTreeSet<String>>,
}

/// Volumes held for a create until its row (which then holds them) is
/// written; released when dropped.
pub struct VolumeReservation<'a> {
    volumes: &'a Volumes,
    names: Vec<String>,
}

impl Drop for VolumeReservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self
            .volumes
            .reserved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for name in &self.names {
            reserved.remove(name);
        }
    }
}

impl Volumes {
    pub fn new(store: Arc<Store>, dir: PathBuf) -> Self {
        Self {
            store,
            dir,
            reserved: Mutex::new(BTreeSet::new()),
        }
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.ext4")
    }

    /// Makes volume `name`: a sparse image of `size` bytes with an empty
    /// ext4 file system whose root belongs to uid and gid 1000 (the
    /// templates' default user). Nothing is left of a failed one.
    pub async fn create(&self, name: &str, size: u64, fs: &str) -> Result<VolumeRecord, ApiError> {
        check_name(name)?;
        if fs != FS {
            return Err(ApiError::bad_request(format!(
                "fs: {fs:?} is not supported; volumes are {FS}"
            )));
        }
        if size < MIN_SIZE {
            return Err(ApiError::bad_request(format!(
                "size: {size} bytes is too small; a volume has at least {} MiB",
                MIN_SIZE >> 20
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let free = free_bytes(&self.dir)?;
        if size > free {
            return Err(ApiError::bad_request(format!(
                "size: {} MiB does not fit: the data directory's file system has {} MiB free",
                size >> 20,
                free >> 20
            )));
        }
        if self.store.volume(name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "a volume named {name} already exists"
            )));
        }
        let volume_dir = self.dir.join(name);
        if let Err(e) = std::fs::create_dir(&volume_dir) {
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                ApiError::conflict(format!("a volume named {name} is being made"))
            } else {
                io_error(&volume_dir)(e)
            });
        }
        let record = VolumeRecord {
            name: name.to_owned(),
            volume_id: format!("vol-{}", hearth_node::random_hex::<8>().map_err(random)?),
            token: hearth_node::random_hex::<16>().map_err(random)?,
            size_bytes: size,
            fs: fs.to_owned(),
            created_at_ms: now_ms(),
        };
        let made = async {
            make_image(&self.image(name), size).await?;
            let meta = serde_json::to_vec_pretty(&record).expect("a record serialises");
            let meta_path = volume_dir.join("volume.json");
            std::fs::write(&meta_path, meta).map_err(io_error(&meta_path))?;
            self.store.insert_volume(&record)?;
            Ok::<_, ApiError>(())
        }
        .await;
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&volume_dir);
            return Err(e);
        }
        tracing::info!(volume = name, size, "volume created");
        Ok(record)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, ApiError> {
        let mounts = self.mounts()?;
        Ok(self
            .store
            .volumes()?
            .into_iter()
            .map(|record| self.info(record, &mounts))
            .collect())
    }

    /// The volume named or identified by `name_or_id`; a 404 if none.
    pub fn get(&self, name_or_id: &str) -> Result<VolumeInfo, ApiError> {
        let record = self
            .store
            .volume(name_or_id)?
            .ok_or_else(|| ApiError::not_found(format!("no volume {name_or_id}")))?;
        Ok(self.info(record, &self.mounts()?))
    }

    /// Removes a volume and its data; a 409 while a sandbox (running or
    /// paused) mounts it or a create is about to.
    pub fn delete(&self, name_or_id: &str) -> Result<(), ApiError> {
        let info = self.get(name_or_id)?;
        let name = &info.record.name;
        let reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sandbox) = &info.mounted_by {
            return Err(ApiError::conflict(format!(
                "volume {name} is mounted by sandbox {sandbox}; kill it first"
            )));
        }
        if reserved.contains(name) {
            return Err(ApiError::conflict(format!(
                "volume {name} is being mounted by a sandbox being created"
            )));
        }
        self.store.delete_volume(name)?;
        let dir = self.dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        tracing::info!(volume = %name, "volume removed");
        Ok(())
    }

    /// Checks `mounts` for a create and holds their volumes until the
    /// reservation drops; what the node attaches, in order. A 400 for a
    /// bad list or an unknown volume, a 409 for a volume in use.
    pub fn reserve(
        &self,
        mounts: &[VolumeMount],
    ) -> Result<(VolumeReservation<'_>, Vec<VolumeAttachment>), ApiError> {
        check_mounts(mounts)?;
        let mut attachments = Vec::new();
        for mount in mounts {
            let Some(record) = self.store.volume(&mount.name)? else {
                return Err(ApiError::bad_request(format!(
                    "volumeMounts: no volume named {:?}; create it first (POST /volumes)",
                    mount.name
                )));
            };
            attachments.push(VolumeAttachment {
                image: self.image(&record.name),
                name: record.name,
                path: mount.path.clone(),
            });
        }
        let in_use = self.mounts()?;
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        for attachment in &attachments {
            let name = &attachment.name;
            if let Some((sandbox, _)) = in_use.iter().find(|(_, m)| &m.name == name) {
                return Err(ApiError::conflict(format!(
                    "volumeMounts: volume {name} is mounted by sandbox {sandbox}; a volume \
                     is mounted by one sandbox at a time"
                )));
            }
            if reserved.contains(name) {
                return Err(ApiError::conflict(format!(
                    "volumeMounts: volume {name} is being mounted by another sandbox being created"
                )));
            }
        }
        let names: Vec<String> = attachments.iter().map(|a| a.name.clone()).collect();
        reserved.extend(names.iter().cloned());
        Ok((
            VolumeReservation {
                volumes: self,
                names,
            },
            attachments,
        ))
    }

    /// `(sandbox, mount)` of every running or paused sandbox.
    fn mounts(&self) -> Result<Vec<(String, VolumeMount)>, ApiError> {
        Ok(self
            .store
            .running_sandboxes()?
            .into_iter()
            .filter(|r| r.state != SandboxState::Killed)
            .flat_map(|r| {
                let id = r.sandbox_id;
                r.volumes.into_iter().map(move |m| (id.clone(), m))
            })
            .collect())
    }

    fn info(&self, record: VolumeRecord, mounts: &[(String, VolumeMount)]) -> VolumeInfo {
        use std::os::unix::fs::MetadataExt;
        let used_bytes =
            std::fs::metadata(self.image(&record.name)).map_or(0, |m| m.blocks() * 512);
        let mounted_by = mounts
            .iter()
            .find(|(_, m)| m.name == record.name)
            .map(|(sandbox, _)| sandbox.clone());
        VolumeInfo {
            record,
            used_bytes,
            mounted_by,
        }
    }
}

/// A 400 unless `name` is 1 to 63 letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "name: {name:?} is not a volume name (1 to 63 letters, digits, '.', '_' and '-', \
             starting with a letter or digit)"
        )))
    }
}

/// A 400 for mounts no guest should get: too many, a path that is not
/// absolute and plain, a system path, a volume or a path given twice.
pub fn check_mounts(mounts: &[VolumeMount]) -> Result<(), ApiError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(ApiError::bad_request(format!(
            "volumeMounts: a sandbox mounts at most {MAX_MOUNTS} volumes"
        )));
    }
    for (i, mount) in mounts.iter().enumerate() {
        let path = mount.path.as_str();
        let plain = path == "/"
            || path.starts_with('/')
                && !path.ends_with('/')
                && path
                    .split('/')
                    .skip(1)
                    .all(|part| !part.is_empty() && part != "." && part != "..")
                && !path.contains('\0');
        if !plain {
            return Err(ApiError::bad_request(format!(
                "volumeMounts: path {path:?} is not an absolute path without `.`, `..` or a \
                 trailing slash"
            )));
        }
        let system = SYSTEM_PATHS.iter().any(|s| {
            path == *s
                || (matches!(*s, "/proc" | "/sys" | "/dev") && path.starts_with(&format!("{s}/")))
        });
        if system {
            return Err(ApiError::bad_request(format!(
                "volumeMounts: path {path} is a system path; mount volumes elsewhere \
                 (like /data or /home/user/data)"
            )));
        }
        if mounts[..i].iter().any(|m| m.name == mount.name) {
            return Err(ApiError::bad_request(format!(
                "volumeMounts: volume {} is given twice",
                mount.name
            )));
        }
        if mounts[..i].iter().any(|m| m.path == mount.path) {
            return Err(ApiError::bad_request(format!(
                "volumeMounts: path {path} is given twice"
            )));
        }
    }
    Ok(())
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024,
/// an optional `i` and `B`), like `10G` or `512MiB`.
pub fn parse_size(text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "size: {text:?} is not a size (like 10G, 512M or a number of bytes)"
        ))
    };
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

async fn make_image(image: &Path, size: u64) -> Result<(), ApiError> {
    let file = std::fs::File::create(image).map_err(io_error(image))?;
    file.set_len(size).map_err(io_error(image))?;
    drop(file);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "root_owner=1000:1000",
            "-L",
            "hearth-volume",
        ])
        .arg(image)
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("cannot run mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::internal(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Result<u64, ApiError> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| ApiError::internal(format!("statvfs {}: {e}", dir.display())))?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{}: {e}", path.display()))
}

fn random(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot draw a random id: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            path: path.into(),
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "10X", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_plain() {
        for good in ["data", "a", "cache-2.v1_x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"x".repeat(64)] {
            let err = check_name(bad).unwrap_err();
            assert!(err.message.starts_with("name: "), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn mounts_that_would_break_a_guest_are_refused() {
        assert!(check_mounts(&[mount("a", "/data"), mount("b", "/home/user/b")]).is_ok());
        for (mounts, said) in [
            (vec![mount("a", "data")], "not an absolute path"),
            (vec![mount("a", "/data/")], "not an absolute path"),
            (vec![mount("a", "/data/../etc")], "not an absolute path"),
            (vec![mount("a", "/")], "system path"),
            (vec![mount("a", "/proc")], "system path"),
            (vec![mount("a", "/dev/shm")], "system path"),
            (vec![mount("a", "/etc")], "system path"),
            (vec![mount("a", "/x"), mount("a", "/y")], "given twice"),
            (vec![mount("a", "/x"), mount("b", "/x")], "given twice"),
            (
                (0..5)
                    .map(|i| mount(&format!("v{i}"), &format!("/v{i}")))
                    .collect(),
                "at most 4",
            ),
        ] {
            let err = check_mounts(&mounts).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with("volumeMounts: "), "{}", err.message);
            assert!(err.message.contains(said), "{mounts:?}: {}", err.message);
        }
    }
}
