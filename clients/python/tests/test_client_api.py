"""The client's API edges against the real stackpulse binary: handlers that fail or are
removed, calls made from inside handlers, event streams that end, repeated and invalid
calls, and the server's error replies when nobody handles them."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from stackpulse_client import CloudWebSocketClient, ReconnectError, SubscriptionError

from conftest import Collector, Server


def _unsigned_jwt(exp: float) -> str:
    """A JWT-shaped token with an ``exp`` claim (the client only reads ``exp`` to time a
    refresh; a server without auth never verifies it)."""

    def part(obj: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': 'dana', 'exp': exp})}.sig"


class _Forward(logging.Handler):
    """Feeds each log message to a Collector (awaitable, unlike caplog)."""

    def __init__(self, sink: Collector) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(record.getMessage())


async def test_a_failing_handler_is_logged_and_the_others_still_run(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = CloudWebSocketClient(server.ws_url)
    seen, async_seen = Collector(), Collector()

    def broken(message: Dict[str, Any]) -> None:
        raise RuntimeError(f"handler bug at seq {message['seq']}")

    async def broken_async(message: Dict[str, Any]) -> None:
        await asyncio.sleep(0)
        raise KeyError("async handler bug")

    client.on("deployment.status", broken)
    client.on("deployment.status", broken_async)
    client.on("deployment.status", seen)
    client.on("*", async_seen)
    await client.connect()
    try:
        await client.subscribe("D")
        with caplog.at_level(logging.ERROR, logger="stackpulse_client"):
            await server.apublish("D", {"status": "one"})
            await server.apublish("D", {"status": "two"})
            await seen.count(2)
            await async_seen.count(2)
        assert [m["seq"] for m in seen.items] == [1, 2]
        failures = [r for r in caplog.records if r.getMessage().startswith("callback")]
        assert len(failures) == 4  # two handlers, two events
        assert any("handler bug at seq 1" in str(r.exc_info[1]) for r in failures if r.exc_info)
        assert client.connected and client.connection_count == 1
    finally:
        await client.disconnect()


async def test_off_removes_one_handler_or_every_handler_of_a_type(server: Server) -> None:
    client = CloudWebSocketClient(server.ws_url)
    first, second, everything = Collector(), Collector(), Collector()
    client.on("deployment.status", first)
    assert client.on("deployment.status", second) is second
    client.on("*", everything)
    await client.connect()
    try:
        await client.subscribe("D")
        await server.apublish("D", {"status": "one"})
        await everything.count(1)
        client.off("deployment.status", first)
        client.off("deployment.status", first)  # not registered any more: nothing happens
        await server.apublish("D", {"status": "two"})
        await everything.count(2)
        client.off("deployment.status")
        await server.apublish("D", {"status": "three"})
        await everything.count(3)
        assert [m["seq"] for m in first.items] == [1]
        assert [m["seq"] for m in second.items] == [1, 2]
        assert "deployment.status" not in client.message_handlers
    finally:
        await client.disconnect()


async def test_subscribe_validates_its_arguments_and_a_second_subscribe_returns_the_first_reply(
    server: Server,
) -> None:
    client = CloudWebSocketClient(server.ws_url)
    await client.connect()
    try:
        with pytest.raises(ValueError):
            await client.subscribe("")
        with pytest.raises(ValueError):
            await client.subscribe("D", since=-1)
        with pytest.raises(ValueError):
            await client.subscribe("D", since="3")  # type: ignore[arg-type]
        assert client.subscriptions == set()
        first = await client.subscribe("D")
        second = await client.subscribe("D")
        assert first is not None and second is first
        await client.connect()  # already running: no second connection
        assert client.connection_count == 1
    finally:
        await client.disconnect()


async def test_calls_from_inside_a_handler_subscribe_without_waiting_and_disconnect_ends_run(
    server: Server,
) -> None:
    client = CloudWebSocketClient(server.ws_url)
    replies: List[Optional[Dict[str, Any]]] = []
    b_events, a_events = Collector(), Collector()

    async def on_a(message: Dict[str, Any]) -> None:
        a_events(message)
        if message["data"]["status"] == "follow-b":
            # Inside the receiving loop: it must not wait for its own reply.
            replies.append(await client.subscribe("B"))
        elif message["data"]["status"] == "stop":
            await client.disconnect()

    client.on("deployment.status", on_a)
    client.on("log.created", b_events)
    assert await client.subscribe("A") is None  # sent once run() connects
    subscribed = Collector()
    client.on("subscribed", subscribed)
    runner = asyncio.ensure_future(client.run())  # run() connects by itself
    try:
        await subscribed.count(1)
        await server.apublish("A", {"status": "follow-b"})
        await subscribed.count(2)
        assert replies == [None]
        assert client.subscriptions == {"A", "B"}
        await server.apublish("B", {"level": "info", "message": "b1", "stack_name": "s", "environment": "e"}, "log.created")
        await b_events.count(1)
        await server.apublish("A", {"status": "stop"})
        await asyncio.wait_for(runner, 10)  # disconnect() from the handler ends run()
        await asyncio.wait_for(client.wait_closed(), 5)
    finally:
        runner.cancel()
        await client.disconnect()
    assert not client.running and not client.connected
    assert [m["data"]["status"] for m in a_events.items] == ["follow-b", "stop"]


async def test_event_streams_end_on_close_on_leaving_async_with_and_after_the_client_ended(
    server: Server,
) -> None:
    client = CloudWebSocketClient(server.ws_url, event_backlog=0)
    delivered = Collector()
    client.on("*", delivered)
    await client.connect()
    try:
        await client.subscribe("D")
        async with client.events(types=["deployment.status"]) as stream:
            await server.apublish("D", {"status": "one"})
            first = await asyncio.wait_for(stream.__anext__(), 10)
            assert first["seq"] == 1
        # Left the block: the stream is closed and iteration ends.
        await server.apublish("D", {"status": "two"})
        await delivered.count(2)
        assert [e async for e in stream] == []
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

        other = client.events()
        await server.apublish("D", {"status": "three"})
        got = await asyncio.wait_for(other.__anext__(), 10)
        assert got["seq"] == 3
        other.close()
        assert [e async for e in other] == []
    finally:
        await client.disconnect()
    # A stream made after the client ended is already at its end.
    assert [e async for e in client.events()] == []


async def test_a_stream_made_after_the_client_gave_up_raises_its_error(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    client = CloudWebSocketClient(server.ws_url, backoff_base=0.01, backoff_max=0.02, max_reconnect_attempts=1)
    await client.connect()
    server.stop()
    with pytest.raises(ReconnectError):
        await asyncio.wait_for(client.run(), 15)
    with pytest.raises(ReconnectError):
        async for _ in client.events():
            pass


async def test_error_replies_without_an_error_handler_are_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = CloudWebSocketClient(server.ws_url)
    pongs = Collector()
    client.on("pong", pongs)
    await client.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="stackpulse_client"):
            await client.send({"action": "deploy-everything"})
            await client.ping()
            await pongs.count(1)  # replies come in order: the error was handled before
        assert any(
            "server error 400: Unknown action: deploy-everything" in r.getMessage() for r in caplog.records
        )
        assert client.connected
    finally:
        await client.disconnect()


async def test_in_band_refresh_stops_quietly_on_a_server_without_auth(server: Server) -> None:
    # A provider handing out short-lived JWTs: the client refreshes in-band before the
    # first expires; this server has no auth and says so; the client stops refreshing
    # and keeps the connection (the reply is not an error for the application).
    issued = Collector()

    def provider() -> str:
        token = _unsigned_jwt(time.time() + 2.0)
        issued(token)
        return token

    client = CloudWebSocketClient(server.ws_url, token=provider, refresh_margin=1.5)
    errors, statuses, logged = Collector(), Collector(), Collector()
    client.on("error", errors)
    client.on("deployment.status", statuses)
    log = logging.getLogger("stackpulse_client")
    handler = _Forward(logged)
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.DEBUG)
    await client.connect()
    try:
        await client.subscribe("D")
        await logged.until(
            lambda lines: any("in-band token refresh stopped" in line for line in lines), 10, "the refusal"
        )
        assert len(issued.items) == 2  # the first connect, then one in-band refresh
        await server.apublish("D", {"status": "still-live"})
        await statuses.count(1)
        assert errors.items == []  # the server's "not enabled" reply is the client's own business
        assert client.connection_count == 1 and client.connected
        assert client._refresh_task is None  # no further refresh is scheduled
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        await client.disconnect()


async def test_a_token_provider_returning_a_non_string_is_a_type_error(server: Server) -> None:
    client = CloudWebSocketClient(server.ws_url, token=lambda: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        await client.connect()
    assert not client.running


async def test_unsubscribing_while_the_server_retries_a_subscribe_ends_the_wait(
    start_server: Callable[..., Server], redis: Any
) -> None:
    """Redis is down: the server answers the subscribe with 503 and the client retries;
    an unsubscribe meanwhile drops the topic and fails the pending subscribe()."""
    server = start_server("--redis-url", redis.url)
    errors = Collector()
    client = CloudWebSocketClient(server.ws_url, backoff_base=5.0, backoff_max=10.0, reply_timeout=30)
    client.on("error", errors)
    await client.connect()
    try:
        redis.stop()
        pending = asyncio.ensure_future(client.subscribe("C"))
        await errors.until(lambda e: any(m["code"] == 503 for m in e), 20, "a 503")
        assert not pending.done() and client.subscriptions == {"C"}
        await client.unsubscribe("C")
        with pytest.raises(SubscriptionError) as ended:
            await asyncio.wait_for(pending, 5)
        assert ended.value.deployment_id == "C" and "unsubscribed" in ended.value.message
        assert client.subscriptions == set() and client.connected
    finally:
        await client.disconnect()
