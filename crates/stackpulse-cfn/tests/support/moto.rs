//! The moto server of the shared test kit.
pub use stackpulse_testkit::Moto;
