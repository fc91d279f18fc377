//! The paced publisher: M events at R per second over HTTP, round-robin over the
//! topics, each stamped with its send time just before it is sent.
//!
//! Pacing is open loop (event i is due at i/R seconds), with a bounded number of
//! requests in flight, so a slow server shows up as latency rather than as a lower
//! offered rate — until the in-flight bound is reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::target::{self, Target};

/// Publishes for one run.
pub struct Publisher {
    pub target: Target,
    pub url_template: String,
    pub key: Option<String>,
    pub client: reqwest::Client,
    pub filler: String,
}

/// What publishing did.
#[derive(Debug, Default, Clone)]
pub struct PublishOutcome {
    pub published: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Publisher {
    pub fn new(
        target: Target,
        url_template: &str,
        key: Option<String>,
        payload_bytes: usize,
    ) -> Result<Publisher, reqwest::Error> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(Publisher {
            target,
            url_template: url_template.to_owned(),
            key,
            client,
            filler: "x".repeat(payload_bytes),
        })
    }

    /// Sends one event; `Err` carries a description of the failure.
    async fn send(&self, topic: &str, n: u64) -> Result<(), String> {
        let body = self.target.publish_body(topic, n, &self.filler);
        let mut request = self
            .client
            .post(target::url_for(&self.url_template, topic))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", text.trim()))
    }

    /// Publishes `events` events at `rate` per second.
    pub async fn run(
        self: Arc<Self>,
        topics: Arc<[String]>,
        events: u64,
        rate: f64,
        concurrency: usize,
    ) -> PublishOutcome {
        let outcome = Arc::new(Mutex::new(PublishOutcome::default()));
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..events {
            let due = started + period.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let topic_index = usize::try_from(n).unwrap_or(0) % topics.len().max(1);
            let (me, topics, outcome) = (self.clone(), topics.clone(), outcome.clone());
            tasks.spawn(async move {
                let result = me.send(&topics[topic_index], n).await;
                drop(permit);
                let mut o = outcome.lock();
                match result {
                    Ok(()) => o.published += 1,
                    Err(e) => {
                        o.errors += 1;
                        o.first_error.get_or_insert(e);
                    }
                }
            });
            // Reap finished requests so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let mut result = outcome.lock().clone();
        result.elapsed = started.elapsed();
        result
    }
}
