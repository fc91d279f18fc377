//! The server's topic policy: which topic names it serves and who may read or
//! write them, plugged into the hub ([`crate::hub::TopicPolicy`]) so that every
//! socket dialect, query and publish path applies the same rules.
//!
//! - Names: at most [`MAX_TOPIC_LEN`] bytes. `stack:` topics are tracked stacks and
//!   must parse as `stack:<StackName>` or `stack:<region>:<StackName>` (a region
//!   that looks like an AWS region, and never the server's default region, whose
//!   stacks are `stack:<StackName>`: one stack, one topic, one poller); their stack
//!   name must match a `--stack-allow` glob (default `*`), else 403.
//! - Reading: a topic's ACL through the gate (owner, groups, admin, default
//!   policy); a `stack:` topic also needs `--stack-reader-group` when it is set
//!   (admins always may).
//! - Writing: `stack:` topics belong to the tracker; publishers get 403 (unless
//!   the operator passed `--allow-stack-writes`, e.g. to replay a recording).

use std::sync::Arc;

use async_trait::async_trait;
use stackpulse_protocol::{Acl, MAX_TOPIC_LEN};

use crate::auth::gate::Gate;
use crate::config::StackRules;
use crate::hub::{Reader, SubscribeError, TopicPolicy, WriteRefused};
use crate::tracking::{StackTopic, Tracking, TOPIC_PREFIX};

pub struct ServerPolicy {
    gate: Arc<Gate>,
    tracking: Arc<Tracking>,
    stacks: StackRules,
}

impl ServerPolicy {
    pub fn new(gate: Arc<Gate>, tracking: Arc<Tracking>, stacks: StackRules) -> ServerPolicy {
        ServerPolicy {
            gate,
            tracking,
            stacks,
        }
    }

    /// Whether the server tracks a stack of this name (`--stack-allow`).
    pub fn stack_allowed(&self, stack: &str) -> bool {
        self.stacks.allow.iter().any(|g| glob_match(g, stack))
    }
}

#[async_trait]
impl TopicPolicy for ServerPolicy {
    async fn check_name(&self, topic: &str) -> Result<(), SubscribeError> {
        if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
            return Err(SubscribeError::Invalid(format!(
                "Invalid deployment_id: must be a string of at most {MAX_TOPIC_LEN} bytes"
            )));
        }
        if !topic.starts_with(TOPIC_PREFIX) {
            return Ok(());
        }
        let Some(stack) = StackTopic::parse(topic) else {
            return Err(SubscribeError::Invalid(format!(
                "Invalid stack topic {topic:?}: use {TOPIC_PREFIX}<StackName> or \
                 {TOPIC_PREFIX}<region>:<StackName> (regions look like eu-west-1)"
            )));
        };
        self.tracking
            .check_topic(topic)
            .await
            .map_err(SubscribeError::Invalid)?;
        if !self.stack_allowed(&stack.stack) {
            return Err(SubscribeError::Forbidden(topic.to_owned()));
        }
        Ok(())
    }

    fn may_read(&self, reader: &Reader, topic: &str, acl: Option<&Acl>) -> bool {
        let user = match reader {
            Reader::System => return true,
            Reader::User(user) => user,
        };
        if !self.gate.may_subscribe(user, acl) {
            return false;
        }
        if !topic.starts_with(TOPIC_PREFIX) || !self.gate.is_enabled() {
            return true;
        }
        match &self.stacks.reader_group {
            None => true,
            Some(group) => user.in_group(group) || self.gate.is_admin(user),
        }
    }

    fn may_write(&self, topic: &str) -> Result<(), WriteRefused> {
        if topic.starts_with(TOPIC_PREFIX) && !self.stacks.publishers_write {
            return Err(WriteRefused(
                "stack: topics are written by the tracker".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Matches `text` against a glob of `*` (any run) and `?` (one character).
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    gi = sg + 1;
                    ti = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        for (g, t, m) in [
            ("*", "anything", true),
            ("*", "", true),
            ("prod-*", "prod-db", true),
            ("prod-*", "dev-db", false),
            ("*-db", "prod-db", true),
            ("p?od-*-x", "prod-a-b-x", true),
            ("p?od-*-x", "prod-a-b-y", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(g, t), m, "{g} vs {t}");
        }
    }
}
