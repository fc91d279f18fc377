"""Unit tests that need no server: backoff, the resume bookkeeping, URL handling."""

from __future__ import annotations

import random
import statistics
from typing import Any, Dict, List, Optional, Tuple

import pytest

from stackpulse_client import CloudWebSocketClient, backoff_cap, backoff_delay


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
