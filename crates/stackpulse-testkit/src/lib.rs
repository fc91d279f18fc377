//! Test support shared by stackpulse's crates (dev-dependency only).
//!
//! - [`moto`]: a moto server (real AWS wire formats: CloudFormation, Cognito with
//!   its JWKS, …) on a free loopback port for the duration of one test, installed
//!   on first use by `scripts/ensure-moto.sh`.
#![forbid(unsafe_code)]

pub mod moto;

pub use moto::Moto;
