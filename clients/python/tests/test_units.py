"""Unit tests that need no server: backoff, the resume bookkeeping, URL handling, the
parsing of what a server or proxy may send that the real server never does (frames that
are not JSON, error bodies that are not JSON), and log redaction."""

from __future__ import annotations

import base64
import logging
import random
import statistics
from typing import Any, Dict, List, Optional, Tuple

import pytest

from stackpulse_client import CloudWebSocketClient, Position, backoff_cap, backoff_delay
from stackpulse_client.client import _body_message, _jwt_exp, _RedactingLogger


def test_backoff_cap_grows_exponentially_and_is_capped() -> None:
    caps = [backoff_cap(n, 0.5, 30.0) for n in range(10)]
    assert caps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert caps[7:] == [30.0, 30.0, 30.0]
    assert backoff_cap(5000, 0.5, 30.0) == 30.0  # no overflow
    with pytest.raises(ValueError):
        backoff_cap(-1, 0.5, 30.0)


def test_backoff_delay_has_full_jitter_below_the_cap() -> None:
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.0) == 0.0
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.5) == 2.0
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)
    rng = random.Random(7)
    for attempt in range(12):
        samples = [backoff_delay(attempt, 0.5, 30.0, rng=rng.random) for _ in range(2000)]
        cap = backoff_cap(attempt, 0.5, 30.0)
        assert all(0.0 <= d < cap for d in samples)
        # Spread over the whole range (full jitter), not a fixed delay.
        assert min(samples) < 0.05 * cap and max(samples) > 0.95 * cap
        assert statistics.mean(samples) == pytest.approx(cap / 2, rel=0.1)
    # The typical delay grows with the attempt until the cap.
    means = [statistics.mean(backoff_delay(a, 0.5, 30.0, rng=rng.random) for _ in range(2000)) for a in range(7)]
    assert means == sorted(means) and means[6] > 10 * means[0]


def _offline_client(resyncs: List[Tuple[str, Optional[Dict[str, Any]]]]) -> CloudWebSocketClient:
    return CloudWebSocketClient("ws://127.0.0.1:9/ws", on_resync=lambda t, s: resyncs.append((t, s)))


async def test_duplicates_and_stale_seqs_are_dropped_and_snapshots_reset_the_position() -> None:
    resyncs: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    client = _offline_client(resyncs)
    seen: List[Tuple[str, int]] = []
    client.on("*", lambda m: seen.append((m["type"], m["seq"])))
    assert await client.subscribe("D") is None  # offline: registered for connect

    def event(seq: int, kind: str = "deployment.status") -> Dict[str, Any]:
        return {"type": kind, "deployment_id": "D", "seq": seq, "timestamp": "t", "data": {}}

    await client._dispatch({"type": "subscribed", "deployment_id": "D", "seq": 0, "epoch": "e1", "recovered": True})
    for seq in (1, 2, 2, 1, 3):
        await client._dispatch(event(seq))
    assert seen == [("deployment.status", 1), ("deployment.status", 2), ("deployment.status", 3)]
    assert client.positions["D"].seq == 3 and client.positions["D"].epoch == "e1"

    # A failed resume: the position restarts at the snapshot's seq, even a lower one.
    await client._dispatch({"type": "subscribed", "deployment_id": "D", "seq": 2, "epoch": "e2", "recovered": False})
    assert resyncs == []  # waits for the snapshot
    snap = event(2, "deployment.snapshot")
    await client._dispatch(snap)
    assert resyncs == [("D", snap)]
    await client._dispatch(event(3))
    await client._dispatch(event(3))
    assert seen[3:] == [("deployment.snapshot", 2), ("deployment.status", 3)]
    assert client.positions["D"].epoch == "e2"

    # Events of a topic not subscribed are not delivered.
    await client.unsubscribe("D")
    await client._dispatch(event(4))
    assert len(seen) == 5


def test_endpoint_validation_and_repr_hide_the_token() -> None:
    client = CloudWebSocketClient("http://127.0.0.1:8000/ws", token="s3cr3t")
    assert client.endpoint == "ws://127.0.0.1:8000/ws"
    assert "s3cr3t" not in repr(client)
    with pytest.raises(ValueError):
        CloudWebSocketClient("ftp://example.com/ws")


def test_handshake_error_text_is_the_json_message_or_the_start_of_the_body() -> None:
    assert _body_message(None) == "" and _body_message(b"") == ""
    assert _body_message(b'{"message": "connection limit reached"}') == "connection limit reached"
    assert _body_message(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert _body_message(b'{"error": "no message field"}') == '{"error": "no message field"}'
    assert _body_message(b"x" * 500) == "x" * 200


def _jwt(payload: bytes) -> str:
    return "h." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + ".s"


def test_jwt_expiry_is_read_only_from_a_well_formed_numeric_exp() -> None:
    assert _jwt_exp(_jwt(b'{"exp": 1700000000}')) == 1700000000.0
    assert _jwt_exp(_jwt(b'{"exp": 1700000000.5}')) == 1700000000.5
    assert _jwt_exp("opaque-token") is None  # not a JWT: no refresh timing
    assert _jwt_exp(_jwt(b"not json")) is None
    assert _jwt_exp("h.%%%.s") is None  # not base64
    assert _jwt_exp(_jwt(b'["exp"]')) is None
    assert _jwt_exp(_jwt(b'{"exp": "soon"}')) is None
    assert _jwt_exp(_jwt(b'{"exp": true}')) is None
    assert _jwt_exp(_jwt(b'{"sub": "dana"}')) is None


def test_logs_never_show_the_token_in_text_bytes_or_objects(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("stackpulse_client.test_redaction")
    log = _RedactingLogger(logger, {"s3cr3t-token"})

    class Headers:
        def __str__(self) -> str:
            return "Headers(authorization=s3cr3t-token)"

    with caplog.at_level(logging.DEBUG, logger=logger.name):
        log.debug("sent %s and %s", b"bearer s3cr3t-token", Headers())
        log.info("GET /ws?x=1&token=another-one HTTP/1.1 Authorization: Bearer yet-another")
        log.info("count %d", 3)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cr3t" not in text and "another-one" not in text and "yet-another" not in text
    assert "sent bearer *** and Headers(authorization=***)" in text
    assert "token=***" in text and "Bearer ***" in text
    assert "count 3" in text
    # Below the logger's level nothing is formatted at all.
    with caplog.at_level(logging.WARNING, logger=logger.name):
        log.info("quiet s3cr3t-token")
    assert "quiet" not in "\n".join(r.getMessage() for r in caplog.records)


async def test_frames_that_are_not_json_objects_with_a_type_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    client = CloudWebSocketClient("ws://127.0.0.1:9/ws")
    seen: List[Dict[str, Any]] = []
    client.on("*", seen.append)
    await client.subscribe("D")
    await client._dispatch({"type": "subscribed", "deployment_id": "D", "seq": 0, "epoch": "e", "recovered": True})
    with caplog.at_level(logging.WARNING, logger="stackpulse_client"):
        await client._handle_raw("not json")
        await client._handle_raw("[1, 2]")
        await client._handle_raw('{"deployment_id": "D", "seq": 1}')
        await client._handle_raw(b'{"type": "deployment.status", "deployment_id": "D", "seq": 1, "data": {}}')
    assert [m["seq"] for m in seen] == [1]  # only the typed frame (sent as bytes) was delivered
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("ignoring a frame that is not JSON") == 1
    assert messages.count("ignoring a frame without a type") == 2


async def test_gaps_are_reported_and_a_failed_resume_without_snapshot_resyncs_with_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resyncs: List[Tuple[str, Optional[Dict[str, Any]]]] = []
    client = _offline_client(resyncs)
    seen: List[int] = []
    client.on("*", lambda m: seen.append(m["seq"]))
    await client.subscribe("D")
    # A subscribed reply for a topic never subscribed changes nothing.
    await client._dispatch({"type": "subscribed", "deployment_id": "X", "seq": 4, "epoch": "e", "recovered": True})
    assert client.subscriptions == {"D"}
    await client._dispatch({"type": "subscribed", "deployment_id": "D", "seq": 0, "epoch": "e1", "recovered": True})
    with caplog.at_level(logging.WARNING, logger="stackpulse_client"):
        for seq in (1, 2, 5):
            await client._dispatch({"type": "deployment.status", "deployment_id": "D", "seq": seq, "data": {}})
    assert seen == [1, 2, 5]  # delivered, but the hole is reported
    assert any(r.getMessage() == "gap on D: seq 5 after 2" for r in caplog.records)
    # recovered: false and the next message is an event, not a snapshot: resync(None).
    await client._dispatch({"type": "subscribed", "deployment_id": "D", "seq": 9, "epoch": "e2", "recovered": False})
    await client._dispatch({"type": "deployment.status", "deployment_id": "D", "seq": 10, "data": {}})
    assert resyncs == [("D", None)]
    assert seen[-1] == 10 and client.positions["D"] == Position(10, "e2")


def test_backoff_rejects_negative_parameters() -> None:
    with pytest.raises(ValueError):
        backoff_cap(1, -0.5, 30.0)
    with pytest.raises(ValueError):
        backoff_cap(1, 0.5, -1.0)
