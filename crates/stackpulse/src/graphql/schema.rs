//! The GraphQL schema: types over hub events, and the resolvers.
//!
//! Field and argument names are snake_case, as in the seed
//! (`onDeploymentUpdated(deployment_id: ID!) { deployment_id status updated_at }`);
//! operation names are camelCase. Every resolver takes the request's
//! [`Caller`] from the context data and the [`AppState`] from the schema data:
//! - **queries** (`deployment`, `stack`) read a topic's snapshot and recent history
//!   from the backplane, after the gate's ACL check;
//! - **`publishDeploymentUpdate`** checks a publisher credential and publishes a
//!   `deployment.status` event through [`crate::hub::Hub::publish`], the path
//!   `POST /v1/events` takes (same validation, a seq from the hub);
//! - **subscriptions** open a [`Feed`] per field and map each hub event of the
//!   field's type to its GraphQL object (`deployment.status` → `DeploymentUpdate`,
//!   `resource.status` → `ResourceUpdate`, `log.created` → `LogLine`).
//!
//! Errors carry an `errorType` extension (AppSync's names) that the real-time
//! transport copies into its `errors[{errorType, message}]` frames.
//!
//! Cost: [`build`] installs [`cost::CostGuard`], which checks every document on
//! every transport before async-graphql validates it (fragment expansion,
//! aliases, root fields, one root field per subscription); async-graphql's
//! complexity then charges `recent_events(limit)` `limit` times its selection.
//! Introspection is served only with `--graphql-introspection` (default: on
//! without auth, off with auth).

use std::sync::{Arc, Mutex};

use async_graphql::{
    Context, Error, ErrorExtensions, Json, Object, Schema, SimpleObject, Subscription, ID,
};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use stackpulse_protocol::{ProtocolError, PublishRequest, MAX_TOPIC_LEN};
use tokio::sync::oneshot;

use super::caller::Caller;
use super::feed::{Feed, FeedEnded, HubEvent};
use crate::app::AppState;
use crate::auth::User;
use crate::hub::SubscribeError;
use crate::tracking::{valid_region, valid_stack_name};
use crate::ws::driver::SubscriptionBudget;

// `graphql/cost.rs`, declared here while `graphql/mod.rs` is being rewritten
// elsewhere; it can move to `mod.rs` as `pub mod cost;` unchanged.
#[path = "cost.rs"]
pub mod cost;

pub type StackpulseSchema = Schema<Query, Mutation, Subscription>;

/// Most events a `recent_events` field returns.
const MAX_RECENT: usize = 500;

/// Most complexity one document may have: every field costs 1, and
/// `recent_events(limit)` costs `limit` times its selection (so about ten
/// `recent_events(limit: 500) { data }` fit, or two with five fields each).
pub const MAX_COMPLEXITY: usize = 5_000;
/// Most directives on one field.
pub const MAX_DIRECTIVES: usize = 8;

/// Builds the schema over the server's state.
pub fn build(state: AppState) -> StackpulseSchema {
    let introspection = state.config.graphql_introspection;
    let limits = cost::CostLimits {
        introspection,
        ..cost::CostLimits::default()
    };
    let builder = Schema::build(Query, Mutation, Subscription)
        // First: the document check runs before async-graphql parses or
        // validates anything, on every transport.
        .extension(cost::CostGuard(limits))
        .data(state)
        // Deep enough for the standard introspection query (codegen, GraphiQL).
        .limit_depth(32)
        .limit_recursive_depth(limits.max_depth)
        .limit_directives(MAX_DIRECTIVES)
        .limit_complexity(MAX_COMPLEXITY);
    if introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// Refuses a topic name longer than `/ws` accepts, with `/ws`'s message.
fn check_topic_len(topic: &str) -> Result<(), Error> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(gql_error(
            "BadRequestException",
            ProtocolError::InvalidDeploymentId.to_string(),
            Some(400),
        ));
    }
    Ok(())
}

/// An error with AppSync's `errorType` (and optionally `errorCode`).
pub fn gql_error(error_type: &'static str, message: impl Into<String>, code: Option<u16>) -> Error {
    Error::new(message).extend_with(|_, e| {
        e.set("errorType", error_type);
        if let Some(code) = code {
            e.set("errorCode", code);
        }
    })
}

fn unauthorized(message: &str) -> Error {
    gql_error("UnauthorizedException", message, Some(401))
}

fn state<'a>(ctx: &Context<'a>) -> Result<&'a AppState, Error> {
    ctx.data::<AppState>()
}

/// The caller's user; a publisher key alone may not read.
fn user<'a>(ctx: &Context<'a>) -> Result<&'a User, Error> {
    let caller = ctx
        .data_opt::<Caller>()
        .ok_or_else(|| unauthorized("Unauthorized: Missing token"))?;
    caller.user.as_ref().ok_or_else(|| {
        unauthorized("Unauthorized: a publisher key may only publish; send a user token to read or subscribe")
    })
}

/// Resolved by the real-time transport when a subscription field is set up (its
/// `start_ack`); absent on other transports.
#[derive(Default)]
pub struct Started(Mutex<Option<oneshot::Sender<()>>>);

impl Started {
    pub fn new() -> (Started, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Started(Mutex::new(Some(tx))), rx)
    }

    fn fire(&self) {
        if let Ok(mut slot) = self.0.lock() {
            if let Some(tx) = slot.take() {
                let _ = tx.send(());
            }
        }
    }
}

fn subscribe_error(field: &str, e: SubscribeError) -> Error {
    match e {
        SubscribeError::Forbidden(_) => gql_error(
            "Unauthorized",
            format!("Not Authorized to access {field} on type Subscription"),
            Some(403),
        ),
        SubscribeError::TooMany(n) => gql_error(
            "LimitExceededError",
            format!("Too many subscriptions (limit {n} per connection)"),
            Some(429),
        ),
        SubscribeError::Backplane(b) => gql_error("ServiceUnavailable", b.to_string(), Some(503)),
        SubscribeError::Closed => gql_error("ServiceUnavailable", "connection closed", Some(410)),
        SubscribeError::Invalid(message) => gql_error("BadRequestException", message, Some(400)),
        SubscribeError::Capacity(message) => gql_error("ServiceUnavailable", message, Some(503)),
    }
}

fn feed_error(e: FeedEnded) -> Error {
    let error_type = match e {
        FeedEnded::SlowConsumer(_) => "SlowConsumer",
        FeedEnded::Resync(_) => "Resync",
        FeedEnded::Shutdown => "ServerShutdown",
        FeedEnded::Forbidden(_) => "Unauthorized",
    };
    gql_error(error_type, e.to_string(), None)
}

/// Opens a feed for a subscription field and tells the transport it is set up.
async fn open_feed(
    ctx: &Context<'_>,
    field: &str,
    topic: &str,
    since: Option<u64>,
) -> Result<Feed, Error> {
    let state = state(ctx)?;
    let user = user(ctx)?;
    check_topic_len(topic)?;
    if topic.is_empty() {
        return Err(gql_error(
            "BadRequestException",
            "Missing deployment_id",
            Some(400),
        ));
    }
    let permit = match ctx.data_opt::<Arc<SubscriptionBudget>>() {
        Some(budget) => Some(budget.take().map_err(|e| subscribe_error(field, e))?),
        None => None,
    };
    let feed = Feed::open(state, user, topic, since, permit)
        .await
        .map_err(|e| subscribe_error(field, e))?;
    if let Some(started) = ctx.data_opt::<Started>() {
        started.fire();
    }
    Ok(feed)
}

async fn stack_topic(
    state: &AppState,
    stack_name: &str,
    region: Option<&str>,
) -> Result<String, Error> {
    if stack_name.len() > MAX_TOPIC_LEN {
        return Err(gql_error(
            "BadRequestException",
            format!("Invalid stack_name: must be a string of at most {MAX_TOPIC_LEN} bytes"),
            Some(400),
        ));
    }
    if !valid_stack_name(stack_name) {
        return Err(gql_error(
            "BadRequestException",
            format!("Invalid stack name: {stack_name}"),
            Some(400),
        ));
    }
    let region = region.filter(|r| !r.is_empty());
    if let Some(r) = region {
        if !valid_region(r) {
            return Err(gql_error(
                "BadRequestException",
                format!("Invalid region: {r}"),
                Some(400),
            ));
        }
    }
    Ok(state.tracking.topic_for(stack_name, region).await)
}

/// A `deployment.status` event: the seed's `onDeploymentUpdated` payload.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(rename_fields = "snake_case")]
pub struct DeploymentUpdate {
    pub deployment_id: ID,
    pub status: String,
    /// The event's timestamp (RFC 3339, UTC, milliseconds).
    pub updated_at: String,
    /// The event's seq in its topic: pass it as `since` to resume.
    pub seq: u64,
    pub current_layer: Option<u64>,
    pub total_layers: Option<u64>,
}

impl DeploymentUpdate {
    fn from_event(e: &HubEvent) -> Option<DeploymentUpdate> {
        if e.event_type != "deployment.status" {
            return None;
        }
        Some(DeploymentUpdate {
            deployment_id: ID(e.topic.clone()),
            status: e.str("status")?,
            updated_at: e.timestamp.clone(),
            seq: e.seq,
            current_layer: e.uint("current_layer"),
            total_layers: e.uint("total_layers"),
        })
    }
}

/// A `resource.status` event: one CloudFormation stack event with the stack's
/// progress.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(rename_fields = "snake_case")]
pub struct ResourceUpdate {
    /// The topic (`stack:<name>` or `stack:<region>:<name>`).
    pub deployment_id: ID,
    pub seq: u64,
    /// When CloudFormation recorded the event (else when the hub stamped it).
    pub updated_at: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub physical_id: Option<String>,
    pub status_reason: Option<String>,
    pub stack_name: Option<String>,
    pub stack_status: Option<String>,
    /// The stack's progress, 0–100.
    pub progress: Option<u64>,
}

impl ResourceUpdate {
    fn from_event(e: &HubEvent) -> Option<ResourceUpdate> {
        if e.event_type != "resource.status" {
            return None;
        }
        let resource = e.data.get("resource")?;
        let stack = e.data.get("stack");
        let s = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Some(ResourceUpdate {
            deployment_id: ID(e.topic.clone()),
            seq: e.seq,
            updated_at: e
                .str("eventTimestamp")
                .unwrap_or_else(|| e.timestamp.clone()),
            logical_id: s(Some(resource), "logicalId")?,
            resource_type: s(Some(resource), "type").unwrap_or_default(),
            status: s(Some(resource), "status").unwrap_or_default(),
            physical_id: s(Some(resource), "physicalId"),
            status_reason: s(Some(resource), "statusReason"),
            stack_name: s(stack, "name"),
            stack_status: s(stack, "status"),
            progress: stack
                .and_then(|v| v.get("progress"))
                .and_then(Value::as_u64),
        })
    }
}

/// A `log.created` event.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(rename_fields = "snake_case")]
pub struct LogLine {
    pub deployment_id: ID,
    pub seq: u64,
    pub timestamp: String,
    pub level: String,
    pub message: String,
    pub stack_name: Option<String>,
    pub environment: Option<String>,
}

impl LogLine {
    fn from_event(e: &HubEvent) -> Option<LogLine> {
        if e.event_type != "log.created" {
            return None;
        }
        Some(LogLine {
            deployment_id: ID(e.topic.clone()),
            seq: e.seq,
            timestamp: e.timestamp.clone(),
            level: e.str("level")?,
            message: e.str("message")?,
            stack_name: e.str("stack_name"),
            environment: e.str("environment"),
        })
    }
}

/// Any stamped event, as `/ws` sends it.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(rename_fields = "snake_case")]
pub struct Event {
    pub deployment_id: ID,
    pub seq: u64,
    #[graphql(name = "type")]
    pub event_type: String,
    pub timestamp: String,
    pub data: Json<Map<String, Value>>,
}

impl From<HubEvent> for Event {
    fn from(e: HubEvent) -> Event {
        Event {
            deployment_id: ID(e.topic),
            seq: e.seq,
            event_type: e.event_type,
            timestamp: e.timestamp,
            data: Json(std::sync::Arc::unwrap_or_clone(e.data)),
        }
    }
}

/// A topic's current state (its snapshot) and position.
pub struct TopicState {
    topic: String,
    seq: u64,
    epoch: String,
    snapshot_type: String,
    snapshot: Map<String, Value>,
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl TopicState {
    async fn deployment_id(&self) -> ID {
        ID(self.topic.clone())
    }

    /// The latest seq of the topic.
    async fn seq(&self) -> u64 {
        self.seq
    }

    /// Changes when the topic's history was lost and its seqs started again.
    async fn epoch(&self) -> &str {
        &self.epoch
    }

    /// `deployment.snapshot` or `stack.snapshot`.
    async fn snapshot_type(&self) -> &str {
        &self.snapshot_type
    }

    /// The deployment's status (from its last `deployment.status`), if any.
    async fn status(&self) -> Option<String> {
        self.snapshot
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The full snapshot, as `GET /v1/topics/{id}` shows it.
    async fn snapshot(&self) -> Json<Map<String, Value>> {
        Json(self.snapshot.clone())
    }

    /// The topic's most recent events still in history, oldest first (at most
    /// 500; costs `limit` times its selection).
    #[graphql(
        complexity = "limit.clamp(1, MAX_RECENT).saturating_mul(child_complexity).saturating_add(1)"
    )]
    async fn recent_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] limit: usize,
    ) -> Result<Vec<Event>, Error> {
        let state = state(ctx)?;
        let limit = limit.min(MAX_RECENT) as u64;
        let since = self.seq.saturating_sub(limit);
        let read = state
            .hub
            .backplane()
            .read(&self.topic, Some(since))
            .await
            .map_err(|e| gql_error("ServiceUnavailable", e.to_string(), Some(503)))?;
        Ok(read
            .events
            .iter()
            .filter_map(|e| HubEvent::decode(e))
            .map(Event::from)
            .collect())
    }
}

async fn topic_state(ctx: &Context<'_>, topic: &str) -> Result<Option<TopicState>, Error> {
    let state = state(ctx)?;
    let user = user(ctx)?;
    let info = state
        .hub
        .backplane()
        .info(topic)
        .await
        .map_err(|e| gql_error("ServiceUnavailable", e.to_string(), Some(503)))?;
    // Checked before existence, so a refused user cannot tell whether it exists.
    if !state.hub.may_read(
        &crate::hub::Reader::User(user.clone()),
        topic,
        info.as_ref().and_then(|i| i.acl.as_ref()),
    ) {
        return Err(gql_error(
            "Unauthorized",
            format!("Not Authorized to access {topic}"),
            Some(403),
        ));
    }
    Ok(info.map(|i| TopicState {
        topic: topic.to_owned(),
        seq: i.latest_seq,
        epoch: i.epoch.to_string(),
        snapshot_type: i.snapshot_type.to_owned(),
        snapshot: i.snapshot.unwrap_or_default(),
    }))
}

pub struct Query;

#[Object(rename_args = "snake_case")]
impl Query {
    /// A deployment's current state; `null` for a topic with no events.
    async fn deployment(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
    ) -> Result<Option<TopicState>, Error> {
        check_topic_len(&deployment_id)?;
        topic_state(ctx, &deployment_id).await
    }

    /// A tracked stack's current state (its `stack:*` topic).
    async fn stack(
        &self,
        ctx: &Context<'_>,
        stack_name: String,
        region: Option<String>,
    ) -> Result<Option<TopicState>, Error> {
        let topic = stack_topic(state(ctx)?, &stack_name, region.as_deref()).await?;
        topic_state(ctx, &topic).await
    }
}

pub struct Mutation;

#[Object(rename_args = "snake_case")]
impl Mutation {
    /// Publishes a `deployment.status` event (needs a publisher key, or a user
    /// token of the publisher group); returns it with its seq and timestamp.
    async fn publish_deployment_update(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
        status: String,
        current_layer: Option<u64>,
        total_layers: Option<u64>,
    ) -> Result<DeploymentUpdate, Error> {
        let state = state(ctx)?;
        let credential = ctx
            .data_opt::<Caller>()
            .and_then(|c| c.credential.as_deref());
        if let Err((status, message)) = state
            .gate
            .authorize_publisher_token(credential, &state.publishers)
            .await
        {
            return Err(if status.as_u16() == 403 {
                gql_error("Unauthorized", message, Some(403))
            } else {
                unauthorized(&message)
            });
        }
        let mut data = serde_json::Map::new();
        data.insert("status".into(), json!(status));
        if let Some(n) = current_layer {
            data.insert("current_layer".into(), json!(n));
        }
        if let Some(n) = total_layers {
            data.insert("total_layers".into(), json!(n));
        }
        let request = PublishRequest::new(
            "deployment.status".into(),
            deployment_id.to_string(),
            data,
            None,
        )
        .map_err(|m| gql_error("BadRequestException", m, Some(400)))?;
        let event = state.hub.publish(request).await.map_err(|e| {
            let error_type = match e.status() {
                403 => "Unauthorized",
                413 => "BadRequestException",
                _ => "ServiceUnavailable",
            };
            gql_error(error_type, e.to_string(), Some(e.status()))
        })?;
        HubEvent::decode(&event)
            .as_ref()
            .and_then(DeploymentUpdate::from_event)
            .ok_or_else(|| gql_error("InternalFailure", "published event unreadable", None))
    }
}

pub struct Subscription;

#[Subscription(rename_args = "snake_case")]
impl Subscription {
    /// Every `deployment.status` event of a deployment, from any source. With
    /// `since`, every one after that seq is replayed first.
    async fn on_deployment_updated(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<DeploymentUpdate, Error>>, Error> {
        let feed = open_feed(ctx, "onDeploymentUpdated", &deployment_id, since).await?;
        Ok(feed
            .into_stream(DeploymentUpdate::from_event)
            .map(|r| r.map_err(feed_error)))
    }

    /// Every CloudFormation resource event of a stack (starts or joins its poller).
    async fn on_stack_resource_updated(
        &self,
        ctx: &Context<'_>,
        stack_name: String,
        region: Option<String>,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<ResourceUpdate, Error>>, Error> {
        let topic = stack_topic(state(ctx)?, &stack_name, region.as_deref()).await?;
        let feed = open_feed(ctx, "onStackResourceUpdated", &topic, since).await?;
        Ok(feed
            .into_stream(ResourceUpdate::from_event)
            .map(|r| r.map_err(feed_error)))
    }

    /// Every `log.created` line of a topic (a deployment or a `stack:*` topic).
    async fn on_log_line(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<LogLine, Error>>, Error> {
        let feed = open_feed(ctx, "onLogLine", &deployment_id, since).await?;
        Ok(feed
            .into_stream(LogLine::from_event)
            .map(|r| r.map_err(feed_error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDL the README documents (names, nullability, arguments).
    #[tokio::test]
    async fn schema_has_the_documented_shape() {
        let state = crate::server::build_state(crate::config::Config::default()).expect("state");
        let sdl = build(state).sdl();
        for line in [
            "onDeploymentUpdated(deployment_id: ID!, since: Int): DeploymentUpdate!",
            "onStackResourceUpdated(stack_name: String!, region: String, since: Int): ResourceUpdate!",
            "onLogLine(deployment_id: ID!, since: Int): LogLine!",
            "deployment(deployment_id: ID!): TopicState",
            "stack(stack_name: String!, region: String): TopicState",
            "publishDeploymentUpdate(deployment_id: ID!, status: String!, current_layer: Int, total_layers: Int): DeploymentUpdate!",
            "recent_events(limit: Int! = 20): [Event!]!",
            "updated_at: String!",
            "snapshot: JSON!",
        ] {
            assert!(sdl.contains(line), "missing {line:?} in\n{sdl}");
        }
    }
}
