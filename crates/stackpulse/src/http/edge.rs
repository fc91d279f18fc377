//! The checks every request passes before its route: one layer for all routes
//! and every socket dialect, so no handler can forget them.
//!
//! [`guard`] (on the whole router):
//! - without auth (loopback mode), a `Host` that is not a loopback name or address
//!   (DNS rebinding), and a WebSocket upgrade or POST whose `Origin` is neither
//!   loopback nor in `--allowed-origin` (cross-site WebSocket hijacking, CSRF),
//!   get 403;
//! - behind a `--trusted-proxy`, the request's `ConnectInfo` becomes the client's
//!   address from `X-Forwarded-For` ([`client_ip`]), so per-IP admission and logs
//!   see the client, not the load balancer.
//!
//! [`json_only`] (on each JSON POST route): a POST body must be declared
//! `application/json` (415 otherwise), so a browser's CORS "simple request"
//! (`text/plain`, forms) never reaches a handler.
//! `POST /v1/ingest/sns` has no such layer: SNS posts its JSON as `text/plain`,
//! and the route's credential is the SNS signature, which no browser can forge.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use crate::app::AppState;
use crate::net::{canonical, normalize_origin, Cidr};

/// The client of a request from `peer`: when `peer` is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries
/// further left were written by the client and can be forged). Anything that does
/// not parse stops the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = canonical(peer);
    if !is_trusted(client) {
        return client;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// Whether a host (no port, IPv6 without brackets) names this machine.
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| canonical(ip).is_loopback())
}

/// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) is loopback.
pub fn is_loopback_host(value: &str) -> bool {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, port)) if port.is_empty() || port.starts_with(':') => h,
            _ => return false,
        }
    } else {
        match value.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => value,
        }
    };
    is_loopback_name(host)
}

/// Whether a browser `Origin` is loopback or one of `allowed`.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = normalize_origin(origin);
    if allowed.contains(&origin) {
        return true;
    }
    match origin.split_once("://") {
        Some(("http" | "https", authority)) => is_loopback_host(authority),
        _ => false,
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Why a request is refused in loopback mode, if it is.
fn loopback_refusal(method: &Method, headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or_default();
        if !is_loopback_host(host) {
            return Some(format!(
                "Forbidden: Host {host:?} is not a loopback name; without auth stackpulse answers only requests to localhost, 127.0.0.1 or [::1]"
            ));
        }
    }
    if *method == Method::POST || is_websocket_upgrade(headers) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !origin_allowed(origin, allowed) {
                return Some(format!(
                    "Forbidden: Origin {origin:?} is not allowed (without auth only loopback pages and --allowed-origin may use this server)"
                ));
            }
        }
    }
    None
}

/// The layer on every route (see the module docs).
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let edge = &state.config.edge;
    if !state.gate.is_enabled() {
        if let Some(message) = loopback_refusal(req.method(), req.headers(), &edge.allowed_origins)
        {
            return AppError::new(StatusCode::FORBIDDEN, message).into_response();
        }
    }
    if !edge.trusted_proxies.is_empty() {
        if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
        {
            let client = client_ip(peer.ip(), req.headers(), &edge.trusted_proxies);
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    next.run(req).await
}

/// Whether a `Content-Type` value declares JSON (`application/json`, with
/// parameters, or `application/*+json`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// The layer on each JSON POST route (see the module docs).
pub async fn json_only(req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let declared = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !declared {
            return AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type: send the body as JSON with Content-Type: application/json",
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().expect("v4");
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped");
        let one: Cidr = "192.0.2.1".parse().expect("host");
        assert!(one.contains(ip("192.0.2.1")) && !one.contains(ip("192.0.2.2")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn client_is_the_right_most_untrusted_hop() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let lb = ip("10.0.0.5");
        // Direct clients: the header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.1"), &xff(&["1.1.1.1"]), &trusted),
            ip("203.0.113.1")
        );
        // Behind the proxy: the right-most untrusted entry; forged left entries lose.
        assert_eq!(
            client_ip(lb, &xff(&["6.6.6.6, 203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(lb, &xff(&["203.0.113.7, 10.0.0.9"]), &trusted),
            ip("203.0.113.7"),
            "a second trusted hop is skipped"
        );
        assert_eq!(
            client_ip(lb, &xff(&["6.6.6.6", "203.0.113.8"]), &trusted),
            ip("203.0.113.8")
        );
        assert_eq!(
            client_ip(lb, &xff(&["203.0.113.9:4711"]), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(lb, &xff(&["[2001:db8::1]:80"]), &trusted),
            ip("2001:db8::1")
        );
        // Nothing usable: the proxy itself.
        assert_eq!(client_ip(lb, &xff(&[]), &trusted), lb);
        assert_eq!(client_ip(lb, &xff(&["garbage"]), &trusted), lb);
        assert_eq!(client_ip(lb, &xff(&["1.2.3.4, garbage"]), &trusted), lb);
        // All hops trusted: the left-most.
        assert_eq!(
            client_ip(lb, &xff(&["10.9.9.9, 10.0.0.1"]), &trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn loopback_hosts_and_origins() {
        for h in [
            "localhost",
            "localhost:8000",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8000",
            "127.8.9.1:80",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "[::1]x",
            "10.0.0.1",
            "",
            "0.0.0.0:80",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let allowed = vec![normalize_origin("https://Dash.example/")];
        assert!(origin_allowed("http://localhost:5173", &allowed));
        assert!(origin_allowed("http://[::1]:8000", &allowed));
        assert!(origin_allowed("https://dash.example", &allowed));
        assert!(!origin_allowed("https://evil.example", &allowed));
        assert!(!origin_allowed("null", &allowed));
        assert!(!origin_allowed("file://", &allowed));
        assert!(!origin_allowed("http://localhost.evil.example", &allowed));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/graphql-response+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("multipart/form-data; boundary=x"));
        assert!(!is_json(""));
    }
}
