"""Exceptions raised by :mod:`stackpulse_client`.

Every exception the client raises on purpose derives from :class:`StackpulseError`.
Messages never contain the token.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "StackpulseError",
    "HandshakeError",
    "AuthenticationError",
    "ReconnectError",
    "SubscriptionError",
    "NotConnectedError",
]


class StackpulseError(Exception):
    """Base class of the client's exceptions."""


class HandshakeError(StackpulseError):
    """The server answered the WebSocket upgrade with an HTTP error status.

    ``status`` is the HTTP status (e.g. 503 when the server is at its connection
    limit) and ``message`` the server's ``{"message": ...}`` text when it sent one.
    """

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        self.message = message
        text = f"server refused the WebSocket connection: HTTP {status}"
        if message:
            text += f": {message}"
        super().__init__(text)


class AuthenticationError(HandshakeError):
    """The server refused the token (HTTP 401 or 403 at connect).

    Not retried forever: with a static token it is raised at once; with a token
    provider the client asks the provider for a fresh token once more first.
    """


class ReconnectError(StackpulseError):
    """The connection was lost and ``max_reconnect_attempts`` attempts all failed."""

    def __init__(self, attempts: int, last_error: Optional[BaseException]) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(
            f"could not reconnect after {attempts} attempt(s): {last_error!r}"
        )


class SubscriptionError(StackpulseError):
    """The server answered a subscribe with an error (e.g. 429 too many subscriptions)."""

    def __init__(self, deployment_id: str, code: int, message: str) -> None:
        self.deployment_id = deployment_id
        self.code = code
        self.message = message
        super().__init__(f"subscribe {deployment_id!r} refused ({code}): {message}")


class NotConnectedError(StackpulseError):
    """An operation needs an open connection and there is none."""
