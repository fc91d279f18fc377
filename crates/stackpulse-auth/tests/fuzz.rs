//! Property test: no token, however malformed, makes the verifier panic, and none
//! that was not signed by a published key is accepted.

use std::sync::Arc;

use async_trait::async_trait;
use proptest::prelude::*;
use stackpulse_auth::{AuthConfig, FetchError, KeyFetcher, Verifier};

struct Fixture;

#[async_trait]
impl KeyFetcher for Fixture {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        Ok(include_bytes!("fixtures/jwks.json").to_vec())
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"RS256","kid":"kid-a"}"#.to_string()),
        Just(r#"{"alg":"none"}"#.to_string()),
        Just(r#"{"alg":"HS256","kid":"kid-a"}"#.to_string()),
        Just(r#"{"alg":"RS256"}"#.to_string()),
        "\\PC{0,40}",
    ]
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.=-]{0,200}",
        (
            header(),
            "\\PC{0,200}",
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(h, p, s)| format!(
                "{}.{}.{}",
                b64(h.as_bytes()),
                b64(p.as_bytes()),
                b64(&s)
            )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn verifier_never_panics_nor_accepts_forgeries(t in token()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config = AuthConfig::new("https://issuer.test", "unused", vec!["client-a".into()]);
        let verifier = Verifier::new(config, Arc::new(Fixture));
        let result = rt.block_on(verifier.verify(&t));
        prop_assert!(result.is_err(), "accepted a forged token: {t}");
    }
}
