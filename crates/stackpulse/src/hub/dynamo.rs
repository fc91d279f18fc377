//! The DynamoDB backplane: the hub's [`Backplane`] for serverless mode, where every
//! request is a short-lived Lambda invocation and all state lives in one table.
//!
//! Items of the topics table (partition key `pk`, sort key `sk`, TTL attribute `ttl`):
//! - `pk = t#<topic>`, `sk = meta`: the topic's `seq`, `epoch`, `snap` (the folded
//!   [`Snapshot`] as JSON) and `acl`;
//! - `pk = t#<topic>`, `sk = e#<seq, 20 digits>`: one event's `frame`, as sent;
//! - `pk = l#<name>`, `sk = lease`: a poller lease, its fencing `token` and the
//!   `claim` it was taken under ([`LeaseClaims`]).
//!
//! A publish reads the meta item (strongly consistent), folds the event into the
//! snapshot and writes, in **one transaction**, the meta item on the condition that
//! its `seq` is still the one read (or that it does not exist yet), the event item,
//! and the deletion of the event that falls out of the bounded history. Concurrent
//! publishers on one topic lose the condition and retry with jitter, so seqs go up
//! by exactly 1 and the snapshot folds every event once, in seq order. Items carry a
//! `ttl` of `--history-retention` (renewed on the meta item by each publish); the
//! code never trusts an item whose `ttl` has passed (DynamoDB deletes lazily).
//!
//! Fan-out is not this module's job: after the transaction commits, the event goes
//! to the [`Broadcast`] plugged in with [`DynamoBackplane::set_broadcast`] (the
//! serverless connection fan-out), awaited, so a Lambda invocation does not end
//! before its subscribers were posted to.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use stackpulse_protocol::Acl;

use super::backplane::{
    Backplane, BackplaneError, Deliver, Draft, Lease, LeaseClaims, TopicInfo, TopicRead,
};
use super::event::StampedEvent;
use super::memory::new_epoch;
use super::snapshot::Snapshot;
use super::HistoryConfig;

/// Where a published event goes once it is stored (the serverless fan-out).
#[async_trait]
pub trait Broadcast: Send + Sync + 'static {
    /// Delivers `event` to the topic's subscribers; returns when it was handed on.
    async fn broadcast(&self, event: &Arc<StampedEvent>);
}

/// How many times a publish retries a lost seq condition before giving up.
const MAX_PUBLISH_ATTEMPTS: u32 = 200;

/// How many times one publish transaction is sent again after a server error
/// (beyond the SDK's own retries).
const SERVER_ERROR_RETRIES: u32 = 8;

/// The DynamoDB backplane (see the module doc).
pub struct DynamoBackplane {
    client: Client,
    table: String,
    history: HistoryConfig,
    sink: Arc<dyn Deliver>,
    broadcast: OnceLock<Arc<dyn Broadcast>>,
    /// Claims of lease acquires whose answer was lost.
    claims: LeaseClaims,
}

/// An item: attribute name → value.
pub type Item = HashMap<String, AttributeValue>;

/// The current time in whole seconds since the epoch (DynamoDB TTL's unit).
pub fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn now_millis() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// A string attribute.
pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A string attribute of an item.
pub fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// A number attribute of an item.
pub fn get_n(item: &Item, key: &str) -> Option<u64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether an item's `ttl` has passed (so DynamoDB may still return it, but it is gone).
pub fn expired(item: &Item, now: u64) -> bool {
    get_n(item, "ttl").is_some_and(|t| t <= now)
}

/// Turns any SDK failure into the backplane's "unavailable", with its code.
pub fn unavailable<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> BackplaneError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let detail = match (e.as_service_error(), status) {
        (Some(se), _) if se.code().is_some() => format!(
            "{}: {}",
            se.code().unwrap_or_default(),
            se.message().unwrap_or("")
        ),
        (_, Some(status)) => format!("HTTP {status}: {e:?}"),
        (_, None) => format!("{e}"),
    };
    BackplaneError::Unavailable(format!("DynamoDB {what}: {detail}"))
}

/// The partition key of a topic's meta item and events (its sort key is `meta`).
pub fn topic_pk(topic: &str) -> String {
    format!("t#{topic}")
}

fn event_sk(seq: u64) -> String {
    format!("e#{seq:020}")
}

fn lease_pk(name: &str) -> String {
    format!("l#{name}")
}

/// The meta item of a topic, parsed.
struct Meta {
    seq: u64,
    epoch: Arc<str>,
    snapshot: Snapshot,
    acl: Option<Acl>,
}

fn parse_meta(item: &Item) -> Result<Meta, BackplaneError> {
    let bad = |what: &str| BackplaneError::Unavailable(format!("corrupt topic item: {what}"));
    let seq = get_n(item, "seq").ok_or_else(|| bad("seq"))?;
    let epoch = get_s(item, "epoch").ok_or_else(|| bad("epoch"))?;
    let snapshot = match get_s(item, "snap") {
        Some(json) => serde_json::from_str(json).map_err(|_| bad("snap"))?,
        None => Snapshot::default(),
    };
    let acl = match get_s(item, "acl") {
        Some(json) => Some(serde_json::from_str(json).map_err(|_| bad("acl"))?),
        None => None,
    };
    Ok(Meta {
        seq,
        epoch: Arc::from(epoch),
        snapshot,
        acl,
    })
}

impl DynamoBackplane {
    /// A backplane on `table` (the topics table); local deliveries (wakes) go to `sink`.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        history: HistoryConfig,
        sink: Arc<dyn Deliver>,
    ) -> DynamoBackplane {
        DynamoBackplane {
            client,
            table: table.into(),
            history,
            sink,
            broadcast: OnceLock::new(),
            claims: LeaseClaims::default(),
        }
    }

    /// Plugs in the fan-out (once; later calls are ignored).
    pub fn set_broadcast(&self, broadcast: Arc<dyn Broadcast>) {
        let _ = self.broadcast.set(broadcast);
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn retention_ttl(&self) -> u64 {
        now_secs() + self.history.retention.as_secs().max(1)
    }

    async fn meta(&self, topic: &str) -> Result<Option<Meta>, BackplaneError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(topic_pk(topic)))
            .key("sk", s("meta"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        match out.item {
            Some(item) if !expired(&item, now_secs()) => parse_meta(&item).map(Some),
            _ => Ok(None),
        }
    }

    /// One attempt at the publish transaction; `Ok(None)` when a concurrent
    /// publisher won the seq (retry).
    async fn try_publish(
        &self,
        topic: &str,
        draft: &Draft,
    ) -> Result<Option<StampedEvent>, BackplaneError> {
        let current = self.meta(topic).await?;
        let (old_seq, epoch, mut snapshot, acl) = match current {
            Some(m) => (Some(m.seq), m.epoch, m.snapshot, m.acl),
            None => (None, new_epoch(), Snapshot::default(), None),
        };
        let seq = old_seq.unwrap_or(0) + 1;
        let timestamp = stackpulse_protocol::time::now();
        snapshot.apply(seq, &timestamp, &draft.event_type, &draft.data);
        let acl = draft.acl.clone().or(acl);
        let event = StampedEvent::new(
            Arc::from(topic),
            seq,
            epoch.clone(),
            &draft.event_type,
            &timestamp,
            &draft.data,
        )
        .with_acl(draft.acl.clone());
        let ttl = self.retention_ttl();
        let mut meta: Item = HashMap::from([
            ("pk".into(), s(topic_pk(topic))),
            ("sk".into(), s("meta")),
            ("seq".into(), n(seq)),
            ("epoch".into(), s(&*epoch)),
            ("snap".into(), s(json(&snapshot))),
            ("ttl".into(), n(ttl)),
        ]);
        if let Some(acl) = &acl {
            meta.insert("acl".into(), s(json(acl)));
        }
        let mut put_meta = Put::builder().table_name(&self.table).set_item(Some(meta));
        put_meta = match old_seq {
            None => put_meta.condition_expression("attribute_not_exists(pk)"),
            Some(old) => put_meta
                .condition_expression("seq = :old")
                .expression_attribute_values(":old", n(old)),
        };
        let put_event = Put::builder()
            .table_name(&self.table)
            .item("pk", s(topic_pk(topic)))
            .item("sk", s(event_sk(seq)))
            .item("frame", s(event.frame.as_str()))
            .item("type", s(&draft.event_type))
            .item("ttl", n(ttl));
        let mut items = vec![
            TransactWriteItem::builder()
                .put(put_meta.build().map_err(build_error)?)
                .build(),
            TransactWriteItem::builder()
                .put(put_event.build().map_err(build_error)?)
                .build(),
        ];
        let max = u64::try_from(self.history.max_events)
            .unwrap_or(u64::MAX)
            .max(1);
        if seq > max {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(topic_pk(topic)))
                .key("sk", s(event_sk(seq - max)))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        if let Some(fence) = &draft.fence {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .key("pk", s(lease_pk(&fence.name)))
                .key("sk", s("lease"))
                .condition_expression("#t = :t AND #u > :now")
                .expression_attribute_names("#t", "token")
                .expression_attribute_names("#u", "until")
                .expression_attribute_values(":t", n(fence.token))
                .expression_attribute_values(":now", n(now_millis()))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().condition_check(check).build());
        }
        // The same request (same idempotency token) is sent again after a server
        // error: if an earlier try committed, DynamoDB answers it as done.
        let token = {
            use rand::distr::{Alphanumeric, SampleString};
            Alphanumeric.sample_string(&mut rand::rng(), 32)
        };
        let request = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(token);
        let mut result = request.clone().send().await;
        for attempt in 0..SERVER_ERROR_RETRIES {
            let server_error = matches!(&result, Err(e) if e.raw_response().is_some_and(|r| r.status().is_server_error()));
            if !server_error {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
            result = request.clone().send().await;
        }
        match result {
            Ok(_) => Ok(Some(event)),
            Err(e) => {
                let Some(se) = e.as_service_error() else {
                    return Err(unavailable("TransactWriteItems", e));
                };
                if !se.is_transaction_canceled_exception() {
                    return Err(unavailable("TransactWriteItems", e));
                }
                // Which condition failed: the fence (last item) or the seq.
                let reasons = match se {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                        t.cancellation_reasons().to_vec()
                    }
                    _ => Vec::new(),
                };
                let fence_failed = draft.fence.is_some()
                    && reasons
                        .last()
                        .and_then(|r| r.code())
                        .is_some_and(|c| c == "ConditionalCheckFailed");
                if let (true, Some(fence)) = (fence_failed, &draft.fence) {
                    return Err(BackplaneError::Fenced(fence.name.clone()));
                }
                Ok(None)
            }
        }
    }
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> BackplaneError {
    BackplaneError::Unavailable(format!("DynamoDB request: {e}"))
}

/// A stored JSON attribute (a snapshot, an ACL). Serializing them cannot fail: they
/// are maps of JSON values and strings.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[async_trait]
impl Backplane for DynamoBackplane {
    async fn publish(
        &self,
        topic: &str,
        draft: Draft,
    ) -> Result<Arc<StampedEvent>, BackplaneError> {
        let mut backoff = Duration::from_millis(2);
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            if let Some(event) = self.try_publish(topic, &draft).await? {
                let event = Arc::new(event);
                if let Some(b) = self.broadcast.get() {
                    b.broadcast(&event).await;
                }
                return Ok(event);
            }
            let jitter = rand::random_range(0..=backoff.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
        Err(BackplaneError::Unavailable(format!(
            "topic {topic} is too contended: no seq after {MAX_PUBLISH_ATTEMPTS} attempts"
        )))
    }

    async fn read(&self, topic: &str, since: Option<u64>) -> Result<TopicRead, BackplaneError> {
        let Some(meta) = self.meta(topic).await? else {
            return Ok(TopicRead::unborn());
        };
        let latest = meta.seq;
        let mut events = Vec::new();
        if let Some(since) = since.filter(|s| *s < latest) {
            let now = now_secs();
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :p AND sk BETWEEN :a AND :b")
                    .expression_attribute_values(":p", s(topic_pk(topic)))
                    .expression_attribute_values(":a", s(event_sk(since + 1)))
                    .expression_attribute_values(":b", s(event_sk(latest)))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| unavailable("Query", e))?;
                for item in out.items() {
                    if expired(item, now) {
                        continue;
                    }
                    let seq = get_s(item, "sk")
                        .and_then(|k| k.strip_prefix("e#"))
                        .and_then(|k| k.parse::<u64>().ok());
                    let (Some(seq), Some(frame), Some(t)) =
                        (seq, get_s(item, "frame"), get_s(item, "type"))
                    else {
                        continue;
                    };
                    events.push(Arc::new(StampedEvent::from_frame(
                        Arc::from(topic),
                        seq,
                        meta.epoch.clone(),
                        t,
                        frame.into(),
                    )));
                }
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        // History is contiguous up to `latest`: where the first kept event is, or
        // (nothing kept after `since`) right after `latest`.
        let first_retained = match (since, events.first()) {
            (_, Some(first)) => first.seq,
            (Some(s), None) if s >= latest => s + 1,
            _ => latest + 1,
        };
        let snapshot =
            (meta.seq > 0).then(|| meta.snapshot.encode(topic, self.history.snapshot_budget));
        Ok(TopicRead {
            epoch: meta.epoch,
            latest_seq: latest,
            first_retained: first_retained.min(latest + 1),
            events,
            snapshot,
            acl: meta.acl,
        })
    }

    async fn watch(&self, _topic: &str) -> Result<(), BackplaneError> {
        // Subscribers are items of the connections' store; nothing to do here.
        Ok(())
    }

    async fn unwatch(&self, _topic: &str) {}

    async fn info(&self, topic: &str) -> Result<Option<TopicInfo>, BackplaneError> {
        Ok(self.meta(topic).await?.map(|m| {
            let retained = usize::try_from(m.seq)
                .unwrap_or(usize::MAX)
                .min(self.history.max_events);
            TopicInfo {
                epoch: m.epoch,
                latest_seq: m.seq,
                retained,
                snapshot_type: m.snapshot.event_type(),
                snapshot: Some(m.snapshot.data().clone()),
                acl: m.acl,
            }
        }))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackplaneError> {
        let now = now_millis();
        let until = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        // Free, expired, or held under this node's claim (an acquire whose answer
        // was lost: `LeaseClaims`).
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(name)))
            .key("sk", s("lease"))
            .update_expression("SET #u = :until, #ttl = :ttl, #c = :claim ADD #t :one")
            .condition_expression("attribute_not_exists(pk) OR #u <= :now OR #c = :claim")
            .expression_attribute_names("#u", "until")
            .expression_attribute_names("#t", "token")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_names("#c", "claim")
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(until / 1000 + 3600))
            .expression_attribute_values(":claim", n(self.claims.claim(name)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        let answered = match &result {
            Ok(_) => true,
            Err(e) => e
                .as_service_error()
                .is_some_and(|se| se.is_conditional_check_failed_exception()),
        };
        if answered {
            self.claims.answered(name);
        }
        match result {
            Ok(out) => {
                let token = out
                    .attributes
                    .as_ref()
                    .and_then(|a| get_n(a, "token"))
                    .unwrap_or(1);
                Ok(Some(Lease {
                    name: name.to_owned(),
                    token,
                }))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(unavailable("UpdateItem", e)),
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackplaneError> {
        let now = now_millis();
        let until = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(&lease.name)))
            .key("sk", s("lease"))
            .update_expression("SET #u = :until, #ttl = :ttl")
            .condition_expression("#t = :t AND #u > :now")
            .expression_attribute_names("#u", "until")
            .expression_attribute_names("#t", "token")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":t", n(lease.token))
            .expression_attribute_values(":ttl", n(until / 1000 + 3600))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("UpdateItem", e)),
        }
    }

    async fn release_lease(&self, lease: &Lease) {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(&lease.name)))
            .key("sk", s("lease"))
            .update_expression("SET #u = :zero")
            .condition_expression("#t = :t")
            .expression_attribute_names("#u", "until")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":t", n(lease.token))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(error = ?e, lease = %lease.name, "lease release failed");
        }
    }

    async fn wake(&self, topic: &str) -> Result<(), BackplaneError> {
        // One process per invocation: the only poller to wake is this one's.
        self.sink.wake(topic);
        Ok(())
    }

    fn topic_count(&self) -> usize {
        0
    }

    async fn ready(&self) -> Result<(), BackplaneError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s("ready"))
            .key("sk", s("ready"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("GetItem", e))
    }
}
