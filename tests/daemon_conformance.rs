//! Protocol conformance checked by an independent implementation: the official Rust MCP
//! SDK (`rmcp`) and its streamable-HTTP client initialize against `memory-server`, list
//! the nine tools, call each one, read and subscribe to the graph resource, and receive
//! live updates written by another session.

use std::time::Duration;

use e2e::rmcp_client::{Watcher, call, connect, structured, subscribe_graph};
use e2e::{Daemon, PATIENCE, TestEnv, fixture};
use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[tokio::test]
async fn official_rust_sdk_lists_and_calls_every_tool() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project = env.project("rmcp");
    let client = connect(Watcher(mpsc::unbounded_channel().0), &daemon.url(), &project).await;

    let info = client.peer_info().expect("server info after initialize");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("memory-server"));

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    let official: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("official/server-memory-2026.8.31.json")).unwrap())
            .unwrap();
    let official_names: Vec<&str> =
        official["tools_list"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, official_names);
    assert_eq!(names.len(), 9);

    call(
        &client,
        "create_entities",
        json!({"entities":[
        {"name":"Ada","entityType":"person","observations":["wrote the first program"]},
        {"name":"Engine","entityType":"machine","observations":[]}]}),
    )
    .await;
    call(&client, "create_relations", json!({"relations":[{"from":"Ada","to":"Engine","relationType":"programmed"}]}))
        .await;
    let added =
        call(&client, "add_observations", json!({"observations":[{"entityName":"Engine","contents":["analytical"]}]}))
            .await;
    assert_eq!(structured(&added)["results"][0]["addedObservations"], json!(["analytical"]));
    let found = call(&client, "search_nodes", json!({"query":"PROGRAM"})).await;
    assert_eq!(structured(&found)["entities"][0]["name"], "Ada");
    let opened = call(&client, "open_nodes", json!({"names":["Engine"]})).await;
    assert_eq!(structured(&opened)["relations"].as_array().unwrap().len(), 1);
    call(
        &client,
        "delete_observations",
        json!({"deletions":[{"entityName":"Ada","observations":["wrote the first program"]}]}),
    )
    .await;
    call(&client, "delete_relations", json!({"relations":[{"from":"Ada","to":"Engine","relationType":"programmed"}]}))
        .await;
    call(&client, "delete_entities", json!({"entityNames":["Engine"]})).await;
    let graph = call(&client, "read_graph", json!({})).await;
    assert_eq!(
        structured(&graph),
        json!({"entities":[{"name":"Ada","entityType":"person","observations":[]}],"relations":[]})
    );

    let resource =
        client.read_resource(ReadResourceRequestParams::new("memory://knowledge-graph")).await.expect("resources/read");
    let text = serde_json::to_value(&resource.contents[0]).unwrap()["text"].as_str().unwrap().to_owned();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), structured(&graph));

    assert!(project.join(".claude/memory.db").exists(), "the project's own database holds the memory");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn subscribed_sessions_get_updates_for_their_project_only() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env, &[]);
    let project_a = env.project("a");
    let project_b = env.project("b");

    let (tx, mut updates) = mpsc::unbounded_channel();
    let listener = connect(Watcher(tx), &daemon.url(), &project_a).await;
    subscribe_graph(&listener).await;

    let writer_a = connect((), &daemon.url(), &project_a).await;
    let writer_b = connect((), &daemon.url(), &project_b).await;

    // A write to another project first: it must not reach the listener.
    call(&writer_b, "create_entities", json!({"entities":[{"name":"elsewhere","entityType":"t","observations":[]}]}))
        .await;
    call(&writer_a, "create_entities", json!({"entities":[{"name":"here","entityType":"t","observations":[]}]})).await;

    let uri = tokio::time::timeout(PATIENCE, updates.recv()).await.expect("an update arrives").unwrap();
    assert_eq!(uri, "memory://knowledge-graph");
    // A later notification for project B's write would have been queued already.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(updates.try_recv().is_err(), "exactly one update: project B's write is not announced to A");

    // A second write in A is announced again.
    call(&writer_a, "add_observations", json!({"observations":[{"entityName":"here","contents":["again"]}]})).await;
    tokio::time::timeout(PATIENCE, updates.recv()).await.expect("a second update arrives").unwrap();

    for c in [writer_a, writer_b] {
        c.cancel().await.unwrap();
    }
    listener.cancel().await.unwrap();
}
