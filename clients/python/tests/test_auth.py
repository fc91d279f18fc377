"""Authentication against the real binary: ``serve`` with ``--jwt-issuer``/``--jwks-url``
pointing at a test issuer (RS256 tokens, JWKS over HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, List, Optional

import pytest

from stackpulse_client import AuthenticationError, CloudWebSocketClient, SubscriptionError

from conftest import Collector, Server
from jwt_issuer import Issuer


@pytest.fixture
def auth_server(start_server: Callable[..., Server], issuer: Issuer) -> Server:
    return start_server(*issuer.server_args())


async def test_missing_and_invalid_tokens_are_refused_with_401(auth_server: Server, issuer: Issuer) -> None:
    anonymous = CloudWebSocketClient(auth_server.ws_url)
    with pytest.raises(AuthenticationError) as missing:
        await anonymous.connect()
    assert (missing.value.status, missing.value.message) == (401, "Unauthorized: Missing token")

    expired = issuer.token(ttl=-60)
    client = CloudWebSocketClient(auth_server.ws_url, token=expired)
    with pytest.raises(AuthenticationError) as invalid:
        await client.connect()
    # "Invalid", not "Missing": the header reached the server.
    assert (invalid.value.status, invalid.value.message) == (401, "Unauthorized: Invalid token")
    assert expired not in str(invalid.value)
    assert not client.running

    # The same token as ?token= only (no header) is read too.
    query_only = CloudWebSocketClient(f"{auth_server.ws_url}?token={expired}")
    with pytest.raises(AuthenticationError) as by_query:
        await query_only.connect()
    assert by_query.value.message == "Unauthorized: Invalid token"


async def test_valid_token_from_an_async_provider_subscribes_and_receives(
    auth_server: Server, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens: List[str] = []

    async def provider() -> str:
        tokens.append(issuer.token("alice"))
        return tokens[-1]

    client = CloudWebSocketClient(auth_server.ws_url, token=provider, token_in_query=True)
    statuses = Collector()
    client.on("deployment.status", statuses)
    await client.connect()
    try:
        await client.subscribe("D1")
        await auth_server.apublish("D1", {"status": "deploying"})
        await statuses.count(1)
        assert statuses.items[0]["seq"] == 1
    finally:
        await client.disconnect()
    assert len(tokens) == 1
    client_log = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("stackpulse_client", "websockets.client"))
    )
    assert "Bearer ***" in client_log and "token=***" in client_log
    assert tokens[0] not in caplog.text


async def test_topic_acl_refusal_is_a_subscription_error(auth_server: Server, issuer: Issuer) -> None:
    await auth_server.apublish("private", {"status": "x"}, acl={"owner": "bob", "groups": []})
    client = CloudWebSocketClient(auth_server.ws_url, token=issuer.token("alice"))
    errors = Collector()
    client.on("error", errors)
    await client.connect()
    try:
        with pytest.raises(SubscriptionError) as refused:
            await client.subscribe("private")
        assert (refused.value.code, refused.value.message) == (403, "Forbidden: private")
        assert errors.items[0]["code"] == 403
        assert client.subscriptions == set()
    finally:
        await client.disconnect()


async def test_in_band_refresh_keeps_the_connection_past_the_first_tokens_expiry(
    auth_server: Server, issuer: Issuer
) -> None:
    issued: List[str] = []

    def provider() -> str:  # a sync provider; 3 s tokens
        issued.append(issuer.token("alice", ttl=3))
        return issued[-1]

    closes, authenticated, statuses = Collector(), Collector(), Collector()
    client = CloudWebSocketClient(
        auth_server.ws_url, token=provider, refresh_margin=60, on_disconnect=lambda c, r: closes(c)
    )
    client.on("authenticated", authenticated)
    client.on("deployment.status", statuses)
    await client.connect()
    try:
        await client.subscribe("D")
        # Refreshed halfway through each 3 s token: two refreshes outlive the first token.
        await authenticated.count(2, timeout=20)
        assert all(m["expires_at"].endswith("Z") for m in authenticated.items)
        await auth_server.apublish("D", {"status": "after-first-expiry"})
        await statuses.count(1)
        assert closes.items == [] and client.connection_count == 1
        assert len(issued) >= 3
    finally:
        await client.disconnect()


async def test_expiry_close_4001_reconnects_with_a_fresh_token_and_resumes(
    auth_server: Server, issuer: Issuer
) -> None:
    issued: List[str] = []

    def provider() -> str:
        issued.append(issuer.token("alice", ttl=2))
        return issued[-1]

    seen, closes = Collector(), Collector()
    published: List[int] = []

    async def on_disconnect(code: Optional[int], reason: str) -> None:
        if code == 4001:
            for i in range(3):
                published.append(await auth_server.apublish("D", {"status": f"away-{i}"}))
        closes(code)

    client = CloudWebSocketClient(
        auth_server.ws_url,
        token=provider,
        refresh_margin=None,  # no in-band refresh: the server closes at expiry
        backoff_base=0.05,
        backoff_max=0.2,
        on_disconnect=on_disconnect,
    )
    client.on("deployment.status", seen)
    await client.connect()
    try:
        await client.subscribe("D")
        published.append(await auth_server.apublish("D", {"status": "before"}))
        await closes.count(1, timeout=20)
        assert closes.items[0] == 4001
        last = await auth_server.apublish("D", {"status": "after"})
        await seen.until(lambda s: bool(s) and s[-1]["seq"] == last, 15, "the event after the resume")
    finally:
        await client.disconnect()
    assert [m["seq"] for m in seen.items] == list(range(1, last + 1))
    assert client.connection_count >= 2
    assert len(issued) >= 2  # a fresh token for the reconnect


async def test_refused_token_on_reconnect_ends_run_after_one_fresh_try(
    auth_server: Server, issuer: Issuer
) -> None:
    calls: List[str] = []

    def provider() -> str:
        # Valid once; then the user is gone and only expired tokens come back.
        calls.append(issuer.token("alice", ttl=3600 if not calls else -60))
        return calls[-1]

    client = CloudWebSocketClient(auth_server.ws_url, token=provider, backoff_base=0.01, backoff_max=0.05)
    await client.connect()
    await client.subscribe("D")
    ws = client.ws
    assert ws is not None
    ws.transport.abort()
    with pytest.raises(AuthenticationError) as refused:
        await asyncio.wait_for(client.run(), 15)
    assert (refused.value.status, refused.value.message) == (401, "Unauthorized: Invalid token")
    assert len(calls) == 3  # the first connect, then two refused attempts: no endless retry
    assert not client.running


async def test_static_token_expiry_ends_the_client_with_authentication_error(
    auth_server: Server, issuer: Issuer
) -> None:
    closes = Collector()
    client = CloudWebSocketClient(
        auth_server.ws_url, token=issuer.token("alice", ttl=2), backoff_base=0.01,
        on_disconnect=lambda c, r: closes(c),
    )
    await client.connect()
    await client.subscribe("D")
    with pytest.raises(AuthenticationError) as expired:
        await asyncio.wait_for(client.run(), 20)
    assert "4001" in expired.value.message and "token provider" in expired.value.message
    # No reconnect with a token that cannot work any more.
    assert closes.items == [4001] and client.connection_count == 1
