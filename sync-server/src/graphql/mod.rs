//! GraphQL at `/v1/graphql`, generated from the Warren schema.
//!
//! The GraphQL schema is built once at start from the Warren schema ([`schema`]): an
//! object type per collection, a query field per collection read (`byId`, `all`, one
//! per index, with Relay-style connections), a mutation per schema function, and the
//! same reads as subscriptions (live queries). `docs/GRAPHQL.md` is the mapping.
//! Parsing, validation, introspection and execution are async-graphql's; every read
//! and write is Warren's, through the same engine and rules as the sync protocol:
//!
//! - a query field becomes a Warren program ([`program`]), every value written as an
//!   escaped literal, run read-only with the caller's verified claims on a snapshot of
//!   the region's state, on the blocking pool ([`exec`]). All the fields of one request
//!   read the same snapshot.
//! - a mutation field becomes a commit (`Op::Call`), sequenced and applied like any
//!   push; the answer waits for its outcome.
//! - a subscription field is a live query: run again when a batch writes a key it read,
//!   and sent when its result changed (`exec::live`).
//!
//! HTTP (`POST /v1/graphql`, JSON, bearer token) is answered here; WebSocket
//! (`graphql-transport-ws`, the token in `connection_init`) in [`ws`].

pub mod exec;
pub mod program;
pub mod schema;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{ErrorExtensionValues, ServerError};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::broadcast;
use warren_core::eval::Limits;
use warren_core::protocol::codes as protocol_codes;
use warren_core::Value;

use crate::gateway::{self, AppError, AppState};
use crate::limits::Budget;
use crate::region::Changes;

/// Stable codes of GraphQL-specific errors, in `extensions.code` (the engine's codes,
/// the token codes and the protocol's `RATE_LIMITED`, `SHUTTING_DOWN`... are used as
/// they are).
pub mod codes {
    /// The body is not a GraphQL request (not JSON, no `query`).
    pub const BAD_REQUEST: &str = "GRAPHQL_BAD_REQUEST";
    /// The query text does not parse, or nests deeper than the server reads.
    pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The query does not fit the schema, or is deeper or more complex than allowed.
    pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// The Warren schema has names that cannot be GraphQL names (see the log).
    pub const UNAVAILABLE: &str = "GRAPHQL_UNAVAILABLE";
    /// A mutation with this idempotency key was applied before, and its outcome is no
    /// longer kept (only the last 1,024 are).
    pub const DUPLICATE: &str = "DUPLICATE";
    /// A mutation of the request was not applied because an earlier one of the same
    /// request (with an idempotency key) was not sent; retry the request.
    pub const OUT_OF_ORDER: &str = "OUT_OF_ORDER";
    /// A GraphQL WebSocket holds as many subscriptions as it may.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "TOO_MANY_SUBSCRIPTIONS";

    pub const ALL: &[&str] = &[
        BAD_REQUEST,
        PARSE_FAILED,
        VALIDATION_FAILED,
        UNAVAILABLE,
        DUPLICATE,
        OUT_OF_ORDER,
        TOO_MANY_SUBSCRIPTIONS,
    ];
}

/// GraphQL's counters, rendered with the server's other metrics.
#[derive(Default)]
pub struct GraphqlMetrics {
    /// Operations received (HTTP requests and WebSocket `subscribe` messages).
    pub operations: AtomicU64,
    /// Warren programs run for query and subscription fields.
    pub reads: AtomicU64,
    /// Mutation fields (commits) sent.
    pub mutations: AtomicU64,
    /// Live queries open now.
    pub live: AtomicU64,
    /// Live queries run again because a batch wrote something they read.
    pub live_reruns: AtomicU64,
    /// Results sent to live queries (a run again whose result did not change sends
    /// nothing).
    pub live_updates: AtomicU64,
}

impl GraphqlMetrics {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, v) in [
            (
                "warren_graphql_operations_total",
                "GraphQL operations received.",
                &self.operations,
            ),
            (
                "warren_graphql_reads_total",
                "Warren programs run for GraphQL query and subscription fields.",
                &self.reads,
            ),
            (
                "warren_graphql_mutations_total",
                "GraphQL mutation fields sent as commits.",
                &self.mutations,
            ),
            (
                "warren_graphql_live_reruns_total",
                "Live queries run again because a write touched what they read.",
                &self.live_reruns,
            ),
            (
                "warren_graphql_live_updates_total",
                "Changed results sent to live queries.",
                &self.live_updates,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP warren_graphql_live Live queries open.\n# TYPE warren_graphql_live gauge\nwarren_graphql_live {}",
            self.live.load(Ordering::Relaxed)
        );
    }
}

/// What the GraphQL resolvers share: the gateway's state, the engine limits, the gate
/// that bounds concurrent evaluations, and the region's change feed.
pub struct Service {
    pub(crate) app: AppState,
    /// The version of the Warren schema GraphQL was built from (named in commits).
    pub(crate) schema_version: std::sync::RwLock<String>,
    pub(crate) limits: Limits,
    pub(crate) gate: exec::Gate,
    pub(crate) changes: broadcast::Sender<Arc<Changes>>,
    pub(crate) sequences: exec::Sequences,
}

impl Service {
    pub(crate) fn metrics(&self) -> &GraphqlMetrics {
        &self.app.metrics.graphql
    }
}

/// A GraphQL schema built from a Warren schema, or why there is none.
type Built = Result<async_graphql::dynamic::Schema, Arc<str>>;

/// The GraphQL endpoint: the schema built from the Warren schema in force (rebuilt
/// when a schema entry of the log changes it).
#[derive(Clone)]
pub struct Graphql {
    service: Arc<Service>,
    schema: Arc<std::sync::RwLock<Built>>,
    graphiql: bool,
}

impl Graphql {
    fn schema(&self) -> Built {
        self.schema.read().expect("GraphQL schema lock").clone()
    }
}

fn build(warren: &warren_core::Schema, service: &Arc<Service>) -> Built {
    schema::build(warren, service.clone()).map_err(|e| {
        tracing::error!("GraphQL is unavailable: {e}");
        Arc::<str>::from(e)
    })
}

/// The routes at `/v1/graphql` (POST: HTTP; GET: WebSocket upgrade, or GraphiQL),
/// generated from the Warren schema in `schemas` and rebuilt when it changes: a
/// request is answered by the schema in force when it arrives.
pub fn router(
    app: AppState,
    mut schemas: tokio::sync::watch::Receiver<Arc<warren_core::Schema>>,
    limits: Limits,
    changes: broadcast::Sender<Arc<Changes>>,
    graphiql: bool,
) -> Router {
    let gate = exec::Gate::new(&app.limits);
    let warren = schemas.borrow_and_update().clone();
    let service = Arc::new(Service {
        app,
        schema_version: std::sync::RwLock::new(warren.version().to_owned()),
        limits,
        gate,
        changes,
        sequences: exec::Sequences::new(),
    });
    let schema = Arc::new(std::sync::RwLock::new(build(&warren, &service)));
    {
        // Weak: the task must not keep the gateway's state (and so the sequencer's
        // queue) alive once the server stops serving.
        let (service, schema) = (Arc::downgrade(&service), Arc::downgrade(&schema));
        tokio::spawn(async move {
            while schemas.changed().await.is_ok() {
                let (Some(service), Some(schema)) = (service.upgrade(), schema.upgrade()) else {
                    break;
                };
                let warren = schemas.borrow_and_update().clone();
                let built = build(&warren, &service);
                // The version commits name, and the schema, switch together.
                let mut slot = schema.write().expect("GraphQL schema lock");
                *service.schema_version.write().expect("schema version lock") =
                    warren.version().to_owned();
                *slot = built;
                tracing::info!(version = warren.version(), "GraphQL follows the new schema");
            }
        });
    }
    let body_limit = axum::extract::DefaultBodyLimit::max(service.app.limits.max_frame_bytes);
    Router::new()
        .route("/v1/graphql", get(get_graphql).post(post_graphql))
        .layer(body_limit)
        .with_state(Graphql {
            service,
            schema,
            graphiql,
        })
}

/// Who is asking, with what one request shares between its fields.
pub struct Caller {
    /// The verified claims (`auth` in the rules).
    pub auth: Value,
    /// Whether the identity is a service (its limits).
    pub service: bool,
    /// The `Idempotency-Key` of an HTTP request: its mutations are exactly once.
    pub idempotency_key: Option<String>,
    /// The snapshot the request's query fields read, taken by the first of them.
    pub(crate) snapshot: tokio::sync::OnceCell<Arc<crate::region::ReadView>>,
    /// Mutation fields of the request started so far.
    pub(crate) mutations: AtomicU64,
    /// For a live query's run: what its reads read.
    pub(crate) reads: Option<std::sync::Mutex<exec::ReadKeys>>,
    /// Whether its reads take tokens of the identity's request budget: yes, but for a
    /// live query's runs after the first (others' writes cause them).
    pub(crate) charged: bool,
}

impl Caller {
    pub fn new(app: &AppState, auth: Value, idempotency_key: Option<String>) -> Caller {
        Caller {
            service: app.limits.is_service(&auth),
            auth,
            idempotency_key,
            snapshot: Default::default(),
            mutations: AtomicU64::new(0),
            reads: None,
            charged: true,
        }
    }

    /// A caller for one run of a live query: its reads are recorded, and charged to
    /// the identity's budget on the first run only.
    pub(crate) fn live(app: &AppState, auth: Value, first: bool) -> Caller {
        Caller {
            reads: Some(Default::default()),
            charged: first,
            ..Caller::new(app, auth, None)
        }
    }
}

/// A GraphQL error with a stable code in `extensions.code`.
pub fn error(code: &str, message: impl Into<String>) -> async_graphql::Error {
    let mut e = async_graphql::Error::new(message);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", code);
    e.extensions = Some(ext);
    e
}

/// An engine error as a GraphQL error.
pub fn engine_error(e: &warren_core::Error) -> async_graphql::Error {
    error(e.code.as_str(), e.message.clone())
}

/// A whole-request refusal (bad token, rate limit...) in the GraphQL response shape.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({
            "errors": [{ "message": message, "extensions": { "code": code } }]
        })),
    )
        .into_response()
}

impl From<AppError> for Response {
    fn from(e: AppError) -> Response {
        refusal(e.status, &e.code, &e.message)
    }
}

/// The `Idempotency-Key` header: 1 to 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(AppError::new(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "Idempotency-Key is 1 to 128 visible ASCII characters",
        )),
    }
}

/// Gives every error of a response a code: parse and validation errors have none from
/// async-graphql, and resolver errors already carry theirs.
pub(crate) fn with_codes(mut resp: async_graphql::Response) -> async_graphql::Response {
    for e in &mut resp.errors {
        add_code(e);
    }
    resp
}

fn add_code(e: &mut ServerError) {
    let has = e
        .extensions
        .as_ref()
        .is_some_and(|x| x.get("code").is_some());
    if has {
        return;
    }
    // Parse and validation errors are tagged as they happen (`schema::ErrorCodes`); a
    // few more come from choosing the operation (an unknown operation name), before
    // execution and without a path. Resolver errors carry their own codes.
    let code = if e.path.is_empty() {
        codes::VALIDATION_FAILED
    } else {
        protocol_codes::INTERNAL
    };
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

/// `POST /v1/graphql`: `{"query", "variables"?, "operationName"?}` with a bearer token.
async fn post_graphql(
    State(g): State<Graphql>,
    conn: gateway::ConnExt,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let app = &g.service.app;
    let auth = match gateway::verify(app, &headers, &gateway::conn_of(conn)).await {
        Ok(a) => a,
        Err(e) => return e.into(),
    };
    if let Err(e) = gateway::take_http(app, &auth, Budget::Frames, 1).await {
        return e.into();
    }
    g.service
        .metrics()
        .operations
        .fetch_add(1, Ordering::Relaxed);
    let built = g.schema();
    let schema = match &built {
        Ok(s) => s,
        Err(why) => return refusal(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, why),
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return e.into(),
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                &format!("the body is not a GraphQL request: {e}"),
            )
        }
    };
    let mut request = request;
    match prepare(&mut request) {
        Err(resp) => return Json(*resp).into_response(),
        Ok(OperationType::Subscription) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "subscriptions run over a WebSocket at /v1/graphql (graphql-transport-ws)",
            )
        }
        Ok(_) => {}
    }
    let caller = Arc::new(Caller::new(app, auth, key));
    let resp = schema.execute(request.data(caller)).await;
    Json(with_codes(resp)).into_response()
}

/// The longest parse error message sent back (the parser quotes the line it stopped
/// at, which can be the whole query).
const MAX_PARSE_MESSAGE: usize = 1024;

/// Parses a request's query, after a guard against deep nesting, and says which kind of
/// operation it selects (`Query` when it names none that exists: execution then says
/// so). A failure is the response to send, coded `GRAPHQL_PARSE_FAILED`.
pub(crate) fn prepare(
    request: &mut async_graphql::Request,
) -> Result<OperationType, Box<async_graphql::Response>> {
    if let Err(why) = program::check_nesting(&request.query) {
        return Err(Box::new(error_response(codes::PARSE_FAILED, &why)));
    }
    let name = request.operation_name.clone();
    let doc = match request.parsed_query() {
        Ok(d) => d,
        Err(e) => {
            let mut m = e.message;
            if m.len() > MAX_PARSE_MESSAGE {
                let mut end = MAX_PARSE_MESSAGE;
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m.truncate(end);
                m.push_str(" ...");
            }
            return Err(Box::new(error_response(codes::PARSE_FAILED, &m)));
        }
    };
    let ty = match &doc.operations {
        DocumentOperations::Single(op) => op.node.ty,
        DocumentOperations::Multiple(ops) => {
            let op = match &name {
                Some(n) => ops.get(n.as_str()),
                None if ops.len() == 1 => ops.values().next(),
                None => None,
            };
            op.map_or(OperationType::Query, |o| o.node.ty)
        }
    };
    Ok(ty)
}

/// Turns a prepared subscription into the query it runs as (a live query is its
/// operation run again; the subscription fields mirror the query fields).
pub(crate) fn as_query(request: &mut async_graphql::Request) {
    let Ok(doc) = request.parsed_query() else {
        return;
    };
    let mut doc = doc.clone();
    match &mut doc.operations {
        DocumentOperations::Single(op) => op.node.ty = OperationType::Query,
        DocumentOperations::Multiple(ops) => {
            for op in ops.values_mut() {
                if op.node.ty == OperationType::Subscription {
                    op.node.ty = OperationType::Query;
                }
            }
        }
    }
    request.set_parsed_query(doc);
}

/// Whether a response failed before anything ran (it did not parse or validate).
pub(crate) fn failed_before_running(resp: &async_graphql::Response) -> bool {
    !resp.errors.is_empty()
        && resp.errors.iter().all(|e| {
            let code = e.extensions.as_ref().and_then(|x| x.get("code"));
            matches!(code, Some(async_graphql::Value::String(c)) if c == codes::PARSE_FAILED || c == codes::VALIDATION_FAILED)
        })
}

fn error_response(code: &str, message: &str) -> async_graphql::Response {
    let mut e = ServerError::new(message, None);
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    async_graphql::Response::from_errors(vec![e])
}

/// `GET /v1/graphql`: a WebSocket upgrade (`graphql-transport-ws`), or GraphiQL for a
/// browser when the server runs with `--graphiql`.
async fn get_graphql(
    State(g): State<Graphql>,
    conn: gateway::ConnExt,
    headers: HeaderMap,
    ws: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    if let Ok(ws) = ws {
        return ws::upgrade(
            g.service.clone(),
            g.schema(),
            gateway::conn_of(conn),
            headers,
            ws,
        )
        .await;
    }
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if g.graphiql && wants_html {
        return Html(GRAPHIQL).into_response();
    }
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::BAD_REQUEST,
        "send GraphQL requests with POST (or subscribe over a WebSocket)",
    )
}

/// GraphiQL (from a CDN: this page is for development), with a box for the token.
const GRAPHIQL: &str = include_str!("graphiql.html");

#[cfg(test)]
mod tests {
    /// Every GraphQL code is in the errors table of docs/GRAPHQL.md.
    #[test]
    fn the_docs_list_every_code() {
        let doc = include_str!("../../../docs/GRAPHQL.md");
        let table = &doc[doc.find("## Errors").expect("an Errors section")..];
        for code in super::codes::ALL {
            assert!(
                table.contains(&format!("`{code}`")),
                "{code} is not in docs/GRAPHQL.md"
            );
        }
    }
}
