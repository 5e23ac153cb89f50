"""The fleet view: every agent and target seen on the broker's retained topics (for `stm32ota fleet`).

`Fleet` is the model: it is fed (topic, payload) pairs and keeps one `FleetRow` per target,
built from the MQTT contract of DESIGN.md (topics routed by `agent.mqtt.topics.route_topic`):

- `<base>/<agent>/availability`: `online` / `offline`;
- `<base>/<agent>/<target>/state`: Home Assistant's update-entity JSON (installed, latest, progress);
- `<base>/<agent>/<target>/job`: the current or last job (status, phase, percent, error);
- `<discovery_prefix>/device/<agent>_<target>/config`: the product, which the state payload
  cannot carry: the device's `model_id` (see `agent.mqtt.contract.discovery_payload`); agent and
  target are taken from the update entity's `state_topic`, since `<agent>_<target>` is ambiguous.

Anything malformed is logged and skipped: a viewer must never die on another program's message.
`Watcher` connects an `MqttClient` to a `Fleet` and lets the caller wait for a quiet period
(the retained messages have all arrived) or for the next change.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Optional

from agent.errors import FleetTimeout, NoTargets
from agent.mqtt.contract import AVAILABLE, NOT_AVAILABLE
from agent.mqtt.topics import route_topic

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class FleetRow:
    """What is known about one target; None where nothing was published (yet)."""

    agent: str
    target: str
    product: Optional[str] = None
    online: Optional[bool] = None
    installed: Optional[str] = None
    latest: Optional[str] = None
    in_progress: Optional[bool] = None
    percent: Optional[float] = None
    job_id: Optional[str] = None
    status: Optional[str] = None
    phase: Optional[str] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    updated_at: Optional[str] = None

    @property
    def key(self) -> tuple[str, str]:
        """(agent, target)."""
        return self.agent, self.target

    def as_dict(self) -> dict[str, Any]:
        """Plain dict in column order (JSON and CSV)."""
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(FleetRow))


def _json(payload: bytes) -> Optional[dict]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


@dataclass
class Fleet:
    """Targets and agents seen on the broker; `handle()` is thread-safe."""

    base: str = "stm32ota"
    discovery_prefix: str = "homeassistant"
    rows: dict[tuple[str, str], FleetRow] = field(default_factory=dict)
    agents: dict[str, bool] = field(default_factory=dict)
    # discovery topic -> (agent, target), so a cleared discovery finds its row again
    discovered: dict[str, tuple[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def subscriptions(self) -> list[str]:
        """The topic filters that feed this view."""
        b = self.base
        return [f"{b}/+/availability", f"{b}/+/+/state", f"{b}/+/+/job",
                f"{self.discovery_prefix}/device/+/config"]

    def handle(self, topic: str, payload: bytes) -> bool:
        """Take one message; True if it changed the view."""
        with self._lock:
            before = dict(self.rows), dict(self.agents)
            try:
                self._route(topic, payload)
            except (TypeError, KeyError, AttributeError) as err:  # another program's odd JSON
                log.warning("skipped a malformed message on %s: %s", topic, err)
            return before != (self.rows, self.agents)

    def snapshot(self, *, agent: Optional[str] = None,
                 product: Optional[str] = None) -> list[FleetRow]:
        """Rows sorted by agent and target, filtered by agent id and/or product; offline
        state of an agent is applied to each of its rows."""
        with self._lock:
            rows = [replace(r, online=self.agents.get(r.agent)) for r in self.rows.values()]
        return sorted((r for r in rows if (agent is None or r.agent == agent)
                       and (product is None or r.product == product)), key=lambda r: r.key)

    def agent_ids(self) -> list[str]:
        """Every agent seen, with or without targets."""
        with self._lock:
            return sorted(set(self.agents) | {a for a, _ in self.rows})

    # ----- routing (under the lock) -----------------------------------------------------------

    def _route(self, topic: str, payload: bytes) -> None:
        disc = self.discovery_prefix + "/device/"
        if topic.startswith(disc) and topic.endswith("/config"):
            self._discovery(topic, payload)
            return
        kind, where = route_topic(self.base, topic)
        if kind == "availability":
            text = payload.decode("utf-8", "replace").strip()
            if text in (AVAILABLE, NOT_AVAILABLE):
                self.agents[where["agent"]] = text == AVAILABLE
            elif not payload:
                self.agents.pop(where["agent"], None)
        elif kind == "state":
            self._state(where["agent"], where["target"], payload)
        elif kind == "job":
            self._job(where["agent"], where["target"], payload)

    def _row(self, agent: str, target: str) -> FleetRow:
        return self.rows.get((agent, target)) or FleetRow(agent, target)

    def _discovery(self, topic: str, payload: bytes) -> None:
        known = self.discovered
        if not payload:  # discovery cleared: the target was removed from its agent's config
            key = known.pop(topic, None)
            if key in self.rows:
                self.rows[key] = replace(self.rows[key], product=None)
            return
        doc = _json(payload)
        comps = (doc or {}).get("components") or {}
        states = [c.get("state_topic") for c in comps.values()
                  if isinstance(c, dict) and c.get("platform") == "update"]
        state = _str(states[0]) if states else None
        kind, where = route_topic(self.base, state) if state is not None else ("unknown", {})
        if doc is None or kind != "state":
            return  # not ours: another base topic or another program's device
        device = doc.get("device") if isinstance(doc.get("device"), dict) else {}
        key = (where["agent"], where["target"])
        known[topic] = key
        self.rows[key] = replace(self._row(*key), product=_str(device.get("model_id")))

    def _state(self, agent: str, target: str, payload: bytes) -> None:
        doc = _json(payload)
        if doc is None:
            if payload:
                log.warning("state of %s/%s is not a JSON object", agent, target)
            return
        self.rows[(agent, target)] = replace(
            self._row(agent, target), installed=_str(doc.get("installed_version")),
            latest=_str(doc.get("latest_version")),
            in_progress=doc.get("in_progress") if isinstance(doc.get("in_progress"), bool) else None)

    def _job(self, agent: str, target: str, payload: bytes) -> None:
        doc = _json(payload)
        if doc is None:
            return
        err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
        self.rows[(agent, target)] = replace(
            self._row(agent, target), job_id=_str(doc.get("job_id")), status=_str(doc.get("status")),
            phase=_str(doc.get("phase")), percent=_num(doc.get("percent")),
            error_code=_str(err.get("code")), error_message=_str(err.get("message")),
            updated_at=_str(doc.get("updated_at")))


def changes(before: Iterable[FleetRow], after: Iterable[FleetRow]) -> list[str]:
    """One line per target that is new or changed: `agent/target: column=value ...`."""
    old = {r.key: r for r in before}
    lines = []
    for row in after:
        prev = old.get(row.key)
        diff = [f"{c}={getattr(row, c)}" for c in COLUMNS[2:]
                if getattr(row, c) != (getattr(prev, c) if prev else None)]
        if diff:
            lines.append(f"{row.agent}/{row.target}: " + " ".join(diff))
    return lines


def stragglers(rows: Iterable[FleetRow], version: str) -> list[FleetRow]:
    """Rows that do not (yet) report `version` as installed."""
    return [r for r in rows if r.installed != version]


def describe(row: FleetRow) -> str:
    """One straggler for a person: where it is and why it may be stuck."""
    bits = [f"installed {row.installed or 'unknown'}"]
    if row.online is False:
        bits.append("agent offline")
    if row.status == "IN_PROGRESS" and row.phase:
        bits.append(f"job IN_PROGRESS in {row.phase}")
    elif row.status:
        bits.append(f"job {row.status}")
    if row.error_code:
        bits.append(f"error {row.error_code}" + (f": {row.error_message}" if row.error_message else ""))
    return f"{row.agent}/{row.target} ({', '.join(bits)})"


class Watcher:
    """A read-only MQTT subscriber feeding a Fleet; the caller waits on it from its own thread."""

    def __init__(self, fleet: Fleet, client_factory: Callable[..., Any]) -> None:
        self.fleet = fleet
        self._cond = threading.Condition()
        self._last = time.monotonic()
        self._changes = 0
        self.client = client_factory(client_id=f"stm32ota-fleet-{os.getpid()}-{id(self):x}",
                                     session_expiry=0, max_payload=MAX_PAYLOAD)

    def start(self, connect_timeout: float = 10.0) -> bool:
        """Subscribe and connect; False if the broker did not answer in time."""
        for topic_filter in self.fleet.subscriptions():
            self.client.subscribe(topic_filter, self._message)
        self.client.start()
        ok = self.client.wait_connected(connect_timeout)
        with self._cond:
            self._last = time.monotonic()  # the quiet period starts at the subscription
        return ok

    def stop(self) -> None:
        """Disconnect."""
        self.client.stop()

    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        changed = self.fleet.handle(topic, payload)
        with self._cond:
            self._last = time.monotonic()
            if changed:
                self._changes += 1
            self._cond.notify_all()

    def settle(self, quiet: float, longest: float) -> None:
        """Return once no message came for `quiet` seconds, or after `longest` seconds."""
        deadline = time.monotonic() + longest
        with self._cond:
            while True:
                now = time.monotonic()
                wake = min(self._last + quiet, deadline)
                if now >= wake:
                    return
                self._cond.wait(wake - now)

    @property
    def changes(self) -> int:
        """How many messages changed the view so far (pass it to wait_change)."""
        with self._cond:
            return self._changes

    def wait_change(self, seen: int, timeout: float) -> bool:
        """Wait up to `timeout` s until the view changed after `seen` (from `changes`)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._changes != seen, timeout)


def wait_for(watcher: Watcher, version: str, product: str, *, timeout: float, quiet: float,
             agent: Optional[str] = None,
             report: Optional[Callable[[list[FleetRow]], None]] = None) -> list[FleetRow]:
    """Block until every target of `product` (of `agent`, if given) reports `version` installed;
    return their rows. `report(rows)` sees every change on the way. Raises NoTargets if none
    was seen, FleetTimeout naming the stragglers."""
    deadline = time.monotonic() + timeout
    watcher.settle(quiet, timeout)  # all retained targets first, or one early one could pass
    while True:
        seen = watcher.changes
        rows = watcher.fleet.snapshot(agent=agent, product=product)
        if report is not None:
            report(rows)
        late = stragglers(rows, version)
        if rows and not late:
            return rows
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        watcher.wait_change(seen, remaining)
    where = f" of agent {agent}" if agent else ""
    if not rows:
        agents = ", ".join(watcher.fleet.agent_ids()) or "none"
        raise NoTargets(
            f"no target of product {product!r}{where} was seen within {timeout:g} s (agents seen: "
            f"{agents}); check --product, --base-topic and --discovery-prefix")
    raise FleetTimeout(
        f"{len(late)} of {len(rows)} target(s) of {product}{where} do not report {version} after "
        f"{timeout:g} s: " + "; ".join(describe(r) for r in late))
