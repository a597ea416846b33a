//! The graph browser (SPEC 2.11): `GET /ui`, a read-only single-page browser of the
//! daemon's memories, its assets (embedded in the binary) and its JSON endpoints under
//! `/ui/api/`. Every route sits behind the same guard as `/mcp` (`guard.rs`): with a
//! token, the page itself and its assets (no user data) load without one, the page
//! asks for the token once and `POST /ui/login` keeps proof of it in an HttpOnly,
//! SameSite=Strict cookie that only `/ui` accepts. Reads go through the stores' read
//! path (pooled readers, one read transaction each, on blocking threads); live updates
//! are the stores' own change broadcast, as `subscriptions/listen` uses it.
//!
//! Every response carries `Content-Security-Policy: default-src 'self'`: the page runs
//! only its own script, and that script renders user data as text nodes only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router as AxumRouter;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http::AppState;
use crate::project::ProjectPath;
use crate::projects::{Entry, ProjectsList, unix_ms};
use crate::store::graph;
use crate::store::graph::browse::{self, Counts, PageAt};
use crate::store::{DbFile, Store, StoreError};
use crate::streams::{StreamKind, TooManyStreams};

/// The page and its assets, embedded at build time.
const INDEX_HTML: &str = include_str!("ui/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("graph.js", "text/javascript; charset=utf-8", include_str!("ui/graph.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
    ("icon.svg", "image/svg+xml", include_str!("ui/icon.svg")),
];

/// Entities on one page of the list, by default and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 200;
/// Observations, and relations of each direction, listed on an entity's page at most.
const MAX_ITEMS: usize = 500;
/// Nodes drawn at most in a neighbourhood graph.
pub const MAX_GRAPH_NODES: usize = 300;
/// A search text longer than this is refused (a person types far less).
const MAX_QUERY_CHARS: usize = 1_000;
/// Projects counted at once when the list is shown (each may open its store).
const CONCURRENT_COUNTS: usize = 4;
/// How long the browser's login cookie lasts.
const COOKIE_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

pub fn routes() -> AxumRouter<AppState> {
    AxumRouter::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/login", post(login))
        .route("/ui/api/projects", get(projects))
        .route("/ui/api/projects/events", get(projects_events))
        .route("/ui/api/project", get(project))
        .route("/ui/api/entities", get(entities))
        .route("/ui/api/entity", get(entity))
        .route("/ui/api/graph", get(neighbourhood))
        .route("/ui/api/events", get(project_events))
        .layer(middleware::from_fn(security_headers))
}

/// The headers every `/ui` response carries.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/ui/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The assets change only with the binary, but a page must never mix two versions.
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static(if is_api { "no-store" } else { "no-cache" }));
    resp
}

// ---------------------------------------------------------------------------------------
// Who may see what (called by `guard.rs` when a token is configured).
// ---------------------------------------------------------------------------------------

/// Whether a request without the bearer token is let through to `/ui` anyway: the page,
/// its assets and the login carry no user data and are how the token is asked for;
/// everything else under `/ui` needs the login cookie.
pub(super) fn admits_without_bearer(req: &Request, token: &str, port: u16) -> bool {
    let path = req.uri().path();
    if !(path == "/ui" || path.starts_with("/ui/")) {
        return false;
    }
    let open = match *req.method() {
        Method::GET | Method::HEAD => path == "/ui" || path == "/ui/" || path.starts_with("/ui/assets/"),
        Method::POST => path == "/ui/login",
        _ => false,
    };
    open || cookie_matches(req.headers(), token, port)
}

/// The login cookie's name: one per port, since browsers share cookies between the ports
/// of one host (two daemons with different tokens would undo each other's logins).
fn cookie_name(port: u16) -> String {
    format!("memory_ui_{port}")
}

/// The login cookie's value: a hash of the token, never the token itself, so the cookie
/// opens `/ui` (read-only) and nothing else, and a copy of it does not leak the token.
fn cookie_value(token: &str) -> String {
    let digest = Sha256::digest(format!("memory-server graph browser\n{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie_matches(headers: &HeaderMap, token: &str, port: u16) -> bool {
    let (name, want) = (cookie_name(port), cookie_value(token));
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(n, v)| n == name && super::guard::constant_time_eq(v.as_bytes(), want.as_bytes()))
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// `POST /ui/login` with `{"token": "..."}`: the token in the body (never in a URL, never
/// logged); right, the cookie is set; wrong, 401.
async fn login(State(st): State<AppState>, body: Bytes) -> Response {
    let Some(token) = &st.config.token else {
        return UiError::BadRequest("this daemon has no token: nothing to log in to".into()).into_response();
    };
    let Ok(Login { token: given }) = serde_json::from_slice::<Login>(&body) else {
        return UiError::BadRequest("send {\"token\": \"...\"}".into()).into_response();
    };
    if !super::guard::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("graph browser login refused: wrong token");
        return UiError::WrongToken.into_response();
    }
    let cookie = format!(
        "{}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}",
        cookie_name(st.config.addr.port()),
        cookie_value(token)
    );
    set_cookie(StatusCode::NO_CONTENT, &cookie)
}

fn set_cookie(status: StatusCode, cookie: &str) -> Response {
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------
// The page and its assets.
// ---------------------------------------------------------------------------------------

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response()
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => ([(header::CONTENT_TYPE, *content_type)], *body).into_response(),
        None => UiError::NotFound(format!("no asset {name:?}")).into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Errors, mapped to a status and `{"error": "..."}` here only.
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum UiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("wrong token")]
    WrongToken,
    #[error("{0}")]
    NotFound(String),
    #[error("{0} is not a project this daemon has served")]
    UnknownProject(String),
    #[error("{0}: no database there (nothing written yet, or it was deleted)")]
    NoDatabase(String),
    #[error("no entity named {0:?}")]
    NoEntity(String),
    #[error("this server keeps no list of projects")]
    NoProjectsList,
    #[error("the graph browser shows SQLite memories only; this daemon keeps its memory in PostgreSQL ({0})")]
    TeamMemory(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Streams(#[from] TooManyStreams),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::WrongToken => StatusCode::UNAUTHORIZED,
            UiError::NotFound(_) | UiError::UnknownProject(_) | UiError::NoDatabase(_) | UiError::NoEntity(_) => {
                StatusCode::NOT_FOUND
            }
            UiError::Store(StoreError::Busy { .. }) | UiError::Streams(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::TeamMemory(_) => StatusCode::NOT_IMPLEMENTED,
            UiError::NoProjectsList | UiError::Store(_) | UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "graph browser request failed");
        }
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

// ---------------------------------------------------------------------------------------
// Which database a request is about.
// ---------------------------------------------------------------------------------------

/// A listed project (or the global database) that a request names with `project=<dir>`
/// (absent: the global database).
struct Target {
    project: Option<ProjectPath>,
    file: DbFile,
}

type Params = Query<HashMap<String, String>>;

fn projects_list(st: &AppState) -> Result<&Arc<ProjectsList>, UiError> {
    if let Some(db) = st.server.router.database() {
        return Err(UiError::TeamMemory(db.shown().to_owned()));
    }
    st.server.router.projects().ok_or(UiError::NoProjectsList)
}

/// The project `params` name, if this daemon has served it: the browser never opens (so
/// never creates) the memory of a directory nobody used.
fn target(st: &AppState, params: &HashMap<String, String>) -> Result<Target, UiError> {
    let list = projects_list(st)?;
    let project = match params.get("project").filter(|p| !p.is_empty()) {
        None => None,
        Some(dir) => Some(ProjectPath::from_dir(dir).map_err(|_| UiError::UnknownProject(dir.clone()))?),
    };
    let file = st.server.router.file_for(project.as_ref());
    if list.entry(file.path()).is_none() {
        return Err(UiError::UnknownProject(params.get("project").cloned().unwrap_or_default()));
    }
    Ok(Target { project, file })
}

/// The target's open store, opening it if its database exists (a missing one is not
/// created: the browser only reads).
async fn store(st: &AppState, target: &Target) -> Result<Arc<Store>, UiError> {
    if let Some(store) = st.server.router.registry().get_open(target.file.path()) {
        return Ok(store);
    }
    if target.file.path().symlink_metadata().is_err() {
        return Err(UiError::NoDatabase(target.file.path().display().to_string()));
    }
    Ok(st.server.router.store_for(target.project.as_ref()).await?)
}

/// Runs a blocking read of `store` on a blocking thread.
async fn read<T: Send + 'static>(
    store: Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, UiError> {
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| UiError::Internal(e.to_string()))?
        .map_err(UiError::from)
}

// ---------------------------------------------------------------------------------------
// The projects.
// ---------------------------------------------------------------------------------------

/// `GET /ui/api/projects`: every project served, the global database first.
async fn projects(State(st): State<AppState>) -> Result<Response, UiError> {
    let list = projects_list(&st)?.clone();
    let summaries: Vec<Value> = stream::iter(list.entries())
        .map(|entry| summary(&st, &list, entry))
        .buffered(CONCURRENT_COUNTS)
        .collect()
        .await;
    Ok(axum::Json(json!({ "projects": summaries })).into_response())
}

/// `GET /ui/api/project?project=`: one project's line of the list.
async fn project(State(st): State<AppState>, Query(params): Params) -> Result<Response, UiError> {
    let target = target(&st, &params)?;
    let list = projects_list(&st)?.clone();
    let entry = list.entry(target.file.path()).ok_or_else(|| UiError::UnknownProject(String::new()))?;
    Ok(axum::Json(summary(&st, &list, entry).await).into_response())
}

/// A project's line: where it is, its counts and its last write. Counts are taken now
/// when its store is open (cheap) or when a change (or a newer file) makes the kept ones
/// stale; otherwise the kept ones are shown, so listing does not open every database.
async fn summary(st: &AppState, list: &ProjectsList, entry: Entry) -> Value {
    let db_time = file_time(&entry.db);
    let mut problem = None;
    if db_time.is_some() {
        let open = st.server.router.registry().get_open(&entry.db);
        let stale = entry.counts.is_none()
            || entry.changed_since_count
            || db_time.is_some_and(|t| entry.counted_at.is_none_or(|c| t > c));
        if open.is_some() || stale {
            match count(st, &entry, open).await {
                Ok(counts) => list.set_counts(&entry.db, counts, db_time),
                Err(e) => problem = Some(e.to_string()),
            }
        }
    }
    let entry = list.entry(&entry.db).unwrap_or(entry);
    let name = match &entry.project {
        None => "Global memory".to_owned(),
        Some(dir) => dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
    };
    json!({
        "project": entry.project.as_ref().map(|p| p.display().to_string()),
        "name": name,
        "db": entry.db.display().to_string(),
        "global": entry.project.is_none(),
        "exists": db_time.is_some(),
        "counts": entry.counts.filter(|_| db_time.is_some()).unwrap_or_default(),
        "lastWrite": entry.last_write,
        "problem": problem,
    })
}

async fn count(st: &AppState, entry: &Entry, open: Option<Arc<Store>>) -> Result<Counts, UiError> {
    let store = match open {
        Some(store) => store,
        None => {
            let project = match &entry.project {
                Some(dir) => Some(
                    ProjectPath::from_dir(&dir.to_string_lossy())
                        .map_err(|e| UiError::NotFound(format!("the project directory is gone: {e}")))?,
                ),
                None => None,
            };
            st.server.router.store_for(project.as_ref()).await?
        }
    };
    read(store, |s| s.read(browse::counts)).await
}

/// The later modification time of a database file and its `-wal` (Unix ms); `None`
/// when there is no database file.
fn file_time(db: &std::path::Path) -> Option<u64> {
    let main = db.symlink_metadata().ok()?.modified().ok().map(unix_ms);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::symlink_metadata(&wal).ok().and_then(|m| m.modified().ok()).map(unix_ms);
    main.max(wal).or(Some(0))
}

// ---------------------------------------------------------------------------------------
// One project's entities, one entity, its neighbourhood.
// ---------------------------------------------------------------------------------------

/// `GET /ui/api/entities?project=&q=&after=|before=|at=last&limit=`: a page of the entity
/// list, or of the entities the search `q` matches (exactly `search_nodes`' matches).
async fn entities(State(st): State<AppState>, Query(params): Params) -> Result<Response, UiError> {
    let target = target(&st, &params)?;
    let query = params.get("q").cloned().unwrap_or_default();
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(UiError::BadRequest(format!("the search text is longer than {MAX_QUERY_CHARS} characters")));
    }
    let cursor = |key: &str| -> Result<Option<i64>, UiError> {
        params
            .get(key)
            .map(|v| v.parse::<i64>().map_err(|_| UiError::BadRequest(format!("{key} must be a cursor (an integer)"))))
            .transpose()
    };
    let at = match (cursor("after")?, cursor("before")?, params.get("at").map(String::as_str)) {
        (Some(c), None, None) => PageAt::After(c),
        (None, Some(c), None) => PageAt::Before(c),
        (None, None, Some("last")) => PageAt::Last,
        (None, None, None | Some("first")) => PageAt::First,
        _ => return Err(UiError::BadRequest("give at most one of after, before and at=first|last".into())),
    };
    let limit = match params.get("limit") {
        None => PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| UiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let store = store(&st, &target).await?;
    let page = read(store, move |s| search_page(s, &query, at, limit)).await?;
    Ok(axum::Json(page).into_response())
}

/// A page of `query`'s matches, as `search_nodes` finds them: rows written but not yet
/// in the search index are indexed first (as the tool does), since every search reads
/// the index (the trigram tables and the stored lower-cased text), which must hold them.
fn search_page(store: &Store, query: &str, at: PageAt, limit: usize) -> Result<browse::EntityPage, StoreError> {
    let page = |c: &rusqlite::Connection| browse::entity_page(c, query, store.trigram_counts(), at, limit);
    if query.is_empty() {
        return store.read(page);
    }
    let indexed = store.read(|c| if graph::search_index_is_stale(c)? { Ok(None) } else { page(c).map(Some) })?;
    match indexed {
        Some(found) => Ok(found),
        None => {
            store.update_search_index()?;
            store.read(page)
        }
    }
}

fn required<'a>(params: &'a HashMap<String, String>, key: &str) -> Result<&'a str, UiError> {
    params.get(key).map(String::as_str).ok_or_else(|| UiError::BadRequest(format!("{key} is required")))
}

/// `GET /ui/api/entity?project=&name=`: the entity's page.
async fn entity(State(st): State<AppState>, Query(params): Params) -> Result<Response, UiError> {
    let target = target(&st, &params)?;
    let name = required(&params, "name")?.to_owned();
    let store = store(&st, &target).await?;
    let wanted = name.clone();
    let found = read(store, move |s| s.read(|c| browse::entity(c, &wanted, MAX_ITEMS))).await?;
    Ok(axum::Json(found.ok_or(UiError::NoEntity(name))?).into_response())
}

/// `GET /ui/api/graph?project=&name=&hops=1|2`: the entity's neighbourhood, at most
/// [`MAX_GRAPH_NODES`] nodes.
async fn neighbourhood(State(st): State<AppState>, Query(params): Params) -> Result<Response, UiError> {
    let target = target(&st, &params)?;
    let name = required(&params, "name")?.to_owned();
    let hops = match params.get("hops").map(String::as_str) {
        None | Some("1") => 1,
        Some("2") => 2,
        Some(_) => return Err(UiError::BadRequest("hops must be 1 or 2".into())),
    };
    let store = store(&st, &target).await?;
    let wanted = name.clone();
    let found = read(store, move |s| s.read(|c| browse::neighbourhood(c, &wanted, hops, MAX_GRAPH_NODES))).await?;
    let graph = found.ok_or(UiError::NoEntity(name))?;
    let mut body = serde_json::to_value(graph).map_err(|e| UiError::Internal(e.to_string()))?;
    body["limit"] = MAX_GRAPH_NODES.into();
    Ok(axum::Json(body).into_response())
}

// ---------------------------------------------------------------------------------------
// Live updates.
// ---------------------------------------------------------------------------------------

/// `GET /ui/api/events?project=`: an event stream with `ready` once subscribed, then
/// `change` after every change to the project's memory (coalesced while the page is
/// busy): the same broadcast as `subscriptions/listen`, with other processes' writes
/// seen by the store's `data_version` poll. Ends at shutdown.
async fn project_events(State(st): State<AppState>, Query(params): Params) -> Result<Response, UiError> {
    let target = target(&st, &params)?;
    let permit = st.server.streams.open(StreamKind::Browser, st.config.max_streams)?;
    let changes = st.server.router.subscribe(target.project.as_ref());
    // Other processes' writes are seen only while the store is open and watched.
    if target.file.path().symlink_metadata().is_ok() {
        store(&st, &target).await?.watch_outside_writes();
    }
    let events = stream::unfold(changes, |mut changes| async move {
        match changes.recv().await {
            // Lagging behind means changes happened: one notice covers them.
            Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), changes)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Ok(live(&st, events, permit))
}

/// `GET /ui/api/projects/events`: `ready`, then `change` whenever the projects list
/// changes (a project added, a write anywhere, new counts).
async fn projects_events(State(st): State<AppState>) -> Result<Response, UiError> {
    let watch = projects_list(&st)?.watch();
    let permit = st.server.streams.open(StreamKind::Browser, st.config.max_streams)?;
    let events = stream::unfold(watch, |mut watch| async move { watch.changed().await.ok().map(|()| ((), watch)) });
    Ok(live(&st, events, permit))
}

/// An event stream of `ready` then one `change` per item of `changes`, holding its place
/// among the open streams, with keep-alives, ended at shutdown.
fn live(
    st: &AppState,
    changes: impl Stream<Item = ()> + Send + 'static,
    permit: crate::streams::StreamPermit,
) -> Response {
    let shutdown = st.server.shutdown.clone().cancelled_owned();
    let ready = stream::once(async { Event::default().event("ready").data("{}") });
    let events = ready
        .chain(changes.map(|()| Event::default().event("change").data("{}")))
        .map(move |event| {
            let _held = &permit;
            Ok::<_, Infallible>(event)
        })
        .take_until(shutdown);
    Sse::new(events).keep_alive(KeepAlive::new().interval(st.config.keep_alive)).into_response()
}

#[cfg(test)]
mod tests;
