//! Topic authorization: who may subscribe to (or read) a topic.
//!
//! A topic may carry an [`Acl`] attached by its publisher. A user may see the topic
//! when they are its owner, share one of its groups, or are in the admin group. A
//! topic without a rule (or with an empty one) follows the default policy:
//! `authenticated` (any verified user) or `deny` (admins only).

use stackpulse_protocol::Acl;

use crate::user::User;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    #[default]
    Authenticated,
    Deny,
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "authenticated" => Ok(DefaultPolicy::Authenticated),
            "deny" => Ok(DefaultPolicy::Deny),
            other => Err(format!(
                "unknown topic policy {other:?} (expected authenticated or deny)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub admin_group: String,
    pub default: DefaultPolicy,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            admin_group: "admin".into(),
            default: DefaultPolicy::Authenticated,
        }
    }
}

impl Policy {
    pub fn may_subscribe(&self, user: &User, acl: Option<&Acl>) -> bool {
        if user.in_group(&self.admin_group) {
            return true;
        }
        match acl.filter(|a| a.owner.is_some() || !a.groups.is_empty()) {
            Some(acl) => {
                acl.owner.as_deref() == Some(user.sub.as_str())
                    || acl.groups.iter().any(|g| user.in_group(g))
            }
            None => self.default == DefaultPolicy::Authenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str, groups: &[&str]) -> User {
        User {
            sub: sub.into(),
            username: sub.into(),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn owner_group_admin_stranger() {
        let p = Policy::default();
        let acl = Acl {
            owner: Some("alice".into()),
            groups: vec!["ops".into()],
        };
        assert!(p.may_subscribe(&user("alice", &[]), Some(&acl)));
        assert!(p.may_subscribe(&user("bob", &["ops"]), Some(&acl)));
        assert!(p.may_subscribe(&user("root", &["admin"]), Some(&acl)));
        assert!(!p.may_subscribe(&user("eve", &["dev"]), Some(&acl)));
    }

    #[test]
    fn default_policies() {
        let open = Policy::default();
        let closed = Policy {
            default: DefaultPolicy::Deny,
            ..Policy::default()
        };
        let eve = user("eve", &[]);
        assert!(open.may_subscribe(&eve, None));
        assert!(
            open.may_subscribe(&eve, Some(&Acl::default())),
            "an empty rule is no rule"
        );
        assert!(!closed.may_subscribe(&eve, None));
        assert!(closed.may_subscribe(&user("root", &["admin"]), None));
        assert_eq!("deny".parse::<DefaultPolicy>(), Ok(DefaultPolicy::Deny));
        assert!("open".parse::<DefaultPolicy>().is_err());
    }
}
