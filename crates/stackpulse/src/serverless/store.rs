//! Connections and subscriptions in DynamoDB (serverless mode).
//!
//! - Connections table (partition key `connectionId`, TTL attribute `ttl`): one item
//!   per open WebSocket: its `user` (JSON), token expiry `exp` (seconds, 0 = never)
//!   and the string set `topics` it subscribes to.
//! - Topics table (shared with [`crate::hub::dynamo`]): one item per subscription,
//!   `pk = s#<topic>`, `sk = <connectionId>`, with the subscriber's `user` and `exp`,
//!   so a publish finds its subscribers with one `Query` and checks ACLs without
//!   reading the connections, and `live`: the seq up to which the subscribe itself
//!   sent the topic (absent while it is still replaying; fan-out skips it then).
//!
//! Both carry a `ttl` (the token's expiry, at most [`MAX_CONNECTION`] after the
//! connect), so a connection whose `$disconnect` never came disappears by itself.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use serde_json::{json, Value};

use crate::auth::User;
use crate::hub::dynamo::{expired, get_n, get_s, n, now_secs, s, unavailable, Item};
use crate::hub::BackplaneError;

/// API Gateway closes a WebSocket after 2 hours; items outlive that by a margin.
pub const MAX_CONNECTION: Duration = Duration::from_secs(2 * 3600 + 600);

/// A connection as stored.
#[derive(Debug, Clone)]
pub struct StoredConnection {
    pub user: User,
    /// Token expiry in seconds since the epoch; `None`: never (auth off).
    pub expires_at: Option<u64>,
    pub topics: Vec<String>,
}

/// A subscriber of a topic as stored.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub connection_id: String,
    pub user: User,
    pub expires_at: Option<u64>,
    /// `None` while the subscribe is still sending `subscribed` and its replay;
    /// then the last seq it sent: only later events are posted by fan-out.
    pub live_after: Option<u64>,
}

/// The two tables.
#[derive(Clone)]
pub struct Store {
    client: Client,
    connections: String,
    topics: String,
}

fn user_json(user: &User) -> String {
    json!({"sub": user.sub, "username": user.username, "email": user.email, "groups": user.groups})
        .to_string()
}

fn parse_user(text: &str) -> Option<User> {
    let v: Value = serde_json::from_str(text).ok()?;
    Some(User {
        sub: v.get("sub")?.as_str()?.to_owned(),
        username: v.get("username")?.as_str()?.to_owned(),
        email: v.get("email").and_then(Value::as_str).map(str::to_owned),
        groups: v
            .get("groups")?
            .as_array()?
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
    })
}

/// `exp` as stored: 0 for a token that never expires.
fn exp_attr(expires_at: Option<u64>) -> u64 {
    expires_at.unwrap_or(0)
}

fn item_ttl(expires_at: Option<u64>) -> u64 {
    let cap = now_secs() + MAX_CONNECTION.as_secs();
    expires_at.map_or(cap, |e| e.min(cap))
}

fn sub_pk(topic: &str) -> String {
    format!("s#{topic}")
}

impl Store {
    pub fn new(client: Client, connections: String, topics: String) -> Store {
        Store {
            client,
            connections,
            topics,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The topics table (also holds the stacks in progress, see `super::cfn`).
    pub fn topics_table(&self) -> &str {
        &self.topics
    }

    /// Records a connection accepted by `$connect`.
    pub async fn put_connection(
        &self,
        id: &str,
        user: &User,
        expires_at: Option<u64>,
    ) -> Result<(), BackplaneError> {
        self.client
            .put_item()
            .table_name(&self.connections)
            .item("connectionId", s(id))
            .item("user", s(user_json(user)))
            .item("exp", n(exp_attr(expires_at)))
            .item("connectedAt", n(now_secs()))
            .item("ttl", n(item_ttl(expires_at)))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }

    /// A connection, unless it is unknown or its item expired.
    pub async fn connection(&self, id: &str) -> Result<Option<StoredConnection>, BackplaneError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.connections)
            .key("connectionId", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        let Some(item) = out.item.filter(|i| !expired(i, now_secs())) else {
            return Ok(None);
        };
        let Some(user) = get_s(&item, "user").and_then(parse_user) else {
            return Ok(None);
        };
        let topics = item
            .get("topics")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        Ok(Some(StoredConnection {
            user,
            expires_at: get_n(&item, "exp").filter(|e| *e > 0),
            topics,
        }))
    }

    /// Forgets a connection and every subscription it held.
    pub async fn delete_connection(&self, id: &str) -> Result<(), BackplaneError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.connections)
            .key("connectionId", s(id))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        let topics = out
            .attributes
            .as_ref()
            .and_then(|a| a.get("topics"))
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        for topic in topics {
            self.delete_subscription_item(id, &topic).await?;
        }
        Ok(())
    }

    /// Adds `topic` to a connection's subscriptions (both items).
    pub async fn add_subscription(
        &self,
        id: &str,
        topic: &str,
        conn: &StoredConnection,
    ) -> Result<(), BackplaneError> {
        let ttl = item_ttl(conn.expires_at);
        self.client
            .put_item()
            .table_name(&self.topics)
            .item("pk", s(sub_pk(topic)))
            .item("sk", s(id))
            .item("user", s(user_json(&conn.user)))
            .item("exp", n(exp_attr(conn.expires_at)))
            .item("ttl", n(ttl))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        self.client
            .update_item()
            .table_name(&self.connections)
            .key("connectionId", s(id))
            .update_expression("ADD topics :t")
            .condition_expression("attribute_exists(connectionId)")
            .expression_attribute_values(
                ":t",
                aws_sdk_dynamodb::types::AttributeValue::Ss(vec![topic.to_owned()]),
            )
            .send()
            .await
            .map_err(|e| unavailable("UpdateItem", e))?;
        Ok(())
    }

    /// Removes `topic` from a connection's subscriptions (both items).
    pub async fn remove_subscription(&self, id: &str, topic: &str) -> Result<(), BackplaneError> {
        self.delete_subscription_item(id, topic).await?;
        let result = self
            .client
            .update_item()
            .table_name(&self.connections)
            .key("connectionId", s(id))
            .update_expression("DELETE topics :t")
            .condition_expression("attribute_exists(connectionId)")
            .expression_attribute_values(
                ":t",
                aws_sdk_dynamodb::types::AttributeValue::Ss(vec![topic.to_owned()]),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The connection is already gone: nothing left to update.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("UpdateItem", e)),
        }
    }

    async fn delete_subscription_item(&self, id: &str, topic: &str) -> Result<(), BackplaneError> {
        self.client
            .delete_item()
            .table_name(&self.topics)
            .key("pk", s(sub_pk(topic)))
            .key("sk", s(id))
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem", e))?;
        Ok(())
    }

    /// A fresh token for the same user: new expiry and groups on every item.
    pub async fn refresh(
        &self,
        id: &str,
        conn: &StoredConnection,
        user: &User,
        expires_at: Option<u64>,
    ) -> Result<(), BackplaneError> {
        self.put_connection_keeping_topics(id, user, expires_at, &conn.topics)
            .await?;
        for topic in &conn.topics {
            self.client
                .update_item()
                .table_name(&self.topics)
                .key("pk", s(sub_pk(topic)))
                .key("sk", s(id))
                .update_expression("SET #u = :u, #e = :e, #t = :t")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#u", "user")
                .expression_attribute_names("#e", "exp")
                .expression_attribute_names("#t", "ttl")
                .expression_attribute_values(":u", s(user_json(user)))
                .expression_attribute_values(":e", n(exp_attr(expires_at)))
                .expression_attribute_values(":t", n(item_ttl(expires_at)))
                .send()
                .await
                .map_err(|e| unavailable("UpdateItem", e))?;
        }
        Ok(())
    }

    /// The subscribe sent everything up to `after`: fan-out takes over from there,
    /// in one transaction with the condition that `after` is still the topic's
    /// latest seq. Every later event then commits after the hand-over, so its
    /// fan-out sees the subscription live; `Ok(false)`: events came meanwhile
    /// (send them, then try again).
    pub async fn set_live_if_latest(
        &self,
        id: &str,
        topic: &str,
        after: u64,
    ) -> Result<bool, BackplaneError> {
        use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem, Update};
        let bad =
            |e: aws_sdk_dynamodb::error::BuildError| BackplaneError::Unavailable(e.to_string());
        let mut check = ConditionCheck::builder()
            .table_name(&self.topics)
            .key("pk", s(crate::hub::dynamo::topic_pk(topic)))
            .key("sk", s("meta"));
        check = if after == 0 {
            check.condition_expression("attribute_not_exists(pk) OR seq = :s")
        } else {
            check.condition_expression("seq = :s")
        }
        .expression_attribute_values(":s", n(after));
        let update = Update::builder()
            .table_name(&self.topics)
            .key("pk", s(sub_pk(topic)))
            .key("sk", s(id))
            .update_expression("SET #l = :l")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#l", "live")
            .expression_attribute_values(":l", n(after));
        let result = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(check.build().map_err(bad)?)
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .update(update.build().map_err(bad)?)
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_transaction_canceled_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("TransactWriteItems", e)),
        }
    }

    async fn put_connection_keeping_topics(
        &self,
        id: &str,
        user: &User,
        expires_at: Option<u64>,
        topics: &[String],
    ) -> Result<(), BackplaneError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.connections)
            .item("connectionId", s(id))
            .item("user", s(user_json(user)))
            .item("exp", n(exp_attr(expires_at)))
            .item("connectedAt", n(now_secs()))
            .item("ttl", n(item_ttl(expires_at)));
        if !topics.is_empty() {
            req = req.item(
                "topics",
                aws_sdk_dynamodb::types::AttributeValue::Ss(topics.to_vec()),
            );
        }
        req.send().await.map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }

    /// Every live subscriber of `topic` (one paginated `Query`).
    pub async fn subscribers(&self, topic: &str) -> Result<Vec<Subscriber>, BackplaneError> {
        let now = now_secs();
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.topics)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(sub_pk(topic)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            for item in out.items() {
                if expired(item, now) {
                    continue;
                }
                let (Some(id), Some(user)) =
                    (get_s(item, "sk"), get_s(item, "user").and_then(parse_user))
                else {
                    continue;
                };
                found.push(Subscriber {
                    connection_id: id.to_owned(),
                    user,
                    expires_at: get_n(item, "exp").filter(|e| *e > 0),
                    live_after: get_n(item, "live"),
                });
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(found)
    }
}

/// Creates the two tables (on-demand billing, TTL on `ttl`) unless they exist:
/// `lambda-local` does this at start; in AWS the SAM template does.
pub async fn ensure_tables(
    client: &Client,
    connections: &str,
    topics: &str,
) -> Result<(), BackplaneError> {
    let string_key = |name: &str,
                      kind: KeyType|
     -> Result<(KeySchemaElement, AttributeDefinition), BackplaneError> {
        let bad =
            |e: aws_sdk_dynamodb::error::BuildError| BackplaneError::Unavailable(e.to_string());
        Ok((
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(bad)?,
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(bad)?,
        ))
    };
    let tables: HashMap<&str, Vec<(KeySchemaElement, AttributeDefinition)>> = HashMap::from([
        (
            connections,
            vec![string_key("connectionId", KeyType::Hash)?],
        ),
        (
            topics,
            vec![
                string_key("pk", KeyType::Hash)?,
                string_key("sk", KeyType::Range)?,
            ],
        ),
    ]);
    for (name, keys) in tables {
        let exists = client.describe_table().table_name(name).send().await;
        match exists {
            Ok(_) => continue,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) => {}
            Err(e) => return Err(unavailable("DescribeTable", e)),
        }
        let (schema, defs): (Vec<_>, Vec<_>) = keys.into_iter().unzip();
        client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(schema))
            .set_attribute_definitions(Some(defs))
            .send()
            .await
            .map_err(|e| unavailable("CreateTable", e))?;
        let spec = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| unavailable("UpdateTimeToLive", e))?;
    }
    Ok(())
}
