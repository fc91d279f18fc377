//! Rate limit for the AWS SDK's own warnings in our log.
//!
//! The SDK logs a warning per failed attempt (an instance without IMDS logs a
//! multi-kilobyte line per poll); our trackers already tell a problem once, with
//! its code. [`SdkWarnLimit`] is a per-layer filter on the log output: a warning or
//! error whose target is an AWS crate (`aws_*`) passes once per call site
//! (one distinct cause) per [`WINDOW`]; the rest is dropped. Our own lines and
//! the SDK's debug/trace lines (when `STACKPULSE_LOG` asks for them) pass as is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// One line per distinct cause per this long.
pub const WINDOW: Duration = Duration::from_secs(60);

/// See the module docs.
#[derive(Debug, Default)]
pub struct SdkWarnLimit {
    /// Call site → when its last line passed. Call sites are static: bounded.
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl SdkWarnLimit {
    pub fn new() -> SdkWarnLimit {
        SdkWarnLimit::default()
    }

    /// Whether a line from `meta` passes at `now` (and records it if so).
    fn admit(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        let sdk = meta.target().starts_with("aws_");
        if !sdk || *meta.level() > Level::WARN {
            return true;
        }
        let mut last = self.last.lock();
        match last.get(&meta.callsite()) {
            Some(t) if now.duration_since(*t) < WINDOW => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }
}

impl<S> Filter<S> for SdkWarnLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_warnings_pass_once_per_cause_per_window() {
        use std::sync::Arc;
        use tracing_subscriber::layer::SubscriberExt;

        let limit = Arc::new(SdkWarnLimit::new());
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        struct Count(Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(&self, e: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                if let Ok(mut v) = self.0.lock() {
                    v.push(e.metadata().target().to_string());
                }
            }
        }
        struct Shared(Arc<SdkWarnLimit>);
        impl<S> Filter<S> for Shared {
            fn enabled(&self, m: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
                Filter::<S>::enabled(&*self.0, m, cx)
            }
            fn event_enabled(&self, e: &Event<'_>, cx: &Context<'_, S>) -> bool {
                Filter::<S>::event_enabled(&*self.0, e, cx)
            }
        }
        use tracing_subscriber::Layer;
        let subscriber = tracing_subscriber::registry()
            .with(Count(seen.clone()).with_filter(Shared(limit.clone())));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                tracing::warn!(target: "aws_config::imds", "IMDS failed");
                tracing::warn!(target: "aws_smithy_runtime", "another cause");
                tracing::warn!(target: "stackpulse::tracking", "ours");
            }
        });
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        let count = |t: &str| seen.iter().filter(|s| s.as_str() == t).count();
        assert_eq!(count("aws_config::imds"), 1, "{seen:?}");
        assert_eq!(count("aws_smithy_runtime"), 1, "{seen:?}");
        assert_eq!(count("stackpulse::tracking"), 5, "{seen:?}");
    }
}
