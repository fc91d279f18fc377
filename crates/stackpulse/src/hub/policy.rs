//! Topic policy: the rules every path into the hub passes, whatever the dialect.
//!
//! The hub consults two seams the server plugs in once ([`super::Hub::set_rules`]):
//! - a [`TopicPolicy`] decides which topic names exist (canonical form, length,
//!   reserved prefixes, allow-lists), who may read a topic (its ACL, reader
//!   groups) and who may write it (reserved topics belong to their source);
//! - a [`TopicInterest`] hears when a topic gets its first admitted subscriber on
//!   this node and when its last one leaves: sources that produce on demand (the
//!   CloudFormation pollers) start and stop there, so no adapter calls a source.
//!
//! A subscribe flows: name check → per-connection and per-node caps → fan-out
//! registration → history read → read check against the topic's ACL → interest
//! (which may refuse, e.g. at the poller cap) → `subscribed`, replay, live. An event
//! that changes a topic's ACL is re-checked against every live subscriber before it
//! is offered (see `Fanout::deliver`), so an ACL change takes effect at once.

use std::sync::Arc;

use async_trait::async_trait;
use stackpulse_protocol::Acl;

use crate::auth::User;

use super::SubscribeError;

/// Who is reading: a connection's user, or one of the server's own sources
/// (a deployment follower), which reads every topic.
#[derive(Debug, Clone)]
pub enum Reader {
    User(User),
    /// The server itself.
    System,
}

impl Reader {
    pub fn user(user: User) -> Arc<Reader> {
        Arc::new(Reader::User(user))
    }
}

/// Why a write (a publish from outside the tracker) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WriteRefused(pub String);

/// Which topics exist and who may read or write them.
#[async_trait]
pub trait TopicPolicy: Send + Sync + 'static {
    /// Checks the name of a topic a reader asked for; the error is sent as is
    /// (400 for a malformed or non-canonical name, 403 for a name the server will
    /// not serve).
    async fn check_name(&self, topic: &str) -> Result<(), SubscribeError>;

    /// Whether `reader` may read `topic`, whose ACL is `acl`.
    fn may_read(&self, reader: &Reader, topic: &str, acl: Option<&Acl>) -> bool;

    /// Whether a publisher may write `topic` (sources with a lease are not asked).
    fn may_write(&self, topic: &str) -> Result<(), WriteRefused>;
}

/// Hears about local interest in topics.
pub trait TopicInterest: Send + Sync + 'static {
    /// A subscriber was admitted to `topic` (its read check passed); an error
    /// refuses that subscribe (for example a cap on what the interest starts).
    fn wanted(&self, topic: &Arc<str>) -> Result<(), SubscribeError>;

    /// The last local subscriber of `topic` left.
    fn unwanted(&self, topic: &Arc<str>);

    /// A push asked `topic`'s poller to poll now (see [`super::Backplane::wake`]).
    fn wake(&self, _topic: &str) {}
}

/// The policy of a hub nobody configured (hub unit tests): every name, every
/// reader, every writer.
pub struct OpenPolicy;

#[async_trait]
impl TopicPolicy for OpenPolicy {
    async fn check_name(&self, _topic: &str) -> Result<(), SubscribeError> {
        Ok(())
    }

    fn may_read(&self, _reader: &Reader, _topic: &str, _acl: Option<&Acl>) -> bool {
        true
    }

    fn may_write(&self, _topic: &str) -> Result<(), WriteRefused> {
        Ok(())
    }
}

/// Interest nobody listens to.
pub struct NoInterest;

impl TopicInterest for NoInterest {
    fn wanted(&self, _topic: &Arc<str>) -> Result<(), SubscribeError> {
        Ok(())
    }

    fn unwanted(&self, _topic: &Arc<str>) {}
}

/// The rules a hub applies; set once when the server is assembled.
#[derive(Clone)]
pub struct Rules {
    pub policy: Arc<dyn TopicPolicy>,
    pub interest: Arc<dyn TopicInterest>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            policy: Arc::new(OpenPolicy),
            interest: Arc::new(NoInterest),
        }
    }
}
