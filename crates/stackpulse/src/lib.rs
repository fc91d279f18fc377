//! stackpulse: live cloud deployments over WebSocket.
//!
//! # Layout
//! - [`hub`]: topics, seqs, history, snapshots, subscriptions, fan-out, behind a
//!   [`hub::Backplane`] (in-memory now; Redis fits the same seam).
#![forbid(unsafe_code)]

pub mod hub;
