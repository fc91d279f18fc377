//! The seed-000 endpoints, kept for the frontends built against them.
//!
//! - `GET /canvas/deploy/track/{stack_name}?region=` ([`track`]): a WebSocket that
//!   streams one stack's operation as `resource_update`, `deployment_complete` and
//!   `error` messages. It is a delivery adapter like `/ws`: it subscribes a hub
//!   session to the stack's topic (starting or joining the one poller of
//!   [`crate::tracking`]) and translates the topic's events back into the tracker's
//!   wire messages.
//! - `POST /canvas/deploy` ([`deploy`]): creates a stack from a template.
//!
//! # Layout
//! - [`track`]: the tracking socket.
//! - [`deploy`]: stack creation.

pub mod deploy;
pub mod track;
