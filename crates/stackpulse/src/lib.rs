//! stackpulse: live cloud deployments over WebSocket and GraphQL.
//!
//! A source publishes typed events; the hub stamps them (topic, seq, epoch,
//! timestamp), stores them and fans them out; delivery adapters only encode and
//! write. See `DESIGN.md` beside the repository for the contract.
//!
//! # Layout
//! - [`app`]: the shared state, its assembly and the router of every path.
//! - [`hub`]: topics, seqs, history, snapshots, subscriptions, fan-out, behind a
//!   [`hub::Backplane`] (in-memory now; Redis fits the same seam).
//! - [`ws`]: the `/ws` endpoint: admission, connection loops, registry, close codes.
//! - [`http`]: the publish API, deployments, health/readiness/metrics, the
//!   dashboard, the HTTP edge layer and [`http::error::AppError`].
//! - [`graphql`]: the GraphQL schema over the hub, `POST /graphql`, and its
//!   subscriptions over AppSync's real-time protocol and `graphql-transport-ws`.
//! - [`tls`]: `--tls-cert`/`--tls-key`: HTTPS and WSS on the same port.
//! - [`tracking`]: one CloudFormation poller per `stack:*` topic, publishing into
//!   the hub; started and stopped by the hub's topic interest.
//! - [`topic_policy`]: the server's topic rules (names, readers, writers), which
//!   the hub applies on every path.
//! - [`deployments`]: `POST /v1/deployments`: several stacks followed as one
//!   deployment topic (`deployment.status` per finished layer).
//! - [`canvas`]: the seed-000 endpoints `/canvas/deploy/track/{stack}` (socket) and
//!   `POST /canvas/deploy`.
//! - [`watch`]: `stackpulse watch`'s terminal view of one stack.
//! - [`doctor`]: `stackpulse doctor`, a verdict per thing `serve` needs.
//! - [`demo`]: `serve --demo`: a scripted CloudFormation endpoint in-process and
//!   a driver playing a multi-stack rollout on it, in a loop.
//! - [`auth`]: users and publisher keys.
//! - [`config`]: flags, environment and TOML file → [`config::Config`].
//! - [`server`]: [`server::serve`]: run until shutdown, then drain.
//! - [`serverless`]: `stackpulse lambda` / `lambda-local`: the `/ws` protocol as
//!   API Gateway WebSocket routes on Lambda, state in DynamoDB.
//! - [`client`]: a Rust client of the `/ws` protocol (CLI and tests).
//! - [`cli`]: the `stackpulse` command line.
//! - [`signal`]: SIGINT/SIGTERM as the shutdown future.
//! - [`bench`]: `stackpulse bench`, the load generator (stackpulse or nchan).
//! - [`metrics`]: the Prometheus recorder.
//! - [`log_limit`]: the AWS SDK's warnings, one line per cause per minute.
//! - [`sns`]: SNS messages verified (signature, certificate URL, topic): the
//!   credential of `POST /v1/ingest/sns`.
//! - [`net`]: addresses, CIDRs, hosts and origins (pure parsing, used by the
//!   configuration and the HTTP edge).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bench;
pub mod canvas;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod deployments;
pub mod doctor;
pub mod graphql;
pub mod http;
pub mod hub;
pub mod log_limit;
pub mod metrics;
pub mod net;
pub mod server;
pub mod serverless;
pub mod signal;
pub mod sns;
pub mod tls;
pub mod topic_policy;
pub mod tracking;
pub mod watch;
pub mod ws;
