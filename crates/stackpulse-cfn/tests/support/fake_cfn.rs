//! The scripted fake endpoint of the shared test kit.
pub use stackpulse_testkit::fake_cfn::*;
