//! Test support shared by stackpulse's crates (dev-dependency only).
//!
//! - [`moto`]: a moto server (real AWS wire formats: CloudFormation, Cognito with
//!   its JWKS, …) on a free loopback port for the duration of one test, installed
//!   on first use by `scripts/ensure-moto.sh`.
//! - [`redis`]: a persistent `redis-server` on a free port that can be stopped
//!   and resumed (installed if missing by `scripts/ensure-redis.sh`).
#![forbid(unsafe_code)]

pub mod moto;
pub mod redis;

pub use moto::Moto;
pub use redis::RedisServer;
