//! Every refusal of [`Verifier::verify`] and what an accepted token becomes, checked
//! in the crate itself (the server's `tests/auth.rs` checks the same rules end to end,
//! through the binary and the `/ws` handshake).
//!
//! Tokens are signed with the fixture keys (`fixtures/README.md`): key-a is published
//! in `jwks.json` as `kid-a`; key-c is not published there, so a token it signs is a
//! forgery whatever `kid` it names.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stackpulse_auth::{AuthConfig, AuthError, FetchError, KeyFetcher, Verifier, MAX_TOKEN_BYTES};

const ISSUER: &str = "https://issuer.test";
const CLIENT: &str = "client-a";

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

fn verifier() -> Verifier {
    let mut config = AuthConfig::new(ISSUER, "unused", vec![CLIENT.into(), "client-b".into()]);
    config.leeway = Duration::from_secs(5);
    Verifier::new(config, Arc::new(Fixture))
}

/// A valid id token's claims; tests change or remove fields.
fn id_claims() -> Value {
    json!({"iss": ISSUER, "sub": "user-1", "aud": CLIENT, "token_use": "id", "exp": now() + 600})
}

fn sign_with(pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(pem).expect("fixture key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Signed by key-a, which the JWKS publishes as `kid-a`.
fn signed(claims: &Value) -> String {
    sign_with(include_bytes!("fixtures/key-a.pem"), Some("kid-a"), claims)
}

/// URL-safe base64 without padding, enough for hand-made headers.
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

/// A token with a hand-made header and payload and a junk signature.
fn unsigned(header: &str, payload: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(b"not a signature")
    )
}

#[tokio::test]
async fn structural_refusals_come_before_any_key_lookup() {
    let v = verifier();
    assert_eq!(v.verify("").await, Err(AuthError::Missing));
    assert_eq!(v.verify("  \t ").await, Err(AuthError::Missing));
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(v.verify(&huge).await, Err(AuthError::TooLarge));
    assert!(matches!(
        v.verify("only.two").await,
        Err(AuthError::Malformed(m)) if m.contains("three")
    ));
    assert!(matches!(
        v.verify("!!!.???.###").await,
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        v.verify(&unsigned(r#"{"alg":"HS256","kid":"kid-a"}"#, &id_claims())).await,
        Err(AuthError::Algorithm(a)) if a == "HS256"
    ));
    assert_eq!(
        v.verify(&unsigned(r#"{"alg":"RS256"}"#, &id_claims()))
            .await,
        Err(AuthError::MissingKid)
    );
    assert!(
        v.keys().is_empty(),
        "none of these made the verifier fetch the JWKS"
    );
}

#[tokio::test]
async fn an_unknown_kid_is_refused_and_reported_truncated() {
    let v = verifier();
    let long_kid = "k".repeat(500);
    let token = sign_with(
        include_bytes!("fixtures/key-a.pem"),
        Some(&long_kid),
        &id_claims(),
    );
    assert_eq!(
        v.verify(&token).await,
        Err(AuthError::UnknownKid("k".repeat(64))),
        "the kid in the error (a log line) is cut to 64 characters"
    );
    assert_eq!(v.keys().len(), 2, "the lookup fetched the published keys");
}

#[tokio::test]
async fn a_token_signed_by_an_unpublished_key_is_a_bad_signature() {
    let forged = sign_with(
        include_bytes!("fixtures/key-c.pem"),
        Some("kid-a"),
        &id_claims(),
    );
    assert_eq!(verifier().verify(&forged).await, Err(AuthError::Signature));
    // The real key's token with its signature swapped for the forgery's.
    let real = signed(&id_claims());
    let (body, _) = real.rsplit_once('.').expect("three parts");
    let (_, forged_sig) = forged.rsplit_once('.').expect("three parts");
    assert_eq!(
        verifier().verify(&format!("{body}.{forged_sig}")).await,
        Err(AuthError::Signature)
    );
}

#[tokio::test]
async fn time_and_issuer_claims_are_enforced() {
    let v = verifier();
    let mut c = id_claims();
    c["exp"] = json!(now() - 3600);
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Expired));
    let mut c = id_claims();
    c["nbf"] = json!(now() + 3600);
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::NotYetValid));
    let mut c = id_claims();
    c["iss"] = json!("https://someone-else.test");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Issuer));
    let mut c = id_claims();
    c.as_object_mut().expect("object").remove("iss");
    assert_eq!(
        v.verify(&signed(&c)).await,
        Err(AuthError::Claims("missing iss".into()))
    );
    // `exp` is a field of the claims the verifier reads, so its absence is found
    // when the payload is parsed, before jsonwebtoken's required-claims check.
    let mut c = id_claims();
    c.as_object_mut().expect("object").remove("exp");
    let got = v.verify(&signed(&c)).await;
    assert!(
        matches!(&got, Err(AuthError::Malformed(m)) if m.contains("exp")),
        "{got:?}"
    );
    let mut c = id_claims();
    c["exp"] = json!("tomorrow");
    assert!(
        matches!(
            v.verify(&signed(&c)).await,
            Err(AuthError::Malformed(_) | AuthError::Claims(_))
        ),
        "a non-numeric exp is refused"
    );
}

#[tokio::test]
async fn audience_rules_follow_token_use() {
    let v = verifier();
    // id token: `aud`, a string or a list, must name an allowed client.
    assert!(v.verify(&signed(&id_claims())).await.is_ok());
    let mut c = id_claims();
    c["aud"] = json!(["other", "client-b"]);
    assert!(v.verify(&signed(&c)).await.is_ok(), "any allowed in a list");
    c["aud"] = json!(["other", "another"]);
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Audience));
    c.as_object_mut().expect("object").remove("aud");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Audience));

    // access token: `client_id`, not `aud`.
    let access = json!({"iss": ISSUER, "sub": "user-1", "token_use": "access",
                        "client_id": CLIENT, "exp": now() + 600});
    assert!(v.verify(&signed(&access)).await.is_ok());
    let mut c = access.clone();
    c["client_id"] = json!("other");
    c["aud"] = json!(CLIENT);
    assert_eq!(
        v.verify(&signed(&c)).await,
        Err(AuthError::Audience),
        "an access token's aud does not stand in for client_id"
    );
    c.as_object_mut().expect("object").remove("client_id");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Audience));

    // A generic OIDC token (no token_use) is checked like an id token.
    let mut c = id_claims();
    c.as_object_mut().expect("object").remove("token_use");
    assert!(v.verify(&signed(&c)).await.is_ok());
    c["aud"] = json!("other");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Audience));

    // Any other token_use (e.g. a refresh token) is refused, named in the error.
    let mut c = id_claims();
    c["token_use"] = json!("refresh");
    assert_eq!(
        v.verify(&signed(&c)).await,
        Err(AuthError::TokenUse("refresh".into()))
    );
    c["token_use"] = json!("x".repeat(100));
    assert_eq!(
        v.verify(&signed(&c)).await,
        Err(AuthError::TokenUse("x".repeat(32))),
        "cut to 32 characters"
    );
}

#[tokio::test]
async fn a_token_needs_a_non_empty_subject() {
    let v = verifier();
    let mut c = id_claims();
    c["sub"] = json!("");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Subject));
    c.as_object_mut().expect("object").remove("sub");
    assert_eq!(v.verify(&signed(&c)).await, Err(AuthError::Subject));
}

#[tokio::test]
async fn the_user_takes_the_first_username_claim_and_all_groups() {
    let v = verifier();
    let mut c = id_claims();
    c["cognito:username"] = json!("cognito-name");
    c["username"] = json!("plain-name");
    c["preferred_username"] = json!("preferred");
    c["email"] = json!("a@example.test");
    c["cognito:groups"] = json!(["admins"]);
    c["groups"] = json!(["ops", "dev"]);
    let token = format!("  {}  ", signed(&c));
    let ok = v
        .verify(&token)
        .await
        .expect("surrounding blanks are trimmed");
    assert_eq!(ok.user.sub, "user-1");
    assert_eq!(ok.user.username, "cognito-name");
    assert_eq!(ok.user.email.as_deref(), Some("a@example.test"));
    assert_eq!(ok.user.groups, ["admins", "ops", "dev"]);
    assert_eq!(ok.expires_at, c["exp"].as_u64().expect("exp") + 5);

    let obj = c.as_object_mut().expect("object");
    obj.remove("cognito:username");
    let ok = v.verify(&signed(&c)).await.expect("valid");
    assert_eq!(ok.user.username, "plain-name");
    c.as_object_mut().expect("object").remove("username");
    let ok = v.verify(&signed(&c)).await.expect("valid");
    assert_eq!(ok.user.username, "preferred");
    let obj = c.as_object_mut().expect("object");
    obj.remove("preferred_username");
    obj.remove("email");
    obj.remove("groups");
    obj.remove("cognito:groups");
    let ok = v.verify(&signed(&c)).await.expect("valid");
    assert_eq!(ok.user.username, "user-1", "the subject when nothing else");
    assert_eq!(ok.user.email, None);
    assert!(ok.user.groups.is_empty());
}

#[test]
fn every_error_has_its_own_metric_label_and_a_log_text() {
    let all = [
        AuthError::Missing,
        AuthError::TooLarge,
        AuthError::Malformed("m".into()),
        AuthError::Algorithm("HS256".into()),
        AuthError::MissingKid,
        AuthError::UnknownKid("k".into()),
        AuthError::Signature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::Issuer,
        AuthError::Audience,
        AuthError::TokenUse("refresh".into()),
        AuthError::Subject,
        AuthError::Claims("c".into()),
    ];
    let labels: std::collections::HashSet<_> = all.iter().map(AuthError::label).collect();
    assert_eq!(labels.len(), all.len(), "labels are distinct");
    assert!(labels
        .iter()
        .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    assert_eq!(
        AuthError::TooLarge.to_string(),
        format!("token larger than {MAX_TOKEN_BYTES} bytes")
    );
    assert_eq!(
        AuthError::Algorithm("HS256".into()).to_string(),
        "algorithm HS256 is not accepted (RS256 only)"
    );
}

#[test]
fn the_verifier_keeps_its_configuration() {
    let v = verifier();
    assert_eq!(v.config().issuer, ISSUER);
    assert_eq!(v.config().client_ids, [CLIENT, "client-b"]);
    assert_eq!(v.config().leeway, Duration::from_secs(5));
}
