//! The Redis backplane: many stackpulse nodes sharing topics through one Redis.
//!
//! Per topic `T` Redis holds `sp:{T}:seq` (the counter), `sp:{T}:epoch`,
//! `sp:{T}:stream` (history: a stream whose entry id is `<seq>-0`, trimmed to the
//! history size), `sp:{T}:snap` + `sp:{T}:snapseq` (the folded snapshot and the seq
//! it is current to) and `sp:{T}:acl`; all of them expire together `retention`
//! after the topic's last event, so a counter never restarts under an old epoch.
//!
//! Data flow. **Publish** is one Lua script: check the poller lease (fencing),
//! create the epoch if missing, `INCR` the seq, build the event frame (so it is
//! serialized once, by Redis, for every node), `XADD` it, refresh the expiries and
//! `PUBLISH` it on `sp:{T}:ch`; concurrent publishers on several nodes therefore get
//! contiguous seqs. Afterwards the publishing node folds the snapshot forward (a
//! compare-and-set script, so nodes racing on one topic never go backwards).
//! **Delivery**: each node keeps one pub/sub connection and subscribes to a topic's
//! channel only while it has local subscribers ([`Backplane::watch`]). Pub/sub is
//! at-most-once: a node that notices a seq gap repairs the subscription from the
//! stream (see `subscription`), and after its pub/sub connection was lost it
//! resynchronizes every live subscription ([`Deliver::resync_all`]). **Read** is
//! one Lua script returning the epoch, the latest seq, the oldest retained seq and
//! the entries after `since`, atomically. **Leases** are `SET NX PX` keys holding a
//! fencing token from a global counter, and the claim it was taken under (an
//! acquire whose answer was lost is given to the same node again: [`LeaseClaims`]);
//! renew and release check the token.
//! **Wakes** (a push asking a stack's poller to poll now, [`Backplane::wake`]) are
//! `PUBLISH sp:wake <topic>`; every node's pub/sub connection is subscribed to
//! `sp:wake` for its whole life, and hands each one to [`Deliver::wake`] (the node
//! that runs the poller polls; the poller's wake signal coalesces repeats, and a
//! wake for a topic whose `PUBLISH` is still in flight is folded into it).
//!
//! When Redis is unreachable, commands fail with [`BackplaneError::Unavailable`]
//! (publish answers 503, subscribe an error), `/readyz` reports it, the command
//! connection reconnects with backoff and the pub/sub task reconnects, resubscribes
//! and resynchronizes. Local sockets stay open throughout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Script, Value};
use serde_json::Value as Json;
use stackpulse_protocol::Acl;

use super::backplane::{
    Backplane, BackplaneError, Deliver, Draft, Lease, LeaseClaims, TopicInfo, TopicRead,
};
use super::event::StampedEvent;
use super::memory::new_epoch;
use super::snapshot::Snapshot;
use super::HistoryConfig;

/// How long a single Redis command may take before the node treats Redis as down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

const PUBLISH: &str = r#"
-- KEYS: seq epoch stream snap snapseq acl lease ; ARGV: epoch_candidate type_json
-- topic_json data_json timestamp max_len retention_ms acl_json lease_token channel type
if ARGV[9] ~= '' then
  if redis.call('GET', KEYS[7]) ~= ARGV[9] then
    return redis.error_reply('FENCED lease lost')
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[2])
local seq = redis.call('INCR', KEYS[1])
local frame = '{"type":' .. ARGV[2] .. ',"deployment_id":' .. ARGV[3] .. ',"seq":' .. seq ..
  ',"timestamp":"' .. ARGV[5] .. '","data":' .. ARGV[4] .. '}'
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[6], seq .. '-0', 'f', frame, 't', ARGV[11])
if ARGV[8] ~= '' then redis.call('SET', KEYS[6], ARGV[8]) end
for i = 1, 6 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
end
redis.call('PUBLISH', ARGV[10], seq .. '\n' .. epoch .. '\n' .. ARGV[11] .. '\n' .. ARGV[8] .. '\n' .. frame)
return {seq, epoch, frame}
"#;

const READ: &str = r#"
-- KEYS: seq epoch stream acl ; ARGV: epoch_candidate retention_ms first_wanted ('' = none)
-- unborn_ttl_ms. A topic nobody published to keeps only its epoch, for unborn_ttl_ms
-- after the last read (a subscriber that outlives it resyncs at the first event).
redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
local epoch = redis.call('GET', KEYS[2])
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = latest + 1
local head = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local out = {latest, epoch, first, redis.call('GET', KEYS[4]) or ''}
if ARGV[3] ~= '' then
  local entries = redis.call('XRANGE', KEYS[3], ARGV[3] .. '-0', '+')
  for _, e in ipairs(entries) do
    local f, t = '', ''
    for i = 1, #e[2], 2 do
      if e[2][i] == 'f' then f = e[2][i + 1] elseif e[2][i] == 't' then t = e[2][i + 1] end
    end
    table.insert(out, tonumber(string.match(e[1], '^(%d+)')))
    table.insert(out, t)
    table.insert(out, f)
  end
end
return out
"#;

/// How long the epoch of a topic nobody published to lives after the last read
/// (a subscribe) of it; its first publish makes it last as long as the history.
const UNBORN_TTL: Duration = Duration::from_secs(600);

const SNAPSHOT_CAS: &str = r#"
-- KEYS: snap snapseq ; ARGV: expected_seq new_seq json retention_ms
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return 1
"#;

const LEASE_ACQUIRE: &str = r#"
-- KEYS: lease counter claim ; ARGV: ttl_ms claim
-- Free, or held under the caller's claim (an acquire whose answer was lost).
if redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[1])
    or redis.call('GET', KEYS[3]) == ARGV[2] then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[1])
  return token
end
return false
"#;

const LEASE_RENEW: &str = r#"
-- KEYS: lease claim ; ARGV: token ttl_ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const LEASE_RELEASE: &str = r#"
-- KEYS: lease claim ; ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

struct Scripts {
    publish: Script,
    read: Script,
    snapshot_cas: Script,
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
}

/// The Redis keys of one topic.
struct Keys {
    seq: String,
    epoch: String,
    stream: String,
    snap: String,
    snapseq: String,
    acl: String,
    channel: String,
}

impl Keys {
    fn of(topic: &str) -> Keys {
        let k = |suffix: &str| format!("sp:{{{topic}}}:{suffix}");
        Keys {
            seq: k("seq"),
            epoch: k("epoch"),
            stream: k("stream"),
            snap: k("snap"),
            snapseq: k("snapseq"),
            acl: k("acl"),
            channel: k("ch"),
        }
    }
}

/// The topic of a channel name `sp:{T}:ch`.
fn topic_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("sp:{")?.strip_suffix("}:ch")
}

/// The pub/sub channel of poller wakes (payload: the topic).
const WAKE_CHANNEL: &str = "sp:wake";

fn lease_key(name: &str) -> String {
    format!("sp:lease:{{{name}}}")
}

/// The claim the lease `name` was taken under ([`LeaseClaims`]).
fn lease_claim_key(name: &str) -> String {
    format!("sp:lease-claim:{{{name}}}")
}

fn unavailable(e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unavailable(format!("redis: {e}"))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub struct RedisBackplane {
    client: redis::Client,
    conn: ConnectionManager,
    history: HistoryConfig,
    sink: Arc<dyn Deliver>,
    scripts: Scripts,
    /// Local interest per topic (the pub/sub channel is subscribed while > 0).
    watched: parking_lot::Mutex<HashMap<Arc<str>, usize>>,
    /// The pub/sub connection's command half, while connected.
    pubsub: tokio::sync::Mutex<Option<PubSubSink>>,
    pubsub_up: AtomicBool,
    /// Topics whose snapshot fold is already scheduled (coalesces publishes).
    folding: DashMap<Arc<str>, ()>,
    /// Topics with a wake `PUBLISH` in flight: a wake meanwhile is coalesced into
    /// it (the poll it causes starts after that wake arrived anyway).
    waking: DashMap<String, ()>,
    /// A handle on itself, for the background snapshot folds.
    me: std::sync::OnceLock<Weak<RedisBackplane>>,
    /// This process's id in presence records.
    node_id: String,
    /// Topics this node reported subscribers for last time (to clear them).
    reported: parking_lot::Mutex<Vec<Arc<str>>>,
    /// Claims of lease acquires whose answer was lost.
    claims: LeaseClaims,
}

/// A presence record older than this belongs to a dead node and is ignored.
const PRESENCE_FRESH_MS: i64 = 15_000;

/// Sums the fresh `count:unix_ms` values of a presence hash.
fn sum_fresh(entries: &HashMap<String, String>, now_ms: i64) -> (usize, usize) {
    let mut nodes = 0;
    let mut total = 0;
    for value in entries.values() {
        let Some((count, at)) = value.split_once(':') else {
            continue;
        };
        let (Ok(count), Ok(at)) = (count.parse::<usize>(), at.parse::<i64>()) else {
            continue;
        };
        if now_ms - at < PRESENCE_FRESH_MS {
            nodes += 1;
            total += count;
        }
    }
    (nodes, total)
}

impl RedisBackplane {
    /// Connects lazily to `url` (`redis://` or `rediss://`, with password and db)
    /// and starts the pub/sub task. Fails only on an invalid URL: an unreachable
    /// Redis is retried in the background and reported by `ready`.
    pub fn start(
        url: &str,
        history: HistoryConfig,
        sink: Arc<dyn Deliver>,
    ) -> Result<Arc<RedisBackplane>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid --redis-url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("cannot set up the Redis connection: {e}"))?;
        let backplane = Arc::new(RedisBackplane {
            client,
            conn,
            history,
            sink,
            scripts: Scripts {
                publish: Script::new(PUBLISH),
                read: Script::new(READ),
                snapshot_cas: Script::new(SNAPSHOT_CAS),
                lease_acquire: Script::new(LEASE_ACQUIRE),
                lease_renew: Script::new(LEASE_RENEW),
                lease_release: Script::new(LEASE_RELEASE),
            },
            watched: parking_lot::Mutex::new(HashMap::new()),
            waking: DashMap::new(),
            pubsub: tokio::sync::Mutex::new(None),
            pubsub_up: AtomicBool::new(false),
            folding: DashMap::new(),
            me: std::sync::OnceLock::new(),
            node_id: format!("node-{}", new_epoch()),
            reported: parking_lot::Mutex::new(Vec::new()),
            claims: LeaseClaims::default(),
        });
        let _ = backplane.me.set(Arc::downgrade(&backplane));
        tokio::spawn(pubsub_task(Arc::downgrade(&backplane)));
        Ok(backplane)
    }

    fn retention_ms(&self) -> u64 {
        u64::try_from(self.history.retention.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn invoke(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, BackplaneError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async::<Value>(&mut conn))
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.to_string().contains("FENCED") => {
                Err(BackplaneError::Fenced(e.to_string()))
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("command timed out")),
        }
    }

    async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, BackplaneError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("command timed out")),
        }
    }

    /// The stored snapshot folded forward to at least `latest` with the stream.
    async fn snapshot_at(
        &self,
        topic: &str,
        latest: u64,
    ) -> Result<(Snapshot, u64), BackplaneError> {
        let keys = Keys::of(topic);
        let stored: (Option<String>, Option<u64>) = self
            .command(redis::cmd("MGET").arg(&keys.snap).arg(&keys.snapseq))
            .await?;
        let base_seq = stored.1.unwrap_or(0);
        let mut snapshot = stored
            .0
            .and_then(|json| serde_json::from_str::<Snapshot>(&json).ok())
            .unwrap_or_default();
        if base_seq >= latest {
            return Ok((snapshot, base_seq));
        }
        let entries: Vec<(String, HashMap<String, String>)> = self
            .command(
                redis::cmd("XRANGE")
                    .arg(&keys.stream)
                    .arg(format!("{}-0", base_seq + 1))
                    .arg(format!("{latest}-0")),
            )
            .await?;
        for (id, fields) in entries {
            let Some(seq) = id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let Some(frame) = fields.get("f") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Json>(frame) else {
                continue;
            };
            let (Some(t), Some(ts), Some(Json::Object(data))) = (
                event.get("type").and_then(Json::as_str),
                event.get("timestamp").and_then(Json::as_str),
                event.get("data"),
            ) else {
                continue;
            };
            snapshot.apply(seq, ts, t, data);
        }
        Ok((snapshot, base_seq))
    }

    /// Folds the stored snapshot forward to the latest event (best effort; the
    /// compare-and-set makes racing nodes harmless).
    async fn fold(&self, topic: &str) -> Result<(), BackplaneError> {
        for _ in 0..5 {
            let keys = Keys::of(topic);
            let latest: Option<u64> = self.command(redis::cmd("GET").arg(&keys.seq)).await?;
            let latest = latest.unwrap_or(0);
            let (snapshot, base) = self.snapshot_at(topic, latest).await?;
            if snapshot.seq <= base {
                return Ok(());
            }
            let json = serde_json::to_string(&snapshot).map_err(unavailable)?;
            let mut inv = self.scripts.snapshot_cas.prepare_invoke();
            inv.key(&keys.snap)
                .key(&keys.snapseq)
                .arg(base)
                .arg(snapshot.seq)
                .arg(json)
                .arg(self.retention_ms());
            if as_u64(&self.invoke(inv).await?) == Some(1) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn schedule_fold(&self, topic: Arc<str>) {
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        if self.folding.insert(topic.clone(), ()).is_some() {
            return;
        }
        tokio::spawn(async move {
            // Events published while folding are picked up by the next loop turn.
            tokio::task::yield_now().await;
            me.folding.remove(&topic);
            if let Err(e) = me.fold(&topic).await {
                tracing::debug!(%topic, error = %e, "snapshot fold failed");
            }
        });
    }

    /// Whether the pub/sub link is up (for `/readyz`).
    pub fn pubsub_connected(&self) -> bool {
        self.pubsub_up.load(Ordering::Acquire)
    }
}

/// Turns one pub/sub message into a stamped event.
fn decode_message(channel: &str, payload: &[u8]) -> Option<StampedEvent> {
    let topic = topic_of_channel(channel)?;
    let text = std::str::from_utf8(payload).ok()?;
    // seq, epoch, type, the ACL the event set ('' for none; JSON has no raw
    // newline), frame.
    let mut parts = text.splitn(5, '\n');
    let seq = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let event_type = parts.next()?;
    let acl = parts.next()?;
    let frame = parts.next()?;
    let acl = match acl {
        "" => None,
        json => Some(serde_json::from_str::<Acl>(json).ok()?),
    };
    Some(
        StampedEvent::from_frame(
            Arc::from(topic),
            seq,
            Arc::from(epoch),
            event_type,
            Utf8Bytes::from(frame.to_owned()),
        )
        .with_acl(acl),
    )
}

/// Keeps one pub/sub connection up: subscribe to every watched topic, deliver
/// messages, and after a reconnect resynchronize every live subscription.
async fn pubsub_task(me: Weak<RedisBackplane>) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let Some(bp) = me.upgrade() else { return };
        let pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, bp.client.get_async_pubsub()).await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis pub/sub connect failed; retrying in {backoff:?}");
                drop(bp);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(_) => {
                drop(bp);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut slot = bp.pubsub.lock().await;
            let topics: Vec<Arc<str>> = bp.watched.lock().keys().cloned().collect();
            let mut ok = sink.subscribe(WAKE_CHANNEL).await.is_ok();
            for topic in topics {
                if sink.subscribe(Keys::of(&topic).channel).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok {
                drop(slot);
                drop(bp);
                tokio::time::sleep(backoff).await;
                continue;
            }
            *slot = Some(sink);
        }
        bp.pubsub_up.store(true, Ordering::Release);
        backoff = Duration::from_millis(100);
        if connected_before {
            metrics::counter!("stackpulse_redis_pubsub_reconnects_total").increment(1);
            tracing::info!("redis pub/sub reconnected; resynchronizing subscriptions");
            bp.sink.resync_all();
        } else {
            tracing::info!("redis pub/sub connected");
        }
        connected_before = true;
        let sink_target = bp.sink.clone();
        drop(bp);
        while let Some(msg) = stream.next().await {
            let channel = msg.get_channel_name().to_owned();
            if channel == WAKE_CHANNEL {
                if let Ok(topic) = std::str::from_utf8(msg.get_payload_bytes()) {
                    sink_target.wake(topic);
                }
                continue;
            }
            if let Some(event) = decode_message(&channel, msg.get_payload_bytes()) {
                sink_target.deliver(&Arc::new(event));
            }
        }
        let Some(bp) = me.upgrade() else { return };
        bp.pubsub_up.store(false, Ordering::Release);
        *bp.pubsub.lock().await = None;
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        topic: &str,
        draft: Draft,
    ) -> Result<Arc<StampedEvent>, BackplaneError> {
        let keys = Keys::of(topic);
        let type_json = serde_json::to_string(&draft.event_type).map_err(unavailable)?;
        let topic_json = serde_json::to_string(topic).map_err(unavailable)?;
        let data_json = serde_json::to_string(&draft.data).map_err(unavailable)?;
        let acl_json = match &draft.acl {
            Some(acl) => serde_json::to_string(acl).map_err(unavailable)?,
            None => String::new(),
        };
        let (lease_key_name, lease_token) = match &draft.fence {
            Some(l) => (lease_key(&l.name), l.token.to_string()),
            None => (lease_key("-"), String::new()),
        };
        let timestamp = stackpulse_protocol::time::now();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.stream)
            .key(&keys.snap)
            .key(&keys.snapseq)
            .key(&keys.acl)
            .key(&lease_key_name)
            .arg(&*new_epoch())
            .arg(type_json)
            .arg(topic_json)
            .arg(data_json)
            .arg(&timestamp)
            .arg(self.history.max_events)
            .arg(self.retention_ms())
            .arg(acl_json)
            .arg(lease_token)
            .arg(&keys.channel)
            .arg(&draft.event_type);
        let reply = self.invoke(inv).await?;
        let Value::Array(items) = reply else {
            return Err(unavailable("unexpected publish reply"));
        };
        let (Some(seq), Some(epoch), Some(frame)) = (
            items.first().and_then(as_u64),
            items.get(1).and_then(as_string),
            items.get(2).and_then(as_string),
        ) else {
            return Err(unavailable("unexpected publish reply"));
        };
        let event = Arc::new(
            StampedEvent::from_frame(
                Arc::from(topic),
                seq,
                Arc::from(epoch),
                &draft.event_type,
                Utf8Bytes::from(frame),
            )
            .with_acl(draft.acl),
        );
        self.schedule_fold(event.topic.clone());
        Ok(event)
    }

    async fn read(&self, topic: &str, since: Option<u64>) -> Result<TopicRead, BackplaneError> {
        let keys = Keys::of(topic);
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.stream)
            .key(&keys.acl)
            .arg(&*new_epoch())
            .arg(self.retention_ms())
            // The first seq wanted, computed here: Lua would print a large number
            // as `1e+14`, which XRANGE refuses.
            .arg(
                since
                    .map(|s| s.saturating_add(1).to_string())
                    .unwrap_or_default(),
            )
            .arg(u64::try_from(UNBORN_TTL.as_millis()).unwrap_or(600_000));
        let Value::Array(items) = self.invoke(inv).await? else {
            return Err(unavailable("unexpected read reply"));
        };
        let (Some(latest), Some(epoch), Some(first)) = (
            items.first().and_then(as_u64),
            items.get(1).and_then(as_string),
            items.get(2).and_then(as_u64),
        ) else {
            return Err(unavailable("unexpected read reply"));
        };
        let acl = items
            .get(3)
            .and_then(as_string)
            .filter(|s| !s.is_empty())
            .and_then(|s| serde_json::from_str::<Acl>(&s).ok());
        let epoch: Arc<str> = Arc::from(epoch);
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut events = Vec::new();
        for chunk in items.get(4..).unwrap_or_default().chunks(3) {
            let [seq, t, frame] = chunk else { break };
            let (Some(seq), Some(t), Some(frame)) = (as_u64(seq), as_string(t), as_string(frame))
            else {
                continue;
            };
            events.push(Arc::new(StampedEvent::from_frame(
                topic_arc.clone(),
                seq,
                epoch.clone(),
                &t,
                Utf8Bytes::from(frame),
            )));
        }
        let (snapshot, latest) = if latest == 0 {
            (None, 0)
        } else {
            let (snap, _) = self.snapshot_at(topic, latest).await?;
            // A snapshot folded by another node may be newer than our read: it is
            // current to its own seq, and newer events arrive live.
            let at = snap.seq.max(latest);
            (Some(snap.encode(topic, self.history.snapshot_budget)), at)
        };
        Ok(TopicRead {
            epoch,
            latest_seq: latest,
            first_retained: first,
            events,
            snapshot,
            acl,
        })
    }

    async fn watch(&self, topic: &str) -> Result<(), BackplaneError> {
        let first = {
            let mut watched = self.watched.lock();
            let n = watched.entry(Arc::from(topic)).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let mut slot = self.pubsub.lock().await;
            if let Some(sink) = slot.as_mut() {
                // On failure the pub/sub task resubscribes when it reconnects.
                if let Err(e) = sink.subscribe(Keys::of(topic).channel).await {
                    tracing::warn!(%topic, error = %e, "redis SUBSCRIBE failed");
                }
            }
        }
        Ok(())
    }

    async fn unwatch(&self, topic: &str) {
        let last = {
            let mut watched = self.watched.lock();
            match watched.get_mut(topic) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    watched.remove(topic);
                    true
                }
                None => false,
            }
        };
        if last {
            let mut slot = self.pubsub.lock().await;
            // A watch may have come back meanwhile.
            if self.watched.lock().contains_key(topic) {
                return;
            }
            if let Some(sink) = slot.as_mut() {
                let _ = sink.unsubscribe(Keys::of(topic).channel).await;
            }
        }
    }

    async fn info(&self, topic: &str) -> Result<Option<TopicInfo>, BackplaneError> {
        let keys = Keys::of(topic);
        let (seq, epoch, acl): (Option<u64>, Option<String>, Option<String>) = self
            .command(
                redis::cmd("MGET")
                    .arg(&keys.seq)
                    .arg(&keys.epoch)
                    .arg(&keys.acl),
            )
            .await?;
        let (Some(latest), Some(epoch)) = (seq, epoch) else {
            return Ok(None);
        };
        let retained: u64 = self.command(redis::cmd("XLEN").arg(&keys.stream)).await?;
        let (snapshot, _) = self.snapshot_at(topic, latest).await?;
        Ok(Some(TopicInfo {
            epoch: Arc::from(epoch),
            latest_seq: latest,
            retained: usize::try_from(retained).unwrap_or(usize::MAX),
            snapshot_type: snapshot.event_type(),
            snapshot: Some(snapshot.data().clone()),
            acl: acl.and_then(|s| serde_json::from_str(&s).ok()),
        }))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackplaneError> {
        let mut inv = self.scripts.lease_acquire.prepare_invoke();
        inv.key(lease_key(name))
            .key("sp:lease-token")
            .key(lease_claim_key(name))
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(self.claims.claim(name));
        let answer = self.invoke(inv).await?;
        self.claims.answered(name);
        Ok(as_u64(&answer).map(|token| Lease {
            name: name.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackplaneError> {
        let mut inv = self.scripts.lease_renew.prepare_invoke();
        inv.key(lease_key(&lease.name))
            .key(lease_claim_key(&lease.name))
            .arg(lease.token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(as_u64(&self.invoke(inv).await?) == Some(1))
    }

    async fn wake(&self, topic: &str) -> Result<(), BackplaneError> {
        if self.waking.insert(topic.to_owned(), ()).is_some() {
            return Ok(());
        }
        /// Clears the in-flight mark, also when the request is dropped midway.
        struct Done<'a>(&'a DashMap<String, ()>, &'a str);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.remove(self.1);
            }
        }
        let _done = Done(&self.waking, topic);
        self.command::<i64>(redis::cmd("PUBLISH").arg(WAKE_CHANNEL).arg(topic))
            .await
            .map(|_| ())
    }

    async fn release_lease(&self, lease: &Lease) {
        let mut inv = self.scripts.lease_release.prepare_invoke();
        inv.key(lease_key(&lease.name))
            .key(lease_claim_key(&lease.name))
            .arg(lease.token);
        let _ = self.invoke(inv).await;
    }

    fn topic_count(&self) -> usize {
        self.watched.lock().len()
    }

    async fn report_presence(
        &self,
        connections: usize,
        topics: &[(Arc<str>, usize)],
    ) -> Result<(), BackplaneError> {
        let now = chrono::Utc::now().timestamp_millis();
        let ttl_ms = PRESENCE_FRESH_MS * 2;
        let mut pipe = redis::pipe();
        pipe.hset("sp:nodes", &self.node_id, format!("{connections}:{now}"))
            .ignore()
            .pexpire("sp:nodes", ttl_ms)
            .ignore();
        let mut current = Vec::with_capacity(topics.len());
        for (topic, count) in topics {
            let key = format!("sp:{{{topic}}}:presence");
            pipe.hset(&key, &self.node_id, format!("{count}:{now}"))
                .ignore()
                .pexpire(&key, ttl_ms)
                .ignore();
            current.push(topic.clone());
        }
        let gone: Vec<Arc<str>> = {
            let mut last = self.reported.lock();
            let gone = last
                .iter()
                .filter(|t| !current.contains(t))
                .cloned()
                .collect();
            *last = current;
            gone
        };
        for topic in gone {
            pipe.hdel(format!("sp:{{{topic}}}:presence"), &self.node_id)
                .ignore();
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("command timed out")),
        }
    }

    async fn topic_presence(&self, topic: &str) -> Result<Option<usize>, BackplaneError> {
        let entries: HashMap<String, String> = self
            .command(redis::cmd("HGETALL").arg(format!("sp:{{{topic}}}:presence")))
            .await?;
        Ok(Some(
            sum_fresh(&entries, chrono::Utc::now().timestamp_millis()).1,
        ))
    }

    async fn cluster_presence(&self) -> Result<Option<(usize, usize)>, BackplaneError> {
        let entries: HashMap<String, String> =
            self.command(redis::cmd("HGETALL").arg("sp:nodes")).await?;
        Ok(Some(sum_fresh(
            &entries,
            chrono::Utc::now().timestamp_millis(),
        )))
    }

    async fn ready(&self) -> Result<(), BackplaneError> {
        let pong: String = self.command(&redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(unavailable(format!("PING answered {pong}")));
        }
        if !self.pubsub_connected() {
            return Err(unavailable("pub/sub connection down"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let keys = Keys::of("D1");
        assert_eq!(keys.channel, "sp:{D1}:ch");
        assert_eq!(topic_of_channel(&keys.channel), Some("D1"));
        assert_eq!(topic_of_channel("other"), None);
        let ev = decode_message(
            "sp:{D1}:ch",
            b"7\nep\ndeployment.status\n\n{\"a\":\"b\nc\"}",
        )
        .expect("decodes");
        assert_eq!(
            (ev.seq, &*ev.epoch, &*ev.event_type, ev.acl.is_none()),
            (7, "ep", "deployment.status", true)
        );
        assert_eq!(ev.frame.as_str(), "{\"a\":\"b\nc\"}");
        let ev = decode_message(
            "sp:{D1}:ch",
            b"8\nep\ndeployment.status\n{\"owner\":\"alice\"}\n{}",
        )
        .expect("decodes with an ACL");
        assert_eq!(
            ev.acl.and_then(|a| a.owner).as_deref(),
            Some("alice"),
            "the ACL a publish set travels with its event"
        );
        assert!(decode_message("sp:{D1}:ch", b"x\n").is_none());
    }

    #[test]
    fn presence_counts_only_fresh_records() {
        let now = 1_000_000;
        let entries: HashMap<String, String> = [
            ("a", format!("3:{}", now - 1000)),
            ("b", format!("4:{}", now - 2000)),
            ("dead", format!("50:{}", now - 60_000)),
            ("junk", "x".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(sum_fresh(&entries, now), (2, 7));
    }
}
