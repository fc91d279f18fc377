//! The moto server of the shared test kit.
#[allow(unused_imports)]
pub use stackpulse_testkit::Moto;
