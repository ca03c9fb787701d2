//! The store's tests on both databases: a real PostgreSQL cluster
//! ([`PgCluster`]) made the first time a test asks for it, stopped and
//! removed when the test binary exits; each test gets a database of its
//! own on it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use super::Store;
use crate::testing::PgCluster;

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

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);
/// `CREATE DATABASE` copies a template, which two at once may not.
static CREATING: Mutex<()> = Mutex::new(());

/// A new store on a new database of the test cluster.
pub(crate) fn postgres_store() -> Store {
    postgres_stores(1).pop().unwrap()
}

/// `n` stores (processes, as far as PostgreSQL can tell) on one new
/// database of the test cluster.
pub(crate) fn postgres_stores(n: usize) -> Vec<Store> {
    let cluster = CLUSTER.get_or_init(|| {
        // SAFETY: `stop_cluster` is an `extern "C" fn()` that touches only
        // the cluster, which `CLUSTER` keeps until the process ends (a
        // static is never dropped).
        unsafe { nix::libc::atexit(stop_cluster) };
        PgCluster::start()
    });
    let name = format!(
        "hearth_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let url = {
        let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        cluster.database(&name)
    };
    (0..n).map(|_| Store::connect(&url).unwrap()).collect()
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
    assert!(cluster.dir().join("data/PG_VERSION").exists());
}
