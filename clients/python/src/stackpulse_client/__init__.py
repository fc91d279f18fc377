"""stackpulse_client: a Python client for stackpulse's ``/ws`` deployment-event protocol.

Quick start::

    import asyncio
    from stackpulse_client import CloudWebSocketClient

    async def main() -> None:
        client = CloudWebSocketClient("ws://127.0.0.1:8000/ws")
        client.on("deployment.status", lambda m: print(m["seq"], m["data"]["status"]))
        await client.connect()
        await client.subscribe("D1BRV40")
        await client.run()

    asyncio.run(main())

Modules: :mod:`.client` (the client), :mod:`.backoff` (reconnect delays),
:mod:`.errors` (exceptions), :mod:`.messages` (message shapes).
"""

from .backoff import backoff_cap, backoff_delay
from .client import (
    CloudWebSocketClient,
    EventStream,
    Handler,
    Position,
    ResyncCallback,
    Token,
    TokenProvider,
)
from .errors import (
    AuthenticationError,
    HandshakeError,
    NotConnectedError,
    ReconnectError,
    StackpulseError,
    SubscriptionError,
)
from .messages import (
    CONTROL_TYPES,
    AuthenticatedMessage,
    ErrorMessage,
    EventMessage,
    Message,
    PongMessage,
    SubscribedMessage,
    UnsubscribedMessage,
    is_snapshot,
)

__version__ = "0.1.0"

__all__ = [
    "CloudWebSocketClient",
    "EventStream",
    "Position",
    "Handler",
    "ResyncCallback",
    "Token",
    "TokenProvider",
    "backoff_cap",
    "backoff_delay",
    "StackpulseError",
    "HandshakeError",
    "AuthenticationError",
    "ReconnectError",
    "SubscriptionError",
    "NotConnectedError",
    "Message",
    "EventMessage",
    "SubscribedMessage",
    "UnsubscribedMessage",
    "PongMessage",
    "AuthenticatedMessage",
    "ErrorMessage",
    "CONTROL_TYPES",
    "is_snapshot",
    "__version__",
]
