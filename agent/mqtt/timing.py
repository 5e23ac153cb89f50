"""When the MQTT client wakes and waits: the network thread's idle wait, and jitter.

Pure functions of their arguments (the random source is passed in), so tests are exact.
"""

from __future__ import annotations

import hashlib
from typing import Callable

IDLE_WAIT_MAX = 60.0  # seconds; with keepalive 0 nothing else limits the network thread's wait


def idle_wait(keepalive: float) -> float:
    """How long paho's network thread may sleep in select(): a quarter of the keepalive in
    force, so the PINGREQ leaves at most 1.25 keepalives after the last packet, well inside
    the broker's 1.5 (MQTT 3.1.2.10). paho's own fixed 1 s woke an idle agent 60 times a
    minute for a check that is due once a minute."""
    return min(keepalive / 4, IDLE_WAIT_MAX) if keepalive > 0 else IDLE_WAIT_MAX


def spread_offset(agent: str, target: str, spread: float) -> float:
    """Where in a spread window of `spread` s this target starts: fixed per agent and target
    (a hash, so a retried command lands on the same second) and even across a fleet."""
    digest = hashlib.sha256(f"{agent}/{target}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * spread


def jitter(bound: float, rng: Callable[[], float]) -> float:
    """A delay in [0, bound) s from `rng` (random.random, or a fixed source in tests), so
    100,000 gateways that lost one broker do not all come back in the same second."""
    return max(0.0, bound) * rng()
