//! The browser's routes on the real router (`app`), without a socket: who gets in with
//! a token (the page and its assets without, the data with the bearer token or the login
//! cookie, and the cookie nowhere but `/ui`), the headers of every answer, and the JSON
//! endpoints on a small graph. The real browser is driven in `tests/daemon_ui.rs`.

use axum::body::{Body, to_bytes};
use axum::http::Request;
use clap::Parser;
use tower::ServiceExt;

use super::*;
use crate::config::{Cli, DaemonConfig};
use crate::dispatch::McpServer;
use crate::routing::Router;
use crate::store::model::{Entity, Relation};
use crate::transport::http::app;

struct TestApp {
    app: AxumRouter,
    server: Arc<McpServer>,
    dir: tempfile::TempDir,
}

/// The daemon's router as `serve` builds it, with a token (so requests need no peer), its
/// global database and runtime directory in a temporary directory.
fn daemon() -> TestApp {
    let cli = Cli::try_parse_from(["memory-server", "--token", "secret"]).unwrap();
    let mut config = DaemonConfig::from_args(&cli.serve).unwrap();
    let dir = tempfile::tempdir().unwrap();
    config.global_db = dir.path().join("global.db");
    config.runtime_dir = Some(dir.path().join("runtime"));
    let projects = Arc::new(ProjectsList::load(config.runtime_dir.as_deref(), &config.global_db));
    let router = Router::with_projects(config.global_db.clone(), config.stores, projects);
    let server = Arc::new(McpServer::new(router, config.session_idle));
    let app = app(AppState { server: server.clone(), config: Arc::new(config) });
    TestApp { app, server, dir }
}

fn request(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(path).header(header::HOST, "127.0.0.1:3100")
}

async fn send(app: &TestApp, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = app.app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> (StatusCode, HeaderMap, Value) {
    send(app, request(Method::GET, path).header(header::AUTHORIZATION, "Bearer secret").body(Body::empty()).unwrap())
        .await
}

#[tokio::test]
async fn with_a_token_only_the_page_and_its_assets_load_without_it() {
    let app = daemon();
    let anonymous = |path: &str| request(Method::GET, path).body(Body::empty()).unwrap();
    for path in ["/ui", "/ui/", "/ui/assets/app.js", "/ui/assets/graph.js", "/ui/assets/app.css"] {
        let (status, headers, _) = send(&app, anonymous(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], "default-src 'self'", "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
    }
    for path in ["/ui/api/projects", "/ui/api/entities", "/ui/api/events", "/mcp", "/health"] {
        let (status, _, _) = send(&app, anonymous(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _, _) = send(&app, anonymous("/ui/assets/nope.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The DNS-rebinding guard comes first, for the page too.
    let evil = Request::get("/ui").header(header::HOST, "attacker.example").body(Body::empty()).unwrap();
    assert_eq!(send(&app, evil).await.0, StatusCode::FORBIDDEN);
    let cross =
        request(Method::GET, "/ui").header(header::ORIGIN, "http://attacker.example").body(Body::empty()).unwrap();
    assert_eq!(send(&app, cross).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn logging_in_sets_a_cookie_that_opens_the_browser_and_nothing_else() {
    let app = daemon();
    let login = |body: &str| {
        request(Method::POST, "/ui/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let (status, headers, body) = send(&app, login(r#"{"token":"wrong"}"#)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert_eq!(body["error"], "wrong token");
    assert_eq!(send(&app, login("secret")).await.0, StatusCode::BAD_REQUEST, "not JSON");

    let (status, headers, _) = send(&app, login(r#"{"token":"secret"}"#)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(cookie.starts_with("memory_ui_3100="), "{cookie}");
    assert!(!cookie.contains("secret"), "the cookie holds a hash, not the token: {cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();

    let with_cookie =
        |path: &str| request(Method::GET, path).header(header::COOKIE, &pair).body(Body::empty()).unwrap();
    let (status, _, body) = send(&app, with_cookie("/ui/api/projects")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["projects"][0]["global"], true);
    for path in ["/mcp", "/health"] {
        assert_eq!(send(&app, with_cookie(path)).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let forged = request(Method::GET, "/ui/api/projects")
        .header(header::COOKIE, "memory_ui_3100=secret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, forged).await.0, StatusCode::UNAUTHORIZED);
}

/// A small graph in the global database, written as the tools write.
async fn seed(app: &TestApp) {
    let store = app.server.router.store_for(None).await.unwrap();
    let entities: Vec<Entity> = (0..7)
        .map(|i| Entity {
            name: format!("e{i}"),
            entity_type: if i % 2 == 0 { "even".into() } else { "odd".into() },
            observations: vec![format!("number {i}"), format!("seen in Straße {i}")],
        })
        .collect();
    let relations: Vec<Relation> = (0..6)
        .map(|i| Relation { from: format!("e{i}"), to: format!("e{}", i + 1), relation_type: "next".into() })
        .chain([Relation { from: "e0".into(), to: "ghost".into(), relation_type: "haunts".into() }])
        .collect();
    store.write_async(None, move |c| graph::create_entities(c, &entities).map(drop)).await.unwrap();
    store.write_async(None, move |c| graph::create_relations(c, &relations).map(drop)).await.unwrap();
}

fn names(page: &Value) -> Vec<&str> {
    page["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_json_endpoints_answer_on_a_small_graph() {
    let app = daemon();
    seed(&app).await;

    let (status, _, projects) = get(&app, "/ui/api/projects").await;
    assert_eq!(status, StatusCode::OK);
    let global = &projects["projects"][0];
    assert_eq!(global["counts"], json!({"entities": 7, "relations": 7, "observations": 14}));
    assert!(global["lastWrite"].as_u64().is_some(), "{global}");

    let (_, headers, page) = get(&app, "/ui/api/entities?limit=3").await;
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(names(&page), ["e0", "e1", "e2"]);
    assert_eq!(
        (page["total"].clone(), page["offset"].clone(), page["hasAfter"].clone()),
        (json!(7), json!(0), json!(true))
    );
    let after = page["items"][2]["cursor"].as_i64().unwrap();
    let (_, _, next) = get(&app, &format!("/ui/api/entities?limit=3&after={after}")).await;
    assert_eq!(names(&next), ["e3", "e4", "e5"]);
    let (_, _, last) = get(&app, "/ui/api/entities?limit=3&at=last").await;
    assert_eq!((names(&last), last["offset"].clone()), (vec!["e4", "e5", "e6"], json!(4)));
    let before = last["items"][0]["cursor"].as_i64().unwrap();
    let (_, _, back) = get(&app, &format!("/ui/api/entities?limit=3&before={before}")).await;
    assert_eq!(names(&back), ["e1", "e2", "e3"]);

    // search_nodes' lower-casing: "STRASSE" is not "straße", "STRAßE" is.
    let (_, _, found) = get(&app, "/ui/api/entities?q=ODD").await;
    assert_eq!(names(&found), ["e1", "e3", "e5"]);
    let (_, _, none) = get(&app, "/ui/api/entities?q=STRASSE").await;
    assert_eq!(names(&none), Vec::<&str>::new());
    let (_, _, all) = get(&app, "/ui/api/entities?q=STRA%C3%9FE%203").await;
    assert_eq!(names(&all), ["e3"]);

    let (_, _, e0) = get(&app, "/ui/api/entity?name=e0").await;
    assert_eq!(e0["observations"], json!(["number 0", "seen in Straße 0"]));
    assert_eq!(
        e0["outgoing"],
        json!([{"other": "e1", "relationType": "next", "exists": true},
                                      {"other": "ghost", "relationType": "haunts", "exists": false}])
    );
    let (_, _, e1) = get(&app, "/ui/api/entity?name=e1").await;
    assert_eq!(e1["incoming"], json!([{"other": "e0", "relationType": "next", "exists": true}]));
    assert_eq!(get(&app, "/ui/api/entity?name=nobody").await.0, StatusCode::NOT_FOUND);

    let (_, _, one) = get(&app, "/ui/api/graph?name=e3").await;
    let drawn: Vec<&str> = one["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(drawn, ["e3", "e2", "e4"]);
    assert_eq!((one["total"].clone(), one["limit"].clone()), (json!(3), json!(MAX_GRAPH_NODES)));
    let (_, _, two) = get(&app, "/ui/api/graph?name=e0&hops=2").await;
    assert_eq!(two["total"], 4, "e0, e1, ghost, e2: {two}");
    assert_eq!(two["nodes"][2]["entityType"], Value::Null, "ghost is no entity");

    for bad in [
        "/ui/api/entities?after=x",
        "/ui/api/entities?after=1&at=last",
        "/ui/api/entities?limit=0",
        "/ui/api/graph?name=e0&hops=3",
        "/ui/api/entity",
    ] {
        assert_eq!(get(&app, bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    // A directory this daemon never served is not opened (nor its memory created).
    let elsewhere = app.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (status, _, body) = get(&app, &format!("/ui/api/entities?project={}", elsewhere.display())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!elsewhere.join(".claude").exists());
}

#[tokio::test]
async fn an_unwritten_global_database_is_listed_but_not_created() {
    let app = daemon();
    let (_, _, projects) = get(&app, "/ui/api/projects").await;
    assert_eq!(projects["projects"][0]["exists"], false);
    assert_eq!(get(&app, "/ui/api/entities").await.0, StatusCode::NOT_FOUND);
    assert!(!app.dir.path().join("global.db").exists());
}

#[tokio::test]
async fn the_change_stream_says_ready_then_change() {
    let app = daemon();
    seed(&app).await;
    let resp = app
        .app
        .clone()
        .oneshot(
            request(Method::GET, "/ui/api/events")
                .header(header::AUTHORIZATION, "Bearer secret")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(app.server.streams.open_count(), 1, "the stream holds a place under --max-streams");
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    let bound = std::time::Duration::from_secs(10);
    while !text.contains("event: ready") {
        let chunk = tokio::time::timeout(bound, body.next()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let store = app.server.router.store_for(None).await.unwrap();
    let more = vec![Entity { name: "late".into(), entity_type: "t".into(), observations: vec![] }];
    store.write_async(None, move |c| graph::create_entities(c, &more).map(drop)).await.unwrap();
    while !text.contains("event: change") {
        let chunk = tokio::time::timeout(bound, body.next()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    assert_eq!(app.server.streams.open_count(), 0, "closing the stream gives its place back");
}
