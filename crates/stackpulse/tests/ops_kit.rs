//! The operator's kit against the real binary: every metric (and label) that
//! `deploy/grafana/stackpulse.json` and `deploy/prometheus/alerts.yaml` use must
//! be one the server exports. The test drives a server with auth (connections,
//! subscriptions, publishes, deliveries, refused tokens) and scrapes `/metrics`;
//! a metric that only appears after events too costly to provoke here (a Redis
//! outage, a slow consumer, AWS calls) must at least be registered in the source
//! with those labels. (`promtool test rules` checks the alerts' logic.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::tokens::{id_claims, server_with, sign, Jwks};
use common::{next, subscribed, Server};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Labels Prometheus adds at scrape time or that histograms carry by design.
const SCRAPE_LABELS: &[&str] = &["instance", "job", "le"];

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The metric names (histogram series folded to their base name) and, per name,
/// the labels a PromQL expression uses with it (`{label=…}` and `by (…)`).
fn metrics_of(expr: &str, out: &mut BTreeMap<String, BTreeSet<String>>) {
    let bytes = expr.as_bytes();
    let mut by_labels = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("by (") {
        let start = i + pos + 4;
        let end = start + expr[start..].find(')').expect("by (…) closes");
        by_labels.extend(expr[start..end].split(',').map(|l| l.trim().to_owned()));
        i = end;
    }
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("stackpulse_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        let mut name = &expr[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        let mut labels = BTreeSet::new();
        if bytes.get(end) == Some(&b'{') {
            let close = end + expr[end..].find('}').expect("selector closes");
            for matcher in expr[end + 1..close].split(',') {
                let label: String = matcher
                    .trim()
                    .bytes()
                    .take_while(|b| is_ident(*b))
                    .map(char::from)
                    .collect();
                labels.insert(label);
            }
        }
        names.push((name.to_owned(), labels));
        i = end;
    }
    for (name, mut labels) in names {
        labels.extend(by_labels.iter().cloned());
        labels.retain(|l| !l.is_empty() && !SCRAPE_LABELS.contains(&l.as_str()));
        out.entry(name).or_default().extend(labels);
    }
}

/// Every metric the dashboard and the alerts use, with its labels.
fn used_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut used = BTreeMap::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/stackpulse.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            metrics_of(target["expr"].as_str().expect("expr"), &mut used);
        }
    }
    let alerts: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yaml")).expect("alerts"),
    )
    .expect("alerts YAML");
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            metrics_of(rule["expr"].as_str().expect("expr"), &mut used);
        }
    }
    used
}

/// Metric name → label names, from a Prometheus text exposition.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split(' ').next().unwrap_or("");
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let mut base = name;
        for suffix in ["_bucket", "_sum", "_count"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        let entry = out.entry(base.to_owned()).or_default();
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            if let Some((label, _)) = pair.split_once('=') {
                entry.insert(label.to_owned());
            }
        }
    }
    out
}

/// The source text of `crates/stackpulse/src`, to find where a metric is registered.
fn sources() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    let mut out = String::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut out,
    );
    out
}

#[test]
fn the_expression_scanner_finds_names_and_labels() {
    let mut m = BTreeMap::new();
    metrics_of(
        r#"sum by (reason) (rate(stackpulse_auth_failures_total{job="x", kind="y"}[5m])) / histogram_quantile(0.9, rate(stackpulse_delivery_latency_seconds_bucket[1m]))"#,
        &mut m,
    );
    assert_eq!(
        m["stackpulse_auth_failures_total"],
        BTreeSet::from(["kind".to_owned(), "reason".to_owned()])
    );
    assert!(m.contains_key("stackpulse_delivery_latency_seconds"));
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let used = used_metrics();
    assert!(used.len() >= 12, "{used:?}");

    let jwks = Jwks::serve("jwks.json").await;
    let server: Server = server_with(&jwks, &[]).await;
    // Refused tokens: auth failures and refused connections, by reason.
    assert_eq!(server.upgrade_status("", None).await.0, 401);
    assert_eq!(server.upgrade_status("?token=not-a-jwt", None).await.0, 401);
    // A user connects and subscribes; events are published and delivered.
    let token = sign(&id_claims("ops-user", &[]));
    let mut c = server.connect_as(&token).await;
    c.subscribe("OPS", None, None).await.expect("send");
    subscribed(&mut c).await;
    for status in ["deploying", "deployed"] {
        server.publish("OPS", status).await;
        next(&mut c).await;
    }

    // Histogram samples are folded in periodically: wait until everything that
    // this test provoked shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let live = loop {
        let (status, text) = server.get("/metrics").await;
        assert_eq!(status, 200);
        let live = exported(&text);
        let provoked = [
            "stackpulse_delivery_latency_seconds",
            "stackpulse_auth_failures_total",
            "stackpulse_messages_delivered_total",
        ];
        if provoked.iter().all(|m| live.contains_key(*m)) || tokio::time::Instant::now() > deadline
        {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let src = sources();
    let mut only_in_source = Vec::new();
    for (name, labels) in &used {
        if let Some(have) = live.get(name) {
            let missing: Vec<_> = labels.difference(have).collect();
            assert!(
                missing.is_empty(),
                "{name}: /metrics has no label {missing:?} (has {have:?})"
            );
            continue;
        }
        // Not provoked here: it must be registered in the source, with those labels.
        let quoted = format!("\"{name}\"");
        let sites: Vec<&str> = src
            .match_indices(&quoted)
            .map(|(i, _)| &src[i..(i + 200).min(src.len())])
            .collect();
        assert!(
            !sites.is_empty(),
            "{name} is used by the dashboard or the alerts but the server never exports it"
        );
        for label in labels {
            assert!(
                sites.iter().any(|s| s.contains(&format!("\"{label}\""))),
                "{name}: the server never sets label {label}"
            );
        }
        only_in_source.push(name.clone());
    }
    // Most of the kit is proven live, not just by reading the source.
    let proven_live = used.len() - only_in_source.len();
    assert!(
        proven_live >= 6,
        "only {proven_live} live; from the source: {only_in_source:?}"
    );
    eprintln!("ops kit: {proven_live} metrics seen on /metrics, {only_in_source:?} registered in the source");
}
