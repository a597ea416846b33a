//! The edge's answer to a panicking handler, checked on the real router (`app`): the
//! route that panics exists only in test builds, so no request can reach a panic in
//! the product.

use axum::body::to_bytes;
use axum::http::Request;
use clap::Parser;
use tower::ServiceExt;

use super::*;
use crate::config::Cli;
use crate::protocol::code;
use crate::routing::Router;

pub(super) const PANIC_PATH: &str = "/test/panic";

pub(super) async fn panic() -> Response {
    panic!("the test handler panics; secret: hunter2");
}

/// The daemon's router as `serve` builds it, with a token so requests need no peer.
fn daemon_app() -> AxumRouter {
    let cli = Cli::try_parse_from(["memory-server", "--token", "secret"]).unwrap();
    let config = DaemonConfig::from_args(&cli.serve).unwrap();
    let server = Arc::new(McpServer::new(Router::new(config.global_db.clone(), config.stores), config.session_idle));
    app(AppState { server, config: Arc::new(config) })
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, "127.0.0.1:3100")
        .header(header::AUTHORIZATION, "Bearer secret")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_panicking_handler_gets_a_json_rpc_500_and_the_daemon_serves_on() {
    let app = daemon_app();
    let resp = app.clone().oneshot(get(PANIC_PATH)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let body: Value = serde_json::from_slice(&to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], Value::Null);
    assert_eq!(body["error"]["code"], code::INTERNAL_ERROR);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Internal error"), "{body}");
    let text = body.to_string();
    assert!(!text.contains("hunter2") && !text.contains("panic"), "the panic is not told: {text}");

    let resp = app.oneshot(get("/health")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the same router serves the next request");
}
