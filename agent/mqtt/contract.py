"""MQTT topics and the JSON payloads Home Assistant and other subscribers read (pure functions).

Everything here follows the MQTT contract in DESIGN.md. The update-entity state is checked
against the schema Home Assistant enforces (its MQTT update platform validates the JSON state
with voluptuous and drops the *whole* message on one bad key, a null, or a percentage outside
0..100), so a mistake raises here instead of vanishing silently in HA's log.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlparse

from agent import __version__
from agent.errors import Stm32OtaError

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
JOB_STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "CANCELED")
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED"})
# event entity: one event per status change, the status in lower case
EVENT_TYPES = tuple(s.lower() for s in JOB_STATUSES)
STATE_KEYS = (
    "installed_version",
    "latest_version",
    "title",
    "release_summary",
    "release_url",
    "in_progress",
    "update_percentage",
)
# HA update entity: release_summary is cut to 255 characters in its attributes
RELEASE_SUMMARY_MAX = 255
PAYLOAD_INSTALL = "install"
PAYLOAD_ABORT = "abort"
AVAILABLE, NOT_AVAILABLE = "online", "offline"
ORIGIN_NAME = "stm32ota"
# HA device registry fields accepted in `device_info` (full names, as in HA's device schema)
DEVICE_KEYS = frozenset(
    {
        "name",
        "manufacturer",
        "model",
        "model_id",
        "hw_version",
        "sw_version",
        "serial_number",
        "suggested_area",
        "configuration_url",
        "via_device",
        "identifiers",
        "connections",
    }
)


class PayloadError(Stm32OtaError, ValueError):
    """A topic id or payload value that the MQTT contract or Home Assistant would refuse."""

    code = "bad_payload"


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a valid topic id (`[A-Za-z0-9_-]+`), else raise PayloadError."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise PayloadError(
            f"{kind} {value!r} is not usable in an MQTT topic: use only letters, digits, '_' and '-'",
            code="bad_id",
        )
    return value


def _check_prefix(kind: str, value: str) -> str:
    """A topic prefix may have several levels but no wildcards and no empty level."""
    if not isinstance(value, str) or not value or any(not ID_RE.match(p) for p in value.split("/")):
        raise PayloadError(
            f"{kind} {value!r} is not a usable topic prefix: levels of letters, digits, '_' and '-' "
            "separated by '/', no wildcards, no leading or trailing '/'",
            code="bad_topic",
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Every topic of the MQTT contract for one agent; ids are validated on use."""

    base: str
    agent: str
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        _check_prefix("base topic", self.base)
        _check_prefix("discovery prefix", self.discovery_prefix)
        check_id("agent id", self.agent)

    def release(self, product: str) -> str:
        """Retained signed release manifest of a product."""
        return f"{self.base}/release/{check_id('product', product)}"

    def cmd(self, target: str) -> str:
        """Commands for one target of this agent."""
        return f"{self.base}/{self.agent}/{check_id('target', target)}/cmd"

    def group_cmd(self, group: str) -> str:
        """Commands for every target in a group."""
        return f"{self.base}/group/{check_id('group', group)}/cmd"

    @property
    def fleet_cmd(self) -> str:
        """Commands for every target of every agent."""
        return f"{self.base}/fleet/cmd"

    @property
    def availability(self) -> str:
        """Retained `online`/`offline` of this agent (the last will)."""
        return f"{self.base}/{self.agent}/availability"

    def state(self, target: str) -> str:
        """Retained Home Assistant update-entity state of a target."""
        return f"{self.base}/{self.agent}/{check_id('target', target)}/state"

    def job(self, target: str) -> str:
        """Retained current or last job of a target."""
        return f"{self.base}/{self.agent}/{check_id('target', target)}/job"

    def events(self, target: str) -> str:
        """One (non-retained) message per job status change."""
        return f"{self.base}/{self.agent}/{check_id('target', target)}/events"

    def discovery(self, target: str) -> str:
        """Home Assistant device-discovery config topic of a target."""
        return f"{self.discovery_prefix}/device/{self.object_id(target)}/config"

    def object_id(self, target: str) -> str:
        """The discovery object id `<agent>_<target>` (also the unique-id stem)."""
        return f"{self.agent}_{check_id('target', target)}"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/will topic: `online` means discovery must be re-sent."""
        return f"{self.discovery_prefix}/status"

    def subscriptions(self, targets: Mapping[str, tuple[str, ...]]) -> list[str]:
        """Topic filters an agent needs, given {target: groups}: no wildcards beyond our own ids."""
        subs = [self.cmd(t) for t in targets]
        subs += sorted({self.group_cmd(g) for groups in targets.values() for g in groups})
        return subs + [self.fleet_cmd, self.ha_status]

    def parse_topic(self, topic: str) -> tuple[str, dict[str, str]]:
        """Route an inbound topic: ("release", {product}), ("cmd", {target}), ("group_cmd",
        {group}), ("fleet_cmd", {}), ("ha_status", {}), or ("unknown", {}) for anything else
        (including another agent's topics)."""
        if topic == self.ha_status:
            return "ha_status", {}
        if topic == self.fleet_cmd:
            return "fleet_cmd", {}
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return "unknown", {}
        parts = topic[len(prefix) :].split("/")
        if len(parts) == 2 and parts[0] == "release" and ID_RE.match(parts[1]):
            return "release", {"product": parts[1]}
        if len(parts) == 3 and parts[0] == "group" and parts[2] == "cmd" and ID_RE.match(parts[1]):
            return "group_cmd", {"group": parts[1]}
        if len(parts) == 3 and parts[0] == self.agent and parts[2] == "cmd" and ID_RE.match(parts[1]):
            return "cmd", {"target": parts[1]}
        return "unknown", {}


def _slug(text: str) -> str:
    """HA entity ids are lower case letters, digits and '_'."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def _device(device_info: Mapping[str, Any], object_id: str, name: str) -> dict[str, Any]:
    unknown = set(device_info) - DEVICE_KEYS
    if unknown:
        raise PayloadError(
            f"device_info has unknown keys {sorted(unknown)}; allowed: {sorted(DEVICE_KEYS)}",
            code="bad_device_info",
        )
    device = {"identifiers": [f"stm32ota_{object_id}"], "name": name}
    device.update(device_info)
    if not device["identifiers"] and not device.get("connections"):
        raise PayloadError("device_info needs identifiers or connections", code="bad_device_info")
    return device


def discovery_payload(
    agent_id: str,
    target_name: str,
    *,
    base_topic: str,
    device_info: Mapping[str, Any],
    product: str,
    title: str | None = None,
) -> dict[str, Any]:
    """One Home Assistant device-discovery message (for `Topics.discovery(target)`, retained):
    an update entity, a job status sensor, an abort button and a job event entity. The
    device's `model_id` is the product (the state payload cannot carry it; `stm32ota fleet`
    reads it from here), so device_info must not set its own."""
    t = Topics(base_topic, agent_id)
    oid = t.object_id(target_name)
    check_id("product", product)
    if "model_id" in device_info:
        raise PayloadError("device_info must not set model_id: it carries the product",
                           code="bad_device_info")
    update = {
        "platform": "update",
        "unique_id": f"{oid}_firmware",
        "default_entity_id": f"update.{_slug(oid)}_firmware",
        "name": "Firmware",
        "device_class": "firmware",
        "entity_category": "config",
        "state_topic": t.state(target_name),
        "command_topic": t.cmd(target_name),
        # HA reads payload_install without a default when Install is pressed: always set it
        "payload_install": PAYLOAD_INSTALL,
        "retain": False,
        "title": title if title is not None else product,
    }
    status = {
        "platform": "sensor",
        "unique_id": f"{oid}_job_status",
        "default_entity_id": f"sensor.{_slug(oid)}_update_status",
        "name": "Update status",
        "device_class": "enum",
        "options": list(JOB_STATUSES),
        "entity_category": "diagnostic",
        "state_topic": t.job(target_name),
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": t.job(target_name),
    }
    abort = {
        "platform": "button",
        "unique_id": f"{oid}_abort",
        "default_entity_id": f"button.{_slug(oid)}_abort_update",
        "name": "Abort update",
        "entity_category": "config",
        "command_topic": t.cmd(target_name),
        "payload_press": PAYLOAD_ABORT,
        "retain": False,
    }
    event = {
        "platform": "event",
        "unique_id": f"{oid}_job_event",
        "default_entity_id": f"event.{_slug(oid)}_update_event",
        "name": "Update event",
        "state_topic": t.events(target_name),
        "event_types": list(EVENT_TYPES),
    }
    return {
        "device": {**_device(device_info, oid, f"{target_name} on {agent_id}"), "model_id": product},
        "origin": {"name": ORIGIN_NAME, "sw_version": __version__},
        "availability_topic": t.availability,
        "payload_available": AVAILABLE,
        "payload_not_available": NOT_AVAILABLE,
        "qos": 1,
        "components": {"firmware": update, "update_status": status, "abort": abort, "update_event": event},
    }


def _need_str(name: str, value: Any) -> str:
    if value is None:
        raise PayloadError(f"{name} must not be None: Home Assistant rejects a null {name}")
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _percent(name: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{name} must be a number from 0 to 100, not {value!r}")
    if math.isnan(value) or not 0 <= value <= 100:
        raise PayloadError(f"{name} must be from 0 to 100, not {value!r}")
    return value


def _http_url(name: str, value: Any) -> str:
    url = _need_str(name, value)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PayloadError(f"{name} {url!r} must be an http:// or https:// URL (Home Assistant rule)")
    return url


def state_payload(
    installed_version: str,
    latest_version: str,
    title: str,
    release_summary: str,
    release_url: str | None,
    in_progress: bool,
    update_percentage: int | float | None,
) -> dict[str, Any]:
    """Home Assistant's update-entity JSON: its keys and no others, no nulls except
    update_percentage (which must be None when not in progress); release_url is left out
    when there is none. Raises PayloadError."""
    summary = _need_str("release_summary", release_summary)
    if len(summary) > RELEASE_SUMMARY_MAX:
        log.debug("release_summary cut from %d to %d characters", len(summary), RELEASE_SUMMARY_MAX)
        summary = summary[: RELEASE_SUMMARY_MAX - 1] + "\u2026"
    if not isinstance(in_progress, bool):
        raise PayloadError(f"in_progress must be True or False, not {in_progress!r}")
    if update_percentage is not None:
        if not in_progress:
            # HA turns in_progress on for any percentage; a stale one would block Install
            raise PayloadError("update_percentage must be None when in_progress is False")
        update_percentage = _percent("update_percentage", update_percentage)
    state = {
        "installed_version": _need_str("installed_version", installed_version),
        "latest_version": _need_str("latest_version", latest_version),
        "title": _need_str("title", title),
        "release_summary": summary,
        "release_url": None,
        "in_progress": in_progress,
        "update_percentage": update_percentage,
    }
    if release_url is None:  # HA treats the key as optional; a null would be rejected
        del state["release_url"]
    else:
        state["release_url"] = _http_url("release_url", release_url)
    return state


def rfc3339(when: datetime) -> str:
    """`2026-01-31T12:00:00.123Z`: UTC, millisecond precision; naive datetimes are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise PayloadError("timestamps must be timezone-aware (use datetime.now(timezone.utc))")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_obj(status: str, error: Stm32OtaError | Mapping[str, Any] | None) -> dict[str, str] | None:
    if error is None:
        if status in ("FAILED", "REJECTED"):
            raise PayloadError(f"a {status} job needs an error {{code, message}}")
        return None
    if status not in ("FAILED", "REJECTED", "CANCELED"):
        raise PayloadError(f"a {status} job cannot carry an error")
    if isinstance(error, Stm32OtaError):
        return error.as_dict()
    if set(error) != {"code", "message"}:
        raise PayloadError(f"error must have exactly the keys code and message, not {sorted(error)}")
    return {"code": _need_str("error.code", error["code"]), "message": _need_str("error.message", error["message"])}


def job_payload(
    job_id: str,
    status: str,
    *,
    phase: str | None = None,
    percent: int | float = 0,
    from_version: str | None = None,
    to_version: str | None = None,
    error: Stm32OtaError | Mapping[str, Any] | None = None,
    queued_at: datetime | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> dict[str, Any]:
    """The retained job-topic document; timestamps are RFC 3339 UTC strings or null,
    `updated_at` defaults to now. FAILED/REJECTED need an error, QUEUED/IN_PROGRESS/SUCCEEDED
    must not have one."""
    _need_str("job_id", job_id)
    if not job_id:
        raise PayloadError("job_id must not be empty")
    if status not in JOB_STATUSES:
        raise PayloadError(f"status {status!r} is not one of {', '.join(JOB_STATUSES)}")
    for name, value in (("phase", phase), ("from_version", from_version), ("to_version", to_version)):
        if value is not None:
            _need_str(name, value)
    stamps = {"queued_at": queued_at, "started_at": started_at, "finished_at": finished_at}
    return {
        "job_id": job_id,
        "status": status,
        "phase": phase,
        "percent": _percent("percent", percent),
        "from_version": from_version,
        "to_version": to_version,
        "error": _error_obj(status, error),
        **{k: rfc3339(v) if v is not None else None for k, v in stamps.items()},
        "updated_at": rfc3339(updated_at or datetime.now(timezone.utc)),
    }


def event_payload(job: Mapping[str, Any]) -> dict[str, Any]:
    """The events-topic message for a status change: the job document (as made by
    job_payload) plus `event_type` = the status in lower case (HA event entity)."""
    status = job.get("status")
    if status not in JOB_STATUSES:
        raise PayloadError(f"job status {status!r} is not one of {', '.join(JOB_STATUSES)}")
    return {"event_type": status.lower(), **job}
