"""The JSON payloads of the MQTT contract that Home Assistant and other subscribers read (pure).

Everything here follows the MQTT contract in DESIGN.md (its topics: `agent.mqtt.topics`). The
update-entity state is checked against the schema Home Assistant enforces (its MQTT update
platform validates the JSON state with voluptuous and drops the *whole* message on one bad
key, a null, or a percentage outside 0..100), so a mistake raises here instead of vanishing
silently in HA's log.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlparse

from agent import __version__
from agent.errors import PayloadError, Stm32OtaError
from agent.mqtt.topics import Topics, check_id
from agent.ota.jobs import CANCELED, FAILED, IN_PROGRESS, QUEUED, REJECTED, SUCCEEDED

log = logging.getLogger(__name__)

# The job store owns the statuses; the contract fixes their order on the wire (HA's enum options)
JOB_STATUSES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, CANCELED)
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


def _entity_id(domain: str, object_id: str) -> dict[str, str]:
    """The entity id Home Assistant should give a component, in both spellings: HA 2025.10 and
    later read `default_entity_id` (object_id is deprecated there), older ones only `object_id`
    (entity id = DOMAIN.object_id). Both until the oldest supported HA (2024.11) knows the new one."""
    return {"object_id": object_id, "default_entity_id": f"{domain}.{object_id}"}


def _update_entity(t: Topics, target: str, title: str) -> dict[str, Any]:
    """The update entity: Home Assistant's Install button and progress bar."""
    oid = t.object_id(target)
    return {
        "platform": "update",
        "unique_id": f"{oid}_firmware",
        **_entity_id("update", f"{_slug(oid)}_firmware"),
        "name": "Firmware",
        "device_class": "firmware",
        "entity_category": "config",
        "state_topic": t.state(target),
        "command_topic": t.cmd(target),
        # HA reads payload_install without a default when Install is pressed: always set it
        "payload_install": PAYLOAD_INSTALL,
        "retain": False,
        "title": title,
    }


def _status_sensor(t: Topics, target: str) -> dict[str, Any]:
    """An enum sensor of the job status, with the whole job document as its attributes."""
    oid = t.object_id(target)
    return {
        "platform": "sensor",
        "unique_id": f"{oid}_job_status",
        **_entity_id("sensor", f"{_slug(oid)}_update_status"),
        "name": "Update status",
        "device_class": "enum",
        "options": list(JOB_STATUSES),
        "entity_category": "diagnostic",
        "state_topic": t.job(target),
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": t.job(target),
    }


def _abort_button(t: Topics, target: str) -> dict[str, Any]:
    """A button that sends `abort` to the target's command topic."""
    oid = t.object_id(target)
    return {
        "platform": "button",
        "unique_id": f"{oid}_abort",
        **_entity_id("button", f"{_slug(oid)}_abort_update"),
        "name": "Abort update",
        "entity_category": "config",
        "command_topic": t.cmd(target),
        "payload_press": PAYLOAD_ABORT,
        "retain": False,
    }


def _event_entity(t: Topics, target: str) -> dict[str, Any]:
    """An event entity fed by the events topic (one event per job status change)."""
    oid = t.object_id(target)
    return {
        "platform": "event",
        "unique_id": f"{oid}_job_event",
        **_entity_id("event", f"{_slug(oid)}_update_event"),
        "name": "Update event",
        "state_topic": t.events(target),
        "event_types": list(EVENT_TYPES),
    }


def discovery_payload(
    agent_id: str,
    target_name: str,
    *,
    base_topic: str,
    device_info: Mapping[str, Any],
    product: str,
    title: str | None = None,
    agent_name: str | None = None,
) -> dict[str, Any]:
    """One Home Assistant device-discovery message (for `Topics.discovery(target)`, retained):
    an update entity, a job status sensor, an abort button and a job event entity. The
    device's `model_id` is the product (the state payload cannot carry it; `stm32ota fleet`
    reads it from here), so device_info must not set its own. The device is named
    "<target> on <agent_name>" (a person's name for the gateway; the agent id by default)."""
    t = Topics(base_topic, agent_id)
    oid = t.object_id(target_name)
    check_id("product", product)
    if "model_id" in device_info:
        raise PayloadError("device_info must not set model_id: it carries the product",
                           code="bad_device_info")
    components = {
        "firmware": _update_entity(t, target_name, title if title is not None else product),
        "update_status": _status_sensor(t, target_name),
        "abort": _abort_button(t, target_name),
        "update_event": _event_entity(t, target_name),
    }
    return {
        "device": {**_device(device_info, oid, f"{target_name} on {agent_name or agent_id}"),
                   "model_id": product},
        "origin": {"name": ORIGIN_NAME, "sw_version": __version__},
        "availability_topic": t.availability,
        "payload_available": AVAILABLE,
        "payload_not_available": NOT_AVAILABLE,
        "qos": 1,
        "components": components,
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
    values = {
        "installed_version": _need_str("installed_version", installed_version),
        "latest_version": _need_str("latest_version", latest_version),
        "title": _need_str("title", title),
        "release_summary": summary,
        "in_progress": in_progress,
        "update_percentage": update_percentage,
    }
    if release_url is not None:  # HA treats the key as optional; a null would be rejected
        values["release_url"] = _http_url("release_url", release_url)
    return {key: values[key] for key in STATE_KEYS if key in values}  # in the documented order


def rfc3339(when: datetime) -> str:
    """`2026-01-31T12:00:00.123Z`: UTC, millisecond precision; naive datetimes are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise PayloadError("timestamps must be timezone-aware (use datetime.now(timezone.utc))")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_obj(status: str, error: Stm32OtaError | Mapping[str, Any] | None) -> dict[str, str] | None:
    if error is None:
        if status in (FAILED, REJECTED):
            raise PayloadError(f"a {status} job needs an error {{code, message}}")
        return None
    if status not in (FAILED, REJECTED, CANCELED):
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
