"""HTTP 401 at connect: raised as AuthenticationError, never retried forever.

The stackpulse binary cannot refuse a token yet (its JWT verification is not wired
into ``serve``), so these tests stand in a minimal WebSocket endpoint built on the
``websockets`` server that answers the upgrade with the contract's 401 body. Every
other behaviour is tested against the real binary in ``test_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, List, Optional

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from stackpulse_client import AuthenticationError, CloudWebSocketClient


class Gate:
    """Accepts ``accept`` connections (then drops them), refuses the rest with 401."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.requests: List[Request] = []

    def process_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        self.requests.append(request)
        if len(self.requests) <= self.accept:
            return None
        body = json.dumps({"message": "Unauthorized: Invalid token"})
        response = connection.respond(HTTPStatus.UNAUTHORIZED, body)
        return response

    async def handler(self, connection: ServerConnection) -> None:
        await connection.recv()  # the resubscription, then drop the client
        await connection.close(1001, "going away")


async def test_401_with_a_static_token_raises_at_connect() -> None:
    gate = Gate(accept=0)
    async with serve(gate.handler, "127.0.0.1", 0, process_request=gate.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        client = CloudWebSocketClient(f"ws://127.0.0.1:{port}/ws", token="expired-token")
        with pytest.raises(AuthenticationError) as refused:
            await client.connect()
    assert refused.value.status == 401
    assert refused.value.message == "Unauthorized: Invalid token"
    assert "expired-token" not in str(refused.value)
    assert len(gate.requests) == 1
    assert gate.requests[0].headers["Authorization"] == "Bearer expired-token"
    assert not client.running


async def test_401_on_reconnect_ends_run_after_one_fresh_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gate = Gate(accept=1)
    calls: List[str] = []

    def provider() -> str:
        calls.append(f"token-{len(calls) + 1}")
        return calls[-1]

    async with serve(gate.handler, "127.0.0.1", 0, process_request=gate.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        client = CloudWebSocketClient(
            f"ws://127.0.0.1:{port}/ws", token=provider, backoff_base=0.01, backoff_max=0.05,
            token_in_query=True,
        )
        await client.subscribe("D")
        events = client.events()
        with pytest.raises(AuthenticationError) as refused:
            await asyncio.wait_for(client.run(), 15)
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(events.__anext__(), 5)
    assert refused.value.status == 401
    # Connected once, then two refused attempts, each with a fresh token: no endless retry.
    assert calls == ["token-1", "token-2", "token-3"]
    assert [r.headers["Authorization"] for r in gate.requests] == [f"Bearer {t}" for t in calls]
    assert [r.path for r in gate.requests] == [f"/ws?token={t}" for t in calls]
    assert not client.running
    # Neither the header nor the query string leaks a token into the logs.
    client_log = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")
    )
    assert "GET /ws?token=***" in client_log and "Bearer ***" in client_log
    assert not any(t in client_log for t in calls)
