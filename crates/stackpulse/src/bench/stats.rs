//! Percentiles and the report of one run.

use serde::Serialize;

/// p50, p99 and max of a set of durations, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub count: usize,
}

impl Spread {
    /// From microsecond samples (sorted in place). Nearest-rank percentiles.
    pub fn from_us(samples: &mut [u32]) -> Spread {
        if samples.is_empty() {
            return Spread::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            f64::from(samples[i]) / 1000.0
        };
        Spread {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: f64::from(samples[samples.len() - 1]) / 1000.0,
            count: samples.len(),
        }
    }
}

/// Everything one `bench run` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub connections: usize,
    pub topics: usize,
    pub connected: usize,
    pub connect_errors: usize,
    pub first_connect_error: Option<String>,
    /// Connect + subscribe (stackpulse) or connect + handshake (nchan).
    pub connect: Spread,
    pub connect_rate: f64,
    pub connect_seconds: f64,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    /// (idle RSS − RSS before) / connected.
    pub rss_per_connection_bytes: f64,
    pub server_cpu_connect_s: f64,
    pub events: u64,
    pub rate: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub first_publish_error: Option<String>,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub ended_early: usize,
    pub first_end_reason: Option<String>,
    /// Publish time (in the payload) to receipt.
    pub latency: Spread,
    /// From the first publish to the last delivery.
    pub load_seconds: f64,
    pub deliveries_per_s: f64,
    pub server_cpu_load_s: f64,
    /// The kernel part of `server_cpu_load_s`.
    pub server_sys_load_s: f64,
    pub deliveries_per_cpu_s: f64,
    pub rss_after_kib: u64,
}

impl Report {
    /// Whether every connection, publish and delivery succeeded.
    pub fn complete(&self) -> bool {
        self.connected == self.connections
            && self.publish_errors == 0
            && self.published == self.events
            && self.deliveries == self.expected_deliveries
            && self.ended_early == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "[{} → {}] connections {}/{} over {} topic(s) in {:.2}s ({:.0}/s offered), connect p50 {:.2} ms p99 {:.2} ms max {:.2} ms\n",
            self.label,
            self.target,
            self.connected,
            self.connections,
            self.topics,
            self.connect_seconds,
            self.connect_rate,
            self.connect.p50_ms,
            self.connect.p99_ms,
            self.connect.max_ms
        );
        if let Some(e) = &self.first_connect_error {
            s += &format!("  {} connect errors, first: {e}\n", self.connect_errors);
        }
        s += &format!(
            "  server RSS {} KiB → {} KiB idle: {:.0} bytes ({:.2} KiB) per connection; {:.2} CPU-s to connect\n",
            self.rss_before_kib,
            self.rss_idle_kib,
            self.rss_per_connection_bytes,
            self.rss_per_connection_bytes / 1024.0,
            self.server_cpu_connect_s
        );
        if self.events > 0 {
            s += &format!(
                "  events {}/{} at {}/s, deliveries {}/{} in {:.2}s ({:.0}/s), latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms\n",
                self.published,
                self.events,
                self.rate,
                self.deliveries,
                self.expected_deliveries,
                self.load_seconds,
                self.deliveries_per_s,
                self.latency.p50_ms,
                self.latency.p99_ms,
                self.latency.max_ms
            );
            s += &format!(
                "  server CPU {:.2} s ({:.2} s of it in the kernel) for the load: {:.0} deliveries per server CPU-second; RSS after {} KiB\n",
                self.server_cpu_load_s, self.server_sys_load_s, self.deliveries_per_cpu_s, self.rss_after_kib
            );
        }
        if let Some(e) = &self.first_publish_error {
            s += &format!("  {} publish errors, first: {e}\n", self.publish_errors);
        }
        if let Some(e) = &self.first_end_reason {
            s += &format!(
                "  {} connections ended early, first: {e}\n",
                self.ended_early
            );
        }
        s.trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let s = Spread::from_us(&mut v);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.count, 100);
        assert_eq!(Spread::from_us(&mut []), Spread::default());
        assert_eq!(Spread::from_us(&mut [7000]).p99_ms, 7.0);
    }
}
