//! The stackpulse monitoring protocol: every message that crosses the `/ws` socket
//! and the publish API, as serde types, shared by the server, the Rust client and
//! the tests.
//!
//! # Layout
//! - [`client`]: what a client sends (`subscribe`, `unsubscribe`, `ping`), and the
//!   parser that turns a text frame into a [`ClientMessage`] or a [`ProtocolError`]
//!   carrying the exact error text the contract promises.
//! - [`server`]: what the server sends back: control replies ([`ServerMessage`]) and
//!   events ([`Event`]), plus [`Incoming`], the client-side decoder of either.
//! - [`publish`]: the body of `POST /v1/events` and its validation.
//! - [`time`]: the one timestamp format (RFC 3339, UTC, milliseconds, `Z`).
//!
//! This crate has no runtime: no sockets, no async, so a serverless adapter can
//! reuse it unchanged.
#![forbid(unsafe_code)]

pub mod client;
pub mod publish;
pub mod server;
pub mod time;

pub use client::{parse_client_message, ClientMessage, ProtocolError};
pub use publish::{Acl, PublishRequest};
pub use server::{Event, Incoming, ServerMessage};

/// The longest topic id accepted, in bytes. Deployment ids and stack names are far
/// shorter; the bound keeps one client from making the server store huge keys.
pub const MAX_TOPIC_LEN: usize = 256;
