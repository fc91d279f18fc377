"""Shapes of the messages the stackpulse server sends on ``/ws``.

Handlers receive plain ``dict`` objects decoded from JSON (so ``message["data"]``
works as in the seed examples); these ``TypedDict`` classes document their keys and
let a type checker follow them. ``CONTROL_TYPES`` are the server's replies; every
other message type is an *event* (it carries ``deployment_id``, ``seq``,
``timestamp`` and ``data``). Types ending in ``.snapshot`` are snapshots: the full
current state of a topic, current to their ``seq``, sent after ``subscribed`` to a
subscriber without a usable resume position; they are not part of the numbered
stream.
"""

from __future__ import annotations

from typing import Any, Dict, TypedDict

__all__ = [
    "Message",
    "EventMessage",
    "SubscribedMessage",
    "UnsubscribedMessage",
    "PongMessage",
    "AuthenticatedMessage",
    "ErrorMessage",
    "CONTROL_TYPES",
    "is_snapshot",
]

#: Any decoded server message.
Message = Dict[str, Any]

#: Server replies that are not events.
CONTROL_TYPES = frozenset({"subscribed", "unsubscribed", "pong", "authenticated", "error"})


def is_snapshot(message_type: str) -> bool:
    """Whether ``message_type`` names a snapshot (``deployment.snapshot``, ``stack.snapshot``)."""
    return message_type.endswith(".snapshot")


class EventMessage(TypedDict):
    """An event: ``{"type","deployment_id","seq","timestamp","data"}``.

    Per topic, ``seq`` starts at 1 and grows by exactly 1. ``timestamp`` is RFC 3339
    UTC with milliseconds. ``data`` depends on ``type``; the seed's types are
    ``deployment.status`` {status, current_layer, total_layers}, ``stack.deployed``
    {stack_name, environment, duration_seconds, resource_count}, ``stack.failed``
    {stack_name, environment, error_message} and ``log.created`` {level, message,
    stack_name, environment}.
    """

    type: str
    deployment_id: str
    seq: int
    timestamp: str
    data: Dict[str, Any]


class SubscribedMessage(TypedDict):
    """Reply to a subscribe: the topic's latest ``seq``, its ``epoch`` and whether a
    resume (``since``) was ``recovered``."""

    type: str
    deployment_id: str
    seq: int
    epoch: str
    recovered: bool


class UnsubscribedMessage(TypedDict):
    """Reply to an unsubscribe."""

    type: str
    deployment_id: str


class PongMessage(TypedDict):
    """Reply to ``{"action":"ping"}``."""

    type: str
    timestamp: str


class AuthenticatedMessage(TypedDict):
    """Reply to an in-band ``{"action":"auth","token":...}``: the new expiry."""

    type: str
    expires_at: str


class _ErrorRequired(TypedDict):
    type: str
    code: int
    message: str


class ErrorMessage(_ErrorRequired, total=False):
    """An error reply; the connection stays usable. ``deployment_id`` is present when
    the error concerns one topic (e.g. a refused subscribe)."""

    deployment_id: str
