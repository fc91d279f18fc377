//! Operational endpoints: `/healthz` (the process answers), `/readyz` (the
//! backplane answers and we are not shutting down), `/metrics` (Prometheus text)
//! and `GET /v1/topics/{id}` (a topic's position, snapshot and local subscribers).

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::AppError;
use crate::app::AppState;
use crate::hub::Reader;

/// `{"status": "ok"}`, plus `"demo": true` on a `serve --demo` server (the
/// dashboard offers the demo stacks then).
pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.config.demo {
        return Json(json!({ "status": "ok", "demo": true })).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": "shutting down" })),
        )
            .into_response();
    }
    match state.hub.backplane().ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": e.to_string() })),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = crate::metrics::install() else {
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
        .into_response();
    };
    crate::metrics::publish_delivered();
    metrics::gauge!("stackpulse_connections").set(state.registry.len() as f64);
    metrics::gauge!("stackpulse_subscriptions").set(state.hub.subscription_count() as f64);
    metrics::gauge!("stackpulse_topics").set(state.hub.backplane().topic_count() as f64);
    if let Ok(Some((nodes, connections))) = state.hub.backplane().cluster_presence().await {
        metrics::gauge!("stackpulse_cluster_nodes").set(nodes as f64);
        metrics::gauge!("stackpulse_cluster_connections").set(connections as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub async fn topic(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let token = crate::auth::gate::request_token(&headers, query.as_deref());
    let user = match state.gate.authenticate(token.as_deref()).await {
        Ok(v) => v.user,
        Err(u) => return AppError::new(StatusCode::UNAUTHORIZED, u.message()).into_response(),
    };
    let info = state.hub.backplane().info(&id).await;
    let acl = match &info {
        Ok(Some(info)) => info.acl.as_ref(),
        _ => None,
    };
    // Checked before existence, so a refused user cannot tell whether it exists.
    if !state.hub.may_read(&Reader::User(user), &id, acl) {
        return AppError::new(StatusCode::FORBIDDEN, format!("Forbidden: {id}")).into_response();
    }
    let local = state.hub.local_subscribers(&id);
    let subscribers = match state.hub.backplane().topic_presence(&id).await {
        Ok(Some(n)) => n.max(local),
        _ => local,
    };
    // A topic nobody published to stores nothing, but while it has subscribers it
    // is shown as it reads to them: seq 0 in the unborn epoch.
    let info = match info {
        Ok(None) if subscribers > 0 => Ok(Some(crate::hub::TopicInfo {
            epoch: std::sync::Arc::from(crate::hub::UNBORN_EPOCH),
            latest_seq: 0,
            retained: 0,
            snapshot: None,
            snapshot_type: "deployment.snapshot",
            acl: None,
        })),
        other => other,
    };
    match info {
        Ok(Some(info)) => {
            Json(json!({
            "deployment_id": id,
            "seq": info.latest_seq,
            "epoch": &*info.epoch,
            "retained_events": info.retained,
            "subscribers": subscribers,
            "local_subscribers": local,
            "snapshot": info.snapshot.map(|data| json!({ "type": info.snapshot_type, "data": data })),
        }))
            .into_response()
        }
        Ok(None) => {
            AppError::new(StatusCode::NOT_FOUND, format!("Unknown topic: {id}")).into_response()
        }
        Err(e) => AppError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    async fn answer(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn state(demo: bool) -> AppState {
        let config = Config {
            demo,
            ..Config::default()
        };
        crate::server::build_state(config).expect("state")
    }

    /// `/healthz` tells the dashboard whether this is a `serve --demo` server.
    #[tokio::test]
    async fn health_says_demo_on_a_demo_server_only() {
        let (status, body) = answer(healthz(State(state(true))).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "ok", "demo": true }));
        let (_, body) = answer(healthz(State(state(false))).await).await;
        assert_eq!(body, json!({ "status": "ok" }));
    }

    /// Once shutdown began, `/readyz` turns load balancers away (503) while the
    /// connections drain.
    #[tokio::test]
    async fn not_ready_once_shutting_down() {
        let state = state(false);
        let (status, body) = answer(readyz(State(state.clone())).await).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({ "status": "ready" }))
        );
        state.shutdown.cancel();
        let (status, body) = answer(readyz(State(state)).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({ "status": "unavailable", "reason": "shutting down" })
        );
    }
}
