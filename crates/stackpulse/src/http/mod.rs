//! The HTTP endpoints and the layers in front of them: the publish API, multi-stack
//! deployments, the operational endpoints and the dashboard. Errors leave as
//! `{"message": …}` JSON with a status, through [`error::AppError`]. The routes are
//! mapped in [`crate::app::router`].
//!
//! # Layout
//! - [`publish`]: the publish API.
//! - [`ingest`]: `POST /v1/ingest/eventbridge`, pushes that wake a stack's poller.
//! - [`ingest_sns`]: `POST /v1/ingest/sns`, signed SNS notifications that wake a
//!   stack's poller.
//! - [`deployments`]: `POST /v1/deployments`, several stacks as one topic.
//! - [`ops`]: health, readiness, metrics and topic inspection.
//! - [`dashboard`]: the web dashboard's page and assets, embedded in the binary.
//! - [`docs`]: the API reference page at `/docs`, embedded in the binary.
//! - [`edge`]: the checks in front of every route (loopback Host/Origin, JSON
//!   content type, the client address behind trusted proxies).
//! - [`error`]: [`error::AppError`], the JSON error response.

pub mod dashboard;
pub mod deployments;
pub mod docs;
pub mod edge;
pub mod error;
pub mod ingest;
pub mod ingest_sns;
pub mod ops;
pub mod publish;
