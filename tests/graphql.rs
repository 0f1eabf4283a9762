//! GraphQL at `/v1/graphql` against a real server on a real socket: reads through the
//! read rules on one snapshot per request, mutations as commits (exactly once with an
//! idempotency key, in order without), live queries that follow writes and revocation
//! and run again only when a write touches what they read, the WebSocket protocol and
//! its limits, error codes, and service identities. (The npm clients and the browser:
//! `tests/graphql/*.mjs`.)

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as J};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warren_e2e::*;
use warren_server::auth;
use warren_server::gateway::GatewayLimits;

const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, n]
  // End users read their own list; a backend with a service token reads them all.
  allow read   partition == "user:" + auth.sub || auth.role == "service"
  allow create doc.owner == auth.sub
}

collection Team {
  partition "team:" + doc.id
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create doc.members.includes(auth.sub)
  allow update old.members.includes(auth.sub)
}

collection Task {
  partition "team:" + doc.team
  index byTeam [team]
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
}

collection Note {
  allow read   true
  allow create doc.author == auth.sub
  allow update old.author == auth.sub
}

collection Counter {
  allow read   true
  allow create auth != null
  allow update auth != null
}

function addTodo(id, n) { Todo.create({ id, owner: auth.sub, n }) }
function makeTeam(id, members) { Team.create({ id, members }) }
function setMembers(id, members) { Team.byId(id).update({ members }) }
function addTask(id, team, title) { Task.create({ id, team, title }) }
function addNote(id, text) { Note.create({ id, author: auth.sub, text }) }
function editNote(id, text) { Note.byId(id).update({ text }) }
function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, n: 0 })
  c.update({ n: c.n + 1 }).n
}
"#;

async fn start_with(name: &str, f: impl FnOnce(&mut warren_server::server::Config)) -> TestServer {
    let mut c = config(temp_dir(name), hs256());
    c.schema = SCHEMA.to_owned();
    f(&mut c);
    TestServer::start_with(c).await
}

async fn start(name: &str) -> TestServer {
    start_with(name, |_| {}).await
}

fn service_token(sub: &str) -> String {
    let mut claims = auth::dev_claims(sub, 3600, None, None);
    claims["role"] = "service".into();
    auth::mint_hs256(SECRET, &claims).unwrap()
}

/// A GraphQL request as `token`; the HTTP status and the response.
async fn gql(server: &TestServer, token: &str, query: &str, variables: J) -> (u16, J) {
    gql_with(server, token, &[], query, variables).await
}

async fn gql_with(
    server: &TestServer,
    token: &str,
    headers: &[(&str, &str)],
    query: &str,
    variables: J,
) -> (u16, J) {
    let auth = format!("Bearer {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(headers);
    let body = json!({ "query": query, "variables": variables }).to_string();
    http_json_with(&server.http(), "POST", "/v1/graphql", &h, &body).await
}

/// The data of a response that must have no errors.
async fn data(server: &TestServer, token: &str, query: &str, variables: J) -> J {
    let (status, r) = gql(server, token, query, variables).await;
    assert_eq!(status, 200, "{r}");
    assert!(r.get("errors").is_none(), "{query}: {r}");
    r["data"].clone()
}

/// The codes of a response's errors.
fn codes(r: &J) -> Vec<String> {
    r["errors"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ids(conn: &J) -> Vec<String> {
    conn["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_by_index_with_pages_and_rules_and_mutations() {
    let server = start("gql-read").await;
    let (ann, bob) = (token("ann"), token("bob"));
    for i in 1..=5 {
        let d = data(
            &server,
            &ann,
            "mutation($id: JSON, $n: JSON) { addTodo(id: $id, n: $n) }",
            json!({ "id": format!("t{i}"), "n": i }),
        )
        .await;
        assert_eq!(
            d["addTodo"],
            json!({ "id": format!("t{i}"), "owner": "ann", "n": i })
        );
    }
    data(
        &server,
        &bob,
        r#"mutation { addTodo(id: "b1", n: 1) }"#,
        json!({}),
    )
    .await;

    // Page by page, following endCursor.
    let q = r#"query($after: String) {
        Todo_byOwner(owner: "ann", first: 2, after: $after) {
            nodes { id n owner _partition _version }
            edges { cursor }
            pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        }
    }"#;
    let mut seen = Vec::new();
    let mut after = J::Null;
    let mut pages = 0;
    loop {
        let d = data(&server, &ann, q, json!({ "after": after })).await;
        let c = &d["Todo_byOwner"];
        seen.extend(ids(c));
        pages += 1;
        assert_eq!(c["pageInfo"]["hasPreviousPage"], json!(pages > 1));
        assert_eq!(
            c["pageInfo"]["endCursor"],
            c["edges"].as_array().unwrap().last().unwrap()["cursor"]
        );
        assert_eq!(c["nodes"][0]["_partition"], "user:ann");
        if c["pageInfo"]["hasNextPage"] == json!(false) {
            break;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, ["t1", "t2", "t3", "t4", "t5"]);
    assert_eq!(pages, 3);

    // An equality prefix, a range, and the other way round.
    let d = data(
        &server,
        &ann,
        r#"{ a: Todo_byOwner(owner: "ann", range: {gt: 1, lte: 4}, order: DESC) { nodes { id } }
             b: Todo_byOwner(owner: "ann", n: 3) { nodes { id } }
             c: Todo_all(first: 10) { nodes { id } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(ids(&d["a"]), ["t4", "t3", "t2"]);
    assert_eq!(ids(&d["b"]), ["t3"]);
    assert_eq!(ids(&d["c"]), ["t1", "t2", "t3", "t4", "t5"]);

    // What bob may not read is not there: no error, no document, no count.
    let d = data(
        &server,
        &bob,
        r#"{ Todo_byId(id: "t1") { id } Todo_byOwner(owner: "ann") { nodes { id } pageInfo { hasNextPage } }
             Todo_all { nodes { id } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["Todo_byId"], J::Null);
    assert_eq!(ids(&d["Todo_byOwner"]), Vec::<String>::new());
    assert_eq!(d["Todo_byOwner"]["pageInfo"]["hasNextPage"], false);
    assert_eq!(ids(&d["Todo_all"]), ["b1"]);

    // A denied write: the rule's code in extensions, and nothing changed.
    data(
        &server,
        &ann,
        r#"mutation { addNote(id: "n1", text: "hello") }"#,
        json!({}),
    )
    .await;
    let (_, r) = gql(
        &server,
        &bob,
        r#"mutation { editNote(id: "n1", text: "mine now") }"#,
        json!({}),
    )
    .await;
    assert_eq!(codes(&r), ["PERMISSION_DENIED"], "{r}");
    let d = data(
        &server,
        &bob,
        r#"{ Note_byId(id: "n1") { _fields } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["Note_byId"]["_fields"]["text"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_when_asked_for() {
    let c = config(temp_dir("gql-graphiql"), hs256());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = warren_server::web::WebOptions {
        graphiql: true,
        ..Default::default()
    };
    let running = warren_server::server::start_with_web(c.clone(), listener, web)
        .await
        .unwrap();
    let page = http_text(&running.addr.to_string(), "/v1/graphql", "text/html").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("GraphiQL") && page.contains("/v1/graphql"));
    // A client that is not a browser still gets the GraphQL answer.
    let other = http_text(&running.addr.to_string(), "/v1/graphql", "application/json").await;
    assert!(other.starts_with("HTTP/1.1 405"), "{other}");
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&c.data_dir);
}

/// A GET with an `Accept` header; the whole answer as text.
async fn http_text(addr: &str, path: &str, accept: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_reads_one_snapshot() {
    // Reads take request tokens, and this test reads as fast as it can.
    let server = start_with("gql-snapshot", |c| c.gateway.frames_per_sec = 0).await;
    let ann = token("ann");
    data(&server, &ann, r#"mutation { bump(id: "c") }"#, json!({})).await;
    let writer = {
        let http = server.http();
        let ann = ann.clone();
        tokio::spawn(async move {
            for _ in 0..150 {
                let body = json!({ "query": r#"mutation { bump(id: "c") }"# }).to_string();
                let auth = format!("Bearer {ann}");
                http_json_with(
                    &http,
                    "POST",
                    "/v1/graphql",
                    &[("Authorization", &auth)],
                    &body,
                )
                .await;
            }
        })
    };
    let fields: String = (0..8)
        .map(|i| format!("f{i}: Counter_byId(id: \"c\") {{ _version _fields }} "))
        .collect();
    let mut distinct = std::collections::BTreeSet::new();
    while !writer.is_finished() {
        let d = data(&server, &ann, &format!("{{ {fields} }}"), json!({})).await;
        let first = &d["f0"];
        for i in 1..8 {
            assert_eq!(
                &d[format!("f{i}")],
                first,
                "fields of one request disagree: {d}"
            );
        }
        distinct.insert(first["_version"].as_u64().unwrap());
    }
    writer.await.unwrap();
    // The reads did run while the counter moved.
    assert!(distinct.len() > 3, "{distinct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_exactly_once_with_a_key_and_ordered_without() {
    let server = start("gql-once").await;
    let ann = token("ann");
    let q = r#"mutation { a: bump(id: "k") b: bump(id: "k") }"#;
    let (_, first) = gql_with(&server, &ann, &[("Idempotency-Key", "job-1")], q, json!({})).await;
    assert_eq!(first["data"], json!({ "a": 1, "b": 2 }));
    // The same request again (a retry after a lost answer): the same outcomes, nothing
    // applied twice.
    let (_, again) = gql_with(&server, &ann, &[("Idempotency-Key", "job-1")], q, json!({})).await;
    assert_eq!(again["data"], first["data"]);
    // Keys belong to their identity: bob's job-1 is another commit.
    let (_, bobs) = gql_with(
        &server,
        &token("bob"),
        &[("Idempotency-Key", "job-1")],
        q,
        json!({}),
    )
    .await;
    assert_eq!(bobs["data"], json!({ "a": 3, "b": 4 }));
    let (status, bad) = gql_with(&server, &ann, &[("Idempotency-Key", "a b")], q, json!({})).await;
    assert_eq!(
        (status, codes(&bad)),
        (400, vec!["GRAPHQL_BAD_REQUEST".to_owned()])
    );

    // Without a key, concurrent requests of one identity share a client id: numbered in
    // the order they reach the sequencer, so none is refused as out of order.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = server.http();
        let auth = format!("Bearer {ann}");
        tasks.push(tokio::spawn(async move {
            let body = json!({ "query": r#"mutation { bump(id: "m") }"# }).to_string();
            http_json_with(
                &http,
                "POST",
                "/v1/graphql",
                &[("Authorization", &auth)],
                &body,
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        let (_, r) = t.await.unwrap();
        assert!(r.get("errors").is_none(), "{r}");
        results.push(r["data"]["bump"].as_i64().unwrap());
    }
    results.sort();
    assert_eq!(results, (1..=40).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_stable_codes() {
    let server = start_with("gql-errors", |c| {
        c.limits.fuel = 1500;
        c.gateway.max_frame_bytes = 64 * 1024;
    })
    .await;
    let ann = token("ann");
    let http = server.http();
    // The token: missing, forged, expired.
    let (s, r) = http_json(
        &http,
        "POST",
        "/v1/graphql",
        None,
        &json!({ "query": "{ _schemaVersion }" }),
    )
    .await;
    assert_eq!((s, codes(&r)), (401, vec!["TOKEN_MISSING".to_owned()]));
    let forged = auth::mint_hs256(
        "another-secret-0123456789",
        &auth::dev_claims("ann", 60, None, None),
    )
    .unwrap();
    let (s, r) = gql(&server, &forged, "{ _schemaVersion }", json!({})).await;
    assert_eq!(
        (s, codes(&r)),
        (401, vec!["TOKEN_BAD_SIGNATURE".to_owned()])
    );
    // Not GraphQL, not parsing, not fitting the schema.
    let (s, r) = http_json_with(
        &http,
        "POST",
        "/v1/graphql",
        &[("Authorization", &format!("Bearer {ann}"))],
        "nope",
    )
    .await;
    assert_eq!(
        (s, codes(&r)),
        (400, vec!["GRAPHQL_BAD_REQUEST".to_owned()])
    );
    let (s, r) = gql(
        &server,
        &ann,
        r#"subscription { Todo_byId(id: "x") { id } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        (s, codes(&r)),
        (400, vec!["GRAPHQL_BAD_REQUEST".to_owned()]),
        "{r}"
    );
    let (s, r) = http_json_with(&http, "GET", "/v1/graphql", &[("Accept", "text/html")], "").await;
    assert_eq!(
        (s, codes(&r)),
        (405, vec!["GRAPHQL_BAD_REQUEST".to_owned()]),
        "no GraphiQL unless asked for"
    );
    let (_, r) = gql(&server, &ann, "{ Todo_all { ", json!({})).await;
    assert_eq!(codes(&r), ["GRAPHQL_PARSE_FAILED"]);
    let (_, r) = gql(&server, &ann, "{ Todo_all { nodes { nope } } }", json!({})).await;
    assert_eq!(codes(&r), ["GRAPHQL_VALIDATION_FAILED"]);
    // Deep nesting is refused before any parser recurses into it, with a short message.
    let deep = "{a".repeat(20_000) + &"}".repeat(20_000);
    let (_, r) = gql(&server, &ann, &deep, json!({})).await;
    assert_eq!(codes(&r), ["GRAPHQL_PARSE_FAILED"]);
    assert!(r["errors"][0]["message"].as_str().unwrap().len() < 200);
    // Too deep or too wide for the limits, though it parses.
    let wide: String = (0..2500)
        .map(|i| format!("a{i}: _schemaVersion "))
        .collect();
    let (_, r) = gql(&server, &ann, &format!("{{ {wide} }}"), json!({})).await;
    assert_eq!(codes(&r), ["GRAPHQL_VALIDATION_FAILED"], "{r}");
    // Bad arguments.
    for (q, code) in [
        (
            r#"{ Todo_all(after: "bm9wZQ") { nodes { id } } }"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{ Todo_all(first: 5000) { nodes { id } } }"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{ Todo_byOwner(n: 3) { nodes { id } } }"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{ Todo_byOwner(owner: "ann", n: 1, range: {gt: 0}) { nodes { id } } }"#,
            "INVALID_ARGUMENT",
        ),
    ] {
        let (_, r) = gql(&server, &ann, q, json!({})).await;
        assert_eq!(codes(&r), [code], "{q}: {r}");
    }
    // Out of fuel reading many documents: the engine's code.
    for i in 0..200 {
        data(
            &server,
            &ann,
            &format!(r#"mutation {{ addTodo(id: "t{i}", n: {i}) }}"#),
            json!({}),
        )
        .await;
    }
    let (_, r) = gql(
        &server,
        &ann,
        "{ Todo_all(first: 1000) { nodes { id } } }",
        json!({}),
    )
    .await;
    assert_eq!(codes(&r), ["FUEL_EXHAUSTED"], "{r}");
    // A body over the frame limit.
    let big = format!("{{ _schemaVersion }} # {}", "x".repeat(70 * 1024));
    let (s, _) = gql(&server, &ann, &big, json!({})).await;
    assert_eq!(s, 413);
}

/// A `graphql-transport-ws` client.
struct Ws {
    inner: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    async fn connect(server: &TestServer, protocol: bool) -> Ws {
        let mut req = format!("ws://{}/v1/graphql", server.addr)
            .into_client_request()
            .unwrap();
        if protocol {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "graphql-transport-ws".parse().unwrap(),
            );
        }
        let (inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws { inner }
    }

    /// Connects and initialises with `token`.
    async fn open(server: &TestServer, token: &str) -> Ws {
        let mut ws = Ws::connect(server, true).await;
        ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
            .await;
        assert_eq!(ws.next().await.unwrap()["type"], "connection_ack");
        ws
    }

    async fn send(&mut self, m: J) {
        self.inner.send(Message::text(m.to_string())).await.unwrap();
    }

    async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({ "type": "subscribe", "id": id, "payload": { "query": query } }))
            .await;
    }

    /// The next message, `None` when closed; panics after 20 s.
    async fn next(&mut self) -> Option<J> {
        self.recv().await.ok()
    }

    /// The next message, or the close code and reason.
    async fn recv(&mut self) -> Result<J, (u16, String)> {
        loop {
            let m = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("a message in time");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err((f.code.into(), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Err((0, String::new()))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The data of the next `next` message of operation `id`.
    async fn data(&mut self, id: &str) -> J {
        let m = self.next().await.expect("open");
        assert_eq!(
            (m["type"].as_str(), m["id"].as_str()),
            (Some("next"), Some(id)),
            "{m}"
        );
        assert!(m["payload"].get("errors").is_none(), "{m}");
        m["payload"]["data"].clone()
    }

    /// Whether nothing arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.inner.next()).await.is_err()
    }
}

fn titles(d: &J, field: &str) -> Vec<String> {
    d[field]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["_fields"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_follow_writes_and_revocation_and_nothing_else() {
    let server = start("gql-live").await;
    let (ann, bob) = (token("ann"), token("bob"));
    data(
        &server,
        &ann,
        r#"mutation { makeTeam(id: "red", members: ["ann", "bob"]) }"#,
        json!({}),
    )
    .await;
    data(
        &server,
        &ann,
        r#"mutation { addTask(id: "k1", team: "red", title: "plan") }"#,
        json!({}),
    )
    .await;
    let q = r#"subscription { Task_byTeam(team: "red") { nodes { _fields } } }"#;
    let mut a = Ws::open(&server, &ann).await;
    let mut b = Ws::open(&server, &bob).await;
    a.subscribe("1", q).await;
    b.subscribe("1", q).await;
    assert_eq!(titles(&a.data("1").await, "Task_byTeam"), ["plan"]);
    assert_eq!(titles(&b.data("1").await, "Task_byTeam"), ["plan"]);
    let mut team = Ws::open(&server, &bob).await;
    team.subscribe("t", r#"subscription { Team_byId(id: "red") { _fields } }"#)
        .await;
    assert_eq!(
        team.data("t").await["Team_byId"]["_fields"]["members"],
        json!(["ann", "bob"])
    );

    // A write it read: both see it.
    data(
        &server,
        &bob,
        r#"mutation { addTask(id: "k2", team: "red", title: "ship") }"#,
        json!({}),
    )
    .await;
    assert_eq!(titles(&a.data("1").await, "Task_byTeam"), ["plan", "ship"]);
    assert_eq!(titles(&b.data("1").await, "Task_byTeam"), ["plan", "ship"]);

    // Writes elsewhere (another user's todos, another team) run no live query again.
    let metrics = server.running.as_ref().unwrap().metrics.clone();
    let reruns = || {
        metrics
            .graphql
            .live_reruns
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = reruns();
    for i in 0..5 {
        data(
            &server,
            &bob,
            &format!(r#"mutation {{ addTodo(id: "b{i}", n: {i}) }}"#),
            json!({}),
        )
        .await;
    }
    data(
        &server,
        &bob,
        r#"mutation { makeTeam(id: "blue", members: ["bob"]) }"#,
        json!({}),
    )
    .await;
    data(
        &server,
        &bob,
        r#"mutation { addTask(id: "z1", team: "blue", title: "other") }"#,
        json!({}),
    )
    .await;
    assert!(a.quiet_for(Duration::from_millis(300)).await);
    assert_eq!(
        reruns(),
        before,
        "writes the live queries did not read ran them again"
    );

    // Revocation: ann takes bob off the team. His live query empties at once (the
    // rule read the team document), hers does not change.
    data(
        &server,
        &ann,
        r#"mutation { setMembers(id: "red", members: ["ann"]) }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        titles(&b.data("1").await, "Task_byTeam"),
        Vec::<String>::new()
    );
    assert_eq!(team.data("t").await, json!({ "Team_byId": null }));
    data(
        &server,
        &ann,
        r#"mutation { addTask(id: "k3", team: "red", title: "secret") }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        titles(&a.data("1").await, "Task_byTeam"),
        ["plan", "ship", "secret"]
    );
    assert!(
        b.quiet_for(Duration::from_millis(300)).await,
        "bob heard of a task he may not read"
    );

    // `complete` ends it: nothing more arrives.
    a.send(json!({ "type": "complete", "id": "1" })).await;
    data(
        &server,
        &ann,
        r#"mutation { addTask(id: "k4", team: "red", title: "late") }"#,
        json!({}),
    )
    .await;
    assert!(a.quiet_for(Duration::from_millis(300)).await);
    // Queries and mutations work over the socket too: next, then complete.
    a.subscribe("2", r#"{ Task_byId(id: "k4") { _fields } }"#)
        .await;
    assert_eq!(a.data("2").await["Task_byId"]["_fields"]["title"], "late");
    assert_eq!(
        a.next().await.unwrap(),
        json!({ "type": "complete", "id": "2" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_run_again_at_no_cost_to_the_subscribers_budget() {
    // End users may send a request a second, 5 at once; the writer is a service.
    let server = start_with("gql-live-budget", |c| {
        c.gateway.frames_per_sec = 1;
        c.gateway.frame_burst = 5;
    })
    .await;
    let (ann, job) = (token("ann"), service_token("job"));
    data(
        &server,
        &job,
        r#"mutation { makeTeam(id: "red", members: ["ann", "job"]) }"#,
        json!({}),
    )
    .await;
    let mut a = Ws::open(&server, &ann).await;
    a.subscribe(
        "1",
        r#"subscription { Task_byTeam(team: "red") { nodes { _fields } } }"#,
    )
    .await;
    assert!(titles(&a.data("1").await, "Task_byTeam").is_empty());
    // Twenty writes by someone else: ann's live query follows them all, and her budget
    // (five requests at once, one a second) is not what pays for it.
    for i in 0..20 {
        data(
            &server,
            &job,
            &format!(r#"mutation {{ addTask(id: "k{i}", team: "red", title: "t{i}") }}"#),
            json!({}),
        )
        .await;
    }
    let mut last = Vec::new();
    while last.len() < 20 {
        last = titles(&a.data("1").await, "Task_byTeam");
    }
    assert_eq!(last.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_protocol_and_its_limits() {
    let server = start_with("gql-ws", |c| {
        c.gateway.graphql_subscriptions_per_connection = 2;
        // Expiry is exp plus the leeway: none here, so the test need not wait a minute.
        c.auth.leeway_secs = 0;
    })
    .await;
    let ann = token("ann");
    // No subprotocol.
    let mut ws = Ws::connect(&server, false).await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4406);
    // Subscribe before connection_init.
    let mut ws = Ws::connect(&server, true).await;
    ws.subscribe("1", "{ _schemaVersion }").await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4401);
    // A bad token.
    let mut ws = Ws::connect(&server, true).await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": "x.y.z" } }))
        .await;
    let (code, reason) = ws.recv().await.unwrap_err();
    assert_eq!(code, 4403);
    assert!(reason.starts_with("TOKEN_MALFORMED"), "{reason}");
    // Ping, a second init, duplicate ids, too many operations.
    let mut ws = Ws::open(&server, &ann).await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.next().await.unwrap(), json!({ "type": "pong" }));
    let q = r#"subscription { Counter_byId(id: "x") { id } }"#;
    ws.subscribe("a", q).await;
    ws.subscribe("b", q).await;
    ws.data("a").await;
    ws.data("b").await;
    ws.subscribe("c", q).await;
    let m = ws.next().await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("error"), Some("c"))
    );
    assert_eq!(
        m["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    // An invalid subscription: `error`, not `next`.
    ws.send(json!({ "type": "complete", "id": "b" })).await;
    ws.subscribe("d", "subscription { nope }").await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(
        m["payload"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    ws.subscribe("a", q).await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4409);
    let mut ws = Ws::open(&server, &ann).await;
    ws.send(json!({ "type": "connection_init" })).await;
    assert_eq!(ws.recv().await.unwrap_err().0, 4429);

    // The token's expiry ends the connection (4403), so the client brings a fresh one.
    let short = auth::mint_hs256(SECRET, &auth::dev_claims("ann", 2, None, None)).unwrap();
    let mut ws = Ws::open(&server, &short).await;
    ws.subscribe("1", q).await;
    ws.data("1").await;
    let t0 = std::time::Instant::now();
    let (code, reason) = ws.recv().await.unwrap_err();
    assert_eq!(code, 4403);
    assert!(reason.starts_with("TOKEN_EXPIRED"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_identities_read_what_rules_grant_them_under_their_own_limits() {
    let server = start_with("gql-service", |c| {
        c.gateway = GatewayLimits {
            frames_per_sec: 1,
            frame_burst: 6,
            // Over a budget a request waits; past this, it is refused.
            max_wait: std::time::Duration::from_millis(500),
            ..GatewayLimits::default()
        };
    })
    .await;
    let (ann, bob, job) = (token("ann"), token("bob"), service_token("nightly"));
    data(
        &server,
        &ann,
        r#"mutation { addTodo(id: "a1", n: 1) }"#,
        json!({}),
    )
    .await;
    data(
        &server,
        &bob,
        r#"mutation { addTodo(id: "b1", n: 1) }"#,
        json!({}),
    )
    .await;
    // The rule `auth.role == "service"` lets the job read every user's list; ann still
    // reads only hers.
    let q = "{ Todo_all { nodes { id _partition } } }";
    let d = data(&server, &job, q, json!({})).await;
    assert_eq!(ids(&d["Todo_all"]), ["a1", "b1"]);
    let d = data(&server, &ann, q, json!({})).await;
    assert_eq!(ids(&d["Todo_all"]), ["a1"]);
    // ann runs out of her request budget (each request and each read take a token);
    // the job, a service, has its own limits.
    let mut refused = None;
    for i in 0..6 {
        let (status, r) = gql(&server, &ann, q, json!({})).await;
        if status == 429 || !codes(&r).is_empty() {
            refused = Some((i, codes(&r)));
            break;
        }
    }
    let (_, c) = refused.expect("ann was rate limited");
    assert_eq!(c, ["RATE_LIMITED"]);
    for _ in 0..20 {
        data(&server, &job, q, json!({})).await;
    }
}
