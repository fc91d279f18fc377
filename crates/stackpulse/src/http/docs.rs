//! The API reference, served from the binary.
//!
//! `GET /docs` (and `/docs/`) answers one static HTML page: every HTTP endpoint of
//! `docs/openapi.yaml` and every socket channel of `docs/asyncapi.yaml`, with their
//! bodies, messages, statuses and close codes. `docs/render.mjs` renders it to
//! `docs/dist/index.html`, which is checked in (`scripts/test-specs.sh` fails when it
//! is out of date with the specs) and embedded here at compile time, like the
//! dashboard ([`super::dashboard`]): building the server needs no Node.
//!
//! # Access and headers
//! The page is public, like the dashboard's static files. It is `no-cache` with an
//! `ETag` (a matching `If-None-Match` gets `304`), `nosniff`, `same-origin` referrers,
//! and a content security policy that allows no scripts, nothing from other origins,
//! and exactly one inline style sheet: the page's own `<style>` element, by its
//! SHA-256 (computed here from the embedded bytes, so a re-rendered page needs no
//! code change).

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::dashboard::{serve, Asset};

static PAGE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../../docs/dist/index.html"),
        "text/html; charset=utf-8",
    )
});

/// The page's content security policy (see the module documentation).
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let style = style_hash(PAGE.body)
        .map(|h| format!("'sha256-{h}'"))
        .unwrap_or_else(|| "'none'".to_owned());
    HeaderValue::from_str(&format!(
        "default-src 'self'; script-src 'none'; style-src {style}; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// Base64 of the SHA-256 of the text of the page's first `<style>` element, the
/// source a CSP `'sha256-…'` style source matches.
fn style_hash(page: &[u8]) -> Option<String> {
    let page = std::str::from_utf8(page).ok()?;
    let start = page.find("<style>")? + "<style>".len();
    let len = page[start..].find("</style>")?;
    let digest = Sha256::digest(&page.as_bytes()[start..start + len]);
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The reference's routes: `/docs` and `/docs/`. Generic over the state so it merges
/// into any router.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/docs", get(page))
        .route("/docs/", get(page))
}

async fn page(headers: HeaderMap) -> Response {
    let mut res = serve(&PAGE, &headers, false);
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_style_and_no_script() {
        let csp = CSP.to_str().expect("ascii");
        let hash = style_hash(PAGE.body).expect("the page has a <style>");
        assert!(csp.contains(&format!("style-src 'sha256-{hash}'")), "{csp}");
        assert!(csp.contains("script-src 'none'"), "{csp}");
        let page = std::str::from_utf8(PAGE.body).expect("utf-8");
        assert!(!page.contains("<script"), "the reference has no scripts");
        assert_eq!(page.matches("<style").count(), 1, "one style element");
    }

    #[test]
    fn the_hash_covers_exactly_the_style_text() {
        let digest = Sha256::digest(b"a{b:c}");
        let want = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(
            style_hash(b"<head><style>a{b:c}</style></head>").as_deref(),
            Some(want.as_str())
        );
        assert_eq!(style_hash(b"<p>no style</p>"), None);
    }
}
