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
`agent.mqtt.watcher` connects an `MqttClient` to a `Fleet`.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Optional

from agent.mqtt.contract import AVAILABLE, NOT_AVAILABLE
from agent.mqtt.topics import route_topic

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024
# distinct state payloads whose columns are kept: the targets of a product on one version
# publish the same bytes, so a fleet's state messages are mostly the same few payloads
STATE_MEMO = 256


@dataclass
class FleetRow:
    """What is known about one target; None where nothing was published (yet). Fleet changes
    its own rows in place (a copy per message cost more than the rest of the read); what
    snapshot() and drain() return are copies."""

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
        """Plain dict in column order (JSON and CSV). The columns are all plain values, so
        no dataclasses.asdict(), which deep-copies each (9 us a row against 1)."""
        return {c: getattr(self, c) for c in COLUMNS}


COLUMNS = tuple(f.name for f in fields(FleetRow))


def _with_online(row: FleetRow, online: Optional[bool]) -> FleetRow:
    """A copy of `row` with its agent's online state. Its fields are copied as they are:
    dataclasses.replace() runs __init__ again (4 times as long, and snapshot() copies 20,000
    rows while `--wait-for` has just seen the last one)."""
    copy = object.__new__(FleetRow)
    copy.__dict__.update(row.__dict__)
    copy.online = online
    return copy


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
class Tally:
    """Running counts for `--wait-for`: targets of `product` (of `agent`, if given) seen, and
    how many of them report `version` installed; kept up to date per message, in O(1)."""

    version: str
    product: str
    agent: Optional[str] = None
    total: int = 0
    done: int = 0

    def count(self, row: Optional[FleetRow], sign: int) -> None:
        """Add (sign 1) or take away (sign -1) one row's contribution."""
        if row is None or row.product != self.product or self.agent not in (None, row.agent):
            return
        self.total += sign
        self.done += sign * (row.installed == self.version)


@dataclass
class Fleet:
    """Targets and agents seen on the broker; `handle()` is thread-safe and costs O(1) per
    message (only the row it names changes), so a 20,000-target retained burst reads in one pass."""

    base: str = "stm32ota"
    discovery_prefix: str = "homeassistant"
    rows: dict[tuple[str, str], FleetRow] = field(default_factory=dict)
    agents: dict[str, bool] = field(default_factory=dict)
    # discovery topic -> (agent, target), so a cleared discovery finds its row again
    discovered: dict[str, tuple[str, str]] = field(default_factory=dict)
    tally: Optional[Tally] = None
    _by_agent: dict[str, set[tuple[str, str]]] = field(default_factory=dict, repr=False)
    _dirty: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _dirty_agents: set[str] = field(default_factory=set, repr=False)
    _states: dict[bytes, dict[str, Any]] = field(default_factory=dict, repr=False)  # see STATE_MEMO
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def subscriptions(self) -> list[str]:
        """The topic filters that feed this view."""
        b = self.base
        return [f"{b}/+/availability", f"{b}/+/+/state", f"{b}/+/+/job",
                f"{self.discovery_prefix}/device/+/config"]

    def handle(self, topic: str, payload: bytes) -> bool:
        """Take one message; True if it changed the view."""
        with self._lock:
            try:
                return self._route(topic, payload)
            except (TypeError, KeyError, AttributeError) as err:  # another program's odd JSON
                log.warning("skipped a malformed message on %s: %s", topic, err)
                return False

    def track(self, version: str, product: str, agent: Optional[str] = None) -> Tally:
        """Start counting the targets of `product` that report `version` (one O(N) pass)."""
        tally = Tally(version, product, agent)
        with self._lock:
            for row in self.rows.values():
                tally.count(row, 1)
            self.tally = tally
        return tally

    def counts(self) -> tuple[int, int]:
        """(targets that report the tracked version, targets tracked); see track()."""
        with self._lock:
            return (self.tally.done, self.tally.total) if self.tally else (0, 0)

    def snapshot(self, *, agent: Optional[str] = None,
                 product: Optional[str] = None) -> list[FleetRow]:
        """Rows sorted by agent and target, filtered by agent id and/or product; offline
        state of an agent is applied to each of its rows."""
        with self._lock:
            rows = [_with_online(r, self.agents.get(r.agent)) for r in self.rows.values()
                    if (agent is None or r.agent == agent) and (product is None or r.product == product)]
        return sorted(rows, key=lambda r: r.key)

    def drain(self) -> list[FleetRow]:
        """The rows that changed since the last call (an agent going offline changes all of
        its rows), with their agent's online state; sorted like snapshot()."""
        with self._lock:
            keys = set(self._dirty)
            for a in self._dirty_agents:
                keys |= self._by_agent.get(a, set())
            self._dirty.clear()
            self._dirty_agents.clear()
            rows = [_with_online(self.rows[k], self.agents.get(k[0])) for k in keys if k in self.rows]
        return sorted(rows, key=lambda r: r.key)

    def agent_ids(self) -> list[str]:
        """Every agent seen, with or without targets."""
        with self._lock:
            return sorted(set(self.agents) | set(self._by_agent))

    # ----- routing (under the lock) -----------------------------------------------------------

    def _route(self, topic: str, payload: bytes) -> bool:
        disc = self.discovery_prefix + "/device/"
        if topic.startswith(disc) and topic.endswith("/config"):
            return self._discovery(topic, payload)
        kind, where = route_topic(self.base, topic)
        if kind == "availability":
            return self._availability(where["agent"], payload)
        if kind == "state":
            return self._state(where["agent"], where["target"], payload)
        if kind == "job":
            return self._job(where["agent"], where["target"], payload)
        return False

    def _availability(self, agent: str, payload: bytes) -> bool:
        before = (agent in self.agents, self.agents.get(agent))
        text = payload.decode("utf-8", "replace").strip()
        if text in (AVAILABLE, NOT_AVAILABLE):
            self.agents[agent] = text == AVAILABLE
        elif not payload:
            self.agents.pop(agent, None)
        if (agent in self.agents, self.agents.get(agent)) == before:
            return False
        self._dirty_agents.add(agent)
        return True

    def _update(self, key: tuple[str, str], values: dict[str, Any]) -> bool:
        """Set some columns of one row; keep the tally and the change list in step. True if
        it changed (a new row always does)."""
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = FleetRow(*key)
            self._by_agent.setdefault(key[0], set()).add(key)
        elif all(getattr(row, k) == v for k, v in values.items()):
            return False
        elif self.tally is not None:
            self.tally.count(row, -1)
        for k, v in values.items():
            setattr(row, k, v)
        if self.tally is not None:
            self.tally.count(row, 1)
        self._dirty.add(key)
        return True

    def _discovery(self, topic: str, payload: bytes) -> bool:
        known = self.discovered
        if not payload:  # discovery cleared: the target was removed from its agent's config
            key = known.pop(topic, None)
            return key in self.rows and self._update(key, {"product": None})
        doc = _json(payload)
        comps = (doc or {}).get("components") or {}
        states = [c.get("state_topic") for c in comps.values()
                  if isinstance(c, dict) and c.get("platform") == "update"]
        state = _str(states[0]) if states else None
        kind, where = route_topic(self.base, state) if state is not None else ("unknown", {})
        if doc is None or kind != "state":
            return False  # not ours: another base topic or another program's device
        device = doc.get("device") if isinstance(doc.get("device"), dict) else {}
        key = (where["agent"], where["target"])
        known[topic] = key
        return self._update(key, {"product": _str(device.get("model_id"))})

    def _state(self, agent: str, target: str, payload: bytes) -> bool:
        values = self._states.get(payload)
        if values is None:
            doc = _json(payload)
            if doc is None:
                if payload:
                    log.warning("state of %s/%s is not a JSON object", agent, target)
                return False
            progress = doc.get("in_progress")
            values = {"installed": _str(doc.get("installed_version")),
                      "latest": _str(doc.get("latest_version")),
                      "in_progress": progress if isinstance(progress, bool) else None}
            if len(self._states) >= STATE_MEMO:
                self._states.clear()
            self._states[payload] = values
        return self._update((agent, target), values)

    def _job(self, agent: str, target: str, payload: bytes) -> bool:
        doc = _json(payload)
        if doc is None:
            return False
        err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
        return self._update((agent, target), {
            "job_id": _str(doc.get("job_id")), "status": _str(doc.get("status")),
            "phase": _str(doc.get("phase")), "percent": _num(doc.get("percent")),
            "error_code": _str(err.get("code")), "error_message": _str(err.get("message")),
            "updated_at": _str(doc.get("updated_at"))})


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
