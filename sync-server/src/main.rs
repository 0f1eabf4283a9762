//! `warren`: Warren's sync server and its tools.
//!
//! - `warren serve`: a complete system in one process (gateway, sequencer over a
//!   durable log, region executor over an embedded store), data under `--data-dir`.
//! - `warren check schema.warren`: validate a schema.
//! - `warren token --sub ann`: mint a development token for `serve`'s secret.
//! - `warren schema apply schema.warren --etcd URLS`: change the schema of a
//!   deployment of many regions (a schema entry in the global log).
//! - `warren test schema.test.json`: rule tests (fixtures, operations as identities,
//!   the outcome each must have), failures printed as explain traces.
//! - `warren explain --as ann 'Todo.all()'`: a decision replayed with the rules' trace
//!   (on a stopped server's data directory, or a running one with `--url`).
//!
//! `warren serve --etcd URLS --region NAME` runs a region of a deployment of many
//! regions on a shared log (etcd) instead of the embedded log: `docs/REGIONS.md`.
//!
//! Every flag has an environment variable (`WARREN_...`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use warren_core::eval::Limits;
use warren_core::quota::Quotas;
use warren_core::Schema;
use warren_server::auth::{self, AuthConfig, JwksSource};
use warren_server::conns::ConnLimits;
use warren_server::gateway::GatewayLimits;
use warren_server::sequencer::SequencerOptions;
use warren_server::server::{self, Config, SharedConfig};
use warren_server::web::WebOptions;

#[derive(Parser)]
#[command(name = "warren", version, about = "Warren's sync server and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gateway, sequencer, durable log and region executor.
    Serve(Box<ServeArgs>),
    /// Check a schema file: parse it, compile it, and print its version.
    Check {
        /// The schema file.
        #[arg(env = "WARREN_SCHEMA", default_value = "schema.warren")]
        schema: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mint a development token (HS256) for a server's secret.
    Token(TokenArgs),
    /// Write types for a schema: `warren codegen ts schema.warren > schema.ts` gives
    /// the TypeScript that `open<Schema>(...)` takes.
    Codegen {
        /// The language: `ts` (TypeScript).
        #[arg(value_parser = ["ts"])]
        lang: String,
        /// The schema file.
        #[arg(env = "WARREN_SCHEMA", default_value = "schema.warren")]
        schema: PathBuf,
    },
    /// The schema of a deployment of many regions.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Explain a decision: run a query, a transaction, a function call or a
    /// partition's read rule as an identity, and print the rules it evaluated. Nothing
    /// is written (docs/DEBUGGING.md).
    Explain(Box<ExplainArgs>),
    /// Run rule tests: fixtures, then operations as identities with the outcome each
    /// must have; a failure prints the rules' trace (docs/DEBUGGING.md).
    Test {
        /// The test file (JSON, next to the schema it names).
        file: PathBuf,
    },
}

#[derive(Args)]
struct ExplainArgs {
    /// Who to run as: a subject (`ann`) or the claims as JSON (`{"sub":"ann"}`).
    #[arg(long = "as")]
    auth: String,
    /// The data directory of a stopped server (copied, never written).
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "warren-data")]
    data_dir: PathBuf,
    /// Ask a running server instead (its `/v1/admin/explain`, with --admin-token).
    #[arg(long)]
    url: Option<String>,
    /// The running server's admin token.
    #[arg(long, env = "WARREN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The program: a query, or with --transaction an ad-hoc transaction.
    #[arg(conflicts_with_all = ["call", "partition"])]
    program: Option<String>,
    /// Run the program as a transaction (its writes are listed, not applied).
    #[arg(long, requires = "program")]
    transaction: bool,
    /// Call a schema function instead.
    #[arg(long, conflicts_with = "partition")]
    call: Option<String>,
    /// The function's arguments (JSON: an object or an array).
    #[arg(long, requires = "call")]
    args: Option<String>,
    /// Why the identity does (not) receive this partition: each read rule's trace.
    #[arg(long)]
    partition: Option<String>,
    /// `now()` in milliseconds (default: the clock).
    #[arg(long)]
    now: Option<i64>,
    /// Print the trace as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Check a schema file (as `warren check` does), then append it to the global log
    /// as a schema change: every region switches at the same position, and clients
    /// learn it when they reconnect.
    Apply {
        /// The schema file.
        schema: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
}

/// The per-identity quotas: execution limits, the same in every region of a deployment
/// (`warren schema apply` creates one with them when the cluster is new).
#[derive(Args, Clone, Copy)]
struct QuotaArgs {
    /// Documents one identity may keep (those it created and that exist; 0: no limit).
    #[arg(long, env = "WARREN_QUOTA_DOCUMENTS", default_value_t = 100_000)]
    quota_documents: u64,
    /// Bytes of documents one identity may keep (0: no limit).
    #[arg(long, env = "WARREN_QUOTA_BYTES", default_value_t = 64 << 20)]
    quota_bytes: u64,
    /// Partitions one identity may have created that hold documents (0: no limit).
    #[arg(long, env = "WARREN_QUOTA_PARTITIONS", default_value_t = 1_000)]
    quota_partitions: u64,
}

impl QuotaArgs {
    /// The engine's limits with these quotas: what `serve` executes with.
    fn limits(self) -> Limits {
        Limits {
            quotas: Quotas {
                documents: self.quota_documents,
                bytes: self.quota_bytes,
                partitions: self.quota_partitions,
            },
            ..Limits::default()
        }
    }
}

#[derive(Args)]
struct EtcdArgs {
    /// The etcd cluster's client URLs, comma-separated (nearest first).
    #[arg(long, env = "WARREN_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The key prefix of the deployment in etcd.
    #[arg(long, env = "WARREN_ETCD_PREFIX", default_value = "/warren/v1/")]
    etcd_prefix: String,
    #[command(flatten)]
    tls: EtcdTlsArgs,
}

/// TLS to etcd (`https://` endpoints).
#[derive(Args)]
struct EtcdTlsArgs {
    /// The CA certificate (PEM) that signed the etcd members' certificates [default:
    /// the public web roots].
    #[arg(long, env = "WARREN_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM chain) for members that require one.
    #[arg(long, env = "WARREN_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "WARREN_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    fn tls(&self) -> warren_server::log::etcd::EtcdTls {
        warren_server::log::etcd::EtcdTls {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        }
    }
}

#[derive(Args)]
struct SecretArgs {
    /// Where the server keeps its data (and its development secret).
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "warren-data")]
    data_dir: PathBuf,
    /// The HS256 secret tokens are signed with. Without it (and without --jwks), the
    /// server makes a development secret in the data directory on first start.
    #[arg(long, env = "WARREN_HS256_SECRET", hide_env_values = true)]
    hs256_secret: Option<String>,
    /// Required issuer (`iss`) of tokens.
    #[arg(long, env = "WARREN_ISSUER")]
    issuer: Option<String>,
    /// Required audience (`aud`) of tokens.
    #[arg(long, env = "WARREN_AUDIENCE")]
    audience: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    secret: SecretArgs,
    /// Address to listen on.
    #[arg(long, env = "WARREN_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// The schema file (the server refuses to start without it).
    #[arg(long, env = "WARREN_SCHEMA", default_value = "schema.warren")]
    schema: PathBuf,
    /// A JWKS for RS256/ES256 tokens: a file path or an http(s) URL.
    #[arg(long, env = "WARREN_JWKS")]
    jwks: Option<String>,
    /// How long a log batch may wait for more commits, in microseconds (0: take what
    /// is queued; batches still form while the previous one syncs).
    #[arg(long, env = "WARREN_BATCH_LINGER_US", default_value_t = 0)]
    batch_linger_us: u64,
    /// The most commits in one log batch.
    #[arg(long, env = "WARREN_MAX_BATCH", default_value_t = 1024)]
    max_batch: usize,
    /// Commit the region store durably every this many batches (the log is always
    /// synced; the store catches up from it after a crash).
    #[arg(long, env = "WARREN_STORE_SYNC_EVERY", default_value_t = 64)]
    store_sync_every: u32,
    /// The largest frame or HTTP body accepted, in bytes [default: 1 MiB; in a region
    /// of many, a quarter of --etcd-max-record-bytes if that is less].
    #[arg(long, env = "WARREN_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// The most commits in one push.
    #[arg(long, env = "WARREN_MAX_COMMITS_PER_PUSH", default_value_t = 1000)]
    max_commits_per_push: usize,
    /// Frames queued for one connection before it is dropped as too slow.
    #[arg(long, env = "WARREN_CONN_QUEUE", default_value_t = 4096)]
    conn_queue: usize,
    /// Bytes queued for one connection before it is dropped as too slow.
    #[arg(long, env = "WARREN_CONN_QUEUE_BYTES", default_value_t = 8 << 20)]
    conn_queue_bytes: usize,
    /// Seconds a new sync connection has to send Hello.
    #[arg(long, env = "WARREN_HELLO_TIMEOUT_SECS", default_value_t = 5)]
    hello_timeout_secs: u64,
    /// Sync connections waiting for their Hello at once; a newer one closes the oldest.
    #[arg(long, env = "WARREN_MAX_PENDING_HELLOS", default_value_t = 256)]
    max_pending_hellos: usize,
    /// Open TCP connections, all together (0: the open-file limit less 256).
    #[arg(long, env = "WARREN_MAX_TCP_CONNECTIONS", default_value_t = 0)]
    max_tcp_connections: usize,
    /// Of those, places only connections whose token verified may take (0: half);
    /// when the rest are taken, a new connection closes the oldest not logged in.
    #[arg(long, env = "WARREN_RESERVED_TCP_CONNECTIONS", default_value_t = 0)]
    reserved_tcp_connections: usize,
    /// Seconds a request's headers (or body) may take to arrive, and a kept-alive
    /// HTTP connection may wait for its next request.
    #[arg(long, env = "WARREN_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds writing one frame may take before the connection is dropped.
    #[arg(long, env = "WARREN_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    write_timeout_secs: u64,
    /// Open sync connections, all identities together (0: no limit).
    #[arg(long, env = "WARREN_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Open sync connections of one identity, the token's `sub` (0: no limit).
    #[arg(
        long,
        env = "WARREN_MAX_CONNECTIONS_PER_IDENTITY",
        default_value_t = 64
    )]
    max_connections_per_identity: usize,
    /// Commits one identity may send per second, WebSocket and HTTP together (0: no
    /// limit).
    #[arg(long, env = "WARREN_COMMITS_PER_SEC", default_value_t = 200)]
    commits_per_sec: u32,
    /// Commits one identity may send at once (at least --max-commits-per-push).
    #[arg(long, env = "WARREN_COMMIT_BURST", default_value_t = 2000)]
    commit_burst: u32,
    /// Frames and HTTP requests one identity may send per second (0: no limit).
    #[arg(long, env = "WARREN_FRAMES_PER_SEC", default_value_t = 200)]
    frames_per_sec: u32,
    /// Frames and HTTP requests one identity may send at once.
    #[arg(long, env = "WARREN_FRAME_BURST", default_value_t = 1000)]
    frame_burst: u32,
    /// Tokens whose `role` claim is this are service identities (trusted backend code),
    /// with the --service-* limits instead of the end-user ones ("": none).
    #[arg(long, env = "WARREN_SERVICE_ROLE", default_value = "service")]
    service_role: String,
    /// Open connections of one service identity (0: no limit).
    #[arg(
        long,
        env = "WARREN_SERVICE_MAX_CONNECTIONS_PER_IDENTITY",
        default_value_t = 256
    )]
    service_max_connections_per_identity: usize,
    /// Commits one service identity may send per second (0: no limit).
    #[arg(long, env = "WARREN_SERVICE_COMMITS_PER_SEC", default_value_t = 2000)]
    service_commits_per_sec: u32,
    /// Commits one service identity may send at once.
    #[arg(long, env = "WARREN_SERVICE_COMMIT_BURST", default_value_t = 20_000)]
    service_commit_burst: u32,
    /// Frames and HTTP requests one service identity may send per second (0: no limit).
    #[arg(long, env = "WARREN_SERVICE_FRAMES_PER_SEC", default_value_t = 2000)]
    service_frames_per_sec: u32,
    /// Frames and HTTP requests one service identity may send at once.
    #[arg(long, env = "WARREN_SERVICE_FRAME_BURST", default_value_t = 10_000)]
    service_frame_burst: u32,
    /// GraphQL query evaluations at once, all identities together (0: twice the CPUs).
    #[arg(long, env = "WARREN_GRAPHQL_CONCURRENCY", default_value_t = 0)]
    graphql_concurrency: usize,
    /// GraphQL query evaluations of one end-user identity at once.
    #[arg(
        long,
        env = "WARREN_GRAPHQL_CONCURRENCY_PER_IDENTITY",
        default_value_t = 2
    )]
    graphql_concurrency_per_identity: usize,
    /// GraphQL query evaluations of one service identity at once.
    #[arg(
        long,
        env = "WARREN_SERVICE_GRAPHQL_CONCURRENCY_PER_IDENTITY",
        default_value_t = 8
    )]
    service_graphql_concurrency_per_identity: usize,
    /// Subscriptions one GraphQL WebSocket may hold.
    #[arg(
        long,
        env = "WARREN_GRAPHQL_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 64
    )]
    graphql_subscriptions_per_connection: usize,
    /// Serve GraphiQL, an in-browser GraphQL IDE, at GET /v1/graphql (development).
    #[arg(long, env = "WARREN_GRAPHIQL")]
    graphiql: bool,
    /// Milliseconds of the region's time one identity's commits may use per second (0:
    /// no limit); over it, its commits wait.
    #[arg(long, env = "WARREN_COST_MS_PER_SEC", default_value_t = 10)]
    cost_ms_per_sec: u32,
    /// Milliseconds of the region's time one identity's commits may use at once.
    #[arg(long, env = "WARREN_COST_BURST_MS", default_value_t = 250)]
    cost_burst_ms: u32,
    /// Commits of one identity let through to the sequencer and not yet run.
    #[arg(long, env = "WARREN_MAX_IN_FLIGHT", default_value_t = 8)]
    max_in_flight: u32,
    /// Seconds of clock leeway for tokens' `exp` and `nbf` (an open connection ends at
    /// `exp` plus this).
    #[arg(long, env = "WARREN_TOKEN_LEEWAY_SECS", default_value_t = 60)]
    token_leeway_secs: u64,
    /// Seconds a request waits for its identity's budget before RATE_LIMITED.
    #[arg(long, env = "WARREN_MAX_WAIT_SECS", default_value_t = 30)]
    max_wait_secs: u64,
    #[command(flatten)]
    quotas: QuotaArgs,
    /// Log format: `text` (for people) or `json` (one object per line). Logs go to
    /// stderr; WARREN_LOG sets the level (e.g. `info`, `warren_server=debug`).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Same as --log-format json (kept for compatibility).
    #[arg(long, env = "WARREN_LOG_JSON", hide = true)]
    log_json: bool,
    /// Serve the files under this directory at `/` (an app, such as the demo).
    #[arg(long, env = "WARREN_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// DEVELOPMENT ONLY: mint a token for any user at `POST /v1/dev/token` (anyone
    /// can then sign in as anyone). Needs the HS256 secret.
    #[arg(long, env = "WARREN_DEV_TOKENS")]
    dev_tokens: bool,
    /// Origins of web pages (`https://app.example.com`) that may use the server from
    /// another origin (CORS); repeat it or separate with commas. With one given, a page
    /// of an origin not listed cannot open the sync WebSocket either. --dev-tokens also
    /// allows pages served from this machine (localhost, any port).
    #[arg(
        long = "cors-origin",
        env = "WARREN_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// The bearer token of the operator's endpoints (`/v1/admin/snapshot`,
    /// `/v1/admin/state`, `/v1/admin/explain`); they are off without one.
    #[arg(long, env = "WARREN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    region: RegionArgs,
}

/// A region of a deployment of many regions (docs/REGIONS.md).
#[derive(Args)]
struct RegionArgs {
    /// Run a region of a deployment of many regions on this etcd cluster (client URLs,
    /// comma-separated, nearest first) instead of the embedded log. Needs --region.
    #[arg(long, env = "WARREN_ETCD", value_delimiter = ',', requires = "region")]
    etcd: Vec<String>,
    /// This region's name: 1 to 64 of a-z, 0-9, - and _.
    #[arg(long, env = "WARREN_REGION", requires = "etcd")]
    region: Option<String>,
    /// The key prefix of the deployment in etcd.
    #[arg(long, env = "WARREN_ETCD_PREFIX", default_value = "/warren/v1/")]
    etcd_prefix: String,
    #[command(flatten)]
    tls: EtcdTlsArgs,
    /// Boot from another region's snapshot (its /v1/admin/snapshot URL) when this
    /// region's store is new, or behind the log's compaction.
    #[arg(long, env = "WARREN_BOOT_FROM")]
    boot_from: Option<String>,
    /// The admin token of the region --boot-from names.
    #[arg(long, env = "WARREN_BOOT_TOKEN", hide_env_values = true)]
    boot_token: Option<String>,
    /// The largest batch record appended to etcd, in bytes (etcd refuses requests over
    /// its --max-request-bytes, 1.5 MiB by default).
    #[arg(
        long,
        env = "WARREN_ETCD_MAX_RECORD_BYTES",
        default_value_t = 1_400_000
    )]
    etcd_max_record_bytes: usize,
    /// Milliseconds one etcd request may take before its outcome counts as unknown
    /// (and the next member is tried).
    #[arg(long, env = "WARREN_ETCD_REQUEST_TIMEOUT_MS", default_value_t = 3000)]
    etcd_request_timeout_ms: u64,
    /// Milliseconds a watch of the log may stay silent before it is opened again on
    /// the next member (run etcd with --experimental-watch-progress-notify-interval
    /// well below it).
    #[arg(long, env = "WARREN_ETCD_WATCH_STALL_MS", default_value_t = 5000)]
    etcd_watch_stall_ms: u64,
    /// Milliseconds a welcome or a pull may wait for the region to catch up with the
    /// global log before it is refused (REGION_UNAVAILABLE).
    #[arg(long, env = "WARREN_BARRIER_TIMEOUT_MS", default_value_t = 5000)]
    barrier_timeout_ms: u64,
    /// Seconds without an etcd quorum after which the region closes its connections
    /// (REGION_UNAVAILABLE), so clients move to another region.
    #[arg(long, env = "WARREN_UNAVAILABLE_AFTER_SECS", default_value_t = 10)]
    unavailable_after_secs: u64,
    /// Milliseconds between two publications of the region's digest.
    #[arg(long, env = "WARREN_PUBLISH_EVERY_MS", default_value_t = 1000)]
    publish_every_ms: u64,
    /// Seconds between two compactions of the log by this region (0: never).
    #[arg(long, env = "WARREN_COMPACT_EVERY_SECS", default_value_t = 60)]
    compact_every_secs: u64,
    /// Revisions of history kept behind the head even when every live region has them.
    #[arg(long, env = "WARREN_RETAIN_REVISIONS", default_value_t = 100_000)]
    retain_revisions: i64,
    /// Log an alert when etcd's database is larger than this (etcd's default quota is
    /// 2 GiB; at the quota it takes no writes).
    #[arg(
        long,
        env = "WARREN_ETCD_QUOTA_WARN_BYTES",
        default_value_t = 1_600_000_000
    )]
    etcd_quota_warn_bytes: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    secret: SecretArgs,
    /// The subject (`sub`): the user.
    #[arg(long, env = "WARREN_TOKEN_SUB")]
    sub: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl: u64,
    /// Extra claims, `name=value` (the value is JSON if it parses, else a string).
    #[arg(long = "claim")]
    claims: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { schema, json } => check(&schema, json),
        Command::Token(t) => token(t),
        Command::Codegen { lang: _, schema } => codegen(&schema),
        Command::Serve(s) => serve(*s),
        Command::Schema(SchemaCommand::Apply {
            schema,
            etcd,
            quotas,
        }) => schema_apply(&schema, etcd, quotas.limits()),
        Command::Explain(x) => explain(*x),
        Command::Test { file } => rule_tests(&file),
    }
}

/// `warren test FILE`: 0 when every test passed, 1 when one failed, 2 when the file
/// (its schema, a fixture) is wrong.
fn rule_tests(file: &Path) -> ExitCode {
    use warren_server::ruletest;
    let verdicts = ruletest::load(file).and_then(|s| ruletest::run(&s));
    let verdicts = match verdicts {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let failed = verdicts.iter().filter(|v| v.failure.is_some()).count();
    for v in &verdicts {
        match &v.failure {
            None => println!("ok - {}", v.name),
            Some((why, trace)) => {
                println!("not ok - {}: {why}", v.name);
                for line in trace.to_text().lines() {
                    println!("    {line}");
                }
            }
        }
    }
    println!(
        "{} passed, {failed} failed ({})",
        verdicts.len() - failed,
        file.display()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `warren explain`: prints the trace; exits 0 when the program or partition was
/// allowed, 1 when it was refused, 2 on a usage or storage error.
fn explain(x: ExplainArgs) -> ExitCode {
    use warren_server::explain as ex;
    let fail = |m: String| {
        eprintln!("error: {m}");
        ExitCode::from(2)
    };
    let auth = match ex::auth_of(&x.auth) {
        Ok(a) => a,
        Err(e) => return fail(e.message),
    };
    let now = x.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let mut req = serde_json::json!({ "auth": auth.to_json(), "now": now });
    match (&x.program, &x.call, &x.partition) {
        (Some(p), _, _) if x.transaction => req["transaction"] = p.as_str().into(),
        (Some(p), _, _) => req["query"] = p.as_str().into(),
        (None, Some(f), _) => {
            req["call"] = f.as_str().into();
            if let Some(a) = &x.args {
                match serde_json::from_str::<serde_json::Value>(a) {
                    Ok(a) => req["args"] = a,
                    Err(e) => return fail(format!("--args is not JSON: {e}")),
                }
            }
        }
        (None, None, Some(p)) => req["partition"] = p.as_str().into(),
        (None, None, None) => return fail("give a program, --call or --partition".into()),
    }
    let trace = match &x.url {
        Some(url) => {
            let Some(token) = &x.admin_token else {
                return fail("--url needs --admin-token".into());
            };
            match ex::ask(url, token, &req) {
                Ok(t) => t,
                Err(e) => return fail(e),
            }
        }
        None => {
            let r = (|| {
                let req = ex::Request::from_json(&req)?;
                let copy = ex::open_copy(&x.data_dir)?;
                let schema = ex::schema_of(&copy.store)?;
                let position = warren_core::exec::position(&copy.store)?;
                ex::run(&copy.store, &schema, &Limits::default(), position, &req)
            })();
            match r {
                Ok(t) => t.to_value(),
                Err(e) => return fail(format!("{}: {}", e.code.as_str(), e.message)),
            }
        }
    };
    if x.json {
        let mut out = String::new();
        warren_core::text::write_json(&mut out, &trace);
        println!("{out}");
    } else {
        print!("{}", warren_core::explain::text_of(&trace));
    }
    let o = trace.get("outcome");
    let allowed = o.get("ok") == &warren_core::Value::Bool(true)
        && (x.partition.is_none() || o.get("result") != &warren_core::Value::Array(vec![]));
    if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The development secret: made once, kept in the data directory.
fn dev_secret(data_dir: &Path, create: bool) -> Result<String, String> {
    let path = data_dir.join("dev-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_owned());
    }
    if !create {
        return Err(format!(
            "no secret: pass --hs256-secret, or start `warren serve` with --data-dir {} first",
            data_dir.display()
        ));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("cannot read random bytes for the development secret: {e}"))?;
    let secret = warren_core::hex(&bytes);
    // Readable by the server's user only: anyone who reads it can sign in as anyone.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(secret.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| e.to_string())?;
    }
    Ok(secret)
}

fn token(t: TokenArgs) -> ExitCode {
    let secret = match t
        .secret
        .hs256_secret
        .clone()
        .map(Ok)
        .unwrap_or_else(|| dev_secret(&t.secret.data_dir, false))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut claims = auth::dev_claims(
        &t.sub,
        t.ttl,
        t.secret.issuer.as_deref(),
        t.secret.audience.as_deref(),
    );
    for c in &t.claims {
        let Some((k, v)) = c.split_once('=') else {
            eprintln!("error: --claim takes name=value, not {c:?}");
            return ExitCode::from(2);
        };
        claims[k] =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
    }
    match auth::mint_hs256(&secret, &claims) {
        Ok(tok) => {
            println!("{tok}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is a file
/// descriptor, and a soft limit of 1,024 (a common default) lets a few hundred idle
/// sockets stop the server from accepting or opening anything.
fn raise_fd_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!("cannot read the open-file limit");
            return;
        }
        let before = lim.rlim_cur;
        if before < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    soft = before,
                    hard = lim.rlim_max,
                    "cannot raise the open-file limit"
                );
                return;
            }
        }
        tracing::info!(from = before, to = lim.rlim_cur, "open-file limit");
    }
}

fn serve(s: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries only the "serving on" line.
    if s.log_json || s.log_format == LogFormat::Json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    raise_fd_limit();
    let schema = match std::fs::read_to_string(&s.schema) {
        Ok(src) => src,
        Err(e) => {
            eprintln!(
                "error: cannot read the schema file {}: {e} (give it with --schema FILE or WARREN_SCHEMA)",
                s.schema.display()
            );
            return ExitCode::from(2);
        }
    };
    let jwks = s.jwks.as_ref().map(|j| {
        if j.starts_with("http://") || j.starts_with("https://") {
            JwksSource::Url(j.clone())
        } else {
            JwksSource::File(PathBuf::from(j))
        }
    });
    let hs256_secret = match (&s.secret.hs256_secret, &jwks) {
        (Some(x), _) => Some(x.clone()),
        (None, Some(_)) => None,
        (None, None) => match dev_secret(&s.secret.data_dir, true) {
            Ok(x) => {
                tracing::info!(
                    "development tokens: warren token --data-dir {} --sub <user>",
                    s.secret.data_dir.display()
                );
                Some(x)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if s.dev_tokens && hs256_secret.is_none() {
        eprintln!("error: --dev-tokens needs an HS256 secret (it mints HS256 tokens)");
        return ExitCode::from(2);
    }
    if s.dev_tokens {
        tracing::warn!("DEVELOPMENT MODE: anyone can get a token for any user at /v1/dev/token");
    }
    let mut cors_origins = Vec::new();
    for o in s.cors_origins.iter().filter(|o| !o.trim().is_empty()) {
        match warren_server::web::parse_origin(o) {
            Some(o) => cors_origins.push(o),
            None => {
                eprintln!(
                    "error: --cors-origin {o:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com or http://localhost:5173"
                );
                return ExitCode::from(2);
            }
        }
    }
    let web = WebOptions {
        static_dir: s.static_dir.clone(),
        dev_token_secret: if s.dev_tokens {
            hs256_secret.clone()
        } else {
            None
        },
        issuer: s.secret.issuer.clone(),
        audience: s.secret.audience.clone(),
        graphiql: s.graphiql,
        cors_origins,
    };
    let shared = s.region.region.clone().map(|name| {
        let r = &s.region;
        let mut sc = SharedConfig::new(&name, r.etcd.clone());
        sc.prefix = r.etcd_prefix.clone();
        sc.etcd_options.request_timeout = Duration::from_millis(r.etcd_request_timeout_ms);
        sc.etcd_options.watch_stall = Duration::from_millis(r.etcd_watch_stall_ms);
        sc.etcd_options.tls = r.tls.tls();
        sc.max_record_bytes = r.etcd_max_record_bytes;
        sc.boot_from = r.boot_from.clone();
        sc.boot_token = r.boot_token.clone();
        sc.barrier_timeout = Duration::from_millis(r.barrier_timeout_ms);
        sc.unavailable_after = Duration::from_secs(r.unavailable_after_secs);
        sc.publish_every = Duration::from_millis(r.publish_every_ms.max(10));
        sc.compact_every = Duration::from_secs(r.compact_every_secs);
        sc.retain_revisions = r.retain_revisions;
        sc.quota_warn_bytes = r.etcd_quota_warn_bytes;
        sc
    });
    let max_frame_bytes = s.max_frame_bytes.unwrap_or_else(|| match &shared {
        Some(sc) => (1 << 20).min(sc.max_record_bytes / 4),
        None => 1 << 20,
    });
    let config = Config {
        admin_token: s.admin_token.clone(),
        shared,
        data_dir: s.secret.data_dir.clone(),
        schema,
        auth: AuthConfig {
            hs256_secret,
            jwks,
            issuer: s.secret.issuer.clone(),
            audience: s.secret.audience.clone(),
            leeway_secs: s.token_leeway_secs,
        },
        sequencer: SequencerOptions {
            max_batch: s.max_batch.max(1),
            linger: Duration::from_micros(s.batch_linger_us),
        },
        limits: s.quotas.limits(),
        gateway: GatewayLimits {
            max_frame_bytes,
            max_commits_per_push: s.max_commits_per_push,
            conn_queue: s.conn_queue,
            conn_queue_bytes: s.conn_queue_bytes,
            hello_timeout: Duration::from_secs(s.hello_timeout_secs),
            write_timeout: Duration::from_secs(s.write_timeout_secs),
            max_connections: s.max_connections,
            max_connections_per_identity: s.max_connections_per_identity,
            commits_per_sec: s.commits_per_sec,
            commit_burst: s.commit_burst,
            frames_per_sec: s.frames_per_sec,
            frame_burst: s.frame_burst,
            service_role: s.service_role.clone(),
            service_max_connections_per_identity: s.service_max_connections_per_identity,
            service_commits_per_sec: s.service_commits_per_sec,
            service_commit_burst: s.service_commit_burst,
            service_frames_per_sec: s.service_frames_per_sec,
            service_frame_burst: s.service_frame_burst,
            graphql_concurrency: s.graphql_concurrency,
            graphql_concurrency_per_identity: s.graphql_concurrency_per_identity,
            service_graphql_concurrency_per_identity: s.service_graphql_concurrency_per_identity,
            graphql_subscriptions_per_connection: s.graphql_subscriptions_per_connection,
            cost_ms_per_sec: s.cost_ms_per_sec,
            cost_burst_ms: s.cost_burst_ms,
            max_in_flight: s.max_in_flight,
            max_wait: Duration::from_secs(s.max_wait_secs),
            conns: ConnLimits {
                max: s.max_tcp_connections,
                reserved: s.reserved_tcp_connections,
                header_timeout: Duration::from_secs(s.header_timeout_secs.max(1)),
            },
            max_pending_hellos: s.max_pending_hellos,
        },
        store_sync_every: s.store_sync_every,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&s.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", s.listen);
                return ExitCode::from(2);
            }
        };
        let running = match server::start_with_web(config, listener, web).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        println!(
            "warren: serving on http://{} (sync: ws://{}/v1/sync, GraphQL: http://{}/v1/graphql)",
            running.addr, running.addr, running.addr
        );
        wait_for_signal(&running).await;
        tracing::info!("stopping");
        match running.stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn wait_for_signal(running: &server::Running) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if running.is_finished() {
                    tracing::error!("a server part stopped on its own");
                    return;
                }
            }
        }
    }
}

/// `warren codegen ts`: the schema's TypeScript on standard output.
fn codegen(path: &PathBuf) -> ExitCode {
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|s| Schema::parse(&s).map_err(|e| format!("{}: {e}", path.display())));
    match parsed {
        Ok(s) => {
            print!("{}", warren_core::codegen::typescript(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &PathBuf, json: bool) -> ExitCode {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match Schema::parse(&source).and_then(|s| {
        // The static checks (names, arguments, declared fields): any error fails the
        // check. All are printed in source order (the last by the common path below);
        // JSON gives the first.
        let mut errors = warren_core::check::check(&s);
        if errors.is_empty() {
            return Ok(s);
        }
        if json {
            return Err(errors.swap_remove(0));
        }
        let last = errors.pop().expect("not empty");
        for e in &errors {
            let at = e.pos.map(|p| format!(":{}:{}", p.line, p.col));
            let at = at.unwrap_or_default();
            eprintln!("{}{at}: {}: {}", path.display(), e.code, e.message);
        }
        Err(last)
    }) {
        Ok(s) => {
            if json {
                let summary = serde_json::json!({
                    "ok": true,
                    "version": s.version(),
                    "collections": s.collections.values().map(|c| serde_json::json!({
                        "name": c.name,
                        "indexes": c.indexes.keys().collect::<Vec<_>>(),
                        "rules": c.rules.keys().map(|a| a.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "functions": s.functions.keys().collect::<Vec<_>>(),
                });
                println!("{summary}");
            } else {
                println!("{}: ok, version {}", path.display(), s.version());
                for c in s.collections.values() {
                    let rules: Vec<&str> = c.rules.keys().map(|a| a.as_str()).collect();
                    let indexes: Vec<&str> = c.indexes.keys().map(String::as_str).collect();
                    println!(
                        "  collection {} (indexes: {}; allow: {})",
                        c.name,
                        if indexes.is_empty() {
                            "none".to_owned()
                        } else {
                            indexes.join(", ")
                        },
                        if rules.is_empty() {
                            "nothing".to_owned()
                        } else {
                            rules.join(", ")
                        }
                    );
                }
                for (name, f) in &s.functions {
                    println!("  function {name}({})", f.params.join(", "));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let at = e
                .pos
                .map(|p| format!(":{}:{}", p.line, p.col))
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "code": e.code.as_str(),
                        "message": e.message,
                        "line": e.pos.map(|p| p.line),
                        "column": e.pos.map(|p| p.col),
                    })
                );
            } else {
                eprintln!("{}{at}: {}: {}", path.display(), e.code, e.message);
            }
            ExitCode::from(1)
        }
    }
}

/// `warren schema apply FILE --etcd URLS`.
fn schema_apply(path: &PathBuf, etcd: EtcdArgs, limits: Limits) -> ExitCode {
    use warren_core::protocol::{LogEntry, SchemaChange};
    use warren_server::log::etcd::{EtcdClient, EtcdOptions};
    use warren_server::log::shared::{Appender, EtcdLog, Key, SharedLog, ADMIN_REGION};
    // Checked first, exactly as `warren check` does.
    let code = check(path, false);
    if code != ExitCode::SUCCESS {
        return code;
    }
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let version = Schema::parse(&source)
        .map(|s| s.version().to_owned())
        .unwrap_or_default();
    let opts = EtcdOptions {
        tls: etcd.tls.tls(),
        ..EtcdOptions::default()
    };
    let client = match EtcdClient::new(&etcd.etcd, opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let log: std::sync::Arc<dyn SharedLog> =
        std::sync::Arc::new(EtcdLog::new(client, &etcd.etcd_prefix));
    let run = || -> Result<String, String> {
        let existed = log.get(&Key::Meta).map_err(|e| e.to_string())?.is_some();
        server::join_deployment(&*log, &limits, &source).map_err(|e| e.to_string())?;
        if !existed {
            return Ok(format!(
                "created the deployment with schema {version} as its initial schema"
            ));
        }
        let (rev, current) = log
            .get(&Key::Schema)
            .map_err(|e| e.to_string())?
            .unwrap_or((0, Vec::new()));
        if current == source.as_bytes() {
            return Ok(format!(
                "schema {version} is already in force; nothing appended"
            ));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut admin =
            Appender::open(log.clone(), ADMIN_REGION, stop).map_err(|e| e.to_string())?;
        let entry = LogEntry::Schema(SchemaChange {
            source: source.clone(),
        });
        let at = admin
            .append_with(
                vec![entry.encode()],
                &[(Key::Schema, source.as_bytes().to_vec())],
                Some((Key::Schema, rev)),
            )
            .map_err(|e| match e.code() {
                "LOG_FENCED" | "LOG_REFUSED" => format!(
                    "another schema change was applied at the same time ({e}); check the schema in force and run again"
                ),
                _ => e.to_string(),
            })?;
        Ok(format!(
            "schema {version} appended to the global log at revision {at}: every region switches at its position (a region logs it, or why it refused it: a unique index over duplicate values)"
        ))
    };
    match run() {
        Ok(m) => {
            println!("{m}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
