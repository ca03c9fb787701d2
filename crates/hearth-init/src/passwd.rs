//! Users and groups from /etc/passwd and /etc/group, parsed directly: the
//! binary is static, so glibc's NSS lookups are unavailable.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A user to run processes as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
    pub(crate) shell: String,
    /// Supplementary groups, the primary group included.
    pub(crate) groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswdError {
    #[error("Cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("User '{0}' does not exist in /etc/passwd")]
    UnknownUser(String),
    #[error("No user with uid {0} in /etc/passwd")]
    UnknownUid(u32),
}

/// The user called `name`, with the files under `etc` (normally `/etc`).
pub(crate) fn lookup_user(etc: &Path, name: &str) -> Result<User, PasswdError> {
    let passwd = read(&etc.join("passwd"))?;
    let entry = parse_passwd(&passwd)
        .find(|e| e.name == name)
        .ok_or_else(|| PasswdError::UnknownUser(name.to_owned()))?;
    finish(etc, entry)
}

/// The first user with uid `uid`.
pub(crate) fn lookup_uid(etc: &Path, uid: u32) -> Result<User, PasswdError> {
    let passwd = read(&etc.join("passwd"))?;
    let entry = parse_passwd(&passwd)
        .find(|e| e.uid == uid)
        .ok_or(PasswdError::UnknownUid(uid))?;
    finish(etc, entry)
}

/// The gid of group `name` in `etc/group`.
pub(crate) fn lookup_group(etc: &Path, name: &str) -> Result<Option<u32>, PasswdError> {
    let group = read(&etc.join("group"))?;
    Ok(parse_group(&group).find(|g| g.name == name).map(|g| g.gid))
}

/// User and group names by id, from `etc/passwd` and `etc/group`; a file
/// that cannot be read names nobody. The first line for an id wins, as
/// `getpwuid` and `getgrgid` do.
pub(crate) fn names_by_id(etc: &Path) -> (HashMap<u32, String>, HashMap<u32, String>) {
    let text = |file: &str| fs::read_to_string(etc.join(file)).unwrap_or_default();
    let mut users = HashMap::new();
    for e in parse_passwd(&text("passwd")) {
        users.entry(e.uid).or_insert_with(|| e.name.to_owned());
    }
    let mut groups = HashMap::new();
    for g in parse_group(&text("group")) {
        groups.entry(g.gid).or_insert_with(|| g.name.to_owned());
    }
    (users, groups)
}

fn finish(etc: &Path, entry: PasswdEntry<'_>) -> Result<User, PasswdError> {
    // A missing /etc/group only costs the supplementary groups.
    let group = match fs::read_to_string(etc.join("group")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(PasswdError::Read {
                path: etc.join("group"),
                source,
            });
        }
    };
    Ok(User {
        name: entry.name.to_owned(),
        uid: entry.uid,
        gid: entry.gid,
        home: PathBuf::from(entry.home),
        shell: entry.shell.to_owned(),
        groups: supplementary_groups(&group, entry.name, entry.gid),
    })
}

fn read(path: &Path) -> Result<String, PasswdError> {
    fs::read_to_string(path).map_err(|source| PasswdError::Read {
        path: path.to_owned(),
        source,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
    shell: &'a str,
}

/// Well-formed lines of a passwd file; comments and broken lines are skipped.
fn parse_passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _pw, uid, gid, _gecos, home, shell] = f.as_slice() else {
                return None;
            };
            Some(PasswdEntry {
                name,
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home,
                shell,
            })
        })
}

#[derive(Debug, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    /// Comma-separated user names.
    members: &'a str,
}

/// Well-formed lines of a group file; comments and broken lines are skipped.
fn parse_group(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _pw, gid, members] = f.as_slice() else {
                return None;
            };
            Some(GroupEntry {
                name,
                gid: gid.parse().ok()?,
                members,
            })
        })
}

/// The primary group plus every group whose member list names `user`.
fn supplementary_groups(group: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut gids = vec![primary];
    for g in parse_group(group) {
        if g.members.split(',').any(|m| m == user) && !gids.contains(&g.gid) {
            gids.push(g.gid);
        }
    }
    gids
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        user:x:1000:1000:,,,:/home/user:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:user\nusers:x:100:alice,user\n\
        user:x:1000:\nbad:x:zz:user\nother:x:5:alice\n";

    #[test]
    fn parses_passwd_lines() {
        let entries: Vec<_> = parse_passwd(PASSWD).collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[2],
            PasswdEntry {
                name: "user",
                uid: 1000,
                gid: 1000,
                home: "/home/user",
                shell: "/bin/bash"
            }
        );
    }

    #[test]
    fn names_users_and_groups_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (users, groups) = names_by_id(dir.path());
        assert!(users.is_empty() && groups.is_empty());
        fs::write(
            dir.path().join("passwd"),
            format!("{PASSWD}shadow:x:0:0::/:/bin/sh\n"),
        )
        .unwrap();
        fs::write(dir.path().join("group"), GROUP).unwrap();
        let (users, groups) = names_by_id(dir.path());
        assert_eq!(users.len(), 3);
        assert_eq!(users[&0], "root");
        assert_eq!(users[&1000], "user");
        assert_eq!(groups[&27], "sudo");
        assert_eq!(groups.len(), 5);
        assert_eq!(lookup_group(dir.path(), "users").unwrap(), Some(100));
        assert_eq!(lookup_group(dir.path(), "bad").unwrap(), None);
    }

    #[test]
    fn collects_supplementary_groups() {
        assert_eq!(supplementary_groups(GROUP, "user", 1000), [1000, 27, 100]);
        assert_eq!(supplementary_groups(GROUP, "root", 0), [0]);
    }

    #[test]
    fn looks_up_users_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        let nobody = lookup_user(dir.path(), "nobody").unwrap();
        assert_eq!(
            (nobody.uid, nobody.gid, nobody.groups.as_slice()),
            (65534, 65534, &[65534][..])
        );
        fs::write(dir.path().join("group"), GROUP).unwrap();
        let user = lookup_uid(dir.path(), 1000).unwrap();
        assert_eq!(user.name, "user");
        assert_eq!(user.home, Path::new("/home/user"));
        assert_eq!(user.groups, [1000, 27, 100]);
        assert!(
            matches!(lookup_user(dir.path(), "ghost"), Err(PasswdError::UnknownUser(n)) if n == "ghost")
        );
        assert!(matches!(
            lookup_uid(dir.path(), 4242),
            Err(PasswdError::UnknownUid(4242))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            lookup_user(empty.path(), "root"),
            Err(PasswdError::Read { .. })
        ));
    }
}
