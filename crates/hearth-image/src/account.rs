//! The account `user` that the SDKs run commands as, added to any image's
//! `/etc/passwd`, `/etc/group` and `/etc/shadow` as `useradd` would.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NAME: &str = "user";
const HOME: &str = "home/user";
const FIRST_UID: u32 = 1000;
const SUDOERS: &str = "user ALL=(ALL:ALL) NOPASSWD: ALL\n";

/// Adds `user` to the tree at `root` unless an account of that name exists:
/// uid and gid 1000 or the first free ones above, home `/home/user`, bash
/// as its shell where the image has it, passwordless sudo where it has sudo.
pub(crate) fn ensure_user(root: &Path) -> io::Result<()> {
    let etc = root.join("etc");
    let passwd = read_or_empty(&etc.join("passwd"))?;
    if names(&passwd).any(|n| n == NAME) {
        return Ok(());
    }
    let mut passwd = passwd;
    if !names(&passwd).any(|n| n == "root") {
        passwd.insert_str(0, "root:x:0:0:root:/root:/bin/sh\n");
    }
    let group = read_or_empty(&etc.join("group"))?;
    let mut group = group;
    if !names(&group).any(|n| n == "root") {
        group.insert_str(0, "root:x:0:\n");
    }
    let uid = first_free(&passwd, 2);
    let gid = match group_gid(&group, NAME) {
        Some(gid) => gid,
        None => {
            let gid = first_free(&group, 2);
            push_line(&mut group, &format!("{NAME}:x:{gid}:"));
            gid
        }
    };
    let shell = if root.join("bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    push_line(
        &mut passwd,
        &format!("{NAME}:x:{uid}:{gid}::/{HOME}:{shell}"),
    );
    fs::write(etc.join("passwd"), passwd)?;
    fs::write(etc.join("group"), group)?;
    let shadow_path = etc.join("shadow");
    if shadow_path.exists() {
        let mut shadow = fs::read_to_string(&shadow_path)?;
        push_line(&mut shadow, &format!("{NAME}:*:19000:0:99999:7:::"));
        fs::write(&shadow_path, shadow)?;
    }
    let home = root.join(HOME);
    fs::create_dir_all(&home)?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o750))?;
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(
            &home,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(io::Error::from)?;
    }
    if root.join("usr/bin/sudo").exists() {
        let dir = etc.join("sudoers.d");
        fs::create_dir_all(&dir)?;
        let file = dir.join(NAME);
        fs::write(&file, SUDOERS)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o440))?;
    }
    Ok(())
}

fn read_or_empty(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        other => other,
    }
}

/// The first field of each line of a passwd or group file.
fn names(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| l.split(':').next())
}

fn group_gid(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

/// The first id from 1000 up that no line uses in field `field`.
fn first_free(text: &str, field: usize) -> u32 {
    let used: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect();
    (FIRST_UID..)
        .find(|id| !used.contains(id))
        .unwrap_or(FIRST_UID)
}

fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn adds_user_1000_with_a_home_and_sudo_where_there_is_sudo() {
        let dir = tree("root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n");
        fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        fs::write(dir.path().join("usr/bin/sudo"), b"").unwrap();
        fs::write(dir.path().join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        ensure_user(dir.path()).unwrap();
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(
            passwd.ends_with("user:x:1000:1000::/home/user:/bin/sh\n"),
            "{passwd}"
        );
        let group = fs::read_to_string(dir.path().join("etc/group")).unwrap();
        assert!(group.ends_with("user:x:1000:\n"), "{group}");
        let shadow = fs::read_to_string(dir.path().join("etc/shadow")).unwrap();
        assert!(shadow.contains("\nuser:*:"), "{shadow}");
        assert!(dir.path().join("home/user").is_dir());
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/sudoers.d/user")).unwrap(),
            SUDOERS
        );
        // A second call changes nothing.
        ensure_user(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/passwd")).unwrap(),
            passwd
        );
    }

    #[test]
    fn takes_the_next_free_ids_when_1000_is_used() {
        let dir = tree(
            "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n",
            "root:x:0:\nnode:x:1000:\n",
        );
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/bash"), b"").unwrap();
        ensure_user(dir.path()).unwrap();
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(
            passwd.ends_with("user:x:1001:1001::/home/user:/bin/bash\n"),
            "{passwd}"
        );
        assert!(!dir.path().join("etc/sudoers.d").exists());
    }

    #[test]
    fn an_image_without_passwd_gets_root_and_user() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        ensure_user(dir.path()).unwrap();
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
        );
    }
}
