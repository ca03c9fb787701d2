//! Named volumes: ext4 images the server keeps under `<data>/volumes`,
//! mounted by one sandbox at a time. A sandbox's mounts are part of its
//! row (`volume_mounts`); this table holds each volume's own facts.

use super::db::{DbError, OptionalExt, Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

pub(super) const SCHEMA_9: &str = "
ALTER TABLE sandboxes ADD COLUMN volume_mounts TEXT NOT NULL DEFAULT '[]';
CREATE TABLE volumes (
    name          TEXT PRIMARY KEY,
    volume_id     TEXT NOT NULL UNIQUE,
    token         TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    fs            TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
";

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// E2B's `volumeID`.
    pub volume_id: String,
    /// E2B's volume `token` (for its content routes).
    pub token: String,
    pub size_bytes: u64,
    /// Its file system (`ext4`).
    pub fs: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

/// A volume a sandbox mounts, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub path: String,
}

const COLUMNS: &str = "name, volume_id, token, size_bytes, fs, created_at_ms";

fn read(row: &Row) -> Result<VolumeRecord, DbError> {
    Ok(VolumeRecord {
        name: row.get(0)?,
        volume_id: row.get(1)?,
        token: row.get(2)?,
        size_bytes: u64::try_from(row.get::<i64>(3)?).unwrap_or(0),
        fs: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

impl Store {
    /// Records a new volume (on a cluster node's store, as that node's);
    /// [`StoreError::VolumeExists`] if its name (or id) is taken.
    pub fn insert_volume(&self, volume: &VolumeRecord) -> Result<(), StoreError> {
        let inserted = self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO volumes ({COLUMNS}, node_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    volume.name,
                    volume.volume_id,
                    volume.token,
                    i64::try_from(volume.size_bytes).unwrap_or(i64::MAX),
                    volume.fs,
                    volume.created_at_ms,
                    self.node.clone()
                ],
            )
        });
        match inserted {
            Ok(_) => Ok(()),
            Err(StoreError::Query { source, .. }) if source.is_constraint() => {
                Err(StoreError::VolumeExists(volume.name.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.with(|c| {
            c.query_map(
                &format!("SELECT {COLUMNS} FROM volumes ORDER BY name"),
                params![],
                read,
            )
        })
    }

    /// The volume named or identified by `name_or_id`.
    pub fn volume(&self, name_or_id: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM volumes WHERE name = ?1 OR volume_id = ?1"),
                params![name_or_id],
                read,
            )
            .optional()
        })
    }

    /// Forgets volume `name`; false if there was none.
    pub fn delete_volume(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM volumes WHERE name = ?1", params![name]))
            .map(|n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    store_test! {
    fn volumes_are_kept_by_name_and_id(store) {
        let volume = VolumeRecord {
            name: "data".into(),
            volume_id: "vol-1".into(),
            token: "t".into(),
            size_bytes: 1 << 30,
            fs: "ext4".into(),
            created_at_ms: 7,
        };
        store.insert_volume(&volume).unwrap();
        assert!(matches!(
            store.insert_volume(&volume),
            Err(StoreError::VolumeExists(name)) if name == "data"
        ));
        assert_eq!(store.volume("data").unwrap().as_ref(), Some(&volume));
        assert_eq!(store.volume("vol-1").unwrap().as_ref(), Some(&volume));
        assert_eq!(store.volumes().unwrap(), vec![volume]);
        assert!(store.delete_volume("data").unwrap());
        assert!(!store.delete_volume("data").unwrap());
        assert_eq!(store.volume("data").unwrap(), None);
    }
    }
}
