//! The expiry rule the verifier and the server's connection timer share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use stackpulse_auth::{AuthConfig, AuthError, FetchError, KeyFetcher, Verifier};

struct Fixture;

#[async_trait]
impl KeyFetcher for Fixture {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        Ok(include_bytes!("fixtures/jwks.json").to_vec())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(exp: u64) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("kid-a".into());
    let claims =
        json!({"iss":"https://issuer.test","sub":"u","aud":"client-a","token_use":"id","exp":exp});
    let key = EncodingKey::from_rsa_pem(include_bytes!("fixtures/key-a.pem")).expect("key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn verifier(leeway: u64) -> Verifier {
    let mut config = AuthConfig::new("https://issuer.test", "unused", vec!["client-a".into()]);
    config.leeway = Duration::from_secs(leeway);
    Verifier::new(config, Arc::new(Fixture))
}

#[tokio::test]
async fn a_token_is_refused_from_exp_plus_leeway_on() {
    let t = now();
    let strict = verifier(0);
    assert_eq!(
        strict.verify(&token(t)).await,
        Err(AuthError::Expired),
        "exp == now is expired"
    );
    let v = strict.verify(&token(t + 60)).await.expect("valid");
    assert_eq!(v.expires_at, t + 60);
    let lenient = verifier(30);
    let v = lenient
        .verify(&token(t - 10))
        .await
        .expect("inside the leeway");
    assert_eq!(
        v.expires_at,
        t + 20,
        "the connection must refresh by exp + leeway"
    );
    assert_eq!(
        lenient.verify(&token(t - 31)).await,
        Err(AuthError::Expired)
    );
}
