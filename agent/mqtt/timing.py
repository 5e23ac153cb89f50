"""When the MQTT client wakes and waits: the network thread's idle wait, and jitter.

Pure functions of their arguments (the random source is passed in), so tests are exact.
"""

from __future__ import annotations

IDLE_WAIT_MAX = 60.0  # seconds; with keepalive 0 nothing else limits the network thread's wait


def idle_wait(keepalive: float) -> float:
    """How long paho's network thread may sleep in select(): a quarter of the keepalive in
    force, so the PINGREQ leaves at most 1.25 keepalives after the last packet, well inside
    the broker's 1.5 (MQTT 3.1.2.10). paho's own fixed 1 s woke an idle agent 60 times a
    minute for a check that is due once a minute."""
    return min(keepalive / 4, IDLE_WAIT_MAX) if keepalive > 0 else IDLE_WAIT_MAX
