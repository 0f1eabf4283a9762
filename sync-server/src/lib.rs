//! # Warren's sync server
//!
//! # Layout
//! - [`auth`]: token verification (HS256 secret; RS256/ES256 against a JWKS file or URL)
//!   and development tokens.
//! - [`barrier`]: in a deployment of many regions, a region catches up with the global
//!   log before it welcomes a client or answers a pull.
//! - [`log`]: the global log: the [`log::Log`] trait, the segmented, fsynced
//!   [`log::FileLog`], and [`log::MemoryLog`] for tests.
//! - [`sequencer`]: batches commits, appends them durably, hands them to the region
//!   (or, in a deployment of many regions, appends them to the shared log).
//! - [`follower`]: in a deployment of many regions, consumes the shared log (etcd) in
//!   global order and hands batches and other regions' digests to the region.
//! - [`presence`]: in a deployment of many regions, relays presence messages to the
//!   other regions through etcd (not the log).
//! - [`region`]: the executor thread: applies the log, keeps each connection's
//!   readable partitions, sends snapshots, effects, drops and outcomes.
//! - [`store`]: the region's state in redb, behind the engine's storage trait.
//! - [`gateway`]: axum routes, limits and token checks; [`gateway::ws`] runs WebSocket
//!   sync sessions, [`gateway::http`] answers HTTP push and pull.
//! - [`graphql`]: GraphQL at `/v1/graphql`, generated from the schema: queries on read
//!   views, mutations as commits, live queries over `graphql-transport-ws`.
//! - [`explain`]: explain for operators: a program or a partition's read rule run as an
//!   identity with the rules' trace, on a stopped server's data or over HTTP.
//! - [`ruletest`]: `warren test`: rule tests (fixtures, operations, expected outcomes).
//! - [`snapshot`]: a region's store as one stream, to boot another region from.
//! - [`server`]: puts the parts together; start and graceful stop.
//! - [`conns`]: the accept loop: a cap on open TCP connections with a reserve for
//!   authenticated ones, header-read and idle timeouts.
//! - [`limits`]: per-identity limits: connections, commit and frame rates (service
//!   identities are counted apart, `gateway::GatewayLimits::service_role`).
//! - [`queue`]: a connection's outgoing frames, bounded in frames and bytes.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`web`]: optional static files (an app such as the demo) and development tokens.
//! - [`client`]: a native client (the engine's replica over a WebSocket) for tests and
//!   tools.

pub mod auth;
pub mod barrier;
pub mod client;
pub mod conns;
pub mod explain;
pub mod follower;
pub mod gateway;
pub mod graphql;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod presence;
pub mod queue;
pub mod region;
pub mod ruletest;
pub mod sequencer;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod web;
