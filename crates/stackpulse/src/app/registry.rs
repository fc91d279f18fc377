//! The connection registry: every open WebSocket, with who and since when.
//!
//! Admission reserves a slot ([`Registry::reserve`]) *before* the upgrade, so the
//! connection limit holds under a connect storm; the slot is released when its
//! [`Slot`] is dropped, however the connection ends. A socket whose credential
//! comes later (GraphQL's `connection_init`) holds a [`Pending`] instead until then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::auth::User;
use crate::hub::{CloseReason, Session};

/// One open connection.
pub struct ConnInfo {
    /// Who is connected; an in-band `auth` may bring a fresh token with other
    /// groups for the same `sub`.
    user: RwLock<User>,
    pub remote: SocketAddr,
    /// Unix seconds when the connection's token expires (`u64::MAX` without auth);
    /// moved forward by an in-band `auth`.
    pub expires_at: AtomicU64,
    /// The connection's hub session: its id, queue and subscriptions.
    pub session: Arc<Session>,
}

impl ConnInfo {
    /// A connection that just opened: `expires_at` is its token's expiry (Unix
    /// seconds, `u64::MAX` without auth).
    pub fn new(
        user: User,
        remote: SocketAddr,
        expires_at: u64,
        session: Arc<Session>,
    ) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            user: RwLock::new(user),
            remote,
            expires_at: AtomicU64::new(expires_at),
            session,
        })
    }

    /// The connection's user as of its latest token.
    pub fn user(&self) -> User {
        self.user.read().clone()
    }

    /// Replaces the user after an in-band re-authentication.
    pub fn set_user(&self, user: User) {
        *self.user.write() = user;
    }
}

#[derive(Default)]
pub struct Registry {
    conns: DashMap<u64, Arc<ConnInfo>>,
    reserved: AtomicUsize,
    /// Sockets upgraded without a credential yet (awaiting `connection_init`).
    pending: AtomicUsize,
}

/// A socket awaiting its credential, counted apart from the places.
pub struct Pending {
    registry: Arc<Registry>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.registry.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reserved place under the connection limit.
pub struct Slot {
    registry: Arc<Registry>,
    id: Option<u64>,
}

impl Registry {
    /// Reserves a place if fewer than `max` connections are open or reserved.
    pub fn reserve(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            registry: self.clone(),
            id: None,
        })
    }

    /// Counts a socket awaiting its credential if fewer than `max` are.
    pub fn reserve_pending(self: &Arc<Self>, max: usize) -> Option<Pending> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Pending {
            registry: self.clone(),
        })
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Asks every connection to close (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for conn in self.conns.iter() {
            conn.session.outbox.close(reason);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnInfo>> {
        self.conns.get(&id).map(|c| c.clone())
    }
}

impl Slot {
    /// Registers the connection in the reserved place.
    pub fn register(&mut self, info: Arc<ConnInfo>) {
        let id = info.session.id;
        self.registry.conns.insert(id, info);
        self.id = Some(id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.registry.conns.remove(&id);
        }
        self.registry.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}
