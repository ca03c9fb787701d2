//! `scripts/deps` against a fake Debian, so the install decision is tested
//! whatever this machine has installed, and without root.
//!
//! The real script runs with `PATH` holding only fakes: the commands a
//! package "installed" under a temporary root (`HEARTH_DEPS_ROOT`, whose
//! `usr/bin` and friends are on `PATH`), fake `apt-get`, `apt-cache` and
//! `dpkg-query` over a package database in a state folder, a fake `cargo`, and links to the
//! few real tools the script and the fakes use. The fake `apt-get` installs
//! a package by copying its files from [`PACKAGES`] and resolves the
//! conflict of issue 10 the way the real one does: installing
//! `qemu-system-x86` at version V removes a `qemu-utils` installed at
//! another version, and `qemu-img` with it, unless the same call installs
//! `qemu-utils=V`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

/// Debian 12's QEMU.
const QEMU_7_2: &str = "1:7.2+dfsg-7+deb12u18+b3";
/// The point release before it, which the mirrors no longer carry.
const QEMU_7_2_OLD: &str = "1:7.2+dfsg-7+deb12u17";
/// The backported qemu-utils the machine image ships.
const QEMU_10: &str = "1:10.0.2+ds-1~bpo12+1";
/// The version of every other package.
const OTHER: &str = "1.0";

/// Each Debian package `scripts/deps` may install and the files it provides
/// (commands on `PATH`, or paths the script checks); mirrors the script's
/// `requirements`.
const PACKAGES: &[(&str, &[&str])] = &[
    ("qemu-system-x86", &["/usr/bin/qemu-system-x86_64"]),
    ("qemu-utils", &["/usr/bin/qemu-img"]),
    ("nftables", &["/usr/sbin/nft"]),
    ("iproute2", &["/usr/bin/ip"]),
    ("procps", &["/usr/bin/pgrep"]),
    ("linux-source-6.1", &["/usr/src/linux-source-6.1.tar.xz"]),
    ("make", &["/usr/bin/make"]),
    ("gcc", &["/usr/bin/gcc"]),
    ("flex", &["/usr/bin/flex"]),
    ("bison", &["/usr/bin/bison"]),
    ("bc", &["/usr/bin/bc"]),
    ("xz-utils", &["/usr/bin/xz"]),
    ("libelf-dev", &["/usr/include/gelf.h"]),
    ("libssl-dev", &["/usr/include/openssl/ssl.h"]),
    ("mmdebstrap", &["/usr/bin/mmdebstrap"]),
    ("e2fsprogs", &["/usr/sbin/mkfs.ext4", "/usr/sbin/debugfs"]),
    ("tar", &["/usr/bin/tar"]),
    ("python3", &["/usr/bin/python3"]),
    (
        "python3-venv",
        &["/usr/lib/python3.11/ensurepip/__init__.py"],
    ),
    ("docker-registry", &["/usr/bin/docker-registry"]),
    ("skopeo", &["/usr/bin/skopeo"]),
    ("umoci", &["/usr/bin/umoci"]),
    ("zstd", &["/usr/bin/zstd"]),
    ("busybox-static", &["/bin/busybox"]),
    ("nodejs", &["/usr/bin/node", "/usr/bin/npm"]),
    ("chromium", &["/usr/bin/chromium"]),
    (
        "postgresql",
        &[
            "/usr/lib/postgresql/15/bin/initdb",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "/usr/lib/postgresql/15/bin/psql",
        ],
    ),
    ("systemd", &["/usr/bin/systemd-analyze"]),
];

/// Real tools the script and the fakes run; none is something the script
/// checks for.
const TOOLS: &[&str] = &["bash", "sed", "grep", "sort", "cat", "cp", "rm"];

/// The package database, shared by the fake `apt-get`, `apt-cache` and
/// `dpkg-query`.
const LIB_SH: &str = r#"state=@STATE@
root=@ROOT@
# The installed version of $1, or nothing.
installed() { cat "$state/status/$1" 2>/dev/null || true; }
# The versions apt can install: the sources' and the installed one, oldest
# first (sort -V stands in for dpkg's order).
versions() { { cat "$state/repo/$1" 2>/dev/null || true; installed "$1"; } | grep -v '^$' | sort -uV; }
# apt's candidate under default pins: the newest, so an installed version
# newer than the sources' stays the candidate.
candidate() { versions "$1" | sed -n '$p'; }
"#;

const APT_CACHE: &str = r#"#!@BASH@
# Fake apt-cache: `policy PKG...`.
set -euo pipefail
. @STATE@/lib.sh
[[ ${1:-} == policy ]] || { echo "E: the fake apt-cache knows only policy" >&2; exit 100; }
shift
for p; do
  [[ -n $(versions "$p") ]] || continue
  inst=$(installed "$p")
  printf '%s:\n  Installed: %s\n  Candidate: %s\n  Version table:\n' "$p" "${inst:-(none)}" "$(candidate "$p")"
done
"#;

const APT_GET: &str = r#"#!@BASH@
# Fake apt-get: `update` does nothing; `install [OPTION]... PKG[=VERSION]...`
# installs like apt: unknown versions and unasked downgrades are errors, and
# qemu-system-x86 at V removes a qemu-utils at another version unless this
# call installs qemu-utils=V too.
set -euo pipefail
. @STATE@/lib.sh
echo "$*" >>"$state/apt-get.log"
fail() { echo "E: $*" >&2; exit 100; }
older() { [[ $1 != "$2" && $(printf '%s\n' "$1" "$2" | sort -V | sed -n 1p) == "$1" ]]; }
remove() {
  local f
  while read -r f; do rm -f "$root$f"; done <"$state/info/$1.list"
  rm -f "$state/status/$1" "$state/info/$1.list"
}
unpack() {
  [[ -z $(installed "$1") ]] || remove "$1"
  if [[ -e $state/lies/$1 ]]; then
    : >"$state/info/$1.list"
  else
    cp -R "$state/pkgs/$1/." "$root/"
    cp "$state/pkgs/$1.list" "$state/info/$1.list"
  fi
  echo "$2" >"$state/status/$1"
}

case ${1:-} in
  update) exit 0 ;;
  install) shift ;;
  *) fail "the fake apt-get knows only update and install" ;;
esac
downgrades=false
declare -A want=()
for arg; do
  case $arg in
    --allow-downgrades) downgrades=true ;;
    -*) ;;
    *=*) want[${arg%%=*}]=${arg#*=} ;;
    *) want[$arg]=$(candidate "$arg") ;;
  esac
done
for p in "${!want[@]}"; do
  v=${want[$p]}
  [[ -n $v ]] || fail "Unable to locate package $p"
  versions "$p" | grep -xF -- "$v" >/dev/null || fail "Version '$v' for '$p' was not found"
  if older "$v" "$(installed "$p")" && ! $downgrades; then
    fail "Packages were downgraded and -y was used without --allow-downgrades."
  fi
done
if [[ -v 'want[qemu-system-x86]' ]]; then
  v=${want[qemu-system-x86]}
  if [[ -v 'want[qemu-utils]' ]]; then
    [[ ${want[qemu-utils]} == "$v" ]] || fail "Unable to correct problems, you have held broken packages."
  elif [[ -n $(installed qemu-utils) && $(installed qemu-utils) != "$v" ]]; then
    echo "Removing qemu-utils ($(installed qemu-utils)) ..."
    remove qemu-utils
  fi
fi
for p in "${!want[@]}"; do unpack "$p" "${want[$p]}"; done
"#;

const DPKG_QUERY: &str = r#"#!@BASH@
# Fake dpkg-query: `-W [-f=FORMAT] PKG...` with ${Package}, ${Version} and
# ${db:Status-Abbrev} in FORMAT.
set -euo pipefail
. @STATE@/lib.sh
format='${Package}\t${Version}\n'
packages=()
for arg; do
  case $arg in
    -W | --show) ;;
    -f=* | --showformat=*) format=${arg#*=} ;;
    -*) echo "dpkg-query: the fake knows only -W and -f=" >&2; exit 2 ;;
    *) packages+=("$arg") ;;
  esac
done
rc=0
for p in "${packages[@]}"; do
  v=$(installed "$p")
  if [[ -z $v ]]; then
    echo "dpkg-query: no packages found matching $p" >&2
    rc=1
    continue
  fi
  line=${format//'${Package}'/$p}
  line=${line//'${Version}'/$v}
  printf '%b' "${line//'${db:Status-Abbrev}'/ii }"
done
exit $rc
"#;

/// Debian's python3, as far as `scripts/deps` asks it.
const PYTHON3: &str = r#"#!@BASH@
# Fake python3: only `python3 -c "import MODULE"`.
[[ ${1:-} == -c && ${2:-} == "import "* ]] || { echo "fake python3: only -c 'import MODULE'" >&2; exit 2; }
m=${2#import }
lib=@ROOT@/usr/lib/python3.11
[[ -e $lib/$m/__init__.py || -e $lib/$m.py ]] && exit 0
echo "ModuleNotFoundError: No module named '$m'" >&2
exit 1
"#;

const STUB: &str = "#!/bin/sh\nexit 0\n";

/// A throwaway machine: a root with what is installed, a package database,
/// and the fakes.
struct FakeDebian {
    _dir: TempDir,
    root: PathBuf,
    state: PathBuf,
    tools: PathBuf,
    /// First on `PATH`, like a pyenv shim.
    shims: PathBuf,
    bash: PathBuf,
}

impl FakeDebian {
    /// Nothing installed; every package in the sources at [`OTHER`], QEMU
    /// at [`QEMU_7_2`].
    fn empty() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (root, state, tools, shims) = (
            dir.path().join("root"),
            dir.path().join("state"),
            dir.path().join("tools"),
            dir.path().join("shims"),
        );
        for d in [&root, &tools, &shims] {
            fs::create_dir_all(d).unwrap();
        }
        for d in ["status", "info", "repo", "pkgs", "lies"] {
            fs::create_dir_all(state.join(d)).unwrap();
        }
        let bash = on_path("bash");
        let fill = |text: &str| {
            text.replace("@BASH@", &bash.to_string_lossy())
                .replace("@STATE@", &state.to_string_lossy())
                .replace("@ROOT@", &root.to_string_lossy())
        };
        for tool in TOOLS {
            symlink(on_path(tool), tools.join(tool)).unwrap();
        }
        fs::write(state.join("lib.sh"), fill(LIB_SH)).unwrap();
        write_exe(&tools.join("apt-get"), &fill(APT_GET));
        write_exe(&tools.join("apt-cache"), &fill(APT_CACHE));
        write_exe(&tools.join("dpkg-query"), &fill(DPKG_QUERY));
        write_exe(&tools.join("cargo"), STUB);
        for (package, files) in PACKAGES {
            let tree = state.join("pkgs").join(package);
            for file in *files {
                let text = if *file == "/usr/bin/python3" {
                    fill(PYTHON3)
                } else {
                    STUB.to_string()
                };
                write_exe(&under(&tree, file), &text);
            }
            fs::write(file_list(&state, package), files.join("\n") + "\n").unwrap();
        }
        let debian = FakeDebian {
            _dir: dir,
            root,
            state,
            tools,
            shims,
            bash,
        };
        for (package, _) in PACKAGES {
            let version = if package.starts_with("qemu-") {
                QEMU_7_2
            } else {
                OTHER
            };
            debian.sources(package, &[version]);
        }
        debian
    }

    /// Every package installed from the sources but those in `except`.
    fn image_without(except: &[&str]) -> Self {
        let debian = Self::empty();
        for (package, _) in PACKAGES {
            if !except.contains(package) {
                let version = debian.first_in_sources(package);
                debian.install(package, &version);
            }
        }
        debian
    }

    /// The machine image of issue 10: the backported qemu-utils, no
    /// qemu-system-x86.
    fn mixed_qemu_image() -> Self {
        let debian = Self::image_without(&["qemu-system-x86", "qemu-utils"]);
        debian.install("qemu-utils", QEMU_10);
        debian
    }

    /// The versions of `package` the sources carry.
    fn sources(&self, package: &str, versions: &[&str]) {
        fs::write(
            self.state.join("repo").join(package),
            versions.join("\n") + "\n",
        )
        .unwrap();
    }

    fn first_in_sources(&self, package: &str) -> String {
        let repo = fs::read_to_string(self.state.join("repo").join(package)).unwrap();
        repo.lines().next().unwrap().to_string()
    }

    /// Installs `package` as dpkg would have, without the fake apt.
    fn install(&self, package: &str, version: &str) {
        let (_, files) = PACKAGES.iter().find(|(p, _)| *p == package).unwrap();
        let tree = self.state.join("pkgs").join(package);
        for file in *files {
            let to = under(&self.root, file);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(under(&tree, file), &to).unwrap();
        }
        fs::copy(file_list(&self.state, package), self.info(package)).unwrap();
        fs::write(
            self.state.join("status").join(package),
            format!("{version}\n"),
        )
        .unwrap();
    }

    fn info(&self, package: &str) -> PathBuf {
        self.state.join("info").join(format!("{package}.list"))
    }

    /// From now on the fake apt records `package` as installed without
    /// unpacking its files.
    fn lie_about(&self, package: &str) {
        fs::write(self.state.join("lies").join(package), "").unwrap();
    }

    fn path(&self) -> String {
        let r = self.root.display();
        format!(
            "{}:{r}/usr/sbin:{r}/usr/bin:{r}/sbin:{r}/bin:{}",
            self.shims.display(),
            self.tools.display()
        )
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", self.path())
            .env("HEARTH_DEPS_ROOT", &self.root)
            .current_dir(&self.state);
        cmd
    }

    /// Runs the real `scripts/deps`.
    fn deps(&self) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps");
        self.command(&self.bash)
            .arg(script)
            .output()
            .expect("bash runs")
    }

    /// Runs the fake apt-get directly.
    fn apt_get(&self, args: &[&str]) -> Output {
        self.command(&self.tools.join("apt-get"))
            .args(args)
            .output()
            .expect("the fake apt-get runs")
    }

    /// Every call of the fake apt-get, its arguments joined by spaces.
    fn apt_calls(&self) -> Vec<String> {
        fs::read_to_string(self.state.join("apt-get.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The arguments of each `apt-get install` call.
    fn installs(&self) -> Vec<Vec<String>> {
        self.apt_calls()
            .iter()
            .filter(|c| c.starts_with("install"))
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    fn has(&self, file: &str) -> bool {
        under(&self.root, file).exists()
    }

    fn version(&self, package: &str) -> Option<String> {
        fs::read_to_string(self.state.join("status").join(package))
            .ok()
            .map(|v| v.trim().to_string())
    }
}

/// The files `package` installs, one a line, as the fake apt-get reads them.
fn file_list(state: &Path, package: &str) -> PathBuf {
    state.join("pkgs").join(format!("{package}.list"))
}

/// `file` (absolute) under `root`.
fn under(root: &Path, file: &str) -> PathBuf {
    root.join(file.trim_start_matches('/'))
}

fn write_exe(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Where `name` is on this process's `PATH`.
fn on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH; the test links to the real one"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// The lines of stderr saying something is missing.
fn missing_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains("is missing"))
        .map(str::to_string)
        .collect()
}

#[test]
fn mixed_qemu_image_installs_both_qemu_packages_at_one_version() {
    let debian = FakeDebian::mixed_qemu_image();

    let out = debian.deps();

    assert_exit(&out, 0);
    let installs = debian.installs();
    assert_eq!(installs.len(), 1, "one apt-get install: {installs:?}");
    let call = &installs[0];
    for arg in [
        format!("qemu-system-x86={QEMU_7_2}"),
        format!("qemu-utils={QEMU_7_2}"),
        "--allow-downgrades".to_string(),
    ] {
        assert!(call.contains(&arg), "{arg} not in {call:?}");
    }
    assert!(debian.has("/usr/bin/qemu-img"));
    assert!(debian.has("/usr/bin/qemu-system-x86_64"));
    assert_eq!(debian.version("qemu-utils").as_deref(), Some(QEMU_7_2));
}

#[test]
fn qemu_img_gone_reinstalls_qemu_utils_at_the_qemu_system_version() {
    // What the old scripts/deps left on the machine image.
    let debian = FakeDebian::image_without(&["qemu-utils"]);
    assert_eq!(debian.version("qemu-system-x86").as_deref(), Some(QEMU_7_2));

    let out = debian.deps();

    assert_exit(&out, 0);
    let installs = debian.installs();
    assert_eq!(installs.len(), 1, "one apt-get install: {installs:?}");
    assert!(installs[0].contains(&format!("qemu-utils={QEMU_7_2}")));
    assert!(debian.has("/usr/bin/qemu-img"));
    assert_eq!(debian.version("qemu-system-x86").as_deref(), Some(QEMU_7_2));
}

#[test]
fn qemu_img_gone_after_a_point_release_installs_what_the_mirror_has() {
    // qemu-system-x86 installed at a version the sources no longer carry:
    // asking apt for qemu-utils at that version would fail.
    let debian = FakeDebian::image_without(&["qemu-system-x86", "qemu-utils"]);
    debian.install("qemu-system-x86", QEMU_7_2_OLD);

    let out = debian.deps();

    assert_exit(&out, 0);
    assert!(debian.has("/usr/bin/qemu-img"));
    assert_eq!(debian.version("qemu-system-x86").as_deref(), Some(QEMU_7_2));
    assert_eq!(debian.version("qemu-utils").as_deref(), Some(QEMU_7_2));
}

#[test]
fn bare_machine_gets_everything_in_one_install() {
    let debian = FakeDebian::empty();

    let out = debian.deps();

    assert_exit(&out, 0);
    let installs = debian.installs();
    assert_eq!(installs.len(), 1, "one apt-get install: {installs:?}");
    for (package, files) in PACKAGES {
        assert!(debian.version(package).is_some(), "{package} not installed");
        for file in *files {
            assert!(debian.has(file), "{file} of {package} missing");
        }
    }
}

#[test]
fn everything_present_calls_no_apt() {
    let debian = FakeDebian::image_without(&[]);

    let out = debian.deps();

    assert_exit(&out, 0);
    assert_eq!(debian.apt_calls(), Vec::<String>::new());
    assert_eq!(stderr(&out), "");
}

#[test]
fn package_that_does_not_provide_its_command_fails_naming_both() {
    let debian = FakeDebian::image_without(&["nftables"]);
    debian.lie_about("nftables");

    let out = debian.deps();

    assert_exit(&out, 1);
    assert_eq!(debian.installs().len(), 1);
    assert_eq!(debian.version("nftables").as_deref(), Some(OTHER));
    let lines = missing_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(" nft ") && lines[0].contains("nftables"),
        "{}",
        lines[0]
    );
}

#[test]
fn missing_cargo_fails_naming_rustup() {
    let debian = FakeDebian::image_without(&[]);
    fs::remove_file(debian.tools.join("cargo")).unwrap();

    let out = debian.deps();

    assert_exit(&out, 1);
    assert_eq!(debian.apt_calls(), Vec::<String>::new());
    let lines = missing_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cargo") && lines[0].contains("rustup"),
        "{}",
        lines[0]
    );
}

#[test]
fn another_python3_on_path_does_not_hide_a_missing_python3_venv() {
    // A pyenv shim first on PATH has its own ensurepip; the scripts make
    // venvs with Debian's /usr/bin/python3, which needs python3-venv.
    let debian = FakeDebian::image_without(&["python3-venv"]);
    write_exe(&debian.shims.join("python3"), STUB);

    let out = debian.deps();

    assert_exit(&out, 0);
    assert_eq!(
        debian.installs(),
        vec![vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "python3-venv"
        ]]
    );
    assert!(debian.has("/usr/lib/python3.11/ensurepip/__init__.py"));
}

#[test]
fn fake_apt_removes_qemu_img_as_the_real_one_does() {
    // What the old scripts/deps did on the image: qemu-utils was installed,
    // so it asked for qemu-system-x86 alone.
    let debian = FakeDebian::mixed_qemu_image();
    assert!(debian.has("/usr/bin/qemu-img"));

    let out = debian.apt_get(&["install", "-y", "qemu-system-x86"]);

    assert_exit(&out, 0);
    assert!(debian.has("/usr/bin/qemu-system-x86_64"));
    assert!(!debian.has("/usr/bin/qemu-img"));
    assert_eq!(debian.version("qemu-utils"), None);
}

#[test]
fn fake_apt_refuses_what_the_real_one_refuses() {
    let debian = FakeDebian::mixed_qemu_image();
    let utils_7_2 = format!("qemu-utils={QEMU_7_2}");
    let system_7_2 = format!("qemu-system-x86={QEMU_7_2}");

    // Both by name: qemu-utils' candidate is the installed backport.
    assert_exit(
        &debian.apt_get(&["install", "-y", "qemu-system-x86", "qemu-utils"]),
        100,
    );
    // One version, but a downgrade nobody allowed.
    assert_exit(
        &debian.apt_get(&["install", "-y", &system_7_2, &utils_7_2]),
        100,
    );
    // A version the sources do not carry.
    assert_exit(
        &debian.apt_get(&["install", "-y", &format!("qemu-system-x86={QEMU_7_2_OLD}")]),
        100,
    );
    assert_eq!(debian.version("qemu-utils").as_deref(), Some(QEMU_10));
    assert!(debian.has("/usr/bin/qemu-img"));
}
