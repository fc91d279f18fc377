"""End-to-end tests of CloudWebSocketClient against the real stackpulse binary."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from stackpulse_client import (
    CloudWebSocketClient,
    HandshakeError,
    AuthenticationError,
    NotConnectedError,
    ReconnectError,
    SubscriptionError,
)

from conftest import Collector, Server

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def seqs(messages: List[Dict[str, Any]]) -> List[int]:
    return [m["seq"] for m in messages]


async def test_handlers_sync_and_async_receive_typed_events(server: Server) -> None:
    # D2 has state before anyone subscribes: a subscriber gets a snapshot first.
    await server.apublish("D2", {"status": "deploying", "current_layer": 1, "total_layers": 3})

    client = CloudWebSocketClient(server.ws_url)
    statuses, logs, snapshots, everything = Collector(), Collector(), Collector(), Collector()
    client.on("deployment.status", statuses)  # a sync handler

    async def on_log(message: Dict[str, Any]) -> None:  # an async handler
        await asyncio.sleep(0)
        logs(message)

    client.on("log.created", on_log)
    client.on("deployment.snapshot", snapshots)
    client.on("*", everything)

    await client.connect()
    try:
        sub = await client.subscribe("D1")
        assert sub is not None
        assert sub["type"] == "subscribed" and sub["deployment_id"] == "D1"
        assert sub["seq"] == 0 and sub["recovered"] is True and sub["epoch"]
        sub2 = await client.subscribe("D2")
        assert sub2 is not None and sub2["seq"] == 1
        await snapshots.count(1)
        snap = snapshots.items[0]
        assert (snap["deployment_id"], snap["seq"]) == ("D2", 1)
        assert snap["data"]["status"] == "deploying"

        await server.apublish("D1", {"status": "deploying", "current_layer": 1, "total_layers": 2})
        await server.apublish(
            "D1",
            {"level": "info", "message": "layer 1 done", "stack_name": "api", "environment": "dev"},
            "log.created",
        )
        await server.apublish("D1", {"status": "deployed", "current_layer": 2, "total_layers": 2})

        await statuses.count(2)
        await logs.count(1)
        assert seqs(statuses.items) == [1, 3]
        assert [m["data"]["status"] for m in statuses.items] == ["deploying", "deployed"]
        assert statuses.items[1]["data"]["current_layer"] == 2
        assert all(TIMESTAMP.match(m["timestamp"]) for m in statuses.items)
        assert logs.items[0]["seq"] == 2 and logs.items[0]["data"]["message"] == "layer 1 done"
        await everything.count(4)
        assert [(m["deployment_id"], m["type"], m["seq"]) for m in everything.items] == [
            ("D2", "deployment.snapshot", 1),
            ("D1", "deployment.status", 1),
            ("D1", "log.created", 2),
            ("D1", "deployment.status", 3),
        ]
        assert client.positions["D1"].seq == 3
        assert client.subscriptions == {"D1", "D2"}
    finally:
        await client.disconnect()
    assert not client.running and not client.connected


async def test_events_iterator_yields_snapshot_then_events_and_ends(server: Server) -> None:
    await server.apublish("D1", {"status": "queued", "current_layer": 0, "total_layers": 3})
    client = CloudWebSocketClient(server.ws_url)
    await client.connect()
    await client.subscribe("D1")

    async def publish() -> None:
        for layer in (1, 2, 3):
            status = "deployed" if layer == 3 else "deploying"
            await server.apublish("D1", {"status": status, "current_layer": layer, "total_layers": 3})

    publisher = asyncio.ensure_future(publish())

    async def collect() -> List[Dict[str, Any]]:
        got = []
        async for event in client.events():
            got.append(event)
            if event["type"] == "deployment.status" and event["data"]["status"] == "deployed":
                break
        return got

    got = await asyncio.wait_for(collect(), 15)
    await publisher
    assert [(e["type"], e["seq"]) for e in got] == [
        ("deployment.snapshot", 1),
        ("deployment.status", 2),
        ("deployment.status", 3),
        ("deployment.status", 4),
    ]

    # A filtered stream, then the end of iteration when the client disconnects.
    stream = client.events(types=["log.created"])
    await server.apublish("D1", {"status": "ignored"})
    await server.apublish("D1", {"level": "info", "message": "m", "stack_name": "s", "environment": "e"}, "log.created")
    first = await asyncio.wait_for(stream.__anext__(), 10)
    assert (first["type"], first["seq"]) == ("log.created", 6)
    await client.disconnect()
    rest = await asyncio.wait_for(_drain(stream), 10)
    assert rest == []


async def _drain(stream: Any) -> List[Any]:
    return [e async for e in stream]


async def test_resume_after_server_drops_idle_connection_is_gap_free(start_server: Callable[..., Server]) -> None:
    """The server closes silent clients (4000); events published while the client is
    away are replayed on resume: every seq exactly once, in order, no resync."""
    server = start_server("--idle-timeout", "0.5")
    closes: List[Optional[int]] = []
    resyncs = Collector()
    seen = Collector()
    subscribed = Collector()
    published: List[int] = []
    drops_to_fill = 3

    async def on_disconnect(code: Optional[int], reason: str) -> None:
        closes.append(code)
        if len(closes) <= drops_to_fill:
            # Published while this client has no connection: only a resume brings them.
            for i in range(5):
                published.append(await server.apublish("D", {"status": f"gap{len(closes)}-{i}"}))

    client = CloudWebSocketClient(
        server.ws_url,
        ping_interval=None,  # stay silent so the server's idle timeout drops us
        backoff_base=0.05,
        backoff_max=0.2,
        on_disconnect=on_disconnect,
        on_resync=lambda topic, snap: resyncs((topic, snap)),
    )
    client.on("deployment.status", seen)
    client.on("subscribed", subscribed)
    await client.connect()
    try:
        await client.subscribe("D")
        for i in range(5):
            published.append(await server.apublish("D", {"status": f"live{i}"}))
        # Wait for three drops (and their gap events) and the resumes after them.
        await subscribed.until(lambda s: len(s) >= drops_to_fill + 1, 20, "resubscriptions")
        last = await server.apublish("D", {"status": "final"})
        published.append(last)
        await seen.until(lambda s: s[-1]["seq"] == last, 20, "the final event")
    finally:
        await client.disconnect()

    assert sorted(published) == list(range(1, last + 1))
    assert seqs(seen.items) == list(range(1, last + 1))  # exactly once, in order
    assert closes[:drops_to_fill] == [4000] * drops_to_fill
    resumed = subscribed.items[1:]
    assert resumed and all(m["recovered"] is True for m in resumed)
    assert resyncs.items == []
    assert client.connection_count >= drops_to_fill + 1


async def test_resume_after_abrupt_disconnect_is_gap_free(server: Server) -> None:
    """The socket dies without a close frame while events keep being published."""
    seen, snapshots, closes = Collector(), Collector(), Collector()
    published: List[int] = []

    async def on_disconnect(code: Optional[int], reason: str) -> None:
        for i in range(4):
            published.append(await server.apublish("D", {"status": f"while-away-{i}"}))
        closes(code)

    connects = Collector()
    client = CloudWebSocketClient(
        server.ws_url,
        backoff_base=0.05,
        backoff_max=0.2,
        on_disconnect=on_disconnect,
        on_connect=lambda: connects(len(seen.items)),
    )
    client.on("deployment.status", seen)
    client.on("deployment.snapshot", snapshots)
    await client.connect()
    stop = asyncio.Event()

    async def keep_publishing() -> None:
        i = 0
        while not stop.is_set():
            published.append(await server.apublish("D", {"status": f"bg-{i}"}))
            i += 1

    try:
        await client.subscribe("D")
        background = asyncio.ensure_future(keep_publishing())
        for drop in range(1, 4):
            await connects.count(drop)
            # A few live events on this connection, then the network goes away.
            before = connects.items[-1]
            await seen.until(lambda s: len(s) >= before + 3, 15, f"events before drop {drop}")
            ws = client.ws
            assert ws is not None
            ws.transport.abort()  # no close frame: the network went away
            await closes.count(drop)
        stop.set()
        await background
        last = await server.apublish("D", {"status": "final"})
        published.append(last)
        await seen.until(lambda s: bool(s) and s[-1]["seq"] == last, 15, "the final event")
    finally:
        stop.set()
        await client.disconnect()

    assert sorted(published) == list(range(1, len(published) + 1))
    assert seqs(seen.items) == list(range(1, last + 1))  # every seq once, in order
    assert closes.items[:3] == [None, None, None]
    assert snapshots.items == []  # resumed from history, never resynced
    assert client.connection_count == 4


async def test_server_restart_fires_resync_and_token_provider_runs_on_every_connect(
    start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server()
    order: List[str] = []
    gate = asyncio.Event()
    gate.set()
    tokens: List[str] = []

    async def token_provider() -> str:
        await gate.wait()  # lets the test decide when a reconnect may go ahead
        tokens.append(f"secret-token-{len(tokens) + 1}")
        order.append("token")
        return tokens[-1]

    closes, resyncs, statuses, snapshots = Collector(), Collector(), Collector(), Collector()

    def on_connect() -> None:
        order.append("connected")

    client = CloudWebSocketClient(
        server.ws_url,
        token=token_provider,
        backoff_base=0.05,
        backoff_max=0.3,
        on_connect=on_connect,
        on_disconnect=lambda code, reason: closes(code),
        on_resync=lambda topic, snap: resyncs((topic, snap)),
    )
    client.on("deployment.status", statuses)
    client.on("deployment.snapshot", snapshots)
    await client.connect()
    try:
        first = await client.subscribe("D")
        assert first is not None
        for i in (1, 2, 3):
            await server.apublish("D", {"status": f"epoch1-{i}"})
        await statuses.count(3)

        # Restart with an event published before the client can come back:
        # the resume fails (new epoch), the snapshot is handed to on_resync.
        gate.clear()
        server.stop()
        await closes.count(1)
        assert closes.items == [1001]
        server.start()
        assert await server.apublish("D", {"status": "restarted", "current_layer": 1, "total_layers": 2}) == 1
        gate.set()
        await resyncs.count(1)
        topic, snap = resyncs.items[0]
        assert topic == "D" and snap is not None
        assert (snap["type"], snap["seq"], snap["data"]["status"]) == ("deployment.snapshot", 1, "restarted")
        await snapshots.count(1)
        assert snapshots.items[0] is snap
        assert client.positions["D"].epoch != first["epoch"]
        await server.apublish("D", {"status": "epoch2-2"})
        await statuses.count(4)

        # Restart again with nothing published: on_resync(topic, None), and seq 1 of
        # the new epoch is delivered although 2 was the last seq seen.
        server.restart()
        await resyncs.count(2)
        assert resyncs.items[1] == ("D", None)
        await server.apublish("D", {"status": "epoch3-1"})
        await statuses.count(5)

        ws = client.ws
        assert ws is not None
        assert ws.request is not None
        assert ws.request.headers["Authorization"] == f"Bearer {tokens[-1]}"
    finally:
        await client.disconnect()

    assert [(m["seq"], m["data"]["status"]) for m in statuses.items] == [
        (1, "epoch1-1"), (2, "epoch1-2"), (3, "epoch1-3"), (2, "epoch2-2"), (1, "epoch3-1"),
    ]
    assert closes.items == [1001, 1001, 1000]
    # A fresh token before every connect (failed attempts while the server was down too).
    assert order.count("connected") == 3
    for i, step in enumerate(order):
        if step == "connected":
            assert i > 0 and order[i - 1] == "token"
    assert len(tokens) >= 3
    # The tokens never reach the logs (the websockets debug log shows the header masked).
    assert not any(t in caplog.text for t in tokens)
    assert "Bearer ***" in caplog.text


async def test_server_error_replies_reach_the_error_handler(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-subscriptions", "1")
    client = CloudWebSocketClient(server.ws_url)
    errors, statuses = Collector(), Collector()
    client.on("error", errors)
    client.on("deployment.status", statuses)
    with pytest.raises(NotConnectedError):
        await client.send({"action": "ping"})
    await client.connect()
    try:
        await client.send({"action": "deploy-everything"})
        await client.send({"action": "subscribe"})
        await errors.count(2)
        assert errors.items[0] == {"type": "error", "code": 400, "message": "Unknown action: deploy-everything"}
        assert (errors.items[1]["code"], errors.items[1]["message"]) == (400, "Missing deployment_id")

        await client.subscribe("A")
        with pytest.raises(SubscriptionError) as refused:
            await client.subscribe("B")
        assert refused.value.code == 429 and refused.value.deployment_id == "B"
        assert "Too many subscriptions" in refused.value.message
        await errors.count(3)
        assert errors.items[2]["code"] == 429 and errors.items[2]["deployment_id"] == "B"
        assert client.subscriptions == {"A"}

        # The connection stays usable.
        pongs = Collector()
        client.on("pong", pongs)
        await client.ping()
        await pongs.count(1)
        await server.apublish("A", {"status": "still-here"})
        await statuses.count(1)
    finally:
        await client.disconnect()


async def test_connection_limit_is_a_clear_handshake_error(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-connections", "1")
    first = CloudWebSocketClient(server.ws_url)
    await first.connect()
    try:
        second = CloudWebSocketClient(server.ws_url, auto_reconnect=True)
        with pytest.raises(HandshakeError) as refused:
            await second.connect()
        assert refused.value.status == 503
        assert "connection limit" in refused.value.message
        assert not isinstance(refused.value, AuthenticationError)
        assert not second.running
    finally:
        await first.disconnect()


async def test_slow_consumer_close_4008_reconnects_and_resumes(start_server: Callable[..., Server]) -> None:
    server = start_server("--queue-size", "2")
    closes, seen = Collector(), Collector()
    release = asyncio.Event()

    async def slow_handler(message: Dict[str, Any]) -> None:
        if message["seq"] == 1:
            await release.wait()  # stop reading until the server gave up on us
        seen(message)

    client = CloudWebSocketClient(
        server.ws_url, backoff_base=0.05, backoff_max=0.2, on_disconnect=lambda c, r: closes(c)
    )
    client.on("log.created", slow_handler)
    await client.connect()
    try:
        await client.subscribe("D")
        blob = "x" * 60_000
        last = 0
        # Enough bytes to fill the socket buffers behind the stalled reader.
        for _ in range(400):
            last = await server.apublish(
                "D", {"level": "info", "message": blob, "stack_name": "s", "environment": "e"}, "log.created"
            )
            if _metric(server, "stackpulse_slow_consumer_closes_total") >= 1:
                break
        assert _metric(server, "stackpulse_slow_consumer_closes_total") >= 1
        release.set()
        await closes.count(1)
        assert closes.items[0] == 4008
        await seen.until(lambda s: bool(s) and s[-1]["seq"] == last, 30, "every event after the resume")
    finally:
        release.set()
        await client.disconnect()
    assert seqs(seen.items) == list(range(1, last + 1))


def _metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_without_auto_reconnect_run_returns_when_the_server_goes_away(server: Server) -> None:
    closes = Collector()
    client = CloudWebSocketClient(server.ws_url, auto_reconnect=False, on_disconnect=lambda c, r: closes(c))
    await client.connect()
    await client.subscribe("D")
    stream = client.events()
    runner = asyncio.ensure_future(client.run())
    await server.apublish("D", {"status": "one"})
    first = await asyncio.wait_for(stream.__anext__(), 10)
    assert first["seq"] == 1
    server.stop()
    await asyncio.wait_for(runner, 15)  # returns, no exception
    assert closes.items == [1001]
    assert await asyncio.wait_for(_drain(stream), 5) == []
    assert not client.running


async def test_unsubscribe_stops_delivery_and_subscribe_before_connect_is_sent_on_connect(server: Server) -> None:
    client = CloudWebSocketClient(server.ws_url)
    statuses, unsubscribed = Collector(), Collector()
    client.on("deployment.status", statuses)
    client.on("unsubscribed", unsubscribed)
    assert await client.subscribe("A") is None  # not connected yet: sent on connect
    subscribed = Collector()
    client.on("subscribed", subscribed)
    await client.connect()
    try:
        await subscribed.count(1)
        await client.subscribe("B")
        await server.apublish("A", {"status": "a1"})
        await statuses.count(1)
        await client.unsubscribe("A")
        await unsubscribed.count(1)
        assert unsubscribed.items[0]["deployment_id"] == "A"
        await server.apublish("A", {"status": "a2"})
        await server.apublish("B", {"status": "b1"})
        await statuses.count(2)
        assert [(m["deployment_id"], m["data"]["status"]) for m in statuses.items] == [("A", "a1"), ("B", "b1")]
        assert client.subscriptions == {"B"}
    finally:
        await client.disconnect()


async def test_keepalive_pings_keep_an_idle_subscriber_connected(start_server: Callable[..., Server]) -> None:
    server = start_server("--idle-timeout", "0.5")
    closes, pongs = Collector(), Collector()
    client = CloudWebSocketClient(server.ws_url, ping_interval=0.1, on_disconnect=lambda c, r: closes(c))
    client.on("pong", pongs)
    await client.connect()
    try:
        await client.subscribe("D")
        await pongs.count(15)  # 1.5 s: three idle timeouts' worth
        assert all(TIMESTAMP.match(p["timestamp"]) for p in pongs.items)
        assert closes.items == [] and client.connection_count == 1
    finally:
        await client.disconnect()


async def test_gives_up_after_max_reconnect_attempts_and_disconnect_stops_retrying(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    attempts = Collector()

    def provider() -> str:
        attempts("token")
        return "t"

    client = CloudWebSocketClient(
        server.ws_url, token=provider, backoff_base=0.01, backoff_max=0.02, max_reconnect_attempts=3
    )
    await client.connect()
    server.stop()
    with pytest.raises(ReconnectError) as gave_up:
        await asyncio.wait_for(client.run(), 15)
    assert gave_up.value.attempts == 3
    assert isinstance(gave_up.value.last_error, OSError)
    assert len(attempts.items) == 4  # the first connect and three attempts
    assert not client.running

    # Without a limit it retries until disconnect(), which ends it promptly.
    patient = CloudWebSocketClient(server.ws_url, token=provider, backoff_base=0.01, backoff_max=0.02)
    server.start()
    await patient.connect()
    server.stop()
    before = len(attempts.items)
    await attempts.count(before + 3)  # retrying
    await asyncio.wait_for(patient.disconnect(), 5)
    assert not patient.running


async def test_restarts_under_continuous_publishing_deliver_each_epoch_in_order(
    start_server: Callable[..., Server],
) -> None:
    """Events are published without pause while the server is restarted twice on the
    same port. Per epoch the client delivers a contiguous run of seqs (after the
    snapshot it resynced from), never a duplicate, and after the last restart
    everything published."""
    server = start_server()
    deliveries: List[Tuple[str, Any]] = []  # ("event", message) | ("resync", snapshot)
    resyncs = Collector()

    def on_resync(topic: str, snapshot: Optional[Dict[str, Any]]) -> None:
        deliveries.append(("resync", snapshot))
        resyncs(topic)

    seen = Collector()

    def on_status(message: Dict[str, Any]) -> None:
        deliveries.append(("event", message))
        seen(message)

    client = CloudWebSocketClient(server.ws_url, backoff_base=0.02, backoff_max=0.1, on_resync=on_resync)
    client.on("deployment.status", on_status)
    published: Dict[int, List[Tuple[int, str]]] = {}  # server start -> [(seq, label)]
    stop = asyncio.Event()
    lock = asyncio.Lock()  # no publish in flight while the server restarts

    async def keep_publishing() -> None:
        n = 0
        while not stop.is_set():
            label = f"e{n}"
            async with lock:
                epoch = server.starts
                seq = await server.apublish("D", {"status": label})
            published.setdefault(epoch, []).append((seq, label))
            n += 1

    await client.connect()
    await client.subscribe("D")
    publisher = asyncio.ensure_future(keep_publishing())
    try:
        for restart in (1, 2):
            await seen.count(len(seen.items) + 5)
            async with lock:
                server.restart()
            await resyncs.count(restart)
        await seen.count(len(seen.items) + 5)
        stop.set()
        await publisher
        last = await server.apublish("D", {"status": "final"})
        published[server.starts].append((last, "final"))
        await seen.until(lambda s: s[-1]["data"]["status"] == "final", 15, "the final event")
    finally:
        stop.set()
        await client.disconnect()

    # Split what the client delivered at each resync.
    segments: List[Tuple[int, List[Tuple[int, str]]]] = [(0, [])]
    for kind, item in deliveries:
        if kind == "resync":
            segments.append((item["seq"] if item else 0, []))
        else:
            segments[-1][1].append((item["seq"], item["data"]["status"]))
    assert len(segments) == 3
    for epoch, (start, got) in enumerate(segments, start=1):
        expected = [p for p in published[epoch] if p[0] > start]
        assert got == expected[: len(got)], f"epoch {epoch}: not a contiguous run"
        assert [s for s, _ in got] == list(range(start + 1, start + 1 + len(got)))
    assert segments[-1][1] == [p for p in published[3] if p[0] > segments[-1][0]]
    assert segments[-1][1][-1] == (last, "final")


async def test_backoff_continues_across_connections_that_drop_at_once(start_server: Callable[..., Server]) -> None:
    """A server that keeps dropping fresh connections (idle timeout 0.2 s) is not
    reconnected to at the base delay forever: the backoff step keeps growing until a
    connection outlives backoff_max."""
    server = start_server("--idle-timeout", "0.2")
    connects = Collector()
    flapping = CloudWebSocketClient(
        server.ws_url, ping_interval=None, backoff_base=0.01, backoff_max=5.0,
        on_connect=lambda: connects(flapping._backoff_step),
    )
    await flapping.connect()
    try:
        await connects.count(5)
    finally:
        await flapping.disconnect()
    assert connects.items == [0, 1, 2, 3, 4]

    stable_connects = Collector()
    stable = CloudWebSocketClient(
        server.ws_url, ping_interval=None, backoff_base=0.01, backoff_max=0.1,
        on_connect=lambda: stable_connects(stable._backoff_step),
    )
    await stable.connect()
    try:
        await stable_connects.count(4)
    finally:
        await stable.disconnect()
    assert stable_connects.items == [0, 1, 1, 1]  # each 0.2 s connection restarted the sequence


async def test_restart_with_history_in_redis_resumes_without_gap_or_duplicate(
    start_server: Callable[..., Server], redis: Any
) -> None:
    """Two nodes share Redis. The client's node is killed (no close frame) and
    restarted on the same port while events keep being published through the other
    node: the resume is recovered (same epoch, history in Redis) and the handler sees
    every seq exactly once, in order."""
    node_a = start_server("--redis-url", redis.url)
    node_b = start_server("--redis-url", redis.url)
    seen, closes, subscribed, resyncs = Collector(), Collector(), Collector(), Collector()
    client = CloudWebSocketClient(
        node_a.ws_url, backoff_base=0.05, backoff_max=0.3,
        on_disconnect=lambda c, r: closes(c), on_resync=lambda t, s: resyncs(t),
    )
    client.on("deployment.status", seen)
    client.on("subscribed", subscribed)
    stop = asyncio.Event()

    async def keep_publishing() -> None:  # through node B, unaffected by A's restart
        i = 0
        while not stop.is_set():
            await node_b.apublish("D", {"status": f"b-{i}"})
            i += 1

    await client.connect()
    try:
        await client.subscribe("D")
        publisher = asyncio.ensure_future(keep_publishing())
        await seen.count(5)
        node_a.stop(signal.SIGKILL)
        await closes.count(1)
        before_restart = len(seen.items)
        node_a.start()  # same port, same Redis
        await subscribed.count(2)
        await seen.count(before_restart + 5)
        stop.set()
        await publisher
        last = await node_b.apublish("D", {"status": "final"})
        await seen.until(lambda s: s[-1]["seq"] == last, 15, "the final event")
    finally:
        stop.set()
        await client.disconnect()

    assert [m["seq"] for m in seen.items] == list(range(1, last + 1))
    assert closes.items[0] is None  # killed: no close frame
    first, resumed = subscribed.items[0], subscribed.items[1]
    assert resumed["recovered"] is True and resumed["epoch"] == first["epoch"]
    assert resyncs.items == []


async def test_subscribe_resumes_from_a_saved_position(server: Server) -> None:
    first = CloudWebSocketClient(server.ws_url)
    statuses = Collector()
    first.on("deployment.status", statuses)
    await first.connect()
    await first.subscribe("D")
    for i in (1, 2, 3):
        await server.apublish("D", {"status": f"s{i}"})
    await statuses.count(3)
    saved = first.positions["D"]
    await first.disconnect()
    assert saved.seq == 3 and saved.epoch
    for i in (4, 5):
        await server.apublish("D", {"status": f"s{i}"})

    # A later run resumes from the saved position: only what it missed, no snapshot.
    later = CloudWebSocketClient(server.ws_url)
    seen = Collector()
    later.on("*", seen)
    await later.connect()
    try:
        reply = await later.subscribe("D", since=saved.seq, epoch=saved.epoch)
        assert reply is not None and reply["recovered"] is True
        await seen.count(2)
        assert [(m["type"], m["seq"]) for m in seen.items] == [("deployment.status", 4), ("deployment.status", 5)]
    finally:
        await later.disconnect()

    # A position from another epoch is not recovered: resync with the snapshot.
    resyncs = Collector()
    stale = CloudWebSocketClient(server.ws_url, on_resync=lambda t, s: resyncs((t, s)))
    await stale.connect()
    try:
        reply = await stale.subscribe("D", since=3, epoch="not-the-epoch")
        assert reply is not None and reply["recovered"] is False
        await resyncs.count(1)
        topic, snapshot = resyncs.items[0]
        assert topic == "D" and snapshot is not None and snapshot["seq"] == 5
    finally:
        await stale.disconnect()


async def test_stack_tracking_events_and_stack_snapshot(server: Server) -> None:
    resource_event = {
        "resource": {
            "logicalId": "Bucket", "type": "AWS::S3::Bucket", "status": "CREATE_COMPLETE",
            "physicalId": "b-1", "statusReason": "", "progress": 50,
        },
        "stack": {
            "name": "stack-1", "status": "CREATE_IN_PROGRESS", "totalResources": 2,
            "completedResources": 1, "inProgressResources": 1, "failedResources": 0, "progress": 50,
        },
    }
    await server.apublish("stack-1", resource_event, "resource.status")
    client = CloudWebSocketClient(server.ws_url)
    snapshots, resources = Collector(), Collector()
    client.on("stack.snapshot", snapshots)
    client.on("resource.status", resources)
    await client.connect()
    try:
        await client.subscribe("stack-1")
        await snapshots.count(1)
        snap = snapshots.items[0]
        assert snap["seq"] == 1
        assert snap["data"]["resources"]["Bucket"]["status"] == "CREATE_COMPLETE"
        assert snap["data"]["stack"]["progress"] == 50
        resource_event["resource"]["logicalId"] = "Queue"
        await server.apublish("stack-1", resource_event, "resource.status")
        await resources.count(1)
        assert resources.items[0]["seq"] == 2
        assert resources.items[0]["data"]["resource"]["logicalId"] == "Queue"
    finally:
        await client.disconnect()


async def test_subscribes_made_before_and_during_connect_are_sent(server: Server) -> None:
    client = CloudWebSocketClient(server.ws_url)
    statuses, acks = Collector(), Collector()
    client.on("deployment.status", statuses)
    client.on("subscribed", acks)
    for i in range(20):
        assert await client.subscribe(f"early-{i}") is None  # not connected: sent by connect()

    async def subscribe_during_connect() -> None:
        for i in range(5):
            await asyncio.sleep(0)
            await client.subscribe(f"late-{i}")

    await asyncio.gather(client.connect(), subscribe_during_connect())
    try:
        topics = [f"early-{i}" for i in range(20)] + [f"late-{i}" for i in range(5)]
        assert client.subscriptions == set(topics)
        # Publish once the server has them all (a publish that overtook its
        # subscribe would arrive as the snapshot, not as a live event).
        await acks.until(
            lambda items: {m["deployment_id"] for m in items} >= set(topics),
            what="every subscription acknowledged",
        )
        for topic in topics:
            await server.apublish(topic, {"status": "x"})
        await statuses.count(len(topics))
        assert sorted(m["deployment_id"] for m in statuses.items) == sorted(topics)
    finally:
        await client.disconnect()


async def test_backplane_outage_subscribe_errors_are_retried(
    start_server: Callable[..., Server], redis: Any
) -> None:
    """While Redis is down the server answers subscribes with 503: the client keeps
    the topic, reports the error, retries with backoff and gets it once Redis is back."""
    server = start_server("--redis-url", redis.url)
    errors, closes, statuses, resyncs = Collector(), Collector(), Collector(), Collector()
    client = CloudWebSocketClient(
        server.ws_url, backoff_base=0.05, backoff_max=0.3, reply_timeout=30,
        on_disconnect=lambda c, r: closes(c), on_resync=lambda t, s: resyncs(t),
    )
    client.on("error", errors)
    client.on("deployment.status", statuses)
    await client.connect()
    try:
        await client.subscribe("A")
        await server.apublish("A", {"status": "before"})
        await statuses.count(1)
        redis.stop()
        pending = asyncio.ensure_future(client.subscribe("B"))
        await errors.until(lambda e: any(m["code"] == 503 and m.get("deployment_id") == "B" for m in e), 20, "a 503")
        assert not pending.done() and "B" in client.subscriptions
        redis.start()  # empty: the topics' history is gone
        reply = await asyncio.wait_for(pending, 30)
        assert reply is not None and reply["deployment_id"] == "B"
        # The server resyncs A once its pub/sub is back (A's epoch changed with the
        # empty Redis). An event published before that arrives inside A's snapshot,
        # not as an event, so wait for the resync first.
        await resyncs.until(lambda r: "A" in r, 30, "A resynced")
        await server.apublish("B", {"status": "b-after"})
        await server.apublish("A", {"status": "a-after"})
        await statuses.until(lambda s: {m["data"]["status"] for m in s} >= {"b-after", "a-after"}, 30, "both topics")
    finally:
        await client.disconnect()
    # A's counter was lost with Redis: the server said so (recovered: false) and the
    # new epoch's seq 1 was delivered, not dropped as a duplicate of the old seq 1.
    assert resyncs.items == ["A"]
    assert [m["seq"] for m in statuses.items if m["deployment_id"] == "A"] == [1, 1]
