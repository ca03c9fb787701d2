use std::path::{Path, PathBuf};

/// Where a node keeps its files (DESIGN.md, "Layout on disk").
#[derive(Debug, Clone)]
pub struct Layout {
    data_dir: PathBuf,
    run_dir: PathBuf,
}

impl Layout {
    /// `data_dir` holds kernels, templates and sandboxes (default
    /// `/var/lib/hearth`); `run_dir` holds locks that must not outlive a boot
    /// of the host (default `/run/hearth`).
    pub fn new(data_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            run_dir: run_dir.into(),
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn kernels(&self) -> PathBuf {
        self.data_dir.join("kernels")
    }

    pub fn templates(&self) -> PathBuf {
        self.data_dir.join("templates")
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.data_dir.join("sandboxes")
    }

    /// Named volumes: `<name>/volume.ext4` and `<name>/volume.json`.
    pub fn volumes(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// Build caches (kernel build trees, base OS tarballs).
    pub fn cache(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// Work directories of build VMs, while a build step runs.
    pub fn builds(&self) -> PathBuf {
        self.data_dir.join("builds")
    }

    pub fn build_locks(&self) -> PathBuf {
        self.run_dir.join("builds")
    }

    pub fn slot_locks(&self) -> PathBuf {
        self.run_dir.join("slots")
    }

    pub fn sandbox_locks(&self) -> PathBuf {
        self.run_dir.join("sandboxes")
    }
}
