//! Tokens for auth tests: RS256 JWTs signed with the fixture keys of
//! `crates/stackpulse-auth/tests/fixtures`, and a JWKS endpoint that serves (and
//! can rotate) their public halves and counts its fetches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://issuer.stackpulse.test";
pub const CLIENT: &str = "client-a";

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../stackpulse-auth/tests/fixtures"
);

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

pub fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// Claims of a valid Cognito id token for `sub` in `groups`, valid for an hour.
pub fn id_claims(sub: &str, groups: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "sub": sub, "aud": CLIENT, "token_use": "id",
        "exp": now() + 3600, "iat": now(), "cognito:username": sub,
        "email": format!("{sub}@example.test"), "cognito:groups": groups,
    })
}

/// Claims of a valid Cognito access token.
pub fn access_claims(sub: &str, groups: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "sub": sub, "client_id": CLIENT, "token_use": "access",
        "exp": now() + 3600, "iat": now(), "username": sub, "cognito:groups": groups,
    })
}

/// Signs `claims` with fixture key `key` ("key-a"…) under header kid `kid`.
pub fn sign_with(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let pem = fixture(&format!("{key}.pem"));
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// A valid RS256 token signed by key-a (kid-a).
pub fn sign(claims: &Value) -> String {
    sign_with(Algorithm::RS256, "key-a", Some("kid-a"), claims)
}

pub fn b64(bytes: &[u8]) -> String {
    use base64_lite::encode_url;
    encode_url(bytes)
}

/// Minimal base64url without padding (tests only).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode_url(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// A JWKS endpoint on a free loopback port.
pub struct Jwks {
    pub url: String,
    pub body: Arc<Mutex<Vec<u8>>>,
    pub fetches: Arc<AtomicUsize>,
}

impl Jwks {
    pub async fn serve(file: &str) -> Jwks {
        let body = Arc::new(Mutex::new(fixture(file)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                let (b, f) = (b.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().clone();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Jwks {
            url: format!("http://{addr}/jwks.json"),
            body,
            fetches,
        }
    }

    pub fn rotate_to(&self, file: &str) {
        *self.body.lock() = fixture(file);
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Starts `stackpulse serve` (with the test publisher key) verifying tokens of
/// [`ISSUER`] for [`CLIENT`] against `jwks`, with no leeway, plus `extra` flags.
pub async fn server_with(jwks: &Jwks, extra: &[&str]) -> super::Server {
    server_as(super::Mode::from_env(), jwks, extra).await
}

/// [`server_with`], as the server of `mode` whatever `STACKPULSE_TEST_SERVER` says.
pub async fn server_as(mode: super::Mode, jwks: &Jwks, extra: &[&str]) -> super::Server {
    let mut args = vec![
        "--publisher-key",
        super::KEY,
        "--jwt-issuer",
        ISSUER,
        "--jwks-url",
        &jwks.url,
        "--cognito-client-id",
        CLIENT,
        "--jwt-leeway",
        "0",
    ];
    args.extend_from_slice(extra);
    super::Server::spawn_as(mode, &args, &[]).await
}
