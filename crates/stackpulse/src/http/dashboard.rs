//! The web dashboard, served from the binary.
//!
//! `GET /` (and `/index.html`) answers the dashboard page; `GET /assets/app.js` and
//! `GET /assets/app.css` its one script bundle and one stylesheet. The three files are
//! embedded at compile time from `web/dist/`, which `scripts/build-web.sh` builds
//! (from `web/` and the TypeScript client in `clients/js/`) and which is checked in:
//! building the server needs no Node, and running it needs no files beside it.
//!
//! # Caching
//! The page is `no-cache`: browsers revalidate it every time, and its `ETag` turns
//! that into a `304`. It references the assets as `/assets/app.js?v=<version>`, where
//! the version is the first 16 hex digits of the asset's SHA-256 (the build writes
//! it; this module computes the same digest from the embedded bytes). A request whose
//! `v` is the current version may be cached for a year (`immutable`); any other (no
//! `v`, or one from an older build) gets `no-cache`, so a new binary never leaves a
//! browser running an old bundle.
//!
//! # Access
//! The files are public, like `/healthz` (DESIGN.md: the dashboard's static files need
//! no token); the data reaches the page over `/ws`, which checks the token the page
//! sends as `?token=`. The page gets a content security policy that allows scripts,
//! styles and connections to this origin only.

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// `cache-control` of an asset requested with its current version.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `cache-control` of the page and of unversioned asset requests.
const REVALIDATE: &str = "no-cache";
/// The page's content security policy: everything from this origin, the inline SVG
/// icon as a `data:` image, WebSocket connections back to this host.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file (also the API reference, [`super::docs`]).
pub(super) struct Asset {
    pub(super) body: &'static [u8],
    content_type: &'static str,
    /// First 16 hex digits of the SHA-256 of `body`.
    version: String,
    /// `"<version>"`, the strong entity tag.
    etag: String,
}

impl Asset {
    pub(super) fn new(body: &'static [u8], content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body);
        let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            etag: format!("\"{version}\""),
            version,
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../../web/dist/index.html"),
        "text/html; charset=utf-8",
    )
});
static APP_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../../web/dist/assets/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static APP_CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../../../web/dist/assets/app.css"),
        "text/css; charset=utf-8",
    )
});

/// The dashboard's routes: `/`, `/index.html`, `/assets/app.js`, `/assets/app.css`.
/// Generic over the state so it merges into any router.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
}

async fn index(headers: HeaderMap) -> Response {
    let mut res = serve(&INDEX, &headers, false);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

async fn app_js(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let current = is_current(&APP_JS, query.as_deref());
    serve(&APP_JS, &headers, current)
}

async fn app_css(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let current = is_current(&APP_CSS, query.as_deref());
    serve(&APP_CSS, &headers, current)
}

/// Whether the query's `v` names the embedded version of `asset`.
fn is_current(asset: &Asset, query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "v" && v == asset.version)
    })
}

/// Whether `If-None-Match` lists the asset's entity tag (or `*`).
fn not_modified(asset: &Asset, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == asset.etag)
}

/// The asset, or `304` when `If-None-Match` names it; `no-cache` unless `immutable`.
pub(super) fn serve(asset: &'static Asset, headers: &HeaderMap, immutable: bool) -> Response {
    let cache = if immutable { IMMUTABLE } else { REVALIDATE };
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    let etag =
        HeaderValue::from_str(&asset.etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    if not_modified(asset, headers) {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    (
        StatusCode::OK,
        common,
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
        ],
        Body::from(asset.body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves only the dashboard routes on a free port; returns its address.
    async fn serve_dashboard() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, routes::<()>()).await.ok();
        });
        addr
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> &str {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or("", |(_, v)| v.as_str())
        }
    }

    /// One HTTP/1.1 request with `Connection: close`; the reply as read off the socket.
    async fn request(addr: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    #[tokio::test]
    async fn the_page_references_the_embedded_asset_versions() {
        let addr = serve_dashboard().await;
        let res = request(addr, "GET", "/", "").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(res.header("cache-control"), "no-cache");
        assert!(res
            .header("content-security-policy")
            .contains("script-src 'self'"));
        let body = String::from_utf8(res.body).expect("utf-8 page");
        assert!(body.contains(&format!("/assets/app.js?v={}", APP_JS.version)));
        assert!(body.contains(&format!("/assets/app.css?v={}", APP_CSS.version)));
        assert!(
            !body.contains("__JS_HASH__"),
            "built page, not the template"
        );

        let same = request(addr, "GET", "/index.html", "").await;
        assert_eq!(same.status, 200);
        assert_eq!(same.body, INDEX.body);
    }

    #[tokio::test]
    async fn assets_have_content_types_and_cache_only_when_versioned() {
        let addr = serve_dashboard().await;
        for (path, asset, ty) in [
            ("app.js", &*APP_JS, "text/javascript; charset=utf-8"),
            ("app.css", &*APP_CSS, "text/css; charset=utf-8"),
        ] {
            let url = format!("/assets/{path}?v={}", asset.version);
            let res = request(addr, "GET", &url, "").await;
            assert_eq!(res.status, 200);
            assert_eq!(res.header("content-type"), ty);
            assert_eq!(res.header("cache-control"), IMMUTABLE);
            assert_eq!(res.header("etag"), asset.etag);
            assert_eq!(res.header("x-content-type-options"), "nosniff");
            assert_eq!(res.body, asset.body);

            for stale in [
                format!("/assets/{path}"),
                format!("/assets/{path}?v=0123456789abcdef"),
            ] {
                let res = request(addr, "GET", &stale, "").await;
                assert_eq!(res.status, 200);
                assert_eq!(res.header("cache-control"), REVALIDATE, "{stale}");
            }
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_answered_with_304() {
        let addr = serve_dashboard().await;
        let cond = format!("If-None-Match: W/\"x\", {}\r\n", INDEX.etag);
        let res = request(addr, "GET", "/", &cond).await;
        assert_eq!(res.status, 304);
        assert_eq!(res.header("etag"), INDEX.etag);
        assert!(res.body.is_empty());

        let res = request(
            addr,
            "GET",
            "/assets/app.css",
            "If-None-Match: \"other\"\r\n",
        )
        .await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, APP_CSS.body);
    }

    #[tokio::test]
    async fn head_and_unknown_assets() {
        let addr = serve_dashboard().await;
        let res = request(addr, "HEAD", "/assets/app.js", "").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("content-type"), "text/javascript; charset=utf-8");
        assert!(res.body.is_empty());
        let res = request(addr, "GET", "/assets/other.js", "").await;
        assert_eq!(res.status, 404);
    }
}
