//! The hostile suite: one test per finding of the December security review
//! (`reviews/2026-12-security.md`), each written to fail on the code the review
//! read, against the real binary on port 0. Limits that every socket dialect must
//! share are tested over all four endpoints (`/ws`, `/canvas/deploy/track`,
//! AppSync `/graphql/realtime`, `graphql-transport-ws` on `/graphql`).
//!
//! # Layout
//! - [`dialects`]: the four socket endpoints as one table (connect, subscribe,
//!   await an error or a close code), so a limit is asserted on each.
//! - [`driver`]: the connection driver: admission, init deadline, idle, slots.
//! - [`graphql`]: GraphQL cost limits (fragments, aliases, body size).
//! - [`edge`]: the HTTP edge: deployers, Origin/Host, content types, timeouts,
//!   trusted proxies, JWKS, error text, config bounds.
//! - [`topics`]: the hub's topic policy: ACLs, reserved `stack:*`, caps.

#[path = "../cfn_support/mod.rs"]
mod cfn_support;
#[path = "../common/mod.rs"]
mod common;

mod dialects;
mod driver;
mod edge;
mod graphql;
mod topics;
