"""`Watcher` connects an `MqttClient` to a `Fleet` (the fleet view) and lets the caller wait
until the retained messages have all arrived, or for the next change; `wait_for` waits until a
product's targets all report a version (`stm32ota fleet --wait-for`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Optional

from agent.errors import FleetTimeout, NoTargets
from agent.mqtt.fleet import MAX_PAYLOAD, Fleet, FleetRow, describe, stragglers

log = logging.getLogger(__name__)


class Watcher:
    """A read-only MQTT subscriber feeding a Fleet; the caller waits on it from its own thread.

    It speaks MQTT 3.1.1 with a clean session (MQTT 5 costs paho a property parse per
    message, and a viewer uses none of it) and subscribes at QoS 0: at QoS 1 a broker holds back all
    but its per-client queue of a large retained burst (mosquitto's max_queued_messages, 1000
    by default, dropped 19,000 of 20,000). After subscribing it publishes a marker to a topic
    only it reads: the broker queues each subscription's retained messages when it handles the
    SUBSCRIBE, before the marker that came later on the same connection, so the marker's
    return means the retained burst is complete (mosquitto does this; a broker that does not
    echo the marker, e.g. an ACL, leaves the quiet-period fallback and a warning)."""

    def __init__(self, fleet: Fleet, client_factory: Callable[..., Any]) -> None:
        self.fleet = fleet
        self._cond = threading.Condition()
        self._last = time.monotonic()
        self._changes = 0
        self._synced = threading.Event()  # apart from _cond: settle() must not wake per message
        client_id = f"stm32ota-fleet-{os.getpid()}-{id(self):x}"
        self.marker = f"{fleet.base}/viewer/{client_id}/sync"
        self.client = client_factory(client_id=client_id, session_expiry=0,
                                     max_payload=MAX_PAYLOAD, subscribe_qos=0, protocol=4)

    def start(self, connect_timeout: float = 10.0) -> bool:
        """Subscribe and connect; False if the broker did not answer in time."""
        for topic_filter in self.fleet.subscriptions():
            self.client.subscribe(topic_filter, self._message)
        self.client.subscribe(self.marker, self._marked)
        self.client.start()
        ok = self.client.wait_connected(connect_timeout)
        with self._cond:
            self._last = time.monotonic()  # the quiet period starts at the subscription
        if ok:  # after the SUBSCRIBEs on the same connection (MqttClient sends them on connect)
            self.client.publish(self.marker, b"sync")
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

    def _marked(self, topic: str, payload: bytes, retained: bool) -> None:
        self._synced.set()

    def settle(self, quiet: float, longest: float) -> bool:
        """Wait until every retained message has arrived: True once the marker is back.
        Without it, False after `quiet` s without a message or `longest` s in all: the view
        may then be partial."""
        deadline = time.monotonic() + longest
        while not self._synced.is_set():
            with self._cond:
                wake = min(self._last + quiet, deadline)
            now = time.monotonic()
            if now >= wake:
                return False
            self._synced.wait(wake - now)
        return True

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
    return their rows. `report(rows)` sees the rows that changed on the way. Each change costs
    O(1) (running counts), so thousands of messages a second do not leave it behind. Raises
    NoTargets if none was seen, FleetTimeout naming the stragglers."""
    deadline = time.monotonic() + timeout
    fleet = watcher.fleet
    fleet.track(version, product, agent)
    if not watcher.settle(quiet, timeout):  # all retained targets first, or one early one could pass
        log.warning("the retained state may be incomplete (the viewer's marker on %s did not "
                    "come back); counting what arrived", watcher.marker)
    while True:
        seen = watcher.changes
        if report is not None:
            report([r for r in fleet.drain() if r.product == product and agent in (None, r.agent)])
        done, total = fleet.counts()
        if total and done == total:
            return fleet.snapshot(agent=agent, product=product)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        watcher.wait_change(seen, remaining)
    rows = fleet.snapshot(agent=agent, product=product)
    late = stragglers(rows, version)
    where = f" of agent {agent}" if agent else ""
    if not rows:
        agents = ", ".join(fleet.agent_ids()) or "none"
        raise NoTargets(
            f"no target of product {product!r}{where} was seen within {timeout:g} s (agents seen: "
            f"{agents}); check --product, --base-topic and --discovery-prefix")
    raise FleetTimeout(
        f"{len(late)} of {len(rows)} target(s) of {product}{where} do not report {version} after "
        f"{timeout:g} s: " + "; ".join(describe(r) for r in late))
