//! The store: API keys, sandbox records, template builds, events and the
//! rest of the catalog, in an SQLite file or a PostgreSQL database.
//!
//! The server keeps here what it must remember across restarts: which keys
//! may call it, which sandboxes exist, with what the E2B API reports about
//! them, and the template builds of its build API with their logs and tags
//! ([`builds`]). Each query is written once and runs on either database
//! ([`db`]). An SQLite file is made with mode 0600 and runs in WAL mode;
//! its schema version lives in `PRAGMA user_version`, a PostgreSQL
//! database's in the table `hearth_schema`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use hearth_node::Egress;

use crate::keys;

#[cfg(test)]
#[macro_use]
mod testing;

mod builds;
mod db;
mod events;
mod nodes;
mod snapshots;
mod volumes;

use db::{Dialect, OptionalExt, Row, Sql, Value, params};

pub use builds::{BuildLogEntry, BuildRecord, BuildStatus, INTERRUPTED, TagRecord, level_rank};
pub use db::DbError;
pub use events::{Delivery, EventQuery, Webhook, WebhookChange};
pub use nodes::{
    BuildFile, Capacity, HeldBuild, NODE_LOST, NodeBuild, NodeLoad, NodeRecord, NodeStatus,
    SandboxNode,
};
pub use snapshots::{SnapshotPage, SnapshotQuery, SnapshotRecord};
pub use volumes::{VolumeMount, VolumeRecord};

use crate::events::EventType;

/// The schema this code reads and writes: every step of [`MIGRATIONS`].
#[allow(clippy::cast_possible_wrap, reason = "a handful of steps")]
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to a PostgreSQL store may take, unless its URL says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used  INTEGER,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sandboxes (
    sandbox_id            TEXT PRIMARY KEY,
    template_id           TEXT NOT NULL,
    alias                 TEXT,
    client_id             TEXT NOT NULL,
    state                 TEXT NOT NULL,
    metadata              TEXT NOT NULL,
    env_vars              TEXT NOT NULL,
    started_at_ms         INTEGER NOT NULL,
    end_at_ms             INTEGER NOT NULL,
    cpu_count             INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    secure                INTEGER NOT NULL,
    envd_access_token     TEXT,
    auto_pause            INTEGER NOT NULL,
    allow_internet_access INTEGER NOT NULL
);
CREATE INDEX sandboxes_by_start ON sandboxes (started_at_ms DESC, sandbox_id);
CREATE INDEX sandboxes_by_end ON sandboxes (state, end_at_ms);
";

/// Version 2: each sandbox's egress policy, as JSON.
const SCHEMA_2: &str = "ALTER TABLE sandboxes ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';";

/// Version 4: why a killed sandbox stopped.
const SCHEMA_4: &str = "ALTER TABLE sandboxes ADD COLUMN stop_reason TEXT;";

/// Version 5: where a sandbox is in its lifecycle (`hearth_node::State`),
/// finer than `state`: starting, running, pausing, paused, resuming,
/// stopping, stopped.
const SCHEMA_5: &str = "ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT;";

/// Version 6: the rest of a sandbox's timeout policy (E2B's `lifecycle`):
/// what an auto-pause keeps, whether traffic resumes it, and the lifetime
/// a resume gives it; the last characters of each API key (E2B's mask);
/// the samples of the team's metrics (sandboxes running, and started since
/// the sample before).
const SCHEMA_6: &str = "
ALTER TABLE sandboxes ADD COLUMN auto_pause_memory INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN timeout_secs INTEGER NOT NULL DEFAULT 300;
ALTER TABLE api_keys ADD COLUMN suffix TEXT NOT NULL DEFAULT '';
CREATE TABLE team_metrics (
    timestamp_ms INTEGER PRIMARY KEY,
    concurrent   INTEGER NOT NULL,
    started      INTEGER NOT NULL
);
";

/// Version 3: template builds of the E2B build API, their logs and tags.
const SCHEMA_3: &str = "
CREATE TABLE template_builds (
    build_id       TEXT PRIMARY KEY,
    template       TEXT NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    reason_step    TEXT,
    node_build     TEXT,
    tags           TEXT NOT NULL,
    cpu_count      INTEGER NOT NULL,
    memory_mb      INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
);
CREATE INDEX template_builds_by_template ON template_builds (template, created_at_ms DESC);
CREATE TABLE template_build_logs (
    build_id     TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    level        TEXT NOT NULL,
    message      TEXT NOT NULL,
    step         TEXT,
    PRIMARY KEY (build_id, seq)
);
CREATE TABLE template_tags (
    template      TEXT NOT NULL,
    tag           TEXT NOT NULL,
    build_id      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (template, tag)
);
";

const SANDBOX_COLUMNS: &str = "sandbox_id, template_id, alias, client_id, state, metadata, \
    env_vars, started_at_ms, end_at_ms, cpu_count, memory_mb, secure, envd_access_token, \
    auto_pause, allow_internet_access, egress, stop_reason, lifecycle, auto_pause_memory, \
    auto_resume, timeout_secs, volume_mounts";

const KEY_COLUMNS: &str = "id, name, prefix, created_at, last_used, revoked, suffix";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the store {store}")]
    Open {
        store: String,
        #[source]
        source: DbError,
    },
    #[error("the store URL {0:?} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE)")]
    BadUrl(String),
    #[error("cannot start the store's PostgreSQL client")]
    Runtime(#[source] io::Error),
    #[error(
        "the store {store} has schema version {found}, newer than this hearth understands ({SCHEMA_VERSION}); upgrade hearth"
    )]
    TooNew { store: String, found: i64 },
    #[error("query on the store {store} failed")]
    Query {
        store: String,
        #[source]
        source: DbError,
    },
    #[error("the store {store} holds an unreadable row: {reason}")]
    Corrupt { store: String, reason: String },
    #[error("cannot read random bytes from /dev/urandom")]
    Random(#[source] io::Error),
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    #[error("a volume named {0} already exists")]
    VolumeExists(String),
    #[error("no sandbox {0}")]
    NoSandbox(String),
    #[error("the pagination token is malformed; pass the nextToken of a previous page unchanged")]
    BadToken,
    #[error("template build {0} already exists")]
    BuildExists(String),
    #[error("no template build {0}")]
    NoBuild(String),
}

/// An API key as listed; never its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Short random id, 12 hex characters, to name the key in the CLI.
    pub id: String,
    pub name: String,
    /// `e2b_` and the first 8 characters after it, to recognise the key.
    pub prefix: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the latest accepted request, if any.
    pub last_used: Option<u64>,
    pub revoked: bool,
    /// Its last 4 characters (E2B's mask shows them); empty for keys made
    /// before they were kept.
    pub suffix: String,
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
    Killed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Killed => "killed",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox state name that is not `running`, `paused` or `killed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sandbox state '{0}'; expected running, paused or killed")]
pub struct BadState(pub String);

impl FromStr for SandboxState {
    type Err = BadState;

    fn from_str(s: &str) -> Result<Self, BadState> {
        match s {
            "running" => Ok(Self::Running),
            "paused" => Ok(Self::Paused),
            "killed" => Ok(Self::Killed),
            other => Err(BadState(other.to_owned())),
        }
    }
}

impl SandboxState {
    /// States from a comma-separated list (`running,paused`), as the list
    /// routes' `state` parameter has them; none for an empty text.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, BadState> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        text.split(',').map(|s| s.trim().parse()).collect()
    }
}

/// One sandbox as the API knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    pub template_id: String,
    pub alias: Option<String>,
    pub client_id: String,
    pub state: SandboxState,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds at which the sandbox times out.
    pub end_at_ms: i64,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub secure: bool,
    pub envd_access_token: Option<String>,
    pub auto_pause: bool,
    pub allow_internet_access: bool,
    /// What the guest may connect to (`allow_internet_access` and the
    /// request's `network` lists together).
    pub egress: Egress,
    /// Why a killed sandbox stopped (`killed`, `timed out`, `VM exited: …`).
    pub stop_reason: Option<String>,
    /// Its lifecycle state (`hearth_node::State`), persisted on every
    /// move; `None` in rows written before it was kept.
    pub lifecycle: Option<String>,
    /// An auto-pause keeps memory (else the disk only: E2B's
    /// `autoPauseMemory`).
    pub auto_pause_memory: bool,
    /// A request for it through the proxy resumes it when paused (E2B's
    /// `autoResume`).
    pub auto_resume: bool,
    /// The lifetime it was created (or last resumed) with: what an
    /// auto-resume gives it again.
    pub timeout_secs: u64,
    /// The volumes it mounts (each mounted by it alone).
    pub volumes: Vec<VolumeMount>,
}

/// Which sandboxes [`Store::list_sandboxes`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxQuery {
    /// States to include; empty means every state but `Killed`.
    pub states: Vec<SandboxState>,
    /// Pairs every returned sandbox's metadata must hold exactly.
    pub metadata: BTreeMap<String, String>,
    /// Most rows in one page; `None` for all, and 0 counts as 1.
    pub limit: Option<u32>,
    /// The `next_token` of the previous page.
    pub next_token: Option<String>,
    /// Oldest first; newest first otherwise.
    pub oldest_first: bool,
    /// Only sandboxes started at or after this (unix milliseconds).
    pub started_after_ms: Option<i64>,
    /// Only sandboxes of this template, by id or alias.
    pub template: Option<String>,
}

/// One page of [`Store::list_sandboxes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub sandboxes: Vec<SandboxRecord>,
    /// Set only when more rows follow; pass it back for the next page.
    pub next_token: Option<String>,
}

/// The store, on SQLite (a file, the default) or PostgreSQL (a cluster's
/// shared catalog). One connection behind a mutex: callers share it by
/// reference (or in an `Arc`) across threads.
pub struct Store {
    backend: Backend,
    /// Where the store is, for messages: its file, or its URL without the
    /// password.
    location: String,
    /// The cluster node this process is, if it is one: the sandboxes it
    /// records are its own, and it acts on no others ([`Store::for_node`]).
    node: Option<String>,
    /// The newest event recorded through this store.
    events: tokio::sync::watch::Sender<i64>,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(Box<PostgresClient>),
}

/// A PostgreSQL connection whose connection task runs on a runtime of its
/// own, so the store works the same from any thread: the server's
/// runtime, the CLI, tests.
struct PostgresClient {
    /// Taken only by `Drop`, which shuts it down without waiting (a
    /// runtime may not be dropped in asynchronous code).
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl Drop for PostgresClient {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresClient {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("taken only on drop")
    }

    /// A new connection; its task runs on this client's runtime.
    fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let config = self.config.clone();
        let connecting = self.runtime().spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(error = %err, "the store's PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match futures_executor::block_on(connecting) {
            Ok(result) => Ok(result?),
            Err(join) => Err(DbError::Other(format!(
                "the connection task failed: {join}"
            ))),
        }
    }

    /// The connection, made again if the last one ended.
    fn lock(&self) -> Result<MutexGuard<'_, Option<tokio_postgres::Client>>, DbError> {
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            *client = Some(self.connect()?);
        }
        Ok(client)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

/// The steps of the schema, in order; the store is at version N when the
/// first N have run. Both databases run the same steps ([`Dialect::ddl`]).
const MIGRATIONS: &[&str] = &[
    SCHEMA,
    SCHEMA_2,
    SCHEMA_3,
    SCHEMA_4,
    SCHEMA_5,
    SCHEMA_6,
    events::SCHEMA_7,
    snapshots::SCHEMA_8,
    volumes::SCHEMA_9,
    nodes::SCHEMA_10,
    nodes::SCHEMA_11,
];

/// Where a PostgreSQL store keeps its schema version.
const POSTGRES_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS hearth_schema (version BIGINT NOT NULL)";

/// The advisory lock that keeps two processes from migrating one
/// PostgreSQL store at once ("hearth" in ASCII).
const POSTGRES_MIGRATION_LOCK: i64 = 0x6865_6172_7468;

impl Store {
    /// Opens the store `spec` names: a PostgreSQL URL (`postgres://` or
    /// `postgresql://`), or else the path of an SQLite file.
    pub fn open_spec(spec: &str) -> Result<Self, StoreError> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Self::connect(spec)
        } else {
            Self::open(Path::new(spec))
        }
    }

    /// Opens the SQLite store at `path`, making the file (mode 0600), its
    /// parent directories and the schema if they are missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let create = |source| StoreError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(create)?;
        }
        // Made here rather than by SQLite so it is private from the start;
        // SQLite gives the -wal and -shm files the same mode.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(create)?;

        let location = path.display().to_string();
        let open_err = |source: rusqlite::Error| StoreError::Open {
            store: location.clone(),
            source: source.into(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL lets readers in other processes (the CLI) run beside the
        // server; with WAL, NORMAL sync loses no committed data on a crash
        // of the process, only possibly the last commits on power loss.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        Self::start(Backend::Sqlite(Mutex::new(conn)), location)
    }

    /// Connects to the PostgreSQL store at `url`
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?…]`), making
    /// the schema if it is missing. The database must exist.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|_| StoreError::BadUrl(redact(url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hearth-store")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let client = PostgresClient {
            runtime: Some(runtime),
            config,
            client: Mutex::new(None),
        };
        let location = redact(url);
        // Connected now, so that a wrong URL fails here, by name.
        drop(client.lock().map_err(|source| StoreError::Open {
            store: location.clone(),
            source,
        })?);
        Self::start(Backend::Postgres(Box::new(client)), location)
    }

    fn start(backend: Backend, location: String) -> Result<Self, StoreError> {
        let store = Self {
            backend,
            location,
            node: None,
            events: tokio::sync::watch::Sender::new(0),
        };
        store.migrate()?;
        store.events.send_replace(store.last_seq()?);
        Ok(store)
    }

    /// The store of cluster node `node_id`: the sandboxes it inserts are
    /// recorded as that node's, and [`Store::running_sandboxes`] and
    /// [`Store::expired`] see only that node's.
    #[must_use]
    pub fn for_node(mut self, node_id: &str) -> Self {
        self.node = Some(node_id.to_owned());
        self
    }

    /// The cluster node of this store, if it is a node's.
    pub fn node_id(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Where the store is: its file, or its URL without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Which database the store runs on.
    pub fn database(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let found = self.transact(|tx| {
            let dialect = tx.dialect();
            let version: i64 = match dialect {
                Dialect::Sqlite => tx.query_row("PRAGMA user_version", &[], |r| r.get(0))?,
                Dialect::Postgres => {
                    // Not the notice that the table exists, at each start.
                    tx.execute_batch("SET LOCAL client_min_messages = warning")?;
                    tx.execute_batch(POSTGRES_VERSION_TABLE)?;
                    // Waits for another process's migration to commit.
                    tx.execute(
                        "SELECT pg_advisory_xact_lock(?1)",
                        params![POSTGRES_MIGRATION_LOCK],
                    )?;
                    let found: Option<i64> = tx
                        .query_row("SELECT version FROM hearth_schema", &[], |r| r.get(0))
                        .optional()?;
                    if found.is_none() {
                        tx.execute("INSERT INTO hearth_schema (version) VALUES (0)", &[])?;
                    }
                    found.unwrap_or(0)
                }
            };
            if version > SCHEMA_VERSION {
                return Ok(version);
            }
            for step in MIGRATIONS
                .iter()
                .skip(usize::try_from(version).unwrap_or(0))
            {
                tx.execute_batch(&dialect.ddl(step))?;
            }
            match dialect {
                Dialect::Sqlite => {
                    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?
                }
                Dialect::Postgres => {
                    tx.execute(
                        "UPDATE hearth_schema SET version = ?1",
                        params![SCHEMA_VERSION],
                    )?;
                }
            }
            Ok(version)
        })?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                store: self.location.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Runs `run`, telling a multi-threaded tokio runtime (the server's)
    /// that it blocks, waiting for the connection and the database, so
    /// the runtime moves its other tasks to another thread meanwhile;
    /// elsewhere (the CLI, tests) it just runs.
    fn blocking<T>(run: impl FnOnce() -> T) -> T {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    /// Runs `f` on the connection, outside any transaction.
    fn with<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, StoreError> {
        Self::blocking(|| match &self.backend {
            Backend::Sqlite(conn) => {
                // A panic mid-statement leaves nothing half-done: SQLite
                // rolls back an unfinished transaction when its guard drops.
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut *conn)
            }
            Backend::Postgres(pg) => {
                let client = pg.lock()?;
                f(&mut db::Postgres(
                    client.as_ref().expect("connected by lock"),
                ))
            }
        })
        .map_err(self.query())
    }

    /// Runs `f` in one transaction. The events it records are announced
    /// on [`Store::event_feed`] once it commits.
    fn transact<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        fn last_seq(tx: &mut dyn Sql) -> Result<i64, DbError> {
            tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", &[], |r| {
                r.get(0)
            })
        }
        let (value, last) = Self::blocking(|| match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                let mut tx = conn.transaction()?;
                let value = f(&mut tx)?;
                let last = last_seq(&mut tx)?;
                tx.commit()?;
                Ok::<_, DbError>((value, last))
            }
            Backend::Postgres(pg) => {
                let mut client = pg.lock()?;
                let client = client.as_mut().expect("connected by lock");
                let tx = futures_executor::block_on(client.transaction())?;
                let (value, last) = {
                    let mut sql = db::Postgres(&tx);
                    let value = f(&mut sql)?;
                    (value, last_seq(&mut sql)?)
                };
                futures_executor::block_on(tx.commit())?;
                Ok((value, last))
            }
        })
        .map_err(self.query())?;
        self.events.send_if_modified(|seq| {
            let newer = last > *seq;
            if newer {
                *seq = last;
            }
            newer
        });
        Ok(value)
    }

    fn query(&self) -> impl Fn(DbError) -> StoreError + '_ {
        |source| StoreError::Query {
            store: self.location.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: impl fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.location.clone(),
            reason: reason.to_string(),
        }
    }

    // API keys.

    /// Makes a key named `name`. The plaintext is returned here and never
    /// again: only its hash is kept.
    pub fn create_key(&self, name: &str) -> Result<(KeyInfo, String), StoreError> {
        let plaintext = keys::new_key().map_err(StoreError::Random)?;
        let info = KeyInfo {
            id: keys::random_hex::<6>().map_err(StoreError::Random)?,
            name: name.to_owned(),
            prefix: keys::display_prefix(&plaintext),
            created_at: now_secs(),
            last_used: None,
            revoked: false,
            suffix: keys::display_suffix(&plaintext),
        };
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys (id, name, hash, prefix, created_at, suffix) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    info.id,
                    info.name,
                    keys::hash_key(&plaintext),
                    info.prefix,
                    secs_to_sql(info.created_at),
                    info.suffix,
                ],
            )
        })?;
        Ok((info, plaintext))
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        self.with(|conn| {
            conn.query_map(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
                params![],
                key_from_row,
            )
        })
    }

    /// Revokes the key with id `id`; false if there is none.
    pub fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let changed =
            self.with(|c| c.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?1", params![id]))?;
        Ok(changed > 0)
    }

    /// Renames the key with id `id`; false if there is none.
    pub fn rename_key(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE api_keys SET name = ?2 WHERE id = ?1 AND revoked = 0",
                params![id, name],
            )
        })?;
        Ok(changed > 0)
    }

    /// Removes the key with id `id` outright; false if there is none.
    pub(crate) fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let changed =
            self.with(|c| c.execute("DELETE FROM api_keys WHERE id = ?1", params![id]))?;
        Ok(changed > 0)
    }

    /// The key `plaintext` names if it exists and is not revoked, with its
    /// last use set to now.
    pub fn check_key(&self, plaintext: &str) -> Result<Option<KeyInfo>, StoreError> {
        // Looked up by hash, so no comparison here needs to be constant
        // time: timing can reveal at most something about the hash of what
        // the caller sent, which the caller already knows.
        let hash = keys::hash_key(plaintext);
        self.with(|conn| {
            let found = conn
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"),
                    params![&hash],
                    key_from_row,
                )
                .optional()?;
            let Some(mut info) = found.filter(|info| !info.revoked) else {
                return Ok(None);
            };
            let now = now_secs();
            // At most one write per key per second, however busy the API is.
            if info.last_used != Some(now) {
                conn.execute(
                    "UPDATE api_keys SET last_used = ?1 WHERE id = ?2",
                    params![secs_to_sql(now), info.id],
                )?;
                info.last_used = Some(now);
            }
            Ok(Some(info))
        })
    }

    /// How many keys are not revoked.
    pub fn count_active_keys(&self) -> Result<u64, StoreError> {
        let count: i64 = self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE revoked = 0",
                params![],
                |row| row.get(0),
            )
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    // The team's metrics.

    /// Records a sample: `concurrent` sandboxes running at `timestamp_ms`,
    /// `started` since the sample before; samples older than `keep_from_ms`
    /// go.
    pub fn add_team_sample(
        &self,
        timestamp_ms: i64,
        concurrent: u64,
        started: u64,
        keep_from_ms: i64,
    ) -> Result<(), StoreError> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.with(|c| {
            c.execute(
                "INSERT INTO team_metrics (timestamp_ms, concurrent, started) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (timestamp_ms) \
                 DO UPDATE SET concurrent = excluded.concurrent, started = excluded.started",
                params![timestamp_ms, count(concurrent), count(started)],
            )?;
            c.execute(
                "DELETE FROM team_metrics WHERE timestamp_ms < ?1",
                params![keep_from_ms],
            )
        })?;
        Ok(())
    }

    /// The samples from `from_ms` to `to_ms` (inclusive), oldest first:
    /// `(timestamp_ms, concurrent, started)`.
    pub fn team_samples(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        self.with(|conn| {
            conn.query_map(
                "SELECT timestamp_ms, concurrent, started FROM team_metrics \
                     WHERE timestamp_ms BETWEEN ?1 AND ?2 ORDER BY timestamp_ms",
                params![from_ms, to_ms],
                |row| {
                    let count = |i| row.get::<i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
                    Ok((row.get(0)?, count(1)?, count(2)?))
                },
            )
        })
    }

    // Sandboxes.

    /// Adds a sandbox; its id must be new.
    pub fn insert_sandbox(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let row = SandboxRow::from_record(record);
        let result = self.transact(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO sandboxes ({SANDBOX_COLUMNS}, node_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                     ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
                ),
                &[row.params(), params![self.node].to_vec()].concat(),
            )?;
            events::record_sandbox(
                tx,
                EventType::SandboxCreated,
                &record.sandbox_id,
                serde_json::Map::new(),
                record.started_at_ms,
            )
        });
        match result {
            Ok(()) => Ok(()),
            Err(StoreError::Query { source, .. }) if source.is_constraint() => {
                Err(StoreError::SandboxExists(record.sandbox_id.clone()))
            }
            Err(err) => Err(err),
        }
    }

    /// The sandbox with id `id`, if any.
    pub fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let row = self.with(|c| {
            c.query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE sandbox_id = ?1"),
                params![id],
                SandboxRow::read,
            )
            .optional()
        })?;
        row.map(|row| row.into_record(self)).transpose()
    }

    /// Replaces the whole stored row of `record.sandbox_id`.
    /// A paused sandbox that runs again is recorded as resumed.
    pub fn update_sandbox(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let row = SandboxRow::from_record(record);
        let changed = self.transact(|tx| {
            let before: Option<String> = tx
                .query_row(
                    "SELECT state FROM sandboxes WHERE sandbox_id = ?1",
                    params![&record.sandbox_id],
                    |r| r.get(0),
                )
                .optional()?;
            let changed = tx.execute(
                "UPDATE sandboxes SET template_id = ?2, alias = ?3, client_id = ?4, state = ?5, \
                 metadata = ?6, env_vars = ?7, started_at_ms = ?8, end_at_ms = ?9, \
                 cpu_count = ?10, memory_mb = ?11, secure = ?12, envd_access_token = ?13, \
                 auto_pause = ?14, allow_internet_access = ?15, egress = ?16, stop_reason = ?17, \
                 lifecycle = ?18, auto_pause_memory = ?19, auto_resume = ?20, timeout_secs = ?21, \
                 volume_mounts = ?22 WHERE sandbox_id = ?1",
                &row.params(),
            )?;
            if before.as_deref() == Some(SandboxState::Paused.as_str())
                && record.state == SandboxState::Running
            {
                events::record_sandbox(
                    tx,
                    EventType::SandboxResumed,
                    &record.sandbox_id,
                    serde_json::Map::new(),
                    now_ms(),
                )?;
            }
            Ok(changed)
        })?;
        found(changed, &record.sandbox_id)
    }

    /// Sets the network fields of sandbox `id`.
    pub fn set_egress(
        &self,
        id: &str,
        allow_internet_access: bool,
        egress: &Egress,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(egress).expect("a policy serialises");
        let changed = self.transact(|tx| {
            let changed = tx.execute(
                "UPDATE sandboxes SET allow_internet_access = ?2, egress = ?3 WHERE sandbox_id = ?1",
                params![id, allow_internet_access, text],
            )?;
            let mut data = serde_json::Map::new();
            data.insert(
                "network_egress".into(),
                serde_json::json!({
                    "allowInternetAccess": allow_internet_access,
                    "policy": egress,
                }),
            );
            events::record_sandbox(tx, EventType::SandboxUpdated, id, data, now_ms())?;
            Ok(changed)
        })?;
        found(changed, id)
    }

    /// Sets the state of sandbox `id`; a move to paused is recorded as
    /// such.
    pub fn set_state(&self, id: &str, state: SandboxState) -> Result<(), StoreError> {
        let changed = self.transact(|tx| {
            let changed = tx.execute(
                "UPDATE sandboxes SET state = ?2 WHERE sandbox_id = ?1 AND state != ?2",
                params![id, state.as_str()],
            )?;
            if changed > 0 && state == SandboxState::Paused {
                events::record_sandbox(
                    tx,
                    EventType::SandboxPaused,
                    id,
                    serde_json::Map::new(),
                    now_ms(),
                )?;
            }
            // Already in that state counts as found.
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE sandbox_id = ?1)",
                params![id],
                |r| r.get(0),
            )?;
            Ok(usize::from(exists))
        })?;
        found(changed, id)
    }

    /// Moves when sandbox `id` times out without telling anyone: a
    /// timeout action that failed is tried again then.
    pub fn postpone_end(&self, id: &str, end_at_ms: i64) -> Result<(), StoreError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET end_at_ms = ?2 WHERE sandbox_id = ?1",
                params![id, end_at_ms],
            )
        })?;
        found(changed, id)
    }

    /// Sets when sandbox `id` times out, in unix milliseconds, recorded as
    /// an updated event.
    pub fn set_end_at(&self, id: &str, end_at_ms: i64) -> Result<(), StoreError> {
        let changed = self.transact(|tx| {
            let changed = tx.execute(
                "UPDATE sandboxes SET end_at_ms = ?2 WHERE sandbox_id = ?1",
                params![id, end_at_ms],
            )?;
            let mut data = serde_json::Map::new();
            data.insert(
                "set_timeout".into(),
                serde_json::Value::String(crate::manager::rfc3339_ms(end_at_ms)),
            );
            events::record_sandbox(tx, EventType::SandboxUpdated, id, data, now_ms())?;
            Ok(changed)
        })?;
        found(changed, id)
    }

    /// Records the lifecycle state of sandbox `id` (a no-op for a sandbox
    /// without a row yet: one that is starting).
    pub fn set_lifecycle(&self, id: &str, lifecycle: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET lifecycle = ?2 WHERE sandbox_id = ?1",
                params![id, lifecycle],
            )
        })?;
        Ok(())
    }

    /// Records that sandbox `id` stopped at `now_ms` for `reason`; false if
    /// there is no such sandbox. Its row stays (state `killed`) for the
    /// list of stopped sandboxes until [`Store::forget_stopped`].
    /// The first stop is recorded as a killed event, with why.
    pub fn stop_sandbox(&self, id: &str, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.transact(|tx| stop_in(tx, id, reason, now_ms))
    }

    /// Removes the rows of sandboxes that stopped before `before_ms`.
    pub fn forget_stopped(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM sandboxes WHERE state = 'killed' AND end_at_ms < ?1",
                params![before_ms],
            )
        })
    }

    /// One page of the sandboxes `query` selects, newest first or oldest
    /// first (ties by id).
    pub fn list_sandboxes(&self, query: &SandboxQuery) -> Result<Page, StoreError> {
        let mut sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE ");
        let mut args: Vec<Value> = Vec::new();

        let states: &[SandboxState] = if query.states.is_empty() {
            &[SandboxState::Running, SandboxState::Paused]
        } else {
            &query.states
        };
        sql.push_str("state IN (");
        for (i, state) in states.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            args.push(Value::Text(state.as_str().to_owned()));
        }
        sql.push(')');

        // Metadata values are always JSON strings, which both databases'
        // JSON functions yield as plain text, so `value = ?` is an exact
        // match.
        let pairs = self.dialect().json_pairs("metadata");
        for (key, value) in &query.metadata {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM {pairs} WHERE key = ? AND value = ?)"
            ));
            args.push(Value::Text(key.clone()));
            args.push(Value::Text(value.clone()));
        }

        if let Some(after) = query.started_after_ms {
            sql.push_str(" AND started_at_ms >= ?");
            args.push(Value::Integer(after));
        }
        if let Some(template) = &query.template {
            sql.push_str(" AND (template_id = ? OR alias = ?)");
            args.push(Value::Text(template.clone()));
            args.push(Value::Text(template.clone()));
        }

        // Pages follow start time (ties by id) in the order asked for.
        let (direction, past) = if query.oldest_first {
            ("ASC", ">")
        } else {
            ("DESC", "<")
        };
        if let Some(token) = &query.next_token {
            let (started_at_ms, sandbox_id) = decode_token(token)?;
            sql.push_str(&format!(
                " AND (started_at_ms {past} ? OR (started_at_ms = ? AND sandbox_id > ?))"
            ));
            args.push(Value::Integer(started_at_ms));
            args.push(Value::Integer(started_at_ms));
            args.push(Value::Text(sandbox_id));
        }

        sql.push_str(&format!(" ORDER BY started_at_ms {direction}, sandbox_id"));
        // One row past the page tells whether another page follows.
        let limit = query.limit.map(|limit| limit.max(1));
        if let Some(limit) = limit {
            sql.push_str(" LIMIT ?");
            args.push(Value::Integer(i64::from(limit) + 1));
        }

        let mut sandboxes = self.select_sandboxes(&sql, args)?;
        let more = limit.is_some_and(|limit| sandboxes.len() > usize_from(limit));
        if more {
            sandboxes.truncate(limit.map_or(0, usize_from));
        }
        let next_token = more
            .then(|| sandboxes.last())
            .flatten()
            .map(|last| encode_token(last.started_at_ms, &last.sandbox_id));
        Ok(Page {
            sandboxes,
            next_token,
        })
    }

    /// Sandboxes that are running or paused: what a restarted server must
    /// account for.
    /// Of a node's store, only that node's.
    pub fn running_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let (mine, args) = self.node_filter(1);
        self.select_sandboxes(
            &format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state IN ('running', 'paused'){mine} \
                 ORDER BY started_at_ms DESC, sandbox_id"
            ),
            args,
        )
    }

    /// Running sandboxes whose end is at or before `now_ms`, the earliest
    /// first. Of a node's store, only that node's: the node that runs a
    /// sandbox is the one that times it out.
    pub fn expired(&self, now_ms: i64) -> Result<Vec<SandboxRecord>, StoreError> {
        let (mine, mut args) = self.node_filter(2);
        args.insert(0, Value::Integer(now_ms));
        self.select_sandboxes(
            &format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
                 WHERE state = 'running' AND end_at_ms <= ?1{mine} ORDER BY end_at_ms, sandbox_id"
            ),
            args,
        )
    }

    /// ` AND node_id = ?N` and its value, for a node's store; nothing
    /// otherwise.
    pub(crate) fn node_filter(&self, n: usize) -> (String, Vec<Value>) {
        match &self.node {
            Some(node) => (
                format!(" AND node_id = ?{n}"),
                vec![Value::Text(node.clone())],
            ),
            None => (String::new(), Vec::new()),
        }
    }

    fn select_sandboxes(
        &self,
        sql: &str,
        args: Vec<Value>,
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        let rows: Vec<SandboxRow> = self.with(|c| c.query_map(sql, &args, SandboxRow::read))?;
        rows.into_iter().map(|row| row.into_record(self)).collect()
    }
}

/// `NoSandbox` when an update by id touched no row.
fn found(changed: usize, id: &str) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::NoSandbox(id.to_owned()));
    }
    Ok(())
}

fn key_from_row(row: &Row) -> Result<KeyInfo, DbError> {
    Ok(KeyInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        prefix: row.get(2)?,
        created_at: secs_from_sql(row.get(3)?),
        last_used: row.get::<Option<i64>>(4)?.map(secs_from_sql),
        revoked: row.get(5)?,
        suffix: row.get(6)?,
    })
}

/// A sandbox as its columns hold it: maps as JSON, the state as text.
struct SandboxRow {
    sandbox_id: String,
    template_id: String,
    alias: Option<String>,
    client_id: String,
    state: String,
    metadata: String,
    env_vars: String,
    started_at_ms: i64,
    end_at_ms: i64,
    cpu_count: u32,
    memory_mb: u32,
    secure: bool,
    envd_access_token: Option<String>,
    auto_pause: bool,
    allow_internet_access: bool,
    egress: String,
    stop_reason: Option<String>,
    lifecycle: Option<String>,
    auto_pause_memory: bool,
    auto_resume: bool,
    timeout_secs: i64,
    volume_mounts: String,
}

impl SandboxRow {
    fn from_record(r: &SandboxRecord) -> Self {
        Self {
            sandbox_id: r.sandbox_id.clone(),
            template_id: r.template_id.clone(),
            alias: r.alias.clone(),
            client_id: r.client_id.clone(),
            state: r.state.as_str().to_owned(),
            metadata: to_json(&r.metadata),
            env_vars: to_json(&r.env_vars),
            started_at_ms: r.started_at_ms,
            end_at_ms: r.end_at_ms,
            cpu_count: r.cpu_count,
            memory_mb: r.memory_mb,
            secure: r.secure,
            envd_access_token: r.envd_access_token.clone(),
            auto_pause: r.auto_pause,
            allow_internet_access: r.allow_internet_access,
            egress: serde_json::to_string(&r.egress).expect("a policy serialises"),
            stop_reason: r.stop_reason.clone(),
            lifecycle: r.lifecycle.clone(),
            auto_pause_memory: r.auto_pause_memory,
            auto_resume: r.auto_resume,
            timeout_secs: secs_to_sql(r.timeout_secs),
            volume_mounts: serde_json::to_string(&r.volumes).expect("mounts serialise"),
        }
    }

    /// The values in [`SANDBOX_COLUMNS`] order.
    fn params(&self) -> Vec<Value> {
        params![
            &self.sandbox_id,
            &self.template_id,
            &self.alias,
            &self.client_id,
            &self.state,
            &self.metadata,
            &self.env_vars,
            &self.started_at_ms,
            &self.end_at_ms,
            &self.cpu_count,
            &self.memory_mb,
            &self.secure,
            &self.envd_access_token,
            &self.auto_pause,
            &self.allow_internet_access,
            &self.egress,
            &self.stop_reason,
            &self.lifecycle,
            &self.auto_pause_memory,
            &self.auto_resume,
            &self.timeout_secs,
            &self.volume_mounts,
        ]
        .to_vec()
    }

    fn read(row: &Row) -> Result<Self, DbError> {
        Ok(Self {
            sandbox_id: row.get(0)?,
            template_id: row.get(1)?,
            alias: row.get(2)?,
            client_id: row.get(3)?,
            state: row.get(4)?,
            metadata: row.get(5)?,
            env_vars: row.get(6)?,
            started_at_ms: row.get(7)?,
            end_at_ms: row.get(8)?,
            cpu_count: row.get(9)?,
            memory_mb: row.get(10)?,
            secure: row.get(11)?,
            envd_access_token: row.get(12)?,
            auto_pause: row.get(13)?,
            allow_internet_access: row.get(14)?,
            egress: row.get(15)?,
            stop_reason: row.get(16)?,
            lifecycle: row.get(17)?,
            auto_pause_memory: row.get(18)?,
            auto_resume: row.get(19)?,
            timeout_secs: row.get(20)?,
            volume_mounts: row.get(21)?,
        })
    }

    fn into_record(self, store: &Store) -> Result<SandboxRecord, StoreError> {
        let map = |json: &str, what: &str| {
            serde_json::from_str(json).map_err(|err| {
                store.corrupt(format_args!("sandbox {}: {what}: {err}", self.sandbox_id))
            })
        };
        let state = self
            .state
            .parse()
            .map_err(|err| store.corrupt(format_args!("sandbox {}: {err}", self.sandbox_id)))?;
        let metadata = map(&self.metadata, "metadata")?;
        let env_vars = map(&self.env_vars, "env_vars")?;
        let volumes = serde_json::from_str(&self.volume_mounts).map_err(|err| {
            store.corrupt(format_args!(
                "sandbox {}: volume_mounts: {err}",
                self.sandbox_id
            ))
        })?;
        let egress = serde_json::from_str(&self.egress).map_err(|err| {
            store.corrupt(format_args!("sandbox {}: egress: {err}", self.sandbox_id))
        })?;
        Ok(SandboxRecord {
            sandbox_id: self.sandbox_id,
            template_id: self.template_id,
            alias: self.alias,
            client_id: self.client_id,
            state,
            metadata,
            env_vars,
            started_at_ms: self.started_at_ms,
            end_at_ms: self.end_at_ms,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            secure: self.secure,
            envd_access_token: self.envd_access_token,
            auto_pause: self.auto_pause,
            allow_internet_access: self.allow_internet_access,
            egress,
            stop_reason: self.stop_reason,
            lifecycle: self.lifecycle,
            auto_pause_memory: self.auto_pause_memory,
            auto_resume: self.auto_resume,
            timeout_secs: secs_from_sql(self.timeout_secs),
            volumes,
        })
    }
}

/// A string map as a JSON object; building the value rather than
/// serialising the map keeps this infallible.
fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
    .to_string()
}

/// The opaque page token: `<started_at_ms>:<sandbox_id>` of a page's last
/// row, base64url without padding.
fn encode_token(started_at_ms: i64, sandbox_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{started_at_ms}:{sandbox_id}"))
}

fn decode_token(token: &str) -> Result<(i64, String), StoreError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::BadToken)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadToken)?;
    let (ms, id) = text.split_once(':').ok_or(StoreError::BadToken)?;
    let ms = ms.parse().map_err(|_| StoreError::BadToken)?;
    if id.is_empty() {
        return Err(StoreError::BadToken);
    }
    Ok((ms, id.to_owned()))
}

/// A store URL as messages show it: without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL with a password has a host.
                let _ = parsed.set_password(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => "(an unreadable URL)".to_owned(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds fit an SQLite integer until the year 292 billion.
fn secs_to_sql(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn secs_from_sql(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0)
}

fn usize_from(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Records sandbox `id` stopped for `reason` at `now_ms`, with its
/// `killed` event, in transaction `tx`; false if it had stopped already.
pub(crate) fn stop_in(
    tx: &mut dyn Sql,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, DbError> {
    let changed = tx.execute(
        "UPDATE sandboxes SET state = 'killed', stop_reason = ?2, end_at_ms = ?3, \
         lifecycle = 'stopped' WHERE sandbox_id = ?1 AND state != 'killed'",
        params![id, reason, now_ms],
    )?;
    if changed > 0 {
        events::record_sandbox(
            tx,
            EventType::SandboxKilled,
            id,
            events::killed_data(reason),
            now_ms,
        )?;
    }
    Ok(changed > 0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    pub(super) fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state/hearth.db")).unwrap();
        (dir, store)
    }

    pub(super) fn sandbox(id: &str, started_at_ms: i64) -> SandboxRecord {
        SandboxRecord {
            sandbox_id: id.to_owned(),
            template_id: "base".to_owned(),
            alias: Some("base-alias".to_owned()),
            client_id: "hearth".to_owned(),
            state: SandboxState::Running,
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            started_at_ms,
            end_at_ms: started_at_ms + 300_000,
            cpu_count: 2,
            memory_mb: 512,
            secure: false,
            envd_access_token: None,
            auto_pause: false,
            allow_internet_access: true,
            egress: Egress::open(),
            stop_reason: None,
            lifecycle: Some("running".into()),
            auto_pause_memory: true,
            auto_resume: false,
            timeout_secs: 300,
            volumes: Vec::new(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ids(records: &[SandboxRecord]) -> Vec<&str> {
        records.iter().map(|r| r.sandbox_id.as_str()).collect()
    }

    fn list(store: &Store, query: SandboxQuery) -> Vec<String> {
        let page = store.list_sandboxes(&query).unwrap();
        assert_eq!(page.next_token, None);
        ids(&page.sandboxes)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn new_store_file_is_private_and_versioned() {
        let (dir, store) = open_temp();
        let path = dir.path().join("state/hearth.db");
        assert_eq!(store.location(), path.display().to_string());
        assert_eq!(store.database(), "sqlite");
        store.create_key("any").unwrap();
        // The WAL file exists while the store is open and holds data too.
        for file in ["hearth.db", "hearth.db-wal"] {
            let meta = fs::metadata(path.with_file_name(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        let version: i64 = pragma(&store, "user_version");
        assert_eq!(version, SCHEMA_VERSION);
        let journal: String = pragma(&store, "journal_mode");
        assert_eq!(journal, "wal");
    }

    #[test]
    fn a_version_1_store_is_upgraded_with_open_egress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO sandboxes VALUES ('old', 'base', NULL, 'c', 'paused', '{}', '{}', \
                 1, 2, 2, 512, 0, NULL, 0, 1)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let old = store.get_sandbox("old").unwrap().unwrap();
        assert_eq!(old.state, SandboxState::Paused);
        assert_eq!(old.egress, Egress::open());
        // Older rows keep E2B's defaults: a full auto-pause, no auto-resume.
        assert!(old.auto_pause_memory && !old.auto_resume);
        assert_eq!(old.timeout_secs, 300);
        let version: i64 = pragma(&store, "user_version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    fn pragma<T: db::FromValue>(store: &Store, name: &str) -> T {
        store
            .with(|c| c.query_row(&format!("PRAGMA {name}"), params![], |r| r.get(0)))
            .unwrap()
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (dir, store) = open_temp();
        store
            .with(|c| c.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1)))
            .unwrap();
        drop(store);
        let err = Store::open(&dir.path().join("state/hearth.db")).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
    }

    store_test! {
    fn keys_check_and_revoke(store) {
        let (info, key) = store.create_key("laptop").unwrap();
        assert_eq!(info.name, "laptop");
        assert_eq!(info.id.len(), 12);
        assert!(info.id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(info.prefix, key[..12]);
        assert!(info.prefix.starts_with("e2b_"));
        assert_eq!(info.last_used, None);
        assert!(!info.revoked);

        let checked = store.check_key(&key).unwrap().unwrap();
        assert_eq!(checked.id, info.id);
        assert!(checked.last_used.is_some());
        assert_eq!(store.list_keys().unwrap()[0].last_used, checked.last_used);

        assert_eq!(store.check_key("e2b_0000").unwrap(), None);
        assert_eq!(store.check_key("").unwrap(), None);
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('0') { '1' } else { '0' });
        assert_eq!(store.check_key(&wrong).unwrap(), None);

        let (_, other) = store.create_key("ci").unwrap();
        assert_eq!(store.count_active_keys().unwrap(), 2);
        assert!(store.revoke_key(&info.id).unwrap());
        assert!(!store.revoke_key("nosuchkey").unwrap());
        assert_eq!(store.check_key(&key).unwrap(), None);
        assert!(store.check_key(&other).unwrap().is_some());
        assert_eq!(store.count_active_keys().unwrap(), 1);

        let listed = store.list_keys().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|k| k.id == info.id && k.revoked));
    }
    }

    store_test! {
    fn keys_rename_unless_revoked_and_delete(store) {
        let (a, _) = store.create_key("a").unwrap();
        let (b, _) = store.create_key("b").unwrap();
        assert!(store.rename_key(&a.id, "laptop").unwrap());
        assert!(store.revoke_key(&b.id).unwrap());
        assert!(!store.rename_key(&b.id, "gone").unwrap());
        assert!(!store.rename_key("nosuchkey", "x").unwrap());
        // Made in one second, so listed in the order of their random ids.
        let mut names: Vec<String> = store.list_keys().unwrap().into_iter().map(|k| k.name).collect();
        names.sort();
        assert_eq!(names, ["b", "laptop"]);
        assert!(store.delete_key(&b.id).unwrap());
        assert!(!store.delete_key(&b.id).unwrap());
        assert_eq!(store.list_keys().unwrap().len(), 1);
    }
    }

    store_test! {
    fn team_samples_are_kept_in_a_window_and_replaced_by_time(store) {
        store.add_team_sample(1_000, 3, 1, 0).unwrap();
        store.add_team_sample(2_000, 4, 2, 0).unwrap();
        // The same instant again replaces its sample.
        store.add_team_sample(2_000, 5, 3, 0).unwrap();
        assert_eq!(
            store.team_samples(0, 10_000).unwrap(),
            [(1_000, 3, 1), (2_000, 5, 3)]
        );
        // Samples before the window go.
        store.add_team_sample(3_000, 1, 0, 2_000).unwrap();
        assert_eq!(
            store.team_samples(0, 2_999).unwrap(),
            [(2_000, 5, 3)]
        );
    }
    }

    store_test! {
    fn a_postponed_end_moves_the_timeout_without_an_event(store) {
        store.insert_sandbox(&sandbox("sbx", 10)).unwrap();
        let before = store.last_seq().unwrap();
        store.postpone_end("sbx", 99_000).unwrap();
        assert_eq!(store.get_sandbox("sbx").unwrap().unwrap().end_at_ms, 99_000);
        assert_eq!(store.last_seq().unwrap(), before);
        assert!(matches!(
            store.postpone_end("ghost", 1),
            Err(StoreError::NoSandbox(id)) if id == "ghost"
        ));
    }
    }

    #[test]
    fn a_spec_names_a_file_or_a_postgres_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.db");
        let store = Store::open_spec(file.to_str().unwrap()).unwrap();
        assert_eq!(store.database(), "sqlite");
        let err = Store::open_spec("postgres://user:secret@127.0.0.1:1/x?sslmode=nonsense")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        // Nothing listens on port 1: refused by name, without the password.
        let err = Store::open_spec("postgresql://user:secret@127.0.0.1:1/x").unwrap_err();
        let text = format!("{err}");
        assert!(matches!(err, StoreError::Open { .. }), "{text}");
        assert!(
            text.contains("127.0.0.1:1") && !text.contains("secret"),
            "{text}"
        );
    }

    #[test]
    fn key_plaintext_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        let store = Store::open(&path).unwrap();
        let (_, key) = store.create_key("laptop").unwrap();
        store.check_key(&key).unwrap();
        drop(store);

        let hash = keys::hash_key(&key);
        let mut seen_hash = false;
        for entry in fs::read_dir(dir.path()).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            assert!(!found(key.as_bytes()), "plaintext key in the store");
            assert!(!found(&key.as_bytes()[12..]), "key tail in the store");
            seen_hash |= found(hash.as_bytes());
        }
        assert!(seen_hash, "the scan did not see the stored hash");
    }

    store_test! {
    fn sandbox_round_trip(store) {
        let mut rec = sandbox("sbx1", 1_000);
        rec.metadata = map(&[("owner", "ana"), ("weird \"key\"", "ü\n")]);
        rec.env_vars = map(&[("PATH", "/bin"), ("EMPTY", "")]);
        rec.envd_access_token = Some("tok".to_owned());
        rec.alias = None;
        store.insert_sandbox(&rec).unwrap();
        assert_eq!(store.get_sandbox("sbx1").unwrap().unwrap(), rec);
        assert_eq!(store.get_sandbox("nope").unwrap(), None);
        assert!(matches!(
            store.insert_sandbox(&rec),
            Err(StoreError::SandboxExists(id)) if id == "sbx1"
        ));

        rec.state = SandboxState::Paused;
        rec.metadata.insert("stage".to_owned(), "2".to_owned());
        rec.cpu_count = 4;
        rec.memory_mb = 2048;
        rec.secure = true;
        rec.auto_pause = true;
        rec.auto_pause_memory = false;
        rec.auto_resume = true;
        rec.timeout_secs = 3600;
        rec.allow_internet_access = false;
        rec.egress = Egress::closed();
        store.update_sandbox(&rec).unwrap();
        assert_eq!(store.get_sandbox("sbx1").unwrap().unwrap(), rec);

        store.set_state("sbx1", SandboxState::Running).unwrap();
        store.set_end_at("sbx1", 42).unwrap();
        let got = store.get_sandbox("sbx1").unwrap().unwrap();
        assert_eq!(got.state, SandboxState::Running);
        assert_eq!(got.end_at_ms, 42);
        let only_host = Egress {
            allow: vec!["10.0.0.1".parse().unwrap()],
            deny: vec![hearth_node::Cidr::ANY],
            publish: vec!["8080:80".parse().unwrap()],
            ..Egress::default()
        };
        store.set_egress("sbx1", true, &only_host).unwrap();
        let got = store.get_sandbox("sbx1").unwrap().unwrap();
        assert!(got.allow_internet_access);
        assert_eq!(got.egress, only_host);
        assert_eq!(got.end_at_ms, 42);

        let missing = sandbox("ghost", 0);
        assert!(matches!(
            store.update_sandbox(&missing),
            Err(StoreError::NoSandbox(_))
        ));
        assert!(matches!(
            store.set_state("ghost", SandboxState::Killed),
            Err(StoreError::NoSandbox(_))
        ));
        assert!(matches!(
            store.set_egress("ghost", true, &Egress::open()),
            Err(StoreError::NoSandbox(_))
        ));
        assert!(matches!(
            store.set_end_at("ghost", 1),
            Err(StoreError::NoSandbox(_))
        ));

        // A stop is recorded once, with its reason; the row goes later.
        assert!(
            store
                .stop_sandbox("sbx1", "VM exited: VMM exit status 0", 50)
                .unwrap()
        );
        assert!(!store.stop_sandbox("sbx1", "killed", 60).unwrap());
        assert!(!store.stop_sandbox("ghost", "killed", 60).unwrap());
        let stopped = store.get_sandbox("sbx1").unwrap().unwrap();
        assert_eq!(stopped.state, SandboxState::Killed);
        assert_eq!(
            stopped.stop_reason.as_deref(),
            Some("VM exited: VMM exit status 0")
        );
        assert_eq!(stopped.end_at_ms, 50);
        assert!(store.running_sandboxes().unwrap().is_empty());
        assert_eq!(store.forget_stopped(50).unwrap(), 0);
        assert_eq!(store.forget_stopped(51).unwrap(), 1);
        assert_eq!(store.get_sandbox("sbx1").unwrap(), None);
    }
    }

    store_test! {
    fn list_filters_by_state_and_metadata(store) {
        let mut a = sandbox("a", 3);
        a.metadata = map(&[("team", "x"), ("env", "prod")]);
        let mut b = sandbox("b", 2);
        b.state = SandboxState::Paused;
        b.metadata = map(&[("team", "x")]);
        let mut c = sandbox("c", 1);
        c.state = SandboxState::Killed;
        c.metadata = map(&[("team", "x"), ("env", "prod")]);
        let mut d = sandbox("d", 0);
        d.metadata = map(&[("team", "xy"), ("env", "prod")]);
        for rec in [&a, &b, &c, &d] {
            store.insert_sandbox(rec).unwrap();
        }

        let all = SandboxQuery::default();
        assert_eq!(list(&store, all.clone()), vec!["a", "b", "d"]);
        let states = |states: Vec<SandboxState>| SandboxQuery {
            states,
            ..SandboxQuery::default()
        };
        assert_eq!(
            list(&store, states(vec![SandboxState::Killed])),
            vec!["c"],
            "killed ones only when asked for"
        );
        assert_eq!(
            list(
                &store,
                states(vec![SandboxState::Paused, SandboxState::Killed])
            ),
            vec!["b", "c"]
        );

        let meta = |pairs: &[(&str, &str)]| SandboxQuery {
            metadata: map(pairs),
            ..SandboxQuery::default()
        };
        assert_eq!(list(&store, meta(&[("team", "x")])), vec!["a", "b"]);
        assert_eq!(
            list(&store, meta(&[("team", "x"), ("env", "prod")])),
            vec!["a"]
        );
        assert_eq!(list(&store, meta(&[("env", "prod")])), vec!["a", "d"]);
        assert!(list(&store, meta(&[("team", "X")])).is_empty());
        assert!(list(&store, meta(&[("nokey", "")])).is_empty());

        let both = SandboxQuery {
            states: vec![SandboxState::Killed, SandboxState::Running],
            metadata: map(&[("env", "prod")]),
            ..SandboxQuery::default()
        };
        assert_eq!(list(&store, both), vec!["a", "c", "d"]);
    }
    }

    store_test! {
    fn pagination_walks_every_row_once(store) {
        // Two share a start time so the id tie-break is exercised, and a
        // killed one and a non-matching one must never appear.
        for (id, ms) in [("e", 50), ("a", 40), ("c", 40), ("b", 30), ("d", 10)] {
            let mut rec = sandbox(id, ms);
            rec.metadata = map(&[("k", "v")]);
            store.insert_sandbox(&rec).unwrap();
        }
        let mut killed = sandbox("k", 35);
        killed.state = SandboxState::Killed;
        killed.metadata = map(&[("k", "v")]);
        store.insert_sandbox(&killed).unwrap();
        store.insert_sandbox(&sandbox("other", 45)).unwrap();

        let mut query = SandboxQuery {
            metadata: map(&[("k", "v")]),
            limit: Some(2),
            ..SandboxQuery::default()
        };
        let mut pages = Vec::new();
        loop {
            let page = store.list_sandboxes(&query).unwrap();
            pages.push(
                ids(&page.sandboxes)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => break,
            }
            assert!(pages.len() < 10, "pagination does not end");
        }
        assert_eq!(pages, [vec!["e", "a"], vec!["c", "b"], vec!["d"]]);
        let seen: HashSet<_> = pages.iter().flatten().collect();
        assert_eq!(seen.len(), 5);

        // An exact fit ends without a token to an empty page.
        query.limit = Some(5);
        query.next_token = None;
        let page = store.list_sandboxes(&query).unwrap();
        assert_eq!(page.sandboxes.len(), 5);
        assert_eq!(page.next_token, None);
    }
    }

    store_test! {
    fn oldest_first_by_time_and_template_a_page_at_a_time(store) {
        for (id, at) in [("b", 20), ("a", 20), ("c", 30), ("d", 10)] {
            store.insert_sandbox(&sandbox(id, at)).unwrap();
        }
        let mut other = sandbox("o", 25);
        other.template_id = "tmpl-x".to_owned();
        other.alias = Some("python".to_owned());
        store.insert_sandbox(&other).unwrap();

        let mut query = SandboxQuery {
            oldest_first: true,
            limit: Some(2),
            ..SandboxQuery::default()
        };
        let mut pages = Vec::new();
        loop {
            let page = store.list_sandboxes(&query).unwrap();
            pages.push(ids(&page.sandboxes).join(","));
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => break,
            }
            assert!(pages.len() < 10, "pagination does not end");
        }
        assert_eq!(pages, ["d,a", "b,o", "c"]);

        let after = |ms, oldest_first| SandboxQuery {
            started_after_ms: Some(ms),
            oldest_first,
            ..SandboxQuery::default()
        };
        assert_eq!(list(&store, after(20, false)), vec!["c", "o", "a", "b"]);
        assert_eq!(list(&store, after(21, true)), vec!["o", "c"]);
        for name in ["python", "tmpl-x"] {
            let by_template = SandboxQuery {
                template: Some(name.to_owned()),
                ..SandboxQuery::default()
            };
            assert_eq!(list(&store, by_template), vec!["o"], "{name}");
        }
    }
    }

    store_test! {
    fn bad_tokens_are_refused(store) {
        for token in [
            "!!!",
            "",
            &URL_SAFE_NO_PAD.encode("no-colon"),
            &URL_SAFE_NO_PAD.encode("abc:id"),
            &URL_SAFE_NO_PAD.encode("12:"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe, b':', b'x']),
        ] {
            let query = SandboxQuery {
                next_token: Some(token.to_owned()),
                ..SandboxQuery::default()
            };
            assert!(
                matches!(store.list_sandboxes(&query), Err(StoreError::BadToken)),
                "{token:?}"
            );
        }
        assert_eq!(
            decode_token(&encode_token(-5, "a:b")).unwrap(),
            (-5, "a:b".to_owned())
        );
    }
    }

    store_test! {
    fn expired_and_running(store) {
        let mut due = sandbox("due", 0);
        due.end_at_ms = 100;
        let mut exact = sandbox("exact", 0);
        exact.end_at_ms = 200;
        let mut later = sandbox("later", 0);
        later.end_at_ms = 201;
        let mut paused = sandbox("paused", 0);
        paused.state = SandboxState::Paused;
        paused.end_at_ms = 50;
        let mut killed = sandbox("killed", 0);
        killed.state = SandboxState::Killed;
        killed.end_at_ms = 50;
        for rec in [&due, &exact, &later, &paused, &killed] {
            store.insert_sandbox(rec).unwrap();
        }

        assert_eq!(ids(&store.expired(200).unwrap()), vec!["due", "exact"]);
        assert!(store.expired(99).unwrap().is_empty());
        let mut live = ids(&store.running_sandboxes().unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        live.sort();
        assert_eq!(live, ["due", "exact", "later", "paused"]);
    }
    }

    store_test! {
    fn every_lifecycle_move_is_kept_and_a_stop_ends_it(store) {
        store.insert_sandbox(&sandbox("sb", 0)).unwrap();
        let lifecycle = |store: &Store| store.get_sandbox("sb").unwrap().unwrap().lifecycle;
        assert_eq!(lifecycle(&store).as_deref(), Some("running"));
        store.set_lifecycle("sb", "pausing").unwrap();
        assert_eq!(lifecycle(&store).as_deref(), Some("pausing"));
        // A sandbox without a row (still starting) is no error.
        store.set_lifecycle("nobody", "starting").unwrap();
        assert!(store.stop_sandbox("sb", "killed", 5).unwrap());
        let stopped = store.get_sandbox("sb").unwrap().unwrap();
        assert_eq!(stopped.lifecycle.as_deref(), Some("stopped"));
        assert_eq!(stopped.state, SandboxState::Killed);
    }
    }

    #[test]
    fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        let store = Store::open(&path).unwrap();
        let (info, key) = store.create_key("laptop").unwrap();
        let mut rec = sandbox("sbx", 7);
        rec.metadata = map(&[("a", "b")]);
        store.insert_sandbox(&rec).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.check_key(&key).unwrap().unwrap().id, info.id);
        assert_eq!(store.get_sandbox("sbx").unwrap().unwrap(), rec);
        assert_eq!(store.count_active_keys().unwrap(), 1);
    }

    #[test]
    fn states_parse_and_print() {
        for state in [
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Killed,
        ] {
            assert_eq!(state.as_str().parse::<SandboxState>().unwrap(), state);
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{state}\"")
            );
        }
        assert_eq!(
            "Running".parse::<SandboxState>(),
            Err(BadState("Running".to_owned()))
        );
        assert_eq!(
            SandboxState::parse_list("running, paused").unwrap(),
            vec![SandboxState::Running, SandboxState::Paused]
        );
        assert_eq!(
            SandboxState::parse_list("killed").unwrap(),
            vec![SandboxState::Killed]
        );
        assert_eq!(SandboxState::parse_list("").unwrap(), vec![]);
        assert_eq!(
            SandboxState::parse_list("running,sleeping"),
            Err(BadState("sleeping".to_owned()))
        );
    }
}
