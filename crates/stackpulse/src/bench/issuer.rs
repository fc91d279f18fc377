//! `stackpulse bench issuer`: the token issuer of the auth scenario.
//!
//! It makes a fresh RSA-2048 key, serves its public half as a JWKS on loopback
//! (`/jwks.json` and `/.well-known/jwks.json`), writes one RS256 id token signed
//! with it to `--token-file`, prints `jwks at http://ADDR/jwks.json` on stdout, and
//! serves until it is stopped. A server started with `--jwt-issuer <issuer>
//! --jwks-url <that URL> --cognito-client-id <client id>` then verifies the token
//! exactly as it verifies a Cognito one: the benchmark pays the real cost.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

/// The key id in the JWKS and in the token's header.
const KID: &str = "stackpulse-bench-1";

#[derive(Debug, Clone, clap::Args)]
pub struct IssuerArgs {
    /// Where to serve the JWKS.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// The token's `iss` (give the server the same `--jwt-issuer`).
    #[arg(long, default_value = "https://issuer.bench.stackpulse.invalid")]
    pub issuer: String,
    /// The token's `aud` (give the server the same `--cognito-client-id`).
    #[arg(long, default_value = "bench")]
    pub client_id: String,
    /// The token's `sub`.
    #[arg(long, default_value = "bench-user")]
    pub subject: String,
    /// Seconds the token is valid.
    #[arg(long, default_value_t = 4 * 3600)]
    pub ttl: u64,
    /// File the token is written to.
    #[arg(long)]
    pub token_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot make an RSA key: {0}")]
    Key(String),
    #[error("cannot write the token to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving the JWKS failed: {0}")]
    Serve(std::io::Error),
}

/// An RSA key with its JWKS and a signer of tokens.
pub struct Issuer {
    key: KeyPair,
    jwks: String,
}

impl Issuer {
    pub fn generate() -> Result<Issuer, IssuerError> {
        let key =
            KeyPair::generate(KeySize::Rsa2048).map_err(|e| IssuerError::Key(e.to_string()))?;
        let public = key.public_key();
        let jwks = json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        }]})
        .to_string();
        Ok(Issuer { key, jwks })
    }

    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An RS256 Cognito-style id token for `args`.
    pub fn token(&self, args: &IssuerArgs) -> Result<String, IssuerError> {
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
        let claims = json!({
            "iss": args.issuer, "sub": args.subject, "aud": args.client_id,
            "token_use": "id", "iat": now, "exp": now + args.ttl,
            "cognito:username": args.subject, "email": format!("{}@bench.invalid", args.subject),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// Runs `stackpulse bench issuer` until SIGINT/SIGTERM.
pub async fn serve(args: IssuerArgs) -> Result<(), IssuerError> {
    let issuer = Issuer::generate()?;
    let token = issuer.token(&args)?;
    std::fs::write(&args.token_file, &token).map_err(|source| IssuerError::Write {
        path: args.token_file.display().to_string(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|source| IssuerError::Listen {
            addr: args.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(IssuerError::Serve)?;
    let jwks = issuer.jwks().to_owned();
    let body = move || {
        let jwks = jwks.clone();
        async move { ([("content-type", "application/json")], jwks) }
    };
    let app = Router::new()
        .route("/jwks.json", get(body.clone()))
        .route("/.well-known/jwks.json", get(body));
    println!("jwks at http://{addr}/jwks.json");
    let _ = std::io::stdout().flush();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::signal::shutdown_signal())
        .await
        .map_err(IssuerError::Serve)
}
