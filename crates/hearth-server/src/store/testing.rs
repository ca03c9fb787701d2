//! The store's tests on both databases: a real PostgreSQL cluster, made
//! with Debian's `initdb` and `pg_ctl` in a temporary directory the first
//! time a test asks for it, stopped and removed when the test binary
//! exits; each test gets a database of its own on it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use super::Store;

/// Defines a test twice, as `NAME::sqlite` and `NAME::postgres`: one body,
/// run on a new store of each database.
macro_rules! store_test {
    (fn $name:ident($store:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let $store = $crate::store::Store::open(&dir.path().join("hearth.db")).unwrap();
                $body
            }

            #[test]
            fn postgres() {
                let $store = $crate::store::testing::postgres_store();
                $body
            }
        }
    };
}

/// A cluster that lives as long as the test binary.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The user PostgreSQL runs as: `postgres` when tests run as root
    /// (it refuses root), else the caller.
    owner: Option<(u32, u32)>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);
/// `CREATE DATABASE` copies a template, which two at once may not.
static CREATING: Mutex<()> = Mutex::new(());

/// A new store on a new database of the test cluster.
pub(crate) fn postgres_store() -> Store {
    let cluster = CLUSTER.get_or_init(Cluster::start);
    let name = format!(
        "hearth_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    {
        let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        cluster.psql(&format!("CREATE DATABASE {name}"));
    }
    Store::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/{name}",
        cluster.port
    ))
    .unwrap()
}

/// Debian's PostgreSQL programs: `HEARTH_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEARTH_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "the store's tests need PostgreSQL's initdb and pg_ctl: install Debian's \
         postgresql package (bash scripts/deps) or set HEARTH_PG_BIN",
    )
}

impl Cluster {
    fn start() -> Self {
        let bin = bin_dir();
        let owner = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("Debian's postgresql package makes the user postgres");
            (user.uid.as_raw(), user.gid.as_raw())
        });
        let dir = tempfile::Builder::new()
            .prefix("hearth-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            dir,
            bin,
            port,
            owner,
        };
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            cluster.dir.display()
        );
        cluster.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                cluster.dir.join("log").as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        // SAFETY: `stop_cluster` is an `extern "C" fn()` that touches only
        // the cluster, which `CLUSTER` keeps until the process ends.
        unsafe { nix::libc::atexit(stop_cluster) };
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.current_dir(&self.dir);
        command
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, sql: &str) {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        );
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D".as_ref(), data.as_os_str()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" fn stop_cluster() {
    if let Some(cluster) = CLUSTER.get() {
        cluster.stop();
    }
}

#[test]
fn the_cluster_is_made_by_the_packaged_programs() {
    let store = postgres_store();
    assert_eq!(store.database(), "postgres");
    let cluster = CLUSTER.get().unwrap();
    assert!(cluster.dir.join("data/PG_VERSION").exists());
    assert!(Path::new(&cluster.bin).join("pg_ctl").exists());
}
