//! Who may connect and what they may see: Cognito / OIDC JWT verification and
//! topic authorization, with no web framework and no HTTP client inside, so the
//! server and a serverless adapter can share it.
//!
//! A token flows: [`Verifier::verify`] checks its size and header (RS256 only, a
//! `kid`), takes the key from the [`KeyStore`] (which fetches the issuer's JWKS
//! through a [`KeyFetcher`] the caller supplies, caches it, and refetches on an
//! unknown `kid` at most once per interval), checks the signature, `iss`, `exp`,
//! `nbf` and the Cognito `token_use` rules, and returns a [`Verified`] user.
//! [`Policy::may_subscribe`] then decides, from a topic's [`Acl`], whether that
//! user may see the topic.
//!
//! # Layout
//! - [`config`]: issuer, JWKS URL, client ids, leeway; Cognito derivation.
//! - [`keys`]: the JWKS cache and its refresh rules.
//! - [`verify`]: the verifier and its [`AuthError`]s.
//! - [`policy`]: topic ACLs, the admin group and the default policy.
//! - [`user`]: the [`User`] a token becomes.
#![forbid(unsafe_code)]

pub mod config;
pub mod keys;
pub mod policy;
pub mod user;
pub mod verify;

pub use config::AuthConfig;
pub use keys::{FetchError, KeyFetcher, KeyStore};
pub use policy::{DefaultPolicy, Policy};
pub use stackpulse_protocol::Acl;
pub use user::User;
pub use verify::{AuthError, Verified, Verifier, MAX_TOKEN_BYTES};
