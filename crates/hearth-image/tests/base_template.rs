//! Builds the real base template (mmdebstrap, mkfs.ext4) as root and checks
//! the image with debugfs and e2fsck.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use hearth_image::{
    ImageFormat, Progress, TemplateOptions, build_base_template, create_overlay, find_template,
};

/// Prints each stage with the time it began, so a run shows where time goes.
struct StageClock {
    started: Instant,
    stages: Mutex<Vec<String>>,
}

impl Progress for StageClock {
    fn stage(&self, name: &str) {
        let line = format!("{:>7.1}s {name}", self.started.elapsed().as_secs_f32());
        eprintln!("{line}");
        self.stages.lock().unwrap().push(name.to_owned());
    }
    fn set_total(&self, _total: u64) {}
    fn set_done(&self, _done: u64) {}
    fn message(&self, _msg: &str) {}
}

/// `(mode, uid)` of `path` inside the ext4 image, from `debugfs stat`.
fn stat_in_image(image: &Path, path: &str) -> (String, u32) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        let words: Vec<&str> = text.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("{path}: {text}"));
        words[at + 1].to_owned()
    };
    (field("Mode:"), field("User:").parse().unwrap())
}

#[test]
#[ignore = "needs root, network and ~2 minutes: run with --include-ignored"]
fn base_template_builds_once_and_boots_from_a_checked_image() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("hearth-init");
    std::fs::copy("/bin/true", &init).unwrap();
    let opts = TemplateOptions {
        templates_dir: dir.path().join("templates"),
        cache_dir: dir.path().join("cache"),
        init_binary: init,
    };
    let clock = StageClock {
        started: Instant::now(),
        stages: Mutex::default(),
    };
    let template = build_base_template(&opts, &clock).unwrap();
    eprintln!(
        "{:>7.1}s done: {} bytes",
        clock.started.elapsed().as_secs_f32(),
        template.size
    );
    assert_eq!(
        *clock.stages.lock().unwrap(),
        ["bootstrapping", "unpacking", "formatting", "checking"]
    );
    assert_eq!(template.init_path, "/usr/sbin/hearth-init");
    assert_eq!(template.rootfs, template.dir.join("rootfs.ext4"));
    assert_eq!(
        std::fs::metadata(&template.rootfs).unwrap().len(),
        template.size
    );

    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&template.rootfs)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert_eq!(
        stat_in_image(&template.rootfs, "/usr/sbin/hearth-init"),
        ("0755".into(), 0)
    );
    assert_eq!(stat_in_image(&template.rootfs, "/home/user").1, 1000);
    assert_eq!(
        stat_in_image(&template.rootfs, "/usr/bin/sudo"),
        ("04755".into(), 0)
    );
    assert_eq!(
        stat_in_image(&template.rootfs, "/etc/sudoers.d/user"),
        ("0440".into(), 0)
    );
    let alias = Command::new("debugfs")
        .args(["-R", "stat /usr/local/sbin/reboot"])
        .arg(&template.rootfs)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&alias.stdout)
            .contains("Fast link dest: \"/usr/sbin/hearth-init\"")
    );

    let again = Instant::now();
    let second = build_base_template(&opts, &clock).unwrap();
    assert_eq!(second, template);
    assert!(
        again.elapsed().as_secs() < 2,
        "a cached build took {:?}",
        again.elapsed()
    );
    assert_eq!(
        find_template(&opts.templates_dir, "base").unwrap(),
        Some(template.clone())
    );

    let overlay = dir.path().join("disk.qcow2");
    create_overlay(&template.rootfs, ImageFormat::Raw, &overlay).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], template.rootfs.to_str().unwrap());
    assert_eq!(info["virtual-size"], template.size);
}
