//! Removing template builds: old ones after a rebuild, or a whole template.
//! A build stays while any sandbox, running, pooled or paused, was restored
//! from one of its snapshots: its disk overlays that build's files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::sandbox::snapshots_in_use;
use crate::{Layout, NodeError};

/// What [`prune_template`] did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Build ids deleted.
    pub removed: Vec<String>,
    /// Build ids kept because sandboxes use them.
    pub in_use: Vec<String>,
    /// Build ids kept because the caller keeps them (tagged builds).
    pub kept: Vec<String>,
}

/// Template build directories that sandboxes need.
fn builds_in_use(layout: &Layout) -> Result<BTreeSet<PathBuf>, NodeError> {
    Ok(snapshots_in_use(&layout.sandboxes())?
        .into_iter()
        // <templates>/<name>/<build>/snapshots/<key>
        .filter_map(|snapshot| snapshot.parent()?.parent().map(Path::to_owned))
        .collect())
}

/// Deletes the builds of template `name` other than its current one and
/// those in `keep` (the catalog's tagged builds) that no sandbox uses.
pub fn prune_template(
    layout: &Layout,
    name: &str,
    keep: &BTreeSet<String>,
) -> Result<Pruned, NodeError> {
    let current = hearth_image::find_template(&layout.templates(), name)?;
    let in_use = builds_in_use(layout)?;
    let mut pruned = Pruned::default();
    for build in hearth_image::list_templates(&layout.templates())? {
        if build.name != name
            || current
                .as_ref()
                .is_some_and(|c| c.build_id == build.build_id)
        {
            continue;
        }
        if keep.contains(&build.build_id) {
            pruned.kept.push(build.build_id);
            continue;
        }
        if in_use.contains(&build.dir) {
            pruned.in_use.push(build.build_id);
            continue;
        }
        std::fs::remove_dir_all(&build.dir).map_err(NodeError::io(&build.dir))?;
        tracing::info!(
            template = name,
            build = build.build_id,
            "removed an old template build"
        );
        pruned.removed.push(build.build_id);
    }
    Ok(pruned)
}

/// Deletes template `name` and all its builds; refused while any sandbox
/// uses one of them.
pub fn remove_template(layout: &Layout, name: &str) -> Result<(), NodeError> {
    if hearth_image::find_template(&layout.templates(), name)?.is_none() {
        return Err(NodeError::NoTemplate(name.to_owned()));
    }
    let in_use = builds_in_use(layout)?;
    let builds: Vec<_> = hearth_image::list_templates(&layout.templates())?
        .into_iter()
        .filter(|b| b.name == name)
        .collect();
    let used: Vec<String> = builds
        .iter()
        .filter(|b| in_use.contains(&b.dir))
        .map(|b| b.build_id.clone())
        .collect();
    if !used.is_empty() {
        return Err(NodeError::TemplateInUse {
            name: name.to_owned(),
            builds: used.join(", "),
        });
    }
    // Without its `current` link the template is gone for new sandboxes
    // even if a removal below fails half way.
    let name_dir = layout.templates().join(name);
    let link = name_dir.join("current");
    std::fs::remove_file(&link).map_err(NodeError::io(&link))?;
    std::fs::remove_dir_all(&name_dir).map_err(NodeError::io(&name_dir))?;
    Ok(())
}

/// Deletes the build caches (pulled image blobs, image bases, step layers)
/// and returns the bytes freed. Templates keep working: their root file
/// systems are whole files. Refused while a build step runs.
pub fn prune_build_cache(layout: &Layout) -> Result<u64, NodeError> {
    let builds = layout.builds();
    let running = std::fs::read_dir(&builds)
        .map(|entries| entries.count())
        .unwrap_or(0);
    if running > 0 {
        return Err(NodeError::Busy(format!(
            "the build cache ({running} build step(s) running)"
        )));
    }
    let mut freed = 0;
    for name in ["blobs", "images", "layers"] {
        let dir = layout.cache().join(name);
        if !dir.exists() {
            continue;
        }
        freed += disk_usage(&dir);
        std::fs::remove_dir_all(&dir).map_err(NodeError::io(&dir))?;
    }
    Ok(freed)
}

/// Bytes allocated under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            total += meta.blocks() * 512;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A published build of `name` with an empty root filesystem.
    fn build(layout: &Layout, name: &str, id: &str) -> PathBuf {
        let dir = layout.templates().join(name).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rootfs.ext4"), b"").unwrap();
        let meta = serde_json::json!({
            "name": name, "build_id": id, "created_at": 1, "size": 0,
            "init_path": "/usr/sbin/hearth-init", "base_hash": "b", "init_sha256": "i",
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        dir
    }

    /// A sandbox directory restored from a snapshot of `build`.
    fn sandbox_using(layout: &Layout, id: &str, build: &Path) {
        let dir = layout.sandboxes().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let origin = serde_json::json!({
            "template": "base", "snapshot": build.join("snapshots/k"),
            "kernel_path": "/k/vmlinux", "vcpus": 2, "memory_mib": 512,
            "host": { "vmm": "q", "accel": "tcg", "cpu": "max", "tsc_khz": 1 },
        });
        std::fs::write(dir.join("origin.json"), origin.to_string()).unwrap();
    }

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"), dir.path().join("run"));
        (dir, layout)
    }

    #[test]
    fn pruning_keeps_the_current_build_tagged_builds_and_builds_in_use() {
        let (_dir, layout) = layout();
        let old = build(&layout, "base", "old");
        let tagged = build(&layout, "base", "tagged");
        let used = build(&layout, "base", "used");
        let current = build(&layout, "base", "new");
        let other = build(&layout, "other", "x");
        std::os::unix::fs::symlink("new", layout.templates().join("base/current")).unwrap();
        sandbox_using(&layout, "sb1", &used);

        let keep = BTreeSet::from(["tagged".to_owned()]);
        let pruned = prune_template(&layout, "base", &keep).unwrap();
        assert_eq!(pruned.removed, ["old"]);
        assert_eq!(pruned.in_use, ["used"]);
        assert_eq!(pruned.kept, ["tagged"]);
        assert!(!old.exists());
        assert!(used.exists() && current.exists() && other.exists() && tagged.exists());
    }

    #[test]
    fn a_template_in_use_is_not_removed() {
        let (_dir, layout) = layout();
        let used = build(&layout, "base", "b1");
        std::os::unix::fs::symlink("b1", layout.templates().join("base/current")).unwrap();
        sandbox_using(&layout, "sb1", &used);
        let err = remove_template(&layout, "base").unwrap_err();
        assert!(
            matches!(&err, NodeError::TemplateInUse { builds, .. } if builds == "b1"),
            "{err}"
        );
        assert!(used.exists());

        std::fs::remove_dir_all(layout.sandboxes().join("sb1")).unwrap();
        remove_template(&layout, "base").unwrap();
        assert!(!layout.templates().join("base").exists());
        assert!(matches!(
            remove_template(&layout, "base"),
            Err(NodeError::NoTemplate(_))
        ));
    }
}
