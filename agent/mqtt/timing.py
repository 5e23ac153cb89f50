"""When the agent waits on purpose: spread offsets and reconnect jitter (the network
thread's idle wait is `agent.mqtt.payload.idle_wait`).

Pure functions of their arguments (the random source is passed in), so tests are exact.
"""

from __future__ import annotations

import hashlib
from typing import Callable


def spread_offset(agent: str, target: str, spread: float) -> float:
    """Where in a spread window of `spread` s this target starts: fixed per agent and target
    (a hash, so a retried command lands on the same second) and even across a fleet."""
    digest = hashlib.sha256(f"{agent}/{target}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * spread


def jitter(bound: float, rng: Callable[[], float]) -> float:
    """A delay in [0, bound) s from `rng` (random.random, or a fixed source in tests), so
    100,000 gateways that lost one broker do not all come back in the same second."""
    return max(0.0, bound) * rng()
