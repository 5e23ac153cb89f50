"""The commands an agent accepts on its command topics: parsed strictly, refused with a reason.

`install` / `abort` / `check` as plain text, or a JSON object (contract: docs/mqtt.md "Commands");
anything else raises ImageRejected with the code the refusal reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from agent.errors import ImageRejected
from agent.mqtt.contract import rfc3339
from agent.ota.manifest import strict_json

COMMAND_OPS = ("install", "abort", "check")
MAX_COMMAND_BYTES = 32 * 1024


def parse_command(payload: bytes) -> dict:
    """`install` / `abort` / `check`, or JSON {"op": ..., "manifest": {...}}; strict."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise ImageRejected(f"command of {len(payload)} bytes is larger than "
                            f"{MAX_COMMAND_BYTES}", code="too_large")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ImageRejected("command is not UTF-8 text", code="bad_command") from None
    if text in COMMAND_OPS:
        return {"op": text}
    try:
        obj = strict_json(text, "command")
    except ValueError as err:
        if isinstance(err, ImageRejected):
            raise
        raise ImageRejected(f"command is neither one of {', '.join(COMMAND_OPS)} nor JSON: "
                            f"{err}", code="bad_command") from None
    if not isinstance(obj, dict):
        raise ImageRejected("a JSON command must be an object like {\"op\": \"install\"}",
                            code="bad_command")
    unknown = sorted(set(obj) - {"op", "manifest", "not_after", "spread"})
    if unknown:
        raise ImageRejected(f"unknown field(s) {', '.join(unknown)} in the command; "
                            "allowed: op, manifest, not_after, spread", code="unknown_field")
    if obj.get("op") not in COMMAND_OPS:
        raise ImageRejected(f"op must be one of {', '.join(COMMAND_OPS)}, not {obj.get('op')!r}",
                            code="bad_command")
    if "manifest" in obj and (obj["op"] != "install" or not isinstance(obj["manifest"], dict)):
        raise ImageRejected("manifest goes with op install and must be a JSON object",
                            code="bad_command")
    _check_timing(obj)
    return obj


def _check_timing(obj: dict) -> None:
    """`not_after` (RFC 3339 UTC, e.g. 2026-03-01T12:00:00Z): refuse the command after it;
    `spread` (seconds, 0-86400): start a group/fleet install at a per-target offset within it."""
    if "not_after" in obj:
        try:
            obj["not_after"] = datetime.fromisoformat(obj["not_after"].replace("Z", "+00:00"))
            if obj["not_after"].utcoffset() is None:  # cannot be compared with the clock
                raise ValueError("no time zone")
        except (AttributeError, TypeError, ValueError):
            raise ImageRejected(f"not_after must be a UTC time like 2026-03-01T12:00:00Z, not "
                                f"{obj['not_after']!r}", code="bad_command") from None
        if obj["not_after"] < datetime.now(timezone.utc):
            raise ImageRejected(f"the command expired at {rfc3339(obj['not_after'])} (its "
                                "not_after; a gateway that was offline, or a clock that is "
                                "ahead); send it again", code="command_expired")
    spread = obj.get("spread", 0)
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 <= spread <= 86400:
        raise ImageRejected(f"spread must be a number of seconds from 0 to 86400, not {spread!r}",
                            code="bad_command")


@dataclass(frozen=True)
class Dropped:
    """Stands in for a payload the MQTT client dropped unread because it was too large."""

    size: int

    def check(self) -> None:
        """Raise the rejection the sender should see."""
        raise ImageRejected(f"message of {self.size} bytes is larger than the limit of "
                            f"{MAX_COMMAND_BYTES}; it was dropped unread", code="too_large")
