"""The topics of the MQTT contract (DESIGN.md): build them for one agent, route inbound ones.

Ids are checked where a topic is built, so a name that would break a topic (a `/`, a
wildcard, a space) raises PayloadError instead of publishing somewhere nobody listens.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

from agent.errors import PayloadError

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_ID_LEVELS_RE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\Z")


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

    def subscriptions(self, targets: Mapping[str, tuple[str, ...]],
                      products: Iterable[str] = ()) -> list[str]:
        """Topic filters an agent needs, given {target: groups} and the targets' products:
        no wildcards beyond our own ids, each filter once."""
        subs = [self.release(p) for p in sorted(set(products))]
        subs += [self.cmd(t) for t in targets]
        subs += sorted({self.group_cmd(g) for groups in targets.values() for g in groups})
        return subs + [self.fleet_cmd, self.ha_status]

    def parse_topic(self, topic: str) -> tuple[str, dict[str, str]]:
        """Route an inbound topic: ("release", {product}), ("cmd", {target}), ("group_cmd",
        {group}), ("fleet_cmd", {}), ("ha_status", {}), or ("unknown", {}) for anything else
        (including another agent's topics)."""
        if topic == self.ha_status:
            return "ha_status", {}
        kind, params = route_topic(self.base, topic)
        if kind in ("release", "group_cmd", "fleet_cmd"):
            return kind, params
        if kind == "cmd" and params["agent"] == self.agent:
            return "cmd", {"target": params["target"]}
        return "unknown", {}


# the per-target topics of `<base>/<agent>/<target>/<kind>` that route_topic recognises
_TARGET_TOPICS = ("cmd", "state", "job")


def route_topic(base: str, topic: str) -> tuple[str, dict[str, str]]:
    """Route a topic under `base` of any agent (`stm32ota fleet` watches them all):
    ("release", {product}), ("group_cmd", {group}), ("fleet_cmd", {}), ("availability",
    {agent}), ("cmd" | "state" | "job", {agent, target}), or ("unknown", {})."""
    prefix = base + "/"
    if not topic.startswith(prefix):
        return "unknown", {}
    rest = topic[len(prefix):]
    if not _ID_LEVELS_RE.match(rest):  # every level an id: one C call, not one per level
        return "unknown", {}
    parts = rest.split("/")
    if len(parts) == 2:
        if parts[0] == "release":
            return "release", {"product": parts[1]}
        if parts == ["fleet", "cmd"]:
            return "fleet_cmd", {}
        if parts[1] == "availability":
            return "availability", {"agent": parts[0]}
    elif len(parts) == 3:
        if parts[0] == "group" and parts[2] == "cmd":
            return "group_cmd", {"group": parts[1]}
        if parts[2] in _TARGET_TOPICS:
            return parts[2], {"agent": parts[0], "target": parts[1]}
    return "unknown", {}


def filter_matcher(topic_filter: str) -> Callable[[str], Optional[re.Match]]:
    """A function that is truthy for the topics `topic_filter` matches (MQTT 5 4.7: `+` one
    level, `#` the rest including the parent; a `$` topic is not matched by a leading
    wildcard): the filter compiled once to a regular expression, one C call per message.
    paho's topic_matches_sub builds a matcher per call: half of a 20,000-target retained read."""
    levels = topic_filter.split("/")
    pattern = r"(?!\$)" if levels[0] in ("+", "#") else ""
    for i, level in enumerate(levels):
        sep = "/" if i else ""
        if level == "#":
            pattern += f"(?:{sep}.*)?" if i else ".*"
            break
        pattern += sep + ("[^/]*" if level == "+" else re.escape(level))
    return re.compile(pattern, re.DOTALL).fullmatch
