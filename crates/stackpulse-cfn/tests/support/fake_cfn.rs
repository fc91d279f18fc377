//! The scripted fake endpoint of the shared test kit.
#[allow(unused_imports)]
pub use stackpulse_testkit::fake_cfn::*;
