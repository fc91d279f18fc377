//! WebSocket close codes the server uses, in one place (documented in the README).

use crate::hub::CloseReason;

/// Normal closure requested by the client.
pub const NORMAL: u16 = 1000;
/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// A client frame exceeded the configured size limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// A frame could not be written to the socket.
pub const WRITE_FAILED: u16 = 1011;
/// The server cannot keep a subscription gap-free right now (its backplane is
/// unavailable): reconnect and resume with `since`.
pub const SERVICE_RESTART: u16 = 1012;
/// No frame from the client within the idle timeout.
pub const IDLE_TIMEOUT: u16 = 4000;
/// The connection's token expired and no fresh one was sent with `auth`.
pub const TOKEN_EXPIRED: u16 = 4001;
/// A GraphQL socket sent no `connection_init` in time after its upgrade.
pub const INIT_TIMEOUT: u16 = 4408;
/// The client read too slowly and its outgoing queue overflowed.
pub const SLOW_CONSUMER: u16 = 4008;

/// Code and reason text for a server-initiated close.
pub fn for_reason(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::SlowConsumer => (SLOW_CONSUMER, "slow consumer: outgoing queue full"),
        CloseReason::Shutdown => (GOING_AWAY, "server shutting down"),
        CloseReason::IdleTimeout => (IDLE_TIMEOUT, "idle timeout"),
        CloseReason::MessageTooBig => (MESSAGE_TOO_BIG, "frame too large"),
        CloseReason::ClientClosed => (NORMAL, ""),
        CloseReason::TokenExpired => (TOKEN_EXPIRED, "token expired"),
        CloseReason::Resync => (SERVICE_RESTART, "resubscribe with since"),
    }
}
