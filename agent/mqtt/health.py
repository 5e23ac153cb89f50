"""What the MQTT client says about its connection: two clients with one client id (tell a
person, instead of a bare disconnect forever), and paho's own noise.

A broker that accepts a second connection with a client id closes the first, and an MQTT 5
broker sends it DISCONNECT reason 0x8E "Session taken over" first (MQTT 5 3.1.4-3, 3.14.2.1),
which `MqttClient` treats as final. With mosquitto 2.0.11 no such DISCONNECT reaches the
client: its log says "Client ... already connected, closing old connection" and paho reports
a lost connection ("Unspecified error"), so two agents with one id drop each other about once
per reconnect delay; `Lifetimes` names that pattern as the likely cause.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 0x8E
TAKEOVER_STREAK = 3  # connections in a row that were dropped young...
SHORT_LIVED = 10.0  # ...within this many seconds of the broker accepting them


class Lifetimes:
    """How long the connections of one client id lived; logs once per streak of short lives."""

    def __init__(self, who: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.who, self.clock = who, clock
        self._since, self._streak = 0.0, 0

    def duplicate(self, evidence: str) -> str:
        """The message for a person: what was seen, what it means, what to do."""
        return (f"{evidence}: another MQTT client uses the client id {self.who}, e.g. two "
                "agents share one agent.id (a cloned image?); give each gateway its own agent.id")

    def connected(self) -> None:
        """The broker accepted a connection."""
        self._since = self.clock()

    def dropped(self) -> bool:
        """An accepted connection was closed by the broker; True (and an ERROR line) when it
        completes a streak of young ones."""
        young = self.clock() - self._since < SHORT_LIVED
        self._streak = self._streak + 1 if young else 0
        if self._streak != TAKEOVER_STREAK:
            return False
        log.error("%s", self.duplicate(f"the broker closed {TAKEOVER_STREAK} connections in a "
                                       f"row within {SHORT_LIVED:g} s of accepting them"))
        return True


def not_connected_noise(record: logging.LogRecord) -> bool:
    """paho 2.2's loop thread logs "Client is not connected" at ERROR when the socket closes
    under it (a clean stop, or a broker that drops the connection before the reconnect): it is
    what the disconnect callback already reports, so keep it for debug logs only."""
    if "Client is not connected" in record.getMessage():
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True
