//! The AppSync real-time dialect (subprotocol `graphql-ws`), as `aws-amplify` 6 and
//! gql's `AppSyncWebsocketsTransport` speak it.
//!
//! Flow of one connection:
//! 1. **Upgrade** ([`super::socket_handler`]): `graphql-ws` is selected; the auth
//!    object is read by [`handshake_auth`] from a `header-<base64url>` subprotocol
//!    entry, else from the raw `header=` query parameter (standard base64, whose
//!    `+` must not become a space).
//! 2. **Handshake** (the connection driver, [`crate::ws::driver`], awaits it: 10 s
//!    from the upgrade, else 4408; no place under `--max-connections` until then):
//!    the client's `connection_init` (with or without payload) is answered with
//!    `connection_ack {connectionTimeoutMs}` and a first `ka` when the auth
//!    object's credential resolves; otherwise with `connection_error`
//!    (`UnauthorizedException`/401 for bad auth, which both clients treat as final)
//!    and a close.
//! 3. **Subscriptions**: each `start` carries `payload.data`, a JSON *string* of
//!    `{query, variables, operationName?}`, and its own auth object in
//!    `payload.extensions.authorization`, checked again here; the connection then
//!    expires (4001) with the shortest-lived token of its `start`s, and a
//!    connection made with a publisher key alone may not start anything. Every
//!    field holds one of the connection's `--max-subscriptions` topics. A subscription
//!    operation is run with async-graphql's `execute_stream` in its own task (the
//!    pump): when the field has subscribed to the hub the resolver signals
//!    [`Started`] and the pump sends `start_ack`; each stream item becomes `data`
//!    (or `error`, which ends it); a failure before that is `error` without a
//!    `start_ack`. `stop` aborts the pump and is answered with `complete`. Ids are
//!    opaque and echoed back exactly.
//! 4. **Keep-alive**: `ka` every `--graphql-keepalive` seconds; WebSocket pings,
//!    the idle timeout, the token's expiry (4001) and shutdown (1001) work as on
//!    `/ws`, through the driver's writer and read loop (1009 for a frame over
//!    `--max-frame-bytes`).
//!
//! Backpressure: the pumps push into the connection's bounded outbox with the
//! hub's replay wait, so a client that stops reading is closed as a slow consumer
//! (4008) and each field's own feed overflows by the hub's policy.
//! Unknown client message types and `connection_terminate` are ignored, as AppSync
//! does; the server sends only the message types both clients know.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use axum::extract::ws::Utf8Bytes;
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use stackpulse_auth::Verified;
use tokio::task::JoinHandle;

use super::caller::{credential_from_object, resolve, Caller};
use super::schema::Started;
use super::StackpulseSchema;
use crate::app::AppState;
use crate::auth::User;
use crate::hub::{Delivery, Outbox};
use crate::ws::driver::{Conn, Dialect, FrameEncoder, InBand, Refuse, Refused, SubscriptionBudget};

/// What AppSync announces in `connection_ack`: clients drop a connection that
/// sees neither `ka` nor `data` for this long.
const CONNECTION_TIMEOUT_MS: u64 = 300_000;

const KA: &str = r#"{"type":"ka"}"#;

/// Decodes base64 of either alphabet, with or without padding.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let mut s: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .filter(|c| *c != '=')
        .collect();
    while s.len() % 4 != 0 {
        s.push('=');
    }
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// The raw `header=` query parameter: percent-escapes decoded, `+` kept as `+`.
fn raw_query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name {
            return None;
        }
        let kept = v.replace('+', "%2B");
        let decoded: String = url::form_urlencoded::parse(format!("v={kept}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())?;
        Some(decoded)
    })
}

/// The connection-level auth object: from a `header-<base64url>` subprotocol
/// entry, else from `?header=<base64>`. `Ok(None)` when neither is present;
/// `Err` with the reason when one is present but unreadable.
pub fn handshake_auth(
    offered: &[String],
    query: Option<&str>,
) -> Result<Option<Map<String, Value>>, String> {
    let encoded = offered
        .iter()
        .find_map(|p| p.strip_prefix("header-").map(str::to_owned))
        .or_else(|| query.and_then(|q| raw_query_param(q, "header")));
    let Some(encoded) = encoded else {
        return Ok(None);
    };
    let bytes =
        decode_base64(&encoded).map_err(|e| format!("Invalid auth header: not base64 ({e})"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err("Invalid auth header: not a JSON object".into()),
        Err(e) => Err(format!("Invalid auth header: not JSON ({e})")),
    }
}

/// One AppSync error object.
fn error_object(error_type: &str, message: &str, code: Option<u16>) -> Value {
    let mut e = json!({ "errorType": error_type, "message": message });
    if let Some(code) = code {
        e["errorCode"] = json!(code);
    }
    e
}

fn connection_error(error_type: &str, message: &str, code: u16) -> String {
    json!({
        "type": "connection_error",
        "payload": { "errors": [error_object(error_type, message, Some(code))] },
    })
    .to_string()
}

fn start_error(id: &Value, errors: Vec<Value>) -> String {
    json!({ "type": "error", "id": id, "payload": { "errors": errors } }).to_string()
}

/// async-graphql errors in AppSync's shape (`errorType` from the extension the
/// resolvers set, else `default_type`).
fn appsync_errors(errors: &[async_graphql::ServerError], default_type: &str) -> Vec<Value> {
    errors
        .iter()
        .map(|e| {
            let v = serde_json::to_value(e).unwrap_or(Value::Null);
            let ext = v.get("extensions");
            let error_type = ext
                .and_then(|x| x.get("errorType"))
                .and_then(Value::as_str)
                .unwrap_or(default_type);
            let code = ext
                .and_then(|x| x.get("errorCode"))
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok());
            error_object(error_type, &e.message, code)
        })
        .collect()
}

/// The AppSync dialect of one connection.
pub(crate) struct AppSync {
    schema: StackpulseSchema,
    /// The handshake's auth object (from the upgrade), or why it is unreadable.
    handshake: Result<Option<Map<String, Value>>, String>,
    /// The handshake's caller: used by a `start` without its own auth object.
    caller: Option<Caller>,
    /// The connection's topics, shared by the feeds of all its `start`s.
    budget: Option<Arc<SubscriptionBudget>>,
    subscriptions: HashMap<String, JoinHandle<()>>,
    keepalive: Option<JoinHandle<()>>,
}

impl AppSync {
    pub fn new(
        schema: StackpulseSchema,
        handshake: Result<Option<Map<String, Value>>, String>,
    ) -> AppSync {
        AppSync {
            schema,
            handshake,
            caller: None,
            budget: None,
            subscriptions: HashMap::new(),
            keepalive: None,
        }
    }
}

/// A `connection_error` and a normal close with `reason`.
fn refuse(error_type: &str, message: &str, code: u16, reason: &str) -> Refuse {
    Refuse {
        frame: Some(connection_error(error_type, message, code)),
        code: crate::ws::close::NORMAL,
        reason: reason.to_owned(),
    }
}

impl InBand for AppSync {
    async fn authenticate(
        &mut self,
        state: &AppState,
        _init: &str,
    ) -> Result<(Verified, bool), Refuse> {
        let auth_object = match &self.handshake {
            Ok(obj) => obj.clone(),
            Err(message) => {
                return Err(refuse(
                    "BadRequestException",
                    message,
                    400,
                    "bad auth header",
                ))
            }
        };
        let credential = auth_object.as_ref().and_then(credential_from_object);
        let caller = resolve(state, credential)
            .await
            .map_err(|u| refuse("UnauthorizedException", u.message(), 401, "unauthorized"))?;
        let verified = Verified {
            user: caller.user.clone().unwrap_or_else(User::anonymous),
            expires_at: caller.expires_at,
        };
        let per_user = caller.user.is_some();
        self.caller = Some(caller);
        self.budget = Some(SubscriptionBudget::new(state.config.max_subscriptions));
        Ok((verified, per_user))
    }

    fn refusal(&self, refused: Refused, message: &str) -> Refuse {
        match refused {
            Refused::UserLimit => {
                refuse("LimitExceededError", message, 429, "too many connections")
            }
            Refused::ServerFull => refuse("LimitExceededError", message, 503, "server full"),
        }
    }
}

impl Dialect for AppSync {
    type Encoder = FrameEncoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder {
            event_prefix: r#"{"type":"data""#,
        }
    }

    async fn on_open(&mut self, conn: &Conn<'_>) {
        let ack = json!({
            "type": "connection_ack",
            "payload": { "connectionTimeoutMs": CONNECTION_TIMEOUT_MS },
        });
        conn.send(ack.to_string());
        self.keepalive = Some(tokio::spawn(keepalive(
            conn.outbox().clone(),
            conn.state.config.graphql_keepalive,
        )));
    }

    async fn on_text(&mut self, conn: &Conn<'_>, text: &str) {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            // gql raises on an `error` without id; AppSync ignores what it cannot read.
            tracing::debug!(
                conn = conn.info.session.id,
                "unreadable AppSync client frame"
            );
            return;
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        match message.get("type").and_then(Value::as_str) {
            Some("start") => {
                let payload = message.get("payload").cloned().unwrap_or(Value::Null);
                self.start(conn, id, payload).await;
            }
            Some("stop") => {
                let key = id_key(&id);
                if let Some(pump) = self.subscriptions.remove(&key) {
                    pump.abort();
                }
                conn.send(json!({ "type": "complete", "id": id }).to_string());
            }
            // `connection_init` again, `connection_terminate`, `ka`, anything else.
            _ => {}
        }
    }

    async fn on_end(&mut self, _conn: &Conn<'_>) {
        for (_, pump) in self.subscriptions.drain() {
            pump.abort();
        }
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
    }
}

/// `ka` right after the ack, then every `every`.
async fn keepalive(outbox: Arc<Outbox>, every: Duration) {
    loop {
        if outbox
            .push(Delivery::frame(Utf8Bytes::from_static(KA)))
            .is_err()
        {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

const PUBLISHER_ONLY: &str =
    "Unauthorized: a publisher key may only publish; send a user token to read or subscribe";

impl AppSync {
    async fn start(&mut self, conn: &Conn<'_>, id: Value, payload: Value) {
        let key = id_key(&id);
        if key.is_empty() {
            let errors = vec![error_object("BadRequestException", "Missing id", Some(400))];
            return conn.send(start_error(&id, errors));
        }
        let request = match parse_start(&payload) {
            Ok(r) => r,
            Err(message) => {
                let errors = vec![error_object("BadRequestException", &message, Some(400))];
                return conn.send(start_error(&id, errors));
            }
        };
        let unauthorized = |message: &str| {
            start_error(
                &id,
                vec![error_object("UnauthorizedException", message, Some(401))],
            )
        };
        let Some(handshake) = &self.caller else {
            return conn.send(unauthorized("Unauthorized: Missing token"));
        };
        // A connection made with a publisher key holds no user subscriptions.
        if handshake.user.is_none() {
            return conn.send(unauthorized(PUBLISHER_ONLY));
        }
        let auth = payload
            .get("extensions")
            .and_then(|e| e.get("authorization"))
            .and_then(Value::as_object);
        let caller = match auth {
            Some(obj) => resolve(conn.state, credential_from_object(obj)).await,
            // No auth object: the handshake's credential, verified again.
            None => resolve(conn.state, handshake.credential.clone()).await,
        };
        let caller = match caller {
            Ok(c) if c.user.is_none() => return conn.send(unauthorized(PUBLISHER_ONLY)),
            Ok(c) => c,
            Err(u) => return conn.send(unauthorized(u.message())),
        };
        // The connection closes (4001) when the shortest-lived token of its
        // subscriptions expires.
        conn.info
            .expires_at
            .fetch_min(caller.expires_at, Ordering::AcqRel);
        self.subscriptions.retain(|_, pump| !pump.is_finished());
        if let Some(old) = self.subscriptions.remove(&key) {
            old.abort();
        }
        let (started, started_rx) = Started::new();
        let mut request = request.data(caller).data(started);
        if let Some(budget) = &self.budget {
            request = request.data(budget.clone());
        }
        let pump = Pump {
            schema: self.schema.clone(),
            outbox: conn.outbox().clone(),
            id,
            wait: conn.state.hub.config().replay_timeout,
        };
        self.subscriptions
            .insert(key, tokio::spawn(pump.run(request, started_rx)));
    }
}

/// The map key of an opaque id (its JSON text; strings unquoted).
fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `payload.data` (a JSON string, or an object from lenient clients) → a request
/// for a subscription operation.
fn parse_start(payload: &Value) -> Result<async_graphql::Request, String> {
    let data = match payload.get("data") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("Invalid payload.data: not JSON ({e})"))?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err("Missing payload.data (a JSON string of {query, variables})".into()),
    };
    let query = data
        .get("query")
        .and_then(Value::as_str)
        .ok_or("Missing query in payload.data")?;
    let operation_name = data
        .get("operationName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Ok(doc) = async_graphql::parser::parse_query(query) {
        let ty = match &doc.operations {
            DocumentOperations::Single(op) => Some(op.node.ty),
            DocumentOperations::Multiple(ops) => match &operation_name {
                Some(name) => ops.get(name.as_str()).map(|op| op.node.ty),
                None if ops.len() == 1 => ops.values().next().map(|op| op.node.ty),
                None => None,
            },
        };
        if matches!(ty, Some(OperationType::Query | OperationType::Mutation)) {
            return Err(
                "Only subscriptions run on the real-time endpoint; send queries and mutations to POST /graphql"
                    .into(),
            );
        }
    }
    let mut request = async_graphql::Request::new(query);
    if let Some(name) = operation_name {
        request = request.operation_name(name);
    }
    if let Some(vars) = data.get("variables").filter(|v| !v.is_null()) {
        request = request.variables(async_graphql::Variables::from_json(vars.clone()));
    }
    Ok(request)
}

/// Runs one subscription and writes its frames.
struct Pump {
    schema: StackpulseSchema,
    outbox: Arc<Outbox>,
    id: Value,
    wait: Duration,
}

impl Pump {
    async fn send(&self, frame: Value) -> bool {
        let frame = Delivery::frame(frame.to_string());
        self.outbox.push_wait(frame, self.wait).await.is_ok()
    }

    async fn run(
        self,
        request: async_graphql::Request,
        mut started: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut stream = self.schema.execute_stream(request);
        // Either the field subscribed (start_ack) or the stream answered first (an
        // error before the field could subscribe).
        let mut pending = tokio::select! {
            biased;
            Ok(()) = &mut started => None,
            item = stream.next() => Some(item),
        };
        let acked = pending.is_none() || started.try_recv().is_ok();
        if acked
            && !self
                .send(json!({ "type": "start_ack", "id": self.id }))
                .await
        {
            return;
        }
        loop {
            let item = match pending.take() {
                Some(item) => item,
                None => stream.next().await,
            };
            let Some(response) = item else {
                let _ = self
                    .send(json!({ "type": "complete", "id": self.id }))
                    .await;
                return;
            };
            if !response.errors.is_empty() {
                let default = if acked {
                    "GraphQLError"
                } else {
                    "ValidationError"
                };
                let errors = appsync_errors(&response.errors, default);
                let frame =
                    json!({ "type": "error", "id": self.id, "payload": { "errors": errors } });
                let _ = self.send(frame).await;
                return;
            }
            let data = serde_json::to_value(&response.data).unwrap_or(Value::Null);
            let frame = json!({ "type": "data", "id": self.id, "payload": { "data": data } });
            if !self.send(frame).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_from_subprotocol_or_raw_query() {
        let json = r#"{"host":"h:1","Authorization":"a.b>>>~~~"}"#;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let std = base64::engine::general_purpose::STANDARD.encode(json);
        assert!(std.contains('+') || std.contains('/'), "{std}");
        let offered = vec!["graphql-ws".to_owned(), format!("header-{url}")];
        let a = handshake_auth(&offered, None).expect("ok").expect("some");
        assert_eq!(a["Authorization"], "a.b>>>~~~");
        let q = format!("header={std}&payload=e30=");
        let b = handshake_auth(&["graphql-ws".to_owned()], Some(&q))
            .expect("ok")
            .expect("some");
        assert_eq!(
            b["Authorization"], "a.b>>>~~~",
            "a + in the query stays a +"
        );
        assert!(handshake_auth(&[], None).expect("ok").is_none());
        assert!(handshake_auth(&[], Some("header=%%%")).is_err());
    }

    #[test]
    fn start_payload_is_a_json_string_and_must_subscribe() {
        let sub = r#"{"query":"subscription S($d: ID!) { onDeploymentUpdated(deployment_id: $d) { status } }","variables":{"d":"x"}}"#;
        assert!(parse_start(&json!({ "data": sub })).is_ok());
        let query = r#"{"query":"{ deployment(deployment_id: \"x\") { seq } }"}"#;
        let e = parse_start(&json!({ "data": query })).expect_err("query");
        assert!(e.contains("Only subscriptions"), "{e}");
        assert!(parse_start(&json!({})).is_err());
        assert!(parse_start(&json!({ "data": "not json" })).is_err());
    }
}
