"""Reconnect delays: capped exponential backoff with full jitter.

The client waits ``backoff_delay(attempt, base, maximum)`` seconds before its
``attempt``-th reconnect attempt (0 for the first). Full jitter (a uniform draw
between zero and the capped exponential) spreads the reconnects of many clients
that lost the same server at the same moment, so they do not return in lockstep.
"""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["backoff_cap", "backoff_delay"]


def backoff_cap(attempt: int, base: float, maximum: float) -> float:
    """The upper bound of the delay before attempt ``attempt``: ``min(maximum, base * 2**attempt)``."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if base < 0 or maximum < 0:
        raise ValueError("base and maximum must be >= 0")
    # 2**attempt overflows a float near attempt 1024; the cap is reached long before.
    if attempt >= 64:
        return maximum
    return min(maximum, base * (2.0**attempt))


def backoff_delay(
    attempt: int,
    base: float = 0.5,
    maximum: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """A delay drawn uniformly from ``[0, backoff_cap(attempt, base, maximum))``.

    ``rng`` returns a float in ``[0, 1)``; tests pass a fixed one.
    """
    return backoff_cap(attempt, base, maximum) * rng()
