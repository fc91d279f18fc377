//! The `graphql-transport-ws` dialect on `GET /graphql` (the `graphql-ws` npm
//! package, Apollo Client, urql), spoken by async-graphql's own protocol code.
//!
//! The connection driver ([`crate::ws::driver`]) awaits `connection_init` and
//! [`authenticates`](InBand::authenticate) its credential: the init payload's
//! (`Authorization`, raw or Bearer, or `token`), else the upgrade's (`?token=`,
//! `Authorization`, `x-api-key`). A refused one closes the socket with 4403
//! ("Forbidden", the protocol's code for it), as does a publisher key alone (it
//! may only publish); a user over their connection limit gets 4429.
//!
//! Once open, text frames from the driver (the `connection_init` first) feed
//! async-graphql's [`WebSocket`] stream through a channel; a pump task pushes its
//! output frames into the connection's outbox (`Delivery::Frame`), so the driver's
//! writer sends them with its pings, and a client that does not take a frame
//! within the hub's replay wait is closed as a slow consumer (4008). The protocol's
//! own closes (4400, 4409, …) go out through the driver with their reason cut to
//! fit a close frame. Subscriptions run on the same schema and feeds as the
//! AppSync endpoint, sharing the connection's subscription budget.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{WebSocket, WebSocketProtocols, WsMessage};
use async_graphql::Data;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use stackpulse_auth::Verified;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::caller::{credential_from_object, resolve, Caller};
use super::StackpulseSchema;
use crate::app::AppState;
use crate::hub::{CloseReason, Delivery, Outbox};
use crate::ws::driver::{
    Conn, Control, Dialect, FrameEncoder, InBand, Refuse, Refused, SubscriptionBudget,
};

/// The protocol's close code for a refused credential.
const FORBIDDEN: u16 = 4403;
/// Client frames buffered for async-graphql before the reader waits.
const INPUT_BUFFER: usize = 16;

pub(crate) struct TransportWs {
    schema: StackpulseSchema,
    /// The upgrade's credential, used when `connection_init` carries none.
    upgrade_credential: Option<String>,
    /// Set by [`InBand::authenticate`].
    caller: Option<Caller>,
    /// The `connection_init` frame, replayed into async-graphql on open.
    init: Option<String>,
    input: Option<mpsc::Sender<String>>,
    pump: Option<JoinHandle<()>>,
}

impl TransportWs {
    pub fn new(schema: StackpulseSchema, upgrade_credential: Option<String>) -> TransportWs {
        TransportWs {
            schema,
            upgrade_credential,
            caller: None,
            init: None,
            input: None,
            pump: None,
        }
    }
}

fn forbidden(message: &str) -> Refuse {
    Refuse {
        frame: None,
        code: FORBIDDEN,
        reason: format!("Unauthorized: {message}"),
    }
}

impl InBand for TransportWs {
    async fn authenticate(
        &mut self,
        state: &AppState,
        init: &str,
    ) -> Result<(Verified, bool), Refuse> {
        let payload = serde_json::from_str::<Value>(init).ok();
        let from_payload = payload
            .as_ref()
            .and_then(|v| v.get("payload"))
            .and_then(Value::as_object)
            .and_then(credential_from_object);
        let credential = from_payload.or_else(|| self.upgrade_credential.take());
        let caller = resolve(state, credential)
            .await
            .map_err(|u| forbidden(u.message()))?;
        let Some(user) = caller.user.clone() else {
            return Err(forbidden(
                "a publisher key may only publish; send a user token to subscribe",
            ));
        };
        let verified = Verified {
            user,
            expires_at: caller.expires_at,
        };
        self.caller = Some(caller);
        self.init = Some(init.to_owned());
        Ok((verified, true))
    }

    fn refusal(&self, refused: Refused, message: &str) -> Refuse {
        let code = match refused {
            Refused::UserLimit => 4429,
            // Try Again Later.
            Refused::ServerFull => 1013,
        };
        Refuse {
            frame: None,
            code,
            reason: format!("Limit: {message}"),
        }
    }

    /// The protocol's answer to a `subscribe` before `connection_init`.
    fn before_init(kind: Option<&str>) -> Option<(u16, &'static str)> {
        (kind == Some("subscribe")).then_some((4401, "Unauthorized"))
    }
}

impl Dialect for TransportWs {
    type Encoder = FrameEncoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder {
            event_prefix: r#"{"type":"next""#,
        }
    }

    async fn on_open(&mut self, conn: &Conn<'_>) {
        let (tx, rx) = mpsc::channel::<String>(INPUT_BUFFER);
        if let Some(init) = self.init.take() {
            let _ = tx.try_send(init);
        }
        let input =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|t| (t, rx)) },
            );
        let mut data = Data::default();
        // Always set by `authenticate`; without it the resolvers refuse.
        if let Some(caller) = self.caller.take() {
            data.insert(caller);
        }
        data.insert(SubscriptionBudget::new(conn.state.config.max_subscriptions));
        let protocol = WebSocket::new(self.schema.clone(), input, WebSocketProtocols::GraphQLWS)
            .on_connection_init(move |_| async move { Ok(data) });
        self.pump = Some(tokio::spawn(pump(
            protocol,
            conn.outbox().clone(),
            conn.control.clone(),
            conn.state.hub.config().replay_timeout,
        )));
        self.input = Some(tx);
    }

    async fn on_text(&mut self, _conn: &Conn<'_>, text: &str) {
        if let Some(input) = &self.input {
            let _ = input.send(text.to_owned()).await;
        }
    }

    async fn on_end(&mut self, _conn: &Conn<'_>) {
        self.input = None;
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
    }
}

/// async-graphql's output frames → the outbox; its closes → the driver's close.
async fn pump(
    protocol: impl Stream<Item = WsMessage> + Send,
    outbox: Arc<Outbox>,
    control: Arc<Control>,
    wait: Duration,
) {
    let mut protocol = std::pin::pin!(protocol);
    while let Some(out) = protocol.next().await {
        match out {
            WsMessage::Text(text) => {
                if outbox.push_wait(Delivery::frame(text), wait).await.is_err() {
                    return;
                }
            }
            WsMessage::Close(code, reason) => {
                control.close_with(&outbox, code, &reason);
                return;
            }
        }
    }
    outbox.close(CloseReason::ClientClosed);
}
