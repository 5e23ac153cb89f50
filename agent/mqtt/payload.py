"""What the MQTT client sends, without paho: payload encoding and the network thread's idle
wait (and whether paho lets us set it)."""

from __future__ import annotations

import inspect
import json
from typing import Any, Mapping, Sequence, Union

Payload = Union[bytes, str, Mapping[str, Any], Sequence[Any]]


def encode(payload: Payload) -> bytes:
    """bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


IDLE_WAIT_MAX = 60.0  # seconds; with keepalive 0 nothing else limits the network thread's wait


def idle_wait(keepalive: float) -> float:
    """How long paho's network thread may sleep in select(): a quarter of the keepalive in
    force, so the PINGREQ leaves at most 1.25 keepalives after the last packet, well inside
    the broker's 1.5 (MQTT 3.1.2.10). paho's own fixed 1 s woke an idle agent 60 times a
    minute for a check that is due once a minute."""
    return min(keepalive / 4, IDLE_WAIT_MAX) if keepalive > 0 else IDLE_WAIT_MAX


def tunable_loop(client_class: type) -> bool:
    """True when paho's network loop waits in a private `_loop(timeout)` step, as it does in
    paho 2.x, so `_Paho` may override it. A paho that renamed or reshaped that step gets
    the plain public client instead (loop_start(), paho's own 1 s wait): slower to doze, but
    never a broken network thread."""
    step = getattr(client_class, "_loop", None)
    forever = getattr(getattr(client_class, "loop_forever", None), "__code__", None)
    if not callable(step) or forever is None or "_loop" not in forever.co_names:
        return False
    try:
        return "timeout" in inspect.signature(step).parameters
    except (TypeError, ValueError):  # a builtin or otherwise unreadable signature
        return False
