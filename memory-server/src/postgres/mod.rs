//! Team memory (SPEC 2.12): every project kept in one PostgreSQL database that several
//! daemons share. `Database` owns the pool, the schema check and the LISTEN loop that
//! turns other daemons' writes into change notices; `graph` holds the nine operations.
//! Nothing here touches the file system: a project is the key the request names.

mod graph;
mod notify;
mod schema;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;

pub(crate) use graph::import_graph;
pub(crate) use graph::{add_observations, create_entities, create_relations, delete_entities, delete_observations};
pub(crate) use graph::{delete_relations, open_nodes, read_graph, search_nodes};

/// Connections a daemon keeps to the database at most (each write holds one for its
/// transaction; reads hold one for a few pipelined statements).
const POOL_SIZE: usize = 16;
/// How long a request waits for a connection, and a new connection for the server,
/// before it fails naming the database: an outage answers errors, never hangs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one operation may take, statements and retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Transactions aborted by a deadlock or a serialization conflict are run again this many
/// times (two daemons creating the same entities in different orders can deadlock).
const CONFLICT_RETRIES: usize = 8;
/// Project keys remembered with their row ids; beyond this the cache starts over, so
/// ten thousand projects cost no more than a few hundred kilobytes.
const MAX_CACHED_PROJECTS: usize = 4096;
/// Longest project key accepted (a path or an `Mcp-Project-Id`).
pub const MAX_PROJECT_KEY_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database cannot be reached (down, restarting, refusing connections).
    #[error("PostgreSQL database {db} is unavailable: {reason}")]
    Unavailable { db: String, reason: String },
    #[error("PostgreSQL database {db}: {reason}")]
    Query { db: String, reason: String },
    #[error("PostgreSQL database {db}: operation took longer than {secs} s and was abandoned")]
    TimedOut { db: String, secs: u64 },
    #[error(
        "PostgreSQL database {db} holds memory-server schema version {found}, newer than this \
         memory-server's {ours}: upgrade memory-server, or use another database"
    )]
    NewerSchema { db: String, found: i32, ours: i32 },
    #[error("PostgreSQL database {db} uses the encoding {found}; memory-server needs UTF8")]
    Encoding { db: String, found: String },
    /// The official server's wording, which clients may match on.
    #[error("Entity with name {0} not found")]
    EntityNotFound(String),
    #[error("{0} contains a NUL character (U+0000), which PostgreSQL text cannot store")]
    Nul(&'static str),
    #[error("invalid database URL: {0}")]
    BadUrl(String),
}

impl PgError {
    /// Whether the database could not be reached at all, as opposed to a statement or
    /// an argument it refused: callers answer a protocol error for these.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unavailable { .. } | PgError::TimedOut { .. })
    }
}

/// `postgres://...` as given, parsed once (with libpq's `sslrootcert` and verifying
/// `sslmode`s, see `tls`); shown without its password.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    shown: String,
    /// `sslmode=require`: the connector, with its roots loaded.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, PgError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PgError::BadUrl(format!("{:?} must start with postgres:// or postgresql://", redact(url))));
        }
        let prepared = tls::prepare(url).map_err(|e| PgError::BadUrl(format!("{}: {e}", redact(url))))?;
        let mut config: tokio_postgres::Config =
            prepared.url.parse().map_err(|e| PgError::BadUrl(format!("{}: {e}", redact(url))))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls::connector(prepared.root_cert.as_deref())?),
            _ => None,
        };
        config.application_name("memory-server");
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let shown = shown(&config);
        Ok(DatabaseUrl { config, shown, tls })
    }

    /// `postgres://user@host:port/db`, never the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

fn shown(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("postgres://{user}{host}:{port}/{db}")
}

/// The URL with anything between `://` and `@` after a `:` (a password) replaced.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &url[..scheme_end + 3], &rest[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// A project as PostgreSQL keys it: the `Mcp-Project-Id` value, else the
/// `Mcp-Project-Path` value as sent (percent-decoded), else `""` for the global memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProjectKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectKeyError {
    #[error("{0} is not valid UTF-8 after percent-decoding")]
    NotUtf8(&'static str),
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("{0} is longer than {MAX_PROJECT_KEY_BYTES} bytes")]
    TooLong(&'static str),
}

impl ProjectKey {
    /// The global memory (no project header).
    pub fn global() -> ProjectKey {
        ProjectKey(String::new())
    }

    /// Parses a header value (`header` names it in errors): percent-decoded when it
    /// holds `%XX` sequences, as the proxy sends both headers; no file-system access.
    pub fn from_header(header: &'static str, raw: &[u8]) -> Result<ProjectKey, ProjectKeyError> {
        let decoded = crate::project::percent_decoded(raw);
        let text = String::from_utf8(decoded).map_err(|_| ProjectKeyError::NotUtf8(header))?;
        Self::new(header, text)
    }

    /// A key given as text (`--project-id`).
    pub fn new(what: &'static str, text: String) -> Result<ProjectKey, ProjectKeyError> {
        if text.contains('\0') {
            return Err(ProjectKeyError::Nul(what));
        }
        if text.len() > MAX_PROJECT_KEY_BYTES {
            return Err(ProjectKeyError::TooLong(what));
        }
        Ok(ProjectKey(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.is_empty() {
            true => f.write_str("(global)"),
            false => f.write_str(&self.0),
        }
    }
}

/// One PostgreSQL database holding every project's memory.
pub struct Database {
    url: DatabaseUrl,
    pool: Pool,
    /// Project key → row id, for the projects this daemon served lately.
    projects: DashMap<ProjectKey, i64>,
    /// Change notices per project row id, fed by the LISTEN loop (`notify`), so a write
    /// through any daemon on this database reaches this daemon's subscribers.
    changes: Arc<notify::Channels>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// One project's memory in the database.
#[derive(Clone)]
pub struct Project {
    db: Arc<Database>,
    id: i64,
}

impl Database {
    /// Connects, creates or migrates the schema (refusing a newer one) and starts
    /// listening for other daemons' writes. Fails naming the database when it cannot be
    /// reached now: a daemon is not started against a database it has never seen.
    pub async fn open(url: DatabaseUrl) -> Result<Arc<Database>, PgError> {
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &url.tls {
            Some(tls) => Manager::from_config(url.config.clone(), tls.clone(), recycling),
            None => Manager::from_config(url.config.clone(), NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| PgError::BadUrl(format!("{}: {e}", url.shown)))?;
        let db = Arc::new(Database {
            url,
            pool,
            projects: DashMap::new(),
            changes: Arc::new(notify::Channels::default()),
            shutdown: tokio_util::sync::CancellationToken::new(),
        });
        {
            let mut client = db.client().await?;
            schema::migrate(&mut client, db.shown()).await.map_err(|e| db.error(e))??;
        }
        notify::spawn_listener(db.url.clone(), db.changes.clone(), db.shutdown.clone());
        Ok(db)
    }

    /// `postgres://user@host:port/db`, for messages and `/health`.
    pub fn shown(&self) -> &str {
        self.url.shown()
    }

    /// Ends the LISTEN loop (the pool's connections close as they are dropped).
    pub fn close(&self) {
        self.shutdown.cancel();
        self.pool.close();
    }

    /// The project `key`, its row created on first use.
    pub async fn project(self: &Arc<Self>, key: &ProjectKey) -> Result<Project, PgError> {
        if let Some(id) = self.projects.get(key) {
            return Ok(Project { db: self.clone(), id: *id });
        }
        let id = self
            .bounded(async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "WITH new AS (
                            INSERT INTO memory_projects (key, key_hash) VALUES ($1, $2)
                            ON CONFLICT (key_hash) DO NOTHING RETURNING id)
                         SELECT id FROM new UNION ALL
                         SELECT id FROM memory_projects WHERE key_hash = $2",
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                // Another daemon inserting the same key at the same moment commits after this
                // statement's snapshot: the insert then does nothing and the select does not
                // see that row yet. The next statement, with a new snapshot, does.
                let hash = graph::hash(key.as_str());
                for _ in 0..3 {
                    let row = client.query_opt(&stmt, &[&key.as_str(), &hash]).await.map_err(|e| self.error(e))?;
                    if let Some(row) = row {
                        return Ok(row.get::<_, i64>(0));
                    }
                }
                Err(PgError::Query {
                    db: self.shown().to_owned(),
                    reason: format!("project {key} could not be created"),
                })
            })
            .await?;
        if self.projects.len() >= MAX_CACHED_PROJECTS {
            self.projects.clear();
        }
        self.projects.insert(key.clone(), id);
        Ok(Project { db: self.clone(), id })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool.get().await.map_err(|e| PgError::Unavailable { db: self.shown().to_owned(), reason: pool_reason(e) })
    }

    /// Runs `op` within [`OPERATION_TIMEOUT`].
    async fn bounded<T>(&self, op: impl Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
        tokio::time::timeout(OPERATION_TIMEOUT, op).await.unwrap_or_else(|_| {
            Err(PgError::TimedOut { db: self.shown().to_owned(), secs: OPERATION_TIMEOUT.as_secs() })
        })
    }

    /// A driver error, classified: connection-level failures are `Unavailable`.
    fn error(&self, e: tokio_postgres::Error) -> PgError {
        let db = self.shown().to_owned();
        if connection_lost(&e) {
            return PgError::Unavailable { db, reason: reason(&e) };
        }
        PgError::Query { db, reason: reason(&e) }
    }
}

impl Project {
    /// Runs `work` in one read-committed write transaction and announces the change to
    /// every daemon listening on the database (NOTIFY, delivered at commit). A deadlock
    /// or serialization conflict runs it again; a connection lost before the commit was
    /// sent runs it once more on a fresh connection (nothing of it was committed).
    pub(crate) async fn write<A: Sync + ?Sized, T>(&self, args: &A, work: Work<A, T>) -> Result<T, PgError> {
        let db = &self.db;
        db.bounded(async {
            let mut reconnected = false;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut client = db.client().await?;
                let result: Result<T, GraphFailure> = async {
                    let tx = client.transaction().await?;
                    let out = work(&tx, self.id, args).await?;
                    let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
                    tx.execute(&notify, &[&notify::CHANNEL, &self.id.to_string()]).await?;
                    tx.commit().await.map_err(GraphFailure::Commit)?;
                    Ok(out)
                }
                .await;
                match result {
                    Ok(out) => return Ok(out),
                    Err(GraphFailure::Pg(e)) if is_conflict(&e) && attempt <= CONFLICT_RETRIES => continue,
                    Err(GraphFailure::Pg(e)) if connection_lost(&e) && !reconnected => {
                        // A pooled connection the server closed (restart): drop it, try a new one.
                        reconnected = true;
                        drop(deadpool_postgres::Object::take(client));
                        continue;
                    }
                    Err(GraphFailure::Commit(e)) if is_conflict(&e) && attempt <= CONFLICT_RETRIES => continue,
                    Err(failure) => return Err(failure.into_pg(db)),
                }
            }
        })
        .await
    }

    /// Runs `work` in one read-only repeatable-read transaction: its statements see one
    /// snapshot. A connection lost on the first try is retried once.
    pub(crate) async fn read<A: Sync + ?Sized, T>(&self, args: &A, work: Work<A, T>) -> Result<T, PgError> {
        let db = &self.db;
        db.bounded(async {
            let mut reconnected = false;
            loop {
                let mut client = db.client().await?;
                let result: Result<T, GraphFailure> = async {
                    let tx = client
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await?;
                    let out = work(&tx, self.id, args).await?;
                    tx.commit().await?;
                    Ok(out)
                }
                .await;
                match result {
                    Ok(out) => return Ok(out),
                    Err(GraphFailure::Pg(e)) if connection_lost(&e) && !reconnected => {
                        reconnected = true;
                        drop(deadpool_postgres::Object::take(client));
                        continue;
                    }
                    Err(failure) => return Err(failure.into_pg(db)),
                }
            }
        })
        .await
    }

    /// Change notices of this project, from writes through any daemon on the database.
    pub fn changes(&self) -> broadcast::Receiver<()> {
        self.db.changes.subscribe(self.id)
    }

    /// The project's row id: what subscriptions are keyed by.
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn database(&self) -> &str {
        self.db.shown()
    }
}

/// An operation's work inside its transaction: the transaction, the project's row id and
/// the operation's arguments. A plain function returning a boxed future, so the caller's
/// future provably stays `Send` (a generic async closure over a borrowed transaction is
/// beyond what today's compiler can prove `Send` for every lifetime).
pub(crate) type Work<A, T> = for<'t> fn(
    &'t deadpool_postgres::Transaction<'t>,
    i64,
    &'t A,
) -> futures_util::future::BoxFuture<'t, Result<T, GraphFailure>>;

/// Why a transaction's work failed: the driver, or the operation's own verdict.
#[derive(Debug)]
pub(crate) enum GraphFailure {
    Pg(tokio_postgres::Error),
    /// The commit itself failed: whether it took effect is unknown, so it is never retried
    /// after a lost connection.
    Commit(tokio_postgres::Error),
    Refused(PgError),
}

impl From<tokio_postgres::Error> for GraphFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        GraphFailure::Pg(e)
    }
}

impl From<PgError> for GraphFailure {
    fn from(e: PgError) -> Self {
        GraphFailure::Refused(e)
    }
}

impl GraphFailure {
    fn into_pg(self, db: &Database) -> PgError {
        match self {
            GraphFailure::Pg(e) | GraphFailure::Commit(e) => db.error(e),
            GraphFailure::Refused(e) => e,
        }
    }
}

fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// The connection is gone or the server is going away: nothing a retry on the same
/// connection could fix.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No server error at all: the socket failed (refused, reset, timed out).
        None => true,
        Some(c) => {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        }
    }
}

/// The driver's message with the server's detail when there is one.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

fn pool_reason(e: deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => reason(&e),
        PoolError::Timeout(_) => format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        PoolError::Closed => "the daemon is shutting down".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        let url = DatabaseUrl::parse("postgres://alice:s3cret@db.example:6543/team").unwrap();
        assert_eq!(url.shown(), "postgres://alice@db.example:6543/team");
        let e = DatabaseUrl::parse("mysql://alice:s3cret@db/x").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("postgres://"), "{e}");
        let e = DatabaseUrl::parse("postgres://alice:s3cret@db/x?sslmode=verify-full&sslrootcert=/no/such/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret") && e.contains("sslrootcert /no/such/ca.pem"), "{e}");
    }

    #[test]
    fn project_keys_are_decoded_and_bounded() {
        let k = ProjectKey::from_header("Mcp-Project-Id", b"github.com/org/repo").unwrap();
        assert_eq!(k.as_str(), "github.com/org/repo");
        let k = ProjectKey::from_header("Mcp-Project-Path", b"/home/a%20b").unwrap();
        assert_eq!(k.as_str(), "/home/a b");
        assert_eq!(ProjectKey::from_header("Mcp-Project-Id", b"a%00b"), Err(ProjectKeyError::Nul("Mcp-Project-Id")));
        assert_eq!(
            ProjectKey::new("--project-id", "x".repeat(MAX_PROJECT_KEY_BYTES + 1)),
            Err(ProjectKeyError::TooLong("--project-id"))
        );
        assert_eq!(ProjectKey::global().to_string(), "(global)");
    }
}
