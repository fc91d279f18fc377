//! The identity attached to a connection or a request.

/// A verified user (or [`User::anonymous`] when auth is off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The subject: stable and unique per user at the issuer; ACL owners name it.
    pub sub: String,
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl User {
    /// The user of every connection while no authentication is configured.
    pub fn anonymous() -> User {
        User {
            sub: "anonymous".into(),
            username: "anonymous".into(),
            email: None,
            groups: Vec::new(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
