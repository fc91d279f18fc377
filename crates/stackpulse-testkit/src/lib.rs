//! Test support shared by stackpulse's crates (dev-dependency only).
//!
//! - [`moto`]: a moto server (real AWS wire formats: CloudFormation, Cognito with
//!   its JWKS, …) on a free loopback port for the duration of one test, installed
//!   on first use by `scripts/ensure-moto.sh`.
//! - [`fake_cfn`]: the scripted CloudFormation endpoint for what moto cannot show
//!   over time (slow stacks, paging, nested stacks, throttling, resets); it lives
//!   in `stackpulse_cfn::scripted` because `serve --demo` plays it too.
//! - [`redis`]: a persistent `redis-server` on a free port that can be stopped
//!   and resumed (installed if missing by `scripts/ensure-redis.sh`).
//! - [`sns_keys`]: an RSA key and self-signed certificate to sign SNS messages.
#![forbid(unsafe_code)]

/// The scripted CloudFormation endpoint (one copy, in `stackpulse-cfn`).
pub mod fake_cfn {
    pub use stackpulse_cfn::scripted::*;
}
pub mod moto;
pub mod redis;
pub mod sns_keys;

pub use moto::Moto;
pub use redis::RedisServer;
